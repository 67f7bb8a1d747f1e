"""The trainer: runs the configured stages with Accelerate, resumable and exact.

Run folder (`train.output_dir`)::

    config.yaml                    the resolved configuration of the latest start
    latent_cache/<fingerprint>/    cached latents (when data.cache_latents and no data.cache_dir)
    <stage>/checkpoints/           checkpoint-<step>/ folders (see `checkpointing`), the last K kept
    <stage>/logs/                  train.jsonl/.csv, validation.jsonl/.csv, tensorboard/ when installed
    <stage>/validation/            step-<step>.png image grids
    <stage>/model/                 the stage's final model (EMA weights when EMA is on)

Stages run in the order codec → joint → motion; each starts from the previous stage's final model when both
run. The motion stage (the talking head) reads clips of talking sequences instead of images (`motion_stage`).
Exactness: the data order is a pure function of (seed, samples consumed) (`sampler`), every random draw
of a step comes from a generator seeded by (seed, stage, step, process, micro-batch) (`seeding`), and a
checkpoint holds everything else (weights, optimizer, schedule, EMA, global random states). A run resumed from
a checkpoint therefore continues the loss trajectory of the uninterrupted run exactly (bitwise on the CPU).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from torch.profiler import record_function
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from rgbd_portrait.data.dataset import PortraitMixture
from rgbd_portrait.data.sequence_dataset import TalkingClipMixture
from rgbd_portrait.devices import keep_freed_cpu_memory
from rgbd_portrait.errors import UserInputError
from rgbd_portrait.files import write_bytes_atomically
from rgbd_portrait.models.rgbd_model import RGBDPortraitModel
from rgbd_portrait.training.checkpointing import (
    MODEL_FOLDER,
    CheckpointWriter,
    TrainingState,
    list_checkpoints,
    load_training_only,
    read_checkpoint,
    read_training_state,
    restore_process_rng,
)
from rgbd_portrait.training.config import STAGES, ExperimentConfig, config_to_yaml
from rgbd_portrait.training.curves import CURVES_NAME, logged_stages, plot_training_curves
from rgbd_portrait.training.data import (
    EpochZero,
    LatentSamples,
    PixelSamples,
    check_data_folder,
    open_split,
    render_data_folder,
)
from rgbd_portrait.training.ema import ExponentialMovingAverage
from rgbd_portrait.training.latent_cache import (
    CACHED_TENSORS,
    FRAME_TENSORS,
    CachedLatents,
    build_latent_cache,
    cache_fingerprint,
)
from rgbd_portrait.training.metrics_log import MetricsLogger
from rgbd_portrait.training.motion_stage import FrameSamples, LatentClipSamples, MotionRecipe, check_motion_data
from rgbd_portrait.training.optim import build_optimizer, load_optimizer_state, optimizer_state_to_files
from rgbd_portrait.training.sampler import SampleStream, StreamBatchSampler
from rgbd_portrait.training.seeding import derive_seed, make_generator
from rgbd_portrait.training.stages import CodecRecipe, JointRecipe, check_stage_settings


def _has_accelerator() -> bool:
    """Whether torch sees a GPU or another accelerator device."""
    accelerator_api = getattr(torch, "accelerator", None)  # torch >= 2.6
    return accelerator_api.is_available() if accelerator_api is not None else torch.cuda.is_available()


class TrainingDivergedError(RuntimeError):
    """The loss or the gradient norm became NaN or infinite; the run stopped before applying the update."""


@dataclass(frozen=True)
class RunFolders:
    root: Path

    @property
    def config_file(self) -> Path:
        return self.root / "config.yaml"

    @property
    def latent_cache(self) -> Path:
        return self.root / "latent_cache"

    def checkpoints(self, stage: str) -> Path:
        return self.root / stage / "checkpoints"

    def logs(self, stage: str) -> Path:
        return self.root / stage / "logs"

    def validation(self, stage: str) -> Path:
        return self.root / stage / "validation"

    def final_model(self, stage: str) -> Path:
        return self.root / stage / MODEL_FOLDER


@dataclass
class RunPlan:
    """What a start of `train` will do: the stages left and where the first one starts from."""

    stages: list[str]
    resume_checkpoint: Path | None  # checkpoint of stages[0], or None
    start_model: Path | None  # model folder stages[0] starts from when not resuming; None = config.model


def plan_run(config: ExperimentConfig) -> RunPlan:
    """Decide what to run, checking everything that can be checked before any work (one-line errors)."""
    plan = _plan_stages(config)
    if plan.resume_checkpoint is not None:
        state = read_training_state(plan.resume_checkpoint)
        if state.seed != config.train.seed:
            raise UserInputError(
                f"train.seed: {config.train.seed}, but {plan.resume_checkpoint} was trained with seed {state.seed}; "
                f"resume with the same seed"
            )
    return plan


def _plan_stages(config: ExperimentConfig) -> RunPlan:
    folders = RunFolders(Path(config.train.output_dir))
    stages = list(config.train.stages)
    resume = config.train.resume
    previous_work = [
        path for stage in STAGES for path in (*list_checkpoints(folders.checkpoints(stage)), folders.final_model(stage))
    ]
    previous_work = [path for path in previous_work if path.exists()]
    check_data_folder(config.data)
    if resume is None:
        if previous_work:
            raise UserInputError(
                f"train.output_dir: {folders.root} already holds a run; pass train.resume=latest to continue it "
                f"or choose another output folder"
            )
        return RunPlan(stages=stages, resume_checkpoint=None, start_model=None)
    if resume == "latest":
        if not previous_work:
            raise UserInputError(f"train.resume=latest: no checkpoint or stage model under {folders.root}")
        for position, stage in enumerate(stages):
            if folders.final_model(stage).is_dir():
                continue
            checkpoints = list_checkpoints(folders.checkpoints(stage))
            if checkpoints:
                return RunPlan(stages=stages[position:], resume_checkpoint=checkpoints[-1], start_model=None)
            previous = stages[position - 1] if position else None
            start = folders.final_model(previous) if previous else None
            return RunPlan(stages=stages[position:], resume_checkpoint=None, start_model=start)
        return RunPlan(stages=[], resume_checkpoint=None, start_model=None)
    checkpoint = Path(resume)
    state = read_training_state(checkpoint)
    if state.stage not in stages:
        raise UserInputError(
            f"train.resume: {checkpoint} is a {state.stage} checkpoint, but train.stages is {', '.join(stages)}"
        )
    return RunPlan(stages=stages[stages.index(state.stage) :], resume_checkpoint=checkpoint, start_model=None)


def _to_device(batch: dict, device: torch.device) -> dict:
    return {key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in batch.items()}


def _collate_first(dataset: Dataset, count: int) -> dict[str, torch.Tensor]:
    """The first `count` items of `dataset` (epoch 0) as one batch."""
    loader = DataLoader(EpochZero(dataset), batch_size=count)
    return next(iter(loader))


def _backdrop_fraction(recipe) -> float:
    """The share of images a recipe's stage trains on flat backdrops (only the joint stage has one)."""
    return getattr(recipe.stage, "backdrop_fraction", 0.0)


