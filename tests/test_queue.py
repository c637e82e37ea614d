"""
Tests for L{mailframe.queue.runner} and L{mailframe.queue.backend}: the
queue runner with a C{task.Clock}, a synchronous spool and a fake IRelay
(retry schedule, give-up and 5xx reports, local and relayed recipients,
limits, restart; hold, release, delete and flush), and the spool backend
behind the real server in memory.
"""

from __future__ import annotations

import email
import email.message
import errno
import os
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, task
from twisted.internet.testing import StringTransport
from twisted.logger import LogEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from mailframe.address import Address, parseMailbox
from mailframe.backends.memory import MemoryBackend
from mailframe.config import ServerConfig
from mailframe.envelope import DeliveryResult, Envelope, Recipient, SessionInfo
from mailframe.extensions import defaultExtensions
from mailframe.extensions.dsn import DSN
from mailframe.interfaces import IDeliveryBackend, IMessageFilter, IRelay
from mailframe.message import Message
from mailframe.queue import (
    LOCAL,
    QueueRunner,
    QueueService,
    ReportSettings,
    RetryPolicy,
    Spool,
    SpoolBackend,
    defaultRouteKey,
)
from mailframe.queue.entry import PENDING, QueueEntry
from mailframe.queue.runner import UnknownEntry
from mailframe.reply import Reply
from mailframe.server import SMTPServerFactory
from mailframe.validators.basic import AnyRecipient
from tests.test_spool import ManualWorker, syncWorker

OK = Reply(250, (2, 0, 0), "Queued as X")
LATER = Reply(451, (4, 4, 1), "Try again later")
NO_USER = Reply(550, (5, 1, 1), "User unknown")


@implementer(IRelay)
class FakeRelay:
    """Answers each recipient from C{answer(address)}; or holds the Deferred when C{hold}."""

    def __init__(self, answer: Callable[[str], Reply] = lambda a: OK) -> None:
        self.answer = answer
        self.calls: list[tuple[Envelope, list[str], bytes]] = []
        self.hold = False
        self.held: list[tuple[defer.Deferred[DeliveryResult], list[Recipient]]] = []

    def relay(self, envelope: Envelope, recipients: Any, message: Message) -> Any:
        rcpts = list(recipients)
        self.calls.append((envelope, [str(r.address) for r in rcpts], message.getvalue()))
        if self.hold:
            d: defer.Deferred[DeliveryResult] = defer.Deferred()
            self.held.append((d, rcpts))
            return d
        replies = tuple(self.answer(str(r.address)) for r in rcpts)
        return defer.succeed(
            DeliveryResult(replies, tuple("mx.remote [192.0.2.7]" for _ in rcpts))
        )

    def release(self, reply: Reply = OK) -> None:
        d, rcpts = self.held.pop(0)
        d.callback(DeliveryResult(tuple(reply for _ in rcpts)))


def envelope(sender: str, *recipients: str, **params: str) -> Envelope:
    mailFrom = parseMailbox(sender) if sender else Address.null()
    rcpts = []
    for r in recipients:
        address, _, notify = r.partition(" ")
        rcpts.append(Recipient(parseMailbox(address), {"NOTIFY": notify} if notify else {}))
    return Envelope("Q1", mailFrom, dict(params), rcpts)


def message(body: bytes = b"Subject: test\r\n\r\nHello\r\n") -> Message:
    m = Message()
    m.write(body)
    m.finish()
    return m


class QueueCase(SynchronousTestCase):
    retry = RetryPolicy(initial=300, maximum=3600, giveUp=5 * 86400)

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(1_000_000)
        self.path = self.mktemp()
        self.local = MemoryBackend()
        self.relay = FakeRelay()
        self.logged: list[LogEvent] = []
        globalLogPublisher.addObserver(self.logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.logged.append)
        self.start()

    def start(self, **kwargs: Any) -> None:
        worker = kwargs.pop("worker", syncWorker)
        self.spool = Spool(self.path, None, worker=worker)
        self.runner = QueueRunner(
            self.clock,
            self.spool,
            kwargs.pop("local", self.local),
            kwargs.pop("relay", self.relay),
            defaultRouteKey(lambda d: d.key in ("example.com", "mx.test")),
            ReportSettings("mx.test"),
            retry=kwargs.pop("retry", self.retry),
            **kwargs,
        )
        self.backend = SpoolBackend(self.spool, self.clock)
        d = self.runner.start()
        if isinstance(worker, ManualWorker):
            worker.runAll()
        self.successResultOf(d)

    def send(self, env: Envelope, body: bytes = b"Subject: test\r\n\r\nHello\r\n") -> str:
        """Queue a message through the backend; the ID it is stored under."""
        result = self.successResultOf(self.backend.deliver(env, message(body)))
        entryID = env.queueID
        if result is not None:  # stored under another ID, which the 250 names
            self.assertTrue(result.delivered)
            self.assertIsNotNone(result.queueID)
            entryID = result.queueID
        self.assertIn(entryID, self.spool)
        self.clock.advance(0)
        return entryID

    def queued(self) -> list[str]:
        return sorted(os.listdir(os.path.join(self.path, "queue")))

    def reports(self) -> list[email.message.Message]:
        """The reports the local backend got (the senders here are local)."""
        return [
            email.message_from_bytes(m.data)
            for m in self.local.messages
            if m.envelope.mailFrom.isNull
        ]

    def lines(self, text: str) -> list[str]:
        return [
            str(e.get("line") or e.get("log_format"))
            for e in self.logged
            if text in str(e.get("line") or e.get("log_format"))
        ]


