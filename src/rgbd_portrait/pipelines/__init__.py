"""Inference: one pipeline object with a method per task, its outputs, and the file-level tasks the CLI runs."""

from rgbd_portrait.pipelines.output import RGBDPortraitOutput, RGBDRelightingOutput
from rgbd_portrait.pipelines.pipeline import RGBDPortraitPipeline

__all__ = ["RGBDPortraitOutput", "RGBDPortraitPipeline", "RGBDRelightingOutput"]
