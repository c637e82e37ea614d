"""Tests for mailframe.web.capture (the capture store) and capture mode's settings."""

from __future__ import annotations

from dataclasses import replace

from twisted.internet import defer
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from mailframe.address import Address, parseMailbox
from mailframe.envelope import DeliveryResult, Envelope, Recipient, SessionSnapshot
from mailframe.interfaces import IDeliveryBackend
from mailframe.web.capture import CaptureStore, Query
from tests.test_backends_maildir import (
    MESSAGE,
    SynchronousReactor,
    SynchronousThreadPool,
    makeMessage,
)


def envelope(
    sender: str = "a@example.com",
    *recipients: str,
    queueID: str = "Q1",
    user: str | None = None,
    listener: str = "smtp",
) -> Envelope:
    """An envelope with a session snapshot (C{user}: the AUTH user)."""
    return Envelope(
        queueID,
        parseMailbox(sender) if sender else Address.null(),
        recipients=[Recipient(parseMailbox(r)) for r in recipients or ("b@example.org",)],
        session=SessionSnapshot(peerHost="127.0.0.1", listener=listener, authenticated=user),
    )


def message(subject: str = "Hi", body: bytes = b"Hello\r\n") -> bytes:
    return b"From: a@example.com\r\nSubject: " + subject.encode() + b"\r\n\r\n" + body


