"""
Tests for L{mailframe.backends.pipe}: real programs (sh scripts) run with
the reactor, one per recipient: exit 0 delivered, 75 retried, 67 bounced
with the program's first line of output; the envelope in arguments and
environment; the user (never root); time and output limits; and through
the queue, a program that exits 75 then 0, and one that exits 67 and
makes a report.
"""

from __future__ import annotations

import email
import os
import pwd
import shutil
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from mailframe.address import parseMailbox
from mailframe.backends.pipe import PipeBackend, firstLine, replyFor, runAs
from mailframe.config import ProviderContext, ServerConfig
from mailframe.envelope import Envelope, Recipient, SessionSnapshot
from mailframe.interfaces import IDeliveryBackend
from mailframe.message import Message
from mailframe.plugins import PlugInError
from mailframe.queue import QueueRunner, ReportSettings, RetryPolicy, Spool, SpoolBackend
from mailframe.queue.runner import defaultRouteKey
from tests.test_queue import FakeRelay
from tests.test_spool import syncWorker

ROOT = os.geteuid() == 0
USER = "nobody" if ROOT else None
"""As root the programs run as nobody (mailframe refuses root); otherwise as we are."""

SCRIPT = r"""#!/bin/sh
# records what it was given, then exits with the status the recipient's local part asks
out="$OUTDIR/$RECIPIENT"
cat > "$out.msg"
printf '%s\n' "$@" > "$out.args"
env | sort > "$out.env"
id -u > "$out.uid"
case "$LOCAL" in
  later*) echo "mailbox busy, try later"; exit 75 ;;
  nobody*) echo "no such mailbox: $LOCAL"; echo "second line"; exit 67 ;;
  quiet*) exit 77 ;;
  crash*) kill -9 $$ ;;
  slow*) sleep 30 ;;
  chatty*) i=0; while [ $i -lt 2000 ]; do echo "line $i of a lot of output"; i=$((i+1)); done; exit 1 ;;
esac
exit 0
"""


def message(body: bytes = b"Subject: hi\r\n\r\nline one\r\nline two\r\n") -> Message:
    m = Message(spillThreshold=1 << 10)
    m.write(body)
    m.finish()
    return m


def envelope(*recipients: Recipient, sender: str = "alice@sender.example") -> Envelope:
    return Envelope(
        "Q1",
        parseMailbox(sender),
        {},
        list(recipients),
        session=SessionSnapshot(peerHost="192.0.2.9", heloName="client.example", protocol="ESMTP"),
    )


def rcpt(address: str, original: str | None = None, detail: str | None = None) -> Recipient:
    return Recipient(parseMailbox(address), {}, None,
                     parseMailbox(original) if original else None, detail)  # fmt: skip


class PipeCase(TestCase):
    timeout = 60

    def setUp(self) -> None:
        # under /tmp, readable by the user the programs run as
        self.dir = Path(tempfile.mkdtemp(prefix="mailframe-pipe-"))
        self.addCleanup(shutil.rmtree, self.dir, True)
        os.chmod(self.dir, 0o755)
        self.out = self.dir / "out"
        self.out.mkdir()
        os.chmod(self.out, 0o777)
        self.program = self.dir / "deliver"
        self.program.write_text(SCRIPT.replace("$OUTDIR", str(self.out)))
        os.chmod(self.program, 0o755)

    def backend(self, *args: str, **kwargs: Any) -> PipeBackend:
        kwargs.setdefault("user", USER)
        return PipeBackend(reactor, str(self.program), args, **kwargs)

    def read(self, address: str, suffix: str) -> str:
        return (self.out / f"{address}.{suffix}").read_text()


