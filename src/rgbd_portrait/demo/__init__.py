"""The demo: every task of a model on a few portraits, shown on one self-contained HTML page.

    page = run_demo(RGBDPortraitPipeline.from_pretrained("model"), "demo", model_dir="model")

Portraits (`portraits`): heads of the synthetic studio's test split, rendered on the fly at the model's
resolution with their exact depth as ground truth, and the public-domain photographs that ship inside installed
packages (scikit-image's astronaut, matplotlib's Grace Hopper), read from the package at run time and cut once
to the model's square around the face.

For each portrait the demo runs image→depth, joint generation (the portrait as reference), depth→image and
relighting, through the file-level functions of the CLI commands (`rgbd_portrait.pipelines.files`), so every
result folder holds every export (`run`). With a talking-head model, one synthetic head and one photo also speak
a short clip of the studio's synthetic speech. `page` turns the run's record into the HTML page.

Output folder::

    index.html                  the page: inputs and results side by side, timings, model, machine
    demo.json                   the same facts as data (the page is made from it)
    inputs/                     the portraits as the model sees them, exact depth and masks, speech
    image_to_depth/<image>/     one result folder per task and portrait (see `rgbd_portrait.pipelines.export`)
    joint/<portrait>_0/
    depth_to_image/<depth>_0/
    relight_<preset>/<image>/
    animation/<portrait>/       MP4s with the speech and the depth stack (see `pipelines.animation_export`)

Everything is written into a temporary folder next to the destination, which is renamed into place at the end:
an error or an interruption leaves nothing half-written.
"""

from rgbd_portrait.demo.page import render_page
from rgbd_portrait.demo.run import run_demo

__all__ = ["render_page", "run_demo"]
