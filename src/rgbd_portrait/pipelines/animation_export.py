"""Writing an animation to a folder as it is generated: MP4s with the audio, the depth stack, point clouds.

    OUT/rgb.mp4                    the RGB frames with the audio that drove them (H.264 + AAC)
    OUT/depth.mp4                  the depth colourised (Spectral: near red, far blue), with the audio
    OUT/side_by_side.mp4           RGB | depth, with the audio
    OUT/depth.npy                  (T, S, S) float32 affine-invariant depth in [0, 1] per frame, larger = farther
    OUT/point_clouds/NNNNNN.ply    optional: a coloured point cloud per frame (the subject: nearer than the
                                   far background)
    OUT/reference.png              the reference as the model saw it (fitted to its square)
    OUT/result.json                what produced it: inputs, options, frame count, fps

Frames go to the video encoders and into a memory-mapped `.npy` as they come, so memory does not grow with the
animation's length. Everything is written into a temporary folder next to OUT, which is renamed into place when
the last frame is in: a failure or an interruption leaves nothing half-written. An existing OUT is replaced only
with `overwrite` and only if it is a result folder (an empty folder is used as is).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import imageio_ffmpeg
import numpy as np
import soundfile
import torch

from rgbd_portrait.data.audio import AudioTrack
from rgbd_portrait.data.image_io import colorize_depth, to_uint8_rgb, write_rgb_png
from rgbd_portrait.errors import UserInputError
from rgbd_portrait.files import replace_folder, temporary_folder_beside
from rgbd_portrait.geometry.camera import unproject_relative_depth
from rgbd_portrait.geometry.pointcloud import write_point_cloud
from rgbd_portrait.pipelines.animate import (
    AnimationChunk,
    iter_animation,
    mouth_landmarks,
    prepare_animation,
    resolve_mouth_guidance,
    resolve_window,
)
from rgbd_portrait.pipelines.export import RESULT_RECORD, check_destination
from rgbd_portrait.pipelines.pipeline import DEFAULT_GUIDANCE_SCALE, RGBDPortraitPipeline

VIDEO_FILES = ("rgb.mp4", "depth.mp4", "side_by_side.mp4")
DEPTH_STACK = "depth.npy"
POINT_CLOUD_FOLDER = "point_clouds"
# Generated backgrounds sit at the far end of the depth range; point clouds keep what is nearer.
SUBJECT_DEPTH_LIMIT = 0.98
VIDEO_QUALITY = 8  # imageio-ffmpeg's 0–10 scale (libx264 CRF ≈ 10)

PipelineSource = RGBDPortraitPipeline | Callable[[], RGBDPortraitPipeline]


def check_animation_destination(folder: str | os.PathLike, *, overwrite: bool) -> None:
    """An empty or missing folder is fine; an existing result folder only with `overwrite`."""
    folder = Path(folder)
    if folder.is_dir() and not any(folder.iterdir()):
        return
    check_destination(folder, overwrite=overwrite)


class AnimationWriter:
    """Streams `AnimationChunk`s into the files of the module docstring; use it as a context manager.

    `frame_count` frames of side `side` at `fps` are expected; fewer when the block ends is an error.
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        *,
        frame_count: int,
        side: int,
        fps: float,
        audio: AudioTrack,
        reference: np.ndarray,
        record: dict[str, Any],
        point_clouds: bool = False,
        overwrite: bool = False,
    ):
        self.folder = Path(folder)
        check_animation_destination(self.folder, overwrite=overwrite)
        self.frame_count, self.side, self.fps = frame_count, side, fps
        self.audio, self.reference, self.record = audio, reference, record
        self.point_clouds = point_clouds
        self.written = 0
        self._temporary: Path | None = None
        self._videos: dict[str, Any] = {}
        self._depth: np.memmap | None = None

    def __enter__(self) -> AnimationWriter:
        self._temporary = temporary_folder_beside(self.folder)
        try:
            self._open()
        except BaseException:
            self._abort()
            raise
        return self

    def _open(self) -> None:
        temporary = self._temporary
        # The audio as the model heard it, exactly as long as the frames: muxed into every video, then deleted.
        soundtrack = temporary / ".soundtrack.wav"
        seconds = self.frame_count / self.fps
        samples = self.audio.samples[: round(seconds * self.audio.sample_rate)]
        soundfile.write(soundtrack, samples, self.audio.sample_rate, subtype="PCM_16", format="WAV")
        for name in VIDEO_FILES:
            width = 2 * self.side if name == "side_by_side.mp4" else self.side
            writer = imageio_ffmpeg.write_frames(
                str(temporary / name),
                (width, self.side),
                fps=self.fps,
                codec="libx264",
                quality=VIDEO_QUALITY,
                macro_block_size=2,
                ffmpeg_log_level="error",
                audio_path=str(soundtrack),
                audio_codec="aac",
                output_params=["-shortest"],
            )
            writer.send(None)  # start ffmpeg
            self._videos[name] = writer
        self._depth = np.lib.format.open_memmap(
            temporary / DEPTH_STACK, mode="w+", dtype=np.float32, shape=(self.frame_count, self.side, self.side)
        )
        if self.point_clouds:
            (temporary / POINT_CLOUD_FOLDER).mkdir()

    def write(self, chunk: AnimationChunk) -> None:
        if chunk.first_frame != self.written:
            raise ValueError(f"frames arrive out of order: {chunk.first_frame} after {self.written} frames")
        if self.written + chunk.rgb.shape[0] > self.frame_count:
            raise ValueError(f"more than the {self.frame_count} frames announced")
        for rgb, depth in zip(chunk.rgb, chunk.depth):
            rgb_pixels = to_uint8_rgb(rgb.permute(1, 2, 0).numpy())
            unit_depth = depth[0].numpy()
            depth_pixels = colorize_depth(unit_depth)
            self._videos["rgb.mp4"].send(rgb_pixels.tobytes())
            self._videos["depth.mp4"].send(depth_pixels.tobytes())
            self._videos["side_by_side.mp4"].send(np.concatenate([rgb_pixels, depth_pixels], axis=1).tobytes())
            self._depth[self.written] = unit_depth
            if self.point_clouds:
                self._write_point_cloud(rgb, depth[0])
            self.written += 1

    def _write_point_cloud(self, rgb: torch.Tensor, depth: torch.Tensor) -> None:
        points = unproject_relative_depth(depth).movedim(0, -1).numpy()
        subject = depth.numpy() < SUBJECT_DEPTH_LIMIT
        path = self._temporary / POINT_CLOUD_FOLDER / f"{self.written:06d}.ply"
        write_point_cloud(path, points, rgb.permute(1, 2, 0).numpy(), mask=subject if subject.any() else None)

    def _close_videos(self) -> None:
        videos, self._videos = self._videos, {}
        for writer in videos.values():
            writer.close()

    def __exit__(self, error_type, error, traceback) -> None:
        if error_type is not None:
            self._abort()
            return
        try:
            self._finish()
        except BaseException:
            self._abort()
            raise

    def _finish(self) -> None:
        if self.written != self.frame_count:
            raise RuntimeError(f"{self.written} of the {self.frame_count} frames announced were written")
        self._close_videos()
        self._depth.flush()
        self._depth = None
        temporary = self._temporary
        (temporary / ".soundtrack.wav").unlink()
        write_rgb_png(temporary / "reference.png", self.reference)
        record = {**self.record, "frames": self.frame_count, "fps": self.fps, "seconds": self.frame_count / self.fps}
        (temporary / RESULT_RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        replace_folder(temporary, self.folder)
        self._temporary = None

    def _abort(self) -> None:
        try:
            self._close_videos()
        finally:
            self._depth = None
            if self._temporary is not None:
                shutil.rmtree(self._temporary, ignore_errors=True)
                self._temporary = None


def run_animate(
    pipeline: PipelineSource,
    reference: str | os.PathLike,
    audio: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    fps: float | None = None,
    seconds: float | None = None,
    seed: int = 0,
    point_clouds: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    window_frames: int | None = None,
    motion_frames: int | None = None,
    num_inference_steps: int | None = None,
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
    start_from_reference: bool = True,
    mouth_only: bool | None = None,
    mouth_guidance: float | None = None,
    resolution: int | None = None,
    fit: str | None = None,
    center_on_face: bool = True,
    audio_encoder: str | os.PathLike | None = None,
) -> Path:
    """Animate `reference` speaking `audio` into the folder `out_dir` (see the module docstring).

    `pipeline` is a pipeline or a function that makes one, called after the destination and the input files
    are checked, so a wrong path fails before a model is loaded.
    """
    check_animation_destination(out_dir, overwrite=overwrite)
    for path, what in ((reference, "reference image"), (audio, "audio file")):
        if not Path(path).is_file():
            raise UserInputError(f"{path}: {what} not found")
    if not isinstance(pipeline, RGBDPortraitPipeline):
        pipeline = pipeline()
    prepared = prepare_animation(
        pipeline,
        reference,
        audio,
        fps=fps,
        seconds=seconds,
        resolution=resolution,
        fit=fit,
        center_on_face=center_on_face,
        audio_encoder=audio_encoder,
    )
    window_frames, motion_frames = resolve_window(window_frames, motion_frames, pipeline.model.motion)
    options = {
        "window_frames": window_frames,
        "motion_frames": motion_frames,
        "num_inference_steps": num_inference_steps or pipeline.model.default_steps,
        "guidance_scale": guidance_scale,
        "start_from_reference": start_from_reference,
        # As it will be animated: the model's defaults resolved, and whether a face was found for it.
        "mouth_only": mouth_landmarks(pipeline, prepared, mouth_only) is not None,
    }
    options["mouth_guidance"] = resolve_mouth_guidance(
        pipeline.model.motion, mouth_only=options["mouth_only"], mouth_guidance=mouth_guidance
    )
    record = {"task": "animate", "reference": str(reference), "audio": str(audio), "seed": seed, **options}
    writer = AnimationWriter(
        out_dir,
        frame_count=prepared.frame_count,
        side=prepared.reference.shape[-1],
        fps=prepared.fps,
        audio=prepared.audio,
        reference=prepared.reference.permute(1, 2, 0).numpy(),
        record=record,
        point_clouds=point_clouds,
        overwrite=overwrite,
    )
    # Noise is drawn on the CPU, so a seed gives the same animation on every device.
    generator = torch.Generator(device="cpu").manual_seed(seed)
    with writer:
        for chunk in iter_animation(pipeline, prepared, generator=generator, show_progress=progress, **options):
            writer.write(chunk)
    return Path(out_dir)
