"""Where the time goes: torch.profiler breakdowns of an image→depth call and of a joint training step.

    python benchmarks/profile_speed.py                      # configs/sd15.yaml's layout at quarter width, 128 px, CPU
    python benchmarks/profile_speed.py --width 1 --resolution 256 --out benchmarks/results/profile_sd15_full.md

Run from the repository root. The model has the layout of --config (for SD 1.5: four levels, two layers per block,
the same attention layers, reference net and VAE) with every channel width multiplied by --width, random weights.
A narrower model keeps the proportions of the arithmetic: a convolution's or linear layer's work and its weight
count both scale with the square of the width, so the shares of passes, optimizer and EMA in a step stay as they
are at full width, at a fraction of the memory (a full-width SD 1.5 joint step needs 34 GB for weights,
gradients, Adam and EMA alone). What does not shrink is the cost per call: the ~1,700 parameter tensors of
optimizer, gradient clipping and EMA, and every layer's launch. At very small widths (0.1) that overhead
dominates, so the overhead a narrow model shows is an upper bound on the full-width one.

* **Image→depth**: our pipeline at the given steps and ensemble size beside diffusers' `MarigoldDepthPipeline` of
  the same UNet layout (`rgbd_portrait.evaluation.speed.build_marigold_peer`), each call split into VAE encoder,
  reference net, backbone (Marigold: its UNet), VAE decoder and the rest (inputs, scheduler, ensembling,
  normals), from `record_function` ranges opened by forward hooks on those modules.
* **Joint training step**: the real `Trainer` on a small rendered data set, profiled for --steps steps after
  warm-up steps. The trainer names its phases (data, forward and loss, backward, gradient clipping, optimizer,
  EMA, logging); forward hooks split the forward into VAE encoding, reference net and backbone. Next to it, the
  step's *necessary passes* are timed on their own with the same batch, precision and model: reference net and
  backbone forward, their backward, and the VAE encodings when latents are not cached. The ratio of the step to
  them is the overhead of everything else.

On a CPU, a range's time is wall-clock time. Writes a Markdown report (--out) and prints it.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function, schedule

from benchmark_support import command_line, machine_line, write_markdown
from rgbd_portrait.data.synth import render_dataset
from rgbd_portrait.evaluation.results import format_markdown_table
from rgbd_portrait.evaluation.speed import build_marigold_peer, depth_calls
from rgbd_portrait.evaluation.task_names import DEPTH_REFERENCE_WORDS
from rgbd_portrait.models import RGBDPortraitModel, read_model_section
from rgbd_portrait.models.layout import Task, task_masks
from rgbd_portrait.pipelines import RGBDPortraitPipeline
from rgbd_portrait.training import Trainer, load_config

TRAINER_PHASES = ("data", "forward and loss", "backward", "gradient clipping", "optimizer", "EMA", "logging")
# (label, overrides) of the joint-step variants; the first is the SD 1.5 recipe of configs/sd15.yaml.
STEP_VARIANTS = (
    ("cached latents, gradient checkpointing", ["data.cache_latents=true", "train.gradient_checkpointing=true"]),
    ("cached latents, no checkpointing", ["data.cache_latents=true", "train.gradient_checkpointing=false"]),
    ("VAE encoding every step, no checkpointing", ["data.cache_latents=false", "train.gradient_checkpointing=false"]),
)


def narrowed_section(config: str, width: float) -> dict:
    """The config's model section with every channel width (backbone, VAE, cross-attention) times `width`."""
    section = read_model_section(config)
    section.pop("stable_diffusion", None)
    if width == 1:
        return section
    for key in ("backbone", "vae"):
        part = section[key]
        part["block_out_channels"] = [max(8, round(channels * width)) for channels in part["block_out_channels"]]
        groups = part.get("norm_num_groups", 32)
        while any(channels % groups for channels in part["block_out_channels"]):
            groups //= 2
        part["norm_num_groups"] = groups
    backbone = section["backbone"]
    backbone["cross_attention_dim"] = max(8, round(backbone["cross_attention_dim"] * width))
    return section


