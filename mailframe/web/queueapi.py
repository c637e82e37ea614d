"""
The console's queue pages, as JSON: the list (with the count per
destination), one message (its envelope, attempts and first octets), and
the operator's operations (hold, release, delete, flush), each carried out
by L{mailframe.queue.operations.QueueOperations} (the same code as
C{mailframe-queue}'s control socket) and logged with who asked.

Owns: the JSON of the queue pages.  Must not: change entries except
through the operations; import mailframe.app.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from mailframe.queue.entry import QueueEntry
from mailframe.queue.operations import QueueOperations

__all__ = ["HEAD", "QueueView"]

log = Logger(namespace="mailframe.web")

HEAD = 4096
"""Octets of a message's beginning its page shows."""


def _domain(address: str) -> str:
    return address.rpartition("@")[2].lower() or "(none)"


def _lastReply(entry: QueueEntry) -> dict[str, Any] | None:
    """The most recent reply any recipient got: C{{"code", "text", "recipient", "time"}}."""
    latest = None
    for r in entry.recipients:
        if r.reply is None:
            continue
        when = r.lastAttempt if r.lastAttempt is not None else -1.0
        if latest is None or when > latest[0]:
            latest = (when, r)
    if latest is None:
        return None
    recipient = latest[1]
    reply = recipient.reply
    assert reply is not None
    return {
        "code": reply.code,
        "text": " ".join(reply.lines),
        "recipient": recipient.address,
        "time": recipient.lastAttempt,
    }


def _matches(entry: QueueEntry, q: str) -> bool:
    if not q:
        return True
    q = q.lower()
    fields = [entry.id, entry.sender, *(r.address for r in entry.recipients)]
    return any(q in f.lower() for f in fields)


class QueueView:
    """The JSON of the queue pages, and the operations, on C{operations}."""

    def __init__(self, operations: QueueOperations) -> None:
        self.operations = operations

    def describe(self, entry: QueueEntry) -> dict[str, Any]:
        data = self.operations.describe(entry)
        data["lastReply"] = _lastReply(entry)
        data["held"] = entry.held
        data["attempts"] = entry.attempts
        data["pending"] = [r.address for r in entry.recipients if r.state == "pending"]
        return data

    def listing(self, limit: int = 100, q: str = "") -> dict[str, Any]:
        entries = self.operations.oldestFirst()
        destinations: dict[str, list[float]] = {}
        for entry in entries:
            for domain in {_domain(r.address) for r in entry.recipients if r.state == "pending"}:
                found = destinations.setdefault(domain, [0, entry.arrival])
                found[0] += 1
                found[1] = min(found[1], entry.arrival)
        matching = [e for e in entries if _matches(e, q)]
        return {
            "total": len(entries),
            "count": min(limit, len(matching)),
            "now": self.operations.now(),
            "messages": [self.describe(e) for e in matching[:limit]],
            "byDestination": [
                {"domain": d, "count": int(n), "oldest": oldest}
                for d, (n, oldest) in sorted(destinations.items(), key=lambda i: (-i[1][0], i[0]))
            ],
        }

    def show(self, entryID: str) -> defer.Deferred[dict[str, Any]]:
        """@raise NoSuchEntry: no such message."""
        described = self.describe(self.operations.entry(entryID))

        def read(head: bytes) -> dict[str, Any]:
            described["head"] = head.decode("utf-8", "replace")
            described["headTruncated"] = len(head) >= HEAD
            return described

        return self.operations.head(entryID, HEAD).addCallback(read)

    def hold(self, entryID: str, held: bool, who: str) -> defer.Deferred[dict[str, Any]]:
        """@raise NoSuchEntry: no such message."""
        what = "hold" if held else "release"
        d = self.operations.hold(entryID, held)
        log.info("web console: {who}: {what} {queueID}", who=who, what=what, queueID=entryID)
        return d.addCallback(lambda changed: {"ok": True, "id": entryID, "changed": changed})

    def delete(self, entryID: str, who: str) -> dict[str, Any]:
        """@raise NoSuchEntry: no such message."""
        self.operations.delete(entryID)
        log.info("web console: {who}: delete {queueID}", who=who, queueID=entryID)
        return {"ok": True, "id": entryID}

    def flush(self, who: str) -> dict[str, Any]:
        count = self.operations.flush(f"web console: {who}")
        return {"ok": True, "count": count}
