"""
Aliases end to end through the queue, in memory: the real server with an
alias file (a list, an include, a loop, remote forwards), the spool, the
runner, and a fake relay; forwarded copies get SRS senders
(L{mailframe.queue.srs}), and a bounce to an SRS address goes back to the
original sender.  Also the queue entry's record of a target.
"""

from __future__ import annotations

import email
import os
from pathlib import Path

from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from mailframe.address import Domain, parseMailbox
from mailframe.config import ServerConfig
from mailframe.envelope import DeliveryResult, Envelope, Recipient
from mailframe.extensions import defaultExtensions
from mailframe.extensions.dsn import DSN
from mailframe.interfaces import IRelay
from mailframe.queue.entry import QueueEntry, RecipientState
from mailframe.queue.srs import SRSRelay
from mailframe.reply import Reply
from mailframe.server import SMTPServerFactory
from mailframe.validators.aliases import AliasMap
from mailframe.validators.basic import AnyRecipient
from mailframe.validators.srs import SRS, SRSReverser
from tests.test_queue import NO_USER, FakeRelay, QueueCase, message

SECRET = b"the forwarding test's own secret"


class _Peer:
    def __init__(self, host: str) -> None:
        self.host = host
        self.port = 40000


class EntryTests(SynchronousTestCase):
    def test_targetRecorded(self) -> None:
        """A target's original and detail go into the envelope file and come back."""
        target = Recipient(
            parseMailbox("a@example.com"),
            {"ORCPT": "rfc822;list@example.com"},
            original=parseMailbox("list+x@example.com"),
            detail="x",
        )
        env = Envelope("Q1", parseMailbox("s@example.net"), {}, [target])
        entry = QueueEntry.fromEnvelope("Q1", env, 1.0, 10)
        again = QueueEntry.fromBytes(entry.toBytes())
        self.assertEqual(again.recipients[0].toRecipient(), target)

    def test_plainUnchanged(self) -> None:
        """A recipient that is no target is written as before (no new keys)."""
        r = RecipientState("a@example.com")
        self.assertNotIn("original", r.toJSON())
        self.assertEqual(r.toRecipient(), Recipient(parseMailbox("a@example.com"), {}))


class SRSRelayTests(SynchronousTestCase):
    def setUp(self) -> None:
        from twisted.internet.task import Clock

        self.clock = Clock()
        self.clock.advance(20000 * 86400)
        self.inner = FakeRelay()
        self.srs = SRS((SECRET,), "mx.test")
        self.relay = SRSRelay(self.inner, self.srs, lambda d: d.key == "example.com", self.clock)

    def send(self, sender: str, *rcpts: Recipient) -> DeliveryResult:
        env = Envelope("Q1", parseMailbox(sender) if sender else parseMailbox("x@y.z"), {},
                       list(rcpts))  # fmt: skip
        if not sender:
            from mailframe.address import Address

            env.mailFrom = Address.null()
        result: DeliveryResult = self.successResultOf(
            self.relay.relay(env, list(rcpts), message())
        )
        return result

    def forward(self, address: str) -> Recipient:
        return Recipient(parseMailbox(address), original=parseMailbox("list@example.com"))

    def test_interface(self) -> None:
        """An SRSRelay is an IRelay."""
        self.assertTrue(verifyObject(IRelay, self.relay))

    def test_forwarded(self) -> None:
        """Forwarded copies go with the SRS sender."""
        self.send("alice@sender.example", self.forward("x@remote.example"))
        [(env, rcpts, _)] = self.inner.calls
        self.assertTrue(env.mailFrom.localPart.startswith("SRS0="))
        self.assertEqual(env.mailFrom.domain, Domain("mx.test"))
        self.assertEqual(self.srs.reverse(env.mailFrom, self.clock.seconds()),
                         parseMailbox("alice@sender.example"))  # fmt: skip
        self.assertEqual(rcpts, ["x@remote.example"])

    def test_kept(self) -> None:
        """Not rewritten: relayed mail, the null sender, a sender of a local domain."""
        plain = Recipient(parseMailbox("x@remote.example"))
        self.send("alice@sender.example", plain)
        self.send("", self.forward("x@remote.example"))
        self.send("bob@example.com", self.forward("x@remote.example"))
        senders = [str(env.mailFrom) for env, _, _ in self.inner.calls]
        self.assertEqual(senders, ["alice@sender.example", "", "bob@example.com"])

    def test_mixed(self) -> None:
        """Copies and relayed mail in one group: two transfers, the replies in order."""
        self.inner.answer = lambda a: NO_USER if a.startswith("b") else Reply(250, None, "ok")
        result = self.send(
            "alice@sender.example",
            Recipient(parseMailbox("a@remote.example")),
            self.forward("b@remote.example"),
            Recipient(parseMailbox("c@remote.example")),
            self.forward("d@remote.example"),
        )
        self.assertEqual([r.code for r in result.replies], [250, 550, 250, 250])
        self.assertEqual(len(result.remote), 4)
        calls = [(str(env.mailFrom)[:5], rcpts) for env, rcpts, _ in self.inner.calls]
        self.assertEqual(
            calls,
            [("SRS0=", ["b@remote.example", "d@remote.example"]),
             ("alice", ["a@remote.example", "c@remote.example"])],
        )  # fmt: skip


