"""
Tests for mailframe.web.capturedb (capture mode's SQLite file), the store
kept in it, the bytes cap of the store (capture-max-bytes) and the wiring of
capture-store and capture-max-bytes in twistd.
"""

from __future__ import annotations

import os
import sqlite3
from typing import Any

from twisted.internet import defer
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from mailframe.address import Address, Domain, parseMailbox
from mailframe.envelope import DeliveryResult, Envelope, Recipient, SessionSnapshot, TLSInfo
from mailframe.web.api import describe, summary
from mailframe.web.capture import CaptureStore, Query
from mailframe.web.capturedb import (
    SCHEMA_VERSION,
    CaptureDatabase,
    CaptureDatabaseError,
    envelopeFromJSON,
    envelopeToJSON,
    parseStore,
)
from tests.test_backends_maildir import SynchronousReactor, SynchronousThreadPool, makeMessage
from tests.test_capture import envelope, message


def richEnvelope(queueID: str = "R1") -> Envelope:
    """An envelope with every fact the API shows: parameters, TLS, a login, a reverse name."""
    return Envelope(
        queueID,
        parseMailbox("ännä@exämple.com"),
        {"SIZE": "1234", "BODY": "8BITMIME", "SMTPUTF8": None},
        [
            Recipient(parseMailbox("bob@b.example"), {"NOTIFY": "SUCCESS,FAILURE"}),
            Recipient(parseMailbox('"odd local"@[192.0.2.1]'), {"ORCPT": "rfc822;x@y.example"}),
            Recipient(Address("Postmaster", None)),
            Recipient(
                parseMailbox("carol@c.example"),
                original=parseMailbox("carol+tag@c.example"),
                detail="tag",
            ),
        ],
        session=SessionSnapshot(
            sessionID="S1",
            peerHost="2001:db8::7",
            peerPort=40123,
            localHost="::1",
            localPort=2525,
            hostname="mx.test",
            listener="submission",
            heloName="client.example",
            protocol="ESMTPSA",
            tls=TLSInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384", 256),
            authenticated="alice",
            authMechanism="PLAIN",
            peerName="client.example",
        ),
        authIdentity="<alice@a.example>",
    )


RICH = (
    b"From: =?utf-8?q?Ann=C3=A4?= <a@example.com>\r\n"
    b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="b"\r\n'
    b"\r\n"
    b"--b\r\nContent-Type: text/plain\r\n\r\nHello\r\n"
    b"--b\r\nContent-Type: text/html\r\n\r\n<p>Hello</p>\r\n"
    b'--b\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename="x.bin"\r\n\r\nAAAA\r\n'
    b"--b--\r\n"
)


class CountingDatabase(CaptureDatabase):
    """A CaptureDatabase that counts the messages whose bytes it reads."""

    reads = 0

    def read(self, ident: str) -> bytes | None:
        self.reads += 1
        return super().read(ident)


class _Base(SynchronousTestCase):
    def setUp(self) -> None:
        self.path = os.path.abspath(self.mktemp())
        self.now = 1000.0
        self.databases: list[CaptureDatabase] = []

    def tearDown(self) -> None:
        for database in self.databases:
            database.close()

    def database(self, cls: type[CaptureDatabase] = CaptureDatabase, **kw: Any) -> Any:
        database = cls(self.path, **kw)
        self.databases.append(database)
        return database

    def store(self, limit: int = 1000, maxBytes: int = 256 << 20, **kw: Any) -> CaptureStore:
        """A store on the file (a restart: a new connection, a new store)."""
        return CaptureStore(
            SynchronousReactor(),
            limit=limit,
            maxBytes=maxBytes,
            clock=lambda: self.now,
            database=self.database(**kw),
        )

    def pragma(self, name: str) -> Any:
        with sqlite3.connect(self.path) as db:
            return db.execute(f"PRAGMA {name}").fetchone()[0]


class ParseStoreTests(SynchronousTestCase):
    """The values of capture-store."""

    def test_values(self) -> None:
        """memory is None, sqlite:PATH the path; anything else one line."""
        self.assertIsNone(parseStore("memory"))
        self.assertEqual(parseStore("sqlite:/tmp/c.db"), "/tmp/c.db")
        self.assertEqual(parseStore("sqlite:C:/x:y.db"), "C:/x:y.db")
        for bad in ("", "nonsense", "sqlite:", "sqlite: ", "memory:x", "postgresql://x"):
            e = self.assertRaises(ValueError, parseStore, bad)
            self.assertIn("memory or sqlite:PATH", str(e))


