"""
Tests for L{mailframe.queue.pgstore}: the queue in a real, private
PostgreSQL (tests/interop/_postgres.py; skipped without PostgreSQL, a
failure under MAILFRAME_REQUIRE_INTEROP=1): the schema, acceptance,
leases claimed and lost, outcomes with their report in one transaction,
451 while the database is away, and the runner delivering from it.
"""

from __future__ import annotations

import atexit
import io
import json
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from mailframe.address import parseMailbox
from mailframe.app import queuetool
from mailframe.backends.memory import MemoryBackend
from mailframe.envelope import DeliveryResult, Envelope, Recipient
from mailframe.interfaces import IDeliveryBackend, IQueueStore
from mailframe.message import Message
from mailframe.queue._pgschema import VERSION, SchemaError
from mailframe.queue._pgsql import Lost
from mailframe.queue.backend import SpoolBackend
from mailframe.queue.bounce import ReportSettings
from mailframe.queue.entry import FAILED, PENDING, QueueEntry, RecipientState
from mailframe.queue.location import PostgresLocation, parseSpool
from mailframe.queue.pgstore import PostgresStore, StoreUnavailable
from mailframe.queue.runner import QueueRunner, defaultRouteKey
from mailframe.reply import Reply
from tests.interop._postgres import PrivatePostgres

WAIT = 20.0
"""Seconds any one wait may take."""


class FakeRunner:
    """What the store asks of a runner, recorded."""

    def __init__(self) -> None:
        self.entries: dict[str, QueueEntry] = {}
        self.forgotten: list[str] = []
        self.flushes = 0
        self.holds: list[tuple[str, bool]] = []

    def take(self, entry: QueueEntry) -> None:
        self.entries[entry.id] = entry

    def forget(self, entryID: str) -> None:
        self.forgotten.append(entryID)
        self.entries.pop(entryID, None)

    def hold(self, entryID: str, held: bool = True) -> defer.Deferred[bool]:
        self.holds.append((entryID, held))
        self.entries[entryID].held = held
        return defer.succeed(True)

    def flush(self) -> int:
        self.flushes += 1
        return len(self.entries)

    def underWay(self, entryID: str) -> bool:
        return False


def makeEntry(entryID: str, *recipients: str) -> QueueEntry:
    return QueueEntry(
        entryID,
        "sender@example.org",
        [RecipientState(r) for r in recipients or ("rcpt@example.com",)],
        reactor.seconds(),
        nextAttempt=reactor.seconds(),
    )


def crash(store: Any) -> None:
    """
    C{store}'s node dies: it gives nothing back, and its timers (claims,
    renewals) never fire again, so it cannot take back what it held (a live
    node would: a claim of its own expired row is a race with the others).
    """
    store._stopped = True
    store._owned.clear()
    for timer in store._timers.values():
        if timer.active():
            timer.cancel()


async def waitUntil(condition: Any, what: str, timeout: float = WAIT) -> None:
    """Poll C{condition()} in the reactor every 50 ms, at most C{timeout} seconds."""
    deadline = reactor.seconds() + timeout
    while not condition():
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await task.deferLater(reactor, 0.05, lambda: None)


_cluster: PrivatePostgres | None = None


def cluster() -> PrivatePostgres:
    """The module's private cluster, started at its first use, stopped at exit."""
    global _cluster
    if _cluster is None:
        postgres = PrivatePostgres()
        atexit.register(postgres.cleanUp)
        postgres.start()
        _cluster = postgres
    return _cluster


class PostgresTestCase(TestCase):
    """The module's private cluster; the queue's tables dropped before each test."""

    postgres: PrivatePostgres
    timeout = 120

    def setUp(self) -> None:
        self.postgres = cluster()
        if not self.postgres.running:
            self.postgres.start()
        with self.postgres.connect() as conn:
            conn.execute(
                "DROP TABLE IF EXISTS mailframe_recipient, mailframe_message, mailframe_node, "
                "mailframe_control, mailframe_schema"
            )

    def location(self) -> PostgresLocation:
        location = parseSpool(self.postgres.url)
        assert isinstance(location, PostgresLocation)
        return location

    async def store(self, node: str = "node-a", **kwargs: Any) -> tuple[PostgresStore, FakeRunner]:
        kwargs.setdefault("pollInterval", 0.1)
        kwargs.setdefault("connectTimeout", 3.0)
        store = PostgresStore(self.location(), reactor, node, **kwargs)
        runner = FakeRunner()
        store.attach(runner)
        self.addCleanup(store.stop)
        entries = await store.start().addTimeout(WAIT, reactor)
        for entry in entries:
            runner.take(entry)
        return store, runner

    def rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with self.postgres.connect() as conn:
            return conn.execute(sql, params).fetchall()


