"""Model-level settings stored with a checkpoint: prediction type, noise schedule, default steps, resolution
and how inputs are framed.

The default sampler is Marigold's few-step recipe: DDIM with "trailing" timesteps on a zero-terminal-SNR
schedule (Lin et al., 2024), which needs a v (or x0) prediction, since ε carries no information at zero SNR. The
betas default to Stable Diffusion's, so a model initialised from SD keeps the noise levels its UNet knows.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import diffusers
from diffusers import SchedulerMixin

from rgbd_portrait.errors import UserInputError
from rgbd_portrait.fit_modes import FIT_MODES

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
DEFAULT_SCHEDULER: dict[str, Any] = {
    "class_name": "DDIMScheduler",
    "num_train_timesteps": 1000,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "timestep_spacing": "trailing",
    "rescale_betas_zero_snr": True,
    "clip_sample": False,
    "set_alpha_to_one": True,
}
# Scheduler entries that define the noise levels a UNet was trained with (carried over from a base model).
NOISE_SCHEDULE_KEYS = ("num_train_timesteps", "beta_schedule", "beta_start", "beta_end", "trained_betas")
SETTING_KEYS = (
    "prediction_type",
    "scheduler",
    "default_steps",
    "resolution",
    "depth_steps",
    "ensemble_size",
    "depth_self_reference",
    "fit",
)
# Image→depth steps when the schedule's timesteps are "trailing": the first step then starts from pure noise and
# a few steps suffice (Marigold's recipe); other schedules use `default_steps`.
FEW_STEP_DEPTH_STEPS = 4


def scheduler_class(class_name: str, *, source: str) -> type[SchedulerMixin]:
    candidate = getattr(diffusers, str(class_name), None)
    if not (isinstance(candidate, type) and issubclass(candidate, SchedulerMixin)):
        raise UserInputError(f"{source}: scheduler.class_name {class_name!r} is not a diffusers scheduler")
    return candidate


def _accepted_arguments(cls: type) -> set[str]:
    return set(inspect.signature(cls.__init__).parameters) - {"self"}


@dataclass
class ModelSettings:
    """Everything about a model that is not weights. `resolution` is the default square side in pixels;
    `depth_steps` and `ensemble_size` are image→depth's defaults (denoising steps, predictions combined per
    image); `depth_steps=None` resolves to `FEW_STEP_DEPTH_STEPS` for trailing timesteps, else `default_steps`;
    `depth_self_reference` says whether image→depth reads an image as its own reference through the reference
    net when no other reference is given (False skips that run: for a model trained on image→depth without one);
    `fit` is the default framing of input images (one of `FIT_MODES`): a model trained on face crops is best
    given its inputs framed the same way."""

    prediction_type: str = "v_prediction"
    scheduler: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_SCHEDULER))
    default_steps: int = 20
    resolution: int = 512
    depth_steps: int | None = None
    ensemble_size: int = 1
    depth_self_reference: bool = True
    fit: str = "crop"

    def __post_init__(self) -> None:
        if self.depth_steps is None:
            trailing = self.scheduler.get("timestep_spacing") == "trailing"
            self.depth_steps = FEW_STEP_DEPTH_STEPS if trailing else self.default_steps

    @classmethod
    def from_mapping(
        cls, values: Mapping[str, Any], *, source: str, base_scheduler: Mapping[str, Any] | None = None
    ) -> ModelSettings:
        """Settings from a config section or checkpoint index (only `SETTING_KEYS` are read).

        The scheduler is `DEFAULT_SCHEDULER`, then the noise schedule of `base_scheduler` (a base model's
        scheduler config), then `values["scheduler"]`. Entries the scheduler class does not take are an error
        when given explicitly and dropped when they come from the defaults or the base model.
        """
        explicit = dict(values.get("scheduler") or {})
        inherited = dict(DEFAULT_SCHEDULER)
        if base_scheduler is not None:
            inherited |= {key: base_scheduler[key] for key in NOISE_SCHEDULE_KEYS if key in base_scheduler}
        class_name = explicit.get("class_name", inherited["class_name"])
        scheduler_type = scheduler_class(class_name, source=source)
        accepted = _accepted_arguments(scheduler_type) - {"prediction_type"}
        unknown = sorted(set(explicit) - accepted - {"class_name"})
        if unknown:
            raise UserInputError(f"{source}: scheduler: {class_name} does not take {', '.join(unknown)}")
        scheduler = {key: value for key, value in inherited.items() if key in accepted} | explicit
        scheduler["class_name"] = class_name

        defaults = cls()
        settings = cls(
            prediction_type=values.get("prediction_type", defaults.prediction_type),
            scheduler=scheduler,
            default_steps=values.get("default_steps", defaults.default_steps),
            resolution=values.get("resolution", defaults.resolution),
            depth_steps=values.get("depth_steps"),
            ensemble_size=values.get("ensemble_size", defaults.ensemble_size),
            depth_self_reference=values.get("depth_self_reference", defaults.depth_self_reference),
            fit=values.get("fit", defaults.fit),
        )
        settings.check(source=source)
        return settings

    def check(self, *, source: str) -> None:
        if self.prediction_type not in PREDICTION_TYPES:
            raise UserInputError(
                f"{source}: prediction_type must be one of {', '.join(PREDICTION_TYPES)}, got {self.prediction_type!r}"
            )
        if self.scheduler.get("rescale_betas_zero_snr") and self.prediction_type == "epsilon":
            raise UserInputError(
                f"{source}: a zero-terminal-SNR schedule (scheduler.rescale_betas_zero_snr) needs "
                f"prediction_type v_prediction or sample, not epsilon"
            )
        if not isinstance(self.depth_self_reference, bool):
            raise UserInputError(
                f"{source}: depth_self_reference must be true or false, got {self.depth_self_reference!r}"
            )
        if self.fit not in FIT_MODES:
            raise UserInputError(f"{source}: fit must be one of {', '.join(FIT_MODES)}, got {self.fit!r}")
        for name in ("default_steps", "resolution", "depth_steps", "ensemble_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise UserInputError(f"{source}: {name} must be a positive integer, got {value!r}")

    def make_scheduler(self) -> SchedulerMixin:
        """A fresh scheduler (for noising in training and for sampling) predicting `prediction_type`."""
        config = dict(self.scheduler)
        scheduler_type = scheduler_class(config.pop("class_name"), source="scheduler")
        return scheduler_type.from_config(config | {"prediction_type": self.prediction_type})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
