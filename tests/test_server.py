"""
Tests for L{mailframe.server.protocol}: the Twisted glue between the sans-IO core and
the plug points, in memory (StringTransport and a fake clock; no sleeps).
"""

from __future__ import annotations

from ipaddress import ip_network
from typing import Any

from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from mailframe import reply as R
from mailframe.backends.memory import MemoryBackend
from mailframe.config import ServerConfig
from mailframe.envelope import DeliveryResult, Envelope, Recipient, SessionInfo
from mailframe.extensions import Extension, defaultExtensions
from mailframe.interfaces import (
    IAddressVerifier,
    IConnectionFilter,
    IDeliveryBackend,
    IExtension,
    IHeloValidator,
    ILocalDomains,
    IMessageFilter,
    IRecipientValidator,
    ISenderValidator,
)
from mailframe.message import Message
from mailframe.protocol import Limits
from mailframe.reply import Reply, SMTPError
from mailframe.server import SMTPServerFactory, SMTPServerProtocol
from tests._transports import CountingTransport, TLSTransport


@implementer(IRecipientValidator)
class SlowValidator:
    """Accepts recipients whose local part is not 'bad', after C{delay} seconds."""

    def __init__(self, clock: MemoryReactorClock, delay: float = 1.0) -> None:
        self.clock = clock
        self.delay = delay
        self.asked: list[str] = []

    def validateRecipient(
        self, session: SessionInfo, envelope: Envelope, recipient: Recipient
    ) -> Any:
        self.asked.append(str(recipient.address))
        d: defer.Deferred[Any] = defer.Deferred()
        if recipient.address.localPart == "bad":
            self.clock.callLater(self.delay, d.errback, SMTPError(550, (5, 1, 1), "bad user"))
        else:
            self.clock.callLater(self.delay, d.callback, R.RECIPIENT_OK)
        return d


@implementer(IRecipientValidator)
class Listed:
    """Accepts the listed local parts; no opinion on others."""

    def __init__(self, *names: str) -> None:
        self.names = names

    def validateRecipient(
        self, session: SessionInfo, envelope: Envelope, recipient: Recipient
    ) -> Any:
        return R.RECIPIENT_OK if recipient.address.localPart in self.names else None


def codes(data: bytes) -> list[str]:
    """The final-line codes of a run of replies, with enhanced codes."""
    out = []
    for line in data.split(b"\r\n"):
        if line[3:4] == b" " or (len(line) == 3 and line.isdigit()):
            words = line.decode().split(" ")
            code = words[0]
            if len(words) > 1 and words[1][:1].isdigit() and words[1].count(".") == 2:
                code += " " + words[1]
            out.append(code)
    return out


class ServerTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.backend = MemoryBackend()

    def connect(
        self,
        validators: list[Any] | None = None,
        **kwargs: Any,
    ) -> tuple[SMTPServerProtocol, CountingTransport]:
        config = kwargs.pop(
            "config",
            ServerConfig(hostname="mx.test", localDomains=frozenset({"example.com"})),
        )
        factory = SMTPServerFactory(
            config,
            kwargs.pop("backend", self.backend),
            validators=[Listed("user", "a", "b", "c")] if validators is None else validators,
            clock=self.clock,
            **kwargs,
        )
        self.factory = factory
        proto = factory.buildProtocol(None)
        transport = CountingTransport()
        proto.makeConnection(transport)
        return proto, transport

    def talk(self, proto: SMTPServerProtocol, transport: StringTransport, data: bytes) -> bytes:
        transport.clear()
        proto.dataReceived(data)
        return transport.value()