class StoreTests(PostgresTestCase):
    """The store's own operations."""

    async def test_interface(self) -> None:
        """PostgresStore provides IQueueStore; start records the schema version."""
        store, _ = await self.store()
        self.assertTrue(verifyObject(IQueueStore, store))
        self.assertEqual(self.rows("SELECT max(version) FROM mailframe_schema"), [(VERSION,)])
        self.assertEqual(self.rows("SELECT name FROM mailframe_node"), [("node-a",)])

    async def test_newerSchemaRefused(self) -> None:
        """A database with a newer schema version is refused in one line."""
        store, _ = await self.store()
        store.stop()
        with self.postgres.connect() as conn:
            conn.execute("INSERT INTO mailframe_schema (version) VALUES (99)")
        again = PostgresStore(self.location(), reactor, "node-b")
        self.addCleanup(again.stop)
        with self.assertRaises(SchemaError) as caught:
            await again.start().addTimeout(WAIT, reactor)
        self.assertIn("version 99", str(caught.exception))

    async def test_add(self) -> None:
        """An added message is a row held by its node, one row per recipient, data intact."""
        store, _ = await self.store()
        committed: list[str] = []
        store.setCommitListener(lambda entry, data: committed.append(entry.id))
        entry = makeEntry("M1", "a@example.com", "b@example.com")
        message = Message()
        message.write(b"Subject: hi\r\n\r\nbody\r\n")
        message.finish()
        await store.add(entry, message)
        self.assertEqual(committed, ["M1"])
        self.assertEqual(
            self.rows("SELECT accepted_by, lease_owner, size FROM mailframe_message"),
            [("node-a", "node-a", 21)],
        )
        self.assertEqual(
            self.rows("SELECT address, state FROM mailframe_recipient ORDER BY position"),
            [("a@example.com", PENDING), ("b@example.com", PENDING)],
        )
        read = await store.readMessage("M1")
        self.assertEqual(read.getvalue(), b"Subject: hi\r\n\r\nbody\r\n")
        self.assertEqual(await store.readHead("M1", 7), (b"Subject", False))

    async def test_addWhileConnecting(self) -> None:
        """A message that comes while the store connects waits for it, then commits."""
        store = PostgresStore(self.location(), reactor, "node-a")
        self.addCleanup(store.stop)
        starting = store.start()
        added = store.add(makeEntry("E1"), b"x\r\n")
        await starting.addTimeout(WAIT, reactor)
        await added.addTimeout(WAIT, reactor)
        self.assertEqual(self.rows("SELECT id FROM mailframe_message"), [("E1",)])

    async def test_groupCommit(self) -> None:
        """Messages that arrive while a commit runs share the next transaction."""
        store, _ = await self.store()
        await defer.gatherResults(
            [store.add(makeEntry(f"G{i}"), b"x\r\n") for i in range(20)]
        )  # fmt: skip
        self.assertEqual(self.rows("SELECT count(*) FROM mailframe_message"), [(20,)])
        self.assertLess(store.batches, 20)

    async def test_idTaken(self) -> None:
        """An id another node used already gets a variant; the entry says which."""
        store, _ = await self.store()
        await store.add(makeEntry("SAME"), b"one\r\n")
        second = makeEntry("SAME")
        await store.add(second, b"two\r\n")
        self.assertTrue(second.id.startswith("SAME-"), second.id)

    async def test_leaseExpiresToAnotherNode(self) -> None:
        """A node's message is not claimed while its lease lasts, then another node takes it."""
        storeA, _ = await self.store("node-a", lease=30.0)
        await storeA.add(makeEntry("L1"), b"x\r\n")
        _storeB, runnerB = await self.store("node-b")
        await task.deferLater(reactor, 0.5, lambda: None)
        self.assertEqual(runnerB.entries, {})
        crash(storeA)  # node-a dies: it neither renews nor claims again ...
        with self.postgres.connect() as conn:  # ... and its lease runs out
            conn.execute("UPDATE mailframe_message SET lease_until = now() - interval '1s'")
        await waitUntil(lambda: "L1" in runnerB.entries, "node-b to claim L1")
        self.assertEqual(self.rows("SELECT lease_owner FROM mailframe_message"), [("node-b",)])

    async def test_restartedNodeGivesBack(self) -> None:
        """A node starting again under its name takes back its old leases at once."""
        storeA, _ = await self.store("node-a", lease=600.0)
        await storeA.add(makeEntry("R1"), b"x\r\n")
        storeA._stopped = True  # a crash: nothing given back
        storeA._owned.clear()
        _again, runner = await self.store("node-a")
        await waitUntil(lambda: "R1" in runner.entries, "R1 claimed again")

    async def test_updateWithReport(self) -> None:
        """The recipients' states and the report they caused commit together."""
        store, _runner = await self.store()
        committed: list[str] = []
        store.setCommitListener(lambda entry, data: committed.append(entry.id))
        entry = makeEntry("U1")
        await store.add(entry, b"x\r\n")
        entry.recipients[0].state = FAILED
        entry.recipients[0].reply = Reply(550, (5, 1, 1), "No such user")
        report = QueueEntry("U1R1", "", [RecipientState("sender@example.org")], 1.0, report=True)
        await store.addReport("U1", report, b"report\r\n")
        self.assertEqual(self.rows("SELECT count(*) FROM mailframe_message"), [(1,)])
        store.remove("U1")
        await waitUntil(
            lambda: self.rows("SELECT id FROM mailframe_message") == [("U1R1",)],
            "the report in place of U1",
        )
        await waitUntil(lambda: committed == ["U1", "U1R1"], "the report handed to the runner")

    async def test_lostLease(self) -> None:
        """A write where another node holds the lease fails; the runner forgets; no report."""
        store, runner = await self.store()
        entry = makeEntry("X1")
        runner.entries["X1"] = entry
        await store.add(entry, b"x\r\n")
        with self.postgres.connect() as conn:
            conn.execute("UPDATE mailframe_message SET lease_owner = 'node-z'")
        report = QueueEntry("X1R1", "", [RecipientState("sender@example.org")], 1.0, report=True)
        await store.addReport("X1", report, b"report\r\n")
        entry.recipients[0].state = FAILED
        with self.assertRaises(Lost):
            await store.update(entry)
        self.assertEqual(runner.forgotten, ["X1"])
        self.assertEqual(self.rows("SELECT id, lease_owner FROM mailframe_message"),
                         [("X1", "node-z")])  # fmt: skip
        self.assertEqual(self.rows("SELECT state FROM mailframe_recipient"), [(PENDING,)])

    async def test_renewalSeesChanges(self) -> None:
        """Renewals see a deletion (forgotten), a hold (the runner holds) and a flush."""
        store, runner = await self.store(lease=0.6)
        for entryID in ("D1", "H1"):
            entry = makeEntry(entryID)
            runner.entries[entryID] = entry
            await store.add(entry, b"x\r\n")
        with self.postgres.connect() as conn:
            conn.execute("DELETE FROM mailframe_message WHERE id = 'D1'")
            conn.execute("UPDATE mailframe_message SET held = true WHERE id = 'H1'")
            conn.execute("UPDATE mailframe_control SET value = value + 1 WHERE key = 'flush'")
        await waitUntil(lambda: runner.forgotten == ["D1"], "D1 forgotten")
        await waitUntil(lambda: runner.holds == [("H1", True)], "H1 held")
        await waitUntil(lambda: runner.flushes == 1, "the flush")


