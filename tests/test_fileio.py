"""Checkpoints and packs are written whole or not at all."""
import pytest

from taps.fileio import atomic_write


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    path = atomic_write(tmp_path / "pack.safetensors", lambda fh: fh.write(b"version 1"))
    assert path.read_bytes() == b"version 1"

    def crash_half_way(fh):
        fh.write(b"half of version 2")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        atomic_write(path, crash_half_way)
    assert path.read_bytes() == b"version 1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pack.safetensors"]
