"""Training configuration: a typed schema, YAML files and dotted `key=value` overrides.

A config file has three sections::

    model: ...   # architecture or pretrained folder, read by the model core (`RGBDPortraitModel.from_config`)
    data:  ...   # DataConfig
    train: ...   # TrainConfig, with one sub-section per stage (`codec`, `joint`, `motion`)

`load_config` merges the file and the overrides onto the schema, so an unknown key, a value of the wrong
type or an impossible value is a one-line `UserInputError` before any work starts. Model-specific defaults
(resolution, prediction type, noise schedule) live in the model section, not here.

An override `model.KEY=VALUE` changes one entry of the model section; `model={pretrained: DIR}` (the key
`model` alone) replaces the whole section, e.g. to train a checkpoint written by `rgbd-portrait init`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rgbd_portrait.errors import UserInputError

STAGES = ("codec", "joint", "motion")
MIXED_PRECISION = ("no", "bf16", "fp16")
LR_SCHEDULES = ("constant", "cosine")


@dataclass
class SynthesisConfig:
    """How to render the synthetic data set when `data.root` does not exist yet."""

    identities: int = 48
    samples_per_identity: int = 6
    # Relit images are not used in training; render them to reuse the data set for relighting evaluation.
    relights: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    # Talking sequences (frames + speech) for the motion stage, identities taken in turn.
    sequences: int = 0
    sequence_seconds: float = 2.0
    seed: int = 0


@dataclass
class DataSourceConfig:
    """A further data folder mixed into a stage's training and validation splits (`data.sources` for the image
    stages, `train.motion.sources` for talking sequences)."""

    root: str = MISSING
    # Share of the training stream relative to the other sources (`data.root_weight` for `data.root`),
    # whatever the folders' sizes: a source of weight 2 is drawn twice as often as one of weight 1.
    weight: float = 1.0


@dataclass
class DataConfig:
    root: str = MISSING
    # `root`'s share of the training stream when `sources` mixes in other folders.
    root_weight: float = 1.0
    # Further folders (e.g. prepared real photos) trained on together with `root`; see DataSourceConfig.
    sources: list[DataSourceConfig] = field(default_factory=list)
    # Square side in pixels; None uses the model's default resolution.
    resolution: int | None = None
    train_split: str = "train"
    validation_split: str = "val"
    num_workers: int = 0
    # Render the data set with the synthetic studio when `root` is missing; None makes a missing root an error.
    synthesize: SynthesisConfig | None = None
    # Encode the training set once with the (frozen) VAE and train the joint stage on the stored latents.
    cache_latents: bool = False
    # Where the latent cache lives; None puts it under the run's output folder.
    cache_dir: str | None = None
    # Size of the fixed validation set (the first samples of the validation split, in a stable order).
    validation_samples: int = 4


@dataclass
class StageConfig:
    """Settings shared by both stages. `batch_size` is per process and per micro-batch."""

    max_steps: int = 1000
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-4
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    weight_decay: float = 1e-2
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    # None disables clipping.
    max_grad_norm: float | None = 1.0
    # None disables the exponential moving average of the weights.
    ema_decay: float | None = None
    # 0 disables periodic checkpoints (the stage's final model is always written).
    checkpoint_every: int = 500
    # 0 disables validation.
    validate_every: int = 500


@dataclass
class CodecStageConfig(StageConfig):
    """The autoencoder stage: reconstruction (L1) + KL + an optional image-gradient (edge) term."""

    kl_weight: float = 1e-6
    edge_weight: float = 0.0
    # Relative weight of the depth reconstructions against the RGB ones.
    depth_weight: float = 1.0
    # Train on random square crops of this side (the VAE is convolutional): cheaper steps; None = whole images.
    crop_size: int | None = None
    # False fine-tunes the decoder alone: the latent space, its calibration and a diffusion model trained on it
    # stay valid, so a better decoder drops into a trained model.
    train_encoder: bool = True
    # The decoder's channels as a multiple of the encoder's, at least: a start model with a narrower decoder has
    # it widened before training, computing what it computed (`models.autoencoder.widen_decoder`).
    decoder_width: int = 1
    # Weight of the decoder's adversarial loss against a patch discriminator trained alongside (0 = none): sharper
    # RGB than an L1 loss gives (`codec_stage`). Meant for decoder-only fine-tuning (train_encoder: false).
    adversarial_weight: float = 0.0


@dataclass
class TaskProbabilities:
    """Per-sample probability of each task; they must sum to 1."""

    joint: float = 0.4
    image_to_depth: float = 0.3
    depth_to_image: float = 0.3


@dataclass
class JointStageConfig(StageConfig):
    """The diffusion stage: backbone + reference net on latents, with a frozen VAE."""

    tasks: TaskProbabilities = field(default_factory=TaskProbabilities)
    # Probability of dropping the reference for a sample (trains the unconditional branch of guidance).
    reference_dropout: float = 0.1
    # On top of it, probability of dropping the reference of an image→depth sample: trains image→depth without a
    # reference, which skips the reference net at inference (the image is the known channel anyway).
    image_to_depth_reference_dropout: float = 0.0
    # Fraction of image→depth samples trained at the last timestep, where one-step inference starts (pure noise
    # under a zero-terminal-SNR schedule, so the step is a regression of depth from the image); the rest uniform.
    image_to_depth_terminal_fraction: float = 0.0
    # Weight of background latents in the loss: 1 = plain loss everywhere, 0 = foreground only.
    background_loss_weight: float = 1.0
    # Depth loss of samples with pseudo-depth (`depth_source` "pseudo", e.g. face-mesh depth of real photos)
    # relative to exact depth, and, on top of it, where that depth is extrapolated rather than observed (the
    # person outside the face mesh: hair, ears, neck). Their RGB loss is unchanged.
    pseudo_depth_weight: float = 1.0
    extrapolated_depth_weight: float = 1.0
    # Share of the samples shown, reference too, with their background replaced by a flat backdrop (black for
    # half the samples, a random colour for the others): cut-out photos, as depth cameras and background
    # removers give them, are inputs too.
    backdrop_fraction: float = 0.0
    # Denoising steps of the validation samples; None uses the model's default.
    validation_inference_steps: int | None = None


@dataclass
class MotionLayersConfig:
    """The motion layers the motion stage adds to a model that has none (`rgbd_portrait.models.motion`)."""

    num_attention_heads: int = 8
    audio_token_dim: int = 128
    # Each frame hears its own audio and that of `audio_radius` frames on either side.
    audio_radius: int = 2
    # Log-mel bands of the default audio features.
    n_mels: int = 40
    # A local wav2vec2-like speech-encoder folder whose hidden states replace the log-mel features.
    audio_encoder: str | None = None
    # The longest clip the temporal layers take (sampling windows included).
    max_frames: int = 32


@dataclass
class MotionStageConfig(StageConfig):
    """Stage 2, the talking head: temporal and audio layers on clips of talking sequences (`motion_stage`)."""

    batch_size: int = 2  # clips per process and micro-batch
    # Where the talking sequences are (synthetic or prepared videos, any depth below); None reads data.root.
    data_root: str | None = None
    # `data_root`'s (or data.root's) share of the clips when `sources` mixes in more folders of sequences.
    data_root_weight: float = 1.0
    # Further folders of talking sequences (e.g. prepared real videos), each with its share of the clips.
    sources: list[DataSourceConfig] = field(default_factory=list)
    clip_frames: int = 12
    # Frames at the start of a clip given as known (the sampler's motion frames from the previous window).
    motion_frames: int = 2
    # Probability that a clip has no motion frames (the first window of an animation).
    motion_frames_dropout: float = 0.25
    # Per-clip condition dropout for guidance: the reference alone, the audio alone, and both together.
    reference_dropout: float = 0.05
    audio_dropout: float = 0.05
    condition_dropout: float = 0.05
    background_loss_weight: float = 1.0
    # Extra loss weight on the latent cells that change within a clip (the mouth, blinks, the moving outline):
    # on average `dynamic_loss_weight` more, in proportion to each cell's change (0 = off; `make_clip_inputs`).
    dynamic_loss_weight: float = 0.0
    # Depth loss of frames with pseudo-depth (prepared real videos), and of its extrapolated part, as in the
    # joint stage (`JointStageConfig.pseudo_depth_weight`).
    pseudo_depth_weight: float = 1.0
    extrapolated_depth_weight: float = 1.0
    # Share of the clips with face landmarks (prepared videos) whose frames are known outside the mouth region
    # (`rgbd_portrait.data.face_regions`), as the clip's reference frame there: the model learns to fill in the
    # speaking mouth from the audio, as mouth-only animation asks of it.
    mouth_inpainting: float = 0.0
    # Fit a mouth guide at the end of the stage, on the training clips with face landmarks: mouth-only animation
    # then steers the mouth toward the opening the audio predicts (`rgbd_portrait.models.mouth_guide`).
    mouth_guide: bool = False
    # Hidden widths of the guide's audio → opening map: [] a ridge regression, else a small network of these
    # widths, which follows unseen speakers' mouths better (docs/animate.md).
    mouth_guide_hidden: list[int] = field(default_factory=list)
    # Further folders of prepared talking videos (the training split) whose audio and face landmarks join the fit
    # of the guide's audio → opening map only: the motion layers never see them and their frames are never
    # encoded, so many more clips cost no more than reading their landmarks and audio.
    mouth_guide_roots: list[str] = field(default_factory=list)
    # Train the backbone, reference net and context too (by default only the motion layers train).
    train_image_layers: bool = False
    validation_inference_steps: int | None = None
    layers: MotionLayersConfig = field(default_factory=MotionLayersConfig)


@dataclass
class TrainConfig:
    output_dir: str = MISSING
    seed: int = 0
    stages: list[str] = field(default_factory=lambda: ["joint"])
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    compile: bool = False
    keep_checkpoints: int = 3
    log_every: int = 10
    # A checkpoint folder, "latest" (the newest checkpoint under output_dir), or None for a fresh run.
    resume: str | None = None
    codec: CodecStageConfig = field(default_factory=CodecStageConfig)
    joint: JointStageConfig = field(default_factory=JointStageConfig)
    motion: MotionStageConfig = field(default_factory=MotionStageConfig)


@dataclass
class ExperimentConfig:
    model: dict[str, Any] = MISSING
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def stage(self, name: str) -> CodecStageConfig | JointStageConfig | MotionStageConfig:
        return getattr(self.train, name)


def _describe(error: OmegaConfBaseException) -> str:
    """OmegaConf's first message line, with the dotted key it concerns."""
    message = str(error).splitlines()[0] if str(error) else type(error).__name__
    key = getattr(error, "full_key", None)
    return f"{message} (key {key})" if key and str(key) not in message else message


