"""Make a finished training run the package's default model: `python scripts/ship_default_model.py runs/default`.

Writes the model of the run's last stage, with its weights stored in fp16, to `src/rgbd_portrait/weights/default/`
(replacing the one there), and beside it, in `training/`, what produced it: the run's config, every stage's CSV
logs and the training curves. The evaluation of the shipped weights is then written next to them by
`rgbd-portrait eval --data DATA --out src/rgbd_portrait/weights/default/training/evaluation`.
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


def ship(run_dir: Path, destination: Path, *, stage: str | None = None) -> Path:
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
    args = parser.parse_args()
    source = ship(args.run, args.out, stage=args.stage)
    size = sum(path.stat().st_size for path in args.out.rglob("*.safetensors"))
    print(f"shipped {source} → {args.out} ({size / 2**20:.1f} MiB of fp16 weights)")


if __name__ == "__main__":
    main()
