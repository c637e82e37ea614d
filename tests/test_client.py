"""
Tests for L{mailframe.client.send}: the Twisted client session against scripted
servers in memory (StringTransport, task.Clock): each extension on and off,
EHLO -> HELO, STARTTLS with bytes injected after the 220, AUTH, pipelined
groups in one write, one reply per recipient, timeouts, malformed replies,
several messages over one connection; and L{sendMessage}.
"""

from __future__ import annotations

import base64
from typing import Any

from twisted.internet import defer, task
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.interfaces import (
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IPushProducer,
)
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from mailframe.address import parseMailbox
from mailframe.client import (
    ClientOptions,
    Credentials,
    SessionFailed,
    SMTPClientProtocol,
    Timeouts,
    clientTLS,
    messageFrom,
    sendMessage,
)
from mailframe.client.transaction import MessageSender
from mailframe.envelope import DeliveryResult, Envelope, Recipient
from mailframe.reply import Reply

MESSAGE = b"Subject: test\r\n\r\n.line with a dot\r\nbody\r\n"


class Transport(StringTransport):
    """Records each write and startTLS; tells the protocol when it is closed."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.tlsCreator: Any = None
        self.aborted = False
        self.pauseOnRegister = False

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        super().registerProducer(producer, streaming)
        if self.pauseOnRegister:
            producer.pauseProducing()

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        super().write(data)

    def startTLS(self, creator: Any) -> None:
        self.tlsCreator = creator

    def abortConnection(self) -> None:
        self.aborted = True
        super().abortConnection()

    def getHandle(self) -> Any:
        return None


def envelope(*recipients: str, sender: str = "alice@a.example", **params: Any) -> Envelope:
    return Envelope(
        "Q1",
        parseMailbox(sender),
        params,
        [Recipient(parseMailbox(r)) for r in recipients],
    )


def ehlo(*keywords: str) -> bytes:
    lines = ["mx.test", *keywords]
    return b"".join(
        f"250{'-' if i < len(lines) - 1 else ' '}{line}\r\n".encode()
        for i, line in enumerate(lines)
    )


class Session:
    """A client session on a recording transport, with a fake clock."""

    def __init__(self, **options: Any) -> None:
        options.setdefault("heloName", "client.test")
        self.options = ClientOptions(**options)
        self.clock = task.Clock()
        self.proto = SMTPClientProtocol(self.options, self.clock, "mx.test [192.0.2.1]")
        self.transport = Transport()
        self.proto.makeConnection(self.transport)
        self.results: list[Any] = []

    def deliver(self, env: Envelope, message: bytes = MESSAGE) -> defer.Deferred[Any]:
        d = self.proto.deliver(env, env.recipients, messageFrom(message))

        def record(result: Any) -> Any:
            self.results.append(result)
            return result

        return d.addBoth(record)

    def server(self, data: bytes) -> bytes:
        """Feed the server's bytes; return what the client wrote meanwhile."""
        self.transport.clear()
        del self.transport.writes[:]
        self.proto.dataReceived(data)
        self.closeIfAsked()
        return self.transport.value()

    def closeIfAsked(self) -> None:
        if self.transport.disconnecting and not getattr(self, "_lost", False):
            self._lost = True
            self.proto.connectionLost(Failure(ConnectionDone()))

    def greet(self, *keywords: str) -> bytes:
        assert self.server(b"220 mx.test ESMTP\r\n") == b"EHLO client.test\r\n"
        return self.server(ehlo(*keywords))

    def codes(self, index: int = -1) -> list[tuple[int, tuple[int, int, int] | None]]:
        result = self.results[index]
        assert isinstance(result, DeliveryResult), result
        return [(r.code, r.enhanced) for r in result.replies]