class EnvelopeJSONTests(SynchronousTestCase):
    """The envelope as JSON and back."""

    def test_roundTrip(self) -> None:
        """Every field the API shows, and the session's facts, come back the same."""
        env = richEnvelope()
        back = envelopeFromJSON(envelopeToJSON(env))
        self.assertEqual(back.queueID, env.queueID)
        self.assertEqual(back.mailFrom, env.mailFrom)
        self.assertEqual(dict(back.mailParams), dict(env.mailParams))
        self.assertEqual(back.recipients, env.recipients)
        self.assertEqual(back.session, env.session)
        self.assertEqual(back.authIdentity, env.authIdentity)

    def test_null(self) -> None:
        """The null sender and an envelope without a session."""
        env = Envelope("N", Address.null(), recipients=[Recipient(parseMailbox("a@b.example"))])
        back = envelopeFromJSON(envelopeToJSON(env))
        self.assertTrue(back.mailFrom.isNull)
        self.assertIsNone(back.session)
        self.assertEqual(back.recipients[0].address.domain, Domain("b.example"))


class DatabaseTests(_Base):
    """The file: made with its schema, refused when it is not ours."""

    def test_new(self) -> None:
        """A new file is made in WAL mode with the schema's version."""
        database = self.database()
        self.assertEqual(database.count(), 0)
        self.assertEqual(self.pragma("user_version"), SCHEMA_VERSION)
        self.assertEqual(self.pragma("journal_mode"), "wal")

    def test_notADatabase(self) -> None:
        """A file that is not a database is refused, in one line naming it."""
        with open(self.path, "wb") as f:
            f.write(b"not a database\n" * 100)
        e = self.assertRaises(CaptureDatabaseError, CaptureDatabase, self.path)
        self.assertIn(self.path, str(e))
        self.assertIn("not a database", str(e))
        self.assertNotIn("\n", str(e))

    def test_unknownVersion(self) -> None:
        """A file of another schema version is refused, and left as it was."""
        self.database().close()
        with sqlite3.connect(self.path) as db:
            db.execute("PRAGMA user_version = 99")
        e = self.assertRaises(CaptureDatabaseError, CaptureDatabase, self.path)
        self.assertIn(self.path, str(e))
        self.assertIn("schema version 99", str(e))
        self.assertEqual(self.pragma("user_version"), 99)

    def test_otherTables(self) -> None:
        """Another program's database (no version, tables of its own) is refused."""
        with sqlite3.connect(self.path) as db:
            db.execute("CREATE TABLE accounts (name TEXT)")
        e = self.assertRaises(CaptureDatabaseError, CaptureDatabase, self.path)
        self.assertIn("not a capture database", str(e))
        self.assertEqual(self.pragma("journal_mode"), "delete")

    def test_readOnly(self) -> None:
        """A file that cannot be written is refused at start."""
        self.database().close()
        e = self.assertRaises(
            CaptureDatabaseError,
            CaptureDatabase,
            self.path,
            connect=lambda path, **kw: sqlite3.connect(f"file:{path}?mode=ro", uri=True, **kw),
        )
        self.assertIn("readonly", str(e))

    def test_badRow(self) -> None:
        """A row whose envelope is not JSON is refused when the store loads it."""
        store = self.store()
        store.add(envelope(queueID="A"), message())
        with sqlite3.connect(self.path) as db:
            db.execute("UPDATE messages SET envelope = '{'")
        e = self.assertRaises(CaptureDatabaseError, self.store)
        self.assertIn("message 'A'", str(e))