class Trainer:
    """`Trainer(config).run()` trains the configured stages and returns the last stage's final model folder.

    After `run`, `model` holds the trained model of the last stage (raw weights, not EMA) on every process.
    """

    def __init__(self, config: ExperimentConfig, *, show_progress: bool = True):
        self.config = config
        self.folders = RunFolders(Path(config.train.output_dir))
        self.show_progress = show_progress
        self.plan = plan_run(config)
        self.model: RGBDPortraitModel | None = None
        # Called as step_hook(stage, step) after every training step (e.g. a profiler's `step`); the loop's phases
        # are named `torch.profiler.record_function` ranges: data, forward and loss, backward, gradient clipping,
        # optimizer, EMA, logging.
        self.step_hook: Callable[[str, int], None] | None = None
        launched = int(os.environ.get("WORLD_SIZE", "1"))
        try:
            # Accelerate joins several processes on CPUs only when told to use the CPU; without a GPU (or
            # other accelerator) that is the only choice, so `torchrun --nproc-per-node N` works as is.
            self.accelerator = Accelerator(
                mixed_precision=config.train.mixed_precision, cpu=launched > 1 and not _has_accelerator()
            )
        except ValueError as error:
            raise UserInputError(f"train.mixed_precision={config.train.mixed_precision}: {error}") from error
        if self.accelerator.num_processes != launched:
            raise UserInputError(
                f"{launched} processes were launched but Accelerate joined {self.accelerator.num_processes}; "
                f"check the launcher (accelerate launch / torchrun) settings"
            )
        self.rank = self.accelerator.process_index
        self.world_size = self.accelerator.num_processes
        self.is_main = self.accelerator.is_main_process

    # -- building blocks ---------------------------------------------------------------------------------
    def _load_model(self, source: Path | None) -> RGBDPortraitModel:
        if source is not None:
            model = RGBDPortraitModel.from_pretrained(source)
        else:
            # Every process builds the same initial weights (DDP would broadcast rank 0's anyway).
            torch.manual_seed(derive_seed(self.config.train.seed, "initial-weights"))
            model = RGBDPortraitModel.from_config(self.config.model)
        return model.to(self.accelerator.device)

    def _resolution(self, model: RGBDPortraitModel) -> int:
        resolution = self.config.data.resolution or model.resolution
        factor = model.codec.downscale_factor
        if resolution % factor:
            raise UserInputError(f"data.resolution: {resolution} is not a multiple of the VAE's factor {factor}")
        return resolution

    def _barrier(self) -> None:
        self.accelerator.wait_for_everyone()

    # -- the run -----------------------------------------------------------------------------------------
    def run(self) -> Path:
        config, folders = self.config, self.folders
        keep_freed_cpu_memory()
        if not self.plan.stages:
            final = folders.final_model(config.train.stages[-1])
            self.accelerator.print(f"nothing to do: every stage is complete; the model is {final}")
            self.model = RGBDPortraitModel.from_pretrained(final)
            return final
        first = self.plan.stages[0]
        checkpoint = self.plan.resume_checkpoint
        model = self._load_model(checkpoint / MODEL_FOLDER if checkpoint else self.plan.start_model)
        resolution = self._resolution(model)
        check_stage_settings(config, model, resolution=resolution)
        seed = config.train.seed
        data_exists = Path(config.data.root).is_dir()
        if data_exists:
            # Empty splits are errors before any work starts.
            self._open_splits(resolution)
            if "motion" in self.plan.stages:
                check_motion_data(config.data, config.train.motion)
        if self.is_main:
            folders.root.mkdir(parents=True, exist_ok=True)
            write_bytes_atomically(folders.config_file, config_to_yaml(config).encode())
            if not data_exists:
                render_data_folder(
                    config.data, resolution=resolution, device=self.accelerator.device, show_progress=self.show_progress
                )
        self._barrier()
        train_set, validation_set = self._open_splits(resolution)
        final = None
        for stage_name in self.plan.stages:
            checkpoint = self.plan.resume_checkpoint if stage_name == first else None
            if stage_name != first:
                model = self._load_model(final)
            final = self._run_stage(stage_name, model, checkpoint, train_set, validation_set, seed=seed)
        self.model = model
        return final

    def _open_splits(self, resolution: int):
        """The image splits, for the codec and joint stages (the motion stage reads clips, see `_run_stage`)."""
        data = self.config.data
        image_stages = [stage for stage in self.plan.stages if stage != "motion"]
        if not image_stages:
            return None, None
        train_set = open_split(data, validation=False, resolution=resolution, seed=self.config.train.seed)
        needs_validation = any(
            self.config.stage(stage).validate_every > 0 and data.validation_samples > 0 for stage in image_stages
        )
        validation_set = None
        if needs_validation:
            validation_set = open_split(data, validation=True, resolution=resolution, seed=self.config.train.seed)
        return train_set, validation_set

    def _samples(self, recipe, dataset, *, training: bool) -> Dataset:
        """What a step reads from `dataset` by (index, epoch): clips for the motion stage, images otherwise
        (validation images as they are, training images on backdrops as the stage says)."""
        if isinstance(recipe, MotionRecipe):
            return recipe.samples(dataset)
        backdrop_fraction = _backdrop_fraction(recipe) if training else 0.0
        return PixelSamples(dataset, backdrop_fraction=backdrop_fraction, seed=self.config.train.seed)

    def _training_samples(self, recipe, train_set, model: RGBDPortraitModel) -> Dataset:
        if not getattr(recipe, "uses_latents", False):
            return self._samples(recipe, train_set, training=True)
        # One cache per folder of a mixture: adding a folder encodes only that folder.
        parts = train_set.parts if isinstance(train_set, (PortraitMixture, TalkingClipMixture)) else [train_set]
        if isinstance(recipe, MotionRecipe):
            frames = [
                self._cached_latents(FrameSamples(part), part.frame_keys(), part.resolution, model, FRAME_TENSORS)
                for part in parts
            ]
            return LatentClipSamples(frames, train_set)
        latents = [
            self._cached_latents(
                EpochZero(PixelSamples(part, with_backdrops=True)),
                [f"{part.root}:{entry.key}:{entry.stamp()}" for entry in part.entries],
                part.resolution,
                model,
                CACHED_TENSORS,
            )
            for part in parts
        ]
        cached = latents[0] if len(parts) == 1 else CachedLatents.gather(latents, train_set.locations)
        return LatentSamples(
            cached,
            train_set,
            backdrop_fraction=_backdrop_fraction(recipe),
            seed=self.config.train.seed,
        )

    def _cached_latents(
        self, samples: Dataset, names: list[str], resolution: int, model: RGBDPortraitModel, tensors: tuple[str, ...]
    ) -> CachedLatents:
        """The `tensors` of one data folder's `samples` (images, or video frames), encoded into the cache unless
        they are there already; `names` identify the samples."""
        data = self.config.data
        fingerprint = cache_fingerprint(model.codec, names, resolution, tensors)
        cache_root = Path(data.cache_dir) if data.cache_dir else self.folders.latent_cache
        directory = build_latent_cache(
            cache_root / fingerprint,
            codec=model.codec,
            dataset=samples,
            fingerprint=fingerprint,
            rank=self.rank,
            world_size=self.world_size,
            barrier=self._barrier,
            batch_size=self.config.train.joint.batch_size,
            num_workers=data.num_workers,
            show_progress=self.show_progress and self.is_main,
            tensors=tensors,
        )
        return CachedLatents.load(directory)

    def _run_stage(
        self,
        name: str,
        model: RGBDPortraitModel,
        checkpoint: Path | None,
        train_set,
        validation_set,
        *,
        seed: int,
    ) -> Path:
        config, folders, accelerator = self.config, self.folders, self.accelerator
        stage = config.stage(name)
        if name == "codec":
            recipe = CodecRecipe(model, stage, seed=seed)
        elif name == "joint":
            recipe = JointRecipe(model, stage, uses_latents=config.data.cache_latents)
        else:
            recipe = MotionRecipe(model, stage, uses_latents=config.data.cache_latents)
            resolution, data = self._resolution(model), config.data
            train_set = recipe.clips(data, validation=False, resolution=resolution, seed=seed)
            validation_set = None
            if stage.validate_every > 0 and data.validation_samples > 0:
                validation_set = recipe.clips(data, validation=True, resolution=resolution, seed=seed)
        samples = self._training_samples(recipe, train_set, model)
        module = recipe.module
        module.train()
        if config.train.gradient_checkpointing:
            recipe.enable_gradient_checkpointing()
        named = [(key, parameter) for key, parameter in module.named_parameters() if parameter.requires_grad]
        optimizer, lr_schedule = build_optimizer(named, stage)
        ema = ExponentialMovingAverage(named, decay=stage.ema_decay) if stage.ema_decay else None
        state = TrainingState(stage=name, step=0, samples_consumed=0, world_size=self.world_size, seed=seed)
        if checkpoint is not None:
            contents = read_checkpoint(checkpoint)
            state = contents.state
            if recipe.training_only is not None:
                load_training_only(recipe.training_only, contents.training_only_tensors, source=str(checkpoint))
            load_optimizer_state(
                optimizer, named, contents.optimizer_tensors, contents.optimizer_values, source=str(checkpoint)
            )
            lr_schedule.load_state_dict(state.lr_scheduler)
            if ema is not None:
                if contents.ema_tensors is None or state.ema is None:
                    raise UserInputError(f"train.resume: {checkpoint} has no EMA state, but ema_decay is set")
                ema.load_state(contents.ema_tensors, state.ema)
            restore_process_rng(checkpoint, self.rank)
        if config.train.compile:
            module.compile()
        wrapped, prepared_optimizer = accelerator.prepare(module, optimizer)
        if checkpoint is not None and state.grad_scaler and accelerator.scaler is not None:
            accelerator.scaler.load_state_dict(state.grad_scaler)

        stream = SampleStream(
            len(samples),
            seed=derive_seed(seed, name, "data-order"),
            weights=getattr(train_set, "sample_weights", None),
        )
        sampler = StreamBatchSampler(
            stream,
            rank=self.rank,
            world_size=self.world_size,
            batch_size=stage.batch_size,
            start_position=state.samples_consumed,
        )
        loader = DataLoader(
            samples,
            batch_sampler=sampler,
            num_workers=config.data.num_workers,
            pin_memory=accelerator.device.type == "cuda",
            generator=torch.Generator().manual_seed(derive_seed(seed, name, "loader")),
        )
        batches: Iterator[dict] = iter(loader)
        writer = CheckpointWriter(
            folders.checkpoints(name), rank=self.rank, barrier=self._barrier, keep=config.train.keep_checkpoints
        )
        logger = MetricsLogger(folders.logs(name), resume_step=state.step) if self.is_main else None
        validation_batch = (
            _collate_first(
                self._samples(recipe, validation_set, training=False),
                min(len(validation_set), config.data.validation_samples),
            )
            if validation_set is not None and stage.validate_every > 0 and self.is_main
            else None
        )
        last_checkpoint = checkpoint

        def save_checkpoint() -> Path | None:
            state.lr_scheduler = lr_schedule.state_dict()
            state.grad_scaler = accelerator.scaler.state_dict() if accelerator.scaler is not None else None
            state.ema = ema.state()[1] if ema is not None else None
            state.world_size = self.world_size
            return writer.save(
                state,
                save_model=lambda path: model.save_pretrained(path),
                optimizer_files=lambda: optimizer_state_to_files(optimizer, named),
                ema_tensors=ema.shadow if ema is not None else None,
                training_only=recipe.training_only.state_dict() if recipe.training_only is not None else None,
            )

        def validate() -> None:
            module.eval()
            with ema.applied() if ema is not None else contextlib.nullcontext():
                metrics = recipe.validate(validation_batch, folders.validation(name) / f"step-{state.step:08d}.png")
            module.train()
            logger.log("validation", state.step, metrics)

        progress = tqdm(
            total=stage.max_steps,
            initial=state.step,
            desc=name,
            unit="step",
            disable=not (self.show_progress and self.is_main),
            dynamic_ncols=True,
        )
        window = _MetricWindow()
        accumulation = stage.gradient_accumulation_steps
        parameters = [parameter for _, parameter in named]
        while state.step < stage.max_steps:
            step_loss = torch.zeros((), device=accelerator.device)
            for micro_batch in range(accumulation):
                with record_function("data"):
                    batch = _to_device(next(batches), accelerator.device)
                generator = make_generator(
                    derive_seed(seed, name, state.step, self.rank, micro_batch), accelerator.device
                )
                synchronise = micro_batch == accumulation - 1
                with contextlib.nullcontext() if synchronise else accelerator.no_sync(wrapped):
                    with accelerator.autocast(), record_function("forward and loss"):
                        loss, metrics = recipe.loss(wrapped, batch, generator)
                    with record_function("backward"):
                        accelerator.backward(loss / accumulation)
                step_loss += loss.detach().float() / accumulation
                window.add_tensors(metrics, weight=1.0 / accumulation)
            state.samples_consumed += stage.batch_size * accumulation * self.world_size
            mean_loss = accelerator.reduce(step_loss, reduction="mean").item()
            gradient_norm = None
            if stage.max_grad_norm is not None:
                with record_function("gradient clipping"):
                    gradient_norm = float(accelerator.clip_grad_norm_(parameters, stage.max_grad_norm))
            if not math.isfinite(mean_loss) or (gradient_norm is not None and not math.isfinite(gradient_norm)):
                progress.close()
                kept = (
                    f"the last good checkpoint is {last_checkpoint}" if last_checkpoint else "no checkpoint was written"
                )
                what = f"loss {mean_loss}" if not math.isfinite(mean_loss) else f"gradient norm {gradient_norm}"
                raise TrainingDivergedError(
                    f"{name} stage: {what} at step {state.step + 1}; stopped before the update ({kept})"
                )
            with record_function("optimizer"):
                prepared_optimizer.step()
                lr_schedule.step()
                prepared_optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                with record_function("EMA"):
                    ema.update()
            state.step += 1
            window.add_step(mean_loss, gradient_norm, samples=stage.batch_size * accumulation * self.world_size)
            progress.update()
            progress.set_postfix(loss=f"{mean_loss:.4f}")

            if state.step % config.train.log_every == 0 or state.step == stage.max_steps:
                with record_function("logging"):
                    rows = window.summary(accelerator.reduce)
                    if logger is not None:
                        logger.log("train", state.step, rows | {"learning_rate": lr_schedule.get_last_lr()[0]})
                window = _MetricWindow()
            paused = time.perf_counter()
            last_step = state.step == stage.max_steps
            if stage.checkpoint_every and (state.step % stage.checkpoint_every == 0 or last_step):
                last_checkpoint = save_checkpoint() or last_checkpoint
            if (
                stage.validate_every
                and validation_set is not None
                and (state.step % stage.validate_every == 0 or last_step)
            ):
                if validation_batch is not None:
                    validate()
                self._barrier()
            window.exclude(time.perf_counter() - paused)
            if self.step_hook is not None:
                self.step_hook(name, state.step)
        progress.close()

        final = folders.final_model(name)
        if self.is_main:
            with ema.applied() if ema is not None else contextlib.nullcontext():
                batches = recipe.finishing_batches(samples, train_set, stage.batch_size)
                finishing = recipe.finish(_to_device(batch, accelerator.device) for batch in batches)
                if finishing:
                    logger.log("final", state.step, finishing)
                model.save_pretrained(final, overwrite=True)
            logger.close()
            if logged_stages(folders.root):  # none when a run resumed at its last step has logged nothing yet
                plot_training_curves(folders.root, folders.root / CURVES_NAME)
        self._barrier()
        accelerator.free_memory()
        return final


