"""Seeds derived from (seed, step, rank, …) and the global random states of one process.

Everything random in a training step (noise, timesteps, tasks, reference dropout) is drawn from a generator
seeded by `derive_seed(seed, stage, step, rank, micro_batch)`, never from the global generators. A resumed
run therefore draws exactly what the uninterrupted run drew, whatever happened before the checkpoint. The
global states are still saved and restored (`capture_rng_state` / `restore_rng_state`) for code we do not
control, e.g. dropout layers.
"""

from __future__ import annotations

import random
import zlib

import numpy as np
import torch


def derive_seed(*parts: int | str) -> int:
    """A well-mixed 63-bit seed from integers and strings (strings hashed with a stable CRC32)."""
    words = [zlib.crc32(part.encode()) if isinstance(part, str) else int(part) for part in parts]
    if any(word < 0 for word in words):
        raise ValueError(f"seed parts must be non-negative, got {parts}")
    return int(np.random.SeedSequence(words).generate_state(1, dtype=np.uint64)[0]) >> 1


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


def capture_rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    """This process's global random states: tensors (torch, CUDA) and JSON-ready values (python, numpy)."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{index}"] = state
    version, python_state, gauss_next = random.getstate()
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()  # noqa: NPY002 (the legacy global state is what we save)
    values = {
        "python": {"version": version, "state": list(python_state), "gauss_next": gauss_next},
        "numpy": {
            "kind": kind,
            "keys": keys.tolist(),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
    }
    return tensors, values


def restore_rng_state(tensors: dict[str, torch.Tensor], values: dict) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda_states = [tensors[f"cuda.{index}"] for index in range(len(tensors)) if f"cuda.{index}" in tensors]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states[: torch.cuda.device_count()])
    python = values["python"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss_next"]))
    numpy_state = values["numpy"]
    np.random.set_state(  # noqa: NPY002
        (
            numpy_state["kind"],
            np.asarray(numpy_state["keys"], dtype=np.uint32),
            numpy_state["position"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