class ModuleRanges:
    """`record_function` ranges around the forward calls of named modules, opened and closed by hooks."""

    def __init__(self, modules: dict[str, nn.Module]):
        self.handles = []
        for label, module in modules.items():
            open_ranges: list = []

            def enter(_module, _inputs, label=label, open_ranges=open_ranges):
                open_ranges.append(record_function(label))
                open_ranges[-1].__enter__()

            def leave(_module, _inputs, _output, open_ranges=open_ranges):
                open_ranges.pop().__exit__(None, None, None)

            self.handles += [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def range_seconds(profiler: profile, labels, *, per: int) -> dict[str, float]:
    """Total wall seconds of each labelled range in the profile, divided by `per` (calls or steps)."""
    totals = {event.key: event.cpu_time_total for event in profiler.key_averages()}
    return {label: totals.get(label, 0.0) / 1e6 / per for label in labels}


def model_ranges(model: RGBDPortraitModel) -> dict[str, nn.Module]:
    return {
        "VAE encoder": model.vae.encoder,
        "VAE decoder": model.vae.decoder,
        "reference net": model.reference_net,
        "backbone": model.backbone,
    }


# -- image→depth ---------------------------------------------------------------------------------------------
def profile_image_to_depth(model: RGBDPortraitModel, *, steps: int, ensemble: int, calls: int) -> dict:
    pipeline = RGBDPortraitPipeline(model)
    pipeline.set_progress_bar_config(disable=True)
    peer = build_marigold_peer(model)
    side = model.resolution
    image = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(0))

    calls_profiled = {}
    for self_reference, words in DEPTH_REFERENCE_WORDS.items():
        ours, marigold = depth_calls(
            pipeline, peer, image, ours=(steps, ensemble), marigold=(steps, 1), self_reference=self_reference
        )
        calls_profiled[f"ours, {steps} step(s) × {ensemble}, {words}"] = ours
    calls_profiled[f"Marigold, {steps} step(s) × 1"] = marigold

    ranges = ModuleRanges(model_ranges(model) | {"Marigold UNet": peer.unet})
    labels = ("VAE encoder", "reference net", "backbone", "Marigold UNet", "VAE decoder")
    rows = {}
    try:
        for name, call in calls_profiled.items():
            call()  # warm-up
            with profile(activities=[ProfilerActivity.CPU]) as profiler:
                for _ in range(calls):
                    with record_function("call"):
                        call()
            seconds = range_seconds(profiler, (*labels, "call"), per=calls)
            total = seconds.pop("call")
            row = {f"{label} s": value for label, value in seconds.items()}
            row["rest s"] = total - sum(seconds.values())
            row["call s"] = total
            rows[name] = row
    finally:
        ranges.remove()
    peer_seconds = rows[f"Marigold, {steps} step(s) × 1"]["call s"]
    for row in rows.values():
        row["× Marigold"] = row["call s"] / peer_seconds
    return rows


# -- joint training step ---------------------------------------------------------------------------------------
def write_config(section: dict, config: str, path: Path) -> Path:
    """A copy of `config` whose model section is `section`."""
    content = OmegaConf.to_container(OmegaConf.load(config), resolve=True)
    content["model"] = section
    path.write_text(OmegaConf.to_yaml(content))
    return path