class InterfaceTests(QueueCase):
    def test_providers(self) -> None:
        """SpoolBackend is an IDeliveryBackend (only); the fake relay an IRelay."""
        self.assertTrue(verifyObject(IDeliveryBackend, self.backend))
        self.assertFalse(IMessageFilter.providedBy(self.backend))
        self.assertTrue(verifyObject(IRelay, self.relay))

    def test_refusesNonProviders(self) -> None:
        """The runner checks its backend and relay."""
        self.assertRaises(
            TypeError,
            QueueRunner,
            self.clock,
            self.spool,
            object(),
            None,
            lambda a: LOCAL,
            ReportSettings("x"),
        )
        self.assertRaises(
            TypeError,
            QueueRunner,
            self.clock,
            self.spool,
            self.local,
            object(),
            lambda a: LOCAL,
            ReportSettings("x"),
        )

    def test_refusesIncompleteProviders(self) -> None:
        """A backend or relay that declares its interface but lacks a method: one-line TypeError."""

        @implementer(IDeliveryBackend)
        class NoDeliver:
            pass

        @implementer(IRelay)
        class WrongRelay:
            def relay(self, envelope: Envelope) -> None:
                pass

        def runner(local: Any, relay: Any) -> QueueRunner:
            return QueueRunner(
                self.clock, self.spool, local, relay, lambda a: LOCAL, ReportSettings("x")
            )

        for local, relay, words in [
            (NoDeliver(), None, "delivery backend"),
            ({"smtp": self.local, "other": NoDeliver()}, None, "delivery backend"),
            (self.local, WrongRelay(), "relay"),
        ]:
            e = self.assertRaises(TypeError, runner, local, relay)
            self.assertTrue(str(e).startswith(words + " <"), str(e))
            self.assertIn("does not implement", str(e))
            self.assertNotIn("\n", str(e))

    def test_retryPolicy(self) -> None:
        """Back-off doubles from initial up to maximum; bad settings are refused."""
        policy = RetryPolicy(initial=300, maximum=3600)
        self.assertEqual(
            [policy.delayAfter(n) for n in range(1, 7)], [300, 600, 1200, 2400, 3600, 3600]
        )
        self.assertEqual(policy.delayAfter(10_000), 3600)
        self.assertRaises(ValueError, RetryPolicy, initial=0)
        self.assertRaises(ValueError, RetryPolicy, initial=10, maximum=5)
        self.assertRaises(ValueError, RetryPolicy, giveUp=0)


class RoutingTests(QueueCase):
    def test_localAndRelayed(self) -> None:
        """Local recipients go to the local backend, others to the relay; then the files go."""
        self.send(
            envelope("s@example.com", "a@example.com", "b@remote.example", "c@other.example")
        )
        [stored] = self.local.messages
        self.assertEqual([str(r.address) for r in stored.envelope.recipients], ["a@example.com"])
        self.assertTrue(stored.data.endswith(b"Hello\r\n"))
        self.assertEqual(
            sorted(rcpts for _, rcpts, _ in self.relay.calls),
            [["b@remote.example"], ["c@other.example"]],
        )
        env, _, data = self.relay.calls[0]
        self.assertEqual(str(env.mailFrom), "s@example.com")
        self.assertEqual(data, b"Subject: test\r\n\r\nHello\r\n")
        self.assertEqual(self.queued(), [])
        self.assertEqual(self.runner.entries, {})

    def test_groupedByDestination(self) -> None:
        """Recipients with the same route key go in one relay call."""
        self.send(envelope("s@example.com", "a@remote.example", "b@REMOTE.example"))
        self.assertEqual(
            [rcpts for _, rcpts, _ in self.relay.calls], [["a@remote.example", "b@REMOTE.example"]]
        )

    def test_noRelay(self) -> None:
        """Without a relay, remote recipients wait with 4xx (and local ones are delivered)."""
        self.start(relay=None)
        self.send(envelope("s@example.com", "a@example.com", "b@remote.example"))
        self.assertEqual(len(self.local.messages), 1)
        [entry] = self.runner.entries.values()
        self.assertEqual([r.state for r in entry.recipients], ["delivered", PENDING])
        self.assertEqual(entry.recipients[1].reply.code, 451)  # type: ignore[union-attr]

    def test_listenerBackends(self) -> None:
        """Each entry is delivered by the local backend of the listener that took it."""
        other = MemoryBackend()
        self.start(local={"smtp": self.local, "submission": other})
        self.backend.listener = "submission"
        self.send(envelope("s@example.com", "a@example.com"))
        self.assertEqual((len(self.local.messages), len(other.messages)), (0, 1))