class _MetricWindow:
    """Losses, metrics and speed accumulated between two log rows."""

    def __init__(self):
        self.started = time.perf_counter()
        self.excluded = 0.0
        self.steps = 0
        self.samples = 0
        self.loss_sum = 0.0
        self.gradient_norms: list[float] = []
        self.tensors: dict[str, torch.Tensor] = {}

    def add_tensors(self, metrics: dict[str, torch.Tensor], *, weight: float) -> None:
        for key, value in metrics.items():
            self.tensors[key] = self.tensors.get(key, 0.0) + value.detach().float() * weight

    def add_step(self, loss: float, gradient_norm: float | None, *, samples: int) -> None:
        self.steps += 1
        self.samples += samples
        self.loss_sum += loss
        if gradient_norm is not None:
            self.gradient_norms.append(gradient_norm)

    def exclude(self, seconds: float) -> None:
        self.excluded += seconds

    def summary(self, reduce) -> dict[str, float]:
        seconds = max(time.perf_counter() - self.started - self.excluded, 1e-9)
        row = {"loss": self.loss_sum / max(self.steps, 1)}
        for key, value in self.tensors.items():
            row[key] = float(reduce(value, reduction="mean")) / max(self.steps, 1)
        if self.gradient_norms:
            row["gradient_norm"] = sum(self.gradient_norms) / len(self.gradient_norms)
        row["steps_per_second"] = self.steps / seconds
        row["samples_per_second"] = self.samples / seconds
        return row