class PersistentStoreTests(_Base):
    """A store with a file: what was captured is there after a restart."""

    def test_roundTrip(self) -> None:
        """The messages, their envelopes and sessions are the same after a restart."""
        first = self.store()
        rich = first.add(richEnvelope("R1"), RICH)
        self.now = 1001.5
        first.add(envelope("", "x@two.example", queueID="B", user=None), message("Second"))
        before = {m.id: describe(m) for m in first.search()}
        self.assertEqual(before["R1"]["session"]["tls"]["version"], "TLSv1.3")
        self.assertEqual(rich.mailbox, "alice")

        again = self.store()
        self.assertEqual(len(again), 2)
        self.assertEqual([m.id for m in again.search()], ["B", "R1"])
        self.assertEqual({m.id: describe(m) for m in again.search()}, before)
        self.assertEqual(again.get("R1").data, RICH)  # type: ignore[union-attr]
        self.assertEqual(again.get("R1").subject, "Grüße")  # type: ignore[union-attr]
        self.assertEqual(again.mailboxes(), {"alice": 1, "two.example": 1})
        self.assertEqual([m.id for m in again.search(Query("subject:grüße"))], ["R1"])
        self.assertEqual([m.id for m in again.search(Query("", "two.example"))], ["B"])
        self.assertEqual(again.totalBytes, len(RICH) + len(message("Second")))

    def test_newIDsAfterRestart(self) -> None:
        """A queue ID already in the file gets a new ID after a restart too."""
        self.store().add(envelope(queueID="Q"), message())
        self.store().add(envelope(queueID="Q"), message())
        ids = {m.id for m in self.store().search()}
        self.assertEqual(len(ids), 2)
        self.assertIn("Q", ids)

    def test_deleteAndClear(self) -> None:
        """Deleting and clearing delete the rows."""
        store = self.store()
        store.add(envelope("", "x@one.example", queueID="A"), message())
        store.add(envelope("", "x@two.example", queueID="B"), message())
        store.add(envelope("", "x@two.example", queueID="C"), message())
        store.add(envelope("", "x@three.example", queueID="D"), message())
        self.assertTrue(store.delete("A"))
        self.assertEqual([m.id for m in self.store().search()], ["D", "C", "B"])
        self.assertEqual(store.clear("two.example"), 2)
        self.assertEqual([m.id for m in self.store().search()], ["D"])
        self.assertEqual(store.clear(), 1)
        self.assertEqual(len(self.store()), 0)
        self.assertEqual(store.database.count(), 0)  # type: ignore[union-attr]
        self.assertEqual((store.totalBytes, store.bytesInMemory), (0, 0))

    def test_deletedIsGone(self) -> None:
        """A message deleted, its bytes not in memory, cannot be read any more."""
        self.store().add(envelope(queueID="A"), message())
        store = self.store()
        captured = store.get("A")
        assert captured is not None
        store.delete("A")
        self.assertRaises(LookupError, lambda: captured.data)

    def test_limit(self) -> None:
        """Beyond capture-limit the oldest row is deleted; a lower limit at start deletes more."""
        store = self.store(limit=3)
        for i in range(5):
            store.add(envelope(queueID=f"Q{i}"), message(f"n{i}"))
        self.assertEqual([m.id for m in store.search()], ["Q4", "Q3", "Q2"])
        self.assertEqual(store.database.count(), 3)  # type: ignore[union-attr]
        smaller = self.store(limit=2)
        self.assertEqual([m.id for m in smaller.search()], ["Q4", "Q3"])
        self.assertEqual(smaller.database.count(), 2)  # type: ignore[union-attr]

    def test_lazy(self) -> None:
        """After a restart the bytes are read only when a message is, and once."""
        first = self.store()
        for i in range(3):
            first.add(envelope(queueID=f"Q{i}"), message(f"subject {i}", b"x" * 100))
        store = self.store(cls=CountingDatabase)
        database = store.database
        assert isinstance(database, CountingDatabase)
        self.assertEqual(store.bytesInMemory, 0)
        self.assertFalse(any(m.inMemory for m in store.search()))
        found = store.search(Query("subject:1"))
        self.assertEqual([summary(m)["size"] for m in found], [len(message("", b"x" * 100)) + 9])
        self.assertEqual(database.reads, 0)  # searched and listed without the bytes
        [captured] = found
        self.assertIn(b"x" * 100, captured.data)
        self.assertEqual(captured.parsed["subject"], "subject 1")
        describe(captured)
        self.assertEqual(database.reads, 1)
        self.assertTrue(captured.inMemory)
        self.assertEqual(store.bytesInMemory, captured.size)

    def test_memoryCap(self) -> None:
        """With a file, capture-max-bytes bounds the bytes in memory, not the messages kept."""
        body = b"y" * 1000
        size = len(message("s", body))
        store = self.store(maxBytes=2 * size, cls=CountingDatabase)
        for i in range(4):
            store.add(envelope(queueID=f"Q{i}"), message("s", body))
        self.assertEqual(len(store), 4)
        self.assertEqual(store.bytesInMemory, 2 * size)
        self.assertEqual([m.inMemory for m in store.search()], [True, True, False, False])
        oldest = store.get("Q0")
        assert oldest is not None
        self.assertEqual(oldest.data, message("s", body))  # read again, the oldest used out
        self.assertEqual([m.inMemory for m in store.search()], [True, False, False, True])
        self.assertEqual(store.bytesInMemory, 2 * size)
        self.assertEqual(store.database.reads, 1)  # type: ignore[union-attr]

    def test_waitAfterRestart(self) -> None:
        """wait finds a message captured before the restart."""
        self.store().add(envelope(queueID="A"), message("wanted"))
        self.assertEqual(self.successResultOf(self.store().wait(Query("wanted"))).id, "A")

    def test_deliverSpilled(self) -> None:
        """A spilled message, read in the pool, is kept in the file."""
        store = CaptureStore(SynchronousReactor(), pool=SynchronousThreadPool(),
                             database=self.database())  # fmt: skip
        body = b"Subject: big\r\n\r\n" + b"x" * 5000 + b"\r\n"
        d = store.deliver(envelope(), makeMessage(body, 1000))
        assert isinstance(d, defer.Deferred)
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.store().search()[0].data, body)


