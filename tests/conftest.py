"""Test-wide settings: offline, deterministic, small."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# Idle OpenMP threads sleep instead of spinning: spinning threads starve other processes on a busy 2-core
# machine (a 1 s test took 15 s under load). Must be set before torch starts its thread pool.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

# One thread: the models in tests are tiny, and on a 2-core CI machine two threads per test cost more
# in synchronisation than they save (measured: 0.12 s vs 1.5 s for a tiny predict_depth under load).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
