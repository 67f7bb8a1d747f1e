import numpy as np
import pytest

from rgbd_portrait.data.sample_format import PortraitSample, read_sample, write_sample
from rgbd_portrait.errors import UserInputError


def _sample(size=16):
    rng = np.random.default_rng(0)
    mask = np.zeros((size, size), bool)
    mask[4:12, 4:12] = True
    normal = np.zeros((size, size, 3), np.float32)
    normal[mask] = (0.0, 0.0, 1.0)
    return PortraitSample(
        rgb=rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
        depth=np.where(mask, 1.5, 0.0).astype(np.float32),
        mask=mask,
        meta={"identity": "id0000", "depth_source": "exact"},
        normal=normal,
        relit=[rng.integers(0, 256, (size, size, 3), dtype=np.uint8)],
    )


def test_round_trip(tmp_path):
    sample = _sample()
    write_sample(tmp_path / "s0", sample)
    loaded = read_sample(tmp_path / "s0")
    np.testing.assert_array_equal(loaded.rgb, sample.rgb)
    np.testing.assert_array_equal(loaded.depth, sample.depth)
    np.testing.assert_array_equal(loaded.mask, sample.mask)
    np.testing.assert_allclose(loaded.normal, sample.normal, atol=1e-2)
    assert loaded.meta == sample.meta
    assert len(loaded.relit) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["s0"]


def test_failed_write_leaves_nothing(tmp_path):
    sample = _sample()
    sample.meta = {"not serialisable": object()}
    with pytest.raises(TypeError):
        write_sample(tmp_path / "s0", sample)
    assert list(tmp_path.iterdir()) == []


def test_existing_sample_is_not_overwritten_by_default(tmp_path):
    write_sample(tmp_path / "s0", _sample())
    with pytest.raises(UserInputError, match="already exists"):
        write_sample(tmp_path / "s0", _sample())


def test_not_a_sample(tmp_path):
    with pytest.raises(UserInputError, match="not a sample folder"):
        read_sample(tmp_path)


def test_sample_folder_follows_umask(tmp_path):
    import os
    import stat

    previous = os.umask(0o022)
    try:
        write_sample(tmp_path / "s0", _sample())
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "s0").stat().st_mode) == 0o755