class CaptureStoreTests(SynchronousTestCase):
    """The store keeps, groups, searches, drops the oldest and wakes waiters."""

    def setUp(self) -> None:
        self.now = 1000.0
        self.store = CaptureStore(SynchronousReactor(), limit=3, clock=lambda: self.now)

    def test_interface(self) -> None:
        """CaptureStore provides IDeliveryBackend."""
        self.assertTrue(verifyObject(IDeliveryBackend, self.store))

    def test_deliverInMemory(self) -> None:
        """A message in memory is kept at once, with its envelope and arrival time."""
        env = envelope()
        self.assertIsNone(self.store.deliver(env, makeMessage()))
        [captured] = self.store.search()
        self.assertEqual(captured.data, MESSAGE)
        self.assertIs(captured.envelope, env)
        self.assertEqual(captured.arrived, 1000.0)
        self.assertEqual(captured.id, "Q1")

    def test_deliverSpilled(self) -> None:
        """A message spilled to a file is read in the pool, held until the thread is done."""
        pool = SynchronousThreadPool()
        store = CaptureStore(SynchronousReactor(), pool=pool)
        body = b"Subject: big\r\n\r\n" + b"x" * 5000 + b"\r\n"
        msg = makeMessage(body, 1000)
        self.assertFalse(msg.inMemory)
        d = store.deliver(envelope(), msg)
        assert isinstance(d, defer.Deferred)
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(pool.calls, 1)
        self.assertEqual(store.search()[0].data, body)
        msg.close()
        self.assertTrue(msg.closed)

    def test_deliverClosed(self) -> None:
        """A message already closed is answered 451 for each recipient, nothing kept."""
        msg = makeMessage()
        msg.close()
        result = self.store.deliver(envelope("a@example.com", "b@x.org", "c@y.org"), msg)
        assert isinstance(result, DeliveryResult)
        self.assertEqual([r.code for r in result.replies], [451, 451])
        self.assertEqual(len(self.store), 0)

    def test_limit(self) -> None:
        """Beyond the limit, the oldest message is dropped."""
        for i in range(5):
            self.store.add(envelope(queueID=f"Q{i}"), message(f"n{i}"))
        self.assertEqual([m.id for m in self.store.search()], ["Q4", "Q3", "Q2"])

    def test_uniqueIDs(self) -> None:
        """Two messages with one queue ID get two IDs."""
        a = self.store.add(envelope(), message())
        b = self.store.add(envelope(), message())
        self.assertNotEqual(a.id, b.id)
        self.assertIs(self.store.get(b.id), b)

    def test_mailboxByAuth(self) -> None:
        """By default the mailbox is the AUTH user, else the first recipient's domain."""
        self.assertEqual(self.store.add(envelope(user="alice"), message()).mailbox, "alice")
        self.assertEqual(
            self.store.add(envelope("", "x@Tenant.Example"), message()).mailbox, "tenant.example"
        )

    def test_mailboxNotMailAuth(self) -> None:
        """MAIL's AUTH= identity (a client's claim) does not choose the mailbox."""
        env = replace(envelope("", "x@one.example"), authIdentity="someone@else.example")
        self.assertEqual(self.store.add(env, message()).mailbox, "one.example")

    def test_mailboxByDomainAndListener(self) -> None:
        """capture-mailbox domain and listener group by those."""
        byDomain = CaptureStore(SynchronousReactor(), mailbox="domain")
        env = envelope("", "x@one.example", user="alice")
        self.assertEqual(byDomain.add(env, message()).mailbox, "one.example")
        byListener = CaptureStore(SynchronousReactor(), mailbox="listener")
        env = envelope(listener="submission")
        self.assertEqual(byListener.add(env, message()).mailbox, "submission")
        self.assertEqual(byListener.mailboxes(), {"submission": 1})

    def test_badSettings(self) -> None:
        """An unknown mailbox mode or a limit below 1 is refused."""
        self.assertRaises(ValueError, CaptureStore, None, mailbox="project")
        self.assertRaises(ValueError, CaptureStore, None, limit=0)

    def test_search(self) -> None:
        """Words are searched in sender, recipients and subject; field: narrows it."""
        self.store.add(envelope("ann@a.example", "bob@b.example", queueID="A"), message("Invoice"))
        self.store.add(envelope("cat@c.example", "dan@d.example", queueID="B"), message("Reset"))

        def ids(text: str, mailbox: str | None = None) -> list[str]:
            return [m.id for m in self.store.search(Query(text, mailbox))]

        self.assertEqual(ids(""), ["B", "A"])
        self.assertEqual(ids("invoice"), ["A"])
        self.assertEqual(ids("DAN@"), ["B"])
        self.assertEqual(ids("from:ann to:bob"), ["A"])
        self.assertEqual(ids("to:ann"), [])
        self.assertEqual(ids("subject:reset"), ["B"])
        self.assertEqual(ids("", "b.example"), ["A"])

    def test_deleteAndClear(self) -> None:
        """Messages are deleted one by one, by mailbox, or all."""
        self.store.add(envelope("", "x@one.example", queueID="A"), message())
        self.store.add(envelope("", "x@two.example", queueID="B"), message())
        self.store.add(envelope("", "x@two.example", queueID="C"), message())
        self.assertTrue(self.store.delete("A"))
        self.assertFalse(self.store.delete("A"))
        self.assertEqual(self.store.clear("two.example"), 2)
        self.assertEqual(len(self.store), 0)

    def test_waitAlreadyThere(self) -> None:
        """wait fires at once with the newest matching message."""
        self.store.add(envelope(queueID="A"), message("first"))
        self.assertEqual(self.successResultOf(self.store.wait(Query("first"))).id, "A")

    def test_waitArrives(self) -> None:
        """wait fires when a matching message arrives, not before."""
        d = self.store.wait(Query("wanted"))
        self.store.add(envelope(queueID="A"), message("other"))
        self.assertNoResult(d)
        self.store.add(envelope(queueID="B"), message("wanted"))
        self.assertEqual(self.successResultOf(d).id, "B")
        self.assertEqual(self.store.waiting, 0)

    def test_waitCancelled(self) -> None:
        """A cancelled wait is forgotten."""
        d = self.store.wait(Query("x"))
        self.assertEqual(self.store.waiting, 1)
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(self.store.waiting, 0)