class RetryTests(QueueCase):
    def test_schedule(self) -> None:
        """4xx is retried after 5, 10, 20, 40 minutes, then every hour; the file says when."""
        self.relay.answer = lambda a: LATER
        start = self.clock.seconds()
        self.send(envelope("s@example.com", "a@remote.example"))
        times = [0.0]
        for _ in range(6):
            [entry] = self.runner.entries.values()
            self.clock.advance(entry.nextAttempt - self.clock.seconds())
            times.append(self.clock.seconds() - start)
        self.assertEqual(len(self.relay.calls), 7)
        self.assertEqual(times, [0, 300, 900, 2100, 4500, 8100, 11700])
        [name, _] = self.queued()
        with open(os.path.join(self.path, "queue", name), "rb") as f:
            onDisk = QueueEntry.fromBytes(f.read())
        self.assertEqual(onDisk.attempts, 7)
        self.assertEqual(onDisk.nextAttempt, start + 11700 + 3600)
        self.assertEqual(onDisk.recipients[0].reply, LATER)
        self.assertEqual(self.reports(), [])

    def test_scheduleWithThreadedSpool(self) -> None:
        """With spool writes that complete later (threads), the retry is still scheduled."""
        worker = ManualWorker()
        self.start(worker=worker)
        self.relay.answer = lambda a: LATER
        d = self.backend.deliver(envelope("s@example.com", "a@remote.example"), message())
        worker.runAll()  # the commit
        self.successResultOf(d)
        self.clock.advance(0)  # the attempt; its envelope update waits for a thread
        self.assertEqual(len(self.relay.calls), 1)
        self.assertFalse(self.runner.idle())
        worker.runAll()
        self.assertTrue(self.runner.idle())
        self.clock.advance(300)
        worker.runAll()  # the message is read back from the spool this time
        self.assertEqual(len(self.relay.calls), 2)

    def test_slowRelay(self) -> None:
        """A relay that answers later: the outcome is recorded when it does, and the slot freed."""
        self.relay.hold = True
        self.send(envelope("s@example.com", "a@remote.example"))
        self.assertEqual(self.runner.remoteLimits.active, 1)
        self.relay.release(NO_USER)
        self.assertEqual(self.runner.remoteLimits.active, 0)
        self.clock.advance(0)  # the report's own delivery
        self.assertEqual(len(self.reports()), 1)
        self.assertEqual(self.queued(), [])

    def test_unreadableMessage(self) -> None:
        """A queued message whose data cannot be read waits with 4xx (and is logged)."""
        self.relay.answer = lambda a: LATER
        self.send(envelope("s@example.com", "a@remote.example"))
        [entry] = self.runner.entries.values()
        os.rename(self.spool.dataPath(entry.id), self.spool.dataPath(entry.id) + ".gone")
        self.clock.advance(300)
        self.assertEqual(len(self.relay.calls), 1)
        self.assertEqual(entry.recipients[0].reply.code, 451)  # type: ignore[union-attr]
        self.assertIn("cannot be read", str(entry.recipients[0].reply))

    def test_onlyPendingRetried(self) -> None:
        """A retry sends only to the recipients still pending."""
        answers = {"a@remote.example": OK, "b@remote.example": LATER}
        self.relay.answer = lambda a: answers[a]
        self.send(envelope("s@example.com", "a@remote.example", "b@remote.example"))
        self.clock.advance(300)
        self.assertEqual(
            [rcpts for _, rcpts, _ in self.relay.calls],
            [["a@remote.example", "b@remote.example"], ["b@remote.example"]],
        )

    def test_giveUp(self) -> None:
        """Still 4xx when give-up time comes: failed, with a report (status 4.4.1, failed)."""
        self.start(retry=RetryPolicy(initial=300, maximum=3600, giveUp=1000))
        self.relay.answer = lambda a: LATER
        self.send(envelope("s@example.com", "a@remote.example"))
        self.clock.advance(300)
        self.clock.advance(600)
        self.assertEqual(len(self.relay.calls), 3)
        self.clock.advance(100)  # at arrival + 1000, not +2100
        self.assertEqual(len(self.relay.calls), 4)
        [report] = self.reports()
        self.assertEqual(report["Subject"], "Undelivered Mail Returned to Sender")
        fields = report.get_payload()[1].get_payload()[1]  # type: ignore[index]
        self.assertEqual((fields["Action"], fields["Status"]), ("failed", "4.4.1"))
        self.assertEqual(fields["Diagnostic-Code"], "smtp; 451 4.4.1 Try again later")
        self.assertEqual(fields["Remote-MTA"], "dns; mx.remote")
        self.assertEqual(self.queued(), [])
        self.clock.advance(86400)
        self.assertEqual(len(self.relay.calls), 4)

    def test_expiredWithoutEnhancedCode(self) -> None:
        """A given-up recipient whose last reply had no enhanced code gets 4.4.7."""
        self.start(retry=RetryPolicy(initial=300, maximum=300, giveUp=300))
        self.relay.answer = lambda a: Reply(421, None, "busy")
        self.send(envelope("s@example.com", "a@remote.example"))
        self.clock.advance(300)
        fields = self.reports()[0].get_payload()[1].get_payload()[1]  # type: ignore[index]
        self.assertEqual(fields["Status"], "4.4.7")

    def test_timeout(self) -> None:
        """A relay that never answers is a 4xx after the delivery timeout."""
        self.start(deliveryTimeout=60)
        self.relay.hold = True
        self.send(envelope("s@example.com", "a@remote.example"))
        self.clock.advance(60)
        [entry] = self.runner.entries.values()
        self.assertEqual(entry.recipients[0].reply.code, 451)  # type: ignore[union-attr]
        self.assertEqual(entry.nextAttempt, self.clock.seconds() + 300)

    def test_localFailure(self) -> None:
        """A local backend that fails (or answers 4xx) is retried like a relay."""

        @implementer(IDeliveryBackend)
        class Broken:
            def deliver(self, envelope: Envelope, message: Message) -> Any:
                raise OSError(errno.EIO, "disk trouble")

        self.start(local=Broken())
        self.send(envelope("s@example.com", "a@example.com"))
        [entry] = self.runner.entries.values()
        self.assertEqual(entry.recipients[0].reply.code, 451)  # type: ignore[union-attr]
        self.flushLoggedErrors(OSError)

    def test_flush(self) -> None:
        """flush tries every waiting entry now."""
        self.relay.answer = lambda a: LATER
        self.send(envelope("s@example.com", "a@remote.example"))
        self.runner.flush()
        self.clock.advance(0)
        self.assertEqual(len(self.relay.calls), 2)


