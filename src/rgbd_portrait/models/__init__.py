"""The model core: channel-expanded backbone, reference network, latent codec, context and checkpoints.

Start from `RGBDPortraitModel` (`from_config`, `from_stable_diffusion`, `from_pretrained`); the trainable part
is `model.denoiser` (`RGBDDenoiser`); tasks and the channel layout are in `layout`.
"""

from rgbd_portrait.models.backbone import expand_unet
from rgbd_portrait.models.codec import LatentCodec
from rgbd_portrait.models.context import ClipImageContext, LearnedContext
from rgbd_portrait.models.layout import (
    Task,
    build_backbone_input,
    expand_masks,
    join_modalities,
    split_modalities,
    task_masks,
)
from rgbd_portrait.models.reference import ReferenceFeatures, ReferenceNet
from rgbd_portrait.models.rgbd_model import RGBDDenoiser, RGBDPortraitModel, read_model_section
from rgbd_portrait.models.settings import ModelSettings

__all__ = [
    "ClipImageContext",
    "LatentCodec",
    "LearnedContext",
    "ModelSettings",
    "RGBDDenoiser",
    "RGBDPortraitModel",
    "ReferenceFeatures",
    "ReferenceNet",
    "Task",
    "build_backbone_input",
    "expand_masks",
    "expand_unet",
    "join_modalities",
    "read_model_section",
    "split_modalities",
    "task_masks",
]
