"""
L{PostgresQueue}: what C{mailframe-queue --spool postgresql://...} works
on: the whole cluster's queue, read and changed in the database itself
(no node needs to answer), with the same methods as the control client
and L{mailframe.queue.offline.OfflineSpool}.

Each listed message also says which node accepted it (C{acceptedBy},
C{acceptedAt}) and which holds its lease (C{leaseOwner}, C{leaseUntil},
null when none does or the lease has expired).

How the nodes learn of a change (L{mailframe.queue.pgstore}): a hold or
release is a column the holding node compares at its next lease renewal
(within a third of C{queue-lease}); a deletion removes the rows (the
holding node forgets the message at its next renewal; an attempt under
way finishes); a flush makes every message not held due now and bumps the
C{flush} counter, which each node reads at its renewal and then tries
what it holds.

Owns: those statements.  Must not: import twisted; keep a connection
past L{PostgresQueue.close}.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mailframe.queue._pgsql import entryFromRows
from mailframe.queue.control import HEAD_LIMIT, describeEntry
from mailframe.queue.entry import EntryError
from mailframe.queue.location import PostgresLocation

__all__ = ["PostgresQueue", "QueueDatabaseError"]

_SELECT = (
    "SELECT m.id, m.envelope, m.held, m.next_attempt, m.accepted_by, "
    "extract(epoch FROM m.accepted_at), "
    "CASE WHEN m.lease_until > now() THEN m.lease_owner END, "
    "CASE WHEN m.lease_until > now() THEN extract(epoch FROM m.lease_until) END, "
    "coalesce((SELECT array_agg(r.data ORDER BY r.position) FROM mailframe_recipient r "
    "WHERE r.message_id = m.id), '{}') "
    "FROM mailframe_message m"
)


class QueueDatabaseError(Exception):
    """The database cannot be reached or used; one line."""


class PostgresQueue:
    """
    The queue in the database at C{location}; C{now} gives the time,
    C{warn} gets one line about each row that cannot be read.
    """

    def __init__(
        self,
        location: PostgresLocation,
        now: Callable[[], float],
        warn: Callable[[str], None],
        timeout: float = 10.0,
    ) -> None:
        import psycopg

        self.location = location
        self.path = location.display
        self.now = now
        self.warn = warn
        try:
            self.conn: Any = psycopg.connect(
                location.conninfo,
                autocommit=True,
                connect_timeout=max(1, int(timeout)),
                application_name="mailframe-queue",
                **location.connectArgs(),
            )
        except psycopg.Error as e:
            raise QueueDatabaseError(f"{self.path}: {_oneLine(e)}") from None
        row = self.conn.execute("SELECT to_regclass('mailframe_message')").fetchone()
        if row is None or row[0] is None:
            self.conn.close()
            raise QueueDatabaseError(
                f"{self.path}: no mailframe queue in this database (no node has started on it)"
            )

    def _describe(self, row: tuple[Any, ...]) -> dict[str, Any] | None:
        entryID, envelope, held, nextAttempt, by, at, owner, until, recipients = row
        try:
            entry = entryFromRows((entryID, envelope, held, nextAttempt), list(recipients))
        except EntryError as e:
            self.warn(f"{self.path}: {entryID}: {e}")
            return None
        described = describeEntry(entry, self.path)
        described.update(
            acceptedBy=by,
            acceptedAt=float(at),
            leaseOwner=owner,
            leaseUntil=float(until) if until is not None else None,
        )
        return described

    def list(self) -> tuple[list[dict[str, Any]], float]:
        """Every message of the cluster, oldest first, and the time."""
        rows = self.conn.execute(_SELECT + " ORDER BY m.arrival, m.id").fetchall()
        described = [d for d in map(self._describe, rows) if d is not None]
        return described, self.now()

    def show(self, entryID: str) -> tuple[dict[str, Any], bytes, float] | None:
        """One message described, its first L{HEAD_LIMIT} octets, the time; None if unknown."""
        row = self.conn.execute(_SELECT + " WHERE m.id = %s", (entryID,)).fetchone()
        if row is None:
            return None
        described = self._describe(row)
        if described is None:
            return None
        head = self.conn.execute(
            "SELECT substring(data FROM 1 FOR %s) FROM mailframe_message WHERE id = %s",
            (HEAD_LIMIT, entryID),
        ).fetchone()
        return described, bytes(head[0]) if head else b"", self.now()

    def flush(self) -> int:
        """Every message not held due now, and each node told; how many."""
        with self.conn.transaction():
            self.conn.execute(
                "UPDATE mailframe_message SET next_attempt = %s "
                "WHERE NOT held AND next_attempt > %s",
                (self.now(), self.now()),
            )
            self.conn.execute("UPDATE mailframe_control SET value = value + 1 WHERE key = 'flush'")
            row = self.conn.execute(
                "SELECT count(*) FROM mailframe_message WHERE NOT held"
            ).fetchone()
        return int(row[0]) if row else 0

    def delete(self, entryID: str) -> bool:
        """Delete a message (no report); False if there is none."""
        cur = self.conn.execute("DELETE FROM mailframe_message WHERE id = %s", (entryID,))
        return bool(cur.rowcount)

    def deleteAll(self) -> int:
        """Delete every message; how many."""
        return int(self.conn.execute("DELETE FROM mailframe_message").rowcount)

    def hold(self, entryID: str, held: bool) -> bool | None:
        """Hold or release; False if it was so already, None if there is no such message."""
        cur = self.conn.execute(
            "UPDATE mailframe_message SET held = %s WHERE id = %s AND held <> %s",
            (held, entryID, held),
        )
        if cur.rowcount:
            return True
        row = self.conn.execute(
            "SELECT 1 FROM mailframe_message WHERE id = %s", (entryID,)
        ).fetchone()
        return False if row else None

    def close(self) -> None:
        self.conn.close()


def _oneLine(e: BaseException) -> str:
    return " ".join(str(e).split())[:300] or type(e).__name__