class CaptureSettingsTests(SynchronousTestCase):
    """--capture and --web on the command line."""

    def parse(self, *args: str) -> object:
        from mailframe.app.tap import Options

        options = Options()
        options.parseOptions(list(args))
        return options

    def test_capture(self) -> None:
        """--capture opens relaying to every client and delivers to the store, no queue."""
        options = self.parse("--capture", "--capture-limit", "5", "--capture-mailbox", "domain")
        self.assertEqual(
            options.capture,  # type: ignore[attr-defined]
            {
                "capture-limit": 5,
                "capture-mailbox": "domain",
                "capture-store": "memory",
                "capture-max-bytes": 256 << 20,
            },
        )
        self.assertIsNone(options.queue)  # type: ignore[attr-defined]
        [spec] = options.listeners  # type: ignore[attr-defined]
        self.assertEqual(spec.deliver, "capture")
        self.assertTrue(spec.config.mayRelay("192.0.2.1"))
        self.assertEqual(spec.config.greetDelay, 0.0)  # no pregreet wait for a developer
        self.assertTrue(spec.config.mayRelay("2001:db8::1"))

    def test_notCapturing(self) -> None:
        """Without --capture nothing changes."""
        options = self.parse()
        self.assertIsNone(options.capture)  # type: ignore[attr-defined]
        self.assertFalse(options.listeners[0].config.mayRelay("192.0.2.1"))  # type: ignore[attr-defined]

    def test_captureWithQueue(self) -> None:
        """--capture with a spool or a relay host is a usage error."""
        e = self.assertRaises(usage.UsageError, self.parse, "--capture", "--relay-host", "x.test")
        self.assertIn("capture never relays", str(e))

    def test_captureWithWorkers(self) -> None:
        """--capture with several workers is a usage error (one store, one process)."""
        e = self.assertRaises(usage.UsageError, self.parse, "--capture", "--workers", "2")
        self.assertIn("one process", str(e))

    def test_webWithoutCapture(self) -> None:
        """--web works without --capture: the console then has no captured mail."""
        options = self.parse("--web", "tcp:8025:interface=127.0.0.1")
        self.assertIsNone(options.capture)  # type: ignore[attr-defined]
        self.assertEqual(options.web["web"], "tcp:8025:interface=127.0.0.1")  # type: ignore[attr-defined]

    def test_webLoopbackOnly(self) -> None:
        """Without web-auth, --web refuses a non-loopback interface; always the mail ports."""
        for bad in ("tcp:8025", "tcp:8025:interface=0.0.0.0", "tcp:25:interface=127.0.0.1",
                    "tcp:587:interface=127.0.0.1", "ssl:8025", "tcp:x"):  # fmt: skip
            e = self.assertRaises(usage.UsageError, self.parse, "--capture", "--web", bad)
            self.assertIn("--web", str(e))
        for good in ("tcp:8025:interface=127.0.0.1", "tcp6:8025:interface=\\:\\:1",
                     "unix:/tmp/api.sock", "tcp:port=8025:interface=localhost"):  # fmt: skip
            options = self.parse("--capture", "--web", good)
            self.assertEqual(options.web["web"], good)  # type: ignore[attr-defined]

    def test_webAuthAnyEndpoint(self) -> None:
        """With --web-auth any endpoint is accepted, but never a mail port."""
        for good in ("tcp:8025", "ssl:8443:privateKey=k.pem", "tcp:8025:interface=0.0.0.0"):
            options = self.parse("--web", good, "--web-auth", "memory:admin:secret")
            web = options.web  # type: ignore[attr-defined]
            self.assertEqual((web["web"], web["web-auth"]), (good, ("memory:admin:secret",)))
        for bad in ("tcp:25", "ssl:465", "tcp:587:interface=0.0.0.0"):
            e = self.assertRaises(
                usage.UsageError, self.parse, "--web", bad, "--web-auth", "memory:a:b"
            )
            self.assertIn("mail port", str(e))
        e = self.assertRaises(
            usage.UsageError, self.parse, "--web", "tcp:8025", "--web-auth", "nosuch:x"
        )
        self.assertIn("unknown auth type", str(e))

    def test_webWithWorkers(self) -> None:
        """The console shows one process: --web with several workers is a usage error."""
        e = self.assertRaises(
            usage.UsageError, self.parse, "--web", "unix:/tmp/w.sock", "--workers", "2"
        )
        self.assertIn("one process", str(e))

    def test_makeService(self) -> None:
        """makeService says capture mode in one line and serves the API."""
        from mailframe.app.tap import makeService

        options = self.parse(
            "--capture",
            "--web",
            "tcp:0:interface=127.0.0.1",
            "--listen",
            "tcp:0:interface=127.0.0.1",
        )
        service = makeService(options)  # type: ignore[arg-type]
        capture = [a for a in service.announcements if "CAPTURE MODE" in a]
        self.assertEqual(len(capture), 1)
        self.assertIn("nothing is relayed", capture[0])
        self.assertIn("tcp:0:interface=127.0.0.1", service.endpoints.values())
        [factory] = service.factories
        self.assertIsInstance(factory.context.backend, CaptureStore)
