"""
Tests for L{mailframe.queue.spool} and L{mailframe.queue.entry}: the order
of writes, fsyncs and renames, group commit, recovery after a crash, and
the envelope's JSON round trip.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mailframe.address import Address, Domain
from mailframe.envelope import Envelope, Recipient
from mailframe.message import Message
from mailframe.queue import _files as filesModule
from mailframe.queue.entry import (
    DELIVERED,
    FAILED,
    PENDING,
    EntryError,
    QueueEntry,
    RecipientState,
)
from mailframe.queue.spool import Spool
from mailframe.reply import Reply


def syncWorker(f: Callable[[], Any]) -> defer.Deferred[Any]:
    """Runs the blocking function at once, in the test's thread."""
    return defer.maybeDeferred(f)


class ManualWorker:
    """Holds each blocking function until the test runs it: concurrency made explicit."""

    def __init__(self) -> None:
        self.jobs: list[tuple[Callable[[], Any], defer.Deferred[Any]]] = []

    def __call__(self, f: Callable[[], Any]) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self.jobs.append((f, d))
        return d

    def runNext(self) -> None:
        f, d = self.jobs.pop(0)
        try:
            result = f()
        except Exception:
            d.errback()
        else:
            d.callback(result)

    def runAll(self) -> None:
        while self.jobs:
            self.runNext()


def makeEntry(
    entryID: str = "A1", sender: str = "sender@example.org", **kwargs: Any
) -> QueueEntry:
    recipients = kwargs.pop("recipients", None) or [
        RecipientState("rcpt@example.com", {"NOTIFY": "FAILURE"})
    ]
    kwargs.setdefault("arrival", 1000.0)
    return QueueEntry(id=entryID, sender=sender, recipients=recipients, **kwargs)


class EntryTests(SynchronousTestCase):
    """The envelope file's JSON."""

    def test_roundTrip(self) -> None:
        """Every field survives toBytes/fromBytes."""
        entry = makeEntry(
            recipients=[
                RecipientState(
                    "a@example.com",
                    {"NOTIFY": "SUCCESS,FAILURE", "ORCPT": "rfc822;a+2Bx@example.com"},
                    state=DELIVERED,
                    reply=Reply(250, (2, 0, 0), "ok"),
                    remote="mx.example.com [192.0.2.1]",
                    lastAttempt=1005.5,
                ),
                RecipientState(
                    "b@example.com",
                    state=PENDING,
                    reply=Reply(451, None, ("try", "later")),
                ),
                RecipientState("c@example.com", state=FAILED, reply=Reply(550, (5, 1, 1), "no")),
            ],
            mailParams={"BODY": "8BITMIME", "RET": "HDRS", "ENVID": "x+2By", "SMTPUTF8": None},
            size=1234,
            attempts=3,
            nextAttempt=2000.0,
            lastAttempt=1500.0,
            listener="submission",
            received={"helo": "client.example", "peer": "192.0.2.9", "protocol": "ESMTPS"},
            auth="user@example.org",
            delayWarned=True,
        )
        copy = QueueEntry.fromBytes(entry.toBytes())
        self.assertEqual(copy.toJSON(), entry.toJSON())
        self.assertEqual(copy.recipients[1].reply, Reply(451, None, ("try", "later")))
        self.assertEqual(copy.recipients[0].reply, Reply(250, (2, 0, 0), "ok"))

    def test_nullSenderAndUTF8(self) -> None:
        """The null sender and UTF-8 addresses round-trip; the file is UTF-8 JSON."""
        entry = makeEntry(sender="", recipients=[RecipientState("jörg@bücher.example")])
        data = entry.toBytes()
        self.assertIn("jörg".encode(), data)
        copy = QueueEntry.fromBytes(data)
        self.assertTrue(copy.senderAddress.isNull)
        self.assertEqual(copy.recipients[0].toRecipient().address.localPart, "jörg")

    def test_fromEnvelope(self) -> None:
        """A server envelope becomes an entry with every recipient pending."""
        envelope = Envelope(
            "Q1",
            Address("s", Domain("example.org")),
            {"RET": "FULL"},
            [Recipient(Address("r", Domain("example.com")), {"NOTIFY": "NEVER"})],
        )
        envelope.authIdentity = "s@example.org"
        entry = QueueEntry.fromEnvelope("Q1", envelope, 50.0, 10, "smtp")
        self.assertEqual(entry.sender, "s@example.org")
        self.assertEqual(entry.mailParams, {"RET": "FULL"})
        self.assertEqual(
            [(r.address, r.params, r.state) for r in entry.recipients],
            [("r@example.com", {"NOTIFY": "NEVER"}, PENDING)],
        )
        self.assertEqual(
            (entry.arrival, entry.nextAttempt, entry.auth), (50.0, 50.0, "s@example.org")
        )
        again = entry.envelopeFor(entry.recipients)
        self.assertEqual(again.authIdentity, "s@example.org")
        self.assertEqual(again.recipients[0].params, {"NOTIFY": "NEVER"})

    def test_badEntries(self) -> None:
        """Anything that is not a valid entry raises EntryError, never anything else."""
        good = makeEntry().toJSON()
        bad: list[Any] = [
            b"not json",
            b"\xff\xfe",
            json.dumps([1, 2]).encode(),
            json.dumps({**good, "version": 99}).encode(),
            json.dumps({**good, "recipients": []}).encode(),
            json.dumps({**good, "sender": "not an address@"}).encode(),
            json.dumps({**good, "id": "../etc"}).encode(),
            json.dumps({**good, "arrival": "soon"}).encode(),
            json.dumps({**good, "mailParams": {"A": 1}}).encode(),
            json.dumps({**good, "recipients": [{"address": "x@y", "state": "lost"}]}).encode(),
            json.dumps({k: v for k, v in good.items() if k != "sender"}).encode(),
        ]
        for data in bad:
            self.assertRaises(EntryError, QueueEntry.fromBytes, data)


class SpoolCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.path = self.mktemp()
        self.committed: list[tuple[QueueEntry, bytes | None]] = []

    def makeSpool(self, worker: Any = syncWorker, **kwargs: Any) -> Spool:
        kwargs.setdefault("threads", 1)  # fsyncs one after the other: a fixed order to check
        spool = Spool(self.path, None, worker=worker, committed=self._committed, **kwargs)
        self.successResultOf(spool.start())
        return spool

    def _committed(self, entry: QueueEntry, data: bytes | None) -> None:
        self.committed.append((entry, data))

    def queued(self) -> list[str]:
        return sorted(os.listdir(os.path.join(self.path, "queue")))


class OrderTests(SpoolCase):
    """What happens on disk, in which order."""

    def record(self) -> list[tuple[str, ...]]:
        calls: list[tuple[str, ...]] = []
        paths: dict[int, str] = {}
        realOpen, realFsync, realRename = os.open, os.fsync, os.rename

        def fakeOpen(path: Any, flags: int, mode: int = 0o777, **kw: Any) -> int:
            fd = realOpen(path, flags, mode, **kw)
            paths[fd] = os.path.relpath(path, self.path)
            return fd

        def fakeFsync(fd: int) -> None:
            calls.append(("fsync", paths.get(fd, "?")))
            realFsync(fd)

        def fakeRename(src: str, dst: str) -> None:
            calls.append(
                ("rename", os.path.relpath(src, self.path), os.path.relpath(dst, self.path))
            )
            realRename(src, dst)

        self.patch(os, "open", fakeOpen)
        self.patch(os, "fsync", fakeFsync)
        self.patch(os, "rename", fakeRename)
        return calls

    def test_addOrder(self) -> None:
        """Data then envelope, each fsync'd in tmp/; renamed (data first); queue/ fsync'd; then fired."""
        spool = self.makeSpool()
        calls = self.record()
        fired: list[object] = []
        entry = makeEntry(spool.newID("A1"))
        d = spool.add(entry, b"Subject: x\r\n\r\nhello\r\n")
        d.addCallback(fired.append)
        self.assertEqual(
            calls,
            [
                ("fsync", "tmp/A1.msg"),
                ("fsync", "tmp/A1.json"),
                ("rename", "tmp/A1.msg", "queue/A1.msg"),
                ("rename", "tmp/A1.json", "queue/A1.json"),
                ("fsync", "queue"),
            ],
        )
        self.assertEqual(fired, [None])
        self.assertEqual(self.queued(), ["A1.json", "A1.msg"])
        self.assertEqual(os.listdir(os.path.join(self.path, "tmp")), [])
        with open(os.path.join(self.path, "queue", "A1.json"), "rb") as f:
            self.assertEqual(QueueEntry.fromBytes(f.read()).size, 21)
        self.assertEqual([e.id for e, _ in self.committed], ["A1"])

    def test_firesOnlyAfterDirectoryFsync(self) -> None:
        """The Deferred fires after the commit job, whose last step is the directory fsync."""
        worker = ManualWorker()
        spool = Spool(self.path, None, worker=worker)
        self.successResultOf(_started(spool, worker))
        fired: list[object] = []
        spool.add(makeEntry(spool.newID("A1")), b"x\r\n").addCallback(fired.append)
        seen: list[tuple[list[object], list[str]]] = []
        realFsync = os.fsync

        def fsync(fd: int) -> None:
            seen.append((list(fired), self.queued()))
            realFsync(fd)

        self.patch(os, "fsync", fsync)
        self.assertEqual(len(worker.jobs), 1)
        worker.runNext()
        self.assertEqual(seen[-1], ([], ["A1.json", "A1.msg"]))  # the directory fsync
        self.assertEqual(fired, [None])

    def test_parallelFsyncs(self) -> None:
        """With several threads every file is fsync'd, in any order, before any rename."""
        worker = ManualWorker()
        spool = self.makeSpool(threads=4)
        spool._worker = worker
        self.addCleanup(spool.stop)
        calls = self.record()
        ds = [spool.add(makeEntry(spool.newID(n)), b"x\r\n") for n in ("A", "B", "C")]
        worker.runNext()  # A alone
        worker.runNext()  # B and C together
        for d in ds:
            self.successResultOf(d)
        second = calls[5:]
        self.assertEqual(
            sorted(second[:4]), [("fsync", f"tmp/{n}{x}") for n in "BC" for x in (".json", ".msg")]
        )
        self.assertEqual([c[0] for c in second[4:]], ["rename"] * 4 + ["fsync"])
        self.assertEqual(second[-1], ("fsync", "queue"))

    def test_syncfs(self) -> None:
        """The syncfs mode: no file fsync, one syncfs per commit, renames, the directory fsync."""
        synced: list[str] = []
        calls: list[tuple[str, ...]] = []

        def syncfs(fd: int) -> int:
            synced.append(os.readlink(f"/proc/self/fd/{fd}"))
            calls.append(("syncfs",))
            return 0

        self.patch(filesModule, "_SYNCFS", syncfs)
        worker = ManualWorker()
        spool = self.makeSpool(sync="syncfs")
        spool._worker = worker
        calls = self.record()  # the syncfs above appends to this list too
        ds = [spool.add(makeEntry(spool.newID(n)), b"x\r\n") for n in ("A", "B", "C")]
        worker.runAll()
        for d in ds:
            self.successResultOf(d)
        self.assertEqual(
            [c for c in calls if c[0] != "rename"],
            [("syncfs",), ("fsync", "queue"), ("syncfs",), ("fsync", "queue")],
        )
        self.assertEqual(len([c for c in calls if c[0] == "rename"]), 6)
        self.assertTrue(synced[0].startswith(os.path.abspath(self.path)))

    def test_syncfsFailure(self) -> None:
        """A failed syncfs fails every message of its commit, and nothing is queued."""
        self.patch(filesModule, "_SYNCFS", lambda fd: -1)
        spool = self.makeSpool(sync="syncfs")
        self.failureResultOf(spool.add(makeEntry(spool.newID("A")), b"x\r\n"), OSError)
        self.assertEqual(self.queued(), [])
        self.assertEqual(os.listdir(os.path.join(self.path, "tmp")), [])

    def test_syncfsUnavailable(self) -> None:
        """Asking for syncfs where there is none is a ValueError; an unknown mode too."""
        self.patch(filesModule, "_SYNCFS", None)
        self.assertRaises(ValueError, Spool, self.path, None, sync="syncfs")
        self.assertRaises(ValueError, Spool, self.path, None, sync="sometimes")

    def test_updateOrder(self) -> None:
        """An update writes a new envelope in tmp/, fsyncs it, and renames it over the old."""
        spool = self.makeSpool()
        entry = makeEntry(spool.newID("A1"))
        self.successResultOf(spool.add(entry, b"x\r\n"))
        calls = self.record()
        entry.attempts = 7
        self.successResultOf(spool.update(entry))
        self.assertEqual(len(calls), 2)
        self.assertEqual(calls[0][0], "fsync")
        self.assertTrue(calls[0][1].startswith("tmp/A1.json."))
        self.assertEqual(calls[1], ("rename", calls[0][1], "queue/A1.json"))
        with open(os.path.join(self.path, "queue", "A1.json"), "rb") as f:
            self.assertEqual(QueueEntry.fromBytes(f.read()).attempts, 7)

    def test_removeEnvelopeFirst(self) -> None:
        """A finished entry loses its envelope, then its data (both recycled into free/)."""
        spool = self.makeSpool()
        self.successResultOf(spool.add(makeEntry(spool.newID("A1")), b"x\r\n"))
        calls = self.record()
        spool.remove("A1")
        self.assertEqual(
            [(kind, src) for kind, src, dst in calls],  # type: ignore[misc]
            [("rename", "queue/A1.json"), ("rename", "queue/A1.msg")],
        )
        self.assertTrue(all(c[2].startswith("free/") for c in calls))
        self.assertEqual(self.queued(), [])
        self.assertNotIn("A1", spool)