class SessionTests(SynchronousTestCase):
    def test_interfaces(self) -> None:
        """The session provides IHandshakeListener; its message sender is the data's IPushProducer."""
        s = Session()
        verifyObject(IHandshakeListener, s.proto)
        self.assertFalse(IPushProducer.providedBy(s.proto))
        s.deliver(envelope("bob@b.example"))
        s.greet("PIPELINING")
        s.transport.pauseOnRegister = True
        s.server(b"250 ok\r\n250 ok\r\n354 go\r\n")
        producer = s.transport.producer
        self.assertIsInstance(producer, MessageSender)
        verifyObject(IPushProducer, producer)
        self.assertTrue(s.transport.streaming)
        producer.resumeProducing()
        self.assertIsNone(s.transport.producer)  # unregistered after the last octet

    def test_noMixins(self) -> None:
        """The session is no mixin host: it owns a MessageSender, which owns its own state."""
        from mailframe.client import protocol, transaction

        self.assertEqual(SMTPClientProtocol.__bases__, (protocol.Protocol,))
        for module in (protocol, transaction):
            self.assertFalse([n for n in vars(module) if n.endswith("Mixin")])

    def test_plainSMTP(self) -> None:
        """Without extensions: one command per reply, dot-stuffed DATA, QUIT at the end."""
        s = Session()
        s.deliver(envelope("bob@b.example", "carol@b.example"))
        out = s.greet()
        self.assertEqual(out, b"MAIL FROM:<alice@a.example>\r\n")
        self.assertEqual(s.server(b"250 ok\r\n"), b"RCPT TO:<bob@b.example>\r\n")
        self.assertEqual(s.server(b"250 ok\r\n"), b"RCPT TO:<carol@b.example>\r\n")
        self.assertEqual(s.server(b"250 ok\r\n"), b"DATA\r\n")
        out = s.server(b"354 go\r\n")
        self.assertEqual(out, b"Subject: test\r\n\r\n..line with a dot\r\nbody\r\n.\r\n")
        self.assertEqual(s.server(b"250 2.0.0 queued\r\n"), b"QUIT\r\n")
        self.assertEqual(s.codes(), [(250, (2, 0, 0))] * 2)
        self.assertEqual(s.results[0].remote, ("mx.test [192.0.2.1]",) * 2)
        s.server(b"221 bye\r\n")
        self.assertTrue(s.transport.disconnecting)

    def test_pipelinedGroup(self) -> None:
        """With PIPELINING, MAIL, every RCPT and DATA leave in one write."""
        s = Session()
        s.deliver(envelope("bob@b.example", "carol@b.example"))
        s.greet("PIPELINING")
        self.assertEqual(
            s.transport.writes,
            [
                b"MAIL FROM:<alice@a.example>\r\nRCPT TO:<bob@b.example>\r\n"
                b"RCPT TO:<carol@b.example>\r\nDATA\r\n"
            ],
        )
        out = s.server(b"250 ok\r\n250 ok\r\n550 5.1.1 no such user\r\n354 go\r\n")
        self.assertTrue(out.endswith(b"body\r\n.\r\n"))
        s.server(b"250 2.0.0 ok\r\n")
        self.assertEqual(s.codes(), [(250, (2, 0, 0)), (550, (5, 1, 1))])

    def test_pipelinedRepliesSplit(self) -> None:
        """Replies to a pipelined group may come one by one."""
        s = Session()
        s.deliver(envelope("bob@b.example"))
        s.greet("PIPELINING")
        for line in (b"250 ok\r\n", b"250 ok\r\n"):
            self.assertEqual(s.server(line), b"")
        self.assertIn(b"body", s.server(b"354 go\r\n"))

    def test_allRecipientsRefused(self) -> None:
        """Every RCPT refused: no data; each recipient has its own reply."""
        s = Session()
        s.deliver(envelope("bob@b.example", "carol@b.example"))
        s.greet()
        s.server(b"250 ok\r\n")
        s.server(b"550 5.1.1 no\r\n")
        self.assertEqual(s.server(b"450 4.2.0 later\r\n"), b"QUIT\r\n")
        self.assertEqual(s.codes(), [(550, (5, 1, 1)), (450, (4, 2, 0))])

    def test_pipelinedAllRefused(self) -> None:
        """Pipelined, all RCPTs refused: DATA's 554 ends it; a 354 anyway gets a lone dot."""
        s = Session()
        s.deliver(envelope("bob@b.example"))
        s.greet("PIPELINING")
        out = s.server(b"250 ok\r\n550 5.1.1 no\r\n554 5.5.1 no valid recipients\r\n")
        self.assertEqual(out, b"QUIT\r\n")
        self.assertEqual(s.codes(), [(550, (5, 1, 1))])
        s = Session()
        s.deliver(envelope("bob@b.example"))
        s.greet("PIPELINING")
        out = s.server(b"250 ok\r\n550 5.1.1 no\r\n354 go\r\n")
        self.assertEqual(out, b".\r\n")
        self.assertEqual(s.server(b"554 5.6.0 empty\r\n"), b"QUIT\r\n")
        self.assertEqual(s.codes(), [(550, (5, 1, 1))])

    def test_mailRefused(self) -> None:
        """MAIL refused: every recipient gets that reply."""
        s = Session()
        s.deliver(envelope("bob@b.example", "carol@b.example"))
        s.greet()
        self.assertEqual(s.server(b"553 5.1.8 bad sender\r\n"), b"QUIT\r\n")
        self.assertEqual(s.codes(), [(553, (5, 1, 8))] * 2)

    def test_mailRefusedPipelined(self) -> None:
        """Pipelined MAIL refused: the RCPT and DATA replies that follow are ignored."""
        s = Session()
        s.deliver(envelope("bob@b.example"))
        s.greet("PIPELINING")
        s.server(b"451 4.3.0 later\r\n503 5.5.1 need MAIL\r\n503 5.5.1 need RCPT\r\n")
        self.assertEqual(s.codes(), [(451, (4, 3, 0))])

    def test_dataRefused(self) -> None:
        """A refused DATA or final dot applies to every accepted recipient."""
        s = Session()
        s.deliver(envelope("bob@b.example", "carol@b.example"))
        s.greet("PIPELINING")
        s.server(b"250 ok\r\n250 ok\r\n550 5.1.1 no\r\n354 go\r\n")
        s.server(b"552 5.3.4 too big\r\n")
        self.assertEqual(s.codes(), [(552, (5, 3, 4)), (550, (5, 1, 1))])

    def test_heloFallback(self) -> None:
        """EHLO refused with 5xx: HELO, then plain SMTP without parameters."""
        s = Session()
        s.deliver(envelope("bob@b.example"), b"Subject: caf\xc3\xa9\r\n\r\nx\r\n")
        s.server(b"220 mx.test\r\n")
        self.assertEqual(s.server(b"502 5.5.1 what\r\n"), b"HELO client.test\r\n")
        self.assertEqual(s.server(b"250 mx.test\r\n"), b"MAIL FROM:<alice@a.example>\r\n")

    def test_ehloTemporaryFailure(self) -> None:
        """EHLO answered 4xx: the session fails (try another server)."""
        s = Session()
        d = s.deliver(envelope("bob@b.example"))
        s.server(b"220 mx.test\r\n")
        s.server(b"451 4.3.0 busy\r\n")
        f = self.failureResultOf(d, SessionFailed)
        self.assertTrue(f.value.tryNext)
        self.assertEqual(f.value.reply.code, 451)

    def test_greetingRefused(self) -> None:
        """A 554 greeting: QUIT; the session fails with that very reply, permanent for this host."""
        s = Session()
        d = s.deliver(envelope("bob@b.example"))
        self.assertEqual(s.server(b"554 5.7.1 go away\r\n"), b"QUIT\r\n")
        f = self.failureResultOf(d, SessionFailed)
        self.assertEqual(f.value.reply, Reply(554, (5, 7, 1), "go away"))
        self.assertTrue(f.value.permanent)
        self.assertTrue(f.value.tryNext)

    def test_greeting4xx(self) -> None:
        """A 4xx greeting (not 421): QUIT; the server's own reply, temporary."""
        s = Session()
        d = s.deliver(envelope("bob@b.example"))
        self.assertEqual(s.server(b"450 4.3.2 later\r\n"), b"QUIT\r\n")
        f = self.failureResultOf(d, SessionFailed)
        self.assertEqual(f.value.reply, Reply(450, (4, 3, 2), "later"))
        self.assertFalse(f.value.permanent)

    def test_heloRefused(self) -> None:
        """EHLO and HELO both answered 500 (an LMTP server): the server's 500, permanent, QUIT."""
        s = Session()
        d = s.deliver(envelope("bob@b.example"))
        s.server(b"220 lmtp.test LMTP\r\n")
        self.assertEqual(s.server(b"500 5.5.1 Unknown command\r\n"), b"HELO client.test\r\n")
        self.assertEqual(s.server(b"500 5.5.1 Unknown command\r\n"), b"QUIT\r\n")
        f = self.failureResultOf(d, SessionFailed)
        self.assertEqual(f.value.reply, Reply(500, (5, 5, 1), "Unknown command"))
        self.assertTrue(f.value.permanent)
        self.assertTrue(f.value.tryNext)

    def test_heloRefusedNoEnhancedCode(self) -> None:
        """HELO refused without an enhanced code: the reply is kept as sent (no code added)."""
        s = Session()
        d = s.deliver(envelope("bob@b.example"))
        s.server(b"220 mx.test\r\n")
        s.server(b"502 not here\r\n")
        s.server(b"501-no\r\n501 really not\r\n")
        f = self.failureResultOf(d, SessionFailed)
        self.assertEqual(f.value.reply, Reply(501, None, ("no", "really not")))

    def test_heloTemporary(self) -> None:
        """EHLO refused, HELO answered 4xx or 421: the server's own reply, temporary."""
        for line, reply in ((b"451 4.3.0 try later", Reply(451, (4, 3, 0), "try later")),
                            (b"421 4.3.2 closing", Reply(421, (4, 3, 2), "closing"))):  # fmt: skip
            s = Session()
            d = s.deliver(envelope("bob@b.example"))
            s.server(b"220 mx.test\r\n")
            s.server(b"500 5.5.1 Unknown command\r\n")
            s.server(line + b"\r\n")
            f = self.failureResultOf(d, SessionFailed)
            self.assertEqual(f.value.reply, reply)
            self.assertFalse(f.value.permanent)
            self.assertTrue(f.value.tryNext)

    def test_unexpectedPositiveBeforeMail(self) -> None:
        """A 2xx or 3xx out of place before MAIL is a protocol error (4.5.0), never a success."""
        for replies in ([b"250 hello\r\n"],
                        [b"220 mx.test\r\n", b"220 again\r\n"],
                        [b"220 mx.test\r\n", b"500 no\r\n", b"354 what\r\n"]):  # fmt: skip
            s = Session()
            d = s.deliver(envelope("bob@b.example"))
            for data in replies:
                s.server(data)
            f = self.failureResultOf(d, SessionFailed)
            self.assertEqual((f.value.reply.code, f.value.reply.enhanced), (451, (4, 5, 0)))
            self.assertIn(replies[-1].decode().strip(), f.value.reply.text)
            self.assertFalse(f.value.permanent)

    def test_greeting421(self) -> None:
        """A 421 greeting fails the session without a QUIT."""
        s = Session()
        d = s.deliver(envelope("bob@b.example"))
        self.assertEqual(s.server(b"421 4.3.2 busy\r\n"), b"")
        self.assertEqual(self.failureResultOf(d, SessionFailed).value.reply.code, 421)

    def test_connectionLostBeforeMail(self) -> None:
        """The connection lost before MAIL: SessionFailed, so another server may be tried."""
        s = Session()
        d = s.deliver(envelope("bob@b.example"))
        s.proto.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(self.failureResultOf(d, SessionFailed).value.tryNext)

    def test_connectionLostAfterRcpt(self) -> None:
        """Lost after RCPT was accepted: that recipient gets 421 4.4.2 (try later)."""
        s = Session()
        s.deliver(envelope("bob@b.example", "carol@b.example"))
        s.greet()
        s.server(b"250 ok\r\n")
        s.server(b"550 5.1.1 no\r\n")
        s.proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(s.codes(), [(550, (5, 1, 1)), (421, (4, 4, 2))])

    def test_connectionLostAwaitingFinalReply(self) -> None:
        """Lost after the data was sent: accepted recipients get our 421 4.4.2 saying so; a refusal stays."""
        s = Session()
        s.deliver(envelope("bob@b.example", "nobody@b.example", "carol@b.example"))
        s.greet("PIPELINING")
        s.server(b"250 ok\r\n250 ok\r\n550 5.1.1 no such user\r\n250 ok\r\n354 go\r\n")
        self.assertEqual(s.results, [])
        s.proto.connectionLost(Failure(ConnectionDone()))
        [result] = s.results
        lost = result.replies[0]
        self.assertEqual((lost.code, lost.enhanced), (421, (4, 4, 2)))
        self.assertIn("Connection lost", lost.text)
        self.assertEqual(result.replies, (lost, Reply(550, (5, 1, 1), "no such user"), lost))

    def test_421MidTransaction(self) -> None:
        """A 421 in the middle of a pipelined group: what was not answered gets that very 421."""
        s = Session()
        s.deliver(envelope("nobody@b.example", "bob@b.example", "carol@b.example"))
        s.greet("PIPELINING")
        s.server(b"250 ok\r\n550 5.1.1 no such user\r\n421 4.3.2 shutting down\r\n")
        closing = Reply(421, (4, 3, 2), "shutting down")
        self.assertEqual(
            s.results[0].replies, (Reply(550, (5, 1, 1), "no such user"), closing, closing)
        )

    def test_deliverAfterEnd(self) -> None:
        """A message given to a closed session fails at once."""
        s = Session()
        s.proto.connectionLost(Failure(ConnectionDone()))
        self.failureResultOf(s.deliver(envelope("bob@b.example")), SessionFailed)