class ReportTests(QueueCase):
    def test_permanentFailure(self) -> None:
        """A 5xx fails the recipient at once: one attempt, a report to the sender."""
        self.relay.answer = lambda a: NO_USER
        self.send(
            envelope("s@example.com", "gone@remote.example"), b"Subject: mine\r\n\r\nbody\r\n"
        )
        self.assertEqual(len(self.relay.calls), 1)
        [report] = self.reports()
        [stored] = [m for m in self.local.messages if m.envelope.mailFrom.isNull]
        self.assertEqual([str(r.address) for r in stored.envelope.recipients], ["s@example.com"])
        status = report.get_payload()[1].get_payload()  # type: ignore[index]
        self.assertEqual(status[1]["Final-Recipient"], "rfc822; gone@remote.example")
        self.assertEqual(status[1]["Status"], "5.1.1")
        returned = report.get_payload()[2].get_payload()[0]  # type: ignore[index]
        self.assertEqual(returned["Subject"], "mine")
        self.assertEqual(self.queued(), [])
        self.clock.advance(3600)
        self.assertEqual(len(self.relay.calls), 1)

    def test_reportToRemoteSender(self) -> None:
        """A report for a remote sender is relayed, from the null path."""
        self.relay.answer = lambda a: NO_USER if a.startswith("gone") else OK
        self.send(envelope("s@remote.example", "gone@other.example"))
        self.assertEqual(len(self.relay.calls), 2)
        env, rcpts, data = self.relay.calls[1]
        self.assertTrue(env.mailFrom.isNull)
        self.assertEqual(rcpts, ["s@remote.example"])
        self.assertIn(b"multipart/report", data)

    def test_nullSender(self) -> None:
        """A message from the null path that fails gets no report; it is logged."""
        self.relay.answer = lambda a: NO_USER
        self.send(envelope("", "gone@remote.example"))
        self.assertEqual(len(self.relay.calls), 1)
        self.assertEqual(self.local.messages, [])
        self.assertEqual(self.queued(), [])
        self.assertTrue(self.lines("no report"))

    def test_reportOfReportNever(self) -> None:
        """A report that cannot be delivered is dropped (logged), not reported on."""
        self.relay.answer = lambda a: NO_USER
        self.send(envelope("s@remote.example", "gone@other.example"))
        self.assertEqual(len(self.relay.calls), 2)
        self.assertEqual(self.queued(), [])

    def test_notifyNever(self) -> None:
        """NOTIFY=NEVER: no report for that recipient."""
        self.relay.answer = lambda a: NO_USER
        self.send(envelope("s@example.com", "gone@remote.example NEVER"))
        self.assertEqual(self.reports(), [])

    def test_successNotices(self) -> None:
        """NOTIFY=SUCCESS: 'delivered' for local delivery, 'relayed' for the relay."""
        self.send(
            envelope(
                "s@example.com",
                "a@example.com SUCCESS",
                "b@remote.example SUCCESS,FAILURE",
                "c@remote.example",
            )
        )
        [report] = self.reports()
        status = report.get_payload()[1].get_payload()  # type: ignore[index]
        actions = {s["Final-Recipient"]: s["Action"] for s in status[1:]}
        self.assertEqual(
            actions, {"rfc822; a@example.com": "delivered", "rfc822; b@remote.example": "relayed"}
        )

    def test_nextHopWithDSN(self) -> None:
        """No 'relayed' notice when the next hop took the DSN request (it reports itself)."""
        from mailframe.client import SMTPResult

        def relay(envelope: Envelope, recipients: Any, message: Message) -> Any:
            rcpts = list(recipients)
            dsn = tuple(str(r.address).startswith("dsn") for r in rcpts)
            return defer.succeed(SMTPResult(tuple(OK for _ in rcpts), ("mx",) * len(rcpts), dsn))

        self.relay.relay = relay  # type: ignore[method-assign]
        self.send(
            envelope("s@example.com", "dsn@remote.example SUCCESS", "plain@remote.example SUCCESS")
        )
        [report] = self.reports()
        status = report.get_payload()[1].get_payload()  # type: ignore[index]
        self.assertEqual(
            [(s["Final-Recipient"], s["Action"]) for s in status[1:]],
            [("rfc822; plain@remote.example", "relayed")],
        )

    def test_delayWarning(self) -> None:
        """After delay-warning, one 'delayed' report (not for NOTIFY without DELAY)."""
        self.start(retry=RetryPolicy(initial=300, maximum=3600, delayWarning=600))
        self.relay.answer = lambda a: LATER
        self.send(envelope("s@example.com", "a@remote.example", "b@remote.example FAILURE"))
        self.clock.advance(300)
        self.assertEqual(self.reports(), [])
        self.clock.advance(600)
        [report] = self.reports()
        self.assertEqual(report["Subject"], "Delayed Mail (still being retried)")
        status = report.get_payload()[1].get_payload()  # type: ignore[index]
        self.assertEqual([s["Final-Recipient"] for s in status[1:]], ["rfc822; a@remote.example"])
        self.assertEqual(status[1]["Action"], "delayed")
        self.assertIsNotNone(status[1]["Will-Retry-Until"])
        self.clock.advance(1200)
        self.assertEqual(len(self.reports()), 1)

    def test_reportNotQueued(self) -> None:
        """If the report cannot be queued, the recipient stays pending to be tried (and reported) again."""
        self.relay.answer = lambda a: NO_USER
        real = self.spool.add

        def add(entry: QueueEntry, data: Any) -> Any:
            if entry.report:
                return defer.fail(OSError(errno.ENOSPC, "full"))
            return real(entry, data)

        self.spool.add = add  # type: ignore[method-assign]
        self.send(envelope("s@example.com", "gone@remote.example"))
        [entry] = self.runner.entries.values()
        self.assertEqual(entry.recipients[0].state, PENDING)
        self.spool.add = real  # type: ignore[method-assign]
        self.clock.advance(300)
        self.assertEqual(len(self.reports()), 1)
        self.assertEqual(self.queued(), [])

    def test_delayWarningNotQueued(self) -> None:
        """A delay warning that cannot be queued is given at the next attempt, once."""
        self.start(retry=RetryPolicy(initial=300, maximum=3600, delayWarning=600))
        self.relay.answer = lambda a: LATER
        real = self.spool.add
        refused: list[str] = []

        def add(entry: QueueEntry, data: Any) -> Any:
            if entry.report and not refused:
                refused.append(entry.id)
                return defer.fail(OSError(errno.ENOSPC, "full"))
            return real(entry, data)

        self.spool.add = add  # type: ignore[method-assign]
        self.send(envelope("s@example.com", "a@remote.example"))
        self.clock.advance(300)
        self.clock.advance(600)  # the warning is due: its report is refused
        self.assertEqual(len(refused), 1)
        self.assertEqual(self.reports(), [])
        [entry] = self.runner.entries.values()
        self.assertFalse(entry.delayWarned)
        self.assertEqual(entry.recipients[0].state, PENDING)
        self.clock.advance(1200)  # the next attempt warns
        [report] = self.reports()
        self.assertEqual(report["Subject"], "Delayed Mail (still being retried)")
        self.assertTrue(entry.delayWarned)
        self.clock.advance(2400)
        self.assertEqual(len(self.reports()), 1)


