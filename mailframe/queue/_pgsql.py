"""
The statements of the PostgreSQL queue (L{mailframe.queue.pgstore}), each
a blocking function of a psycopg connection, run in the store's database
threads (and by the queue tools).  Leases are times of the database's
clock (C{now()}); due times are the nodes' clock seconds.

Owns: the SQL and the conversion between rows and
L{mailframe.queue.entry.QueueEntry}.  Must not: import twisted or log
(it runs in threads: it returns what the reactor thread should say).
"""

from __future__ import annotations

import json
import os
from typing import Any

from mailframe.message import Message
from mailframe.queue.entry import EntryError, QueueEntry

__all__ = [
    "Lost",
    "claim",
    "deleteFinished",
    "entryFromRows",
    "envelopeJSON",
    "giveBack",
    "insertMessages",
    "openNode",
    "readData",
    "readHead",
    "recipientRows",
    "recordOutcome",
    "renew",
]

Report = tuple[QueueEntry, bytes]
_LEASE = "now() + %s * interval '1 second'"


class Lost(Exception):
    """The message is gone, or another node holds its lease now."""


def envelopeJSON(entry: QueueEntry) -> str:
    """The envelope column: the entry's JSON without its recipients."""
    data = entry.toJSON()
    del data["recipients"]
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def recipientRows(entry: QueueEntry) -> list[tuple[str, int, str, str, str]]:
    """(message id, position, address, state, JSON) of each recipient."""
    return [
        (entry.id, i, r.address, r.state, json.dumps(r.toJSON(), ensure_ascii=False))
        for i, r in enumerate(entry.recipients)
    ]


def entryFromRows(row: tuple[str, Any, bool, float], recipients: list[Any]) -> QueueEntry:
    """A L{QueueEntry} from a row (id, envelope, held, next_attempt) and its recipients' JSON."""
    entryID, envelope, held, nextAttempt = row
    data = dict(envelope)
    data.update(id=entryID, held=held, nextAttempt=nextAttempt, recipients=recipients)
    return QueueEntry.fromJSON(data)


def openNode(conn: Any, node: str) -> int:
    """Register the node, give back the leases its name held; the flush counter."""
    with conn.transaction():
        conn.execute(
            "INSERT INTO mailframe_node (name) VALUES (%s) ON CONFLICT (name) "
            "DO UPDATE SET started = now(), seen = now()",
            (node,),
        )
        conn.execute(
            "UPDATE mailframe_message SET lease_owner = NULL, lease_until = NULL "
            "WHERE lease_owner = %s",
            (node,),
        )
        row = conn.execute("SELECT value FROM mailframe_control WHERE key = 'flush'").fetchone()
    return int(row[0]) if row else 0


def insertMessages(
    conn: Any, rows: list[tuple[QueueEntry, bytes | Message]], node: str, lease: float
) -> None:
    """
    In the caller's transaction: insert messages and their recipients,
    accepted by C{node} and leased to it.  An id another node's message
    has already gets a variant (C{entry.id} is changed); C{entry.size} is set.
    """
    messages = []
    recipients = []
    blobs = []
    for entry, data in rows:
        blob = data if isinstance(data, bytes) else b"".join(data.chunks())
        entry.size = len(blob)
        blobs.append(blob)
    ids = [entry.id for entry, _ in rows]
    taken = {
        r[0]
        for r in conn.execute(
            "SELECT id FROM mailframe_message WHERE id = ANY(%s)", (ids,)
        ).fetchall()
    }
    for (entry, _), blob in zip(rows, blobs, strict=True):
        if entry.id in taken:
            entry.id = f"{entry.id}-{os.urandom(3).hex().upper()}"
        messages.append(
            (entry.id, entry.sender, envelopeJSON(entry), blob, entry.size, entry.arrival,
             entry.nextAttempt, entry.held, entry.report, node, node, lease)
        )  # fmt: skip
        recipients.extend(recipientRows(entry))
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO mailframe_message (id, sender, envelope, data, size, arrival, "
            "next_attempt, held, report, accepted_by, lease_owner, lease_until) VALUES "
            f"(%s, %s, %s::jsonb, %b, %s, %s, %s, %s, %s, %s, %s, {_LEASE})",
            messages,
        )
        cur.executemany(
            "INSERT INTO mailframe_recipient (message_id, position, address, state, data) "
            "VALUES (%s, %s, %s, %s, %s::jsonb)",
            recipients,
        )


