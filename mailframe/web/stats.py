"""
L{Stats}: the console's numbers, counted from the decision events the
L{mailframe.web.decisions.DecisionLog} sees: totals since start
(connections, accepted, refused, deferred, sent, bounced), refusals by
reason, and a series of per-interval counts for the last hour, sampled by a
C{LoopingCall} every L{INTERVAL} seconds (with the queue's size then).

Owns: the counters and the series.  Must not: import mailframe.app.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall

from mailframe import events as E

__all__ = ["INTERVAL", "KEEP", "Stats"]

INTERVAL = 10
"""Seconds between two samples."""
KEEP = 360
"""Samples kept: an hour."""
MAX_REASONS = 200

_TOTALS = ("connections", "accepted", "refused", "deferred", "sent", "bounced")
_NAMES = {
    E.CONNECT: "connections",
    E.ACCEPTED: "accepted",
    E.REFUSED: "refused",
    E.QUEUE_DEFERRED: "deferred",
    E.QUEUE_SENT: "sent",
    E.QUEUE_BOUNCED: "bounced",
    E.QUEUE_EXPIRED: "bounced",
}


class Stats:
    """
    Counts decision events (L{count}, a L{DecisionLog}'s counter) and
    samples them every C{interval} seconds of C{clock}; C{queueSize} gives
    the queue's size at each sample (None: no queue).
    """

    def __init__(
        self,
        clock: IReactorTime,
        queueSize: Callable[[], int] | None = None,
        interval: int = INTERVAL,
        keep: int = KEEP,
    ) -> None:
        self.clock = clock
        self.queueSize = queueSize
        self.interval = interval
        self.totals = dict.fromkeys(_TOTALS, 0)
        self.refusedByReason: dict[str, int] = {}
        self.refusedByCode: dict[str, int] = {}
        self.series: deque[dict[str, Any]] = deque(maxlen=keep)
        self._current = dict.fromkeys(("connections", "accepted", "refused"), 0)
        self._loop: LoopingCall | None = None

    def count(self, name: str, event: dict[str, Any]) -> None:
        which = _NAMES.get(name)
        if which is None:
            return
        self.totals[which] += 1
        if which in self._current:
            self._current[which] += 1
        if which == "refused":
            code = event.get("code")
            decider = event.get("decider")
            codeText = str(code) if code is not None else "unknown"
            reason = str(decider) if decider and decider != "mailframe" else codeText
            for table, key in ((self.refusedByReason, reason), (self.refusedByCode, codeText)):
                if key in table or len(table) < MAX_REASONS:
                    table[key] = table.get(key, 0) + 1

    def sample(self) -> None:
        """Close the current interval: its counts (and the queue's size) join the series."""
        point: dict[str, Any] = {"time": self.clock.seconds(), **self._current}
        point["queue"] = self.queueSize() if self.queueSize is not None else None
        self.series.append(point)
        for key in self._current:
            self._current[key] = 0

    def start(self) -> None:
        if self._loop is None:
            self._loop = LoopingCall(self.sample)
            self._loop.clock = self.clock
            self._loop.start(self.interval, now=False)

    def stop(self) -> None:
        if self._loop is not None:
            if self._loop.running:
                self._loop.stop()
            self._loop = None

    def toJSON(self) -> dict[str, Any]:
        return {
            "now": self.clock.seconds(),
            "interval": self.interval,
            "series": list(self.series),
            "totals": dict(self.totals),
            "refusedByReason": dict(self.refusedByReason),
            "refusedByCode": dict(self.refusedByCode),
        }