class LimitTests(QueueCase):
    def test_perDestinationAndTotal(self) -> None:
        """At most maxPerDestination relay deliveries per route key, maxConnections in all."""
        self.start(maxConnections=3, maxPerDestination=2)
        self.relay.hold = True
        for i in range(4):
            self.send(envelope("s@example.com", f"u{i}@one.example"))
        self.assertEqual(len(self.relay.calls), 2)
        self.send(envelope("s@example.com", "v@two.example"))
        self.send(envelope("s@example.com", "w@three.example"))
        self.assertEqual(len(self.relay.calls), 3)
        self.relay.release()  # one.example: u2 may go now
        self.assertEqual(len(self.relay.calls), 4)
        self.assertEqual(self.relay.calls[-1][1], ["u2@one.example"])
        self.assertEqual(self.runner.remoteLimits.active, 3)
        while self.relay.held:
            self.relay.release()
        self.assertEqual(len(self.relay.calls), 6)
        self.assertEqual(self.runner.remoteLimits.active, 0)
        self.assertEqual(self.queued(), [])

    def test_localLimit(self) -> None:
        """Local deliveries have their own limit, maxLocal."""

        @implementer(IDeliveryBackend)
        class Slow:
            def __init__(self) -> None:
                self.pending: list[defer.Deferred[None]] = []

            def deliver(self, envelope: Envelope, message: Message) -> Any:
                d: defer.Deferred[None] = defer.Deferred()
                self.pending.append(d)
                return d

        slow = Slow()
        self.start(local=slow, maxLocal=2)
        for i in range(3):
            self.send(envelope("s@example.com", f"u{i}@example.com"))
        self.assertEqual(len(slow.pending), 2)
        slow.pending[0].callback(None)
        self.assertEqual(len(slow.pending), 3)


class SlotBeforeReadTests(QueueCase):
    """The runner takes a delivery slot before it reads a message back."""

    def track(self) -> list[Message]:
        """Every Message the runner and the spool make from now on."""
        made: list[Message] = []

        class Tracked(Message):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                made.append(self)

        from mailframe.queue import _reading
        from mailframe.queue import spool as spoolModule

        self.patch(_reading, "Message", Tracked)
        self.patch(spoolModule, "Message", Tracked)
        return made

    def test_backlogHoldsAtMostTheSlots(self) -> None:
        """
        Many entries for one slow destination, at most N deliveries to it:
        at most N messages are read and open at once, none kept in memory.
        """
        made = self.track()
        self.start(maxPerDestination=3, maxConnections=10, spillThreshold=64)
        self.relay.hold = True
        body = b"Subject: big\r\n\r\n" + b"y" * 200 + b"\r\n"  # spilled when read back
        for i in range(30):
            self.send(envelope("s@example.com", f"u{i}@slow.example"), body)
        self.assertEqual(len(self.relay.held), 3)
        self.assertEqual(self.runner.remoteLimits.active, 3)
        self.assertLessEqual(len([m for m in made if not m.closed]), 3)
        self.assertEqual(self.runner._cache, {})
        delivered = 3
        while self.relay.held:
            self.relay.release()
            self.assertLessEqual(len([m for m in made if not m.closed]), 3)
            delivered += 1
        self.assertEqual(len(self.relay.calls), 30)
        self.assertTrue(all(call[2] == body for call in self.relay.calls))
        self.assertTrue(all(m.closed for m in made))
        self.assertLessEqual(len(made), 30)
        self.assertEqual(self.queued(), [])

    def test_cachedBytesForgottenWhileWaiting(self) -> None:
        """A small message kept since its commit is dropped while its entry waits for a slot."""
        made = self.track()
        self.start(maxPerDestination=1)
        self.relay.hold = True
        self.send(envelope("s@example.com", "a@slow.example"))
        self.send(envelope("s@example.com", "b@slow.example"))
        self.assertEqual(len(self.relay.held), 1)
        self.assertEqual(self.runner._cache, {})
        self.assertEqual([m.closed for m in made], [False])  # only the first is open
        self.relay.release()
        self.assertEqual(len(self.relay.calls), 2)  # read back from the spool
        self.relay.release()
        self.assertTrue(all(m.closed for m in made))

    def test_groupsShareOneRead(self) -> None:
        """Groups of one entry delivering at the same time share one read of the message."""
        made = self.track()
        self.relay.hold = True
        self.relay.answer = lambda a: LATER
        self.send(envelope("s@example.com", "a@one.example", "b@two.example"))
        self.runner._cache.clear()
        self.assertEqual(len(self.relay.held), 2)
        for _ in range(2):
            self.relay.release(LATER)
        before = len(made)
        self.clock.advance(300)  # the retry reads the message from the spool: once
        self.assertEqual(len(self.relay.held), 2)
        self.assertEqual(len(made) - before, 1)
        self.assertFalse(made[-1].closed)
        self.relay.release(OK)
        self.assertFalse(made[-1].closed)
        self.relay.release(OK)
        self.assertTrue(made[-1].closed)

    def test_localBackendNeverCancelled(self) -> None:
        """A slow local backend is waited for past the timeout (logged), never cancelled."""

        @implementer(IDeliveryBackend)
        class Threaded:
            def __init__(self) -> None:
                self.calls: list[defer.Deferred[Any]] = []

            def deliver(self, envelope: Envelope, message: Message) -> Any:
                d: defer.Deferred[Any] = defer.Deferred(
                    lambda _: self.fail()  # cancelling would deliver twice
                )
                self.calls.append(d)
                return d

            def fail(self) -> None:
                raise AssertionError("a local delivery was cancelled")

        threaded = Threaded()
        self.start(local=threaded, deliveryTimeout=10)
        self.send(envelope("s@example.com", "a@example.com"))
        self.clock.advance(3600)
        self.assertEqual(len(threaded.calls), 1)  # no second attempt meanwhile
        self.assertFalse(self.runner.idle())
        self.assertTrue(any("has not answered" in e.get("log_format", "") for e in self.logged))
        threaded.calls[0].callback(None)
        self.assertTrue(self.runner.idle())
        self.assertEqual(self.queued(), [])


