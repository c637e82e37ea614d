"""
L{WatchedFiles}: a value loaded from a file (and the files it names, such
as C{:include:} files), loaded again when any of them changes.

Reloading: when asked (L{WatchedFiles.check}), at most once per
L{CHECK_INTERVAL} seconds of the passed clock, every file read by the last
load is stat'ed (device, inode, size, mtime, ctime); if one changed, or
is gone, the value is loaded again.  If the load fails (a file missing or
unreadable, a line that does not parse), the last good value stays in
force and a warning is logged, once per distinct problem.  A file that
changed while it was being read is read again at the next check.  The
stats and reads are blocking calls in the reactor thread, which is
acceptable for small local files.

Owns: change detection.  Must not: know any file format.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Generic, TypeVar

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

__all__ = ["CHECK_INTERVAL", "FileReader", "WatchedFiles"]

log = Logger(namespace="mailframe.validators")

CHECK_INTERVAL = 1.0
"""Seconds between two checks of the files."""

_T = TypeVar("_T")
_Signature = tuple[int, int, int, int, int]


def _signature(path: str) -> _Signature:
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class FileReader:
    """
    Reads files for one load and remembers what each looked like before it
    was read (None for a file that changed while it was read).
    """

    def __init__(self) -> None:
        self.seen: dict[str, _Signature | None] = {}

    def read(self, path: str) -> bytes:
        """The contents of C{path}; OSError as C{open} raises it."""
        before = _signature(path)
        with open(path, "rb") as f:
            data = f.read()
        self.seen[path] = before if _signature(path) == before else None
        return data


class WatchedFiles(Generic[_T]):
    """
    The value C{load(reader)} makes, reading its files with C{reader.read};
    made again when one of them changes.

    @param what: names the value in log lines (C{"aliases /etc/aliases"}).
    @param describe: one line for the log after a reload (its count ...).
    @raise ValueError: if the first load fails (OSError and ValueError
        alike, one line).
    """

    def __init__(
        self,
        clock: IReactorTime,
        load: Callable[[FileReader], _T],
        what: str,
        describe: Callable[[_T], str] = lambda value: "loaded",
    ) -> None:
        self.clock = clock
        self.load = load
        self.what = what
        self.describe = describe
        reader = FileReader()
        try:
            self.value = load(reader)
        except OSError as e:
            raise ValueError(_osError(e)) from None
        self._seen = reader.seen
        self._lastCheck = clock.seconds()
        self._problem: str | None = None

    @property
    def files(self) -> tuple[str, ...]:
        """Every file the value was made from."""
        return tuple(self._seen)

    def check(self) -> _T:
        """The value, loaded again first if a file changed (checked at most once per second)."""
        now = self.clock.seconds()
        if 0 <= now - self._lastCheck < CHECK_INTERVAL:
            return self.value
        self._lastCheck = now
        if self._unchanged():
            return self.value
        reader = FileReader()
        try:
            value = self.load(reader)
        except OSError as e:
            self._warn(_osError(e))
            self._seen = {**self._seen, **dict.fromkeys(reader.seen)}
            return self.value
        except ValueError as e:
            self._warn(str(e))
            self._seen = reader.seen
            return self.value
        self.value = value
        self._seen = reader.seen
        self._problem = None
        log.info("{what}: {line}", what=self.what, line=self.describe(value))
        return value

    def _unchanged(self) -> bool:
        for path, seen in self._seen.items():
            if seen is None:
                return False
            try:
                if _signature(path) != seen:
                    return False
            except OSError:
                return False
        return True

    def _warn(self, problem: str) -> None:
        if problem != self._problem:
            self._problem = problem
            log.warn(
                "{what} not reloaded, keeping the last good one: {problem}",
                what=self.what,
                problem=problem,
            )


def _osError(e: OSError) -> str:
    return f"{e.filename}: {e.strerror or e}" if e.filename else str(e.strerror or e)