class ExtensionTests(SynchronousTestCase):
    def mailLine(self, env: Envelope, *keywords: str, message: bytes = MESSAGE) -> bytes:
        s = Session(chunking=False)
        s.deliver(env, message)
        return s.greet(*keywords).split(b"\r\n")[0]

    def test_size(self) -> None:
        """SIZE= is sent when offered."""
        line = self.mailLine(envelope("bob@b.example"), "SIZE 1000")
        self.assertEqual(line, b"MAIL FROM:<alice@a.example> SIZE=%d" % len(MESSAGE))
        self.assertEqual(self.mailLine(envelope("bob@b.example")), b"MAIL FROM:<alice@a.example>")

    def test_overSize(self) -> None:
        """A message over the peer's SIZE is not sent: 552 5.3.4 for every recipient."""
        s = Session()
        s.deliver(envelope("bob@b.example", "carol@b.example"))
        self.assertEqual(s.greet("SIZE 10"), b"QUIT\r\n")
        self.assertEqual(s.codes(), [(552, (5, 3, 4))] * 2)
        self.assertEqual(s.results[0].remote, (None, None))

    def test_eightBit(self) -> None:
        """BODY=8BITMIME for an 8-bit message when offered; without it the message goes as is."""
        eight = b"Subject: caf\xc3\xa9\r\n\r\nx\r\n"
        line = self.mailLine(envelope("bob@b.example"), "8BITMIME", message=eight)
        self.assertEqual(line, b"MAIL FROM:<alice@a.example> BODY=8BITMIME")
        line = self.mailLine(envelope("bob@b.example", BODY="8BITMIME"), "8BITMIME")
        self.assertEqual(line, b"MAIL FROM:<alice@a.example> BODY=8BITMIME")
        self.assertEqual(self.mailLine(envelope("bob@b.example"), "8BITMIME"),
                         b"MAIL FROM:<alice@a.example>")  # fmt: skip
        self.assertEqual(self.mailLine(envelope("bob@b.example"), message=eight),
                         b"MAIL FROM:<alice@a.example>")  # fmt: skip

    def test_smtputf8(self) -> None:
        """A UTF-8 address goes with SMTPUTF8 when offered."""
        line = self.mailLine(envelope("bøb@b.example"), "SMTPUTF8")
        self.assertEqual(line, b"MAIL FROM:<alice@a.example> SMTPUTF8")
        line = self.mailLine(envelope("bob@b.example", SMTPUTF8=None), "SMTPUTF8")
        self.assertEqual(line, b"MAIL FROM:<alice@a.example> SMTPUTF8")

    def test_noSMTPUTF8(self) -> None:
        """Without SMTPUTF8 the UTF-8 recipients fail 553 5.6.7; the others are sent."""
        s = Session()
        s.deliver(envelope("bøb@b.example", "bob@b.example"))
        self.assertEqual(s.greet(), b"MAIL FROM:<alice@a.example>\r\n")
        self.assertEqual(s.server(b"250 ok\r\n"), b"RCPT TO:<bob@b.example>\r\n")
        s.server(b"250 ok\r\n")
        s.server(b"354 go\r\n")
        s.server(b"250 ok\r\n")
        self.assertEqual(s.codes(), [(553, (5, 6, 7)), (250, None)])

    def test_noSMTPUTF8Envelope(self) -> None:
        """A transaction that needs SMTPUTF8 (UTF-8 sender or the parameter) fails whole without it."""
        for env in (envelope("bob@b.example", sender="ålice@a.example"),
                    envelope("bob@b.example", SMTPUTF8=None)):  # fmt: skip
            s = Session()
            s.deliver(env)
            self.assertEqual(s.greet("8BITMIME"), b"QUIT\r\n")
            self.assertEqual(s.codes(), [(553, (5, 6, 7))])

    def test_dsn(self) -> None:
        """DSN parameters go on when DSN is offered, else are dropped; SMTPResult.dsn tells which."""
        env = envelope("bob@b.example", RET="HDRS", ENVID="Q1")
        env.recipients[0] = Recipient(
            env.recipients[0].address,
            {"NOTIFY": "SUCCESS,FAILURE", "ORCPT": "rfc822;bob@b.example"},
        )
        s = Session()
        s.deliver(env)
        self.assertEqual(s.greet("DSN"), b"MAIL FROM:<alice@a.example> RET=HDRS ENVID=Q1\r\n")
        self.assertEqual(s.server(b"250 ok\r\n"),
                         b"RCPT TO:<bob@b.example> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob@b.example\r\n")  # fmt: skip
        s.server(b"250 ok\r\n")
        s.server(b"354 go\r\n")
        s.server(b"250 ok\r\n")
        self.assertEqual(s.results[0].dsn, (True,))
        s = Session()
        s.deliver(env)
        self.assertEqual(s.greet(), b"MAIL FROM:<alice@a.example>\r\n")
        self.assertEqual(s.server(b"250 ok\r\n"), b"RCPT TO:<bob@b.example>\r\n")
        s.server(b"250 ok\r\n")
        s.server(b"354 go\r\n")
        s.server(b"250 ok\r\n")
        self.assertEqual(s.results[0].dsn, (False,))

    def test_bdat(self) -> None:
        """With CHUNKING the message goes by BDAT, unstuffed, in chunks of chunkSize."""
        s = Session(chunkSize=20)
        s.deliver(envelope("bob@b.example"))
        s.greet("CHUNKING", "PIPELINING")
        self.assertEqual(s.server(b"250 ok\r\n250 ok\r\n"), b"BDAT 20\r\n" + MESSAGE[:20])
        self.assertEqual(s.server(b"250 2.0.0 20 octets\r\n"), b"BDAT 20\r\n" + MESSAGE[20:40])
        self.assertEqual(
            s.server(b"250 ok\r\n"), b"BDAT %d LAST\r\n" % len(MESSAGE[40:]) + MESSAGE[40:]
        )
        self.assertEqual(s.server(b"250 2.0.0 queued\r\n"), b"QUIT\r\n")
        self.assertEqual(s.codes(), [(250, (2, 0, 0))])

    def test_bdatRefused(self) -> None:
        """A refused chunk fails the accepted recipients with its reply."""
        s = Session()
        s.deliver(envelope("bob@b.example"))
        s.greet("CHUNKING")
        s.server(b"250 ok\r\n")
        self.assertTrue(s.server(b"250 ok\r\n").startswith(b"BDAT %d LAST\r\n" % len(MESSAGE)))
        s.server(b"554 5.6.0 bad\r\n")
        self.assertEqual(s.codes(), [(554, (5, 6, 0))])

    def test_binaryMIME(self) -> None:
        """BINARYMIME goes by BDAT with BODY=BINARYMIME, or fails 554 5.6.3."""
        env = envelope("bob@b.example", BODY="BINARYMIME")
        s = Session()
        s.deliver(env, b"x\x00\ny")
        self.assertEqual(s.greet("CHUNKING", "BINARYMIME", "8BITMIME"),
                         b"MAIL FROM:<alice@a.example> BODY=BINARYMIME\r\n")  # fmt: skip
        s.server(b"250 ok\r\n")
        self.assertEqual(s.server(b"250 ok\r\n"), b"BDAT 4 LAST\r\nx\x00\ny")
        for keywords in (("CHUNKING",), ("8BITMIME", "PIPELINING")):
            s = Session()
            s.deliver(env, b"x\x00\ny")
            self.assertEqual(s.greet(*keywords), b"QUIT\r\n")
            self.assertEqual(s.codes(), [(554, (5, 6, 3))])

    def test_bareLineEndingsNeedBDAT(self) -> None:
        """A bare LF is never sent in DATA: BDAT when offered, else 554 5.6.3."""
        message = b"Subject: x\r\n\r\na\n.\r\nb\r\n"
        s = Session(chunking=False)
        s.deliver(envelope("bob@b.example"), message)
        s.greet("CHUNKING")
        s.server(b"250 ok\r\n")
        self.assertEqual(s.server(b"250 ok\r\n"), b"BDAT %d LAST\r\n" % len(message) + message)
        s = Session()
        s.deliver(envelope("bob@b.example"), message)
        self.assertEqual(s.greet("PIPELINING", "8BITMIME"), b"QUIT\r\n")
        self.assertEqual(s.codes(), [(554, (5, 6, 3))])

    def test_noPipeliningOption(self) -> None:
        """pipelining=False sends one command at a time even when offered."""
        s = Session(pipelining=False)
        s.deliver(envelope("bob@b.example"))
        self.assertEqual(s.greet("PIPELINING"), b"MAIL FROM:<alice@a.example>\r\n")