class AliasesThroughTheQueueTests(QueueCase):
    """A list, an include, a loop and remote forwards with SRS, with the real server."""

    def setUp(self) -> None:
        super().setUp()
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        Path(directory, "members").write_text("# the list\ncarol\ndave@remote.example\n")
        aliases = Path(directory, "aliases")
        aliases.write_text(
            "list:  alice, bob,\n       :include:members\n"
            "fwd:   erin@remote.example\n"
            "loop1: loop2\nloop2: loop1\n"
        )
        self.srs = SRS((SECRET,), "mx.test")
        self.inner = FakeRelay()
        self.runner.stop()
        self.start(relay=SRSRelay(self.inner, self.srs, self.isLocal, self.clock))
        self.factory = SMTPServerFactory(
            ServerConfig(
                hostname="mx.test",
                localDomains=frozenset({"example.com", "mx.test"}),
                relayNetworks=("192.0.2.0/24",),
                logMessages=False,
            ),
            self.backend,
            [SRSReverser(self.srs, self.clock), AliasMap(self.clock, str(aliases), "+"),
             AnyRecipient()],
            extensions=[*defaultExtensions(1 << 20), DSN()],
            clock=self.clock,
        )  # fmt: skip

    def isLocal(self, domain: Domain) -> bool:
        return domain.key in ("example.com", "mx.test")

    def session(self, commands: bytes, peer: str = "198.51.100.7") -> list[bytes]:
        proto = self.factory.buildProtocol(None)
        transport = StringTransport(peerAddress=_Peer(peer))  # type: ignore[arg-type]
        proto.makeConnection(transport)
        proto.dataReceived(b"EHLO client.example\r\n" + commands)
        self.clock.advance(0)
        replies = [line for line in transport.value().split(b"\r\n") if line[3:4] == b" "]
        proto.dataReceived(b"QUIT\r\n")
        return replies[2:]  # after the greeting and EHLO

    def test_listIncludeAndForwards(self) -> None:
        """Local members delivered locally; remote ones relayed with one SRS sender."""
        replies = self.session(
            b"MAIL FROM:<alice@sender.example>\r\nRCPT TO:<list+news@example.com>\r\n"
            b"RCPT TO:<fwd@example.com>\r\nDATA\r\n"
            b"Subject: to the list\r\n\r\nHello\r\n.\r\n"
        )
        self.assertEqual([r[:3] for r in replies], [b"250", b"250", b"250", b"354", b"250"])
        [stored] = self.local.messages
        self.assertEqual(
            [(str(r.address), r.detail, str(r.original)) for r in stored.envelope.recipients],
            [("alice@example.com", "news", "list+news@example.com"),
             ("bob@example.com", "news", "list+news@example.com"),
             ("carol@example.com", "news", "list+news@example.com")],
        )  # fmt: skip
        self.assertEqual(str(stored.envelope.mailFrom), "alice@sender.example")
        [(env, rcpts, data)] = self.inner.calls
        self.assertEqual(rcpts, ["dave@remote.example", "erin@remote.example"])
        self.assertTrue(env.mailFrom.localPart.startswith("SRS0="))
        self.assertEqual(
            self.srs.reverse(env.mailFrom, self.clock.seconds()),
            parseMailbox("alice@sender.example"),
        )
        self.assertIn(b"Subject: to the list", data)
        self.assertEqual(self.queued(), [])

    def test_loop(self) -> None:
        """A looping alias is refused at RCPT with 554 5.4.6; nothing is queued."""
        replies = self.session(b"MAIL FROM:<a@sender.example>\r\nRCPT TO:<loop1@example.com>\r\n")
        self.assertTrue(replies[1].startswith(b"554 5.4.6"))

    def test_bounceComesBack(self) -> None:
        """A bounce to the SRS address is forwarded to the original sender, with <>."""
        self.session(
            b"MAIL FROM:<alice@sender.example>\r\nRCPT TO:<fwd@example.com>\r\nDATA\r\n"
            b"Subject: x\r\n\r\nx\r\n.\r\n"
        )
        [(env, _, _)] = self.inner.calls
        srsAddress = str(env.mailFrom)
        replies = self.session(
            f"MAIL FROM:<>\r\nRCPT TO:<{srsAddress}>\r\nDATA\r\n".encode()
            + b"Subject: Undelivered Mail Returned to Sender\r\n\r\nbounce\r\n.\r\n"
        )
        self.assertEqual([r[:3] for r in replies], [b"250", b"250", b"354", b"250"])
        env, rcpts, data = self.inner.calls[1]
        self.assertTrue(env.mailFrom.isNull)
        self.assertEqual(rcpts, ["alice@sender.example"])
        self.assertIn(b"Returned to Sender", data)

    def test_forgedBounce(self) -> None:
        """A bounce to a forged SRS address is refused: we are no open relay through SRS."""
        replies = self.session(
            b"MAIL FROM:<>\r\nRCPT TO:<SRS0=abcd=RA=victim.example=x@mx.test>\r\n"
        )
        self.assertTrue(replies[1].startswith(b"550"))
        self.assertEqual(self.inner.calls, [])

    def test_failedForwardReported(self) -> None:
        """A forwarded copy refused for good is reported to the original sender, naming the alias."""
        self.inner.answer = lambda a: NO_USER if a.startswith("erin") else Reply(250, None, "ok")
        self.session(
            b"MAIL FROM:<alice@sender.example>\r\nRCPT TO:<fwd@example.com>\r\nDATA\r\n"
            b"Subject: x\r\n\r\nx\r\n.\r\n"
        )
        self.clock.advance(0)
        env, rcpts, data = self.inner.calls[-1]
        self.assertTrue(env.mailFrom.isNull)
        self.assertEqual(rcpts, ["alice@sender.example"])
        report = email.message_from_bytes(data.split(b"\r\n", 1)[1])
        status = report.get_payload()[1].get_payload()  # type: ignore[index]
        self.assertEqual(status[1]["Final-Recipient"], "rfc822; erin@remote.example")
        self.assertEqual(status[1]["Original-Recipient"], "rfc822; fwd@example.com")

    def test_relayedAndForwarded(self) -> None:
        """A trusted client's relayed recipient keeps the sender beside a forwarded copy."""
        self.session(
            b"MAIL FROM:<alice@sender.example>\r\nRCPT TO:<x@remote.example>\r\n"
            b"RCPT TO:<fwd@example.com>\r\nDATA\r\nSubject: x\r\n\r\nx\r\n.\r\n",
            peer="192.0.2.9",
        )
        senders = sorted(str(env.mailFrom)[:5] for env, _, _ in self.inner.calls)
        self.assertEqual(senders, ["SRS0=", "alice"])
