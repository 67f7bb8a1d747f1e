"""Choosing the torch device from a user's word for it, reading where a model's weights are, and keeping the
CPU's freed memory for reuse."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

import torch

from rgbd_portrait.errors import UserInputError


def placement(module: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and dtype of a module's first parameter (our models keep every weight on one device in one dtype).

    diffusers' `ModelMixin.device` and `.dtype` walk the whole module tree on every read, about a millisecond
    each for the default model on a 2-core CPU; sampling reads them many times per call.
    """
    parameter = next(module.parameters())
    return parameter.device, parameter.dtype


def resolve_device(name: str) -> torch.device:
    """`auto` = CUDA, else Apple's MPS, else the CPU; an unavailable accelerator is a one-line error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserInputError("--device cuda: CUDA is not available on this machine")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserInputError("--device mps: Apple's MPS is not available on this machine")
    return torch.device(name)


def cpu_has_native_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX512-BF16 or AMX), where oneDNN runs the model's
    convolutions and matrix products about twice as fast as in float32; elsewhere bfloat16 is emulated and slower."""
    probes = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
    return torch.backends.mkldnn.is_available() and any(probe is not None and probe() for probe in probes)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto` = bfloat16 on a CPU that computes it natively, else float32 (the accuracy measured in bfloat16 on
    the real test faces is float32's: docs/inference.md); float16 on the CPU is a one-line error."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cpu" and cpu_has_native_bfloat16() else torch.float32
    dtype = getattr(torch, name)
    if dtype == torch.float16 and device.type == "cpu":
        raise UserInputError("--dtype float16: not supported on the CPU; use bfloat16 or float32")
    return dtype


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


@functools.cache
def keep_freed_cpu_memory() -> bool:
    """Ask glibc's allocator to keep freed memory in the process instead of handing it back to the system.

    By default glibc serves large blocks with fresh `mmap` pages and trims the heap's free top, so a training loop
    that frees and reallocates its activations and gradients every step page-faults them all back in: ~38,000
    faults and 10–20 % of a step at the SD-1.5 layout on a 2-core CPU (`benchmarks/profile_speed.py`). With
    both switched off the memory stays mapped at its peak and is reused. Returns whether the allocator took the
    settings (False off glibc, e.g. on macOS, where nothing changes). Process-wide and lasting: for trainers
    and other long-running loops, not for a library import.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success; the trim threshold is the largest int (never trim).
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
