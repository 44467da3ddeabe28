"""Atomic file writes: a reader never sees a half-written file, even after a crash.

Temporary files carry their writer's process id, so a cleanup removes only what
a dead writer left behind, never the in-flight file of a concurrent run.
Content digests tell a changed file from a touched one. Reads of an artifact that
was damaged anyway (a full disk, a copy cut short, a hand edit) name the file, and so does a
write that the disk has no room for: libraries report that as a bare "unexpected pos" or
"basic_ios::clear", with no path.
"""

import errno
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, TypeVar

PART_SUFFIX = ".part"
T = TypeVar("T")
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


class CorruptArtifactError(ValueError):
    """A file that exists but cannot be read as what it should be."""


class DiskFullError(OSError):
    """A write that failed for want of space; the message names the file and what to free."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.errno = errno.ENOSPC


def _no_space(exc: BaseException | None) -> bool:
    """Whether ``exc`` or an exception it was raised from or during is a full disk or quota."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _NO_SPACE:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _size(count: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:,.0f} {unit}" if unit == "bytes" else f"{count:,.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def disk_full(path: Path, exc: BaseException, written: int | None = None) -> DiskFullError | None:
    """The error to raise for ``exc`` if it came from a full disk while writing ``path``."""
    if not _no_space(exc):
        return None
    folder = Path(path).parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    usage = shutil.disk_usage(folder)
    wrote = "" if written is None else f" after {_size(written)}"
    return DiskFullError(
        f"cannot write {path}: the disk that holds it is full (the write stopped{wrote}; "
        f"{_size(usage.free)} free of {_size(usage.total)} now). Free space there (old checkpoints "
        "and plots under STL_DATA_DIR, runs deleted in MLflow with `mlflow gc`, unused Docker images) "
        "or move STL_DATA_DIR to a larger disk, then rerun: finished steps are kept"
    )


def read_artifact(path: Path, reader: Callable[[Path], T], remedy: str) -> T:
    """``reader(path)``, with any failure but a missing file reported as one line that names
    the file and ``remedy``: parquet, safetensors, torch and FAISS each raise their own types."""
    try:
        return reader(path)
    except FileNotFoundError:
        raise
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [""])[0][:200]
        raise CorruptArtifactError(
            f"{path} is damaged or truncated ({type(exc).__name__}: {reason}); {remedy}"
        ) from exc


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# Read once, at import: os.umask can only be read by setting it.
UMASK = _umask()


def _temporary(path: Path) -> tuple[int, str]:
    """A private temporary file beside ``path``, given the mode a plain ``open`` would (mkstemp
    makes 0600 files, which a web server's user could not read once renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=PART_SUFFIX)
    os.fchmod(fd, 0o666 & ~UMASK)
    return fd, tmp


@contextmanager
def _staged(path: Path) -> Iterator[Path]:
    """Yield a temporary path that is fsynced and renamed onto ``path`` once the block ends."""
    path = Path(path)
    fd, tmp = _temporary(path)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        written = os.path.getsize(tmp) if os.path.exists(tmp) else None
        Path(tmp).unlink(missing_ok=True)  # first: the space it held is free again
        full = disk_full(path, exc, written)
        if full is not None:
            raise full from exc
        raise


@contextmanager
def atomic_writer(path: Path) -> Iterator[BinaryIO]:
    """Yield a file that replaces ``path`` only once complete."""
    with _staged(path) as tmp, open(tmp, "wb") as handle:
        yield handle


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_writer(path) as handle:
        handle.write(data)


def atomic_write_with(path: Path, write: Callable[[Path], None]) -> None:
    """Let ``write`` fill a temporary path (for libraries that want a file name)."""
    with _staged(path) as tmp:
        write(tmp)


def _writer_alive(part: Path) -> bool:
    fields = part.name[: -len(PART_SUFFIX)].split(".")
    try:
        pid = int(fields[-2])
    except (IndexError, ValueError):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_parts(root: Path) -> int:
    """Delete temporary files whose writer has died under ``root``; return how many."""
    removed = 0
    if Path(root).is_dir():
        for part in Path(root).rglob(f".*{PART_SUFFIX}"):
            if not _writer_alive(part):
                part.unlink(missing_ok=True)
                removed += 1
    return removed


def files_digest(paths: list[Path], chunk: int = 1 << 20) -> str:
    """sha256 over the contents of ``paths`` in order: what changed, not when it was touched."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            while block := handle.read(chunk):
                digest.update(block)
        digest.update(b"\0")  # moving bytes from one file to the next changes the digest
    return digest.hexdigest()
