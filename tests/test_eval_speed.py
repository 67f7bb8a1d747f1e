"""Speed tools: timing, the offline Marigold peer, reference caching, and the speed benchmark at toy size."""

import runpy
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from rgbd_portrait.evaluation.speed import build_marigold_peer, compare_reference_caching, time_call
from rgbd_portrait.models.rgbd_model import RGBDPortraitModel
from rgbd_portrait.models.testing import tiny_model_section

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SIDE = 16  # the tiny model's resolution


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return RGBDPortraitModel.from_config(tiny_model_section()).eval()


def test_time_call_warms_up_then_times_each_repeat():
    calls = []
    seconds = time_call(lambda: calls.append(1), device="cpu", repeats=3, warmup=2)
    assert len(calls) == 5 and len(seconds) == 3 and all(value >= 0 for value in seconds)
    with pytest.raises(ValueError):
        time_call(lambda: None, device="cpu", repeats=0)


def test_marigold_peer_is_built_offline_with_our_sizes_and_predicts_depth(model):
    peer = build_marigold_peer(model)
    assert peer.tokenizer is None and peer.text_encoder is None
    assert peer.unet.config.in_channels == 2 * model.latent_channels
    assert peer.unet.config.out_channels == model.latent_channels
    assert list(peer.unet.config.block_out_channels) == list(model.backbone.config.block_out_channels)
    assert peer.vae is model.vae and peer.default_processing_resolution == model.resolution
    image = torch.rand(1, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(0))
    output = peer(image, output_type="pt", generator=torch.Generator().manual_seed(0))
    assert output.prediction.shape == (1, 1, SIDE, SIDE) and torch.isfinite(output.prediction).all()


def test_reference_every_step_gives_the_cached_result_with_one_reference_run_per_step(model):
    image = torch.rand(1, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(1))
    measured = compare_reference_caching(model, image, steps=3, repeats=1)
    assert measured["reference_runs"] == 3 and measured["max_difference"] == 0.0
    assert measured["cached_seconds"] > 0 and measured["every_step_seconds"] > 0


def _run_at_toy_size(script: str, argv: list[str], tmp_path: Path, monkeypatch) -> Path:
    """Run a benchmark script on the tiny model's architecture; returns its report's path."""
    config = tmp_path / "tiny.yaml"
    OmegaConf.save({"model": tiny_model_section()}, config)
    out = tmp_path / "report.md"
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.setattr(sys, "argv", [script, "--config", str(config), "--threads", "1", "--out", str(out), *argv])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(BENCHMARKS / script), run_name="__main__")
    assert exit_info.value.code == 0
    return out


def test_speed_benchmark_runs_at_toy_size(tmp_path, monkeypatch):
    argv = ["--steps", "1", "--repeats", "1", "--sections", "depth,generation,caching,precision"]
    out = _run_at_toy_size("bench_speed_vs_marigold.py", argv, tmp_path, monkeypatch)
    report = out.read_text()
    assert "| 1 steps, 1 prediction, the image as its own reference |" in report and "ours / Marigold" in report
    assert "| 1 steps, 1 prediction, no reference |" in report
    assert "every step / cached" in report and "two passes" in report
    assert "| float32 s | bfloat16 s | float32 / bfloat16 |" in report and "Ours in bfloat16 against" in report
    assert out.with_suffix(".png").stat().st_size > 0


def test_profile_runs_at_toy_size_and_sets_the_unprofiled_step_against_its_passes(tmp_path, monkeypatch):
    argv = ["--width", "1", "--resolution", "16", "--calls", "1", "--steps", "1", "--timed-steps", "2"]
    report = _run_at_toy_size("profile_speed.py", [*argv, "--repeats", "1"], tmp_path, monkeypatch).read_text()
    assert "| ours, 1 step(s) × 1, the image as its own reference |" in report
    assert "| ours, 1 step(s) × 1, no reference |" in report and "| step, unprofiled s |" in report
    assert "| unprofiled step / necessary |" in report and "| step, profiled s |" in report