class GroupCommitTests(SpoolCase):
    """Messages that arrive together share one commit."""

    def test_batch(self) -> None:
        """Messages that come in while a commit runs share the next: one directory fsync for them."""
        worker = ManualWorker()
        spool = Spool(self.path, None, worker=worker)
        self.successResultOf(_started(spool, worker))
        fired: list[str] = []

        def add(name: str) -> None:
            spool.add(makeEntry(spool.newID(name)), b"x\r\n").addCallback(
                lambda _: fired.append(name)
            )

        add("A")  # a commit of A alone starts at once
        self.assertEqual((len(worker.jobs), spool.batches), (1, 1))
        for name in ("B", "C", "D"):  # they wait for A's commit
            add(name)
        self.assertEqual((len(worker.jobs), spool.batches), (1, 1))
        dirSyncs: list[int] = []
        realFsync = os.fsync

        def fsync(fd: int) -> None:
            if os.path.isdir(f"/proc/self/fd/{fd}"):
                dirSyncs.append(fd)
            realFsync(fd)

        self.patch(os, "fsync", fsync)
        worker.runNext()
        self.assertEqual(fired, ["A"])
        self.assertEqual((len(worker.jobs), spool.batches), (1, 2))  # B, C and D together
        worker.runNext()
        self.assertEqual(fired, ["A", "B", "C", "D"])
        self.assertEqual(len(dirSyncs), 2)
        self.assertEqual(len(self.queued()), 8)
        self.assertEqual(worker.jobs, [])
        spool.stop()

    def test_removalsRideOnCommits(self) -> None:
        """A removal made while a commit runs is done by the next commit's job, not its own."""
        worker = ManualWorker()
        spool = Spool(self.path, None, worker=worker)
        self.successResultOf(_started(spool, worker))
        spool.add(makeEntry(spool.newID("A")), b"x\r\n")
        worker.runNext()
        spool.add(makeEntry(spool.newID("B")), b"x\r\n")  # its commit is now running
        spool.remove("A")
        spool.add(makeEntry(spool.newID("C")), b"x\r\n")
        self.assertEqual(len(worker.jobs), 1)
        worker.runNext()  # B's commit
        self.assertEqual(len(worker.jobs), 1)  # C's commit, which also removes A
        self.assertIn("A.json", self.queued())
        worker.runNext()
        self.assertEqual(self.queued(), ["B.json", "B.msg", "C.json", "C.msg"])
        spool.remove("B")  # nothing running: a job of its own
        self.assertEqual(len(worker.jobs), 1)
        worker.runNext()
        self.assertEqual(self.queued(), ["C.json", "C.msg"])

    def test_recycled(self) -> None:
        """A finished message's files go to free/ and the next message is written into them."""
        spool = self.makeSpool()
        self.successResultOf(
            spool.add(makeEntry(spool.newID("A")), b"a long first message\r\n" * 9)
        )
        inodes = {os.stat(os.path.join(spool.queue, n)).st_ino for n in self.queued()}
        spool.remove("A")
        self.assertEqual(self.queued(), [])
        self.assertEqual(len(spool.free), 2)
        self.successResultOf(spool.add(makeEntry(spool.newID("B")), b"short\r\n"))
        self.assertEqual(len(spool.free), 0)
        self.assertEqual(
            {os.stat(os.path.join(spool.queue, n)).st_ino for n in self.queued()}, inodes
        )
        with open(spool.dataPath("B"), "rb") as f:
            self.assertEqual(f.read(), b"short\r\n")
        with open(os.path.join(spool.queue, "B.json"), "rb") as f:
            self.assertEqual(QueueEntry.fromBytes(f.read()).id, "B")
        again = Spool(self.path, None, worker=syncWorker)
        self.assertEqual([e.id for e in self.successResultOf(again.start())], ["B"])

    def test_freeFilesKeptAcrossRestart(self) -> None:
        """Recycled files found at start are used again; the pool is bounded."""
        spool = self.makeSpool()
        self.successResultOf(spool.add(makeEntry(spool.newID("A")), b"x\r\n"))
        spool.remove("A")
        again = Spool(self.path, None, worker=syncWorker)
        self.successResultOf(again.start())
        self.assertEqual(len(again.free), 2)
        again.free.limit = 1
        again.free.give(os.path.join(self.path, "nothing-there"))
        self.assertEqual(len(again.free), 2)

    def test_cancelBeforeCommit(self) -> None:
        """A message cancelled before its commit starts leaves no file and is not queued."""
        worker = ManualWorker()
        spool = Spool(self.path, None, worker=worker, committed=self._committed)
        self.successResultOf(_started(spool, worker))
        spool.add(makeEntry(spool.newID("A1")), b"x\r\n")
        d = spool.add(makeEntry(spool.newID("B1")), b"x\r\n")
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        worker.runAll()
        self.assertEqual(self.queued(), ["A1.json", "A1.msg"])
        self.assertEqual(os.listdir(os.path.join(self.path, "tmp")), [])
        self.assertEqual([e.id for e, _ in self.committed], ["A1"])
        self.assertNotIn("B1", spool)

    def test_cancelledDuringCommit(self) -> None:
        """A message whose client gave up during its commit is durable: it is still queued."""
        worker = ManualWorker()
        spool = Spool(self.path, None, worker=worker, committed=self._committed)
        self.successResultOf(_started(spool, worker))
        d = spool.add(makeEntry(spool.newID("A1")), b"x\r\n")
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        worker.runAll()
        self.assertEqual([e.id for e, _ in self.committed], ["A1"])

    def test_writeFailure(self) -> None:
        """A file that cannot be written fails that message's Deferred, and nothing is left."""
        spool = self.makeSpool()

        def full(fd: int, data: Any) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        self.patch(os, "write", full)
        failure = self.failureResultOf(spool.add(makeEntry(spool.newID("A1")), b"x\r\n"), OSError)
        self.assertEqual(failure.value.errno, errno.ENOSPC)
        self.assertEqual(os.listdir(os.path.join(self.path, "tmp")), [])
        self.assertEqual(self.queued(), [])

    def test_commitFailure(self) -> None:
        """A failed directory fsync fails every message of the batch and removes its files."""
        spool = self.makeSpool()
        realFsync = os.fsync

        def fsync(fd: int) -> None:
            if os.path.isdir(f"/proc/self/fd/{fd}"):
                raise OSError(errno.EIO, "I/O error")
            realFsync(fd)

        self.patch(os, "fsync", fsync)
        self.failureResultOf(spool.add(makeEntry(spool.newID("A1")), b"x\r\n"), OSError)
        self.assertEqual(self.queued(), [])
        self.assertEqual(self.committed, [])

    def test_messageData(self) -> None:
        """A Message (spilled to a temporary file) is written whole, prepended fields first."""
        spool = self.makeSpool()
        message = Message(spillThreshold=10)
        message.write(b"Subject: big\r\n\r\n" + b"y" * 100 + b"\r\n")
        message.finish()
        message.prependHeader("Received", "from x")
        self.successResultOf(spool.add(makeEntry(spool.newID("A1")), message))
        with open(spool.dataPath("A1"), "rb") as f:
            self.assertEqual(f.read(), message.getvalue())
        self.assertEqual(self.committed[0][1], None)
        read = self.successResultOf(spool.readMessage("A1"))
        self.assertEqual(read.getvalue(), message.getvalue())
        head, complete = self.successResultOf(spool.readHead("A1", 10))
        self.assertEqual((head, complete), (message.getvalue()[:10], False))

    def test_newID(self) -> None:
        """newID keeps the preferred id unless an entry has it."""
        spool = self.makeSpool()
        self.assertEqual(spool.newID("X"), "X")
        self.assertEqual(spool.newID("X"), "X-1")


