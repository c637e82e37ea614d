"""
Tests for L{mailframe.client.relay.SMTPRelay}: in memory, against scripted servers
behind fake endpoints (the next MX on a refused connection, a 421 or 554
greeting, a timeout; a 5xx to RCPT is final; routing errors; opportunistic
TLS retried in clear; connection reuse); and the TLS policies against
mailframe's own server with a test CA certificate on 127.0.0.1.
"""

from __future__ import annotations

import random
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.internet.error import (
    ConnectingCancelledError,
    ConnectionDone,
    ConnectionRefusedError,
    DNSLookupError,
    TCPTimedOutError,
)
from twisted.internet.ssl import Certificate
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from mailframe.address import parseMailbox
from mailframe.backends.memory import MemoryBackend
from mailframe.client import Timeouts, messageFrom
from mailframe.client.relay import SMTPRelay, withEnhanced
from mailframe.client.routing import Destination, NextHop, Router
from mailframe.config import ServerConfig
from mailframe.envelope import DeliveryResult, Envelope, Recipient
from mailframe.extensions import defaultExtensions
from mailframe.extensions.starttls import StartTLS
from mailframe.interfaces import IRelay
from mailframe.reply import Reply
from mailframe.server import SMTPServerFactory
from mailframe.server.tls import CertificatePair, ServerTLS
from tests._certs import TestCA
from tests.interop._support import HOST, AcceptLocal, RunningServer, _shutdown, splitReceived
from tests.test_routing import resolver

MESSAGE = b"Subject: relayed\r\n\r\nHello.\r\n"


class AutoServer(StringTransport):
    """A scripted SMTP server on a memory transport; L{pump} answers what the client wrote."""

    def __init__(self, greeting: bytes = b"220 mx ESMTP", keywords: tuple[str, ...] = ("PIPELINING",),
                 replies: dict[str, bytes] | None = None) -> None:  # fmt: skip
        super().__init__()
        self.greeting = greeting
        self.keywords = keywords
        self.replies = replies or {}
        self.protocol: Any = None
        self.greeted = False
        self.inData = False
        self.lost = False
        self.received: list[bytes] = []
        self.commands: list[bytes] = []
        self.tlsStarted = False

    def startTLS(self, creator: Any) -> None:
        self.tlsStarted = True

    def getHandle(self) -> Any:
        return None

    def reply(self, key: str, default: bytes) -> bytes:
        return self.replies.get(key, default) + b"\r\n"

    def pump(self) -> None:
        if self.protocol is None or self.lost:
            return
        if not self.greeted:
            self.greeted = True
            self.protocol.dataReceived(self.greeting + b"\r\n")
        while not self.lost:
            data = self.value()
            if self.inData:
                if data.startswith(b".\r\n"):
                    end, body = 0, b""
                else:
                    end = data.find(b"\r\n.\r\n") + 2
                    if end < 2:
                        break
                    body = data[:end]
                    self.received.append(body)
                self.clear()
                self.io.write(data[end + 3 :])
                self.inData = False
                self.protocol.dataReceived(self.reply("DOT", b"250 2.0.0 queued"))
                continue
            if b"\r\n" not in data:
                break
            line, rest = data.split(b"\r\n", 1)
            self.clear()
            self.io.write(rest)
            self.commands.append(line)
            self.protocol.dataReceived(self.answer(line))
        if self.disconnecting and not self.lost:
            self.lost = True
            self.protocol.connectionLost(Failure(ConnectionDone()))

    def answer(self, line: bytes) -> bytes:
        verb = line.split(b" ")[0].upper().decode()
        if verb == "EHLO":
            lines = ["mx.test", *self.keywords]
            return self.replies.get("EHLO", b"".join(
                f"250{'-' if i < len(lines) - 1 else ' '}{x}\r\n".encode() for i, x in enumerate(lines)
            ))  # fmt: skip
        if verb == "RCPT":
            address = line.split(b"<", 1)[1].split(b">")[0].decode()
            return self.reply(address, b"250 2.1.5 ok")
        if verb == "DATA":
            reply = self.reply("DATA", b"354 go")
            self.inData = reply.startswith(b"354")
            return reply
        if verb == "QUIT":
            self.loseConnection()
            return b"221 bye\r\n"
        if verb == "STARTTLS":
            return self.reply("STARTTLS", b"220 go")
        return self.reply(verb, b"250 ok")


