"""Choosing the device and the dtype from the command line's words, reading where weights are, and keeping freed
CPU memory."""

import platform
import subprocess
import sys
import textwrap

import pytest
import torch

from rgbd_portrait import devices
from rgbd_portrait.errors import UserInputError


@pytest.mark.parametrize("native", [True, False])
def test_auto_dtype_is_bfloat16_only_on_a_cpu_that_computes_it_natively(monkeypatch, native):
    monkeypatch.setattr(devices, "cpu_has_native_bfloat16", lambda: native)
    expected = torch.bfloat16 if native else torch.float32
    assert devices.resolve_dtype("auto", torch.device("cpu")) == expected
    # On a GPU auto keeps float32: bfloat16 there is not measured yet.
    assert devices.resolve_dtype("auto", torch.device("cuda")) == torch.float32


def test_named_dtypes_are_taken_as_given_and_float16_is_refused_on_the_cpu():
    assert devices.resolve_dtype("float32", torch.device("cpu")) == torch.float32
    assert devices.resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    assert devices.resolve_dtype("float16", torch.device("cuda")) == torch.float16
    with pytest.raises(UserInputError, match="--dtype float16: not supported on the CPU"):
        devices.resolve_dtype("float16", torch.device("cpu"))


def test_native_bfloat16_probe_answers_without_failing():
    assert isinstance(devices.cpu_has_native_bfloat16(), bool)


def test_placement_follows_the_weights():
    module = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    assert devices.placement(module) == (torch.device("cpu"), torch.float32)
    assert devices.placement(module.to(torch.bfloat16)) == (torch.device("cpu"), torch.bfloat16)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator only")
def test_freed_cpu_memory_is_reused_without_page_faults():
    """A 16 MB tensor allocated and freed again: by default every round maps fresh pages (one fault per 4 KB page);
    once freed memory is kept, the rounds reuse it. Per-round medians: the allocator may still grow its heap in
    a round or two after the switch. In a subprocess: the setting lasts for the process."""
    script = textwrap.dedent(
        """
        import resource
        import statistics
        import torch
        from rgbd_portrait.devices import keep_freed_cpu_memory

        def faults_per_round(rounds):
            counts = []
            for _ in range(rounds):
                start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                torch.ones(4 * 2**20)
                counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
            return statistics.median(counts)

        faults_per_round(1)
        before = faults_per_round(7)
        kept = keep_freed_cpu_memory()
        print(kept, before, faults_per_round(7))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    kept, before, after = result.stdout.split()
    assert kept == "True"
    assert float(before) > 4_000  # 4,096 pages a round
    assert float(after) < float(before) / 20