def _started(spool: Spool, worker: ManualWorker) -> defer.Deferred[Any]:
    d = spool.start()
    worker.runAll()
    return d


class RecoveryTests(SpoolCase):
    """What start finds after a crash."""

    def write(self, name: str, data: bytes, where: str = "queue") -> None:
        os.makedirs(os.path.join(self.path, where), exist_ok=True)
        with open(os.path.join(self.path, where, name), "wb") as f:
            f.write(data)

    def test_halfWritten(self) -> None:
        """Temporary files go; half-committed messages (one name of two) go; whole ones load."""
        good = makeEntry("GOOD", size=3)
        self.write("GOOD.json", good.toBytes())
        self.write("GOOD.msg", b"abc")
        self.write("T1.msg", b"partial da", "tmp")
        self.write("T1.json", b'{"version":1,', "tmp")
        self.write("NOENV.msg", b"data, no envelope")
        self.write("NODATA.json", makeEntry("NODATA").toBytes())
        spool = Spool(self.path, None, worker=syncWorker)
        entries = self.successResultOf(spool.start())
        self.assertEqual([e.id for e in entries], ["GOOD"])
        self.assertEqual(self.queued(), ["GOOD.json", "GOOD.msg"])
        self.assertEqual(os.listdir(os.path.join(self.path, "tmp")), [])
        self.assertIn("GOOD", spool)
        self.assertEqual(spool.newID("GOOD"), "GOOD-1")

    def test_corrupt(self) -> None:
        """An unreadable envelope, or data of the wrong size, is moved to corrupt/ and kept."""
        self.write("BAD.json", b"{not json")
        self.write("BAD.msg", b"x")
        self.write("SHORT.json", makeEntry("SHORT", size=100).toBytes())
        self.write("SHORT.msg", b"only some")
        self.write("OTHER.json", makeEntry("NAMED", size=1).toBytes())
        self.write("OTHER.msg", b"x")
        entries = self.successResultOf(Spool(self.path, None, worker=syncWorker).start())
        self.assertEqual(entries, [])
        self.assertEqual(self.queued(), [])
        self.assertEqual(
            sorted(os.listdir(os.path.join(self.path, "corrupt"))),
            ["BAD.json", "BAD.msg", "OTHER.json", "OTHER.msg", "SHORT.json", "SHORT.msg"],
        )
        self.flushLoggedErrors()

    def test_order(self) -> None:
        """Entries come back oldest first."""
        for name, arrival in (("B", 20.0), ("A", 30.0), ("C", 10.0)):
            self.write(f"{name}.json", makeEntry(name, arrival=arrival, size=1).toBytes())
            self.write(f"{name}.msg", b"x")
        entries = self.successResultOf(Spool(self.path, None, worker=syncWorker).start())
        self.assertEqual([e.id for e in entries], ["C", "B", "A"])

    def test_unusable(self) -> None:
        """A spool path that is a file fails start with SpoolError."""
        from mailframe.queue.spool import SpoolError

        with open(self.path, "w") as f:
            f.write("a file")
        self.failureResultOf(Spool(self.path, None, worker=syncWorker).start(), SpoolError)


