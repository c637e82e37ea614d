"""
Tests for L{mailframe.backends.lmtp}: the LMTP client backend, in memory.
A scripted LMTP server on a StringTransport (the replies each test
chooses, a fake clock for the timers), and mailframe's own LMTP server
connected through Twisted's iosim.  No network, no sleeps.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, error
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from mailframe import reply as R
from mailframe.address import parseMailbox
from mailframe.backends.factories import lmtpBackend
from mailframe.backends.lmtp import LMTPBackend, endpointString
from mailframe.backends.memory import MemoryBackend
from mailframe.config import ProviderContext, ServerConfig
from mailframe.envelope import DeliveryResult, Envelope, Recipient
from mailframe.interfaces import IDeliveryBackend
from mailframe.message import Message
from mailframe.server import SMTPServerFactory
from mailframe.validators.basic import AnyRecipient

MESSAGE = b"From: a@b.example\r\nSubject: hi\r\n\r\n.a dot line\r\nHello\r\n"
CAPABILITIES = b"250-lmtp.test\r\n250-PIPELINING\r\n250-ENHANCEDSTATUSCODES\r\n250 CHUNKING\r\n"


def envelope(*recipients: str, sender: str = "a@b.example", **params: str) -> Envelope:
    return Envelope("Q1", parseMailbox(sender), params,
                    [Recipient(parseMailbox(r)) for r in recipients])  # fmt: skip


def message(data: bytes = MESSAGE) -> Message:
    m = Message()
    m.write(data)
    m.finish()
    return m


class ScriptedServer:
    """One connection: what the client wrote, and replies fed to it."""

    def __init__(self, protocol: Any, transport: StringTransport) -> None:
        self.protocol = protocol
        self.transport = transport

    def sent(self) -> bytes:
        data = self.transport.value()
        self.transport.clear()
        return data

    def reply(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def greet(self, capabilities: bytes = CAPABILITIES) -> None:
        """The greeting; LHLO must follow; its reply."""
        self.reply(b"220 lmtp.test LMTP\r\n")
        assert self.sent() == b"LHLO mx.test\r\n"
        self.reply(capabilities)

    def lose(self) -> None:
        self.protocol.connectionLost(Failure(error.ConnectionDone()))


@implementer(IStreamClientEndpoint)
class ScriptedEndpoint:
    """Connects to a new L{ScriptedServer} each time (or fails with C{refuse})."""

    def __init__(self) -> None:
        self.servers: list[ScriptedServer] = []
        self.refuse: Exception | None = None

    def connect(self, factory: IProtocolFactory) -> defer.Deferred[Any]:
        if self.refuse is not None:
            return defer.fail(self.refuse)
        protocol = factory.buildProtocol(None)
        assert protocol is not None
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.servers.append(ScriptedServer(protocol, transport))
        return defer.succeed(protocol)


class Results:
    """The result of a delivery, once it fires."""

    def __init__(self, d: defer.Deferred[Any]) -> None:
        self.value: DeliveryResult | None = None
        d.addCallback(self.set)

    def set(self, value: DeliveryResult) -> None:
        self.value = value

    @property
    def codes(self) -> list[int]:
        assert self.value is not None, "the delivery has not finished"
        return [r.code for r in self.value.replies]


class BackendTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.endpoint = ScriptedEndpoint()

    def backend(self, **kwargs: Any) -> LMTPBackend:
        return LMTPBackend(self.clock, self.endpoint, "lmtp.test", "mx.test", **kwargs)

    def deliver(self, backend: LMTPBackend, env: Envelope, msg: Message | None = None) -> Results:
        return Results(backend.deliver(env, msg or message()))


class DeliveryTests(BackendTestCase):
    def test_interface(self) -> None:
        """The backend provides IDeliveryBackend."""
        verifyObject(IDeliveryBackend, self.backend())

    def test_bdat(self) -> None:
        """LHLO, MAIL and every RCPT in one write, BDAT LAST, and each recipient's own reply."""
        backend = self.backend()
        result = self.deliver(backend, envelope("ann@x.example", "nobody@x.example",
                                                "bob@x.example"))  # fmt: skip
        [server] = self.endpoint.servers
        server.greet()
        self.assertEqual(server.sent(), b"MAIL FROM:<a@b.example>\r\nRCPT TO:<ann@x.example>\r\n"
                                        b"RCPT TO:<nobody@x.example>\r\nRCPT TO:<bob@x.example>\r\n")  # fmt: skip
        server.reply(b"250 2.1.0 OK\r\n250 2.1.5 OK\r\n550 5.1.1 <nobody> unknown\r\n"
                     b"250 2.1.5 OK\r\n")  # fmt: skip
        self.assertEqual(server.sent(), b"BDAT %d LAST\r\n" % len(MESSAGE) + MESSAGE)
        server.reply(b"250 2.0.0 <ann> saved\r\n")
        self.assertIsNone(result.value)
        server.reply(b"452 4.2.2 <bob> over quota\r\n")
        assert result.value is not None
        self.assertEqual(result.value.replies, (
            R.Reply(250, (2, 0, 0), "<ann> saved"),
            R.Reply(550, (5, 1, 1), "<nobody> unknown"),
            R.Reply(452, (4, 2, 2), "<bob> over quota"),
        ))  # fmt: skip
        self.assertEqual(result.value.remote, ("lmtp.test",) * 3)
        self.assertEqual((backend.openSessions, backend.idleSessions), (1, 1))

    def test_data(self) -> None:
        """Without CHUNKING: DATA in the pipelined group, the message dot-stuffed, the dot."""
        backend = self.backend()
        result = self.deliver(backend, envelope("ann@x.example", "bob@x.example"))
        [server] = self.endpoint.servers
        server.greet(b"250-lmtp.test\r\n250 PIPELINING\r\n")
        self.assertTrue(server.sent().endswith(b"RCPT TO:<bob@x.example>\r\nDATA\r\n"))
        server.reply(b"250 OK\r\n250 OK\r\n250 OK\r\n354 go\r\n")
        self.assertEqual(server.sent(), MESSAGE.replace(b"\r\n.a", b"\r\n..a") + b".\r\n")
        server.reply(b"250 2.0.0 ann\r\n250 2.0.0 bob\r\n")
        self.assertEqual(result.codes, [250, 250])

    def test_chunkingOff(self) -> None:
        """chunking=False sends DATA even when CHUNKING is offered."""
        result = self.deliver(self.backend(chunking=False), envelope("ann@x.example"))
        [server] = self.endpoint.servers
        server.greet()
        self.assertTrue(server.sent().endswith(b"DATA\r\n"))
        server.reply(b"250 OK\r\n250 OK\r\n354 go\r\n")
        server.sent()
        server.reply(b"250 OK\r\n")
        self.assertEqual(result.codes, [250])

    def test_duplicates(self) -> None:
        """A recipient given twice gets a reply each time."""
        result = self.deliver(self.backend(), envelope("ann@x.example", "ann@x.example"))
        [server] = self.endpoint.servers
        server.greet()
        server.sent()
        server.reply(b"250 OK\r\n250 OK\r\n250 OK\r\n")
        server.sent()
        server.reply(b"250 2.0.0 saved\r\n250 2.0.0 saved\r\n")
        self.assertEqual(result.codes, [250, 250])

    def test_mailRefused(self) -> None:
        """MAIL refused: every recipient gets MAIL's reply; the next message starts with RSET."""
        backend = self.backend()
        result = self.deliver(backend, envelope("ann@x.example", "bob@x.example"))
        [server] = self.endpoint.servers
        server.greet()
        server.sent()
        server.reply(b"452 4.3.1 Out of space\r\n503 5.5.1 MAIL first\r\n503 5.5.1 MAIL first\r\n")
        self.assertEqual(result.codes, [452, 452])
        self.assertEqual(server.sent(), b"")  # no data
        second = self.deliver(backend, envelope("ann@x.example"))
        self.assertTrue(server.sent().startswith(b"RSET\r\nMAIL FROM:"))
        server.reply(b"250 OK\r\n250 OK\r\n250 OK\r\n")
        server.sent()
        server.reply(b"250 OK\r\n")
        self.assertEqual(second.codes, [250])

    def test_noRecipientAccepted(self) -> None:
        """Every RCPT refused: no data is sent; each keeps its refusal."""
        result = self.deliver(self.backend(), envelope("ann@x.example", "bob@x.example"))
        [server] = self.endpoint.servers
        server.greet()
        server.sent()
        server.reply(b"250 OK\r\n550 5.1.1 no\r\n450 4.2.1 later\r\n")
        self.assertEqual(result.codes, [550, 450])
        self.assertEqual(server.sent(), b"")

    def test_refusedWithoutSending(self) -> None:
        """SMTPUTF8 needed and not offered, or too big for SIZE: refused, nothing sent."""
        backend = self.backend()
        utf8 = self.deliver(backend, envelope("ann@x.example", SMTPUTF8=None))  # type: ignore[arg-type]
        [server] = self.endpoint.servers
        server.greet(b"250-lmtp.test\r\n250-PIPELINING\r\n250 SIZE 10\r\n")
        self.assertEqual(utf8.value.replies[0].enhanced, (5, 6, 7))  # type: ignore[union-attr]
        big = self.deliver(backend, envelope("ann@x.example"))
        self.assertEqual(big.value.replies[0].enhanced, (5, 3, 4))  # type: ignore[union-attr]
        self.assertEqual(server.sent(), b"")

    def test_bareLineEndingWithoutChunking(self) -> None:
        """A bare LF cannot go by DATA: refused with 554 5.6.3, nothing sent."""
        result = self.deliver(self.backend(), envelope("ann@x.example"),
                              message(b"Subject: x\r\n\r\nbare\nLF\r\n"))  # fmt: skip
        [server] = self.endpoint.servers
        server.greet(b"250-lmtp.test\r\n250 PIPELINING\r\n")
        self.assertEqual(result.value.replies[0].enhanced, (5, 6, 3))  # type: ignore[union-attr]

    def test_parameters(self) -> None:
        """SIZE, BODY=8BITMIME and SMTPUTF8 go on MAIL when offered."""
        self.deliver(self.backend(), envelope("ann@x.example", BODY="8BITMIME",
                                              SMTPUTF8=None))  # type: ignore[arg-type]  # fmt: skip
        [server] = self.endpoint.servers
        server.greet(b"250-lmtp.test\r\n250-PIPELINING\r\n250-SIZE 1000000\r\n250-8BITMIME\r\n"
                     b"250-SMTPUTF8\r\n250 CHUNKING\r\n")  # fmt: skip
        mail = server.sent().split(b"\r\n")[0]
        self.assertEqual(mail, b"MAIL FROM:<a@b.example> SIZE=%d BODY=8BITMIME SMTPUTF8"
                               % len(MESSAGE))  # fmt: skip

    def test_largeMessage(self) -> None:
        """A message over the chunk size goes in several BDAT chunks, each answered."""
        data = b"Subject: big\r\n\r\n" + b"x" * 998 + b"\r\n" * 1
        data = data * 1200
        result = self.deliver(self.backend(), envelope("ann@x.example"), message(data))
        [server] = self.endpoint.servers
        server.greet()
        server.sent()
        server.reply(b"250 OK\r\n250 OK\r\n")
        first = server.sent()
        self.assertTrue(first.startswith(b"BDAT 1048576\r\n"))
        server.reply(b"250 2.0.0 1048576 octets\r\n")
        rest = server.sent()
        self.assertTrue(rest.startswith(b"BDAT %d LAST\r\n" % (len(data) - 1048576)))
        self.assertEqual(first[14:] + rest[rest.index(b"\r\n") + 2 :], data)
        server.reply(b"250 2.0.0 saved\r\n")
        self.assertEqual(result.codes, [250])

    def test_ownerCloses(self) -> None:
        """The owner closing the message while the session waits does not stop the data."""
        msg = message()
        result = self.deliver(self.backend(), envelope("ann@x.example"), msg)
        msg.close()
        [server] = self.endpoint.servers
        server.greet()
        server.sent()
        server.reply(b"250 OK\r\n250 OK\r\n")
        self.assertTrue(server.sent().endswith(MESSAGE))
        server.reply(b"250 OK\r\n")
        self.assertEqual(result.codes, [250])
        self.assertTrue(msg.closed)