class WriteFailureTests(_Base):
    """A message the file cannot take is answered 451, and the store is unchanged."""

    def locked(self) -> CaptureStore:
        """A store whose file another connection holds the write lock of."""
        store = self.store(timeout=0)
        store.add(envelope(queueID="A"), message())
        other = sqlite3.connect(self.path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        self.addCleanup(other.close)
        self.addCleanup(other.execute, "ROLLBACK")
        return store

    def test_locked(self) -> None:
        """Locked by another process: 451 for every recipient, no waiter woken."""
        store = self.locked()
        d = store.wait(Query("later"))
        result = store.deliver(
            envelope("a@example.com", "b@x.org", "c@y.org", queueID="B"),
            makeMessage(message("later")),
        )
        assert isinstance(result, DeliveryResult)
        self.assertEqual([(r.code, r.enhanced) for r in result.replies], [(451, (4, 3, 0))] * 2)
        self.assertEqual([m.id for m in store.search()], ["A"])
        self.assertNoResult(d)
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)

    def test_dropFailsToo(self) -> None:
        """Past the limit, a failed write drops nothing (one transaction)."""
        store = self.store(limit=1, timeout=0)
        store.add(envelope(queueID="A"), message())
        other = sqlite3.connect(self.path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        self.assertRaises(CaptureDatabaseError, store.add, envelope(queueID="B"), message())
        other.execute("ROLLBACK")
        other.close()
        self.assertEqual([m.id for m in store.search()], ["A"])
        self.assertEqual([m.id for m in self.store().search()], ["A"])

    def test_closed(self) -> None:
        """A connection that fails (closed here): 451, for a message in memory or spilled."""
        store = CaptureStore(SynchronousReactor(), pool=SynchronousThreadPool(),
                             database=self.database())  # fmt: skip
        store.database.close()  # type: ignore[union-attr]
        result = store.deliver(envelope(), makeMessage())
        assert isinstance(result, DeliveryResult)
        self.assertEqual([r.code for r in result.replies], [451])
        d = store.deliver(envelope(), makeMessage(b"Subject: x\r\n\r\n" + b"x" * 5000, 1000))
        assert isinstance(d, defer.Deferred)
        spilled = self.successResultOf(d)
        assert isinstance(spilled, DeliveryResult)
        self.assertEqual([r.code for r in spilled.replies], [451])
        self.assertEqual(len(store), 0)
        self.databases.clear()

    def test_deleteFails(self) -> None:
        """A delete the file refuses is an error, and the message is kept."""
        store = self.locked()
        self.assertRaises(CaptureDatabaseError, store.delete, "A")
        self.assertRaises(CaptureDatabaseError, store.clear)
        self.assertEqual([m.id for m in store.search()], ["A"])


class BytesCapTests(SynchronousTestCase):
    """capture-max-bytes in memory: the oldest are dropped while the octets exceed it."""

    def test_dropsOldest(self) -> None:
        """Beyond the octets, the oldest messages go, whatever the count."""
        size = len(message("n0", b"z" * 100))
        store = CaptureStore(SynchronousReactor(), limit=100, maxBytes=2 * size + 10)
        for i in range(4):
            store.add(envelope(queueID=f"Q{i}"), message(f"n{i}", b"z" * 100))
        self.assertEqual([m.id for m in store.search()], ["Q3", "Q2"])
        self.assertEqual(store.totalBytes, 2 * size)
        self.assertEqual(store.bytesInMemory, 2 * size)
        store.delete("Q3")
        self.assertEqual(store.totalBytes, size)

    def test_newestKept(self) -> None:
        """A message larger than the cap is kept alone."""
        store = CaptureStore(SynchronousReactor(), maxBytes=50)
        store.add(envelope(queueID="A"), message())
        store.add(envelope(queueID="B"), message("big", b"b" * 100))
        self.assertEqual([m.id for m in store.search()], ["B"])

    def test_noLimit(self) -> None:
        """0 is no limit of octets; a negative cap is refused."""
        store = CaptureStore(SynchronousReactor(), maxBytes=0)
        for i in range(3):
            store.add(envelope(queueID=f"Q{i}"), message("s", b"w" * 1000))
        self.assertEqual(len(store), 3)
        self.assertRaises(ValueError, CaptureStore, None, maxBytes=-1)


class TwistdTests(SynchronousTestCase):
    """--capture-store and --capture-max-bytes in twistd mailframe."""

    def parse(self, *args: str) -> Any:
        from mailframe.app.tap import Options

        options = Options()
        options.parseOptions(list(args))
        return options

    def service(self, *args: str) -> Any:
        from mailframe.app.tap import makeService

        return makeService(self.parse("--capture", "--listen", "tcp:0:interface=127.0.0.1", *args))

    def test_defaults(self) -> None:
        """Without them: memory, 256 MiB."""
        options = self.parse("--capture")
        self.assertEqual(options.capture["capture-store"], "memory")
        self.assertEqual(options.capture["capture-max-bytes"], 256 << 20)
        service = self.service()
        [factory] = service.factories
        store = factory.context.backend
        self.assertIsNone(store.database)
        self.assertEqual(store.maxBytes, 256 << 20)
        [line] = [a for a in service.announcements if "CAPTURE MODE" in a]
        self.assertIn("in memory (at most 1000 messages and 256M octets", line)

    def test_sqlite(self) -> None:
        """--capture-store sqlite:FILE builds a store in that file; --capture-max-bytes 1M."""
        path = os.path.abspath(self.mktemp())
        service = self.service("--capture-store", f"sqlite:{path}", "--capture-max-bytes", "1M")
        [factory] = service.factories
        store = factory.context.backend
        self.addCleanup(store.database.close)
        self.assertIsInstance(store, CaptureStore)
        self.assertEqual(store.database.path, path)
        self.assertEqual(store.maxBytes, 1 << 20)
        [line] = [a for a in service.announcements if "CAPTURE MODE" in a]
        self.assertIn(f"kept in {path} (0 from before", line)
        self.assertIn("1M octets in memory", line)
        self.assertTrue(os.path.exists(path))

    def test_sqliteClosedOnStop(self) -> None:
        """The file is closed when the service stops."""
        from mailframe.app.capturemode import ClosedOnStop

        path = os.path.abspath(self.mktemp())
        service = self.service("--capture-store", f"sqlite:{path}")
        [closer] = [s for s in service if isinstance(s, ClosedOnStop)]
        closer.startService()
        closer.stopService()
        store = service.factories[0].context.backend
        self.assertRaises(CaptureDatabaseError, store.database.count)

    def test_badFile(self) -> None:
        """A file that is not a capture database stops the start, in one line naming it."""
        path = os.path.abspath(self.mktemp())
        with open(path, "wb") as f:
            f.write(b"garbage" * 200)
        e = self.assertRaises(SystemExit, self.service, "--capture-store", f"sqlite:{path}")
        self.assertIn(path, str(e))
        self.assertTrue(str(e).startswith("mailframe: capture-store "))
        self.assertNotIn("\n", str(e))

    def test_nonsense(self) -> None:
        """--capture-store nonsense, or a bad size, is a usage error."""
        e = self.assertRaises(
            usage.UsageError, self.parse, "--capture", "--capture-store", "nonsense"
        )
        self.assertIn("capture-store", str(e))
        self.assertIn("memory or sqlite:PATH", str(e))
        e = self.assertRaises(
            usage.UsageError, self.parse, "--capture", "--capture-max-bytes", "lots"
        )
        self.assertIn("capture-max-bytes", str(e))
