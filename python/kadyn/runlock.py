"""An exclusive lock on an output directory: two processes never write into one run or dataset.

Checking "does DIR already hold a run?" and then writing is check-then-act: two processes started
together both pass the check and interleave their files. So a writer first takes a non-blocking
`flock` on `DIR/.kadyn.lock` and holds it until it exits; the kernel drops it when the process
dies, even by SIGKILL, so a crashed run never leaves a stale lock behind. The file holds one line
naming the holder (pid, host, command), for the error the next process prints. `kadyn-gen`
(Rust, `File::try_lock`, also flock) uses the same file, so either refuses the other.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import time
from pathlib import Path
from types import TracebackType
from typing import Optional, Union

LOCK_NAME = ".kadyn.lock"


class DirectoryInUse(RuntimeError):
    """Another live process holds the directory's lock."""


class DirectoryLock:
    """`with DirectoryLock(path, "kadyn-train"):` holds `path/.kadyn.lock` for the block.

    The directory must exist. Raises `DirectoryInUse` (naming the holder) if another process
    holds it, and `OSError` if the lock file cannot be created (read-only, not a directory).
    """

    def __init__(self, directory: Union[str, os.PathLike[str]], command: str) -> None:
        self.path = Path(directory) / LOCK_NAME
        self.command = command
        self._fd: Optional[int] = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            raise DirectoryInUse(
                f"{self.path.parent} is in use by another process ({self.holder()}); wait for "
                "it to finish or choose another --out"
            ) from None
        holder = (
            f"pid={os.getpid()} host={socket.gethostname()} since={int(time.time())} "
            f"command={self.command}\n"
        )
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder.encode(), 0)
        self._fd = fd

    def holder(self) -> str:
        """The holder's line in words ('pid 12 on host, kadyn-gen'), or 'holder unknown'."""
        try:
            fields = dict(
                part.split("=", 1) for part in self.path.read_text().split() if "=" in part
            )
        except OSError:
            fields = {}
        if "pid" not in fields:
            return "holder unknown"
        return f"pid {fields['pid']} on {fields.get('host', '?')}, {fields.get('command', '?')}"

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> DirectoryLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.release()
