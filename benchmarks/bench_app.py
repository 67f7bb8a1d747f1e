"""Latency of the web app as a user sees it: a headless Chromium uploads a portrait and waits for its depth image,
then moves the relight azimuth and waits for the relit image to change; and a screenshot of the page for the docs.

    python benchmarks/bench_app.py                   # the shipped model, the astronaut, 5 uploads and 10 light moves

Run from the repository root; needs the app extra, Playwright and a Chromium (see `rgbd_portrait.app.browser`).
The model is loaded once before anything is timed, as in `rgbd-portrait app`. An upload is timed from handing
the file to the page to its depth image decoded in the page (upload, fitting, image→depth, every export, the
page's update); a light move from setting the slider to the new relit image decoded. The browser runs on the same
machine and its cores. Writes a Markdown table with the median, every repeat and the CPU time the app's process
used, and the screenshot (the Depth tab after the last upload).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

import torch

from benchmark_support import command_line, machine_line, write_markdown
from rgbd_portrait.app.browser import find_chromium, open_app_page
from rgbd_portrait.app.server import start_app
from rgbd_portrait.data.image_io import write_rgb_png
from rgbd_portrait.demo.portraits import PUBLIC_PORTRAITS
from rgbd_portrait.pipelines import RGBDPortraitPipeline

# Far enough apart that every move changes the shading.
AZIMUTHS = (60, -60)


def _process_seconds() -> float:
    """CPU seconds this process (the app's server, its model and the browser's driver) has used so far."""
    times = os.times()
    return times.user + times.system


def _timed(action) -> tuple[float, float]:
    """(wall seconds the action reports, CPU seconds this process used meanwhile)."""
    start = _process_seconds()
    wall = action()
    return wall, _process_seconds() - start


def _summary(name: str, timings: list[tuple[float, float]]) -> str:
    walls = [wall for wall, _ in timings]
    every = ", ".join(f"{value:.2f}" for value in walls)
    cpu = statistics.median(cpu for _, cpu in timings)
    return f"| {name} | {statistics.median(walls):.2f} | {min(walls):.2f} | {max(walls):.2f} | {cpu:.2f} | {every} |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model folder (default: the shipped one)")
    parser.add_argument("--portrait", default="astronaut", choices=[photo.name for photo in PUBLIC_PORTRAITS])
    parser.add_argument("--uploads", type=int, default=5)
    parser.add_argument("--moves", type=int, default=10)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    parser.add_argument("--chromium", default=find_chromium(), help="browser executable")
    parser.add_argument("--out", default="benchmarks/results/app.md")
    parser.add_argument("--screenshot", default="docs/images/app.png")
    args = parser.parse_args(argv)
    if args.chromium is None:
        parser.error("no Chromium found: apt-get install chromium, or pass --chromium PATH")
    torch.set_num_threads(args.threads)

    pipeline = RGBDPortraitPipeline.from_pretrained(args.model)
    pipeline.set_progress_bar_config(disable=True)
    (photo,) = [photo for photo in PUBLIC_PORTRAITS if photo.name == args.portrait]
    load_before = os.getloadavg()
    app = start_app(pipeline, model_name=args.model or "the shipped default model", port=0)
    try:
        with tempfile.TemporaryDirectory() as folder, open_app_page(app.url, args.chromium) as page:
            portrait = write_rgb_png(Path(folder) / f"{photo.name}.png", photo.load())
            page.upload_portrait(portrait)  # warm-up: the face detector, first exports, the page's first images
            uploads = [_timed(lambda: page.upload_portrait(portrait)) for _ in range(args.uploads)]
            page.show_tab("Relight")
            page.move_azimuth(0)  # warm-up
            moves = [_timed(lambda index=index: page.move_azimuth(AZIMUTHS[index % 2])) for index in range(args.moves)]
            page.show_tab("Depth")
            page.page.wait_for_selector("#depth-mesh canvas", timeout=60_000)
            page.page.wait_for_timeout(2_000)  # the mesh viewer draws its first frames
            page.screenshot(args.screenshot)
            if page.external_requests:
                raise SystemExit(f"the page asked other hosts for {page.external_requests}")
    finally:
        app.close()
    load_after = os.getloadavg()

    side = pipeline.model.resolution
    lines = [
        "# Web app latency (`rgbd-portrait app`, in Chromium)",
        "",
        f"Command: `{command_line(__file__, argv)}`  ",
        f"Model: {args.model or 'the shipped default'}, {side}×{side} px; portrait: {photo.title} "
        f"({args.portrait}); image→depth at the model's defaults ({pipeline.model.settings.depth_steps} step, "
        f"ensemble of {pipeline.model.settings.ensemble_size}); {args.threads} torch threads.  ",
        f"Machine: {machine_line(pipeline.device)}; load average (1, 5, 15 min) before: "
        + ", ".join(f"{value:.1f}" for value in load_before)
        + "; after: "
        + ", ".join(f"{value:.1f}" for value in load_after)
        + ".",
        "",
        "| what the user waits for | median (s) | best (s) | worst (s) | app's CPU, median (s) | every repeat (s) |",
        "|---|---:|---:|---:|---:|---|",
        _summary("upload → depth image shown", uploads),
        _summary("azimuth moved → relit image shown", moves),
        "",
        "The app's CPU is what the app's process (server, model, and the browser's driver) used meanwhile, all "
        "threads together: on a machine shared with other work, the wait is longer than this by however much of "
        "the two cores the app got.",
        "",
        f"Screenshot: [`{args.screenshot}`](../../{args.screenshot}).",
        "",
    ]
    write_markdown(args.out, "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