def recordOutcome(
    conn: Any,
    entryID: str,
    envelope: str,
    nextAttempt: float,
    recipients: list[tuple[str, str, str, int]],
    reports: list[Report],
    node: str,
    lease: float,
) -> None:
    """
    One transaction: the message's envelope, next attempt and recipients'
    states (C{(state, JSON, id, position)}), and the C{reports} made about
    it, where C{node} holds the lease.  @raise Lost: it does not.
    """
    with conn.transaction():
        cur = conn.execute(
            "UPDATE mailframe_message SET envelope = %s::jsonb, next_attempt = %s, "
            f"lease_until = {_LEASE} WHERE id = %s AND lease_owner = %s",
            (envelope, nextAttempt, lease, entryID, node),
        )
        if cur.rowcount != 1:
            raise Lost(f"{entryID}: gone, or another node holds it")
        with conn.cursor() as c:
            c.executemany(
                "UPDATE mailframe_recipient SET state = %s, data = %s::jsonb "
                "WHERE message_id = %s AND position = %s",
                recipients,
            )
        if reports:
            insertMessages(conn, list(reports), node, lease)


def deleteFinished(
    conn: Any, ids: list[str], reports: list[Report], node: str, lease: float
) -> None:
    """One transaction: delete the finished messages C{node} holds, insert their reports."""
    with conn.transaction():
        conn.execute(
            "DELETE FROM mailframe_message WHERE id = ANY(%s) AND lease_owner = %s", (ids, node)
        )
        if reports:
            insertMessages(conn, list(reports), node, lease)


def claim(
    conn: Any, now: float, limit: int, node: str, lease: float
) -> tuple[list[QueueEntry], list[str]]:
    """
    Claim up to C{limit} messages due at C{now} that nobody holds (or
    whose lease expired), with C{FOR UPDATE SKIP LOCKED}.  @return: the
    entries, oldest first, and a line about each row that cannot be read.
    """
    with conn.transaction():
        rows = conn.execute(
            "WITH due AS (SELECT id FROM mailframe_message WHERE NOT held "
            "AND next_attempt <= %s AND (lease_owner IS NULL OR lease_until < now()) "
            "ORDER BY next_attempt LIMIT %s FOR UPDATE SKIP LOCKED) "
            f"UPDATE mailframe_message m SET lease_owner = %s, lease_until = {_LEASE} "
            "FROM due WHERE m.id = due.id RETURNING m.id, m.envelope, m.held, m.next_attempt",
            (now, limit, node, lease),
        ).fetchall()
        if not rows:
            return [], []
        recipients: dict[str, list[Any]] = {}
        for messageID, data in conn.execute(
            "SELECT message_id, data FROM mailframe_recipient WHERE message_id = ANY(%s) "
            "ORDER BY message_id, position",
            ([r[0] for r in rows],),
        ):
            recipients.setdefault(messageID, []).append(data)
    entries, errors = [], []
    for row in rows:
        try:
            entries.append(entryFromRows(row, recipients.get(row[0], [])))
        except EntryError as e:
            errors.append(f"{row[0]}: a queue row that cannot be read: {e}")
    entries.sort(key=lambda e: (e.arrival, e.id))
    return entries, errors


def renew(
    conn: Any, node: str, lease: float, ids: list[str]
) -> tuple[list[tuple[str, bool]], int]:
    """
    Renew the leases C{node} holds of C{ids}; the (id, held) of those it
    still holds, and the flush counter.
    """
    with conn.transaction():
        rows = conn.execute(
            f"UPDATE mailframe_message SET lease_until = {_LEASE} "
            "WHERE lease_owner = %s AND id = ANY(%s) RETURNING id, held",
            (lease, node, ids),
        ).fetchall()
        conn.execute("UPDATE mailframe_node SET seen = now() WHERE name = %s", (node,))
        row = conn.execute("SELECT value FROM mailframe_control WHERE key = 'flush'").fetchone()
    return [(r[0], r[1]) for r in rows], int(row[0]) if row else 0


def giveBack(conn: Any, node: str, ids: list[str]) -> None:
    """Give back the leases C{node} holds of C{ids} (a clean stop)."""
    conn.execute(
        "UPDATE mailframe_message SET lease_owner = NULL, lease_until = NULL "
        "WHERE lease_owner = %s AND id = ANY(%s)",
        (node, ids),
    )


def readData(conn: Any, entryID: str) -> bytes:
    """The message's data.  @raise KeyError: no such message."""
    row = conn.execute("SELECT data FROM mailframe_message WHERE id = %s", (entryID,)).fetchone()
    if row is None:
        raise KeyError(f"{entryID}: not in the queue")
    return bytes(row[0])


def readHead(conn: Any, entryID: str, limit: int) -> tuple[bytes, bool]:
    """The first C{limit} octets, and whether that is all.  @raise KeyError: no such message."""
    row = conn.execute(
        "SELECT substring(data FROM 1 FOR %s), length(data) FROM mailframe_message WHERE id = %s",
        (limit, entryID),
    ).fetchone()
    if row is None:
        raise KeyError(f"{entryID}: not in the queue")
    return bytes(row[0]), row[1] <= limit