class TLSAndAuthTests(SynchronousTestCase):
    def test_startTLSInjection(self) -> None:
        """STARTTLS when offered; lines pipelined after the 220 are dropped; EHLO again after."""
        s = Session()
        s.deliver(envelope("bob@b.example"))
        self.assertEqual(s.greet("STARTTLS", "PIPELINING"), b"STARTTLS\r\n")
        out = s.server(b"220 2.0.0 go\r\n250-mx.test\r\n250 PIPELINING\r\n")
        self.assertEqual(out, b"")
        self.assertIsNotNone(s.transport.tlsCreator)
        s.proto.handshakeCompleted()
        self.assertEqual(s.transport.value(), b"EHLO client.test\r\n")
        self.assertEqual(s.proto.tls.version, "TLS")  # type: ignore[union-attr]
        out = s.server(ehlo("SIZE 100000"))
        self.assertEqual(out, b"MAIL FROM:<alice@a.example> SIZE=%d\r\n" % len(MESSAGE))

    def test_opportunisticNotOffered(self) -> None:
        """Opportunistic TLS without STARTTLS offered: plain delivery."""
        s = Session()
        s.deliver(envelope("bob@b.example"))
        self.assertEqual(s.greet(), b"MAIL FROM:<alice@a.example>\r\n")
        self.assertIsNone(s.transport.tlsCreator)

    def test_opportunisticRefused(self) -> None:
        """Opportunistic TLS and STARTTLS refused: on in clear."""
        s = Session()
        s.deliver(envelope("bob@b.example"))
        s.greet("STARTTLS")
        self.assertEqual(s.server(b"454 4.7.0 no\r\n"), b"MAIL FROM:<alice@a.example>\r\n")

    def test_noneNeverStartsTLS(self) -> None:
        """Policy none ignores STARTTLS."""
        s = Session(tls="none")
        s.deliver(envelope("bob@b.example"))
        self.assertEqual(s.greet("STARTTLS"), b"MAIL FROM:<alice@a.example>\r\n")

    def test_requireNotOffered(self) -> None:
        """Policy require or verify without STARTTLS offered: QUIT, 4.7.4, no message."""
        for policy in ("require", "verify"):
            s = Session(tls=policy)
            d = s.deliver(envelope("bob@b.example"))
            self.assertEqual(s.greet("PIPELINING"), b"QUIT\r\n")
            f = self.failureResultOf(d, SessionFailed)
            self.assertEqual((f.value.reply.code, f.value.reply.enhanced), (421, (4, 7, 4)))

    def test_requireRefused(self) -> None:
        """Policy require and STARTTLS refused: no delivery."""
        s = Session(tls="require")
        d = s.deliver(envelope("bob@b.example"))
        s.greet("STARTTLS")
        self.assertEqual(s.server(b"454 4.7.0 no\r\n"), b"QUIT\r\n")
        self.failureResultOf(d, SessionFailed)

    def test_handshakeFails(self) -> None:
        """A failed handshake fails the session with tlsFailed (the relay may retry in clear)."""
        s = Session()
        d = s.deliver(envelope("bob@b.example"))
        s.greet("STARTTLS")
        s.server(b"220 go\r\n")
        s.proto.connectionLost(Failure(ConnectionDone("handshake failure")))
        f = self.failureResultOf(d, SessionFailed)
        self.assertTrue(f.value.tlsFailed)
        self.assertEqual(f.value.reply.enhanced, (4, 7, 5))

    def tlsSession(self, *keywords: str, **options: Any) -> tuple[Session, defer.Deferred[Any]]:
        s = Session(credentials=Credentials("alice", "sécret"), **options)
        d = s.deliver(envelope("bob@b.example"))
        s.greet("STARTTLS")
        s.server(b"220 go\r\n")
        s.proto.handshakeCompleted()
        s.transport.clear()
        return s, d

    def test_authPlain(self) -> None:
        """AUTH PLAIN with an initial response inside TLS, then the message."""
        s, _ = self.tlsSession()
        out = s.server(ehlo("AUTH LOGIN PLAIN"))
        token = base64.b64encode("\0alice\0sécret".encode()).decode()
        self.assertEqual(out, f"AUTH PLAIN {token}\r\n".encode())
        self.assertEqual(s.server(b"235 2.7.0 ok\r\n"), b"MAIL FROM:<alice@a.example>\r\n")

    def test_authLogin(self) -> None:
        """AUTH LOGIN when PLAIN is not offered: user, then password, in base64."""
        s, _ = self.tlsSession()
        self.assertEqual(s.server(ehlo("AUTH=LOGIN")), b"AUTH LOGIN\r\n")
        self.assertEqual(s.server(b"334 VXNlcm5hbWU6\r\n"), b"YWxpY2U=\r\n")
        self.assertEqual(s.server(b"334 UGFzc3dvcmQ6\r\n"),
                         base64.b64encode("sécret".encode()) + b"\r\n")  # fmt: skip
        self.assertEqual(s.server(b"235 ok\r\n"), b"MAIL FROM:<alice@a.example>\r\n")

    def test_authFails(self) -> None:
        """A refused AUTH is our own 4xx (retry later) quoting the server's reply, not a made-up 435."""
        s, d = self.tlsSession()
        s.server(ehlo("AUTH PLAIN"))
        self.assertEqual(s.server(b"535 5.7.8 bad credentials\r\n"), b"QUIT\r\n")
        f = self.failureResultOf(d, SessionFailed)
        self.assertEqual((f.value.reply.code, f.value.reply.enhanced), (451, (4, 7, 0)))
        self.assertIn("AUTH", f.value.reply.text)
        self.assertIn("535 5.7.8 bad credentials", f.value.reply.text)
        self.assertFalse(f.value.permanent)

    def test_authFailsTemporarily(self) -> None:
        """A 4xx to AUTH is kept as the server sent it."""
        s, d = self.tlsSession()
        s.server(ehlo("AUTH PLAIN"))
        s.server(b"454 4.7.0 try later\r\n")
        f = self.failureResultOf(d, SessionFailed)
        self.assertEqual(f.value.reply, Reply(454, (4, 7, 0), "try later"))

    def test_multiLineRefusalQuoted(self) -> None:
        """A multi-line STARTTLS refusal (TLS required) is quoted on one line, not a local error."""
        s = Session(tls="require")
        d = s.deliver(envelope("bob@b.example"))
        s.greet("STARTTLS")
        self.assertEqual(s.server(b"454-4.7.0 no\r\n454 4.7.0 not now\r\n"), b"QUIT\r\n")
        f = self.failureResultOf(d, SessionFailed)
        self.assertEqual(f.value.reply.enhanced, (4, 7, 4))
        self.assertIn("454 4.7.0 no not now", f.value.reply.text)

    def test_noAuthOffered(self) -> None:
        """Credentials set and no AUTH PLAIN/LOGIN offered: no message, 4.7.0."""
        s, d = self.tlsSession()
        self.assertEqual(s.server(ehlo("AUTH CRAM-MD5")), b"QUIT\r\n")
        self.assertEqual(self.failureResultOf(d, SessionFailed).value.reply.enhanced, (4, 7, 0))

    def test_noCredentialsInClear(self) -> None:
        """AUTH outside TLS is not attempted unless authPlaintext says so."""
        s = Session(tls="none", credentials=Credentials("alice", "secret"))
        d = s.deliver(envelope("bob@b.example"))
        self.assertEqual(s.greet("AUTH PLAIN"), b"QUIT\r\n")
        self.assertEqual(self.failureResultOf(d, SessionFailed).value.reply.enhanced, (4, 7, 10))
        s = Session(tls="none", credentials=Credentials("alice", "secret"), authPlaintext=True)
        s.deliver(envelope("bob@b.example"))
        self.assertTrue(s.greet("AUTH PLAIN").startswith(b"AUTH PLAIN "))


