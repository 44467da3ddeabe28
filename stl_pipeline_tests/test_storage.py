import os
import subprocess
import sys
from pathlib import Path

import pytest

from stl_pipeline.storage import PART_SUFFIX, atomic_write_bytes, atomic_writer, remove_stale_parts


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_cleanup_spares_the_files_of_live_writers(tmp_path: Path) -> None:
    own = tmp_path / "a" / f".x.jpg.{os.getpid()}.abc{PART_SUFFIX}"
    dead = tmp_path / "b" / f".y.jpg.{dead_pid()}.def{PART_SUFFIX}"
    unnamed = tmp_path / "b" / f".z.jpg.nopid{PART_SUFFIX}"
    for part in (own, dead, unnamed):
        part.parent.mkdir(exist_ok=True)
        part.write_bytes(b"partial")
    assert remove_stale_parts(tmp_path) == 2
    assert own.exists() and not dead.exists() and not unnamed.exists()


def test_failed_write_leaves_neither_file_nor_part(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    atomic_write_bytes(target, b"old")
    with pytest.raises(RuntimeError), atomic_writer(target) as handle:
        handle.write(b"new but unfinished")
        raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"old"
    assert not list(tmp_path.glob(f"*{PART_SUFFIX}"))