class Network:
    """Fake endpoints by address: a scripted server, or a refused connection."""

    def __init__(self, **servers: AutoServer | None) -> None:
        self.servers = {k.replace("_", "."): v for k, v in servers.items()}
        self.connections: list[tuple[str, AutoServer | None]] = []

    def endpointFor(self, destination: Destination) -> Any:
        network = self

        class Endpoint:
            def connect(self, factory: Any) -> defer.Deferred[Any]:
                server = network.servers.get(destination.address)
                if isinstance(server, AutoServer) and server.protocol is not None:
                    server = AutoServer(server.greeting, server.keywords, server.replies)
                    network.servers[destination.address] = server
                network.connections.append((destination.address, server))
                if server is None:
                    return defer.fail(ConnectionRefusedError())
                protocol = factory.buildProtocol(None)
                server.protocol = protocol
                protocol.makeConnection(server)
                return defer.succeed(protocol)

        return Endpoint()

    def pump(self) -> None:
        for _ in range(50):
            for _address, server in list(self.connections):
                if server is not None:
                    server.pump()


class FailingEndpoint:
    """An endpoint whose connection attempt fails with C{error}."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def connect(self, factory: Any) -> defer.Deferred[Any]:
        return defer.fail(self.error)


class FailingFirst:
    """
    Endpoints of C{network}, but the first address's connection fails with
    C{error} (or, with C{raises}, asking for its endpoint raises it).
    """

    def __init__(self, network: Network, error: Exception, raises: bool = False) -> None:
        self.network, self.error, self.raises = network, error, raises
        self.tried: list[str] = []

    def endpointFor(self, destination: Destination) -> Any:
        self.tried.append(destination.address)
        if len(self.tried) > 1:
            return self.network.endpointFor(destination)
        if self.raises:
            raise self.error
        return FailingEndpoint(self.error)


def envelope(*recipients: str) -> Envelope:
    return Envelope("Q1", parseMailbox("alice@a.example"), {},
                    [Recipient(parseMailbox(r)) for r in recipients])  # fmt: skip


class RelayTests(SynchronousTestCase):
    def relay(self, network: Network, router: Router | None = None, **kwargs: Any) -> SMTPRelay:
        self.clock = task.Clock()
        return SMTPRelay(router or Router(resolver(), random=random.Random(1)), self.clock,
                         "relay.test", endpointFor=network.endpointFor, **kwargs)  # fmt: skip

    def send(self, network: Network, relay: SMTPRelay, *recipients: str) -> DeliveryResult:
        env = envelope(*recipients)
        d = relay.relay(env, env.recipients, messageFrom(MESSAGE))
        network.pump()
        return self.successResultOf(d)

    def test_interface(self) -> None:
        """SMTPRelay provides IRelay."""
        verifyObject(IRelay, self.relay(Network()))

    def test_delivered(self) -> None:
        """A message goes to the first MX; each recipient gets its reply and the remote's name."""
        server = AutoServer(replies={"nobody@example.com": b"550 5.1.1 no such user"})
        network = Network(**{"2001:db8::1": server})
        result = self.send(network, self.relay(network), "bob@example.com", "nobody@example.com")
        self.assertEqual([r.code for r in result.replies], [250, 550])
        self.assertEqual(result.remote, ("mx1.example.com [2001:db8::1]",) * 2)
        self.assertEqual(server.received, [MESSAGE])
        self.assertEqual(len(network.connections), 1)
        self.assertEqual(result.dsn, (False, False))

    def test_dsnPassedOn(self) -> None:
        """The result tells the queue when the next hop took the DSN parameters."""
        network = Network(**{"2001:db8::1": AutoServer(keywords=("PIPELINING", "DSN"))})
        result = self.send(network, self.relay(network), "bob@example.com")
        self.assertEqual(result.dsn, (True,))

    def test_nextOnRefused(self) -> None:
        """A refused connection moves on to the next address, then the next MX."""
        server = AutoServer()
        network = Network(**{"2001:db8::1": None, "192.0.2.1": None, "192.0.2.2": server})
        result = self.send(network, self.relay(network), "bob@example.com")
        self.assertEqual(result.replies[0].code, 250)
        self.assertEqual(result.remote, ("mx2.example.com [192.0.2.2]",))
        self.assertEqual(
            [a for a, _ in network.connections], ["2001:db8::1", "192.0.2.1", "192.0.2.2"]
        )

    def test_nextOnGreeting(self) -> None:
        """A 421 or a 554 greeting moves on to the next destination."""
        for greeting in (b"421 4.3.2 busy", b"554 5.7.1 not you"):
            network = Network(**{"2001:db8::1": AutoServer(greeting), "192.0.2.1": AutoServer()})
            result = self.send(network, self.relay(network), "bob@example.com")
            self.assertEqual(result.replies[0].code, 250)
            self.assertEqual(len(network.connections), 2)

    def test_allFail(self) -> None:
        """
        Some destinations unreachable, the last refusing with 5xx: a 4xx of ours (4.4.0) for
        every recipient, quoting the last server's reply and naming it.
        """
        network = Network(**{"2001:db8::1": None, "192.0.2.1": None,
                             "192.0.2.2": AutoServer(b"554 5.7.1 go away")})  # fmt: skip
        result = self.send(network, self.relay(network), "bob@example.com", "carol@example.com")
        self.assertEqual([(r.code, r.enhanced) for r in result.replies], [(451, (4, 4, 0))] * 2)
        self.assertIn("554 5.7.1 go away", result.replies[0].text)
        self.assertEqual(result.remote, ("mx2.example.com [192.0.2.2]",) * 2)

    def lmtpLike(self) -> AutoServer:
        """A next hop that answers EHLO and HELO with 500, as an LMTP server does."""
        return AutoServer(b"220 lmtp.test LMTP", replies={
            "EHLO": b"500 5.5.1 Unknown command\r\n", "HELO": b"500 5.5.1 Unknown command"})  # fmt: skip

    def test_heloRefusedEverywhere(self) -> None:
        """Every host refuses EHLO and HELO with 500: each is tried, then the real 500, permanent."""
        network = Network(**{"2001:db8::1": self.lmtpLike(), "192.0.2.1": self.lmtpLike(),
                             "192.0.2.2": self.lmtpLike()})  # fmt: skip
        result = self.send(network, self.relay(network), "bob@example.com", "carol@example.com")
        self.assertEqual(result.replies, (Reply(500, (5, 5, 1), "Unknown command"),) * 2)
        self.assertEqual(result.remote, ("mx2.example.com [192.0.2.2]",) * 2)
        self.assertEqual(len(network.connections), 3)
        for _, server in network.connections:
            assert server is not None
            self.assertEqual(server.commands, [b"EHLO relay.test", b"HELO relay.test", b"QUIT"])

    def test_heloRefusedWithoutEnhancedCode(self) -> None:
        """A refusal without an enhanced code gets only the generic 5.0.0 (for the DSN), same text."""
        refusing = AutoServer(replies={"EHLO": b"502 no\r\n", "HELO": b"502 not here either"})
        network = Network(**{"192.0.2.50": refusing})
        router = Router(resolver(), routes={"lan.example": "192.0.2.50"})
        result = self.send(network, self.relay(network, router), "bob@lan.example")
        self.assertEqual(result.replies, (Reply(502, (5, 0, 0), "not here either"),))

    def test_heloRefusedOnOneHost(self) -> None:
        """One host refuses HELO with 500: the next one takes the message."""
        network = Network(**{"2001:db8::1": self.lmtpLike(), "192.0.2.1": AutoServer()})
        result = self.send(network, self.relay(network), "bob@example.com")
        self.assertEqual(result.replies[0].code, 250)
        self.assertEqual(result.remote, ("mx1.example.com [192.0.2.1]",))

    def test_heloRefusedAndUnreachable(self) -> None:
        """Not every host refused for good (one was unreachable): temporary, quoting the 500."""
        network = Network(**{"2001:db8::1": None, "192.0.2.1": self.lmtpLike(),
                             "192.0.2.2": self.lmtpLike()})  # fmt: skip
        result = self.send(network, self.relay(network), "bob@example.com")
        [reply] = result.replies
        self.assertEqual((reply.code, reply.enhanced), (451, (4, 4, 0)))
        self.assertIn("500 5.5.1 Unknown command", reply.text)
        network = Network(**{"2001:db8::1": self.lmtpLike(), "192.0.2.1": self.lmtpLike(),
                             "192.0.2.2": None})  # fmt: skip
        [reply] = self.send(network, self.relay(network), "bob@example.com").replies
        self.assertEqual((reply.code, reply.enhanced), (421, (4, 4, 1)))

    def test_heloTemporaryEverywhere(self) -> None:
        """HELO answered 4xx (or 421) by every host: temporary, with the last server's own reply."""
        network = Network(**{
            "2001:db8::1": AutoServer(replies={"EHLO": b"500 no\r\n", "HELO": b"421 4.3.2 closing"}),
            "192.0.2.1": AutoServer(replies={"EHLO": b"500 no\r\n", "HELO": b"500 5.5.1 no"}),
            "192.0.2.2": AutoServer(replies={"EHLO": b"500 no\r\n", "HELO": b"451 4.3.0 later"}),
        })  # fmt: skip
        result = self.send(network, self.relay(network), "bob@example.com")
        self.assertEqual(result.replies, (Reply(451, (4, 3, 0), "later"),))
        self.assertEqual(len(network.connections), 3)

    def test_greetingRefusedEverywhere(self) -> None:
        """Every host greets with 554: the last one's 554, permanent."""
        network = Network(**{"2001:db8::1": AutoServer(b"554 5.7.1 go away"),
                             "192.0.2.1": AutoServer(b"554 5.7.1 go away"),
                             "192.0.2.2": AutoServer(b"554 5.7.1 not you either")})  # fmt: skip
        result = self.send(network, self.relay(network), "bob@example.com")
        self.assertEqual(result.replies, (Reply(554, (5, 7, 1), "not you either"),))
        self.assertEqual(result.remote, ("mx2.example.com [192.0.2.2]",))

    def test_heloRefusedAfterOpportunisticFallback(self) -> None:
        """TLS fails, the same host in clear refuses HELO: that host counts as refusing for good."""
        network = Network(**{"192.0.2.50": AutoServer(keywords=("STARTTLS",))})
        router = Router(resolver(), routes={"lan.example": "192.0.2.50"})
        relay = self.relay(network, router)
        env = envelope("bob@lan.example")
        d = relay.relay(env, env.recipients, messageFrom(MESSAGE))
        network.pump()
        first = network.connections[0][1]
        assert first is not None
        network.servers["192.0.2.50"] = AutoServer(replies={
            "EHLO": b"500 5.5.1 no EHLO\r\n", "HELO": b"500 5.5.1 no HELO"})  # fmt: skip
        first.protocol.connectionLost(Failure(ConnectionDone("handshake failed")))
        network.pump()
        self.assertEqual(self.successResultOf(d).replies, (Reply(500, (5, 5, 1), "no HELO"),))

    def test_maxAttempts(self) -> None:
        """At most maxAttempts destinations are tried."""
        network = Network()
        result = self.send(network, self.relay(network, maxAttempts=2), "bob@example.com")
        self.assertEqual(len(network.connections), 2)
        self.assertEqual((result.replies[0].code, result.replies[0].enhanced), (421, (4, 4, 1)))

    def test_rcptRefusalIsFinal(self) -> None:
        """A 5xx (or 4xx) to RCPT is that recipient's answer: no other MX is tried."""
        server = AutoServer(replies={"bob@example.com": b"450 4.2.1 full"})
        network = Network(**{"2001:db8::1": server, "192.0.2.1": AutoServer()})
        result = self.send(network, self.relay(network), "bob@example.com")
        self.assertEqual(result.replies[0].code, 450)
        self.assertEqual(len(network.connections), 1)

    def test_timeoutMovesOn(self) -> None:
        """A server that never greets is left after the greeting timeout for the next one."""
        silent = AutoServer()
        silent.greeted = True  # it never sends its greeting
        network = Network(**{"2001:db8::1": silent, "192.0.2.1": AutoServer()})
        relay = self.relay(network, timeouts=Timeouts(greeting=30))
        env = envelope("bob@example.com")
        d = relay.relay(env, env.recipients, messageFrom(MESSAGE))
        network.pump()
        self.assertNoResult(d)
        self.clock.advance(30)
        network.pump()
        self.assertEqual(self.successResultOf(d).replies[0].code, 250)

    def test_routingErrors(self) -> None:
        """Null MX and NXDOMAIN end at once, for every recipient, without a connection."""
        network = Network()
        relay = self.relay(network)
        result = self.send(network, relay, "a@nullmx.example.com", "b@nullmx.example.com")
        self.assertEqual([(r.code, r.enhanced) for r in result.replies], [(556, (5, 1, 10))] * 2)
        self.assertEqual(result.remote, (None, None))
        result = self.send(network, relay, "a@nowhere.example.com")
        self.assertEqual(result.replies[0].enhanced, (5, 1, 2))
        self.assertEqual(network.connections, [])

    def test_opportunisticFallback(self) -> None:
        """Opportunistic TLS whose handshake fails: the same host again, in clear (RFC 7435)."""
        server = AutoServer(keywords=("STARTTLS", "PIPELINING"))
        network = Network(**{"192.0.2.50": server})
        router = Router(resolver(), routes={"lan.example": "192.0.2.50"})
        relay = self.relay(network, router)
        env = envelope("bob@lan.example")
        d = relay.relay(env, env.recipients, messageFrom(MESSAGE))
        network.pump()
        first = network.connections[0][1]
        assert first is not None
        self.assertTrue(first.tlsStarted)
        first.protocol.connectionLost(Failure(ConnectionDone("handshake failed")))
        network.pump()
        result = self.successResultOf(d)
        self.assertEqual(result.replies[0].code, 250)
        second = network.connections[1][1]
        assert second is not None
        self.assertFalse(second.tlsStarted)
        self.assertNotIn(b"STARTTLS", second.commands)

    def test_requireNoFallback(self) -> None:
        """Policy require: no STARTTLS offered means no delivery (4.7.4), never in clear."""
        network = Network(**{"192.0.2.50": AutoServer()})
        router = Router(
            resolver(), routes={"lan.example": {"host": "192.0.2.50", "tls": "require"}}
        )
        result = self.send(network, self.relay(network, router), "bob@lan.example")
        self.assertEqual((result.replies[0].code, result.replies[0].enhanced), (421, (4, 7, 4)))

    def test_reuse(self) -> None:
        """With keepAlive a second message to the same host reuses the connection (RSET first)."""
        network = Network(**{"192.0.2.50": AutoServer()})
        router = Router(resolver(), routes={"lan.example": "tcp:192.0.2.50:25"})
        relay = self.relay(network, router, keepAlive=10)
        self.assertEqual(self.send(network, relay, "bob@lan.example").replies[0].code, 250)
        self.assertEqual(self.send(network, relay, "carol@lan.example").replies[0].code, 250)
        self.assertEqual(len(network.connections), 1)
        server = network.connections[0][1]
        assert server is not None
        self.assertIn(b"RSET", server.commands)
        self.clock.advance(10)
        network.pump()
        self.assertEqual(server.commands[-1], b"QUIT")
        relay.closeIdle()

    def test_enhancedDefault(self) -> None:
        """Replies without an enhanced code get x.0.0, for DSN Status fields."""
        server = AutoServer(replies={"DOT": b"250 queued"})
        network = Network(**{"2001:db8::1": server})
        result = self.send(network, self.relay(network), "bob@example.com")
        self.assertEqual(result.replies[0].enhanced, (2, 0, 0))
        self.assertEqual(withEnhanced(Reply(354, None, "go")).enhanced, None)

    def test_neverFails(self) -> None:
        """An unexpected error becomes 451 4.3.0 for every recipient."""

        class Broken(Router):
            def destinations(self, domain: Any) -> Any:
                raise RuntimeError("boom")

        network = Network()
        result = self.send(network, self.relay(network, Broken(resolver())), "bob@example.com")
        self.assertEqual((result.replies[0].code, result.replies[0].enhanced), (451, (4, 3, 0)))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_connectionErrors(self) -> None:
        """A connection that fails (refused, timed out, cancelled, unreachable) moves on, unlogged."""
        for error in (ConnectionRefusedError(), TCPTimedOutError(), ConnectingCancelledError(None),
                      defer.CancelledError(), OSError(101, "Network is unreachable"),
                      DNSLookupError("x")):  # fmt: skip
            network = Network(**{"192.0.2.1": AutoServer()})
            relay = self.relay(network)
            relay.endpointFor = FailingFirst(network, error).endpointFor
            result = self.send(network, relay, "bob@example.com")
            self.assertEqual(result.replies[0].code, 250, error)
            self.assertEqual(self.flushLoggedErrors(), [])

    def test_localErrorConnecting(self) -> None:
        """
        A bug of ours while connecting (in endpointFor, say) is logged with its
        traceback and is 451 4.3.0, a local error: no other host is tried for it.
        """
        for error in (TypeError("bad"), AttributeError("bad"), ValueError("bad")):
            network = Network(**{"192.0.2.1": AutoServer()})
            relay = self.relay(network)
            broken = FailingFirst(network, error, raises=True)
            relay.endpointFor = broken.endpointFor
            result = self.send(network, relay, "bob@example.com")
            reply = result.replies[0]
            self.assertEqual((reply.code, reply.enhanced), (451, (4, 3, 0)))
            self.assertIn("local error", reply.text.lower())
            self.assertEqual(broken.tried, ["2001:db8::1"])
            self.assertEqual(len(self.flushLoggedErrors(type(error))), 1)

    def test_localErrorRouting(self) -> None:
        """A bug of ours in the DNS lookups is 451 4.3.0 and logged, not a DNS failure."""
        network = Network()
        router = Router(resolver({"example.com"}, TypeError), random=random.Random(1))
        result = self.send(network, self.relay(network, router), "bob@example.com")
        self.assertEqual(result.replies[0].enhanced, (4, 3, 0))
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 1)
        self.assertEqual(network.connections, [])

    def test_noRecipients(self) -> None:
        """No recipients, no work."""
        self.assertEqual(self.send(Network(), self.relay(Network())).replies, ())

    def test_fromConfig(self) -> None:
        """A relay and its router from plain data."""
        relay = SMTPRelay.fromConfig(
            {"smarthost": "tcp:192.0.2.9:2525", "keep-alive": 5, "max_attempts": 3,
             "timeouts": {"data-end": 60, "greeting": 20}, "transcript": True},
            task.Clock(), "relay.test", resolver=resolver(),
        )  # fmt: skip
        self.assertEqual((relay.keepAlive, relay.maxAttempts, relay.transcript), (5.0, 3, True))
        self.assertEqual(
            (relay.timeouts.dataEnd, relay.timeouts.greeting, relay.timeouts.rcpt),
            (60.0, 20.0, 300.0),
        )
        self.assertEqual(relay.router.smarthost, NextHop("192.0.2.9", 2525))
        self.assertRaises(
            ValueError, SMTPRelay.fromConfig, {"timeouts": {"lunch": 1}}, task.Clock(), "r"
        )
        self.assertRaises(
            ValueError, SMTPRelay.fromConfig, {"ca-file": "/nonexistent"}, task.Clock(), "r"
        )