class RestartTests(QueueCase):
    def test_recovery(self) -> None:
        """A new runner on the same spool schedules what was waiting, at its next attempt."""
        self.relay.answer = lambda a: LATER
        self.send(envelope("s@example.com", "a@remote.example"))
        self.runner.stop()
        self.clock.advance(300)
        self.assertEqual(len(self.relay.calls), 1)
        self.relay = FakeRelay()
        self.start()
        self.assertEqual(len(self.runner.entries), 1)
        self.clock.advance(0)
        self.assertEqual(len(self.relay.calls), 1)
        self.assertEqual(self.queued(), [])

    def test_acknowledgedBeforeAttempt(self) -> None:
        """A message committed but never attempted (a crash right after the 250) is delivered after restart."""
        self.runner.stop()
        self.send(envelope("s@example.com", "a@remote.example"))
        self.assertEqual(len(self.relay.calls), 0)
        self.relay = FakeRelay()
        self.start()
        self.clock.advance(0)
        self.assertEqual(len(self.relay.calls), 1)

    def test_service(self) -> None:
        """QueueService starts the runner and stops it (with the spool)."""
        spool = Spool(self.mktemp(), None, worker=syncWorker)
        runner = QueueRunner(
            self.clock, spool, self.local, None, lambda a: LOCAL, ReportSettings("x")
        )
        service = QueueService(runner)
        from twisted.application.service import IService

        self.assertTrue(verifyObject(IService, service))
        service.startService()
        self.assertTrue(runner.running)
        service.stopService()
        self.assertFalse(runner.running)


class BackendTests(QueueCase):
    def test_ackAfterCommit(self) -> None:
        """deliver fires only once the spool's commit is done."""
        worker = ManualWorker()
        self.start(worker=worker)
        d = self.backend.deliver(envelope("s@example.com", "a@example.com"), message())
        self.assertNoResult(d)
        self.assertEqual(self.queued(), [])
        worker.runNext()  # the commit
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(len(self.queued()), 2)

    def test_spoolFull(self) -> None:
        """A spool that cannot write answers 452 4.3.1 for every recipient."""
        self.patch(
            os, "write", lambda fd, data: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full"))
        )
        result = self.successResultOf(
            self.backend.deliver(
                envelope("s@example.com", "a@example.com", "b@example.com"), message()
            )
        )
        self.assertEqual([r.code for r in result.replies], [452, 452])
        self.assertEqual(result.replies[0].enhanced, (4, 3, 1))

    def test_storedUnderAnotherID(self) -> None:
        """
        When the envelope's queue ID is taken, the entry gets a variant and
        the answer, all 250, names it (the ID the client is told).
        """
        self.relay.hold = True
        first = self.successResultOf(
            self.backend.deliver(envelope("s@example.com", "a@remote.example"), message())
        )
        self.assertIsNone(first)
        result = self.successResultOf(
            self.backend.deliver(
                envelope("s@example.com", "b@remote.example", "c@remote.example"), message()
            )
        )
        assert result is not None
        self.assertTrue(result.delivered)
        self.assertEqual([r.code for r in result.replies], [250, 250])
        self.assertEqual(result.queueID, "Q1-1")
        self.assertEqual(self.queued(), ["Q1-1.json", "Q1-1.msg", "Q1.json", "Q1.msg"])
        self.clock.advance(0)
        self.assertEqual(sorted(self.runner.entries), ["Q1", "Q1-1"])

    def test_largeMessageHeldUntilCommitted(self) -> None:
        """A message too large to copy is held by the spool: the server may close it at once."""
        worker = ManualWorker()
        self.start(worker=worker)
        self.backend.keepInMemory = 10
        m = message(b"Subject: large\r\n\r\n" + b"x" * 100 + b"\r\n")
        d = self.backend.deliver(envelope("s@example.com", "a@example.com"), m)
        m.close()  # the session ended
        self.assertFalse(m.closed)
        worker.runNext()  # the commit
        self.assertIsNone(self.successResultOf(d))
        self.assertTrue(m.closed)
        with open(self.spool.dataPath("Q1"), "rb") as f:
            self.assertEqual(f.read(), b"Subject: large\r\n\r\n" + b"x" * 100 + b"\r\n")

    def test_sessionFacts(self) -> None:
        """The envelope's session facts (HELO, peer, protocol) reach the reports."""
        env = envelope("s@example.com", "a@example.com")
        session = SessionInfo(
            "S1",
            "192.0.2.9",
            1234,
            "127.0.0.1",
            25,
            "mx.test",
            heloName="client.example",
            esmtp=True,
        )
        env.session = session.snapshot()
        self.relay.answer = lambda a: NO_USER
        env.recipients.append(Recipient(parseMailbox("b@remote.example")))
        self.send(env)
        fields = self.reports()[0].get_payload()[1].get_payload()[0]  # type: ignore[index]
        self.assertEqual(fields["Received-From-MTA"], "dns; client.example ([192.0.2.9])")