class FailureTests(BackendTestCase):
    def test_timeoutAfterData(self) -> None:
        """No reply after the data: after final seconds, a 451 for each one still waiting."""
        backend = self.backend(final=600.0)
        result = self.deliver(backend, envelope("ann@x.example", "nobody@x.example",
                                                "bob@x.example"))  # fmt: skip
        [server] = self.endpoint.servers
        server.greet()
        server.sent()
        server.reply(b"250 OK\r\n250 OK\r\n550 no\r\n250 OK\r\n")
        server.sent()
        server.reply(b"250 2.0.0 ann saved\r\n")
        self.clock.advance(599)
        self.assertIsNone(result.value)
        self.clock.advance(1)
        self.assertEqual(result.codes, [250, 550, 451])
        self.assertEqual(result.value.replies[2].enhanced, (4, 4, 2))  # type: ignore[union-attr]
        self.assertTrue(server.transport.disconnecting)
        server.lose()
        self.assertEqual(backend.openSessions, 0)

    def test_lostAfterData(self) -> None:
        """The connection lost after one final reply: the others get 451, never 250."""
        result = self.deliver(self.backend(), envelope("ann@x.example", "bob@x.example"))
        [server] = self.endpoint.servers
        server.greet()
        server.sent()
        server.reply(b"250 OK\r\n250 OK\r\n250 OK\r\n")
        server.sent()
        server.reply(b"250 2.0.0 ann saved\r\n")
        server.lose()
        self.assertEqual(result.codes, [250, 451])

    def test_closingReply(self) -> None:
        """A 421 ends the session: recipients still waiting get a 451 quoting it."""
        result = self.deliver(self.backend(), envelope("ann@x.example", "bob@x.example"))
        [server] = self.endpoint.servers
        server.greet()
        server.sent()
        server.reply(b"250 OK\r\n250 OK\r\n250 OK\r\n")
        server.sent()
        server.reply(b"250 2.0.0 ann\r\n421 4.3.2 shutting down\r\n")
        self.assertEqual(result.codes, [250, 451])
        self.assertIn("421 4.3.2 shutting down", result.value.replies[1].text)  # type: ignore[union-attr]

    def test_connectFails(self) -> None:
        """No connection: 451 4.4.1 for every recipient."""
        self.endpoint.refuse = error.ConnectionRefusedError()
        result = self.deliver(self.backend(), envelope("ann@x.example", "bob@x.example"))
        self.assertEqual(result.codes, [451, 451])
        self.assertEqual(result.value.replies[0].enhanced, (4, 4, 1))  # type: ignore[union-attr]

    def test_greetingRefused(self) -> None:
        """A 554 greeting, or LHLO refused: a 451 quoting the server, QUIT sent."""
        backend = self.backend()
        first = self.deliver(backend, envelope("ann@x.example"))
        self.endpoint.servers[0].reply(b"554 5.3.2 not now\r\n")
        self.assertEqual(first.codes, [451])
        self.assertIn("554 5.3.2 not now", first.value.replies[0].text)  # type: ignore[union-attr]
        self.assertEqual(self.endpoint.servers[0].sent(), b"QUIT\r\n")
        self.endpoint.servers[0].lose()
        second = self.deliver(backend, envelope("ann@x.example"))
        server = self.endpoint.servers[1]
        server.reply(b"220 lmtp.test\r\n")
        server.sent()
        server.reply(b"500 5.5.1 Unknown command\r\n")
        self.assertEqual(second.codes, [451])
        self.assertIn("refused LHLO", second.value.replies[0].text)  # type: ignore[union-attr]

    def test_greetingTimeout(self) -> None:
        """A server that never greets: 451 after the reply timeout."""
        result = self.deliver(self.backend(replies=30), envelope("ann@x.example"))
        self.clock.advance(30)
        self.assertEqual(result.codes, [451])

    def test_brokenReply(self) -> None:
        """A malformed reply ends the session with a 4xx."""
        result = self.deliver(self.backend(), envelope("ann@x.example"))
        [server] = self.endpoint.servers
        server.greet()
        server.reply(b"hello there\r\n")
        self.assertEqual(result.codes, [451])