class HoldTests(SpoolCase):
    """A message given as a Message is held until its commit has written it."""

    def spilled(self, data: bytes) -> Message:
        m = Message(spillThreshold=16)
        m.write(data)
        m.finish()
        return m

    def test_heldUntilCommitted(self) -> None:
        """Closed by its owner before the commit ran, it is still written whole, then freed."""
        worker = ManualWorker()
        spool = Spool(self.path, None, worker=worker)
        self.successResultOf(_started(spool, worker))
        data = b"Subject: held\r\n\r\n" + b"z" * 1000 + b"\r\n"
        m = self.spilled(data)
        d = spool.add(makeEntry(spool.newID("A1")), m)
        m.close()
        self.assertFalse(m.closed)
        worker.runAll()
        self.successResultOf(d)
        self.assertTrue(m.closed)
        with open(spool.dataPath("A1"), "rb") as f:
            self.assertEqual(f.read(), data)

    def test_releasedWhenCancelledOrFailed(self) -> None:
        """A message withdrawn before its commit, or whose commit failed, is released too."""
        worker = ManualWorker()
        spool = Spool(self.path, None, worker=worker)
        self.successResultOf(_started(spool, worker))
        spool.add(makeEntry(spool.newID("A1")), b"x\r\n")  # its commit runs first
        withdrawn = self.spilled(b"y" * 100)
        d = spool.add(makeEntry(spool.newID("B1")), withdrawn)
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        withdrawn.close()
        self.assertFalse(withdrawn.closed)
        worker.runNext()
        self.assertTrue(withdrawn.closed)
        failing = self.spilled(b"w" * 100)
        d = spool.add(makeEntry(spool.newID("C1")), failing)
        failing.close()

        def full(fd: int, data: Any) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        self.patch(os, "write", full)
        worker.runAll()
        self.failureResultOf(d, OSError)
        self.assertTrue(failing.closed)

    def test_closedMessage(self) -> None:
        """A message already closed cannot be added: the add fails, nothing is queued."""
        from mailframe.message import MessageClosed

        spool = self.makeSpool()
        m = self.spilled(b"v" * 100)
        m.close()
        self.failureResultOf(spool.add(makeEntry(spool.newID("A1")), m), MessageClosed)
        self.assertEqual(self.queued(), [])
        self.assertNotIn("A1", spool)

    def test_startFailure(self) -> None:
        """If the spool cannot start, what waits for it fails, and so does what comes later."""
        from mailframe.queue.spool import SpoolError

        with open(self.path, "w") as f:
            f.write("a file")
        worker = ManualWorker()
        spool = Spool(self.path, None, worker=worker)
        started = spool.start()
        m = self.spilled(b"u" * 100)
        early = spool.add(makeEntry(spool.newID("E1")), m)
        m.close()
        worker.runAll()
        self.failureResultOf(started, SpoolError)
        self.failureResultOf(early, SpoolError)
        self.assertTrue(m.closed)
        self.failureResultOf(spool.add(makeEntry(spool.newID("E2")), b"x\r\n"), SpoolError)
        self.assertNotIn("E1", spool)