class DeliveryTests(PipeCase):
    def test_interface(self) -> None:
        """A PipeBackend is a delivery backend."""
        self.assertTrue(verifyObject(IDeliveryBackend, self.backend()))

    @defer.inlineCallbacks
    def test_delivered(self) -> Any:
        """Exit 0: 250; the message (LF) on stdin, macros in the arguments, the envelope in env."""
        backend = self.backend("-f", "${sender}", "--to=${recipient}", "${original_recipient}",
                               "${extension}", "${queue_id}")  # fmt: skip
        env = envelope(rcpt("bob@example.com", "list+news@example.com", "news"))
        result = yield backend.deliver(env, message())
        self.assertEqual([r.code for r in result.replies], [250])
        self.assertEqual(
            self.read("bob@example.com", "msg"), "Subject: hi\n\nline one\nline two\n"
        )
        self.assertEqual(
            self.read("bob@example.com", "args").splitlines(),
            ["-f", "alice@sender.example", "--to=bob@example.com", "list+news@example.com",
             "news", "Q1"],
        )  # fmt: skip
        environment = dict(
            line.split("=", 1) for line in self.read("bob@example.com", "env").splitlines()
        )
        self.assertEqual(environment["SENDER"], "alice@sender.example")
        self.assertEqual(environment["RECIPIENT"], "bob@example.com")
        self.assertEqual(environment["ORIGINAL_RECIPIENT"], "list+news@example.com")
        self.assertEqual(environment["EXTENSION"], "news")
        self.assertEqual(environment["LOCAL"], "bob")
        self.assertEqual(environment["DOMAIN"], "example.com")
        self.assertEqual(environment["CLIENT_ADDRESS"], "192.0.2.9")
        self.assertEqual(environment["CLIENT_HELO"], "client.example")
        self.assertEqual(environment["QUEUE_ID"], "Q1")
        self.assertNotIn("PYTHONPATH", environment)  # nothing of mailframe's own
        if ROOT:
            self.assertEqual(self.read("bob@example.com", "uid").strip(),
                             str(pwd.getpwnam("nobody").pw_uid))  # fmt: skip
            self.assertEqual(environment["USER"], "nobody")

    @defer.inlineCallbacks
    def test_perRecipient(self) -> Any:
        """One process per recipient: 0 delivered, 75 retried, 67 bounced with its first line."""
        env = envelope(rcpt("a@example.com"), rcpt("later@example.com"),
                       rcpt("nobody@example.com"), rcpt("quiet@example.com"))  # fmt: skip
        result = yield self.backend().deliver(env, message())
        delivered, later, unknown, quiet = result.replies
        self.assertEqual(delivered.code, 250)
        self.assertEqual((later.code, later.enhanced, later.text),
                         (451, (4, 3, 0), "mailbox busy, try later"))  # fmt: skip
        self.assertEqual((unknown.code, unknown.enhanced, unknown.text),
                         (550, (5, 1, 1), "no such mailbox: nobody"))  # fmt: skip
        self.assertEqual((quiet.code, quiet.enhanced), (550, (5, 7, 0)))
        self.assertIn("permission denied", quiet.text)
        for address in ("a", "later", "nobody", "quiet"):
            self.assertTrue((self.out / f"{address}@example.com.msg").exists())

    @defer.inlineCallbacks
    def test_flagsAndCRLF(self) -> Any:
        """flags=DOR adds Return-Path, Delivered-To and X-Original-To; crlf keeps CRLF."""
        backend = self.backend(flags="DOR", crlf=True)
        yield backend.deliver(envelope(rcpt("b@example.com", "list@example.com")), message())
        self.assertEqual(
            (self.out / "b@example.com.msg").read_bytes(),
            b"Return-Path: <alice@sender.example>\r\nDelivered-To: b@example.com\r\n"
            b"X-Original-To: list@example.com\r\nSubject: hi\r\n\r\nline one\r\nline two\r\n",
        )

    @defer.inlineCallbacks
    def test_largeMessage(self) -> Any:
        """A message spilled to a file is fed whole, as the program reads it."""
        body = b"Subject: big\r\n\r\n" + b"x" * 998 + b"\r\n"
        body = body + b"y" * 100 + b"\r\n" * 3000
        m = message(body)
        self.assertFalse(m.inMemory)
        yield self.backend().deliver(envelope(rcpt("big@example.com")), m)
        self.assertEqual(len((self.out / "big@example.com.msg").read_bytes()),
                         len(body.replace(b"\r\n", b"\n")))  # fmt: skip

    @defer.inlineCallbacks
    def test_signalled(self) -> Any:
        """A program killed by a signal: 4xx, tried again."""
        result = yield self.backend().deliver(envelope(rcpt("crash@example.com")), message())
        self.assertEqual(result.replies[0].code, 451)

    @defer.inlineCallbacks
    def test_timeout(self) -> Any:
        """A program still running at the time limit is killed: 451."""
        backend = self.backend(timeout=0.5)
        result = yield backend.deliver(envelope(rcpt("slow@example.com")), message())
        self.assertEqual(result.replies[0].code, 451)
        self.assertIn("timed out", result.replies[0].text)

    @defer.inlineCallbacks
    def test_outputLimit(self) -> Any:
        """Output beyond the limit is read and dropped; the first line is the reason (exit 1: 5.3.0)."""
        backend = self.backend(outputLimit=100)
        result = yield backend.deliver(envelope(rcpt("chatty@example.com")), message())
        reply = result.replies[0]
        self.assertEqual((reply.code, reply.enhanced, reply.text),
                         (554, (5, 3, 0), "line 0 of a lot of output"))  # fmt: skip

    @defer.inlineCallbacks
    def test_notExecutable(self) -> Any:
        """A program gone since start-up: 451 4.3.5, nothing bounced."""
        backend = self.backend()
        os.chmod(self.program, 0o644)
        result = yield backend.deliver(envelope(rcpt("a@example.com")), message())
        self.assertEqual((result.replies[0].code, result.replies[0].enhanced), (451, (4, 3, 5)))

    @defer.inlineCallbacks
    def test_holdsTheMessage(self) -> Any:
        """The owner may close the message at once: the programs still read it whole."""
        m = message()
        d = self.backend().deliver(envelope(rcpt("a@example.com"), rcpt("b@example.com")), m)
        m.close()
        self.assertFalse(m.closed)
        yield d
        self.assertTrue(m.closed)
        self.assertEqual(self.read("b@example.com", "msg"), "Subject: hi\n\nline one\nline two\n")

    @defer.inlineCallbacks
    def test_processes(self) -> Any:
        """At most `processes` programs run at once."""
        backend = self.backend(processes=1)
        recipients = [rcpt(f"u{i}@example.com") for i in range(4)]
        result = yield backend.deliver(envelope(*recipients), message())
        self.assertEqual([r.code for r in result.replies], [250] * 4)


