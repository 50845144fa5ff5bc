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


@pytest.mark.parametrize("workers", ["threads", "processes"])
def test_concurrent_writers_each_write_whole_and_never_trip_over_each_other(tmp_path, workers):
    """Launchers in several processes save the same settings file; with one shared temporary
    name, one writer's rename could take away the file another was about to rename."""
    import concurrent.futures as cf

    path = tmp_path / "launcher.json"
    payloads = [f'{{"max_concurrent": {n}}}\n'.encode() * 50 for n in range(4)]
    pool = cf.ThreadPoolExecutor if workers == "threads" else cf.ProcessPoolExecutor
    with pool(4) as ex:
        done = list(ex.map(_write_many, [path] * 4, payloads))
    assert done == [path] * 4
    assert path.read_bytes() in payloads
    assert sorted(p.name for p in tmp_path.iterdir()) == ["launcher.json"]


def _write_many(path, payload, times=300):
    for _ in range(times):
        atomic_write(path, lambda fh: fh.write(payload), concurrent_writers=True)
    return path
