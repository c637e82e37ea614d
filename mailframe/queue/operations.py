"""
L{QueueOperations}: what an operator may do to a running queue (list,
show, flush, hold, release, delete), carried out through its
L{QueueRunner}, and the JSON each message is described with
(L{describeEntry}).  The control socket's AMP responder
(L{mailframe.queue.control.ControlProtocol}) and the web console
(L{mailframe.web.queueapi}) both use it, so they cannot disagree.

Owns: the operations and their errors (L{NoSuchEntry}, L{ControlError}).
Must not: change entries except through the runner; know AMP or HTTP;
import mailframe.server or mailframe.app.
"""

from __future__ import annotations

import bisect

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailframe.queue.entry import QueueEntry
from mailframe.queue.runner import QueueRunner, UnknownEntry

__all__ = [
    "HEAD_LIMIT",
    "ControlError",
    "NoSuchEntry",
    "QueueOperations",
    "describeEntry",
]

log = Logger(namespace="mailframe.queue")

HEAD_LIMIT = 16384
"""Octets of a message's beginning L{QueueOperations.show} returns by default."""


class NoSuchEntry(Exception):
    """The queue has no message with this id."""


class ControlError(Exception):
    """A command the server could not carry out; the text is one line."""


def describeEntry(
    entry: QueueEntry,
    spool: str,
    scheduled: float | None = None,
    underWay: bool = False,
) -> dict[str, object]:
    """
    What C{list} and C{show} say about a message: its envelope
    (L{QueueEntry.toJSON}) and C{spool} (the directory), C{scheduled} (when
    its timer fires, or null) and C{underWay} (an attempt is running).
    """
    data = entry.toJSON()
    data.update(spool=spool, scheduled=scheduled, underWay=underWay)
    return data


class QueueOperations:
    """The operator's operations on C{runner}'s queue."""

    def __init__(self, runner: QueueRunner) -> None:
        self.runner = runner

    def now(self) -> float:
        return self.runner.clock.seconds()

    def describe(self, entry: QueueEntry) -> dict[str, object]:
        """L{describeEntry} of C{entry}, with the runner's timer and state."""
        runner = self.runner
        return describeEntry(
            entry, runner.spool.path, runner.scheduledAt(entry.id), runner.underWay(entry.id)
        )

    def entry(self, entryID: str) -> QueueEntry:
        """@raise NoSuchEntry: no such message."""
        entry = self.runner.entries.get(entryID)
        if entry is None:
            raise NoSuchEntry(f"no message {entryID} in the queue")
        return entry

    def oldestFirst(self) -> list[QueueEntry]:
        """Every message, oldest first (by arrival, then id)."""
        return sorted(self.runner.entries.values(), key=lambda e: (e.arrival, e.id))

    def page(
        self, limit: int, afterArrival: float | None = None, afterID: str | None = None
    ) -> tuple[list[QueueEntry], bool]:
        """
        At most C{limit} messages, oldest first, after the one with
        C{afterArrival}/C{afterID} (none: from the start), and whether
        others follow.
        """
        entries = self.oldestFirst()
        start = 0
        if afterArrival is not None:
            keys = [(e.arrival, e.id) for e in entries]
            start = bisect.bisect_right(keys, (afterArrival, afterID or ""))
        page = entries[start : start + max(1, limit)]
        return page, start + len(page) < len(entries)

    def head(self, entryID: str, limit: int = HEAD_LIMIT) -> defer.Deferred[bytes]:
        """The message's first C{limit} octets (empty if it cannot be read)."""
        self.entry(entryID)

        def unreadable(reason: Failure) -> tuple[bytes, bool]:
            return b"", True

        d = self.runner.spool.readHead(entryID, limit).addErrback(unreadable)
        return d.addCallback(lambda head: head[0])

    def flush(self, who: str = "mailframe-queue") -> int:
        """Try every message now, except held ones; how many."""
        count = self.runner.flush()
        log.info(
            "queue {path}: flush ({n} message(s)) by {who}",
            path=self.runner.spool.path,
            n=count,
            who=who,
        )
        return count

    def delete(self, entryID: str) -> None:
        """Delete one message (no report to anyone); the runner logs it."""
        try:
            self.runner.delete(entryID)
        except UnknownEntry:
            raise NoSuchEntry(f"no message {entryID} in the queue") from None

    def deleteAll(self) -> int:
        """Delete every message; how many."""
        entryIDs = list(self.runner.entries)
        for entryID in entryIDs:
            self.runner.delete(entryID)
        return len(entryIDs)

    def hold(self, entryID: str, held: bool = True) -> defer.Deferred[bool]:
        """
        Hold (or release) one message: fires whether that changed anything,
        or fails with L{ControlError} if the envelope could not be written.
        @raise NoSuchEntry: no such message.
        """
        self.entry(entryID)
        what = "held" if held else "released"

        def failed(reason: Failure) -> Failure:
            error = " ".join(str(reason.value).split())
            return Failure(ControlError(f"{entryID}: cannot record that it is {what}: {error}"))

        return self.runner.hold(entryID, held).addErrback(failed)
