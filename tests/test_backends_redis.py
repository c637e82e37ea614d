"""
Tests for the C{redis-stream} backend (L{mailframe.backends.redisstream}),
its RESP2 codec (L{mailframe.backends._resp}) and client
(L{mailframe.backends._redisclient}), and the helpers it shares with the
AMQP backend (L{mailframe.backends._handoff}): in memory, with a scripted
Redis server on a StringTransport and a fake clock.  No network, no sleeps.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from mailframe.address import Address, parseMailbox
from mailframe.backends._handoff import (
    Connector,
    Template,
    Unavailable,
    envelopeFields,
    readMessage,
)
from mailframe.backends._redisclient import RedisURL
from mailframe.backends._resp import (
    NEED_DATA,
    ProtocolError,
    RedisError,
    ReplyParser,
    encodeCommand,
)
from mailframe.backends.factories import redisStreamBackend
from mailframe.backends.redisstream import RedisStreamBackend, entryFields
from mailframe.config import ProviderContext, ServerConfig
from mailframe.envelope import Envelope, Recipient, SessionSnapshot, TLSInfo
from mailframe.interfaces import IDeliveryBackend
from mailframe.message import Message
from mailframe.plugins import SettingError

MESSAGE = b"From: a@b.example\r\nSubject: hi\r\n\r\n.a dot line\r\nHello\r\n"


def envelope(*recipients: str, sender: str = "a@b.example", **params: str) -> Envelope:
    return Envelope("Q1", parseMailbox(sender), params,
                    [Recipient(parseMailbox(r)) for r in recipients])  # fmt: skip


def message(data: bytes = MESSAGE) -> Message:
    m = Message()
    m.write(data)
    m.finish()
    return m


def parseAll(data: bytes) -> list[Any]:
    parser = ReplyParser()
    parser.feed(data)
    out = []
    while (value := parser.next()) is not NEED_DATA:
        out.append(value)
    return out


class CodecTests(SynchronousTestCase):
    """The RESP2 wire format on its own."""

    def test_encodeCommand(self) -> None:
        """A command is an array of bulk strings; str as UTF-8, ints as decimal."""
        self.assertEqual(
            encodeCommand("XADD", b"s", 5, "é"),
            b"*4\r\n$4\r\nXADD\r\n$1\r\ns\r\n$1\r\n5\r\n$2\r\n\xc3\xa9\r\n",
        )
        self.assertRaises(ValueError, encodeCommand)
        self.assertRaises(TypeError, encodeCommand, "SET", True)

    def test_everyType(self) -> None:
        """Simple strings, errors, integers, bulk strings, arrays and their null forms."""
        data = (
            b"+OK\r\n-ERR wrong\r\n:42\r\n$3\r\na\r\n\r\n$-1\r\n*-1\r\n*0\r\n"
            b"*2\r\n*1\r\n:1\r\n$0\r\n\r\n"
        )
        values = parseAll(data)
        self.assertEqual(values[0], "OK")
        self.assertIsInstance(values[1], RedisError)
        self.assertEqual((values[1].kind, values[1].text), ("ERR", "ERR wrong"))
        self.assertEqual(values[2:], [42, b"a\r\n", None, None, [], [[1], b""]])

    def test_byteByByte(self) -> None:
        """Replies split anywhere come out whole, in order, once."""
        data = b"*2\r\n$5\r\nhello\r\n:7\r\n+PONG\r\n"
        parser = ReplyParser()
        out = []
        for i in range(len(data)):
            parser.feed(data[i : i + 1])
            while (value := parser.next()) is not NEED_DATA:
                out.append(value)
        self.assertEqual(out, [[b"hello", 7], "PONG"])

    def test_notRESP(self) -> None:
        """Bytes that are not RESP2 are a ProtocolError, not a guess."""
        for bad in (b"?x\r\n", b":abc\r\n", b"$-5\r\n", b"$1\r\nab\r\n", b"*-2\r\n"):
            parser = ReplyParser()
            parser.feed(bad)
            self.assertRaises(ProtocolError, parser.next)
        parser = ReplyParser()
        parser.feed(b"+" + b"x" * 70000)
        self.assertRaises(ProtocolError, parser.next)

    @given(st.lists(st.binary(max_size=300), min_size=1, max_size=8), st.integers(1, 50))
    def test_commandsParseBack(self, args: list[bytes], step: int) -> None:
        """A command, read by the reply parser in any chunks, is the array of its arguments."""
        data = encodeCommand(*args)
        parser = ReplyParser()
        out = []
        for i in range(0, len(data), step):
            parser.feed(data[i : i + step])
            while (value := parser.next()) is not NEED_DATA:
                out.append(value)
        self.assertEqual(out, [args])


class URLTests(SynchronousTestCase):
    """Redis URLs."""

    def test_forms(self) -> None:
        """redis://, rediss:// and unix:// with password, user and database."""
        u = RedisURL.parse("redis://:s%40cret@cache.example:6380/2")
        self.assertEqual((u.scheme, u.host, u.port, u.db, u.username, u.password),
                         ("redis", "cache.example", 6380, 2, None, "s@cret"))  # fmt: skip
        u = RedisURL.parse("rediss://app:pw@h/0")
        self.assertEqual((u.scheme, u.port, u.username, u.password), ("rediss", 6379, "app", "pw"))
        u = RedisURL.parse("unix:///run/redis.sock?db=3&password=x")
        self.assertEqual((u.path, u.db, u.password), ("/run/redis.sock", 3, "x"))
        self.assertEqual(str(RedisURL.parse("redis://h")), "redis://h:6379/0")

    def test_bad(self) -> None:
        """Other schemes and bad databases are one-line errors without the password."""
        for bad in ("http://h", "redis://:pw@h/x", "unix://", "redis://h/-1"):
            with self.assertRaises(ValueError) as caught:
                RedisURL.parse(bad)
            self.assertNotIn("pw", str(caught.exception))


