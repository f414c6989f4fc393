"""Atomic file writes: readers see the old content or the new, never a mix, even after a crash."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, data: bytes | str, mode: int = 0o644) -> None:
    """Replace `path` in one step with `data` (text is written as UTF-8), created with `mode`.

    A temporary file beside it is written, flushed to disk and renamed over it; the folder is
    synced so that the rename survives a power cut. The temporary name carries the process id,
    so two processes writing the same file do not write into each other's temporary file.
    """
    raw = data.encode("utf-8") if isinstance(data, str) else data
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(raw)
            out.flush()
            os.fchmod(out.fileno(), mode)  # the umask may have narrowed what os.open made
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
