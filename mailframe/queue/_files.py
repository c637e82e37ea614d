"""
The spool's file helpers: writing a file (into a recycled inode when there
is one), fsync and syncfs(2), and L{FilePool}, the recycled files.

Why recycle: the spool creates two files per message and removes them a
moment later.  Some file systems pay for that churn on every creation;
ext4 without a journal, for one, skips every inode freed in the last
seconds when it looks for a free one, so under load each creation scans
thousands of them.  Renaming a finished message's files into C{free/} and
writing the next message into them instead (in place, overwritten from the
start, then truncated to the new size) allocates no inode at all.  A file
in C{free/} holds nothing anyone relies on: it is rewritten whole and made
durable before it is renamed into C{queue/}, exactly like a new file, and
one left half-rewritten by a crash is just another free file.

Owns: the blocking system calls of the spool.  Must not: import twisted;
decide the order of operations (L{mailframe.queue.spool} does).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import itertools
import os
import sys
import threading
from collections.abc import Callable, Iterable

__all__ = [
    "DATA",
    "ENVELOPE",
    "FilePool",
    "SpoolError",
    "fsyncResult",
    "syncfs",
    "syncfsAvailable",
    "unlinkAll",
    "unlinkQuietly",
    "writeDurably",
    "writeFile",
]

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)

DATA = ".msg"
"""The suffix of a queued message's data file."""
ENVELOPE = ".json"
"""The suffix of its envelope file."""


class SpoolError(Exception):
    """The spool directory cannot be used."""


class FilePool:
    """
    The recycled files in C{directory} (at most C{limit}); thread-safe.
    """

    def __init__(self, directory: str, limit: int = 4096) -> None:
        self.directory = directory
        self.limit = limit
        self._names: list[str] = []
        self._lock = threading.Lock()
        self._counter = itertools.count(1)

    def __len__(self) -> int:
        return len(self._names)

    def load(self) -> None:
        """Blocking: take the files already in the directory (after a restart)."""
        names = sorted(os.listdir(self.directory))
        with self._lock:
            self._names = names[: self.limit]
        unlinkAll(os.path.join(self.directory, n) for n in names[self.limit :])
        # new names must not collide with any left behind (they need not be
        # consecutive: F1 F2 F6 after a restart would make F3..F6 again, and a
        # rename onto F6 would put two messages' data in one inode)
        highest = max((int(n[1:]) for n in names if n[:1] == "F" and n[1:].isdigit()), default=0)
        with self._lock:
            self._counter = itertools.count(highest + 1)

    def take(self) -> str | None:
        """The path of a recycled file, now out of the pool, or None if there is none."""
        with self._lock:
            if not self._names:
                return None
            name = self._names.pop()
        return os.path.join(self.directory, name)

    def give(self, path: str) -> None:
        """Blocking: recycle the file at C{path} (or remove it when the pool is full)."""
        with self._lock:
            name = None if len(self._names) >= self.limit else f"F{next(self._counter)}"
        if name is None:
            unlinkQuietly(path)
            return
        try:
            os.rename(path, os.path.join(self.directory, name))
        except FileNotFoundError:
            return
        except OSError:
            unlinkQuietly(path)
            return
        with self._lock:
            self._names.append(name)


def writeFile(
    path: str, chunks: Iterable[bytes], pool: FilePool | None = None
) -> tuple[int, int, str]:
    """
    Write C{chunks} into a recycled file from C{pool} (in place, truncated
    to its new size) or, when there is none, a new file at C{path} (mode
    0600).  Not synced.

    @return: the still open fd, the size, and the path written.
    """
    recycled = pool.take() if pool is not None else None
    fd = -1
    if recycled is not None:
        try:
            fd = os.open(recycled, os.O_WRONLY | _CLOEXEC)
            path = recycled
        except OSError:
            recycled = None
    if fd < 0:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _CLOEXEC, 0o600)
    size = 0
    try:
        for chunk in chunks:
            view = memoryview(chunk)
            while view:
                n = os.write(fd, view)
                view = view[n:]
                size += n
        if recycled is not None:
            os.ftruncate(fd, size)
    except BaseException:
        os.close(fd)
        unlinkQuietly(path)
        raise
    return fd, size, path


def writeDurably(path: str, chunks: Iterable[bytes]) -> int:
    """Write a new file (mode 0600), fsync it; return its size."""
    fd, size, _ = writeFile(path, chunks)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return size


def fsyncResult(fd: int) -> BaseException | None:
    """fsync C{fd}; the error, if any, returned rather than raised (for C{map})."""
    try:
        os.fsync(fd)
    except OSError as e:
        return e
    return None


def _loadSyncfs() -> Callable[[int], int] | None:
    """libc's syncfs(2), or None where there is none (not Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.syncfs
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int]
    function.restype = ctypes.c_int
    return function


_SYNCFS = _loadSyncfs()


def syncfsAvailable() -> bool:
    """True where the C{syncfs} mode can be used."""
    return _SYNCFS is not None


def syncfs(fd: int) -> None:
    """Commit the whole file system holding C{fd} (Linux syncfs(2))."""
    if _SYNCFS is None:
        raise OSError(errno.ENOSYS, "syncfs is not available")
    if _SYNCFS(fd) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def unlinkAll(paths: Iterable[str]) -> None:
    for path in paths:
        unlinkQuietly(path)


def unlinkQuietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