class ServerTests(QueueCase):
    """The spool backend and DSN behind the real server, in memory."""

    def test_transaction(self) -> None:
        """250 after the spool commit; DSN parameters reach the report."""
        worker = ManualWorker()
        self.start(worker=worker)
        self.relay.answer = lambda a: NO_USER
        factory = SMTPServerFactory(
            ServerConfig(
                hostname="mx.test",
                localDomains=frozenset({"example.com"}),
                relayNetworks=("192.0.2.0/24",),
            ),
            self.backend,
            [AnyRecipient()],
            extensions=[*defaultExtensions(1 << 20), DSN()],
            clock=self.clock,
        )
        proto = factory.buildProtocol(None)
        transport = StringTransport(peerAddress=_Peer("192.0.2.9"))
        proto.makeConnection(transport)
        proto.dataReceived(
            b"EHLO client.example\r\nMAIL FROM:<s@example.com> RET=HDRS ENVID=E1\r\n"
            b"RCPT TO:<gone@remote.example> ORCPT=rfc822;Orig+40remote.example\r\n"
            b"DATA\r\n"
        )
        transport.clear()
        proto.dataReceived(b"Subject: server\r\n\r\nbody\r\n.\r\n")
        self.assertEqual(transport.value(), b"")
        self.assertEqual(self.queued(), [])
        worker.runNext()  # the commit
        self.assertTrue(transport.value().startswith(b"250 2.0.0"))
        worker.runAll()
        self.clock.advance(0)
        worker.runAll()
        self.clock.advance(0)
        worker.runAll()
        [report] = self.reports()
        status = report.get_payload()[1].get_payload()  # type: ignore[index]
        self.assertEqual(status[0]["Original-Envelope-Id"], "E1")
        self.assertEqual(status[0]["Received-From-MTA"], "dns; client.example ([192.0.2.9])")
        self.assertEqual(status[1]["Original-Recipient"], "rfc822; Orig@remote.example")
        self.assertEqual(report.get_payload()[2].get_content_type(), "text/rfc822-headers")  # type: ignore[index]