class RunnerTests(PostgresTestCase):
    """The queue runner delivering from the PostgreSQL store."""

    async def test_deliveredAndRemoved(self) -> None:
        """Accepted through SpoolBackend, delivered by the runner, its rows gone."""
        store = PostgresStore(self.location(), reactor, "node-a", pollInterval=0.1)
        local = MemoryBackend()
        runner = QueueRunner(
            reactor, store, local, None, defaultRouteKey(lambda d: True),
            ReportSettings("mx.test"),
        )  # fmt: skip
        store.attach(runner)
        self.addCleanup(store.stop)
        self.addCleanup(runner.stop)
        await runner.start().addTimeout(WAIT, reactor)
        envelope = Envelope(
            "Q1", parseMailbox("s@example.org"), {}, [Recipient(parseMailbox("r@example.com"))]
        )
        message = Message()
        message.write(b"Subject: q\r\n\r\nhello\r\n")
        message.finish()
        result = await SpoolBackend(store, reactor).deliver(envelope, message)
        self.assertIsNone(result)
        await waitUntil(lambda: local.count == 1, "the delivery")
        await waitUntil(
            lambda: self.rows("SELECT count(*) FROM mailframe_message") == [(0,)], "the removal"
        )


class UnavailableTests(PostgresTestCase):
    """PostgreSQL away: 451 4.3.0, never a 250; back: accepted again."""

    async def test_away(self) -> None:
        """With PostgreSQL stopped an add fails with 451 4.3.0; after its restart it works."""
        store, _ = await self.store(connectTimeout=2.0)
        await store.add(makeEntry("B1"), b"x\r\n")
        self.postgres.stop("immediate")
        envelope = Envelope(
            "B2", parseMailbox("s@example.org"), {}, [Recipient(parseMailbox("r@example.com"))]
        )
        message = Message()
        message.write(b"x\r\n")
        message.finish()
        result = await SpoolBackend(store, reactor).deliver(envelope, message)
        assert result is not None
        self.assertEqual([(r.code, r.enhanced) for r in result.replies], [(451, (4, 3, 0))])
        with self.assertRaises(StoreUnavailable):
            await store.add(makeEntry("B3"), b"x\r\n")
        self.postgres.start()
        deadline = reactor.seconds() + WAIT
        while True:
            try:
                await store.add(makeEntry("B4"), b"x\r\n")
                break
            except StoreUnavailable:
                if reactor.seconds() > deadline:
                    raise
                await task.deferLater(reactor, 0.2, lambda: None)
        self.assertEqual(
            self.rows("SELECT id FROM mailframe_message ORDER BY id"), [("B1",), ("B4",)]
        )