class SessionTests(ServerTestCase):
    def test_greeting(self) -> None:
        """The 220 greeting names the host and goes out at once."""
        _, t = self.connect()
        self.assertEqual(t.value(), b"220 mx.test ESMTP mailframe\r\n")

    def test_ehloAdvertisesExtensions(self) -> None:
        """EHLO lists the built-in extensions, SIZE with its limit."""
        proto, t = self.connect()
        out = self.talk(proto, t, b"EHLO client.test\r\n")
        self.assertTrue(out.startswith(b"250-mx.test greets client.test\r\n"))
        for kw in (
            b"PIPELINING",
            b"SIZE 36700160",
            b"8BITMIME",
            b"ENHANCEDSTATUSCODES",
            b"SMTPUTF8",
            b"CHUNKING",
            b"BINARYMIME",
        ):
            self.assertIn(b"250-" + kw + b"\r\n" if kw != b"BINARYMIME" else b"250 " + kw, out)
        self.assertEqual(proto.session.heloName, "client.test")
        self.assertTrue(proto.session.esmtp)

    def test_helo(self) -> None:
        """HELO gets a one-line 250 and no extensions."""
        proto, t = self.connect()
        self.assertEqual(self.talk(proto, t, b"HELO client\r\n"), b"250 mx.test\r\n")
        self.assertEqual(proto.session.extensions, frozenset())

    def test_fullTransaction(self) -> None:
        """A message is delivered with a Received: header and 250 after the dot."""
        proto, t = self.connect()
        self.talk(proto, t, b"EHLO client.test\r\n")
        out = self.talk(
            proto,
            t,
            b"MAIL FROM:<s@example.org>\r\nRCPT TO:<user@example.com>\r\nDATA\r\n",
        )
        self.assertEqual(codes(out), ["250 2.1.0", "250 2.1.5", "354"])
        out = self.talk(proto, t, b"Subject: hi\r\n\r\nHello\r\n.\r\n")
        self.assertEqual(codes(out), ["250 2.0.0"])
        [stored] = self.backend.messages
        self.assertEqual(stored.envelope.mailFrom.toPath(), "<s@example.org>")
        self.assertEqual(
            [str(r.address) for r in stored.envelope.recipients], ["user@example.com"]
        )
        head, _, rest = stored.data.partition(b"\r\nSubject:")
        self.assertTrue(
            head.startswith(b"Received: from client.test ([192.168.1.1])\r\n\tby mx.test")
        )
        self.assertIn(b"with ESMTP id " + stored.envelope.queueID.encode(), head)
        self.assertIn(b"for <user@example.com>;", head)
        self.assertEqual(rest, b" hi\r\n\r\nHello\r\n")
        self.assertIn(stored.envelope.queueID.encode(), out)

    def test_heloProtocolName(self) -> None:
        """A HELO session's Received: says 'with SMTP'."""
        proto, t = self.connect()
        self.talk(
            proto, t, b"HELO c\r\nMAIL FROM:<>\r\nRCPT TO:<a@example.com>\r\nDATA\r\nx\r\n.\r\n"
        )
        self.assertIn(b"with SMTP id", self.backend.messages[0].data)

    def test_quitCloses(self) -> None:
        """QUIT gets 221 and the connection is closed."""
        proto, t = self.connect()
        out = self.talk(proto, t, b"QUIT\r\n")
        self.assertEqual(out, b"221 mx.test closing connection\r\n")
        self.assertTrue(t.disconnecting)

    def test_relayDenied(self) -> None:
        """A recipient outside the local domains is 550 5.7.1."""
        proto, t = self.connect()
        out = self.talk(
            proto, t, b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<user@elsewhere.example>\r\n"
        )
        self.assertEqual(codes(out)[-1], "550 5.7.1")

    def test_unknownUser(self) -> None:
        """A local recipient no validator accepts is 550 5.1.1."""
        proto, t = self.connect()
        out = self.talk(
            proto, t, b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<nobody@example.com>\r\n"
        )
        self.assertEqual(codes(out)[-1], "550 5.1.1")

    def test_validatorChain(self) -> None:
        """The first validator with an opinion decides; None passes to the next."""
        proto, t = self.connect(validators=[Listed("a"), Listed("b")])
        out = self.talk(
            proto,
            t,
            b"EHLO c\r\nMAIL FROM:<x@b.c>\r\nRCPT TO:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n"
            b"RCPT TO:<c@example.com>\r\n",
        )
        self.assertEqual(codes(out)[-3:], ["250 2.1.5", "250 2.1.5", "550 5.1.1"])

    def test_postmaster(self) -> None:
        """<Postmaster> and postmaster@local are accepted whatever the validators say."""
        proto, t = self.connect(validators=[])
        out = self.talk(
            proto,
            t,
            b"EHLO c\r\nMAIL FROM:<x@b.c>\r\nRCPT TO:<Postmaster>\r\nRCPT TO:<POSTMASTER@example.com>\r\n",
        )
        self.assertEqual(codes(out)[-2:], ["250 2.1.5", "250 2.1.5"])
        self.assertEqual(str(proto.commands.envelope.recipients[0].address), "Postmaster@mx.test")  # type: ignore[union-attr]

    def test_localDomainsFromValidators(self) -> None:
        """A validator providing ILocalDomains makes its domains local."""

        @implementer(IRecipientValidator, ILocalDomains)
        class D:
            domains = ["other.example"]

            def validateRecipient(self, session: Any, envelope: Any, recipient: Any) -> Any:
                return R.RECIPIENT_OK

        proto, t = self.connect(validators=[D()])
        out = self.talk(proto, t, b"EHLO c\r\nMAIL FROM:<x@b.c>\r\nRCPT TO:<u@OTHER.example>\r\n")
        self.assertEqual(codes(out)[-1], "250 2.1.5")

    def test_vrfy(self) -> None:
        """VRFY is 252 unless a validator that is an IAddressVerifier answers."""
        proto, t = self.connect()
        self.assertEqual(codes(self.talk(proto, t, b"EHLO c\r\nVRFY joe\r\n"))[-1], "252 2.5.0")

        @implementer(IRecipientValidator, IAddressVerifier)
        class V(Listed):
            def verifyAddress(self, session: Any, argument: str) -> Any:
                return (
                    Reply(250, (2, 1, 5), f"<{argument}@example.com>")
                    if argument == "joe"
                    else None
                )

        proto, t = self.connect(validators=[V("joe")])
        out = self.talk(proto, t, b"EHLO c\r\nVRFY joe\r\nVRFY ann\r\n")
        self.assertEqual(codes(out)[-2:], ["250 2.1.5", "252 2.5.0"])

    def test_help_expn_noop(self) -> None:
        """HELP is 214, EXPN 502, NOOP 250."""
        proto, t = self.connect()
        out = self.talk(proto, t, b"EHLO c\r\nHELP\r\nEXPN staff\r\nNOOP\r\n")
        self.assertEqual(codes(out)[-3:], ["214 2.0.0", "502 5.5.1", "250 2.0.0"])
        self.assertIn(b"BDAT", out)

    def test_unknownParameter(self) -> None:
        """A MAIL or RCPT parameter no advertised extension owns is 555 5.5.4."""
        proto, t = self.connect()
        out = self.talk(proto, t, b"EHLO c\r\nMAIL FROM:<a@b.c> FOO=bar\r\n")
        self.assertEqual(codes(out)[-1], "555 5.5.4")
        out = self.talk(
            proto, t, b"MAIL FROM:<a@b.c>\r\nRCPT TO:<user@example.com> NOTIFY=NEVER\r\n"
        )
        self.assertEqual(codes(out)[-1], "555 5.5.4")

    def test_paramsNeedEhlo(self) -> None:
        """After HELO no parameter is known: BODY=8BITMIME is 555."""
        proto, t = self.connect()
        out = self.talk(proto, t, b"HELO c\r\nMAIL FROM:<a@b.c> BODY=8BITMIME\r\n")
        self.assertEqual(codes(out)[-1], "555")

    def test_sizeParameter(self) -> None:
        """SIZE= over the limit is 552 5.3.4 at MAIL; a bad SIZE is 501."""
        config = ServerConfig(
            hostname="mx.test",
            localDomains=frozenset({"example.com"}),
            limits=Limits(messageSize=1000),
        )
        proto, t = self.connect(config=config)
        out = self.talk(
            proto,
            t,
            b"EHLO c\r\nMAIL FROM:<a@b.c> SIZE=1001\r\nMAIL FROM:<a@b.c> SIZE=x\r\n"
            b"MAIL FROM:<a@b.c> SIZE=1000\r\n",
        )
        self.assertEqual(codes(out)[-3:], ["552 5.3.4", "501 5.5.4", "250 2.1.0"])
        self.assertIn(b"250-SIZE 1000\r\n", t.writes[1] if len(t.writes) > 1 else out)

    def test_bodyParameter(self) -> None:
        """BODY takes 7BIT, 8BITMIME, and BINARYMIME when advertised."""
        proto, t = self.connect()
        out = self.talk(
            proto,
            t,
            b"EHLO c\r\nMAIL FROM:<a@b.c> BODY=8bitmime\r\nRSET\r\n"
            b"MAIL FROM:<a@b.c> BODY=BINARYMIME\r\nRSET\r\nMAIL FROM:<a@b.c> BODY=9BIT\r\n",
        )
        self.assertEqual(
            codes(out)[-5:], ["250 2.1.0", "250 2.0.0", "250 2.1.0", "250 2.0.0", "501 5.5.4"]
        )

    def test_smtputf8(self) -> None:
        """A UTF-8 transaction is delivered and its Received: says UTF8SMTP."""
        proto, t = self.connect(validators=[Listed("jöe")])
        self.talk(proto, t, b"EHLO c\r\n")
        out = self.talk(
            proto,
            t,
            "MAIL FROM:<ä@b.c> SMTPUTF8\r\nRCPT TO:<jöe@example.com>\r\nDATA\r\nx\r\n.\r\n".encode(),
        )
        self.assertEqual(codes(out), ["250 2.1.0", "250 2.1.5", "354", "250 2.0.0"])
        self.assertIn(b"with UTF8SMTP id", self.backend.messages[0].data)

    def test_smtputf8ValueRefused(self) -> None:
        """SMTPUTF8 takes no value."""
        proto, t = self.connect()
        out = self.talk(proto, t, b"EHLO c\r\nMAIL FROM:<a@b.c> SMTPUTF8=yes\r\n")
        self.assertEqual(codes(out)[-1], "501 5.5.4")

    def test_bdat(self) -> None:
        """A chunked message is delivered through the backend."""
        proto, t = self.connect()
        out = self.talk(
            proto,
            t,
            b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<a@example.com>\r\n"
            b"BDAT 6\r\nab\r\ncdBDAT 2 LAST\r\n\r\n",
        )
        self.assertEqual(codes(out)[-4:], ["250 2.1.0", "250 2.1.5", "250 2.0.0", "250 2.0.0"])
        self.assertTrue(self.backend.messages[0].data.endswith(b"+0000\r\nab\r\ncd\r\n"))
        self.assertIn(b"6 octets received", out)


