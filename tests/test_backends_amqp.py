"""
Tests for the C{amqp} backend (L{mailframe.backends.amqp}), in memory:
pika's real Twisted adapter talks to a scripted AMQP 0-9-1 broker on a
StringTransport (frames made and read with pika's own codec), timed by a
fake clock.  The broker answers the handshake and declarations by itself;
each test chooses what becomes of each publication (basic.ack, basic.nack,
basic.return then ack, a channel closed, no answer).  No network, no sleeps.
"""

from __future__ import annotations

from typing import Any

import pika
from pika import frame, spec
from twisted.internet import defer
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from mailframe.address import parseMailbox
from mailframe.backends.amqp import AMQPBackend, checkKey, redactURL
from mailframe.backends.factories import amqpBackend
from mailframe.config import ProviderContext, ServerConfig
from mailframe.envelope import Envelope, Recipient
from mailframe.interfaces import IDeliveryBackend
from mailframe.message import Message
from mailframe.plugins import SettingError

URL = "amqp://guest:secret@broker.test:5672/%2F"
MESSAGE = b"From: a@b.example\r\nSubject: hi\r\n\r\n.a dot line\r\nHello\r\n"
HEADER = b"AMQP\x00\x00\x09\x01"


def envelope(*recipients: str, sender: str = "a@b.example", **params: str) -> Envelope:
    return Envelope("Q1", parseMailbox(sender), params,
                    [Recipient(parseMailbox(r)) for r in recipients])  # fmt: skip


def message(data: bytes = MESSAGE) -> Message:
    m = Message()
    m.write(data)
    m.finish()
    return m


class Publication:
    """One basic.publish the broker received: method, properties, body, delivery tag."""

    def __init__(self, channel: int, method: spec.Basic.Publish, tag: int) -> None:
        self.channel = channel
        self.method = method
        self.tag = tag
        self.properties: Any = None
        self.size = 0
        self.body = b""


class FakeBroker:
    """The broker's side of one connection, answering with pika's frames."""

    def __init__(self, protocol: Any, transport: StringTransport) -> None:
        self.protocol = protocol
        self.transport = transport
        self.buffer = b""
        self.started = False
        self.methods: list[Any] = []
        self.publications: list[Publication] = []
        self._partial: Publication | None = None
        self._tags = 0

    def send(self, *frames: Any) -> None:
        self.protocol.dataReceived(b"".join(f.marshal() for f in frames))

    def pump(self) -> None:
        """Read what the client wrote and answer what needs an answer."""
        while True:
            data = self.transport.value()
            self.transport.clear()
            if not data:
                return
            self.buffer += data
            if not self.started and self.buffer.startswith(HEADER):
                self.buffer = self.buffer[len(HEADER) :]
                self.started = True
                self.send(frame.Method(0, spec.Connection.Start(
                    server_properties={"capabilities": {
                        "publisher_confirms": True, "basic.nack": True,
                        "consumer_cancel_notify": True, "connection.blocked": True}},
                    mechanisms="PLAIN", locales="en_US")))  # fmt: skip
            while self.buffer:
                consumed, received = frame.decode_frame(self.buffer)
                if not consumed:
                    break
                self.buffer = self.buffer[consumed:]
                self.handle(received)

    def handle(self, received: Any) -> None:
        if isinstance(received, frame.Header):
            assert self._partial is not None
            self._partial.properties = received.properties
            self._partial.size = received.body_size
            if not received.body_size:
                self._partial = None
            return
        if isinstance(received, frame.Body):
            assert self._partial is not None
            self._partial.body += received.fragment
            if len(self._partial.body) >= self._partial.size:
                self._partial = None
            return
        if not isinstance(received, frame.Method):
            return
        method, ch = received.method, received.channel_number
        self.methods.append(method)
        answers = {
            spec.Connection.StartOk: lambda: spec.Connection.Tune(2047, 131072, 0),
            spec.Connection.Open: lambda: spec.Connection.OpenOk(),
            spec.Channel.Open: lambda: spec.Channel.OpenOk(),
            spec.Confirm.Select: lambda: spec.Confirm.SelectOk(),
            spec.Queue.Declare: lambda: spec.Queue.DeclareOk(method.queue, 0, 0),
            spec.Exchange.Declare: lambda: spec.Exchange.DeclareOk(),
            spec.Queue.Bind: lambda: spec.Queue.BindOk(),
            spec.Channel.Close: lambda: spec.Channel.CloseOk(),
            spec.Connection.Close: lambda: spec.Connection.CloseOk(),
        }
        if isinstance(method, spec.Basic.Publish):
            self._tags += 1
            self._partial = Publication(ch, method, self._tags)
            self.publications.append(self._partial)
            return
        answer = answers.get(type(method))
        if answer is not None:
            self.send(frame.Method(ch, answer()))

    def ack(self, tag: int, multiple: bool = False) -> None:
        self.send(frame.Method(1, spec.Basic.Ack(tag, multiple)))

    def nack(self, tag: int) -> None:
        self.send(frame.Method(1, spec.Basic.Nack(tag, False, False)))

    def returnMessage(self, publication: Publication) -> None:
        """basic.return of a publication (unroutable), its header and body: no ack yet."""
        m = publication.method
        self.send(
            frame.Method(1, spec.Basic.Return(312, "NO_ROUTE", m.exchange, m.routing_key)),
            frame.Header(1, len(publication.body), publication.properties),
            frame.Body(1, publication.body),
        )

    def closeChannel(self, code: int, text: str) -> None:
        self.send(frame.Method(1, spec.Channel.Close(code, text, 60, 40)))


