"""
Small pieces of the server: queue ids, the greeting passes, one-line error
text.

Owns: nothing stateful.  Must not: know about SMTP commands.
"""

from __future__ import annotations

import itertools
import os
import time
from collections import OrderedDict

from twisted.internet.interfaces import IReactorTime

__all__ = ["GreetPasses", "IDs", "oneLine", "processIDs"]


class IDs:
    """
    Short unique IDs: a prefix from the start time and the process id, then
    a counter.  One source serves every listener of a process (L{processIDs}), so
    two listeners never hand out the same ID, and the full pid keeps the
    processes of C{--workers} apart.
    """

    def __init__(self, pid: int | None = None, now: float | None = None) -> None:
        stamp = int(time.time() if now is None else now) & 0xFFFFFFF
        pid = os.getpid() if pid is None else pid
        self._prefix = f"{stamp:07X}{pid & 0xFFFFFF:06X}"
        self._count = itertools.count(1)

    def next(self) -> str:
        return f"{self._prefix}{next(self._count):05X}"


_processIDs = IDs()


def processIDs() -> IDs:
    """The process's one ID source (made anew in a forked child)."""
    return _processIDs


def _afterFork() -> None:
    global _processIDs
    _processIDs = IDs()


os.register_at_fork(after_in_child=_afterFork)


def oneLine(reason: object) -> str:
    value = getattr(reason, "value", reason)
    text = " ".join(str(value).split())
    return f"{type(value).__name__}: {text}"[:300] if text else type(value).__name__


class GreetPasses:
    """
    Clients that waited for their greeting (postscreen's cache): greeted at
    once for C{ttl} seconds after.  Bounded: the oldest passes go first.
    """

    def __init__(self, clock: IReactorTime, ttl: float, maxSize: int = 100_000) -> None:
        self._clock = clock
        self._ttl = ttl
        self._maxSize = maxSize
        self._until: OrderedDict[str, float] = OrderedDict()

    def passed(self, host: str) -> bool:
        until = self._until.get(host)
        if until is None:
            return False
        if until < self._clock.seconds():
            del self._until[host]
            return False
        return True

    def add(self, host: str) -> None:
        if not self._ttl:
            return
        self._until[host] = self._clock.seconds() + self._ttl
        self._until.move_to_end(host)
        while len(self._until) > self._maxSize:
            self._until.popitem(last=False)