class PoolTests(BackendTestCase):
    def start(self, backend: LMTPBackend) -> tuple[Results, ScriptedServer]:
        result = self.deliver(backend, envelope("ann@x.example"))
        return result, self.endpoint.servers[-1]

    def finish(self, server: ScriptedServer) -> None:
        server.reply(b"250 OK\r\n250 OK\r\n")
        server.sent()
        server.reply(b"250 2.0.0 saved\r\n")

    def test_reuse(self) -> None:
        """The next message reuses the idle session (no RSET after a finished message)."""
        backend = self.backend()
        first, server = self.start(backend)
        server.greet()
        server.sent()
        self.finish(server)
        second = self.deliver(backend, envelope("bob@x.example"))
        self.assertEqual(len(self.endpoint.servers), 1)
        self.assertTrue(server.sent().startswith(b"MAIL FROM:"))
        self.finish(server)
        self.assertEqual((first.codes, second.codes), ([250], [250]))

    def test_bound(self) -> None:
        """With connections=1 a second delivery waits for the session, then uses it."""
        backend = self.backend(connections=1)
        first, server = self.start(backend)
        second = self.deliver(backend, envelope("bob@x.example"))
        self.assertEqual(len(self.endpoint.servers), 1)
        server.greet()
        server.sent()
        self.finish(server)
        self.assertEqual(first.codes, [250])
        self.assertIn(b"RCPT TO:<bob@x.example>", server.sent())
        self.finish(server)
        self.assertEqual(second.codes, [250])
        self.assertEqual(len(self.endpoint.servers), 1)

    def test_boundAfterFailure(self) -> None:
        """A session that dies frees its place for one that waits."""
        backend = self.backend(connections=1)
        first, server = self.start(backend)
        second = self.deliver(backend, envelope("bob@x.example"))
        server.reply(b"554 no\r\n")
        server.lose()
        self.assertEqual(first.codes, [451])
        self.assertEqual(len(self.endpoint.servers), 2)
        other = self.endpoint.servers[1]
        other.greet()
        other.sent()
        self.finish(other)
        self.assertEqual(second.codes, [250])

    def test_idleExpires(self) -> None:
        """An idle session says QUIT after idle seconds and leaves the pool."""
        backend = self.backend(idle=10)
        _first, server = self.start(backend)
        server.greet()
        server.sent()
        self.finish(server)
        self.clock.advance(10)
        self.assertEqual(server.sent(), b"QUIT\r\n")
        server.reply(b"221 2.0.0 bye\r\n")
        self.assertTrue(server.transport.disconnecting)
        server.lose()
        self.assertEqual((backend.openSessions, backend.idleSessions), (0, 0))

    def test_noIdle(self) -> None:
        """idle=0: QUIT once the message is done."""
        backend = self.backend(idle=0)
        _first, server = self.start(backend)
        server.greet()
        server.sent()
        self.finish(server)
        self.assertEqual(server.sent(), b"QUIT\r\n")

    def test_staleIdleSession(self) -> None:
        """An idle session the server closed before answering: the message goes on a new one."""
        backend = self.backend()
        _first, server = self.start(backend)
        server.greet()
        server.sent()
        self.finish(server)
        second = self.deliver(backend, envelope("bob@x.example"))
        server.lose()  # closed by the server as the message was being sent
        self.assertIsNone(second.value)
        fresh = self.endpoint.servers[1]
        fresh.greet()
        self.assertIn(b"RCPT TO:<bob@x.example>", fresh.sent())
        self.finish(fresh)
        self.assertEqual(second.codes, [250])

    def test_maxMessages(self) -> None:
        """After maxMessages a session says QUIT instead of waiting idle."""
        backend = self.backend(maxMessages=1)
        _first, server = self.start(backend)
        server.greet()
        server.sent()
        self.finish(server)
        self.assertEqual(server.sent(), b"QUIT\r\n")

    def test_closeIdle(self) -> None:
        """closeIdle says QUIT on every idle session."""
        backend = self.backend()
        _first, server = self.start(backend)
        server.greet()
        server.sent()
        self.finish(server)
        backend.closeIdle()
        self.assertEqual(server.sent(), b"QUIT\r\n")


