"""Choosing the device and the dtype from the command line's words, and reading where weights are."""

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