class TimeoutTests(SynchronousTestCase):
    def test_greetingTimeout(self) -> None:
        """No greeting in 5 minutes: the session fails (another server may be tried)."""
        s = Session()
        d = s.deliver(envelope("bob@b.example"))
        s.clock.advance(299)
        self.assertNoResult(d)
        s.clock.advance(1)
        f = self.failureResultOf(d, SessionFailed)
        self.assertEqual((f.value.reply.code, f.value.reply.enhanced), (421, (4, 4, 2)))
        self.assertTrue(s.transport.aborted)

    def test_rcptTimeout(self) -> None:
        """No reply to RCPT in time: unanswered recipients get 421 4.4.2."""
        s = Session(timeouts=Timeouts(rcpt=10))
        s.deliver(envelope("bob@b.example"))
        s.greet()
        s.server(b"250 ok\r\n")
        s.clock.advance(10)
        self.assertEqual(s.codes(), [(421, (4, 4, 2))])

    def test_dataTimeouts(self) -> None:
        """DATA initiation (2 min) and termination (10 min) have their own timeouts."""
        s = Session()
        s.deliver(envelope("bob@b.example"))
        s.greet("PIPELINING")
        s.server(b"250 ok\r\n250 ok\r\n")
        s.clock.advance(119)
        s.server(b"354 go\r\n")
        s.clock.advance(599)
        self.assertEqual(s.results, [])
        s.clock.advance(1)
        self.assertEqual(s.codes(), [(421, (4, 4, 2))])

    def test_dataBlockTimeout(self) -> None:
        """Message data the server does not take for 3 minutes times out; a block sent restarts it."""
        s = Session()
        s.deliver(envelope("bob@b.example"))
        s.greet("PIPELINING")
        s.transport.pauseOnRegister = True
        s.server(b"250 ok\r\n250 ok\r\n354 go\r\n")
        self.assertEqual(s.transport.value(), b"")
        s.clock.advance(179)
        s.transport.pauseOnRegister = False
        s.transport.producer.resumeProducing()  # the transport took it all: the final dot is awaited
        self.assertTrue(s.transport.value().endswith(b"body\r\n.\r\n"))
        s.clock.advance(599)
        self.assertEqual(s.results, [])
        s = Session()
        s.deliver(envelope("bob@b.example"))
        s.greet("PIPELINING")
        s.transport.pauseOnRegister = True
        s.server(b"250 ok\r\n250 ok\r\n354 go\r\n")
        s.clock.advance(180)
        self.assertEqual(s.codes(), [(421, (4, 4, 2))])

    def test_mailTimeoutBeforeAnyReply(self) -> None:
        """MAIL unanswered: nothing was said about the message, so the session fails."""
        s = Session(timeouts=Timeouts(mail=5))
        d = s.deliver(envelope("bob@b.example"))
        s.greet()
        s.clock.advance(5)
        self.assertTrue(self.failureResultOf(d, SessionFailed).value.tryNext)