def profile_joint_step(
    config_path: Path, overrides: list[str], *, steps: int, warmup: int, timed: int, output_dir: Path
) -> dict:
    """Train warmup + timed + 1 + steps steps with the real trainer: `timed` steps after the warm-up are timed
    without the profiler (whose per-operator bookkeeping slows a step), the last `steps` are profiled. Returns
    seconds per step of each phase, the median unprofiled step and the trained model."""
    config = load_config(
        config_path,
        [
            *overrides,
            f"train.output_dir={output_dir}",
            "train.stages=[joint]",
            f"train.joint.max_steps={warmup + timed + 1 + steps}",
            "train.joint.checkpoint_every=0",
            "train.joint.validate_every=0",
            "train.log_every=1",
        ],
    )
    trainer = Trainer(config, show_progress=False)
    load_model = trainer._load_model
    ranges: list[ModuleRanges] = []

    def load_and_label(source):
        model = load_model(source)
        ranges.append(ModuleRanges(model_ranges(model)))
        return model

    trainer._load_model = load_and_label
    step_ends: list[float] = []

    def step_hook(_stage, _step):
        step_ends.append(time.perf_counter())
        profiler.step()

    with profile(
        activities=[ProfilerActivity.CPU], schedule=schedule(wait=warmup + timed, warmup=1, active=steps, repeat=1)
    ) as profiler:
        trainer.step_hook = step_hook
        trainer.run()
    for handle in ranges:
        handle.remove()
    events = profiler.key_averages()
    step_seconds = sum(event.cpu_time_total for event in events if event.key.startswith("ProfilerStep")) / 1e6
    labels = (*TRAINER_PHASES, "VAE encoder", "reference net", "backbone")
    seconds = range_seconds(profiler, labels, per=steps)
    seconds["step"] = step_seconds / steps
    unprofiled = [end - start for start, end in zip(step_ends[warmup - 1 :], step_ends[warmup : warmup + timed])]
    seconds["unprofiled step"] = statistics.median(unprofiled)
    return {"seconds": seconds, "model": trainer.model, "config": config}