@implementer(IStreamClientEndpoint)
class LoopbackEndpoint:
    """Connects to mailframe's own LMTP server through iosim."""

    def __init__(self, server: SMTPServerFactory, clock: MemoryReactorClock) -> None:
        self.server, self.clock = server, clock
        self.pumps: list[iosim.IOPump] = []

    def connect(self, factory: IProtocolFactory) -> defer.Deferred[Any]:
        client = factory.buildProtocol(None)
        server = self.server.buildProtocol(None)
        pump = iosim.connect(server, iosim.makeFakeServer(server), client,
                             iosim.makeFakeClient(client), greet=False)  # fmt: skip
        self.pumps.append(pump)
        return defer.succeed(client)

    def flush(self) -> None:
        for _ in range(20):
            for pump in self.pumps:
                pump.flush()


class MailframeServerTests(SynchronousTestCase):
    def test_endToEnd(self) -> None:
        """Against mailframe's LMTP server: the message byte-exact, one result per recipient."""
        clock = MemoryReactorClock()
        stored = MemoryBackend()

        @implementer(IDeliveryBackend)
        class Refusing:
            def deliver(self, env: Envelope, msg: Message) -> Any:
                stored.deliver(env, msg)
                full = R.Reply(452, (4, 2, 2), "Mailbox full")
                return DeliveryResult(
                    tuple(full if r.address.localPart == "full" else R.OK for r in env.recipients)
                )

        config = ServerConfig(hostname="lmtp.test", localDomains=frozenset({"x.example"}),
                              lmtp=True)  # fmt: skip
        server = SMTPServerFactory(config, Refusing(), [AnyRecipient()], clock=clock)
        endpoint = LoopbackEndpoint(server, clock)
        backend = LMTPBackend(clock, endpoint, "lmtp.test", "mx.test")
        result = Results(backend.deliver(envelope("ann@x.example", "full@x.example",
                                                  "bob@elsewhere.example", "ann@x.example"),
                                         message()))  # fmt: skip
        endpoint.flush()
        self.assertEqual([(r.code, r.enhanced) for r in result.value.replies],  # type: ignore[union-attr]
                         [(250, (2, 0, 0)), (452, (4, 2, 2)), (550, (5, 7, 1)),
                          (250, (2, 0, 0))])  # fmt: skip
        [delivered] = stored.messages
        self.assertTrue(delivered.data.startswith(b"Received: from mx.test"))
        self.assertIn(b" with LMTP id ", delivered.data)
        self.assertTrue(delivered.data.endswith(b"\r\n" + MESSAGE))


