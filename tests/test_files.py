import os
import stat

import pytest

from rgbd_portrait.files import atomic_file, atomic_folder, write_bytes_atomically


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_folder_appears_whole_with_the_umask_mode(tmp_path, umask_022):
    destination = tmp_path / "result"
    with atomic_folder(destination) as temporary:
        (temporary / "a.txt").write_text("a")
        assert not destination.exists()
    assert (destination / "a.txt").read_text() == "a"
    assert stat.S_IMODE(destination.stat().st_mode) == 0o755
    assert [path.name for path in tmp_path.iterdir()] == ["result"]


def test_failed_folder_leaves_the_old_one(tmp_path):
    destination = tmp_path / "result"
    destination.mkdir()
    (destination / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_folder(destination) as temporary:
        (temporary / "new.txt").write_text("new")
        raise RuntimeError("interrupted")
    assert sorted(path.name for path in destination.iterdir()) == ["old.txt"]
    assert [path.name for path in tmp_path.iterdir()] == ["result"]


def test_existing_folder_is_replaced(tmp_path):
    destination = tmp_path / "result"
    destination.mkdir()
    (destination / "old.txt").write_text("old")
    with atomic_folder(destination) as temporary:
        (temporary / "new.txt").write_text("new")
    assert sorted(path.name for path in destination.iterdir()) == ["new.txt"]
    assert [path.name for path in tmp_path.iterdir()] == ["result"]


def test_file_is_written_whole_with_the_umask_mode(tmp_path, umask_022):
    path = write_bytes_atomically(tmp_path / "sub" / "x.bin", b"abc")
    assert path.read_bytes() == b"abc"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    with pytest.raises(RuntimeError), atomic_file(path) as temporary:
        temporary.write_bytes(b"partial")
        raise RuntimeError("interrupted")
    assert path.read_bytes() == b"abc"
    assert [p.name for p in path.parent.iterdir()] == ["x.bin"]