@implementer(IStreamClientEndpoint)
class FakeEndpoint:
    """Connects each time to a new FakeBroker (or fails, while C{refuse} is set)."""

    def __init__(self) -> None:
        self.brokers: list[FakeBroker] = []
        self.refuse = False

    def connect(self, factory: IProtocolFactory) -> defer.Deferred[Any]:
        if self.refuse:
            return defer.fail(ConnectionRefusedError("refused"))
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)  # type: ignore[union-attr]
        broker = FakeBroker(protocol, transport)
        self.brokers.append(broker)
        broker.pump()
        return defer.succeed(protocol)


class BackendTests(SynchronousTestCase):
    """AMQPBackend with pika against the scripted broker."""

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.endpoint = FakeEndpoint()

    def backend(self, key: str | None = None, **kw: Any) -> AMQPBackend:
        template = checkKey(kw.get("exchange", ""), kw.get("queue"), key)
        return AMQPBackend(self.clock, URL, template, endpoint=self.endpoint, **kw)

    def deliver(self, backend: AMQPBackend, e: Envelope) -> tuple[defer.Deferred[Any], FakeBroker]:
        d = backend.deliver(e, message())
        broker = self.endpoint.brokers[-1]
        broker.pump()
        return d, broker

    def test_interface(self) -> None:
        """It provides IDeliveryBackend."""
        self.assertTrue(verifyObject(IDeliveryBackend, self.backend("k")))

    def test_confirmed(self) -> None:
        """Persistent, mandatory, envelope in headers; 250 only after basic.ack."""
        backend = self.backend(queue="mail")
        d, broker = self.deliver(backend, envelope("x@y.example", "z@y.example", RET="HDRS"))
        kinds = [type(m) for m in broker.methods]
        self.assertIn(spec.Confirm.Select, kinds)
        declare = next(m for m in broker.methods if isinstance(m, spec.Queue.Declare))
        self.assertEqual((declare.queue, declare.durable), ("mail", True))
        [p] = broker.publications
        self.assertEqual((p.method.exchange, p.method.routing_key, p.method.mandatory),
                         ("", "mail", True))  # fmt: skip
        self.assertEqual(p.body, MESSAGE)
        self.assertEqual(p.properties.delivery_mode, 2)
        self.assertEqual(p.properties.content_type, "message/rfc822")
        headers = p.properties.headers
        self.assertEqual(headers["recipients"], ["x@y.example", "z@y.example"])
        self.assertEqual((headers["sender"], headers["queue-id"], headers["ret"]),
                         ("a@b.example", "Q1", "HDRS"))  # fmt: skip
        self.assertNoResult(d)
        broker.ack(p.tag)
        result = self.successResultOf(d)
        self.assertEqual([r.code for r in result.replies], [250, 250])
        self.assertEqual(result.remote[0], "amqp://broker.test:5672/%2F")

    def test_quorumAndExchange(self) -> None:
        """quorum=yes declares a quorum queue; an exchange is declared and bound by #."""
        backend = self.backend(exchange="mail", queue="inbound", quorum=True)
        d, broker = self.deliver(backend, envelope("x@y.example"))
        declare = next(m for m in broker.methods if isinstance(m, spec.Queue.Declare))
        self.assertEqual(declare.arguments, {"x-queue-type": "quorum"})
        exchange = next(m for m in broker.methods if isinstance(m, spec.Exchange.Declare))
        self.assertEqual((exchange.exchange, exchange.type, exchange.durable),
                         ("mail", "topic", True))  # fmt: skip
        bind = next(m for m in broker.methods if isinstance(m, spec.Queue.Bind))
        self.assertEqual((bind.queue, bind.exchange, bind.routing_key), ("inbound", "mail", "#"))
        [p] = broker.publications
        self.assertEqual(p.method.routing_key, "y.example")
        broker.ack(p.tag)
        self.assertEqual(self.successResultOf(d).replies[0].code, 250)

    def test_groupsNackAndReturn(self) -> None:
        """One publication per key; a nack and a return fail their own recipients only."""
        backend = self.backend("in.{domain}", exchange="mail")
        e = envelope("a@one.example", "b@two.example", "c@three.example", "d@one.example")
        d, broker = self.deliver(backend, e)
        p1, p2, p3 = broker.publications
        self.assertEqual([p.method.routing_key for p in broker.publications],
                         ["in.one.example", "in.two.example", "in.three.example"])  # fmt: skip
        self.assertEqual(p1.properties.headers["recipients"], ["a@one.example", "d@one.example"])
        broker.returnMessage(p2)
        broker.ack(p2.tag)
        broker.nack(p3.tag)
        broker.ack(p1.tag)
        result = self.successResultOf(d)
        self.assertEqual([r.code for r in result.replies], [250, 451, 451, 250])
        self.assertIn("No queue is bound", result.replies[1].text)
        self.assertIn("nack", result.replies[2].text)

    def test_returnWithMultipleAck(self) -> None:
        """One ack for several: only the returned publication fails, whichever it is."""
        backend = self.backend("{domain}", exchange="mail", unroutable="refuse")
        e = envelope("a@one.example", "b@two.example", "c@three.example")
        d, broker = self.deliver(backend, e)
        *_, p3 = broker.publications
        broker.returnMessage(p3)
        broker.ack(p3.tag, multiple=True)
        result = self.successResultOf(d)
        self.assertEqual([r.code for r in result.replies], [250, 250, 550])
        self.assertEqual(result.replies[2].enhanced, (5, 3, 0))

    def test_channelClosed(self) -> None:
        """The broker closes the channel (no such exchange): 451 with its words; a new connection next."""
        backend = self.backend("k", exchange="nosuch")
        d, broker = self.deliver(backend, envelope("x@y.example"))
        broker.closeChannel(404, "NOT_FOUND - no exchange 'nosuch' in vhost '/'")
        reply = self.successResultOf(d).replies[0]
        self.assertEqual(reply.code, 451)
        self.assertIn("NOT_FOUND", reply.text)
        self.assertTrue(broker.transport.disconnecting or broker.transport.disconnected)
        broker.protocol.connectionLost(Failure(ConnectionRefusedError("closed")))
        d2, broker2 = self.deliver(backend, envelope("x@y.example"))
        self.assertIsNot(broker2, broker)
        broker2.ack(1)
        self.assertEqual(self.successResultOf(d2).replies[0].code, 250)

    def test_noConfirmation(self) -> None:
        """No ack within the timeout: the connection is dropped and the recipients get 451."""
        backend = self.backend("k", timeout=5.0)
        d, broker = self.deliver(backend, envelope("x@y.example"))
        self.clock.advance(5)
        self.assertTrue(broker.transport.disconnecting or broker.transport.disconnected)
        broker.protocol.connectionLost(Failure(ConnectionRefusedError("aborted")))
        reply = self.successResultOf(d).replies[0]
        self.assertEqual((reply.code, reply.enhanced), (451, (4, 4, 2)))
        self.assertIn("no confirmation in 5 s", reply.text)

    def test_connectionLost(self) -> None:
        """A connection lost with publications in flight: 451 for each, never 250."""
        backend = self.backend("k")
        d, broker = self.deliver(backend, envelope("x@y.example"))
        broker.protocol.connectionLost(Failure(ConnectionRefusedError("reset")))
        self.assertEqual(self.successResultOf(d).replies[0].code, 451)

    def test_brokerDown(self) -> None:
        """A broker that refuses connections: 451 4.4.1 after the timeout, not before."""
        self.endpoint.refuse = True
        backend = self.backend("k", timeout=3.0)
        d = backend.deliver(envelope("x@y.example"), message())
        self.assertNoResult(d)
        self.clock.advance(3)
        reply = self.successResultOf(d).replies[0]
        self.assertEqual((reply.code, reply.enhanced), (451, (4, 4, 1)))
        self.assertIn("refused", reply.text)

    def test_messageHeld(self) -> None:
        """The message is held until the broker answered; its owner may close it meanwhile."""
        backend = self.backend("k")
        m = message()
        d = backend.deliver(envelope("x@y.example"), m)
        broker = self.endpoint.brokers[-1]
        broker.pump()
        m.close()
        self.assertFalse(m.closed)
        broker.ack(1)
        self.successResultOf(d)
        self.assertTrue(m.closed)

    def test_close(self) -> None:
        """close() ends the connection; deliveries after it get 451."""
        backend = self.backend("k")
        d, broker = self.deliver(backend, envelope("x@y.example"))
        broker.ack(1)
        self.successResultOf(d)
        closed = backend.close()
        self.assertTrue(broker.transport.disconnecting or broker.transport.disconnected)
        broker.protocol.connectionLost(Failure(ConnectionRefusedError("closed")))
        self.successResultOf(closed)
        result = self.successResultOf(backend.deliver(envelope("x@y.example"), message()))
        self.assertEqual(result.replies[0].code, 451)