class FactoryTests(SynchronousTestCase):
    def test_endpointString(self) -> None:
        """The arguments are the endpoint, escaped again; other options are the endpoint's."""
        self.assertEqual(
            endpointString(("unix", "/run/dovecot/lmtp"), {}), "unix:/run/dovecot/lmtp"
        )
        self.assertEqual(endpointString(("tcp", "127.0.0.1", "24"), {"timeout": "5"}),
                         "tcp:127.0.0.1:24:timeout=5")  # fmt: skip
        self.assertEqual(endpointString(("unix", "/a:b"), {}), "unix:/a\\:b")
        self.assertRaises(ValueError, endpointString, ("bogus", "1"), {})

    def test_checkArguments(self) -> None:
        """Options are converted; the rest goes to the endpoint; an ENDPOINT is needed."""
        args = lmtpBackend.checkArguments("tcp", "h", "24", connections="3", idle="0",
                                          timeout="5")  # fmt: skip
        self.assertEqual(args["endpoint"], "tcp:h:24:timeout=5")
        self.assertEqual((args["connections"], args["idle"], args["chunking"]), (3, 0.0, True))
        self.assertRaises(ValueError, lmtpBackend.checkArguments)
        self.assertRaises(ValueError, lmtpBackend.checkArguments, "unix", "/x", idle="soon")

    def test_build(self) -> None:
        """build() makes an LMTPBackend named by its endpoint, LHLO with the host name."""
        context = ProviderContext(MemoryReactorClock(), ServerConfig(hostname="mx.example"))
        backend = lmtpBackend.makeProvider(context, "unix", "/run/lmtp", final="20m")
        assert isinstance(backend, LMTPBackend)
        verifyObject(IDeliveryBackend, backend)
        self.assertEqual(backend.name, "unix:/run/lmtp")
        self.assertEqual(backend.settings.heloName, "mx.example")
        self.assertEqual(backend.settings.final, 1200.0)