def _parse_overrides(overrides: Sequence[str]) -> tuple[Any, Any]:
    """(merged dotted overrides, replacement model section or None)."""
    for override in overrides:
        key, separator, _ = override.partition("=")
        if not separator or not key.strip():
            raise UserInputError(f"override {override!r}: expected key=value, e.g. train.seed=1")
    replacements = [override for override in overrides if override.partition("=")[0].strip() == "model"]
    dotted = [override for override in overrides if override not in replacements]
    try:
        model = OmegaConf.from_dotlist(replacements[-1:]).model if replacements else None
        return OmegaConf.from_dotlist(dotted), model
    except OmegaConfBaseException as error:
        raise UserInputError(f"overrides: {_describe(error)}") from error


def load_config(path: str | os.PathLike | None, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Read a YAML config (or only overrides when `path` is None) and check it against the schema."""
    merged = OmegaConf.structured(ExperimentConfig)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserInputError(f"{path}: config file not found")
        try:
            file_config = OmegaConf.load(path)
        except Exception as error:  # yaml raises its own error types; all mean the same to the user
            first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise UserInputError(f"{path}: cannot parse YAML ({first_line})") from error
        try:
            merged = OmegaConf.merge(merged, file_config)
        except OmegaConfBaseException as error:
            raise UserInputError(f"{path}: {_describe(error)}") from error
    dotted, model = _parse_overrides(overrides)
    try:
        if model is not None:
            if not OmegaConf.is_dict(model):
                raise UserInputError(f"override model={model}: expected a mapping, e.g. model={{pretrained: DIR}}")
            merged.model = model
        merged = OmegaConf.merge(merged, dotted)
    except OmegaConfBaseException as error:
        raise UserInputError(f"overrides: {_describe(error)}") from error
    source = str(path) if path is not None else "config"
    try:
        config = OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:
        raise UserInputError(f"{source}: {_describe(error)}") from error
    # YAML reads a bare `no` as false, which a string field receives as "False".
    if config.train.mixed_precision in ("False", "false", "off"):
        config.train.mixed_precision = "no"
    check_config(config, source=source)
    return config


def _require(condition: bool, source: str, message: str) -> None:
    if not condition:
        raise UserInputError(f"{source}: {message}")


def _check_stage(stage: StageConfig, name: str, source: str) -> None:
    prefix = f"train.{name}"
    _require(stage.max_steps > 0, source, f"{prefix}.max_steps must be positive, got {stage.max_steps}")
    _require(stage.batch_size > 0, source, f"{prefix}.batch_size must be positive, got {stage.batch_size}")
    _require(
        stage.gradient_accumulation_steps > 0,
        source,
        f"{prefix}.gradient_accumulation_steps must be positive, got {stage.gradient_accumulation_steps}",
    )
    _require(
        stage.learning_rate > 0 and math.isfinite(stage.learning_rate),
        source,
        f"{prefix}.learning_rate must be a positive number, got {stage.learning_rate}",
    )
    _require(
        stage.lr_schedule in LR_SCHEDULES,
        source,
        f"{prefix}.lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {stage.lr_schedule!r}",
    )
    _require(stage.warmup_steps >= 0, source, f"{prefix}.warmup_steps must be >= 0, got {stage.warmup_steps}")
    _require(
        stage.max_grad_norm is None or stage.max_grad_norm > 0,
        source,
        f"{prefix}.max_grad_norm must be positive or null, got {stage.max_grad_norm}",
    )
    _require(
        stage.ema_decay is None or 0.0 < stage.ema_decay < 1.0,
        source,
        f"{prefix}.ema_decay must be in (0, 1) or null, got {stage.ema_decay}",
    )
    for cadence in ("checkpoint_every", "validate_every"):
        value = getattr(stage, cadence)
        _require(value >= 0, source, f"{prefix}.{cadence} must be >= 0, got {value}")


def check_config(config: ExperimentConfig, *, source: str = "config") -> None:
    """Value checks the type schema cannot express; raises a one-line `UserInputError`."""
    train, data = config.train, config.data
    _require(bool(config.model), source, "the model section is empty")
    _require(bool(train.stages), source, f"train.stages is empty; use some of {', '.join(STAGES)}")
    for stage in train.stages:
        _require(stage in STAGES, source, f"train.stages: unknown stage {stage!r}; use {' and/or '.join(STAGES)}")
    _require(
        list(train.stages) == [stage for stage in STAGES if stage in train.stages],
        source,
        f"train.stages must list each stage once, in the order {', '.join(STAGES)}",
    )
    _require(
        train.mixed_precision in MIXED_PRECISION,
        source,
        f"train.mixed_precision must be one of {', '.join(MIXED_PRECISION)}, got {train.mixed_precision!r}",
    )
    _require(
        train.keep_checkpoints > 0, source, f"train.keep_checkpoints must be positive, got {train.keep_checkpoints}"
    )
    _require(train.log_every > 0, source, f"train.log_every must be positive, got {train.log_every}")
    for name in STAGES:
        _check_stage(config.stage(name), name, source)
    codec = train.codec
    for weight in ("kl_weight", "edge_weight", "depth_weight", "adversarial_weight"):
        value = getattr(codec, weight)
        _require(value >= 0, source, f"train.codec.{weight} must be >= 0, got {value}")
    _require(
        codec.crop_size is None or codec.crop_size > 0,
        source,
        f"train.codec.crop_size must be positive or null, got {codec.crop_size}",
    )
    _require(codec.decoder_width >= 1, source, f"train.codec.decoder_width must be >= 1, got {codec.decoder_width}")
    joint = train.joint
    probabilities = [joint.tasks.joint, joint.tasks.image_to_depth, joint.tasks.depth_to_image]
    _require(min(probabilities) >= 0, source, "train.joint.tasks: probabilities must be >= 0")
    _require(
        abs(sum(probabilities) - 1.0) < 1e-6,
        source,
        f"train.joint.tasks: probabilities must sum to 1, got {sum(probabilities):g}",
    )
    _require(
        0.0 <= joint.reference_dropout <= 1.0,
        source,
        f"train.joint.reference_dropout must be in [0, 1], got {joint.reference_dropout}",
    )
    _require(
        0.0 <= joint.image_to_depth_reference_dropout <= 1.0,
        source,
        f"train.joint.image_to_depth_reference_dropout must be in [0, 1], got {joint.image_to_depth_reference_dropout}",
    )
    _require(
        0.0 <= joint.image_to_depth_terminal_fraction <= 1.0,
        source,
        f"train.joint.image_to_depth_terminal_fraction must be in [0, 1], got {joint.image_to_depth_terminal_fraction}",
    )
    _require(
        joint.background_loss_weight >= 0,
        source,
        f"train.joint.background_loss_weight must be >= 0, got {joint.background_loss_weight}",
    )
    _require(
        0.0 <= joint.backdrop_fraction <= 1.0,
        source,
        f"train.joint.backdrop_fraction must be in [0, 1], got {joint.backdrop_fraction}",
    )
    for weight in ("pseudo_depth_weight", "extrapolated_depth_weight"):
        value = getattr(joint, weight)
        _require(value >= 0, source, f"train.joint.{weight} must be >= 0, got {value}")
    _require(
        joint.validation_inference_steps is None or joint.validation_inference_steps > 0,
        source,
        f"train.joint.validation_inference_steps must be positive or null, got {joint.validation_inference_steps}",
    )
    _require(
        data.resolution is None or data.resolution > 0,
        source,
        f"data.resolution must be positive or null, got {data.resolution}",
    )
    _require(data.root_weight > 0, source, f"data.root_weight must be positive, got {data.root_weight}")
    for position, extra in enumerate(data.sources):
        _require(extra.weight > 0, source, f"data.sources[{position}].weight must be positive, got {extra.weight}")
    _require(data.num_workers >= 0, source, f"data.num_workers must be >= 0, got {data.num_workers}")
    _require(
        data.validation_samples >= 0, source, f"data.validation_samples must be >= 0, got {data.validation_samples}"
    )
    if data.synthesize is not None:
        for count in ("identities", "samples_per_identity"):
            value = getattr(data.synthesize, count)
            _require(value > 0, source, f"data.synthesize.{count} must be positive, got {value}")
        _require(
            data.synthesize.sequences >= 0,
            source,
            f"data.synthesize.sequences must be >= 0, got {data.synthesize.sequences}",
        )
        _require(
            data.synthesize.sequence_seconds > 0,
            source,
            f"data.synthesize.sequence_seconds must be positive, got {data.synthesize.sequence_seconds}",
        )
    _check_motion_stage(train.motion, source)


def _check_motion_stage(motion: MotionStageConfig, source: str) -> None:
    _require(
        0 <= motion.motion_frames < motion.clip_frames <= motion.layers.max_frames,
        source,
        f"train.motion: need 0 <= motion_frames < clip_frames <= layers.max_frames, got {motion.motion_frames}, "
        f"{motion.clip_frames}, {motion.layers.max_frames}",
    )
    shares = ("motion_frames_dropout", "reference_dropout", "audio_dropout", "condition_dropout", "mouth_inpainting")
    for name in shares:
        value = getattr(motion, name)
        _require(0.0 <= value <= 1.0, source, f"train.motion.{name} must be in [0, 1], got {value}")
    for name in ("background_loss_weight", "dynamic_loss_weight", "pseudo_depth_weight", "extrapolated_depth_weight"):
        value = getattr(motion, name)
        _require(value >= 0, source, f"train.motion.{name} must be >= 0, got {value}")
    _require(
        motion.data_root_weight > 0,
        source,
        f"train.motion.data_root_weight must be positive, got {motion.data_root_weight}",
    )
    for position, extra in enumerate(motion.sources):
        _require(
            extra.weight > 0, source, f"train.motion.sources[{position}].weight must be positive, got {extra.weight}"
        )
    _require(
        motion.validation_inference_steps is None or motion.validation_inference_steps > 0,
        source,
        f"train.motion.validation_inference_steps must be positive or null, got {motion.validation_inference_steps}",
    )
    layers = motion.layers
    for name in ("num_attention_heads", "audio_token_dim", "n_mels"):
        _require(getattr(layers, name) > 0, source, f"train.motion.layers.{name} must be positive")
    _require(layers.audio_radius >= 0, source, "train.motion.layers.audio_radius must be >= 0")


def config_to_yaml(config: ExperimentConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config))
