"""
The queue runner's operations for the queue tools (mailframe-queue): is an
entry under way, when is it due, hold, release, delete.  A mixin of
L{mailframe.queue.runner.QueueRunner}.

Owns: those operations' rules (a held entry has no timer; a deletion waits
for an attempt under way).  Must not: touch files except through the
runner's own methods.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

if TYPE_CHECKING:
    from mailframe.queue.entry import QueueEntry

__all__ = ["QueueTools", "UnknownEntry"]

log = Logger(namespace="mailframe.queue")


class UnknownEntry(KeyError):
    """No message with that id in the queue."""


class QueueTools:
    """hold, release, delete and the state the tools show (mixed into the runner)."""

    entries: dict[str, QueueEntry]
    _timers: dict[str, IDelayedCall]
    _active: set[str]
    _deleted: set[str]
    _cache: dict[str, bytes]

    def _schedule(self, entry: QueueEntry, when: float) -> None:
        raise NotImplementedError

    def _write(self, entry: QueueEntry) -> defer.Deferred[None]:
        raise NotImplementedError

    def _remove(self, entryID: str) -> None:
        raise NotImplementedError

    def underWay(self, entryID: str) -> bool:
        """True while an attempt of the entry runs."""
        return entryID in self._active

    def scheduledAt(self, entryID: str) -> float | None:
        """When the entry's next attempt is due (clock seconds), or None: no timer."""
        call = self._timers.get(entryID)
        return call.getTime() if call is not None and call.active() else None

    def _entry(self, entryID: str) -> QueueEntry:
        entry = self.entries.get(entryID)
        if entry is None:
            raise UnknownEntry(entryID)
        return entry

    def hold(self, entryID: str, held: bool = True) -> defer.Deferred[bool]:
        """
        Hold the entry (no attempt until released; one under way finishes),
        or release it (C{held=False}: tried at its next attempt time, at
        once if that has passed).  Fires True once the envelope on disk says
        so, False if it said so already.  @raise UnknownEntry: no such id.
        """
        entry = self._entry(entryID)
        if entry.held == held:
            return defer.succeed(False)
        entry.held = held
        if held:
            self._cancelTimer(entryID)
        else:
            self._schedule(entry, entry.nextAttempt)
        return self._write(entry).addCallback(lambda _: True)

    def release(self, entryID: str) -> defer.Deferred[bool]:
        """L{hold} with C{held=False}."""
        return self.hold(entryID, held=False)

    def delete(self, entryID: str) -> None:
        """
        Forget the entry and remove its files, with no report to anyone
        (after an attempt under way).  @raise UnknownEntry: no such id.
        """
        self._entry(entryID)
        del self.entries[entryID]
        self._cancelTimer(entryID)
        self._cache.pop(entryID, None)
        log.info("{id}: deleted from the queue", id=entryID)
        if entryID in self._active:
            self._deleted.add(entryID)
        else:
            self._remove(entryID)

    def _cancelTimer(self, entryID: str) -> None:
        call = self._timers.pop(entryID, None)
        if call is not None and call.active():
            call.cancel()