class FactoryTests(SynchronousTestCase):
    """--deliver amqp:URL:options."""

    def test_description(self) -> None:
        """The URL is the arguments joined again; the key defaults to the queue, or {domain}."""
        args = amqpBackend.checkArguments("amqp", "//guest", "guest@h", "5672/%2F", queue="mail")
        self.assertEqual(args["url"], "amqp://guest:guest@h:5672/%2F")
        self.assertEqual(args["key"].text, "mail")
        args = amqpBackend.checkArguments("amqp", "//h", exchange="x")
        self.assertEqual(args["key"].text, "{domain}")
        backend = amqpBackend.build(ProviderContext(MemoryReactorClock(), ServerConfig()), **args)
        self.assertIsInstance(backend, AMQPBackend)

    def test_bad(self) -> None:
        """A bad URL, template or option is refused before anything starts."""
        self.assertRaises(ValueError, amqpBackend.checkArguments)
        self.assertRaises(ValueError, amqpBackend.checkArguments, "http", "//h")
        self.assertRaises(ValueError, amqpBackend.checkArguments, "amqp", "//h", key="{x}")
        self.assertRaises(ValueError, amqpBackend.checkArguments, "amqp", "//h", quorum="yes")
        self.assertRaises(SettingError, amqpBackend.checkArguments, "amqp", "//h", nope="1")

    def test_redact(self) -> None:
        """Logs and replies name the broker without its password."""
        self.assertEqual(redactURL(URL), "amqp://broker.test:5672/%2F")
        self.assertEqual(redactURL("amqps://u:p@h"), "amqps://h:5671/")
        self.assertEqual(pika.URLParameters(URL).virtual_host, "/")