class TemplateTests(SynchronousTestCase):
    """Routing keys and stream names from the recipients."""

    def test_groups(self) -> None:
        """One group per distinct name, recipients in order; {sender} alone is one group."""
        e = envelope("a@X.example", "b@y.example", "c@x.example", sender="s@z.example")
        t = Template("mail.{domain}")
        self.assertEqual(t.groups(e, e.recipients), [("mail.x.example", [0, 2]),
                                                     ("mail.y.example", [1])])  # fmt: skip
        self.assertEqual(
            Template("{sender}").groups(e, e.recipients), [("s@z.example", [0, 1, 2])]
        )
        self.assertEqual(Template("{local}|{recipient}").render(e, e.recipients[1]),
                         "b|b@y.example")  # fmt: skip
        self.assertEqual(Template("{{x}}").render(e, e.recipients[0]), "{x}")

    def test_bad(self) -> None:
        """Unknown names, conversions and stray braces are refused at once."""
        for bad in ("{queue}", "{domain!r}", "{domain:>5}", "{", "a}"):
            self.assertRaises(ValueError, Template, bad)


class FieldsTests(SynchronousTestCase):
    """The envelope as fields."""

    def test_fields(self) -> None:
        """Sender, recipients, DSN, session facts; <> is empty; lists are JSON in Redis."""
        e = Envelope(
            "Q9", Address.null(), {"RET": "HDRS", "ENVID": "e1", "SMTPUTF8": None},
            [Recipient(parseMailbox("x@y.example"), {"NOTIFY": "SUCCESS,FAILURE",
                                                     "ORCPT": "rfc822;x@y.example"}),
             Recipient(parseMailbox("ü@y.example"))],
            session=SessionSnapshot(peerHost="192.0.2.1", peerPort=4000, heloName="c.example",
                                    protocol="ESMTPSA", authenticated="ann",
                                    tls=TLSInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384"),
                                    peerName="c.example"),
        )  # fmt: skip
        fields = dict(envelopeFields(e, e.recipients, 123))
        self.assertEqual(fields["queue-id"], "Q9")
        self.assertEqual(fields["sender"], "")
        self.assertEqual(fields["recipients"], ["x@y.example", "ü@y.example"])
        self.assertEqual(fields["notify"], ["SUCCESS,FAILURE", ""])
        self.assertEqual(fields["orcpt"], ["rfc822;x@y.example", ""])
        self.assertEqual(
            (fields["ret"], fields["envid"], fields["smtputf8"]), ("HDRS", "e1", "yes")
        )
        self.assertEqual(fields["size"], 123)
        self.assertEqual(fields["client-address"], "192.0.2.1")
        self.assertEqual(fields["client-name"], "c.example")
        self.assertEqual(fields["helo"], "c.example")
        self.assertEqual(fields["auth"], "ann")
        self.assertEqual(fields["tls"], "TLSv1.3 TLS_AES_256_GCM_SHA384")
        redis = dict(entryFields(e, e.recipients, 123))
        self.assertEqual(json.loads(redis["recipients"]), ["x@y.example", "ü@y.example"])
        self.assertEqual(redis["size"], "123")

    def test_noDSN(self) -> None:
        """Without DSN parameters there are no notify/orcpt/ret/envid fields."""
        e = envelope("x@y.example")
        names = [n for n, _ in envelopeFields(e, e.recipients, 1)]
        self.assertEqual(names, ["queue-id", "sender", "recipients", "body", "size"])