class ToolTests(PostgresTestCase):
    """mailframe-queue --spool postgresql://...: the whole cluster's queue."""

    async def tool(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        args = queuetool.parser().parse_args(["--spool", self.postgres.url, *argv])
        status = await queuetool.run(reactor, args, out, err)
        return status, out.getvalue(), err.getvalue()

    async def test_listAcrossNodes(self) -> None:
        """list shows every node's messages, the accepting node and the lease holder."""
        storeA, _ = await self.store("node-a")
        storeB, _ = await self.store("node-b")
        await storeA.add(makeEntry("A1"), b"Subject: a\r\n\r\nx\r\n")
        await storeB.add(makeEntry("B1"), b"Subject: b\r\n\r\nx\r\n")
        status, out, err = await self.tool("list")
        self.assertEqual(status, 0, err)
        lines = out.splitlines()
        self.assertEqual(len(lines), 2, out)
        self.assertIn("[node-a, lease node-a]", lines[0])
        self.assertIn("[node-b, lease node-b]", lines[1])
        status, out, _ = await self.tool("list", "--json")
        first = json.loads(out.splitlines()[0])
        self.assertEqual((first["id"], first["acceptedBy"]), ("A1", "node-a"))
        status, out, _ = await self.tool("summary")
        self.assertEqual(status, 0)
        self.assertIn("TOTAL", out)
        self.assertIn("example.com", out)
        status, out, _ = await self.tool("show", "B1")
        self.assertIn("accepted by: node-b", out)
        self.assertIn("lease:       node-b until", out)
        self.assertIn("Subject: b", out)

    async def test_holdReleaseDeleteFlush(self) -> None:
        """hold and release reach the holding node; delete and flush act on the cluster."""
        store, runner = await self.store("node-a", lease=0.6)
        for entryID in ("H1", "D1"):
            entry = makeEntry(entryID)
            runner.entries[entryID] = entry
            await store.add(entry, b"x\r\n")
        status, out, _ = await self.tool("hold", "H1")
        self.assertEqual((status, out.strip()), (0, "held H1"))
        await waitUntil(lambda: runner.holds == [("H1", True)], "node-a to hold H1")
        status, out, _ = await self.tool("hold", "H1")
        self.assertEqual(out.strip(), "H1 was held already")
        status, out, _ = await self.tool("release", "H1")
        await waitUntil(lambda: runner.holds[-1:] == [("H1", False)], "node-a to release H1")
        status, out, _ = await self.tool("delete", "D1")
        self.assertEqual((status, out.strip()), (0, "deleted D1"))
        await waitUntil(lambda: runner.forgotten == ["D1"], "node-a to forget D1")
        status, out, _ = await self.tool("flush")
        self.assertEqual(out.strip(), "1 message(s) to be tried now")
        await waitUntil(lambda: runner.flushes == 1, "node-a to flush")
        status, _, err = await self.tool("delete", "NOPE")
        self.assertEqual(
            (status, err.strip()), (1, "mailframe-queue: no message NOPE in the queue")
        )

    async def test_errors(self) -> None:
        """An unknown scheme is a usage error; a database without a queue, an error."""
        out, err = io.StringIO(), io.StringIO()
        args = queuetool.parser().parse_args(["--spool", "mysql://h/db", "list"])
        self.assertEqual(await queuetool.run(reactor, args, out, err), 2)
        self.assertIn("unknown scheme 'mysql'", err.getvalue())
        status, _, err2 = await self.tool("list")
        self.assertEqual(status, 1)
        self.assertIn("no mailframe queue in this database", err2)


@implementer(IDeliveryBackend)
class Stuck:
    """A local backend that never answers: its node dies mid-delivery."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.waiting: list[defer.Deferred[DeliveryResult | None]] = []

    def deliver(
        self, envelope: Envelope, message: Message
    ) -> defer.Deferred[DeliveryResult | None]:
        self.started.append(envelope.queueID)
        d: defer.Deferred[DeliveryResult | None] = defer.Deferred()
        self.waiting.append(d)
        return d

    def finish(self) -> None:
        """The end of the test: answer (the dead node's answer goes nowhere)."""
        for d in self.waiting:
            d.callback(None)


class TakeoverTests(PostgresTestCase):
    """A node that dies mid-delivery: another node delivers once the lease expires."""

    def runnerFor(self, node: str, local: Any, lease: float) -> QueueRunner:
        store = PostgresStore(self.location(), reactor, node, lease=lease, pollInterval=0.1)
        runner = QueueRunner(
            reactor, store, local, None, defaultRouteKey(lambda d: True),
            ReportSettings("mx.test"),
        )  # fmt: skip
        store.attach(runner)
        self.addCleanup(store.stop)
        self.addCleanup(runner.stop)
        return runner

    async def test_deadNodeMessageTakenOver(self) -> None:
        """node-a dies delivering (no renewals, leases kept); node-b delivers after expiry."""
        stuck = Stuck()
        runnerA = self.runnerFor("node-a", stuck, lease=1.5)
        self.addCleanup(stuck.finish)
        await runnerA.start().addTimeout(WAIT, reactor)
        envelope = Envelope(
            "T1", parseMailbox("s@example.org"), {}, [Recipient(parseMailbox("r@example.com"))]
        )
        message = Message()
        message.write(b"Subject: t\r\n\r\nx\r\n")
        message.finish()
        self.assertIsNone(await SpoolBackend(runnerA.spool, reactor).deliver(envelope, message))
        await waitUntil(lambda: stuck.started == ["T1"], "node-a to start delivering")
        storeA = runnerA.spool
        assert isinstance(storeA, PostgresStore)
        storeA._stopped = True  # a SIGKILL: no renewal, no give-back
        for call in storeA._timers.values():
            if call.active():
                call.cancel()
        storeA._owned.clear()
        local = MemoryBackend()
        runnerB = self.runnerFor("node-b", local, lease=1.5)
        await runnerB.start().addTimeout(WAIT, reactor)
        self.assertEqual(local.count, 0)  # node-a's lease still holds
        await waitUntil(lambda: local.count == 1, "node-b to deliver T1")
        await waitUntil(
            lambda: self.rows("SELECT count(*) FROM mailframe_message") == [(0,)], "the removal"
        )
