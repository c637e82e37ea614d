"""
L{PostgresStore}: the queue in a PostgreSQL database shared by many
mailframe nodes (C{--spool postgresql://USER@HOST/DB}), an L{IQueueStore}.

Every node accepts into the database and any node delivers from it.
Tables and migrations are in L{mailframe.queue._pgschema}.

Accepting (L{add}): group commit, as the file spool: one transaction at a
time takes every message that arrived while the previous one ran (its
message rows, one row per recipient), with C{synchronous_commit} on; each
Deferred fires, and the server answers 250, only once that transaction
has committed.  If the database cannot be reached the Deferred fails
with L{StoreUnavailable} and the client gets C{451 4.3.0}: never a 250
for mail that is not durable.

Leases: a message row says which node holds it (C{lease_owner}) until
when (C{lease_until}, the database's clock).  A new message is held by
the node that accepted it.  Every C{pollInterval} seconds a node claims
due messages nobody holds, or whose lease has expired, with C{SELECT ...
FOR UPDATE SKIP LOCKED} (nodes claiming at once never wait for each other
or take the same row), and hands them to its runner (L{QueueRunner.take}).
While it holds them, deferred ones included, it renews their leases every
third of the lease; a node that dies stops renewing, and its messages go
to the other nodes once the leases expire.  A renewal that finds a message
gone, or held by another node (this node was cut off longer than a lease),
makes the runner forget it (L{QueueRunner.forget}); so do writes that
find it so, or that fail: the lease is then left to expire and whoever
claims the message next starts from what the database says.  So a message
may be delivered twice (a node cut off mid-delivery), never lost.  At
start a node gives back the leases its name held (a restarted node), and
on a clean stop those it holds.

Outcomes: L{update} records each recipient's state and the next attempt
only where this node still holds the lease, and a delivery status
notification made about a message (L{addReport}) is inserted in that same
transaction (or in the one that deletes the finished message): the
recipients are marked failed and the report exists together, or neither;
a report is made exactly once.

The queue tools (L{mailframe.queue.pgtool}) change rows directly: a hold
or release is seen by the holding node at its next renewal, a deletion as
a message gone, a flush through the C{flush} counter.

Threads: psycopg 3's blocking API in the store's own bounded thread pool
(C{poolSize} threads), each with a connection from a bounded
C{psycopg_pool.ConnectionPool} of as many connections; never the
reactor's thread or its shared pool.  The pool reconnects by itself after
the database comes back; claims retry with a back-off (1 s doubling to
30 s), and one line is logged when the database goes away and one when it
is back.

Owns: the rows and their order of operations.  Must not: decide what to
deliver (the runner does) or block the reactor thread (except a bounded
release of leases at stop).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from mailframe.interfaces import IQueueStore
from mailframe.message import Hold, Message, MessageClosed
from mailframe.queue import _pgsql as sql
from mailframe.queue._pgschema import SchemaError, migrate
from mailframe.queue._pgsql import Lost
from mailframe.queue.entry import QueueEntry
from mailframe.queue.location import PostgresLocation
from mailframe.reply import Reply

__all__ = ["PostgresStore", "StoreUnavailable", "defaultNodeName"]

log = Logger(namespace="mailframe.queue")
logging.getLogger("psycopg.pool").addHandler(logging.NullHandler())  # we log what matters

UNAVAILABLE = Reply(451, (4, 3, 0), "The queue is not available; try again later")
_MAX_BACKOFF = 30.0


class StoreUnavailable(Exception):
    """The database cannot be reached or refused the write: 451 4.3.0 (C{reply})."""

    reply = UNAVAILABLE


class _Owner(Protocol):
    """What the store asks of the queue runner (L{mailframe.queue.runner.QueueRunner})."""

    @property
    def entries(self) -> Mapping[str, QueueEntry]: ...

    def take(self, entry: QueueEntry) -> None: ...
    def forget(self, entryID: str) -> None: ...
    def hold(self, entryID: str, held: bool = True) -> defer.Deferred[bool]: ...
    def flush(self) -> int: ...
    def underWay(self, entryID: str) -> bool: ...


def defaultNodeName(worker: int = 0, workers: int = 1) -> str:
    """The host name, with C{-wK} for worker K of several."""
    name = socket.gethostname() or "mailframe"
    return f"{name}-w{worker}" if workers > 1 else name


@dataclass(eq=False)
class _Pending:
    entry: QueueEntry
    data: bytes | Message
    deferred: defer.Deferred[None]
    hold: Hold | None = None
    cancelled: bool = False


@implementer(IQueueStore)
class PostgresStore:
    """
    The queue in the PostgreSQL database at C{location}, as the node C{node}.

    @param lease: seconds a claim lasts unless renewed (every third of it).

    @param poolSize: threads, and connections, at most.

    @param pollInterval: seconds between claims of due work.

    @param claimBatch: messages claimed at most at once.

    @param maxHeld: a node holding this many messages claims no more.

    @param connectTimeout: seconds a write waits for a connection (then
        fails: 451).
    """

    def __init__(
        self,
        location: PostgresLocation,
        reactor: Any,
        node: str | None = None,
        lease: float = 60.0,
        poolSize: int = 4,
        pollInterval: float = 1.0,
        claimBatch: int = 100,
        maxHeld: int = 5000,
        connectTimeout: float = 5.0,
    ) -> None:
        self.location = location
        self.path = location.display
        self.reactor = reactor
        self.node = node or defaultNodeName()
        self.lease = lease
        self.pollInterval = pollInterval
        self.claimBatch = claimBatch
        self.maxHeld = maxHeld
        self.connectTimeout = connectTimeout
        self._threads = ThreadPool(minthreads=0, maxthreads=poolSize, name="mailframe-pg")
        self._poolSize = poolSize
        self._pool: Any = None
        self._listener: Callable[[QueueEntry, bytes | None], None] | None = None
        self._owner: _Owner | None = None
        self._owned: set[str] = set()
        self._reports: dict[str, list[tuple[QueueEntry, bytes]]] = {}
        self._incoming: list[_Pending] = []
        self._committing = False
        self._removals: list[tuple[str, list[tuple[QueueEntry, bytes]]]] = []
        self._removing = False
        self._started = False
        self._stopped = False
        self._timers: dict[str, IDelayedCall] = {}
        self._backoff = 1.0
        self._down: str | None = None
        self._flushSeen: int | None = None
        self.batches = 0
        """How many acceptance transactions ran."""

    # -- wiring ----------------------------------------------------------------------

    def attach(self, owner: _Owner) -> None:
        """The runner the store hands claimed entries to and tells of lost ones."""
        self._owner = owner

    def setCommitListener(
        self, listener: Callable[[QueueEntry, bytes | None], None] | None
    ) -> None:
        self._listener = listener

    def _run(self, f: Callable[[], Any]) -> defer.Deferred[Any]:
        return deferToThreadPool(self.reactor, self._threads, f)

    def _connection(self) -> Any:
        return self._pool.connection(timeout=self.connectTimeout)

    # -- life ------------------------------------------------------------------------------

    def start(self) -> defer.Deferred[list[QueueEntry]]:
        """
        Connect, create or migrate the schema, give back the leases of this
        node's name, and claim the first due messages.  While the database
        cannot be reached it tries again (1 s, doubling to 30 s): the
        Deferred fires once it could; it fails only for a database this
        mailframe cannot use (L{SchemaError}).
        """
        from psycopg_pool import ConnectionPool

        self._stopped = False
        if not self._threads.started:
            self._threads.start()
        if self._pool is None:
            kwargs: dict[str, Any] = {"autocommit": True, **self.location.connectArgs()}
            kwargs.setdefault("connect_timeout", max(1, int(self.connectTimeout)))
            kwargs["application_name"] = f"mailframe {self.node}"[:63]
            self._pool = ConnectionPool(
                self.location.conninfo,
                min_size=1,
                max_size=self._poolSize,
                open=False,
                kwargs=kwargs,
                configure=_configure,
                check=ConnectionPool.check_connection,
                reconnect_timeout=24 * 3600.0,
                name="mailframe-queue",
            )
        d: defer.Deferred[list[QueueEntry]] = defer.Deferred()
        self._tryStart(d, 1.0)
        return d

    def _tryStart(self, d: defer.Deferred[list[QueueEntry]], delay: float) -> None:
        if self._stopped:
            return

        def opened(result: tuple[list[QueueEntry], list[str]]) -> None:
            if self._stopped:  # stopped while connecting: the leases expire
                return
            entries, errors = result
            for error in errors:
                log.error("queue {path}: {error}", path=self.path, error=error)
            self._started = True
            self._available()
            self._owned.update(e.id for e in entries)
            log.info(
                "queue {path}: node {node} connected; {n} message(s) claimed",
                path=self.path,
                node=self.node,
                n=len(entries),
            )
            self._later("poll", self.pollInterval, self._poll)
            self._later("renew", self.lease / 3, self._renew)
            d.callback(entries)
            early = self._timers.pop("early", None)
            if early is not None and early.active():
                early.cancel()
            self._commit()  # what came while it connected

        def failed(reason: Failure) -> None:
            if reason.check(SchemaError):
                d.errback(reason)
                return
            self._unavailable(reason, f"trying again in {delay:g} s")
            self._later("start", delay, self._tryStart, d, min(delay * 2, _MAX_BACKOFF))

        self._run(self._open).addCallbacks(opened, failed)

    def _open(self) -> tuple[list[QueueEntry], list[str]]:
        """Blocking: the start's work, in a database thread."""
        self._pool.open(wait=False)
        with self._connection() as conn:
            migrate(conn)
            self._flushSeen = sql.openNode(conn, self.node)
            return sql.claim(conn, self.reactor.seconds(), self.claimBatch, self.node, self.lease)

    def stop(self) -> None:
        """
        Stop claiming and renewing, give back the leases this node holds
        (bounded: a couple of seconds at most), close the connections and
        stop the threads.
        """
        self._stopped = True
        self._started = False
        for call in self._timers.values():
            if call.active():
                call.cancel()
        self._timers.clear()
        incoming, self._incoming = self._incoming, []
        for pending in incoming:  # never committed: the client gets a 451
            if pending.hold is not None:
                pending.hold.release()
            if not pending.cancelled:
                pending.deferred.errback(Failure(StoreUnavailable("the queue is stopping")))
        owned, self._owned = list(self._owned), set()
        if self._pool is not None:
            if owned:
                try:
                    with self._pool.connection(timeout=2.0) as conn:
                        sql.giveBack(conn, self.node, owned)
                except Exception as e:
                    log.warn("queue {path}: leases not given back: {e}", path=self.path, e=e)
            self._pool.close(timeout=2.0)
            self._pool = None
        if self._threads.started:
            self._threads.stop()

    def _later(self, name: str, delay: float, f: Callable[..., Any], *args: Any) -> None:
        if self._stopped:
            return
        old = self._timers.get(name)
        if old is not None and old.active():
            old.cancel()
        self._timers[name] = self.reactor.callLater(delay, f, *args)

    def _unavailable(self, reason: Failure | BaseException, what: str) -> None:
        value = reason.value if isinstance(reason, Failure) else reason
        text = " ".join(f"{type(value).__name__}: {value}".split())[:300]
        if self._down is None:
            log.error(
                "queue {path}: PostgreSQL is not available ({error}); {what}",
                path=self.path,
                error=text,
                what=what,
            )
        self._down = text

    def _available(self) -> None:
        if self._down is not None:
            log.info("queue {path}: PostgreSQL is available again", path=self.path)
        self._down = None
        self._backoff = 1.0

    # -- ids and adding ------------------------------------------------------------------

    def newID(self, preferred: str) -> str:
        """C{preferred}: an id another node has already is replaced when committed."""
        return preferred

    def __contains__(self, entryID: str) -> bool:
        return entryID in self._owned

    def add(self, entry: QueueEntry, data: bytes | Message) -> defer.Deferred[None]:
        """
        Make the entry durable (group commit); fails with
        L{StoreUnavailable} when the database cannot take it (or, before
        the store has connected, when it has not within C{connectTimeout}).
        """
        pending = _Pending(entry, data, defer.Deferred(lambda _: self._cancel(pending)))
        if isinstance(data, Message):
            try:
                pending.hold = data.retain()
            except MessageClosed:
                pending.deferred.errback(Failure())
                return pending.deferred
        self._incoming.append(pending)
        if self._started:
            self._commit()
        else:  # still connecting: wait for it, about connectTimeout at most
            early = self._timers.get("early")
            if early is None or not early.active():
                self._later("early", self.connectTimeout, self._notConnected)
        return pending.deferred

    def _notConnected(self) -> None:
        """Messages that came before the store could connect, and waited long enough."""
        if self._started:
            return
        incoming, self._incoming = self._incoming, []
        for pending in incoming:
            if pending.hold is not None:
                pending.hold.release()
            if not pending.cancelled:
                error = StoreUnavailable("the PostgreSQL queue is not connected")
                pending.deferred.errback(Failure(error))

    def _cancel(self, pending: _Pending) -> None:
        pending.cancelled = True

    def addReport(self, parentID: str, report: QueueEntry, data: bytes) -> defer.Deferred[None]:
        """
        Keep the report to insert with the next write of C{parentID} (its
        L{update} or L{remove}): one transaction marks the recipients and
        makes the report.
        """
        if parentID not in self._owned:
            return self.add(report, data)
        self._reports.setdefault(parentID, []).append((report, data))
        return defer.succeed(None)

    def _commit(self) -> None:
        if self._committing:
            return
        batch = []
        for pending in self._incoming:
            if pending.cancelled:
                if pending.hold is not None:
                    pending.hold.release()
            else:
                batch.append(pending)
        self._incoming = []
        if not batch:
            return
        self._committing = True
        self.batches += 1
        rows = [(p.entry, p.data) for p in batch]
        self._run(lambda: self._insert(rows)).addBoth(self._committed, batch)

    def _insert(self, rows: list[tuple[QueueEntry, bytes | Message]]) -> None:
        """Blocking: one transaction of new messages, held by this node."""
        with self._connection() as conn, conn.transaction():
            sql.insertMessages(conn, rows, self.node, self.lease)

    def _committed(self, result: object, batch: list[_Pending]) -> None:
        self._committing = False
        for pending in batch:
            if pending.hold is not None:
                pending.hold.release()
                pending.hold = None
        if isinstance(result, Failure):
            self._unavailable(result, "answering 451 4.3.0")
            error = StoreUnavailable(str(result.value))
            for pending in batch:
                if not pending.cancelled:
                    pending.deferred.errback(Failure(error))
        else:
            self._available()
            for pending in batch:
                entry = pending.entry
                self._owned.add(entry.id)
                if self._listener is not None:
                    data = pending.data if isinstance(pending.data, bytes) else None
                    try:
                        self._listener(entry, data)
                    except Exception:
                        log.failure("{id}: queueing a committed message failed", id=entry.id)
                if not pending.cancelled:
                    pending.deferred.callback(None)
        self._commit()

    def _handOver(self, reports: list[tuple[QueueEntry, bytes]]) -> None:
        """Reports committed with their parent's write: this node delivers them."""
        for report, data in reports:
            self._owned.add(report.id)
            if self._listener is not None:
                self._listener(report, data)

    # -- outcomes ----------------------------------------------------------------------------

    def update(self, entry: QueueEntry) -> defer.Deferred[None]:
        """
        Record the recipients' states and the next attempt (and the reports
        made about this entry) where this node still holds the lease; else
        the runner forgets the entry and the Deferred fails.
        """
        entryID = entry.id
        reports = self._reports.pop(entryID, [])
        if entryID not in self._owned:
            return defer.fail(Lost(f"{entryID}: not held by this node"))
        envelope = sql.envelopeJSON(entry)
        rows = [(state, data, mid, i) for mid, i, _, state, data in sql.recipientRows(entry)]
        nextAttempt = entry.nextAttempt

        def work() -> None:
            with self._connection() as conn:
                sql.recordOutcome(
                    conn, entryID, envelope, nextAttempt, rows, reports, self.node, self.lease
                )

        def done(_: None) -> None:
            self._available()
            self._handOver(reports)

        def failed(reason: Failure) -> Failure:
            self._lose(entryID, reason)
            return reason

        return self._run(work).addCallbacks(done, failed)

    def _lose(self, entryID: str, reason: Failure | None) -> None:
        """This node no longer holds the entry: the runner forgets it."""
        if reason is not None and not reason.check(Lost):
            self._unavailable(reason, f"{entryID} is left to another attempt")
        elif reason is not None:
            log.info("{id}: another node holds it now, or it was deleted", id=entryID)
        self._owned.discard(entryID)
        self._reports.pop(entryID, None)
        if self._owner is not None:
            self._owner.forget(entryID)

    def remove(self, entryID: str) -> None:
        """The entry is finished: delete it (with the reports made about it)."""
        reports = self._reports.pop(entryID, [])
        if entryID not in self._owned:
            return
        self._owned.discard(entryID)
        self._removals.append((entryID, reports))
        if not self._removing:
            self._removeBatch()

    def _removeBatch(self) -> None:
        batch, self._removals = self._removals, []
        if not batch:
            return
        self._removing = True
        ids = [entryID for entryID, _ in batch]
        reports = [r for _, rs in batch for r in rs]

        def work() -> None:
            with self._connection() as conn:
                sql.deleteFinished(conn, ids, reports, self.node, self.lease)

        def done(result: object) -> None:
            self._removing = False
            if isinstance(result, Failure):
                self._unavailable(result, f"{len(ids)} finished message(s) left to expire")
            else:
                self._available()
                self._handOver(reports)
            self._removeBatch()

        self._run(work).addBoth(done)

    # -- claiming and renewing -----------------------------------------------------------

    def _poll(self) -> None:
        room = min(self.claimBatch, self.maxHeld - len(self._owned))
        if room <= 0 or self._owner is None:
            self._later("poll", self.pollInterval, self._poll)
            return

        def work() -> tuple[list[QueueEntry], list[str]]:
            with self._connection() as conn:
                return sql.claim(conn, self.reactor.seconds(), room, self.node, self.lease)

        def claimed(result: tuple[list[QueueEntry], list[str]]) -> None:
            entries, errors = result
            for error in errors:
                log.error("queue {path}: {error}", path=self.path, error=error)
            self._available()
            owner = self._owner
            for entry in entries:
                if entry.id in self._owned:  # a stale row of our own: renewals keep ours
                    continue
                if owner is not None and owner.underWay(entry.id):
                    continue  # lost while an attempt ran: claimed again once it is over
                self._owned.add(entry.id)
                if owner is not None:
                    owner.take(entry)
            self._later("poll", 0 if len(entries) >= room else self.pollInterval, self._poll)

        def failed(reason: Failure) -> None:
            self._unavailable(reason, f"trying again in {self._backoff:g} s")
            self._later("poll", self._backoff, self._poll)
            self._backoff = min(self._backoff * 2, _MAX_BACKOFF)

        self._run(work).addCallbacks(claimed, failed)

    def _renew(self) -> None:
        ids = list(self._owned)

        def work() -> tuple[list[tuple[str, bool]], int]:
            with self._connection() as conn:
                return sql.renew(conn, self.node, self.lease, ids)

        def renewed(result: tuple[list[tuple[str, bool]], int]) -> None:
            rows, flush = result
            self._available()
            held = dict(rows)
            owner = self._owner
            for entryID in ids:
                if entryID not in held and entryID in self._owned:
                    self._lose(entryID, Failure(Lost(entryID)))
            if owner is not None:
                for entryID, isHeld in held.items():
                    entry = owner.entries.get(entryID)
                    if entry is not None and entry.held != isHeld:
                        owner.hold(entryID, isHeld).addErrback(_holdFailed, entryID)
                if self._flushSeen is not None and flush != self._flushSeen:
                    log.info("queue {path}: flush", path=self.path)
                    owner.flush()
            self._flushSeen = flush

        def failed(reason: Failure) -> None:
            self._unavailable(reason, "leases not renewed")

        def next(_: object) -> None:
            self._later("renew", self.lease / 3, self._renew)

        self._run(work).addCallbacks(renewed, failed).addBoth(next)

    # -- reading ----------------------------------------------------------------------------

    def readMessage(
        self, entryID: str, spillThreshold: int = 1 << 20, tempDir: str | None = None
    ) -> defer.Deferred[Message]:
        """The queued message as a L{Message}."""

        def read() -> Message:
            with self._connection() as conn:
                data = sql.readData(conn, entryID)
            message = Message(spillThreshold, tempDir)
            message.write(data)
            message.finish()
            return message

        return self._run(read)

    def readHead(self, entryID: str, limit: int) -> defer.Deferred[tuple[bytes, bool]]:
        """The first C{limit} octets of the message, and whether that is all of it."""

        def read() -> tuple[bytes, bool]:
            with self._connection() as conn:
                return sql.readHead(conn, entryID, limit)

        return self._run(read)


def _holdFailed(reason: Failure, entryID: str) -> None:
    log.failure("{id}: recording a hold failed", reason, id=entryID)


def _configure(conn: Any) -> None:
    """Every connection: commits wait for the disk (whatever the server's default)."""
    conn.execute("SET synchronous_commit TO on")