class ToolOperationTests(QueueCase):
    """hold, release, delete and flush (what mailframe-queue asks the runner to do)."""

    def onDisk(self, entryID: str) -> QueueEntry:
        with open(os.path.join(self.path, "queue", entryID + ".json"), "rb") as f:
            return QueueEntry.fromBytes(f.read())

    def deferred(self) -> QueueEntry:
        """A message whose first attempt got 4xx (its retry in 300 s)."""
        self.relay.answer = lambda a: LATER
        self.send(envelope("s@example.com", "a@remote.example"))
        [entry] = self.runner.entries.values()
        return entry

    def test_heldInJSON(self) -> None:
        """C{held} survives the envelope's JSON; an envelope without it is not held."""
        entry = self.deferred()
        entry.held = True
        self.assertTrue(QueueEntry.fromBytes(entry.toBytes()).held)
        data = entry.toJSON()
        del data["held"]
        self.assertFalse(QueueEntry.fromJSON(data).held)

    def test_heldNeverAttempted(self) -> None:
        """A held message's timer is gone: no attempt, no delay warning, no give-up, ever."""
        self.start(retry=RetryPolicy(initial=300, maximum=3600, giveUp=1000, delayWarning=400))
        entry = self.deferred()
        self.assertTrue(self.successResultOf(self.runner.hold(entry.id)))
        self.assertIsNone(self.runner.scheduledAt(entry.id))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(10 * 86400)
        self.runner.flush()
        self.clock.advance(0)
        self.assertEqual(len(self.relay.calls), 1)
        self.assertEqual((self.reports(), len(self.queued())), ([], 2))
        self.assertTrue(self.onDisk(entry.id).held)

    def test_release(self) -> None:
        """Released, a message is tried at its next attempt time, at once when that has passed."""
        entry = self.deferred()
        self.successResultOf(self.runner.hold(entry.id))
        self.clock.advance(200)
        self.assertTrue(self.successResultOf(self.runner.release(entry.id)))
        self.assertFalse(self.onDisk(entry.id).held)
        self.assertEqual(self.runner.scheduledAt(entry.id), entry.nextAttempt)
        self.clock.advance(200)  # past the next attempt: it is made then
        self.assertEqual(len(self.relay.calls), 2)
        self.successResultOf(self.runner.hold(entry.id))
        self.clock.advance(86400)
        self.relay.answer = lambda a: OK
        self.successResultOf(self.runner.release(entry.id))
        self.clock.advance(0)  # overdue: at once
        self.assertEqual((len(self.relay.calls), self.queued()), (3, []))

    def test_holdTwice(self) -> None:
        """hold of a held message and release of one not held change nothing (False)."""
        entry = self.deferred()
        self.assertFalse(self.successResultOf(self.runner.release(entry.id)))
        self.assertTrue(self.successResultOf(self.runner.hold(entry.id)))
        self.assertFalse(self.successResultOf(self.runner.hold(entry.id)))
        self.assertRaises(UnknownEntry, self.runner.hold, "nope")
        self.assertRaises(UnknownEntry, self.runner.delete, "nope")

    def test_heldAcrossRestart(self) -> None:
        """The hold is in the envelope: a new runner on the spool does not schedule it."""
        entry = self.deferred()
        self.successResultOf(self.runner.hold(entry.id))
        self.runner.stop()
        self.relay = FakeRelay()
        self.start()
        self.assertTrue(self.runner.entries[entry.id].held)
        self.clock.advance(86400)
        self.assertEqual(self.relay.calls, [])
        self.successResultOf(self.runner.release(entry.id))
        self.clock.advance(0)
        self.assertEqual((len(self.relay.calls), self.queued()), (1, []))

    def test_holdDuringAttempt(self) -> None:
        """Held while an attempt runs: it finishes, and is not scheduled again."""
        self.relay.hold = True
        self.send(envelope("s@example.com", "a@remote.example"))
        [entry] = self.runner.entries.values()
        self.assertTrue(self.runner.underWay(entry.id))
        self.successResultOf(self.runner.hold(entry.id))
        self.relay.release(LATER)
        self.assertFalse(self.runner.underWay(entry.id))
        self.assertIsNone(self.runner.scheduledAt(entry.id))
        on = self.onDisk(entry.id)
        self.assertEqual((on.held, on.attempts), (True, 1))

    def test_flushSkipsHeld(self) -> None:
        """flush tries every message not held now, and says how many."""
        entry = self.deferred()
        self.send(envelope("s@example.com", "b@remote.example"))
        self.successResultOf(self.runner.hold(entry.id))
        self.assertEqual(self.runner.flush(), 1)
        self.clock.advance(0)
        self.assertEqual([r for _, r, _ in self.relay.calls][-1], ["b@remote.example"])
        self.assertEqual(len(self.relay.calls), 3)

    def test_delete(self) -> None:
        """delete forgets the message, removes its files, and reports to no one."""
        entry = self.deferred()
        self.runner.delete(entry.id)
        self.assertEqual((self.runner.entries, self.queued()), ({}, []))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(86400)
        self.assertEqual((len(self.relay.calls), self.reports()), (1, []))
        self.assertEqual(
            self.lines("deleted from the queue"), ["{queueID} deleted from the queue"]
        )

    def test_deleteDuringAttempt(self) -> None:
        """Deleted while an attempt runs: the files go when it ends, and no retry follows."""
        self.relay.hold = True
        self.send(envelope("s@example.com", "a@remote.example"))
        [entryID] = self.runner.entries
        self.runner.delete(entryID)
        self.assertEqual(len(self.queued()), 2)
        self.relay.release(LATER)
        self.assertEqual(self.queued(), [])
        self.clock.advance(86400)
        self.assertEqual(len(self.relay.calls), 1)

    def test_deleteDuringFinishingAttempt(self) -> None:
        """Deleted while an attempt that delivers runs: removed once, nothing left."""
        self.relay.hold = True
        self.send(envelope("s@example.com", "a@remote.example"))
        [entryID] = self.runner.entries
        self.runner.delete(entryID)
        self.relay.release(OK)
        self.assertEqual((self.queued(), self.runner.entries), ([], {}))
        self.assertEqual(len(self.spool.free), 2)  # each file given back once

    def test_writesOneAtATime(self) -> None:
        """Envelope writes of one entry never overlap; the last state is the one on disk."""
        worker = ManualWorker()
        self.start(worker=worker)
        self.relay.answer = lambda a: LATER
        d = self.backend.deliver(envelope("s@example.com", "a@remote.example"), message())
        worker.runAll()
        self.successResultOf(d)
        self.clock.advance(0)  # the attempt: its envelope write waits in the worker
        [entry] = self.runner.entries.values()
        self.assertEqual(len(worker.jobs), 1)
        held = self.runner.hold(entry.id)
        released = self.runner.release(entry.id)
        again = self.runner.hold(entry.id)
        self.assertEqual(len(worker.jobs), 1)  # the three wait for the first write
        worker.runNext()
        self.assertEqual(len(worker.jobs), 1)  # one write for all three
        self.assertNoResult(held)
        worker.runNext()
        self.assertEqual([self.successResultOf(x) for x in (held, released, again)], [True] * 3)
        self.assertTrue(self.onDisk(entry.id).held)
        self.assertEqual(worker.jobs, [])

    def test_removeWaitsForWrite(self) -> None:
        """A message deleted while its envelope is written loses its files after the write."""
        worker = ManualWorker()
        self.start(worker=worker)
        d = self.backend.deliver(envelope("s@example.com", "a@remote.example"), message())
        self.runner.stop()  # no attempt: the entry just waits
        worker.runAll()
        self.successResultOf(d)
        [entryID] = self.runner.entries
        self.runner.hold(entryID)
        self.runner.delete(entryID)
        worker.runAll()
        self.assertEqual(self.queued(), [])

    def test_whenRunning(self) -> None:
        """whenRunning fires once the spool has been read (at once after)."""
        worker = ManualWorker()
        self.spool = Spool(self.path, None, worker=worker)
        runner = QueueRunner(self.clock, self.spool, self.local, None, lambda a: LOCAL,
                             ReportSettings("x"))  # fmt: skip
        runner.start()
        d = runner.whenRunning()
        self.assertNoResult(d)
        worker.runAll()
        self.successResultOf(d)
        self.successResultOf(runner.whenRunning())


class _Peer:
    def __init__(self, host: str) -> None:
        self.host = host
        self.port = 4321