class RulesTests(PipeCase):
    def test_neverRoot(self) -> None:
        """As root, user= is required and may not be root; otherwise only our own user."""
        with self.assertRaises(ValueError) as caught:
            runAs(None, euid=0)
        self.assertIn("give user=NAME", str(caught.exception))
        self.assertRaises(ValueError, runAs, "root", euid=0)
        self.assertRaises(ValueError, runAs, "0", euid=0)
        nobody = runAs("nobody", euid=0)
        self.assertEqual((nobody.uid, nobody.name), (pwd.getpwnam("nobody").pw_uid, "nobody"))
        self.assertRaises(ValueError, runAs, "nobody", "root", euid=0)
        self.assertRaises(ValueError, runAs, "no-such-user-here", euid=0)
        self.assertRaises(ValueError, runAs, "nobody", euid=12345)  # not root: cannot switch
        me = pwd.getpwnam("nobody")
        self.assertIsNone(runAs("nobody", euid=me.pw_uid).uid)  # already that user

    def test_badArguments(self) -> None:
        """Unknown macros and flags, relative or missing programs are refused."""
        self.assertRaises(ValueError, self.backend, "${nope}")
        self.assertRaises(ValueError, self.backend, flags="X")
        self.assertRaises(ValueError, PipeBackend, reactor, "deliver", user=USER)
        self.assertRaises(ValueError, PipeBackend, reactor, str(self.dir / "missing"), user=USER)

    def test_replies(self) -> None:
        """Exit statuses map as Postfix's sysexits table does; 71 and 75 are temporary."""
        self.assertEqual(replyFor(0, None, False, b"").code, 250)
        self.assertEqual(replyFor(75, None, False, b"").code, 451)
        self.assertEqual(replyFor(71, None, False, b"").code, 451)
        self.assertEqual(replyFor(67, None, False, b"").enhanced, (5, 1, 1))
        self.assertEqual(replyFor(65, None, False, b"").enhanced, (5, 6, 0))
        self.assertEqual(replyFor(2, None, False, b"").enhanced, (5, 3, 0))
        self.assertEqual(replyFor(None, 9, False, b"").code, 451)
        self.assertEqual(firstLine(b"\n  \nsecond\x00 line\r\nthird"), "second\\x00 line")
        self.assertEqual(len(firstLine(b"x" * 500) or ""), 200)

    def test_factory(self) -> None:
        """pipe:PROGRAM:ARG...:user=...:timeout=... builds; bad descriptions are refused first."""
        from mailframe.app import registry

        context = ProviderContext(reactor, ServerConfig(hostname="mx.example"))
        user = f":user={USER}" if USER else ""
        backend = registry.makeProvider(
            IDeliveryBackend,
            f"pipe:{self.program}:-f:${{sender}}{user}:timeout=5m:flags=D:processes=3",
            context,
        )
        assert isinstance(backend, PipeBackend)
        self.assertEqual((backend.args, backend.timeout, backend.flags), (("-f", "${sender}"),
                                                                          300.0, "D"))  # fmt: skip
        for bad in ("pipe", "pipe:deliver", f"pipe:{self.program}:${{x}}{user}",
                    f"pipe:{self.program}:flags=Z{user}"):  # fmt: skip
            self.assertRaises(PlugInError, registry.checkDescription, IDeliveryBackend, bad)
        if ROOT:
            with self.assertRaises(PlugInError) as caught:
                registry.checkDescription(IDeliveryBackend, f"pipe:{self.program}")
            self.assertIn("refusing to run delivery programs as root", str(caught.exception))