class MalformedReplyTests(SynchronousTestCase):
    def test_malformedMidTransaction(self) -> None:
        """A malformed reply ends the attempt cleanly: 451 4.5.0 for those not yet answered."""
        s = Session()
        s.deliver(envelope("bob@b.example", "carol@b.example"))
        s.greet("PIPELINING")
        s.server(b"250 ok\r\n550 5.1.1 no\r\nnonsense\r\n")
        self.assertEqual(s.codes(), [(550, (5, 1, 1)), (451, (4, 5, 0))])
        self.assertTrue(s.transport.aborted)

    def test_outOfStep(self) -> None:
        """A 2xx to DATA or a 3xx to the final dot is never taken as delivery: 451 4.5.0."""
        for replies in ([b"250 ok\r\n250 ok\r\n250 taken?\r\n"],
                        [b"250 ok\r\n250 ok\r\n354 go\r\n", b"354 again\r\n"],
                        [b"250 ok\r\n354 what\r\n"]):  # fmt: skip
            s = Session()
            s.deliver(envelope("bob@b.example"))
            s.greet("PIPELINING")
            for data in replies:
                s.server(data)
            self.assertEqual(s.codes(), [(451, (4, 5, 0))])
            self.assertTrue(s.transport.aborted)

    def test_other2xx(self) -> None:
        """Any 2xx to MAIL or RCPT accepts (251, 252 ...)."""
        s = Session()
        s.deliver(envelope("bob@b.example"))
        s.greet("PIPELINING")
        s.server(b"251 ok\r\n252 forwarded\r\n354 go\r\n250 done\r\n")
        self.assertEqual(s.codes(), [(250, None)])

    def test_overlongReply(self) -> None:
        """An over-long reply line before MAIL fails the session (another server may do better)."""
        s = Session()
        d = s.deliver(envelope("bob@b.example"))
        s.server(b"220 " + b"x" * 600)
        f = self.failureResultOf(d, SessionFailed)
        self.assertEqual(f.value.reply.enhanced, (4, 5, 0))


