"""Real portraits → training samples: face alignment, person masks, pseudo-depth, video frames and audio.

`prepare(inputs, out_dir, ...)` is the whole batch (also `rgbd-portrait prepare`). The optional packages
(MediaPipe, OpenCV; transformers for model depth) are imported only when used.
"""

from rgbd_portrait.data.prepare.backends import DEPTH_BACKENDS, DepthBackend, create_depth_backend
from rgbd_portrait.data.prepare.inputs import InputFile, find_inputs
from rgbd_portrait.data.prepare.portrait import PortraitPreparer
from rgbd_portrait.data.prepare.runner import FileOutcome, PrepareOptions, PrepareSummary, prepare, prepare_file
from rgbd_portrait.data.prepare.sequences import AUDIO_SAMPLE_RATE, SEQUENCE_FPS, prepare_sequence

__all__ = [
    "AUDIO_SAMPLE_RATE",
    "DEPTH_BACKENDS",
    "SEQUENCE_FPS",
    "DepthBackend",
    "FileOutcome",
    "InputFile",
    "PortraitPreparer",
    "PrepareOptions",
    "PrepareSummary",
    "create_depth_backend",
    "find_inputs",
    "prepare",
    "prepare_file",
    "prepare_sequence",
]
