"""Atomic file writes: a reader sees the old file or the new one, never a torn one.

Runs are killed (SIGKILL, preemption, a full disk) at arbitrary points; a checkpoint, a metrics file
or a study's result that is half written would make resume or caching read garbage. Every writer
in kadyn goes through here: the data goes to a unique temporary file in the same directory (same
filesystem, so the rename is atomic; unique, so two processes never share one), is flushed and
fsynced, then moved over the target with os.replace. On any failure, KeyboardInterrupt included,
the temporary file is removed and the previous file stays intact.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Union

PathLike = Union[str, "os.PathLike[str]"]


def atomic_write(path: PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Call `write(f)` on a binary file that replaces `path` only once `write` has returned.

    For streaming writers such as `torch.save(state, f)` or `fig.savefig(f, format="png")`.
    The parent directory is created if missing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        # A failed write() names no file; say which one could not be written (a full disk).
        raise OSError(e.errno, e.strerror or str(e), str(path)) from e
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: PathLike, text: str) -> None:
    """UTF-8 text, newlines written as given."""
    atomic_write_bytes(path, text.encode("utf-8"))
