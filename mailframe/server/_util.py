"""
Small pieces of the server's I/O: queue ids, write-through to a plain TCP
socket, one-line error text, provider checks.

Owns: nothing stateful.  Must not: know about SMTP commands.
"""

from __future__ import annotations

import itertools
import os
import time
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

__all__ = ["GreetPasses", "IDs", "check", "oneLine", "sendNow"]


class IDs:
    """Short unique ids: a per-process prefix from the time and pid, a counter."""

    def __init__(self) -> None:
        stamp = int(time.time()) & 0xFFFFFFF
        self._prefix = f"{stamp:07X}{os.getpid() & 0xFFF:03X}"
        self._count = itertools.count(1)

    def next(self) -> str:
        return f"{self._prefix}{next(self._count):05X}"


def sendNow(transport: Any, data: bytes) -> bytes:
    """
    Write-through for a plain TCP transport with nothing queued: send now
    instead of queueing the reply for the reactor's next turn (which costs
    two epoll updates and a loop iteration per reply).  Returns what is left
    to hand to C{transport.write}: everything if this cannot be done safely.
    """
    try:
        if transport.TLS or transport._tempDataBuffer or transport.dataBuffer:
            return data
        if not transport.connected or transport.disconnecting:
            return data
        sent = transport.socket.send(data)
    except (AttributeError, BlockingIOError, InterruptedError):
        return data
    except OSError:
        return data  # let Twisted's own write path meet and report the error
    return data[sent:]


def oneLine(reason: Any) -> str:
    value = getattr(reason, "value", reason)
    text = " ".join(str(value).split())
    return f"{type(value).__name__}: {text}"[:300] if text else type(value).__name__


def check(interface: Any, providers: Iterable[Any], what: str) -> None:
    for p in providers:
        if not interface.providedBy(p):
            raise TypeError(f"{what} {p!r} does not provide {interface.__name__}")


class GreetPasses:
    """
    Clients that waited for their greeting (postscreen's cache): greeted at
    once for C{ttl} seconds after.  Bounded: the oldest passes go first.
    """

    def __init__(self, clock: Any, ttl: float, maxSize: int = 100_000) -> None:
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