class ThreadPoolTests(TestCase):
    """The spool's own thread pool, with the real reactor."""

    @defer.inlineCallbacks
    def test_realThreads(self) -> Any:
        """With no worker given, file work runs in the spool's own bounded pool, and stop ends it."""
        spool = Spool(self.mktemp(), reactor, threads=4)
        self.addCleanup(spool.stop)
        entries = yield spool.start()
        self.assertEqual(entries, [])
        self.assertNotIdentical(spool._pool, reactor.getThreadPool())
        self.assertEqual(spool._pool.max, 4)  # type: ignore[union-attr]
        yield defer.gatherResults(
            [spool.add(makeEntry(spool.newID(f"M{i}")), b"x\r\n" * i) for i in range(20)]
        )
        self.assertEqual(len(os.listdir(spool.queue)), 40)
        self.assertLessEqual(spool.batches, 20)
        spool.stop()
        self.assertFalse(spool._pool.started)  # type: ignore[union-attr]


class EarlyTests(SpoolCase):
    """Messages that arrive while the spool is still starting."""

    def test_waitForRecovery(self) -> None:
        """An add before recovery has cleaned tmp/ waits for it, then commits."""
        worker = ManualWorker()
        spool = Spool(self.path, None, worker=worker)
        started = spool.start()
        d = spool.add(makeEntry(spool.newID("E1")), b"x\r\n")
        self.assertEqual(len(worker.jobs), 1)  # only recovery
        worker.runAll()
        self.successResultOf(started)
        self.successResultOf(d)
        self.assertEqual(self.queued(), ["E1.json", "E1.msg"])


class FilePoolTests(SynchronousTestCase):
    def test_namesAfterRestartNeverCollide(self) -> None:
        """Loaded with gaps (F1 F2 F3 F6), the pool never makes a name it already has."""
        from mailframe.queue._files import FilePool

        directory = self.mktemp()
        os.makedirs(directory)
        for name in ("F1", "F2", "F3", "F6"):
            with open(os.path.join(directory, name), "w") as f:
                f.write(name)
        pool = FilePool(directory)
        pool.load()
        for i in range(4):
            path = os.path.join(directory, f"..new{i}")
            with open(path, "w") as f:
                f.write(f"new{i}")
            pool.give(path)
        names = sorted(os.listdir(directory))
        self.assertEqual(len(names), 8)
        self.assertEqual(len(pool), 8)
        taken = [pool.take() for _ in range(8)]
        self.assertEqual(len(set(taken)), 8)
        contents = set()
        for path in taken:
            assert path is not None
            with open(path) as f:
                contents.add(f.read())
        self.assertEqual(contents, {"F1", "F2", "F3", "F6", "new0", "new1", "new2", "new3"})