class ReuseTests(SynchronousTestCase):
    def test_twoMessages(self) -> None:
        """Two messages over one connection: RSET between them, one QUIT at the end."""
        s = Session()
        s.deliver(envelope("bob@b.example"))
        s.deliver(envelope("carol@c.example"))
        s.greet("PIPELINING")
        s.server(b"250 ok\r\n250 ok\r\n354 go\r\n")
        self.assertEqual(s.server(b"250 first\r\n"), b"RSET\r\n")
        self.assertIn(b"RCPT TO:<carol@c.example>", s.server(b"250 reset\r\n"))
        s.server(b"250 ok\r\n250 ok\r\n354 go\r\n")
        self.assertEqual(s.server(b"250 second\r\n"), b"QUIT\r\n")
        self.assertEqual([r.replies[0].text for r in s.results], ["first", "second"])

    def test_keepAlive(self) -> None:
        """With keepAlive an idle session waits for more, then QUITs when the time is up."""
        s = Session(keepAlive=30)
        idle: list[Any] = []
        s.proto.onIdle = idle.append
        s.deliver(envelope("bob@b.example"))
        s.greet("PIPELINING")
        s.server(b"250 ok\r\n250 ok\r\n354 go\r\n")
        self.assertEqual(s.server(b"250 ok\r\n"), b"")
        self.assertEqual(idle, [s.proto])
        self.assertTrue(s.proto.idle)
        s.transport.clear()
        s.deliver(envelope("carol@c.example"))
        self.assertEqual(s.transport.value(), b"RSET\r\n")
        s.server(b"250 ok\r\n")
        s.server(b"250 ok\r\n250 ok\r\n354 go\r\n")
        s.server(b"250 ok\r\n")
        s.transport.clear()
        s.clock.advance(30)
        self.assertEqual(s.transport.value(), b"QUIT\r\n")

    def test_idleFollowsTheCore(self) -> None:
        """idle is read from the core: never before EHLO, in STARTTLS, AUTH or a message."""
        s = Session(keepAlive=30, credentials=Credentials("alice", "pw"))
        self.assertFalse(s.proto.idle)  # the greeting is awaited
        s.server(b"220 mx.test ESMTP\r\n")
        self.assertFalse(s.proto.idle)  # EHLO is awaited
        s.server(ehlo("STARTTLS", "AUTH PLAIN", "PIPELINING"))
        self.assertFalse(s.proto.idle)  # STARTTLS is awaited
        s.server(b"220 go\r\n")
        self.assertFalse(s.proto.idle)  # the handshake: EHLO must come again
        self.assertEqual(s.transport.value(), b"")
        s.proto.handshakeCompleted()
        s.proto.handshakeCompleted()  # once only: EHLO is then awaited
        self.assertEqual(s.transport.value(), b"EHLO client.test\r\n")
        s.server(ehlo("AUTH PLAIN", "PIPELINING"))
        self.assertFalse(s.proto.idle)  # AUTH is awaited
        s.server(b"235 ok\r\n")
        self.assertTrue(s.proto.idle)
        s.deliver(envelope("bob@b.example"))
        self.assertFalse(s.proto.idle)
        s.server(b"250 ok\r\n250 ok\r\n354 go\r\n")
        self.assertFalse(s.proto.idle)  # the final reply is awaited
        s.server(b"250 ok\r\n")
        self.assertTrue(s.proto.idle)
        self.assertEqual(s.proto.messagesSent, 1)

    def test_handshakeTimeout(self) -> None:
        """The handshake timer runs while the TLS handshake is under way, not before or after."""
        s = Session(timeouts=Timeouts(handshake=10))
        d = s.deliver(envelope("bob@b.example"))
        s.greet("STARTTLS")
        s.server(b"220 go\r\n")
        s.clock.advance(9)
        self.assertNoResult(d)
        s.clock.advance(1)
        f = self.failureResultOf(d, SessionFailed)
        self.assertTrue(f.value.tlsFailed)

    def test_rsetRefused(self) -> None:
        """A refused RSET ends the session (temporary, the reply quoted); the message may go elsewhere."""
        s = Session()
        s.deliver(envelope("bob@b.example"))
        d = s.deliver(envelope("carol@c.example"))
        s.greet()
        s.server(b"250 ok\r\n")
        s.server(b"250 ok\r\n")
        s.server(b"354 go\r\n")
        s.server(b"250 ok\r\n")
        self.assertEqual(s.server(b"500 what\r\n"), b"QUIT\r\n")
        f = self.failureResultOf(d, SessionFailed)
        self.assertEqual(f.value.reply.code // 100, 4)
        self.assertIn("500 what", f.value.reply.text)
        self.assertFalse(f.value.permanent)

    def test_unsolicited421WhileIdle(self) -> None:
        """A 421 while idle ends the session."""
        s = Session(keepAlive=30)
        s.deliver(envelope("bob@b.example"))
        s.greet("PIPELINING")
        s.server(b"250 ok\r\n250 ok\r\n354 go\r\n250 ok\r\n")
        s.server(b"421 4.4.2 idle too long\r\n")
        self.assertFalse(s.proto.usable)
        self.failureResultOf(s.deliver(envelope("x@c.example")), SessionFailed)


class FakeEndpoint:
    """An endpoint that connects to a recording transport, or fails."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.fail = fail
        self.protocol: Any = None
        self.transport = Transport()

    def connect(self, factory: Any) -> defer.Deferred[Any]:
        if self.fail is not None:
            return defer.fail(self.fail)
        self.protocol = factory.buildProtocol(None)
        self.protocol.makeConnection(self.transport)
        return defer.succeed(self.protocol)


class SendMessageTests(SynchronousTestCase):
    def test_sendMessage(self) -> None:
        """sendMessage connects, sends, and fires with one reply per recipient."""
        endpoint = FakeEndpoint()
        clock = task.Clock()
        d = sendMessage(endpoint, envelope("bob@b.example"), MESSAGE, reactor=clock, name="mx")
        endpoint.protocol.dataReceived(b"220 mx\r\n" + ehlo("PIPELINING"))
        endpoint.protocol.dataReceived(b"250 ok\r\n250 ok\r\n354 go\r\n250 2.0.0 done\r\n")
        result = self.successResultOf(d)
        self.assertEqual(result.replies[0].text, "done")
        self.assertEqual(result.remote, ("mx",))

    def test_connectionRefused(self) -> None:
        """A refused connection is 421 4.4.1 for every recipient."""
        d = sendMessage(FakeEndpoint(ConnectionRefusedError()), envelope("b@b.example", "c@b.example"),
                        MESSAGE, reactor=task.Clock())  # fmt: skip
        result = self.successResultOf(d)
        self.assertEqual([(r.code, r.enhanced) for r in result.replies], [(421, (4, 4, 1))] * 2)

    def test_sessionFailureIsAResult(self) -> None:
        """A failed session is a result, never a failure: 4xx, or the server's 5xx refusal."""
        endpoint = FakeEndpoint()
        d = sendMessage(endpoint, envelope("bob@b.example"), MESSAGE, reactor=task.Clock())
        endpoint.protocol.dataReceived(b"450 4.3.2 later\r\n")
        self.assertEqual(self.successResultOf(d).replies, (Reply(450, (4, 3, 2), "later"),))
        endpoint = FakeEndpoint()
        d = sendMessage(endpoint, envelope("bob@b.example"), MESSAGE, reactor=task.Clock())
        endpoint.protocol.dataReceived(b"554 5.7.1 no\r\n")
        self.assertEqual(self.successResultOf(d).replies, (Reply(554, (5, 7, 1), "no"),))

    def test_heloRefusedIsPermanent(self) -> None:
        """The only server refuses EHLO and HELO with 500: every recipient gets that 500."""
        endpoint = FakeEndpoint()
        d = sendMessage(endpoint, envelope("b@b.example", "c@b.example"), MESSAGE,
                        reactor=task.Clock(), name="lmtp")  # fmt: skip
        endpoint.protocol.dataReceived(b"220 lmtp\r\n500 5.5.1 Unknown command\r\n")
        endpoint.protocol.dataReceived(b"500 5.5.1 Unknown command\r\n")
        result = self.successResultOf(d)
        self.assertEqual(result.replies, (Reply(500, (5, 5, 1), "Unknown command"),) * 2)
        self.assertEqual(result.remote, ("lmtp", "lmtp"))

    def test_tlsCreators(self) -> None:
        """Each policy's TLS creator provides IOpenSSLClientConnectionCreator; SNI names the host."""
        for policy in ("opportunistic", "require", "verify"):
            verifyObject(IOpenSSLClientConnectionCreator, clientTLS(policy, "mx.example"))
        connection = clientTLS("opportunistic", "mx.example").clientConnectionForTLS(None)
        self.assertEqual(connection.get_servername(), b"mx.example")
        connection = clientTLS("require", "192.0.2.1").clientConnectionForTLS(None)
        self.assertIsNone(connection.get_servername())
        self.assertIs(clientTLS("verify", "mx.example"), clientTLS("verify", "MX.example"))
        self.assertIsNot(clientTLS("verify", "mx.example"), clientTLS("require", "mx.example"))

    def test_options(self) -> None:
        """Bad options are refused when made."""
        self.assertRaises(ValueError, ClientOptions, tls="sometimes")
        self.assertRaises(ValueError, Timeouts, rcpt=0)
        self.assertNotIn("secret", repr(Credentials("u", "secret")))