class TLSPolicyTests(TestCase):
    """The TLS policies against mailframe's own STARTTLS server on 127.0.0.1."""

    timeout = 30

    def setUp(self) -> None:
        self.ca = TestCA(self.mktemp())
        issued = self.ca.issue("server", "mx.test")
        self.tls = ServerTLS([CertificatePair(issued.fullchain, issued.privkey)])
        with open(self.ca.rootFile, "rb") as f:
            self.trustRoot = Certificate.loadPEM(f.read())

    def server(self, starttls: bool = True) -> RunningServer:
        return tlsServer(self, self.tls if starttls else None)

    async def relayTo(self, server: Any, **route: Any) -> DeliveryResult:
        router = Router(routes={"example.com": {"host": HOST, "port": server.portNumber, **route}})
        relay = SMTPRelay(router, reactor, "relay.test", trustRoot=self.trustRoot,
                          timeouts=Timeouts(greeting=10, command=10, handshake=10))  # fmt: skip
        env = envelope("bob@example.com")
        return await relay.relay(env, env.recipients, messageFrom(MESSAGE))

    @defer.inlineCallbacks
    def test_verifyRightName(self) -> Any:
        """verify: a certificate for the expected name is accepted; the message goes in TLS."""
        server = self.server()
        result = yield defer.ensureDeferred(
            self.relayTo(server, tls="verify", tlsHostname="mx.test")
        )
        self.assertEqual(result.replies[0].code, 250)
        received, body = splitReceived(server.messages[0].data)
        self.assertIn(b"with ESMTPS", received)
        self.assertEqual(body, MESSAGE)
        self.assertIn(result.tls, ("TLSv1.2", "TLSv1.3"))  # for the queue.sent line

    @defer.inlineCallbacks
    def test_verifyWrongName(self) -> Any:
        """verify: a certificate for another name fails the delivery with 4.7.5, nothing sent."""
        server = self.server()
        result = yield defer.ensureDeferred(
            self.relayTo(server, tls="verify", tlsHostname="other.test")
        )
        self.assertEqual((result.replies[0].code, result.replies[0].enhanced), (421, (4, 7, 5)))
        self.assertEqual(server.messages, [])

    @defer.inlineCallbacks
    def test_verifyUnknownCA(self) -> Any:
        """verify: a certificate from an unknown CA fails too."""
        server = self.server()
        router = Router(routes={"example.com": {"host": HOST, "port": server.portNumber,
                                                "tls": "verify", "tls-hostname": "mx.test"}})  # fmt: skip
        relay = SMTPRelay(router, reactor, "relay.test",
                          trustRoot=Certificate.loadPEM(_otherRoot(self.mktemp())))  # fmt: skip
        env = envelope("bob@example.com")
        result = yield relay.relay(env, env.recipients, messageFrom(MESSAGE))
        self.assertEqual(result.replies[0].enhanced, (4, 7, 5))
        self.assertEqual(server.messages, [])

    @defer.inlineCallbacks
    def test_requireNotOffered(self) -> Any:
        """require: a server without STARTTLS gets nothing; 4.7.4."""
        server = self.server(starttls=False)
        result = yield defer.ensureDeferred(self.relayTo(server, tls="require"))
        self.assertEqual(result.replies[0].enhanced, (4, 7, 4))
        self.assertEqual(server.messages, [])

    @defer.inlineCallbacks
    def test_requireUnverified(self) -> Any:
        """require: TLS with any certificate (the name is not checked)."""
        server = self.server()
        result = yield defer.ensureDeferred(
            self.relayTo(server, tls="require", tlsHostname="other.test")
        )
        self.assertEqual(result.replies[0].code, 250)
        self.assertIn(b"with ESMTPS", server.messages[0].data)

    @defer.inlineCallbacks
    def test_opportunistic(self) -> Any:
        """opportunistic: TLS when offered, plain when not."""
        server = self.server()
        result = yield defer.ensureDeferred(self.relayTo(server))
        self.assertEqual(result.replies[0].code, 250)
        self.assertIn(b"with ESMTPS", server.messages[0].data)
        plain = self.server(starttls=False)
        result = yield defer.ensureDeferred(self.relayTo(plain))
        self.assertEqual(result.replies[0].code, 250)
        self.assertIn(b"with ESMTP id", plain.messages[0].data)

    @defer.inlineCallbacks
    def test_none(self) -> Any:
        """none: plain even when STARTTLS is offered."""
        server = self.server()
        result = yield defer.ensureDeferred(self.relayTo(server, tls="none"))
        self.assertEqual(result.replies[0].code, 250)
        self.assertIn(b"with ESMTP id", server.messages[0].data)
        self.assertIsNone(result.tls)


def tlsServer(case: TestCase, tls: Any) -> RunningServer:
    """mailframe's server on 127.0.0.1:0 with STARTTLS (when C{tls}) and a memory backend."""
    extensions = [*defaultExtensions(1 << 20)]
    if tls is not None:
        extensions.append(StartTLS(tls))
    backend = MemoryBackend()
    config = ServerConfig(hostname="mx.test", localDomains=frozenset({"example.com"}))  # type: ignore[arg-type]
    factory = SMTPServerFactory(config, backend, [AcceptLocal()], extensions=extensions,
                                clock=reactor)  # type: ignore[arg-type]  # fmt: skip
    port = reactor.listenTCP(0, factory, interface=HOST)  # type: ignore[attr-defined]
    server = RunningServer(factory, backend, port)
    case.addCleanup(_shutdown, server)
    return server


def _otherRoot(directory: str) -> bytes:
    with open(TestCA(directory).rootFile, "rb") as f:
        return f.read()