def necessary_passes(model: RGBDPortraitModel, config, *, repeats: int) -> dict[str, float]:
    """Seconds of the step's necessary work timed alone, at its batch size and precision, without checkpointing:
    reference net and backbone forward, backward of both (backbone alone: the reference features detached), and
    the VAE encodings of targets and references (which cached latents make unnecessary)."""
    stage = config.train.joint
    batch = stage.batch_size * stage.gradient_accumulation_steps
    side = config.data.resolution or model.resolution
    latent_side = side // model.codec.downscale_factor
    channels = model.latent_channels
    generator = torch.Generator().manual_seed(0)
    clean = torch.randn(batch, 2 * channels, latent_side, latent_side, generator=generator)
    reference_latents = torch.randn(batch, channels, latent_side, latent_side, generator=generator)
    timesteps = torch.randint(0, 1000, (batch,), generator=generator)
    masks = task_masks([Task.IMAGE_TO_DEPTH] * batch, batch_size=batch, height=latent_side, width=latent_side)
    pixels = torch.rand(3 * batch, 3, side, side, generator=generator) * 2.0 - 1.0
    denoiser = model.denoiser.train()
    model.backbone.disable_gradient_checkpointing()
    model.reference_net.disable_gradient_checkpointing()
    autocast = (
        torch.autocast("cpu", dtype=torch.bfloat16)
        if config.train.mixed_precision == "bf16"
        else contextlib.nullcontext()
    )

    def clock(function):
        started = time.perf_counter()
        result = function()
        return result, time.perf_counter() - started

    timings: dict[str, list[float]] = {
        key: [] for key in ("reference net forward", "backbone forward", "backward, both", "backbone backward")
    }
    timings["VAE encodings (uncached only)"] = []
    for _ in range(repeats):
        for detached in (False, True):
            with autocast:
                features, reference_seconds = clock(lambda: denoiser.encode_reference(reference_latents))
                if detached:
                    features.bank = {name: tokens.detach().requires_grad_() for name, tokens in features.bank.items()}
                prediction, backbone_seconds = clock(
                    lambda features=features: denoiser.denoise(
                        clean, timesteps, known=clean, masks=masks, reference=features
                    )
                )
                loss = prediction.float().square().mean()
            _, backward_seconds = clock(loss.backward)
            denoiser.zero_grad(set_to_none=True)
            if detached:
                timings["backbone backward"].append(backward_seconds)
            else:
                timings["reference net forward"].append(reference_seconds)
                timings["backbone forward"].append(backbone_seconds)
                timings["backward, both"].append(backward_seconds)
        with torch.no_grad(), autocast:
            _, encode_seconds = clock(lambda: model.codec.encode_rgb(pixels))
        timings["VAE encodings (uncached only)"].append(encode_seconds)
    return {key: statistics.median(values) for key, values in timings.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/sd15.yaml")
    parser.add_argument("--width", type=float, default=0.25, help="channel width multiplier (1 = the config's)")
    parser.add_argument("--resolution", type=int, default=128, help="image side in pixels")
    parser.add_argument("--depth-steps", type=int, default=1, help="image→depth denoising steps")
    parser.add_argument("--ensemble", type=int, default=1, help="image→depth ensemble members (ours)")
    parser.add_argument("--calls", type=int, default=2, help="profiled image→depth calls")
    parser.add_argument("--batch-size", type=int, default=2, help="training batch per step (no accumulation)")
    parser.add_argument("--steps", type=int, default=2, help="profiled training steps per variant")
    parser.add_argument("--warmup", type=int, default=1, help="training steps before the timed ones (at least 1)")
    parser.add_argument(
        "--timed-steps", type=int, default=3, help="training steps timed without the profiler, before the profiled ones"
    )
    parser.add_argument("--mixed-precision", default="no", choices=("no", "bf16"))
    parser.add_argument("--repeats", type=int, default=2, help="timings of the necessary passes (median)")
    parser.add_argument("--skip-training", action="store_true", help="profile image→depth only")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    parser.add_argument("--out", default="benchmarks/results/profile_sd15_cpu.md")
    args = parser.parse_args(argv)
    if args.warmup < 1 or args.timed_steps < 1:
        parser.error("--warmup and --timed-steps: at least 1 each")
    torch.set_num_threads(args.threads)

    section = narrowed_section(args.config, args.width) | {"resolution": args.resolution}
    torch.manual_seed(0)
    model = RGBDPortraitModel.from_config(section, source=args.config).eval()
    parameters = sum(parameter.numel() for parameter in model.denoiser.parameters())
    depth_rows = profile_image_to_depth(model, steps=args.depth_steps, ensemble=args.ensemble, calls=args.calls)
    print(format_markdown_table(depth_rows, row_heading="image→depth call", digits=3), file=sys.stderr)

    step_rows, pass_rows = {}, {}
    if not args.skip_training:
        with tempfile.TemporaryDirectory(prefix="profile-speed-") as scratch:
            scratch = Path(scratch)
            render_dataset(scratch / "studio", identities=4, samples_per_identity=4, size=args.resolution, relights=0)
            config_path = write_config(section, args.config, scratch / "config.yaml")
            common = [
                f"data.root={scratch / 'studio'}",
                "data.sources=[]",
                "data.num_workers=0",
                "data.validation_samples=0",
                f"data.resolution={args.resolution}",
                f"train.mixed_precision={args.mixed_precision}",
                f"train.joint.batch_size={args.batch_size}",
                "train.joint.gradient_accumulation_steps=1",
            ]
            for index, (label, overrides) in enumerate(STEP_VARIANTS):
                result = profile_joint_step(
                    config_path,
                    [*common, *overrides, f"data.cache_dir={scratch / 'cache'}"],
                    steps=args.steps,
                    warmup=args.warmup,
                    timed=args.timed_steps,
                    output_dir=scratch / f"run{index}",
                )
                seconds = result["seconds"]
                passes = necessary_passes(result["model"], result["config"], repeats=args.repeats)
                cached = result["config"].data.cache_latents
                needed = passes["reference net forward"] + passes["backbone forward"] + passes["backward, both"]
                if not cached:
                    needed += passes["VAE encodings (uncached only)"]
                phases = {f"{phase} s": seconds[phase] for phase in TRAINER_PHASES}
                forward = {
                    f"  of which {name} s": seconds[name] for name in ("VAE encoder", "reference net", "backbone")
                }
                named = sum(seconds[phase] for phase in TRAINER_PHASES)
                step = seconds["unprofiled step"]
                step_rows[label] = (
                    {"step, profiled s": seconds["step"]}
                    | phases
                    | forward
                    | {"other s": seconds["step"] - named, "step, unprofiled s": step}
                    | {"samples/s": args.batch_size / step}
                )
                # Checkpointing runs the forward again inside the backward: the price of its memory saving.
                recomputed = (
                    passes["reference net forward"] + passes["backbone forward"]
                    if result["config"].train.gradient_checkpointing
                    else 0.0
                )
                pass_rows[label] = {f"{name} s": value for name, value in passes.items()} | {
                    "necessary s": needed,
                    "unprofiled step / necessary": step / needed,
                    "recomputed forward (checkpointing only) s": recomputed,
                    "unprofiled step / (necessary + recomputed)": step / (needed + recomputed),
                }
                print(f"{label}: {step:.2f} s/step, {step / needed:.2f}× necessary", file=sys.stderr)

    lines = [
        "# Profile: image→depth call and joint training step",
        "",
        f"Command: `{command_line(__file__, argv)}`  ",
        f"Machine: {machine_line('cpu')}.  ",
        f"Model: the layout of `{args.config}` at {args.width:g}× its channel widths ({parameters / 1e6:.1f} M "
        f"trainable parameters in backbone + reference net), random weights, {args.resolution} px "
        f"({args.resolution // model.codec.downscale_factor}² latents), float32 unless stated.",
        "",
        "## Image→depth",
        "",
        f"Seconds per call (mean of {args.calls} profiled calls after a warm-up), batch 1, {args.depth_steps} "
        f"denoising step(s); ours with {args.ensemble} ensemble member(s) (the image, then its mirror image), "
        "Marigold with its default of one. `rest`: inputs, scheduler, ensembling, normals, output conversion.",
        "",
        format_markdown_table(depth_rows, row_heading="call", digits=3),
    ]
    if step_rows:
        lines += [
            "## Joint training step",
            "",
            f"The real trainer, batch {args.batch_size}, {args.mixed_precision} mixed precision; seconds per step. "
            f"After {args.warmup} warm-up step(s), the median of {args.timed_steps} steps timed without the profiler "
            f"(*unprofiled*: what training costs), then the mean of {args.steps} profiled steps after one more "
            "(*profiled*: the breakdown; the profiler's per-operator bookkeeping makes these steps slower, most of "
            "all the backward's many small operators). Phases as the trainer names them; the forward's parts are "
            "inside `forward and loss` (with checkpointing, the recomputed forward is inside `backward`).",
            "",
            format_markdown_table(_transpose(step_rows), row_heading="phase", digits=3),
            "### Against the step's necessary passes",
            "",
            f"The same model, batch and precision timed alone (median of {args.repeats}), no checkpointing. "
            "*necessary*: reference net and backbone forward and their backward, plus the VAE encodings when "
            "latents are not cached; the step set against them is the unprofiled one. With gradient checkpointing "
            "the backward also recomputes both forwards: the last rows add them.",
            "",
            format_markdown_table(_transpose(pass_rows), row_heading="pass", digits=3),
        ]
    report = "\n".join(lines)
    write_markdown(args.out, report)
    print(report)
    return 0


def _transpose(rows: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Variants as columns, measures as rows."""
    keys = list(next(iter(rows.values())))
    return {key: {variant: values[key] for variant, values in rows.items()} for key in keys}


if __name__ == "__main__":
    sys.exit(main())