class PipeliningTests(ServerTestCase):
    def test_slowValidatorKeepsOrder(self) -> None:
        """A validator answering after 1 s does not break a pipelined MAIL/RCPT/RCPT/DATA group."""
        validator = SlowValidator(self.clock)
        proto, t = self.connect(validators=[validator])
        self.talk(proto, t, b"EHLO c\r\n")
        t.clear()
        t.writes.clear()
        proto.dataReceived(
            b"MAIL FROM:<a@b.c>\r\nRCPT TO:<bad@example.com>\r\nRCPT TO:<user@example.com>\r\nDATA\r\n"
        )
        self.assertEqual(t.value(), b"")  # nothing until the whole group is answered
        self.assertEqual(validator.asked, ["bad@example.com"])  # the second RCPT waits
        self.clock.advance(1)
        self.assertEqual(t.value(), b"")
        self.assertEqual(validator.asked, ["bad@example.com", "user@example.com"])
        self.clock.advance(1)
        self.assertEqual(codes(t.value()), ["250 2.1.0", "550 5.1.1", "250 2.1.5", "354"])
        self.assertEqual(len(t.writes), 1)  # one write for the group
        out = self.talk(proto, t, b"body\r\n.\r\n")
        self.assertEqual(codes(out), ["250 2.0.0"])
        self.assertEqual(
            [str(r.address) for r in self.backend.messages[0].envelope.recipients],
            ["user@example.com"],
        )

    def test_dataAfterSlowRefusals(self) -> None:
        """If every pipelined RCPT is refused, DATA is 554 and the body is read as commands."""
        proto, t = self.connect(validators=[SlowValidator(self.clock)])
        self.talk(proto, t, b"EHLO c\r\n")
        t.clear()
        proto.dataReceived(b"MAIL FROM:<a@b.c>\r\nRCPT TO:<bad@example.com>\r\nDATA\r\n")
        self.clock.advance(1)
        self.assertEqual(codes(t.value()), ["250 2.1.0", "550 5.1.1", "554 5.5.1"])

    def test_inputPausedWhileBusy(self) -> None:
        """A client flooding input while a plug point is pending is paused, then resumed."""
        proto, t = self.connect(validators=[SlowValidator(self.clock)])
        self.talk(proto, t, b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<user@example.com>\r\n")
        proto.dataReceived(b"NOOP\r\n" * 60000)
        self.assertEqual(t.producerState, "paused")
        self.clock.advance(1)
        self.assertEqual(t.producerState, "producing")
        self.assertEqual(codes(t.value()).count("250 2.0.0"), 60000)

    def test_pausedByTransport(self) -> None:
        """Paused by its transport the session answers nothing more, yet keeps reading."""
        proto, t = self.connect()
        self.talk(proto, t, b"EHLO c\r\n")
        t.clear()
        proto.pauseProducing()
        proto.dataReceived(b"NOOP\r\nNOOP\r\n")
        self.assertEqual(t.value(), b"")
        self.assertEqual(t.producerState, "producing")  # reading goes on (TLS handshakes)
        proto.dataReceived(b"NOOP\r\n" * 50000)
        self.assertEqual(t.producerState, "paused")  # until the backlog is large
        proto.resumeProducing()
        self.assertEqual(t.producerState, "producing")
        self.assertEqual(codes(t.value()).count("250 2.0.0"), 50002)


class ErrorTests(ServerTestCase):
    def test_tooManyErrors(self) -> None:
        """The maxErrors-th error is answered with 421 alone, and the session closes."""
        config = ServerConfig(
            hostname="mx.test", localDomains=frozenset({"example.com"}), maxErrors=3
        )
        proto, t = self.connect(config=config)
        out = self.talk(proto, t, b"FOO\r\nBAR\r\nBAZ\r\nNOOP\r\n")
        self.assertEqual(codes(out), ["500", "500", "421"])
        self.assertTrue(t.disconnecting)

    def test_outOfSyncAtTheLimit(self) -> None:
        """One command, one reply: out of sync at the error limit is a single 421."""
        config = ServerConfig(
            hostname="mx.test",
            localDomains=frozenset({"example.com"}),
            maxErrors=20,
            enforceSync=True,
        )
        proto, t = self.connect(config=config)
        self.talk(proto, t, b"FOO\r\n" * 19)
        t.clear()
        out = self.talk(proto, t, b"NOOP\r\nNOOP\r\n")
        self.assertEqual(codes(out), ["421"])
        self.assertTrue(t.disconnecting)

    def test_errorCountResetsAfterMessage(self) -> None:
        """An accepted message resets the error count."""
        config = ServerConfig(
            hostname="mx.test", localDomains=frozenset({"example.com"}), maxErrors=2
        )
        proto, t = self.connect(config=config)
        self.talk(
            proto,
            t,
            b"EHLO c\r\nFOO\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<a@example.com>\r\nDATA\r\nx\r\n.\r\nFOO\r\n",
        )
        self.assertFalse(t.disconnecting)

    def test_validatorCrash(self) -> None:
        """A validator raising a non-SMTP error gives 451 4.3.0 and is logged."""

        @implementer(IRecipientValidator)
        class Broken:
            def validateRecipient(self, session: Any, envelope: Any, recipient: Any) -> Any:
                raise RuntimeError("oops")

        proto, t = self.connect(validators=[Broken()])
        out = self.talk(
            proto, t, b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<a@example.com>\r\nNOOP\r\n"
        )
        self.assertEqual(codes(out)[-2:], ["451 4.3.0", "250 2.0.0"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_pluginTimeout(self) -> None:
        """A plug point that never answers is cancelled after pluginTimeout: 451."""

        @implementer(IRecipientValidator)
        class Never:
            def validateRecipient(self, session: Any, envelope: Any, recipient: Any) -> Any:
                return defer.Deferred()

        proto, t = self.connect(validators=[Never()])
        self.talk(proto, t, b"EHLO c\r\nMAIL FROM:<a@b.c>\r\n")
        t.clear()
        proto.dataReceived(b"RCPT TO:<a@example.com>\r\n")
        self.clock.advance(239)
        self.assertEqual(t.value(), b"")
        self.clock.advance(1)
        self.assertEqual(codes(t.value()), ["451 4.3.0"])

    def test_idleTimeout(self) -> None:
        """An idle client gets 421 4.4.2 after the command timeout; activity postpones it."""
        proto, t = self.connect()
        self.clock.advance(200)
        proto.dataReceived(b"NOOP\r\n")
        self.clock.advance(200)
        self.assertFalse(t.disconnecting)
        t.clear()
        self.clock.advance(101)
        self.assertEqual(codes(t.value()), ["421"])
        self.assertTrue(t.disconnecting)

    def test_dataTimeout(self) -> None:
        """In DATA the data timeout applies."""
        config = ServerConfig(
            hostname="mx.test", localDomains=frozenset({"example.com"}), dataTimeout=60
        )
        proto, t = self.connect(config=config)
        self.talk(
            proto, t, b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<a@example.com>\r\nDATA\r\npart"
        )
        t.clear()
        self.clock.advance(300)
        self.assertEqual(codes(t.value()), ["421 4.4.2"])

    def test_connectionLostDuringValidation(self) -> None:
        """A validator answering after the client left writes nothing and raises nothing."""
        proto, t = self.connect(validators=[SlowValidator(self.clock)])
        self.talk(proto, t, b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<a@example.com>\r\n")
        t.clear()
        proto.connectionLost(None)
        self.clock.advance(1)
        self.assertEqual(t.value(), b"")


class PlugPointTests(ServerTestCase):
    def test_connectionFilterRefuses(self) -> None:
        """A connection filter raising 554 makes the greeting 554; only QUIT is served."""

        @implementer(IConnectionFilter)
        class No:
            def acceptConnection(self, session: Any) -> Any:
                raise SMTPError(554, (5, 7, 1), "go away")

        proto, t = self.connect(connectionFilters=[No()])
        self.assertEqual(t.value(), b"554 go away\r\n")
        out = self.talk(proto, t, b"EHLO c\r\nQUIT\r\n")
        self.assertEqual(codes(out), ["503", "221"])

    def test_connectionFilterAsync(self) -> None:
        """An asynchronous connection filter delays the greeting; early input waits."""
        d: defer.Deferred[None] = defer.Deferred()

        @implementer(IConnectionFilter)
        class Later:
            def acceptConnection(self, session: Any) -> Any:
                return d

        proto, t = self.connect(connectionFilters=[Later()])
        proto.dataReceived(b"EHLO c\r\n")
        self.assertEqual(t.value(), b"")
        d.callback(None)
        self.assertTrue(t.value().startswith(b"220 mx.test"))
        self.assertIn(b"250-mx.test greets c", t.value())

    def test_connectionFilter421(self) -> None:
        """A 421 from a connection filter closes at once, with its enhanced code (not a greeting)."""

        @implementer(IConnectionFilter)
        class Busy:
            def acceptConnection(self, session: Any) -> Any:
                return defer.fail(SMTPError(421, (4, 7, 0), "busy"))

        _, t = self.connect(connectionFilters=[Busy()])
        self.assertEqual(t.value(), b"421 4.7.0 busy\r\n")
        self.assertTrue(t.disconnecting)

    def test_senderValidator(self) -> None:
        """A sender validator refuses with its own reply, or accepts with a custom one."""

        @implementer(ISenderValidator)
        class S:
            def validateSender(self, session: Any, envelope: Envelope) -> Any:
                if envelope.mailFrom.isNull:
                    return defer.succeed(Reply(250, (2, 1, 0), "bounce accepted"))
                if envelope.mailFrom.localPart == "spam":
                    raise SMTPError(550, (5, 7, 1), "no spam")
                return None

        proto, t = self.connect(senderValidators=[S()])
        out = self.talk(proto, t, b"EHLO c\r\nMAIL FROM:<spam@b.c>\r\nMAIL FROM:<>\r\n")
        self.assertEqual(codes(out)[-2:], ["550 5.7.1", "250 2.1.0"])
        self.assertIn(b"bounce accepted", out)

    def test_messageFilter(self) -> None:
        """A message filter adds a header, or refuses the message after the dot."""

        @implementer(IMessageFilter)
        class F:
            def filterMessage(self, session: Any, envelope: Any, message: Message) -> Any:
                if b"virus" in message.getvalue():
                    raise SMTPError(554, (5, 7, 1), "infected")
                message.prependHeader("X-Scanned", "yes")
                return defer.succeed(None)

        proto, t = self.connect(messageFilters=[F()])
        out = self.talk(
            proto,
            t,
            b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<a@example.com>\r\nDATA\r\nclean\r\n.\r\n"
            b"MAIL FROM:<a@b.c>\r\nRCPT TO:<a@example.com>\r\nDATA\r\nvirus\r\n.\r\n",
        )
        self.assertEqual(codes(out)[-1], "554 5.7.1")
        self.assertEqual(len(self.backend.messages), 1)
        self.assertTrue(self.backend.messages[0].data.startswith(b"X-Scanned: yes\r\nReceived: "))

    def test_deliveryResults(self) -> None:
        """Per-recipient results: all 2xx is 250; any 4xx wins over 5xx."""

        @implementer(IDeliveryBackend)
        class B:
            def __init__(self, replies: list[Reply]) -> None:
                self.replies = replies

            def deliver(self, envelope: Envelope, message: Message) -> Any:
                return defer.succeed(DeliveryResult(tuple(self.replies)))

        for replies, expected in [
            ([R.OK, R.OK], "250 2.0.0"),
            ([R.OK, R.USER_UNKNOWN], "550 5.1.1"),
            ([R.USER_UNKNOWN, R.LOCAL_ERROR], "451 4.3.0"),
        ]:
            proto, t = self.connect(backend=B(replies))
            out = self.talk(
                proto,
                t,
                b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<a@example.com>\r\n"
                b"RCPT TO:<b@example.com>\r\nDATA\r\nx\r\n.\r\n",
            )
            self.assertEqual(codes(out)[-1], expected)

    def test_slowBackend(self) -> None:
        """250 after the dot waits for the backend's Deferred: durability first."""
        d: defer.Deferred[None] = defer.Deferred()

        @implementer(IDeliveryBackend)
        class Slow:
            def deliver(self, envelope: Any, message: Any) -> Any:
                return d

        proto, t = self.connect(backend=Slow())
        self.talk(proto, t, b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<a@example.com>\r\nDATA\r\n")
        out = self.talk(proto, t, b"x\r\n.\r\nNOOP\r\n")
        self.assertEqual(out, b"")
        d.callback(None)
        self.assertEqual(codes(t.value()), ["250 2.0.0", "250 2.0.0"])

    def test_backendFailure(self) -> None:
        """A backend failure is 451 4.3.0 and the message is not acknowledged."""

        @implementer(IDeliveryBackend)
        class Fail:
            def deliver(self, envelope: Any, message: Any) -> Any:
                return defer.fail(OSError("disk"))

        proto, t = self.connect(backend=Fail())
        out = self.talk(
            proto,
            t,
            b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<a@example.com>\r\nDATA\r\nx\r\n.\r\n",
        )
        self.assertEqual(codes(out)[-1], "451 4.3.0")
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    def test_extensionVerbAndParameters(self) -> None:
        """A third-party extension advertises itself, owns parameters and adds a verb."""

        class XTest(Extension):
            keyword = "XTEST"
            mailParameters = frozenset({"XP"})
            rcptParameters = frozenset({"XR"})
            verbs = frozenset({"XPING"})

            def ehloParameters(self, session: SessionInfo) -> str | None:
                return "v1"

            def mailParameter(
                self, session: Any, envelope: Envelope, name: str, value: Any
            ) -> None:
                envelope.stateFor(self, dict)["xp"] = value

            def rcptParameter(
                self, session: Any, envelope: Any, recipient: Any, name: str, value: Any
            ) -> None:
                if value != "ok":
                    raise SMTPError(501, (5, 5, 4), "XR must be ok")

            def handleCommand(self, control: Any, verb: str, argument: str) -> Any:
                return defer.succeed(Reply(250, (2, 0, 0), f"pong {argument}"))

        ext = XTest()
        verifyObject(IExtension, ext)
        proto, t = self.connect(extensions=[*defaultExtensions(1000), ext])
        out = self.talk(proto, t, b"EHLO c\r\n")
        self.assertIn(b"250 XTEST v1\r\n", out)
        out = self.talk(
            proto,
            t,
            b"XPING hi\r\nMAIL FROM:<a@b.c> XP=1\r\nRCPT TO:<a@example.com> XR=no\r\n"
            b"RCPT TO:<a@example.com> XR=ok\r\n",
        )
        self.assertEqual(codes(out), ["250 2.0.0", "250 2.1.0", "501 5.5.4", "250 2.1.5"])
        self.assertIn(b"pong hi", out)
        self.assertEqual(proto.commands.envelope.stateFor(ext, dict)["xp"], "1")  # type: ignore[union-attr]
        # without EHLO the verb is unknown
        out = self.talk(proto, t, b"HELO c\r\nXPING\r\n")
        self.assertEqual(codes(out)[-1], "500")

    def test_factoryChecksProviders(self) -> None:
        """The factory refuses objects that do not provide the plug point's interface."""
        self.assertRaises(
            TypeError, SMTPServerFactory, ServerConfig(hostname="mx"), object(), clock=self.clock
        )
        self.assertRaises(
            TypeError,
            SMTPServerFactory,
            ServerConfig(hostname="mx"),
            self.backend,
            validators=[object()],
            clock=self.clock,
        )

    def test_builtinExtensionsProvide(self) -> None:
        """Every built-in extension provides IExtension."""
        for ext in defaultExtensions(100):
            verifyObject(IExtension, ext)

    def test_memoryBackendProvides(self) -> None:
        """MemoryBackend provides IDeliveryBackend."""
        verifyObject(IDeliveryBackend, self.backend)


class MessageLogTests(ServerTestCase):
    def logged(self, **kwargs: Any) -> list[str]:
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        config = ServerConfig(
            hostname="mx.test", localDomains=frozenset({"example.com"}), **kwargs
        )
        proto, t = self.connect(config=config)
        self.talk(
            proto,
            t,
            b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<a@example.com>\r\nDATA\r\nx\r\n.\r\n",
        )
        from twisted.logger import formatEvent

        return [formatEvent(e) for e in events if e.get("log_namespace") == "mailframe.server"]

    def test_messageLine(self) -> None:
        """Each message gets one readable log line with its id, sender, recipients and size."""
        [line] = [line for line in self.logged() if " accepted " in line]
        self.assertRegex(
            line,
            r"^\S+ \S+ accepted from=<a@b.c> to=a@example.com size=\d+ "
            r"client=unknown\[\S+\] helo=<c> \(250\)$",
        )

    def test_quiet(self) -> None:
        """With logMessages off nothing is logged per message."""
        self.assertEqual(self.logged(logMessages=False), [])


class TranscriptTests(ServerTestCase):
    def test_transcript(self) -> None:
        """With transcript on, each command line and reply is logged; data is summarised."""
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        config = ServerConfig(
            hostname="mx.test", localDomains=frozenset({"example.com"}), transcript=True
        )
        proto, t = self.connect(config=config)
        self.talk(
            proto,
            t,
            b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<a@example.com>\r\nDATA\r\nsecret\r\n.\r\n",
        )
        from twisted.logger import formatEvent

        lines = [formatEvent(e) for e in events if e.get("log_namespace") == "mailframe.server"]
        text = "\n".join(lines)
        self.assertIn("C: MAIL FROM:<a@b.c>", text)
        self.assertIn("S: 250 2.1.0 Sender OK", text)
        self.assertIn("octets of message data", text)
        self.assertNotIn("secret", text)
        self.assertTrue(
            all(
                e["log_level"] in (LogLevel.info, LogLevel.debug)
                for e in events
                if e.get("log_namespace") == "mailframe.server"
            )
        )


class FakeTLS(Extension):
    """STARTTLS with a marker context; advertised until TLS is up."""

    keyword = "STARTTLS"
    verbs = frozenset({"STARTTLS"})
    context = object()

    def ehloParameters(self, session: SessionInfo) -> str | None:
        return None if session.tls else ""

    def handleCommand(self, control: Any, verb: str, argument: str) -> Any:
        control.startTLS(self.context)
        return Reply(220, (2, 0, 0), "Ready to start TLS")


class FakeAuth(Extension):
    """AUTH TEST: one 334 round; the answer 'ok' authenticates as 'alice'."""

    keyword = "AUTH"
    verbs = frozenset({"AUTH"})

    def ehloParameters(self, session: SessionInfo) -> str | None:
        return "TEST"

    def handleCommand(self, control: Any, verb: str, argument: str) -> Any:
        if control.inTransaction:
            return Reply(503, (5, 5, 1), "not in a transaction")
        return Reply(334, None, "go")

    def continueCommand(self, control: Any, verb: str, line: bytes) -> Any:
        if line == b"ok":
            control.authenticate("alice", "TEST")
            return Reply(235, (2, 7, 0), "Authentication successful")
        return Reply(535, (5, 7, 8), "Authentication credentials invalid")


class SessionControlTests(ServerTestCase):
    def connectTLS(self, **kwargs: Any) -> tuple[SMTPServerProtocol, TLSTransport]:
        config = kwargs.pop(
            "config", ServerConfig(hostname="mx.test", localDomains=frozenset({"example.com"}))
        )
        factory = SMTPServerFactory(
            config,
            self.backend,
            validators=[Listed("user")],
            extensions=[*defaultExtensions(1000), FakeTLS(), FakeAuth()],
            clock=self.clock,
        )
        proto = factory.buildProtocol(None)
        transport = TLSTransport()
        proto.makeConnection(transport)
        return proto, transport

    def test_startTLS(self) -> None:
        """STARTTLS: 220 out in plaintext, TLS started, pipelined RSET dropped, state forgotten."""
        proto, t = self.connectTLS()
        self.talk(proto, t, b"EHLO c\r\nMAIL FROM:<a@b.c>\r\n")
        out = self.talk(proto, t, b"STARTTLS\r\nRSET\r\n")
        self.assertEqual(out, b"220 2.0.0 Ready to start TLS\r\n")
        self.assertIs(t.tlsContext, FakeTLS.context)
        self.assertIsNone(proto.session.heloName)
        self.assertIsNone(proto.commands.envelope)
        proto.handshakeCompleted()
        self.assertEqual(proto.session.tls, TLSInfoFor())
        out = self.talk(proto, t, b"RCPT TO:<user@example.com>\r\nEHLO c\r\n")
        self.assertEqual(codes(out)[0], "503")
        self.assertNotIn(b"STARTTLS", out)
        out = self.talk(proto, t, b"STARTTLS\r\n")
        self.assertEqual(codes(out), ["503 5.5.1"])
        self.talk(
            proto, t, b"MAIL FROM:<a@b.c>\r\nRCPT TO:<user@example.com>\r\nDATA\r\nx\r\n.\r\n"
        )
        self.assertIn(b"with ESMTPS id", self.backend.messages[0].data)
        self.assertIn(b"(TLSv1.3 TLS_AES_256_GCM_SHA384)", self.backend.messages[0].data)

    def test_authAndRelay(self) -> None:
        """An authenticated session may send to any domain; the trace says ESMTPA."""
        proto, t = self.connectTLS()
        out = self.talk(
            proto, t, b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<x@elsewhere.example>\r\nRSET\r\n"
        )
        self.assertEqual(codes(out)[-2], "550 5.7.1")
        out = self.talk(proto, t, b"AUTH TEST\r\nnope\r\nAUTH TEST\r\nok\r\n")
        self.assertEqual(codes(out), ["334", "535 5.7.8", "334", "235 2.7.0"])
        self.assertEqual(proto.session.authenticated, "alice")
        out = self.talk(
            proto,
            t,
            b"MAIL FROM:<a@b.c>\r\nRCPT TO:<x@elsewhere.example>\r\nAUTH TEST\r\nDATA\r\nhi\r\n.\r\n",
        )
        self.assertEqual(codes(out), ["250 2.1.0", "250 2.1.5", "503 5.5.1", "354", "250 2.0.0"])
        self.assertIn(b"with ESMTPA id", self.backend.messages[0].data)

    def test_continuationIsNotACommand(self) -> None:
        """After 334 a line that looks like a command is data for the extension."""
        proto, t = self.connectTLS()
        out = self.talk(proto, t, b"EHLO c\r\nAUTH TEST\r\nQUIT\r\nNOOP\r\n")
        self.assertEqual(codes(out)[-3:], ["334", "535 5.7.8", "250 2.0.0"])
        self.assertFalse(t.disconnecting)

    def test_submissionNeedsAuth(self) -> None:
        """With requireAuthentication, MAIL before AUTH is 530 5.7.0."""
        config = ServerConfig(
            hostname="mx.test", localDomains=frozenset({"example.com"}), requireAuthentication=True
        )
        proto, t = self.connectTLS(config=config)
        out = self.talk(
            proto, t, b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nAUTH TEST\r\nok\r\nMAIL FROM:<a@b.c>\r\n"
        )
        self.assertEqual(codes(out)[-4:], ["530 5.7.0", "334", "235 2.7.0", "250 2.1.0"])

    def test_handshakeFailureLogged(self) -> None:
        """A connection lost before the handshake completed is logged in one line."""
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        proto, t = self.connectTLS()
        self.talk(proto, t, b"EHLO c\r\nSTARTTLS\r\n")
        from twisted.logger import formatEvent

        proto.connectionLost(Failure(Exception("wrong version number")))
        text = [formatEvent(e) for e in events if "TLS handshake" in formatEvent(e)]
        self.assertEqual(len(text), 1)
        self.assertIn("wrong version number", text[0])
        self.assertNotIn("\n", text[0])

    def test_unadvertisedVerbAnswered(self) -> None:
        """An extension providing IUnadvertisedCommands answers its verb when hidden."""
        from zope.interface import implementer as impl

        from mailframe.interfaces import IUnadvertisedCommands

        @impl(IUnadvertisedCommands)
        class Hidden(FakeAuth):
            def ehloParameters(self, session: SessionInfo) -> str | None:
                return None

            def refuseCommand(self, control: Any, verb: str, argument: str) -> Any:
                return Reply(538, (5, 7, 11), "Encryption required")

        factory = SMTPServerFactory(
            ServerConfig(hostname="mx.test"), self.backend, extensions=[Hidden()], clock=self.clock
        )
        proto = factory.buildProtocol(None)
        t = TLSTransport()
        proto.makeConnection(t)
        out = self.talk(proto, t, b"EHLO c\r\nAUTH TEST\r\n")
        self.assertEqual(codes(out)[-1], "538")

    def test_startTLSForgetsAuthentication(self) -> None:
        """STARTTLS forgets an earlier authentication (RFC 3207 4.2)."""
        proto, t = self.connectTLS()
        self.talk(proto, t, b"EHLO c\r\nAUTH TEST\r\nok\r\n")
        self.assertEqual(proto.session.authenticated, "alice")
        self.talk(proto, t, b"STARTTLS\r\n")
        self.assertIsNone(proto.session.authenticated)

    def test_controlProvides(self) -> None:
        """SessionControl provides ISessionControl."""
        from mailframe.interfaces import ISessionControl

        proto, _t = self.connectTLS()
        verifyObject(ISessionControl, proto.commands.control)


def TLSInfoFor() -> Any:
    from mailframe.envelope import TLSInfo

    return TLSInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384", 256, None)


class PolicyHookTests(ServerTestCase):
    def config(self, **kwargs: Any) -> ServerConfig:
        return ServerConfig(hostname="mx.test", localDomains=frozenset({"example.com"}), **kwargs)

    def test_heloValidator(self) -> None:
        """A HELO validator refuses a name; the client may try again."""
        from mailframe.interfaces import IHeloValidator

        @implementer(IHeloValidator)
        class NoBare:
            def validateHelo(self, session: Any, name: str, extended: bool) -> Any:
                if "." not in name:
                    return defer.fail(SMTPError(550, (5, 7, 1), "HELO needs a FQDN"))
                return None

        verifyObject(IHeloValidator, NoBare())
        proto, t = self.connect(heloValidators=[NoBare()])
        out = self.talk(proto, t, b"EHLO bare\r\nMAIL FROM:<a@b.c>\r\nEHLO host.example\r\n")
        self.assertEqual(codes(out)[:2], ["550", "503"])
        self.assertTrue(out.endswith(b"250 BINARYMIME\r\n"))
        self.assertEqual(proto.session.heloName, "host.example")

    def test_sessionObserver(self) -> None:
        """Plug-ins providing ISessionObserver hear when a session ends."""
        from mailframe.interfaces import ISessionObserver

        ended: list[str] = []

        @implementer(IConnectionFilter, ISessionObserver)
        class Counter:
            def acceptConnection(self, session: Any) -> None:
                return None

            def sessionEnded(self, session: SessionInfo) -> None:
                ended.append(session.sessionID)

        proto, _t = self.connect(connectionFilters=[Counter()])
        proto.connectionLost(None)
        self.assertEqual(ended, [proto.session.sessionID])

    def test_relayNetworks(self) -> None:
        """A client in a relay network may send elsewhere; others get 550 5.7.1."""
        proto, t = self.connect(config=self.config(relayNetworks=("192.168.1.0/24",)))
        out = self.talk(proto, t, b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<x@far.example>\r\n")
        self.assertEqual(codes(out)[-1], "250 2.1.5")
        proto, t = self.connect(config=self.config(relayNetworks=("10.0.0.0/8",)))
        out = self.talk(proto, t, b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<x@far.example>\r\n")
        self.assertEqual(codes(out)[-1], "550 5.7.1")

    def test_routingForms(self) -> None:
        """%-hacks, bang paths and quoted @ are refused even for local domains."""
        proto, t = self.connect()
        for rcpt in [
            b"user%far.example@example.com",
            b"far.example!user@example.com",
            b'"user@far.example"@example.com',
            b"@relay.example:user%x@example.com",
        ]:
            out = self.talk(
                proto, t, b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<" + rcpt + b">\r\nRSET\r\n"
            )
            self.assertEqual(codes(out)[-2], "550 5.7.1", rcpt)

    def test_earlyTalkerWithDelay(self) -> None:
        """With greetDelay, a client that talks first gets 554 5.5.0 and is dropped."""
        proto, t = self.connect(config=self.config(greetDelay=2.0))
        self.assertEqual(t.value(), b"")
        proto.dataReceived(b"EHLO impatient\r\n")
        self.clock.advance(2)
        self.assertEqual(codes(t.value()), ["554"])
        self.assertTrue(t.disconnecting)

    def test_passedClientGreetedAtOnce(self) -> None:
        """A client that waited once is greeted at once afterwards, until its pass expires."""
        config = self.config(greetDelay=2.0, greetPassTime=60.0)
        factory = SMTPServerFactory(config, self.backend, clock=self.clock)

        def connect() -> CountingTransport:
            proto = factory.buildProtocol(None)
            t = CountingTransport()
            proto.makeConnection(t)
            return t

        t = connect()
        self.clock.advance(2)
        self.assertTrue(t.value().startswith(b"220 "))
        self.assertTrue(connect().value().startswith(b"220 "))  # at once
        self.clock.advance(61)
        self.assertEqual(connect().value(), b"")  # the pass has expired

    def test_relayNetworkGreetedAtOnce(self) -> None:
        """A client of a relay network is trusted: no pregreet wait (Postfix's permit_mynetworks)."""
        config = self.config(greetDelay=2.0, relayNetworks=(ip_network("192.168.1.0/24"),))
        _proto, t = self.connect(config=config)  # StringTransport's peer: 192.168.1.1
        self.assertTrue(t.value().startswith(b"220 mx.test"))
        config = self.config(greetDelay=2.0, relayNetworks=(ip_network("192.0.2.0/24"),))
        _proto, t = self.connect(config=config)
        self.assertEqual(t.value(), b"")  # another network's client waits

    def test_patientClientWithDelay(self) -> None:
        """With greetDelay, a client that waits is greeted after the delay."""
        _proto, t = self.connect(config=self.config(greetDelay=2.0))
        self.clock.advance(1.9)
        self.assertEqual(t.value(), b"")
        self.clock.advance(0.1)
        self.assertTrue(t.value().startswith(b"220 mx.test"))

    def test_pipeliningWithoutPipelining(self) -> None:
        """enforceSync: commands sent ahead after HELO get 554 5.5.0 and a close."""
        proto, t = self.connect(config=self.config(enforceSync=True))
        out = self.talk(proto, t, b"HELO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<a@example.com>\r\n")
        self.assertEqual(codes(out), ["554"])
        self.assertTrue(t.disconnecting)

    def test_pipeliningAllowedWithEhlo(self) -> None:
        """enforceSync: after EHLO a pipelined group is fine, but not data after DATA."""
        proto, t = self.connect(config=self.config(enforceSync=True))
        self.talk(proto, t, b"EHLO c\r\n")
        out = self.talk(proto, t, b"MAIL FROM:<a@b.c>\r\nRCPT TO:<a@example.com>\r\nDATA\r\n")
        self.assertEqual(codes(out), ["250 2.1.0", "250 2.1.5", "354"])
        out = self.talk(
            proto,
            t,
            b"x\r\n.\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<a@example.com>\r\nDATA\r\nearly\r\n",
        )
        self.assertEqual(codes(out), ["250 2.0.0", "250 2.1.0", "250 2.1.5", "554 5.5.0"])
        self.assertTrue(t.disconnecting)

    def test_syncOffByDefault(self) -> None:
        """Without enforceSync, pipelining after HELO is served (lenient default)."""
        proto, t = self.connect()
        out = self.talk(proto, t, b"HELO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<a@example.com>\r\n")
        self.assertEqual(codes(out), ["250", "250", "250"])

    def test_tarpit(self) -> None:
        """After softErrors errors each error reply waits longer; good replies do not."""
        proto, t = self.connect(config=self.config(errorDelay=1.0, softErrors=2))
        self.talk(proto, t, b"EHLO c\r\n")
        t.clear()
        proto.dataReceived(b"FOO\r\nFOO\r\nFOO\r\nNOOP\r\nFOO\r\n")
        self.assertEqual(codes(t.value()), [])  # the group is held with its third error
        self.clock.advance(1)
        self.assertEqual(codes(t.value()), [])
        self.clock.advance(2)  # the fourth error waits 2 s
        self.assertEqual(codes(t.value()), ["500 5.5.1"] * 3 + ["250 2.0.0", "500 5.5.1"])


@implementer(IMessageFilter)
class Answering:
    """A message filter that answers with C{answer} (a value or a Deferred)."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer

    def filterMessage(self, session: SessionInfo, envelope: Envelope, message: Message) -> Any:
        return self.answer


@implementer(IDeliveryBackend)
class Hanging:
    """A backend whose delivery never answers (a thread writing a slow disk)."""

    def __init__(self) -> None:
        self.deferreds: list[defer.Deferred[Any]] = []

    def deliver(self, envelope: Envelope, message: Message) -> Any:
        d: defer.Deferred[Any] = defer.Deferred(lambda _: self.fail("a delivery was cancelled"))
        self.deferreds.append(d)
        return d

    def fail(self, why: str) -> None:
        raise AssertionError(why)


MESSAGE = b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<user@example.com>\r\nDATA\r\nx\r\n.\r\n"


class ChainContractTests(ServerTestCase):
    """The one contract of plug-in chains, at the stages a session has."""

    def test_messageFilterReplyHonoured(self) -> None:
        """A message filter's positive reply is the answer after the dot, once delivered."""
        custom = Reply(250, (2, 0, 0), "Thanks, filed under spam")
        proto, t = self.connect(messageFilters=[Answering(custom)])
        out = self.talk(proto, t, MESSAGE)
        self.assertEqual(out.splitlines()[-1], b"250 2.0.0 Thanks, filed under spam")
        self.assertEqual(len(self.backend.messages), 1)

    def test_messageFilterRefusalReturned(self) -> None:
        """A 5xx returned (not raised) by a message filter refuses too; nothing is delivered."""
        proto, t = self.connect(messageFilters=[Answering(Reply(554, (5, 7, 1), "Spam"))])
        out = self.talk(proto, t, MESSAGE)
        self.assertEqual(codes(out)[-1], "554 5.7.1")
        self.assertEqual(self.backend.messages, [])

    def test_heloReplyReplacesFirstLine(self) -> None:
        """A HELO validator's positive reply replaces the greeting line, not the keywords."""

        @implementer(IHeloValidator)
        class Friendly:
            def validateHelo(self, session: SessionInfo, name: str, extended: bool) -> Reply:
                return Reply(250, None, "mx.test welcomes a friend")

        proto, t = self.connect(heloValidators=[Friendly()])
        out = self.talk(proto, t, b"EHLO c\r\n")
        self.assertTrue(out.startswith(b"250-mx.test welcomes a friend\r\n"), out)
        self.assertIn(b"PIPELINING", out)

    def test_hangingFilterTimesOut(self) -> None:
        """A message filter that never answers is cancelled after pluginTimeout: 451."""
        config = ServerConfig(
            hostname="mx.test", localDomains=frozenset({"example.com"}), pluginTimeout=10.0
        )
        proto, t = self.connect(config=config, messageFilters=[Answering(defer.Deferred())])
        self.talk(proto, t, MESSAGE)
        self.clock.advance(10.0)
        self.assertEqual(codes(t.value())[-1], "451 4.3.0")
        self.flushLoggedErrors()

    def test_deliveryNeverCancelled(self) -> None:
        """A slow delivery is waited for, not cancelled (no 451 while a write goes on)."""
        backend = Hanging()
        config = ServerConfig(
            hostname="mx.test",
            localDomains=frozenset({"example.com"}),
            pluginTimeout=10.0,
            deliveryTimeout=20.0,
        )
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        proto, t = self.connect(config=config, backend=backend)
        head, dot = MESSAGE.split(b"DATA\r\n")
        self.talk(proto, t, head + b"DATA\r\n")
        self.talk(proto, t, dot)
        self.clock.advance(3600.0)
        self.assertEqual(t.value(), b"")  # still waiting, nothing sent
        self.assertTrue(any("has not answered" in e.get("log_format", "") for e in events))
        backend.deferreds[0].callback(None)
        self.assertEqual(codes(t.value()), ["250 2.0.0"])

    def test_backendQueueID(self) -> None:
        """The reply names the ID the backend stored the message under, if it says one."""

        @implementer(IDeliveryBackend)
        class Renaming:
            def deliver(self, envelope: Envelope, message: Message) -> DeliveryResult:
                return DeliveryResult(tuple(R.OK for _ in envelope.recipients), queueID="STORED-1")

        proto, t = self.connect(backend=Renaming())
        out = self.talk(proto, t, MESSAGE)
        self.assertEqual(out.splitlines()[-1], b"250 2.0.0 OK queued as STORED-1")

    def test_envelopeCarriesSession(self) -> None:
        """The backend gets the session's facts with the envelope."""
        proto, t = self.connect()
        self.talk(proto, t, MESSAGE)
        snapshot = self.backend.messages[0].envelope.session
        assert snapshot is not None
        self.assertEqual((snapshot.heloName, snapshot.protocol), ("c", "ESMTP"))
        self.assertEqual(snapshot.sessionID, proto.session.sessionID)


class IDTests(ServerTestCase):
    def test_listenersShareOneSource(self) -> None:
        """Two servers (listeners) in one process never hand out the same ID."""
        first = SMTPServerFactory(ServerConfig(hostname="mx.test"), self.backend, clock=self.clock)
        second = SMTPServerFactory(
            ServerConfig(hostname="mx.test", listener="submission"), self.backend, clock=self.clock
        )
        seen = set()
        for factory in (first, second) * 50:
            proto = factory.buildProtocol(None)
            proto.makeConnection(StringTransport())
            seen.add(proto.session.sessionID)
        self.assertEqual(len(seen), 100)

    def test_processesDiffer(self) -> None:
        """The full process id is in the prefix: pids that share their low bits differ."""
        from mailframe.server._util import IDs

        a, b = IDs(pid=0x1234, now=1000.0), IDs(pid=0x101234, now=1000.0)
        self.assertNotEqual(a.next(), b.next())


class ProviderCheckTests(ServerTestCase):
    def test_declaredButIncomplete(self) -> None:
        """A plug-in that declares an interface but lacks its method is refused at once."""

        @implementer(IRecipientValidator)
        class Broken:
            pass

        e = self.assertRaises(
            TypeError,
            SMTPServerFactory,
            ServerConfig(hostname="mx.test"),
            self.backend,
            [Broken()],
            clock=self.clock,
        )
        self.assertIn("validateRecipient", str(e))
        self.assertNotIn("\n", str(e))
