"""
L{DirectorySyncer}: the directory fsync of concurrent deliveries, shared
(group commit).

A file linked into a directory is durable once an fsync of that directory
that I{began after} the link has completed.  So the threads that call
L{DirectorySyncer.sync} for one directory while an fsync of it is running
can all be released by I{one} further fsync: each caller joins the next
round, which has not begun; the first caller to find no fsync running
leads it (fsyncs, outside the lock) and releases every caller of that
round.  A caller that arrives while a round's fsync is running is never
released by that fsync, only by a later one.

A failed fsync fails its whole round: the leader raises its error and every
other caller of that round raises an C{OSError} with the same errno
(each caller gets its own exception object), so that none of their
deliveries is answered 250; a later success does not hide it.  The next
caller starts a new round.

State is kept per directory only while someone is in L{sync} for it.

Owns: the rounds and their outcome.  Must not: import mailframe.server or
twisted; sleep or poll.
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable

from mailframe.backends._files import fsyncDirectory

__all__ = ["DirectorySyncer", "directorySyncer"]


class _Round:
    """One fsync, and the callers it is to release."""

    __slots__ = ("done", "error")

    def __init__(self) -> None:
        self.done = False
        self.error: BaseException | None = None


class _Directory:
    """The state of one directory while callers are in L{DirectorySyncer.sync}."""

    __slots__ = ("callers", "changed", "next", "running")

    def __init__(self, lock: threading.Lock) -> None:
        self.callers = 0
        self.next: _Round | None = None  # the round new callers join; not begun
        self.running = False
        self.changed = threading.Condition(lock)


class DirectorySyncer:
    """
    Group commit of directory fsyncs, thread safe.

    @param fsync: fsyncs a directory given its path (tests pass their own).
    @param joined: if given, called with the path, under the lock, each
        time a caller has joined a round (for tests that must know when
        callers are waiting).
    """

    def __init__(
        self,
        fsync: Callable[[str], None] = fsyncDirectory,
        joined: Callable[[str], object] | None = None,
    ) -> None:
        self._fsync = fsync
        self._joined = joined
        self._lock = threading.Lock()
        self._directories: dict[str, _Directory] = {}

    def active(self) -> int:
        """How many directories have callers in L{sync} now."""
        with self._lock:
            return len(self._directories)

    def sync(self, path: str) -> None:
        """
        Blocking: return once an fsync of the directory C{path} that began
        after this call began has completed.

        @raise OSError: the fsync meant to cover this call failed.
        """
        with self._lock:
            directory = self._directories.get(path)
            if directory is None:
                directory = self._directories[path] = _Directory(self._lock)
            directory.callers += 1
            try:
                mine = directory.next
                if mine is None:
                    mine = directory.next = _Round()
                if self._joined is not None:
                    self._joined(path)
                while not mine.done:
                    if directory.running:
                        directory.changed.wait()
                    else:
                        # Not begun and nothing running: mine is directory.next.
                        self._lead(path, directory, mine)
            finally:
                directory.callers -= 1
                if not directory.callers:
                    del self._directories[path]
        error = mine.error
        if error is None:
            return
        if isinstance(error, OSError):
            code = error.errno or errno.EIO
            raise OSError(code, error.strerror or str(error), error.filename) from error
        raise OSError(errno.EIO, f"directory fsync failed: {error!r}") from error

    def _lead(self, path: str, directory: _Directory, mine: _Round) -> None:
        """Called and returns with the lock held; fsyncs without it."""
        directory.running = True
        directory.next = None
        self._lock.release()
        try:
            self._fsync(path)
        except BaseException as e:
            mine.error = e
        finally:
            self._lock.acquire()
            directory.running = False
            mine.done = True
            directory.changed.notify_all()


directorySyncer = DirectorySyncer()
"""The one every Maildir backend shares (a process's deliveries to one
directory share its fsyncs, whichever backend made them)."""
