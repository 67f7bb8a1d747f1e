"""Make a finished training run the package's default model: `python scripts/ship_default_model.py runs/default`.

Writes the model of the run's last stage, with its weights stored in fp16, to `src/rgbd_portrait/weights/default/`
(replacing the one there), and beside it, in `training/`, what produced it: the run's config, every stage's CSV
logs and the training curves. The evaluation of the shipped weights is then written next to them by
`rgbd-portrait eval --data DATA --out src/rgbd_portrait/weights/default/training/evaluation`.

`--decoder-from RUN` takes the VAE decoder of another run's codec stage trained with
`train.codec.train_encoder=false` on the same encoder (wider or not): the latent space is the same, so the decoder
drops in.
Its encoder and latent calibration are checked to be identical to the shipped run's.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

from rgbd_portrait.models import RGBDPortraitModel
from rgbd_portrait.training.curves import CURVES_NAME, logged_stages, plot_training_curves
from rgbd_portrait.training.trainer import RunFolders
from rgbd_portrait.weights import default_model_dir

RECORD_FOLDER = "training"


LATENT_SPACE_PARTS = ("encoder", "quant_conv")


def take_decoder(model: RGBDPortraitModel, donor_dir: Path) -> None:
    """Put the VAE decoder of the model in `donor_dir` into `model`, whose latent space it must share.

    The donor's decoder may be wider (`train.codec.decoder_width`): the donor's VAE, checked to encode as
    `model`'s does, takes the place of `model`'s."""
    donor = RGBDPortraitModel.from_pretrained(donor_dir).vae
    vae = model.vae
    for key in ("scaling_factor", "shift_factor"):
        if vae.config[key] != donor.config[key]:
            raise SystemExit(f"{donor_dir}: its latent {key} {donor.config[key]} is not {vae.config[key]}")
    for part in LATENT_SPACE_PARTS:
        own, theirs = getattr(vae, part).state_dict(), getattr(donor, part).state_dict()
        differing = [key for key in own if not torch.equal(own[key], theirs[key])]
        if differing:
            raise SystemExit(f"{donor_dir}: its VAE {part} differs ({differing[0]}, ...): not the same latent space")
    model.codec.vae = donor


def ship(run_dir: Path, destination: Path, *, stage: str | None = None, decoder_from: Path | None = None) -> Path:
    stages = logged_stages(run_dir)
    if not stages:
        raise SystemExit(f"{run_dir}: no trained stage found (expected <stage>/logs/train.jsonl)")
    if stage is not None:
        if stage not in stages:
            raise SystemExit(f"{run_dir}: no {stage} stage (stages with logs: {', '.join(stages)})")
        stages = stages[: stages.index(stage) + 1]
    final = RunFolders(run_dir).final_model(stages[-1])
    if not final.is_dir():
        raise SystemExit(f"{final}: the {stages[-1]} stage has not finished (no model folder)")
    model = RGBDPortraitModel.from_pretrained(final)
    if decoder_from is not None:
        take_decoder(model, RunFolders(decoder_from).final_model("codec"))
    model.save_pretrained(destination, overwrite=True, dtype=torch.float16)

    record = destination / RECORD_FOLDER
    (record / "logs").mkdir(parents=True)
    shutil.copyfile(run_dir / "config.yaml", record / "config.yaml")
    for stage in stages:
        for log in sorted((run_dir / stage / "logs").glob("*.csv")):
            shutil.copyfile(log, record / "logs" / f"{stage}_{log.name}")
    plot_training_curves(run_dir, record / CURVES_NAME)
    return final


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="training run folder (train.output_dir of its config)")
    parser.add_argument("--out", type=Path, default=default_model_dir(), help="default: the package's default model")
    parser.add_argument("--stage", help="ship the model of this stage (default: the run's last)")
    parser.add_argument("--decoder-from", type=Path, help="a run whose decoder-only codec stage replaces the decoder")
    args = parser.parse_args()
    source = ship(args.run, args.out, stage=args.stage, decoder_from=args.decoder_from)
    size = sum(path.stat().st_size for path in args.out.rglob("*.safetensors"))
    print(f"shipped {source} → {args.out} ({size / 2**20:.1f} MiB of fp16 weights)")


if __name__ == "__main__":
    main()
