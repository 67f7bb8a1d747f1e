"""Where can the mouth's opening be read from during motion training: the audio the layers hear, or the frame
around the mouth that mouth inpainting gives them?

    python benchmarks/study_mouth_cues.py --train datasets/grid/train datasets/grid/train_more \
        --test datasets/grid/test_s1 datasets/grid/unseen --out benchmarks/results/mouth_cues.md

Talking videos prepared by `rgbd-portrait prepare` are cut into the motion stage's clips (`TalkingClipDataset`
at the model's resolution, `clip_frames` from its motion layers, one clip after another), and every frame gives:

* its true mouth opening, from the face mesh `prepare` stored (inner-lip distance over face height,
  `face_regions.mouth_opening`, as the clips serve it);
* the audio features the motion layers hear (the model's feature type, the frame and its ± `audio_radius`
  neighbours), and the loudness alone (RMS per frame);
* the frame's codec latents (RGB and depth) on the latent cells outside the clip's mouth box and inside it
  (`face_regions.box_cells`, the cells that mouth inpainting knows and generates).

A ridge regression from each cue to the mouth opening is fitted on the `--train` folders (features and openings
centred per sequence: only changes over time count), its strength picked on a fifth of the training sequences
held out, and it is scored on each `--test` folder as the benchmark scores generated mouths: Pearson correlation
over each sequence's frames with the true opening, averaged over sequences. A linear read-out is a lower bound
on what a network can get from a cue. A cue that tells the mouth during training but is absent at animation
(where the frame around the mouth is the still photo) is a shortcut: the layers can learn it instead of the audio.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from benchmark_support import command_line, machine_line, write_markdown
from rgbd_portrait.data.audio import make_audio_features
from rgbd_portrait.data.face_regions import box_cells
from rgbd_portrait.data.sample_format import read_sequence_audio
from rgbd_portrait.data.sequence_dataset import TalkingClipDataset
from rgbd_portrait.evaluation.lipsync import frame_loudness, pearson
from rgbd_portrait.models import RGBDPortraitModel
from rgbd_portrait.training.mouth_guide import ridge_read_out
from rgbd_portrait.weights import default_model_dir

CUES = {
    "audio": "audio features the layers hear",
    "loudness": "loudness alone (RMS per frame)",
    "surround": "codec latents outside the mouth box (each frame's own: what training knew)",
    "inside": "codec latents inside the mouth box (what is generated: the ceiling)",
}


@dataclass
class Sequence:
    name: str
    mouth: np.ndarray  # (T,)
    cues: dict[str, np.ndarray]  # name → (T, D)


@torch.no_grad()
def read_sequences(root: str, model: RGBDPortraitModel) -> list[Sequence]:
    motion = model.motion.config
    clips = TalkingClipDataset(
        root,
        audio_features=make_audio_features(motion.audio_features),
        split=None,
        resolution=model.resolution,
        clip_frames=motion.window_frames,
        audio_radius=motion.audio_radius,
    )
    by_sequence: dict[int, list[int]] = {}
    for index, clip in enumerate(clips.clips):
        if clip.first_frame % clips.clip_frames == 0:  # one clip after another, as a sequence is cut in training
            by_sequence.setdefault(clip.sequence, []).append(index)
    sequences = []
    for number, indices in tqdm(by_sequence.items(), desc=f"reading {root}", unit="sequence"):
        sequence = clips.sequences[number]
        samples, sample_rate = read_sequence_audio(sequence.folder)
        loudness = frame_loudness(samples, sample_rate, fps=sequence.fps, frames=sequence.frame_count)
        parts: dict[str, list[np.ndarray]] = {name: [] for name in (*CUES, "mouth")}
        for index in indices:
            item = clips[index]
            frames = item["frame_index"].numpy()
            parts["mouth"].append(item["mouth_opening"].numpy())
            parts["audio"].append(item["audio"].flatten(1).numpy())
            parts["loudness"].append(loudness[frames, None])
            latents = model.codec.encode_rgbd(item["rgb"], item["depth"])
            side = item["rgb"].shape[-1]
            outside = ~box_cells(item["mouth_box"], tuple(latents.shape[-2:]), side)
            parts["surround"].append((latents * outside).flatten(1).numpy())
            parts["inside"].append((latents * ~outside).flatten(1).numpy())
        joined = {name: np.concatenate(values) for name, values in parts.items()}
        mouth = joined.pop("mouth")
        sequences.append(Sequence(sequence.folder.name, mouth, joined))
    return sequences


def scores(weights: np.ndarray, sequences: list[Sequence], cue: str) -> list[float]:
    return [pearson(s.cues[cue] @ weights, s.mouth) for s in sequences]


def read_out(train: list[Sequence], cue: str) -> tuple[np.ndarray, float, float]:
    """Ridge weights fitted on all of `train` at the strength best on its held-out fifth (the mouth guide's fit,
    `rgbd_portrait.training.mouth_guide`); that strength and the held-out score."""
    return ridge_read_out([(s.cues[cue], s.mouth) for s in train])


def quoted(text: str) -> str:
    return f"`{text}`"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(default_model_dir()), help="model with motion layers (codec, clips)")
    parser.add_argument("--train", nargs="+", required=True, help="prepared talking videos to fit the read-outs on")
    parser.add_argument("--test", nargs="+", required=True, help="prepared talking videos to score them on")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/mouth_cues.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = RGBDPortraitModel.from_pretrained(args.model).eval()
    if model.motion is None:
        raise SystemExit(f"{args.model}: no motion layers (their audio features and clip length are studied)")
    train = [s for root in args.train for s in read_sequences(root, model)]
    tests = {root: read_sequences(root, model) for root in args.test}

    header = "| cue | features | ridge strength (held-out training r) | " + " | ".join(
        f"`{root}` mean r (per sequence)" for root in tests
    )
    lines = [header + " |", "|---|---:|---|" + "---|" * len(tests)]
    for cue, title in CUES.items():
        weights, strength, held_out = read_out(train, cue)
        cells = []
        for sequences in tests.values():
            values = scores(weights, sequences, cue)
            cells.append(f"**{np.nanmean(values):.2f}** ({' '.join(f'{v:.2f}' for v in values)})")
        lines.append(f"| {title} | {weights.size} | {strength:g} ({held_out:.2f}) | " + " | ".join(cells) + " |")

    frames = sum(len(s.mouth) for s in train)
    report = "\n".join(
        [
            "# Where the mouth's opening can be read from during motion training",
            "",
            f"Command: `{command_line(__file__, argv)}`  ",
            f"Model: `{args.model}` (its codec, audio features and clip length).  ",
            machine_line("cpu"),
            "",
            f"Read-outs fitted on {len(train)} sequences ({frames} frames) of {', '.join(map(quoted, args.train))};"
            " scored per test sequence: Pearson correlation over its frames between the read-out and the true mouth"
            " opening (the benchmark's mouth sync, here from a linear read-out instead of a generated video).",
            "",
            *lines,
            "",
        ]
    )
    print(report)
    write_markdown(args.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
