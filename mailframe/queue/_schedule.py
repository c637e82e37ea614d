"""
L{Schedule}: the queue runner's entries and their timers: when each entry's
next attempt is due, which attempts are under way, and which entries were
deleted while theirs ran.

Owns: that bookkeeping, and nothing else: it never touches files or
delivers.  The runner owns a Schedule and asks it; the queue tools reach it
only through the runner's operations (hold, release, delete, flush).
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from mailframe.queue.entry import QueueEntry

__all__ = ["Schedule"]


class Schedule:
    """The entries of a queue and when each is next tried."""

    def __init__(self, clock: IReactorTime, attempt: Callable[[str], None]) -> None:
        self.clock = clock
        self.entries: dict[str, QueueEntry] = {}
        self._attempt = attempt
        self._timers: dict[str, IDelayedCall] = {}
        self._active: set[str] = set()
        self._deleted: set[str] = set()

    # -- timers -------------------------------------------------------------------

    def at(self, entry: QueueEntry, when: float) -> None:
        """Try C{entry} at clock time C{when} (at once if past), replacing its timer."""
        self.cancel(entry.id)
        delay = max(0.0, when - self.clock.seconds())
        self._timers[entry.id] = self.clock.callLater(delay, self._fire, entry.id)

    def _fire(self, entryID: str) -> None:
        self._timers.pop(entryID, None)
        self._attempt(entryID)

    def cancel(self, entryID: str) -> None:
        """No timer for the entry any more (held, deleted)."""
        call = self._timers.pop(entryID, None)
        if call is not None and call.active():
            call.cancel()

    def cancelAll(self) -> None:
        for entryID in list(self._timers):
            self.cancel(entryID)

    def scheduledAt(self, entryID: str) -> float | None:
        """When the entry's next attempt is due (clock seconds), or None: no timer."""
        call = self._timers.get(entryID)
        return call.getTime() if call is not None and call.active() else None

    # -- attempts -------------------------------------------------------------------

    def begin(self, entryID: str) -> bool:
        """An attempt starts: False if one is already under way."""
        if entryID in self._active:
            return False
        self._active.add(entryID)
        return True

    def end(self, entryID: str) -> bool:
        """The attempt is over: True if the entry was deleted meanwhile."""
        self._active.discard(entryID)
        if entryID in self._deleted:
            self._deleted.discard(entryID)
            return True
        return False

    def underWay(self, entryID: str) -> bool:
        """True while an attempt of the entry runs."""
        return entryID in self._active

    def idle(self) -> bool:
        """True when no attempt is under way."""
        return not self._active

    def forget(self, entryID: str) -> bool:
        """
        Delete the entry from the schedule; True if its files can go now,
        False if an attempt under way must end first (L{end} then says so).
        """
        self.entries.pop(entryID, None)
        self.cancel(entryID)
        if entryID in self._active:
            self._deleted.add(entryID)
            return False
        return True
