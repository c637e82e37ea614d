"""
Tests for the LMTP server (RFC 2033): L{SMTPServerFactory} with
C{ServerConfig(lmtp=True)}, in memory (StringTransport and a fake clock).
After the data every accepted recipient gets its own reply, from the
delivery backend's L{DeliveryResult}, in the order of the RCPT commands,
in one write; HELO and EHLO are unknown; PIPELINING and
ENHANCEDSTATUSCODES are always offered.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from mailframe import reply as R
from mailframe.backends.memory import MemoryBackend
from mailframe.config import ServerConfig
from mailframe.envelope import DeliveryResult, Envelope, Recipient, SessionInfo
from mailframe.extensions import Chunking, Size
from mailframe.interfaces import IDeliveryBackend, IMessageFilter, IRecipientValidator
from mailframe.message import Message
from mailframe.protocol import Limits
from mailframe.reply import Reply
from mailframe.server import SMTPServerFactory, SMTPServerProtocol
from tests._transports import CountingTransport

FULL = Reply(452, (4, 2, 2), "Mailbox full")
GONE = Reply(550, (5, 1, 1), "No such mailbox")


@implementer(IRecipientValidator)
class Known:
    """Accepts every local part but C{nobody} (no opinion: 550 5.1.1)."""

    def validateRecipient(
        self, session: SessionInfo, envelope: Envelope, recipient: Recipient
    ) -> Reply | None:
        return None if recipient.address.localPart == "nobody" else R.RECIPIENT_OK


@implementer(IDeliveryBackend)
class PerRecipient:
    """
    Answers each recipient by its local part: C{full} 452, C{gone} 550,
    C{down} 421, anyone else 250; with C{later}, in a Deferred fired by the test.
    """

    def __init__(self, later: bool = False) -> None:
        self.later = later
        self.pending: list[tuple[defer.Deferred[DeliveryResult], DeliveryResult]] = []
        self.seen: list[tuple[list[str], bytes]] = []

    def deliver(self, envelope: Envelope, message: Message) -> Any:
        self.seen.append(([str(r.address) for r in envelope.recipients], message.getvalue()))
        replies = {"full": FULL, "gone": GONE, "down": R.Reply(421, (4, 4, 2), "Down")}
        result = DeliveryResult(
            tuple(replies.get(r.address.localPart, R.OK) for r in envelope.recipients)
        )
        if not self.later:
            return result
        d: defer.Deferred[DeliveryResult] = defer.Deferred()
        self.pending.append((d, result))
        return d


@implementer(IMessageFilter)
class Refuse:
    """Refuses every message."""

    def filterMessage(self, session: SessionInfo, envelope: Envelope, message: Message) -> Any:
        raise R.SMTPError(554, (5, 7, 1), "Refused by policy")


def lines(data: bytes) -> list[str]:
    return [line.decode() for line in data.split(b"\r\n") if line]


TXN = (b"MAIL FROM:<a@b.example>\r\nRCPT TO:<ann@example.com>\r\nRCPT TO:<nobody@example.com>\r\n"
       b"RCPT TO:<full@example.com>\r\nRCPT TO:<ann@example.com>\r\nDATA\r\n")  # fmt: skip


class LMTPServerTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = MemoryReactorClock()

    def connect(self, backend: Any = None, **kwargs: Any) -> tuple[Any, CountingTransport]:
        config = kwargs.pop("config", None) or ServerConfig(
            hostname="mx.test",
            localDomains=frozenset({"example.com"}),
            lmtp=True,
            **kwargs.pop("settings", {}),
        )
        self.backend = backend if backend is not None else PerRecipient()
        factory = SMTPServerFactory(
            config, self.backend, validators=[Known()], clock=self.clock, **kwargs
        )
        self.factory = factory
        proto = factory.buildProtocol(None)
        transport = CountingTransport()
        proto.makeConnection(transport)
        return proto, transport

    def talk(self, proto: SMTPServerProtocol, transport: CountingTransport, data: bytes) -> bytes:
        transport.clear()
        proto.dataReceived(data)
        return transport.value()

    def greeted(self, backend: Any = None, **kwargs: Any) -> tuple[Any, CountingTransport]:
        proto, transport = self.connect(backend, **kwargs)
        self.talk(proto, transport, b"LHLO client.test\r\n")
        return proto, transport


class GreetingTests(LMTPServerTestCase):
    def test_greeting(self) -> None:
        """The greeting names LMTP."""
        _, transport = self.connect()
        self.assertEqual(transport.value(), b"220 mx.test LMTP mailframe\r\n")

    def test_lhlo(self) -> None:
        """LHLO lists the extensions, PIPELINING and ENHANCEDSTATUSCODES among them."""
        proto, transport = self.connect(extensions=[Size(1000), Chunking()])
        out = self.talk(proto, transport, b"LHLO client.test\r\n")
        self.assertEqual(lines(out), ["250-mx.test greets client.test", "250-PIPELINING",
                                      "250-ENHANCEDSTATUSCODES", "250-SIZE 1000",
                                      "250 CHUNKING"])  # fmt: skip
        self.assertEqual(proto.session.heloName, "client.test")
        self.assertTrue(proto.session.esmtp)

    def test_heloAndEhlo(self) -> None:
        """HELO and EHLO are unknown commands (500 5.5.1); MAIL then needs LHLO."""
        proto, transport = self.connect()
        out = self.talk(proto, transport, b"HELO c.test\r\nEHLO c.test\r\n")
        self.assertEqual(lines(out), ["500 5.5.1 Command unrecognized"] * 2)
        out = self.talk(proto, transport, b"MAIL FROM:<a@b.example>\r\n")
        self.assertEqual(out[:9], b"503 5.5.1")


class PerRecipientTests(LMTPServerTestCase):
    def test_repliesAfterData(self) -> None:
        """One reply per accepted RCPT after the dot, in order, duplicates included, one write."""
        proto, transport = self.greeted()
        out = self.talk(proto, transport, TXN)
        self.assertEqual([line[:3] for line in lines(out)], ["250", "250", "550", "250", "250",
                                                             "354"])  # fmt: skip
        transport.writes.clear()
        out = self.talk(proto, transport, b"Subject: hi\r\n\r\nHello\r\n.\r\n")
        queueID = self.backend.seen[0][1].split(b" id ")[1].split(b";")[0].decode()
        ok = f"250 2.0.0 <ann@example.com> OK queued as {queueID}"
        self.assertEqual(lines(out), [ok, "452 4.2.2 Mailbox full", ok])
        self.assertEqual(len(transport.writes), 1)
        self.assertEqual(self.backend.seen[0][0],
                         ["ann@example.com", "full@example.com", "ann@example.com"])  # fmt: skip
        self.assertIsNone(proto.commands.envelope)

    def test_receivedWithLMTP(self) -> None:
        """The Received: field and the session snapshot say LMTP."""
        proto, transport = self.greeted()
        self.talk(proto, transport, TXN + b"Hello\r\n.\r\n")
        data = self.backend.seen[0][1]
        self.assertIn(b"(mailframe) with LMTP id ", data)

    def test_deferred(self) -> None:
        """A backend that answers later: nothing is written until it does, then every reply."""
        backend = PerRecipient(later=True)
        proto, transport = self.greeted(backend)
        self.talk(proto, transport, TXN)
        out = self.talk(proto, transport, b"Hello\r\n.\r\nNOOP\r\n")
        self.assertEqual(out, b"")
        [(d, result)] = backend.pending
        transport.clear()
        d.callback(result)
        self.assertEqual([line[:3] for line in lines(transport.value())],
                         ["250", "452", "250", "250"])  # fmt: skip

    def test_bdatLast(self) -> None:
        """BDAT chunks get one reply; BDAT LAST one per accepted recipient."""
        proto, transport = self.greeted()
        out = self.talk(proto, transport, b"MAIL FROM:<a@b.example>\r\nRCPT TO:<gone@example.com>\r\n"
                                          b"RCPT TO:<bob@example.com>\r\nBDAT 7\r\nHello\r\n"
                                          b"BDAT 6 LAST\r\nWorld\n")  # fmt: skip
        codes = [line[:9] for line in lines(out)]
        self.assertEqual(codes, ["250 2.1.0", "250 2.1.5", "250 2.1.5", "250 2.0.0",
                                 "550 5.5.2", "550 5.5.2"])  # fmt: skip
        out = self.talk(proto, transport, b"MAIL FROM:<a@b.example>\r\nRCPT TO:<gone@example.com>\r\n"
                                          b"RCPT TO:<bob@example.com>\r\nBDAT 7 LAST\r\nHello\r\n")  # fmt: skip
        self.assertEqual([line[:9] for line in lines(out)][-2:], ["550 5.1.1", "250 2.0.0"])

    def test_filterRefuses(self) -> None:
        """A message filter's refusal is every recipient's reply."""
        proto, transport = self.greeted(messageFilters=[Refuse()])
        self.talk(proto, transport, TXN)
        out = self.talk(proto, transport, b"Hello\r\n.\r\n")
        self.assertEqual(lines(out), ["554 5.7.1 Refused by policy"] * 3)
        self.assertEqual(self.backend.seen, [])

    def test_tooBig(self) -> None:
        """A message over the size limit is refused once for each recipient."""
        config = ServerConfig(hostname="mx.test", localDomains=frozenset({"example.com"}),
                              lmtp=True, limits=Limits(messageSize=20))  # fmt: skip
        proto, transport = self.greeted(config=config)
        self.talk(proto, transport, TXN)
        out = self.talk(proto, transport, b"x" * 100 + b"\r\n.\r\n")
        self.assertEqual([line[:9] for line in lines(out)], ["552 5.3.4"] * 3)

    def test_closingReplyBecomes451(self) -> None:
        """A backend's 421 for one recipient is answered 451: the session goes on."""
        proto, transport = self.greeted()
        self.talk(proto, transport, b"MAIL FROM:<a@b.example>\r\nRCPT TO:<down@example.com>\r\n"
                                    b"RCPT TO:<bob@example.com>\r\nDATA\r\n")  # fmt: skip
        out = self.talk(proto, transport, b"Hi\r\n.\r\nNOOP\r\n")
        self.assertEqual([line[:9] for line in lines(out)], ["451 4.4.2", "250 2.0.0",
                                                             "250 2.0.0"])  # fmt: skip
        self.assertFalse(transport.disconnecting)

    def test_wrongCount(self) -> None:
        """A backend answering the wrong number of replies: 451 for every recipient."""

        @implementer(IDeliveryBackend)
        class Short:
            def deliver(self, envelope: Envelope, message: Message) -> DeliveryResult:
                return DeliveryResult((R.OK,))

        proto, transport = self.greeted(Short())
        self.talk(proto, transport, TXN)
        self.flushLoggedErrors()
        out = self.talk(proto, transport, b"Hi\r\n.\r\n")
        self.assertEqual([line[:9] for line in lines(out)], ["451 4.3.0"] * 3)

    def test_memoryBackend(self) -> None:
        """A backend answering None (all delivered): a 250 for each recipient."""
        backend = MemoryBackend()
        proto, transport = self.greeted(backend)
        self.talk(proto, transport, TXN)
        out = self.talk(proto, transport, b"Hi\r\n.\r\n")
        self.assertEqual([line[:9] for line in lines(out)], ["250 2.0.0"] * 3)
        self.assertEqual(len(backend.messages), 1)
        self.assertEqual(self.factory.accepted, 1)
        self.assertEqual(self.factory.acceptedRecipients, 3)

    def test_pipelined(self) -> None:
        """Two transactions and QUIT in one write: every reply in order, in one write."""
        proto, transport = self.greeted()
        transport.writes.clear()
        out = self.talk(proto, transport, b"MAIL FROM:<a@b.example>\r\nRCPT TO:<gone@example.com>\r\n"
                                          b"RCPT TO:<x@example.com>\r\nDATA\r\nOne\r\n.\r\n"
                                          b"MAIL FROM:<a@b.example>\r\nRCPT TO:<y@example.com>\r\n"
                                          b"DATA\r\nTwo\r\n.\r\nQUIT\r\n")  # fmt: skip
        self.assertEqual([line[:3] for line in lines(out)],
                         ["250", "250", "250", "354", "550", "250",
                          "250", "250", "354", "250", "221"])  # fmt: skip
        self.assertEqual(len(transport.writes), 1)

    def test_errorCount(self) -> None:
        """A message refused for every recipient counts as an error; maxErrors then ends it."""
        config = ServerConfig(hostname="mx.test", localDomains=frozenset({"example.com"}),
                              lmtp=True, maxErrors=2)  # fmt: skip
        proto, transport = self.greeted(config=config)
        self.talk(proto, transport, b"MAIL FROM:<a@b.example>\r\nRCPT TO:<gone@example.com>\r\n"
                                    b"RCPT TO:<full@example.com>\r\nDATA\r\n")  # fmt: skip
        out = self.talk(proto, transport, b"Hi\r\n.\r\n")
        self.assertEqual([line[:3] for line in lines(out)], ["550", "452"])
        self.talk(proto, transport, b"MAIL FROM:<a@b.example>\r\nRCPT TO:<gone@example.com>\r\n"
                                    b"DATA\r\n")  # fmt: skip
        out = self.talk(proto, transport, b"Hi\r\n.\r\n")
        self.assertEqual([line[:3] for line in lines(out)], ["550", "421"])
        self.assertTrue(transport.disconnecting)

    def test_logLine(self) -> None:
        """One log line per message, with each recipient's code."""
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        proto, transport = self.greeted()
        self.talk(proto, transport, TXN + b"Hi\r\n.\r\n")
        [line] = [formatEvent(e) for e in events if e.get("mfEvent") == "accepted"]
        self.assertIn(" accepted from=<a@b.example> to=ann@example.com(250),"
                      "full@example.com(452),ann@example.com(250) size=", line)  # fmt: skip