# -- a scripted Redis server ------------------------------------------------------


@implementer(IStreamClientEndpoint)
class FakeEndpoint:
    """Connects each time to a new StringTransport (or fails, while C{refuse} is set)."""

    def __init__(self) -> None:
        self.servers: list[FakeRedis] = []
        self.refuse = False

    def connect(self, factory: IProtocolFactory) -> defer.Deferred[Any]:
        if self.refuse:
            return defer.fail(ConnectionRefusedError("refused"))
        protocol = factory.buildProtocol(None)
        assert protocol is not None
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.servers.append(FakeRedis(protocol, transport))
        return defer.succeed(protocol)


class FakeRedis:
    """The server side of one connection: the commands written, replies fed back."""

    def __init__(self, protocol: Any, transport: StringTransport) -> None:
        self.protocol = protocol
        self.transport = transport
        self.seen: list[list[bytes]] = []

    def commands(self) -> list[list[bytes]]:
        """The commands written since the last call."""
        data = self.transport.value()
        self.transport.clear()
        new = parseAll(data)
        self.seen += new
        return new

    def reply(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def answerSetup(self) -> None:
        """Answer PING and the two CONFIG GETs of a new connection (a safe configuration)."""
        self.assertNames(["PING"])
        self.reply(b"+PONG\r\n")
        self.assertNames(["CONFIG"])
        self.reply(b"*2\r\n$10\r\nappendonly\r\n$3\r\nyes\r\n")
        self.assertNames(["CONFIG"])
        self.reply(b"*2\r\n$11\r\nappendfsync\r\n$6\r\nalways\r\n")

    def assertNames(self, names: list[str]) -> list[list[bytes]]:
        commands = self.commands()
        got = [c[0].decode() for c in commands]
        if got != names:
            raise AssertionError(f"expected {names}, got {got}")
        return commands


class BackendTests(SynchronousTestCase):
    """RedisStreamBackend against a scripted server."""

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.endpoint = FakeEndpoint()

    def backend(self, url: str = "redis://127.0.0.1:6379/0", **kw: Any) -> RedisStreamBackend:
        return RedisStreamBackend(
            self.clock, RedisURL.parse(url), Template(kw.pop("stream", "mail")),
            endpoint=self.endpoint, **kw,
        )  # fmt: skip

    def test_interface(self) -> None:
        """It provides IDeliveryBackend."""
        self.assertTrue(verifyObject(IDeliveryBackend, self.backend()))

    def test_xadd(self) -> None:
        """One XADD with the envelope and the message; 250 only after its reply."""
        backend = self.backend(maxlen=1000)
        e = envelope("x@y.example", "z@y.example")
        d = backend.deliver(e, message())
        server = self.endpoint.servers[0]
        server.answerSetup()
        [xadd] = server.assertNames(["XADD"])
        self.assertEqual(xadd[1:5], [b"mail", b"MAXLEN", b"~", b"1000"])
        self.assertEqual(xadd[5], b"*")
        fields = dict(zip(xadd[6::2], xadd[7::2], strict=True))
        self.assertEqual(fields[b"message"], MESSAGE)
        self.assertEqual(json.loads(fields[b"recipients"]), ["x@y.example", "z@y.example"])
        self.assertEqual(fields[b"queue-id"], b"Q1")
        self.assertNoResult(d)
        server.reply(b"$15\r\n1700000000000-0\r\n")
        result = self.successResultOf(d)
        self.assertEqual([r.code for r in result.replies], [250, 250])
        self.assertIn("1700000000000-0", result.replies[0].text)

    def test_groupsAndErrors(self) -> None:
        """One entry per stream; an error reply fails only its own recipients, with 451."""
        backend = self.backend(stream="in:{domain}")
        e = envelope("a@one.example", "b@two.example", "c@one.example")
        d = backend.deliver(e, message())
        server = self.endpoint.servers[0]
        server.answerSetup()
        adds = server.assertNames(["XADD", "XADD"])
        self.assertEqual([a[1] for a in adds], [b"in:one.example", b"in:two.example"])
        server.reply(b"$3\r\n1-0\r\n-WRONGTYPE Operation against a key\r\n")
        result = self.successResultOf(d)
        self.assertEqual([r.code for r in result.replies], [250, 451, 250])
        self.assertIn("WRONGTYPE", result.replies[1].text)

    def test_byReference(self) -> None:
        """Above inline=, SET then XADD naming the key, in one MULTI/EXEC, with its TTL."""
        backend = self.backend(inline=10, expire=60.0)
        d = backend.deliver(envelope("x@y.example"), message())
        server = self.endpoint.servers[0]
        server.answerSetup()
        _, setKey, xadd, _ = server.assertNames(["MULTI", "SET", "XADD", "EXEC"])
        self.assertEqual(setKey[2], MESSAGE)
        self.assertEqual(setKey[3:], [b"PX", b"60000"])
        fields = dict(zip(xadd[3::2], xadd[4::2], strict=True))
        self.assertEqual(fields[b"message-key"], setKey[1])
        self.assertTrue(setKey[1].startswith(b"mail:message:"))
        self.assertNotIn(b"message", fields)
        server.reply(b"+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n+OK\r\n$3\r\n5-0\r\n")
        self.assertEqual(self.successResultOf(d).replies[0].code, 250)

    def test_transactionError(self) -> None:
        """An error inside EXEC is a 451, not a success."""
        backend = self.backend(inline=1)
        d = backend.deliver(envelope("x@y.example"), message())
        server = self.endpoint.servers[0]
        server.answerSetup()
        server.assertNames(["MULTI", "SET", "XADD", "EXEC"])
        server.reply(b"+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n+OK\r\n-OOM no memory\r\n")
        self.assertEqual(self.successResultOf(d).replies[0].code, 451)

    def test_authSelectWait(self) -> None:
        """AUTH and SELECT at connection; WAIT for replicas after the XADD, short is 451."""
        backend = self.backend("redis://:pw@h:1/3", replicas=2)
        d = backend.deliver(envelope("x@y.example"), message())
        server = self.endpoint.servers[0]
        [auth] = server.assertNames(["AUTH"])
        self.assertEqual(auth, [b"AUTH", b"pw"])
        server.reply(b"+OK\r\n")
        server.assertNames(["SELECT"])
        server.reply(b"+OK\r\n")
        server.assertNames(["CONFIG"])
        server.reply(b"-ERR unknown command 'CONFIG'\r\n")  # renamed: no warning, no harm
        server.assertNames(["XADD"])
        server.reply(b"$3\r\n1-0\r\n")
        [wait] = server.assertNames(["WAIT"])
        self.assertEqual(wait[1], b"2")
        server.reply(b":1\r\n")
        reply = self.successResultOf(d).replies[0]
        self.assertEqual(reply.code, 451)
        self.assertIn("1 of 2", reply.text)

    def test_noAnswer(self) -> None:
        """No reply within the timeout: the connection is aborted, 451, and a new one made."""
        backend = self.backend(timeout=5.0)
        d = backend.deliver(envelope("x@y.example"), message())
        server = self.endpoint.servers[0]
        server.answerSetup()
        server.assertNames(["XADD"])
        self.clock.advance(5)
        self.assertTrue(server.transport.disconnecting or server.transport.disconnected)
        server.protocol.connectionLost(Failure(ConnectionRefusedError("gone")))
        reply = self.successResultOf(d).replies[0]
        self.assertEqual(reply.code, 451)
        d2 = backend.deliver(envelope("x@y.example"), message())
        self.assertEqual(len(self.endpoint.servers), 2)
        self.assertNoResult(d2)

    def test_down(self) -> None:
        """A server that refuses connections: 451 after the timeout, attempts with backoff."""
        self.endpoint.refuse = True
        backend = self.backend(timeout=10.0)
        d = backend.deliver(envelope("x@y.example"), message())
        self.assertNoResult(d)
        self.clock.advance(10)
        reply = self.successResultOf(d).replies[0]
        self.assertEqual((reply.code, reply.enhanced), (451, (4, 4, 1)))
        self.assertIn("refused", reply.text)
        self.endpoint.refuse = False
        d = backend.deliver(envelope("x@y.example"), message())
        self.assertEqual(self.endpoint.servers, [])  # the next attempt waits for its backoff
        self.clock.advance(6)
        server = self.endpoint.servers[0]
        server.answerSetup()
        server.assertNames(["XADD"])
        server.reply(b"$3\r\n1-0\r\n")
        self.assertEqual(self.successResultOf(d).replies[0].code, 250)

    def test_messageHeld(self) -> None:
        """The message is held until Redis answered; closing it meanwhile frees nothing."""
        backend = self.backend()
        m = message()
        d = backend.deliver(envelope("x@y.example"), m)
        m.close()
        self.assertFalse(m.closed)
        server = self.endpoint.servers[0]
        server.answerSetup()
        server.assertNames(["XADD"])
        server.reply(b"$3\r\n1-0\r\n")
        self.successResultOf(d)
        self.assertTrue(m.closed)

    def test_closedMessage(self) -> None:
        """A message closed before delivery began is a 451, nothing written."""
        m = message()
        m.close()
        result = self.successResultOf(self.backend().deliver(envelope("x@y.example"), m))
        self.assertEqual(result.replies[0].code, 451)
        self.assertEqual(self.endpoint.servers, [])


class ConnectorTests(SynchronousTestCase):
    """The connection kept with backoff."""

    def test_backoff(self) -> None:
        """Failed attempts wait 0.5, 1, 2 ... seconds (at most the maximum) while deliveries wait."""
        clock = MemoryReactorClock()
        attempts: list[float] = []

        def connect() -> defer.Deferred[str]:
            attempts.append(clock.seconds())
            return defer.fail(ConnectionRefusedError())

        connector: Connector[str] = Connector(clock, connect, "test", maximum=4)
        d = connector.get(20)
        for _ in range(40):
            clock.advance(0.5)
        self.assertEqual(attempts, [0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5])
        self.failureResultOf(d, Unavailable)


class FactoryTests(SynchronousTestCase):
    """--deliver redis-stream:URL:options."""

    def test_description(self) -> None:
        """The URL is the arguments joined again; options are checked; builds the backend."""
        args = redisStreamBackend.checkArguments(
            "redis", "//127.0.0.1", "6380/2", stream="m:{domain}", maxlen="5000",
            inline="1M", replicas="1",
        )  # fmt: skip
        self.assertEqual((args["url"].port, args["url"].db), (6380, 2))
        self.assertEqual((args["maxlen"], args["inline"], args["replicas"]), (5000, 1 << 20, 1))
        backend = redisStreamBackend.build(
            ProviderContext(MemoryReactorClock(), ServerConfig()), **args
        )
        self.assertIsInstance(backend, RedisStreamBackend)
        none = redisStreamBackend.checkArguments("redis", "//h", maxlen="none")
        self.assertIsNone(none["maxlen"])

    def test_bad(self) -> None:
        """A bad URL, template or option is refused before anything starts."""
        self.assertRaises(ValueError, redisStreamBackend.checkArguments)
        self.assertRaises(ValueError, redisStreamBackend.checkArguments, "http", "//h")
        self.assertRaises(ValueError, redisStreamBackend.checkArguments, "redis", "//h",
                          stream="{nope}")  # fmt: skip
        self.assertRaises(SettingError, redisStreamBackend.checkArguments, "redis", "//h",
                          maxlen="0")  # fmt: skip


class ReadMessageTests(TestCase):
    """Reading the message for a publication."""

    @defer.inlineCallbacks
    def test_spilled(self) -> Any:
        """A message large enough to be in a temporary file is read in a thread, whole."""
        from twisted.internet import reactor

        data = b"Subject: big\r\n\r\n" + b"x" * 998 + b"\r\n" * 1 + (b"y" * 78 + b"\r\n") * 30000
        m = message(data)
        self.assertFalse(m.inMemory)
        self.assertEqual((yield readMessage(reactor, m)), data)
        small = message()
        self.assertTrue(small.inMemory)
        self.assertEqual(self.successResultOf(readMessage(reactor, small)), MESSAGE)