@implementer(IDeliveryBackend)
class Watched:
    """Passes deliveries on, keeping each Deferred so that the test can wait for them."""

    def __init__(self, backend: IDeliveryBackend) -> None:
        self.backend = backend
        self.pending: list[defer.Deferred[Any]] = []

    def deliver(self, envelope: Envelope, message: Message) -> Any:
        d = defer.maybeDeferred(self.backend.deliver, envelope, message)
        waiter: defer.Deferred[Any] = defer.Deferred()
        self.pending.append(waiter)

        def done(result: Any) -> Any:
            reactor.callLater(0, waiter.callback, None)  # after the runner has seen it
            return result

        return d.addBoth(done)

    @defer.inlineCallbacks
    def settle(self) -> Any:
        while self.pending:
            yield self.pending.pop(0)
        yield task.deferLater(reactor, 0.01, lambda: None)


class QueueTests(PipeCase):
    """The pipe backend as the queue's local backend: 75 retried, 67 reported."""

    def setUp(self) -> None:
        super().setUp()
        self.clock = task.Clock()
        self.clock.advance(1_000_000)
        self.spool = Spool(os.path.abspath(self.mktemp()), None, worker=syncWorker)
        self.local = Watched(self.backend())
        self.relay = FakeRelay()
        self.runner = QueueRunner(
            self.clock, self.spool, self.local, self.relay,
            defaultRouteKey(lambda d: d.key == "example.com"), ReportSettings("mx.test"),
            retry=RetryPolicy(initial=300, maximum=3600, giveUp=86400),
        )  # fmt: skip
        self.successResultOf(self.runner.start())
        self.incoming = SpoolBackend(self.spool, self.clock)

    @defer.inlineCallbacks
    def test_retriedThenDelivered(self) -> Any:
        """75 keeps the recipient queued; once the program exits 0 it is delivered."""
        marker = self.dir / "busy"
        marker.write_text("")
        self.program.write_text(
            SCRIPT.replace("$OUTDIR", str(self.out)).replace(
                'case "$LOCAL" in',
                f'[ -e {marker} ] && {{ echo "busy now"; exit 75; }}\ncase "$LOCAL" in',
            )
        )
        result = yield self.incoming.deliver(envelope(rcpt("a@example.com")), message())
        self.assertIsNone(result)
        self.clock.advance(0)
        yield self.local.settle()
        [entry] = self.runner.entries.values()
        self.assertEqual(entry.recipients[0].reply.text, "busy now")  # type: ignore[union-attr]
        marker.unlink()
        self.clock.advance(300)
        yield self.local.settle()
        self.assertEqual(self.runner.entries, {})
        self.assertTrue((self.out / "a@example.com.msg").exists())

    @defer.inlineCallbacks
    def test_bounced(self) -> Any:
        """67 fails the recipient for good; the sender's report gives the program's line."""
        yield self.incoming.deliver(envelope(rcpt("nobody@example.com")), message())
        self.clock.advance(0)
        yield self.local.settle()
        self.clock.advance(0)
        [(env, rcpts, data)] = self.relay.calls  # the report, to the remote sender
        self.assertTrue(env.mailFrom.isNull)
        self.assertEqual(rcpts, ["alice@sender.example"])
        report = email.message_from_bytes(data.split(b"\r\n", 1)[1])
        status = report.get_payload()[1].get_payload()  # type: ignore[index]
        self.assertEqual(status[1]["Status"], "5.1.1")
        self.assertIn("no such mailbox: nobody", status[1]["Diagnostic-Code"])
