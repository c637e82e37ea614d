"""
The C{amqp} backend: publishes each message to a RabbitMQ (AMQP 0-9-1)
exchange, persistent (delivery mode 2), mandatory, on a channel in
publisher-confirm mode: C{--deliver amqp:amqp://USER:PASS@HOST:5672/VHOST:queue=mail}.

A recipient is delivered once the broker's basic.ack for its publication
has come, and only if no basic.return came before it: routed to at least
one queue, and (for a persistent message in a durable queue) written to
disk, or for a quorum queue accepted by a majority of its members.  A
basic.nack, a return (no queue is bound for the routing key), a channel
the broker closed, a lost connection, or no confirmation within
C{timeout}, is a 451 of ours for that publication's recipients (a return is
a 550 with C{unroutable=refuse}), never a success: the message may reach a
queue all the same, and the retry publishes it again (at least once).

The envelope travels in the message's headers (L{envelopeFields}: C{sender},
C{recipients}, DSN parameters, client facts, C{queue-id}); the body is the
message as received, with mailframe's Received: field.  One publication per
distinct routing key (the key may name the recipient's C{{domain}}).

The client is pika's Twisted adapter (C{TwistedProtocolConnection}), on the
reactor mailframe runs on: pika is maintained, speaks AMQP 0-9-1 with
publisher confirms, and needs neither asyncio nor threads.  One connection
and one channel carry every delivery; a lost one is made again with
backoff (L{mailframe.backends._handoff.Connector}).

Owns: the publication and the per-recipient result.  Must not: import
mailframe.server, or pika's Twisted adapter at import time (it imports the
global reactor: it is imported when the first connection is made).
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from twisted.internet import defer
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from zope.interface import implementer

from mailframe.backends._handoff import (
    Connector,
    Template,
    Unavailable,
    envelopeFields,
    readMessage,
    shorten,
)
from mailframe.backends._held import GONE, heldDelivery
from mailframe.envelope import DeliveryResult, Envelope, Recipient
from mailframe.interfaces import IDeliveryBackend
from mailframe.message import Message, MessageClosed
from mailframe.reply import Reply

__all__ = ["AMQPBackend", "amqpParameters", "redactURL"]

log = Logger(namespace="mailframe.backends.amqp")

_LOCAL_ERROR = Reply(451, (4, 3, 0), "Local error in the AMQP backend")


def redactURL(url: str) -> str:
    """The URL without its password, for logs and replies."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    port = parts.port or (5671 if parts.scheme == "amqps" else 5672)
    return f"{parts.scheme}://{host}:{port}{parts.path or '/'}"


def amqpParameters(url: str) -> Any:
    """
    pika's C{URLParameters} of an C{amqp://} or C{amqps://} URL (credentials,
    virtual host, heartbeat= and other query options).

    @raise ValueError: one line, for anything pika refuses.
    """
    import pika

    scheme = urlsplit(url).scheme.lower()
    if scheme not in ("amqp", "amqps"):
        raise ValueError(f"the URL must begin amqp:// or amqps://, not {redactURL(url)!r}")
    try:
        return pika.URLParameters(url)
    except Exception as e:
        raise ValueError(f"bad AMQP URL {redactURL(url)!r}: {shorten(e)}") from None


@dataclass(eq=False)
class _Link:
    """One connection and its confirm-mode channel, and what the broker returned on it."""

    protocol: Any
    channel: Any
    returned: set[str] = field(default_factory=set)
    lost: defer.Deferred[None] = field(default_factory=defer.Deferred)
    down: bool = False

    def abort(self, why: str) -> None:
        self.down = True
        transport = self.protocol.transport
        if transport is not None:
            log.info("closing the AMQP connection: {why}", why=why)
            transport.abortConnection()


def _quietPika() -> None:
    """
    pika logs through the standard library: a returned message with the
    first 255 octets of its body, every lost connection.  mailframe logs
    each of those itself (without message content), so pika's own lines are
    left out unless the application set a level for the C{pika} logger.
    """
    logger = logging.getLogger("pika")
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.CRITICAL)


def _linkProtocol(parameters: Any, reactor: Any) -> Any:
    """A pika TwistedProtocolConnection that tells when its TCP connection ends."""
    from pika.adapters.twisted_connection import TwistedProtocolConnection

    _quietPika()

    class _Protocol(TwistedProtocolConnection):
        onLost: Any = None

        def connectionLost(self, reason: Any = None) -> None:
            try:
                super().connectionLost(reason)
            finally:
                if self.onLost is not None:
                    self.onLost(reason)

    protocol = _Protocol(parameters, custom_reactor=reactor)
    # pika drops its ready Deferred once fired: keep it, whenever the handshake ends.
    protocol.whenReady = protocol.ready
    return protocol


@implementer(IDeliveryBackend)
class AMQPBackend:
    """
    Publishes to C{exchange} (C{""}: the default exchange) with the routing
    key C{key} (a L{Template}) on the broker at C{url}.

    @param queue: declare this durable queue at each connection (a quorum
        queue with C{quorum}), and, when C{exchange} is not the default one,
        that exchange (durable, type topic) with the queue bound to it by
        C{#}.  None: declare nothing (the application owns the topology).
    @param unroutable: C{"retry"}: a returned (unroutable) message is a 451;
        C{"refuse"}: a 550.
    @param timeout: seconds for a connection and for each confirmation.
    @param endpoint: connect through this endpoint instead of C{url}'s (tests).
    """

    def __init__(
        self,
        reactor: Any,
        url: str,
        key: Template,
        *,
        exchange: str = "",
        queue: str | None = None,
        quorum: bool = False,
        unroutable: str = "retry",
        timeout: float = 30.0,
        endpoint: Any = None,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if unroutable not in ("retry", "refuse"):
            raise ValueError("unroutable must be retry or refuse")
        self.reactor = reactor
        self.url = url
        self.parameters = amqpParameters(url)
        self.key = key
        self.exchange = exchange
        self.queue = queue
        self.quorum = quorum
        self.unroutable = unroutable
        self.timeout = timeout
        self.endpoint = endpoint
        self.name = redactURL(url)
        self.connector: Connector[_Link] = Connector(
            reactor, self._connect, self.name, discard=lambda link: link.abort("closed")
        )
        self._serial = itertools.count(1)

    # -- IDeliveryBackend --------------------------------------------------------

    def deliver(
        self, envelope: Envelope, message: Message
    ) -> defer.Deferred[DeliveryResult | None]:
        """One result per recipient: 250 once the broker confirmed its publication, else 4xx."""
        return heldDelivery(
            envelope, message, lambda: self._deliver(envelope, message), log, "AMQP",
            _LOCAL_ERROR
        )  # fmt: skip

    def close(self) -> defer.Deferred[None]:
        """Close the connection and make no other (tests, shutdown)."""
        link = self.connector.current
        self.connector.close()
        if link is None:
            return defer.succeed(None)
        return link.lost

    # -- delivery ------------------------------------------------------------------

    async def _deliver(self, envelope: Envelope, message: Message) -> DeliveryResult:
        recipients = envelope.recipients
        count = len(recipients)
        try:
            data = await readMessage(self.reactor, message)
        except MessageClosed:
            return self._all(count, GONE)
        try:
            link = await self.connector.get(self.timeout)
        except Unavailable as e:
            return self._all(count, Reply(451, (4, 4, 1), f"The AMQP broker is unavailable: {e}"))
        groups = self.key.groups(envelope, recipients)
        publications = [
            self._publish(link, key, envelope, [recipients[i] for i in indexes], data)
            for key, indexes in groups
        ]
        replies: list[Reply] = [_LOCAL_ERROR] * count
        for (key, indexes), publication in zip(groups, publications, strict=True):
            reply = await self._outcome(link, key, publication, envelope)
            for i in indexes:
                replies[i] = reply
        return DeliveryResult(tuple(replies), (self.name,) * count)

    def _publish(
        self, link: _Link, key: str, envelope: Envelope, recipients: list[Recipient], data: bytes
    ) -> tuple[str, defer.Deferred[Any]]:
        import pika

        messageID = f"{envelope.queueID}.{next(self._serial)}"
        properties = pika.BasicProperties(
            content_type="message/rfc822",
            delivery_mode=2,
            message_id=messageID,
            app_id="mailframe",
            headers=dict(envelopeFields(envelope, recipients, len(data))),
        )
        if link.down:
            return messageID, defer.fail(ConnectionError("the connection is closing"))
        try:
            confirmed = link.channel.basic_publish(
                self.exchange, key, data, properties, mandatory=True
            )
        except Exception:
            confirmed = defer.fail()
        return messageID, confirmed

    async def _outcome(
        self,
        link: _Link,
        key: str,
        publication: tuple[str, defer.Deferred[Any]],
        envelope: Envelope,
    ) -> Reply:
        from pika import exceptions

        messageID, confirmed = publication
        timer = self.reactor.callLater(
            self.timeout, link.abort, f"no confirmation in {self.timeout:g} s"
        )
        try:
            await confirmed
        except exceptions.UnroutableError:
            pass  # pika may give a return to the wrong publication: see below
        except exceptions.NackError:
            log.warn("{id}: the broker nacked {mid}", id=envelope.queueID, mid=messageID)
            return Reply(451, (4, 3, 0), "The AMQP broker refused the message (basic.nack)")
        except exceptions.ChannelClosed as e:
            text = f"{e.reply_code} {e.reply_text}"
            log.warn("{id}: channel closed: {text}", id=envelope.queueID, text=text)
            link.abort(f"the broker closed the channel: {text}")
            return Reply(451, (4, 3, 0), f"The AMQP broker closed the channel: {shorten(text)}")
        except Exception as e:
            if link.down and not timer.active():
                error = f"no confirmation in {self.timeout:g} s"
            else:
                error = shorten(e) if str(e) else "the connection was lost"
            log.warn("{id}: {mid} not confirmed: {error}", id=envelope.queueID, mid=messageID,
                     error=error)  # fmt: skip
            return Reply(451, (4, 4, 2), f"No confirmation from the AMQP broker: {error}")
        finally:
            if timer.active():
                timer.cancel()
        # The broker acked it.  It was routed unless a basic.return named it
        # (pika's own UnroutableError goes to the first publication the
        # ack covers, which with several in flight may be another one).
        if messageID in link.returned:
            link.returned.discard(messageID)
            where = f"exchange {self.exchange!r}" if self.exchange else "the default exchange"
            text = f"No queue is bound to {where} for routing key {key!r}"
            log.warn("{id}: {text}", id=envelope.queueID, text=text)
            if self.unroutable == "refuse":
                return Reply(550, (5, 3, 0), text)
            return Reply(451, (4, 3, 0), text)
        return Reply(250, (2, 6, 0), f"Confirmed by the AMQP broker (routing key {key})")

    def _all(self, count: int, reply: Reply) -> DeliveryResult:
        return DeliveryResult((reply,) * count, (self.name,) * count)

    # -- the connection ------------------------------------------------------------

    def _connect(self) -> defer.Deferred[_Link]:
        return defer.ensureDeferred(self._open())

    async def _open(self) -> _Link:
        from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS

        parameters = self.parameters
        endpoint: Any = self.endpoint or HostnameEndpoint(
            self.reactor, parameters.host, parameters.port, timeout=self.timeout
        )
        if self.endpoint is None and urlsplit(self.url).scheme.lower() == "amqps":
            from twisted.internet.ssl import optionsForClientTLS

            endpoint = wrapClientTLS(optionsForClientTLS(parameters.host), endpoint)
        connecting = endpoint.connect(
            Factory.forProtocol(lambda: _linkProtocol(parameters, self.reactor))
        )
        connecting.addTimeout(self.timeout, self.reactor)
        protocol = await connecting
        lost: defer.Deferred[None] = defer.Deferred()
        link = _Link(protocol, None, lost=lost)

        def onLost(reason: Any) -> None:
            link.down = True
            self.connector.lost(link, shorten(reason))
            lost.callback(None)

        protocol.onLost = onLost
        timer = self.reactor.callLater(self.timeout, link.abort, "the AMQP handshake timed out")
        try:
            await protocol.whenReady
            channel = link.channel = await protocol.channel()
            await channel.confirm_delivery()
            await self._declare(channel)
        except BaseException:
            link.abort("the set-up failed")
            raise
        finally:
            if timer.active():
                timer.cancel()
        channel.add_on_return_callback(
            lambda returned: link.returned.add(returned.properties.message_id or "")
        )

        def channelClosed(reason: Any) -> None:
            link.abort(f"the channel closed: {shorten(reason)}")

        channel.on_closed.addBoth(channelClosed)
        return link

    async def _declare(self, channel: Any) -> None:
        if self.queue is None:
            return
        arguments = {"x-queue-type": "quorum"} if self.quorum else None
        await channel.queue_declare(queue=self.queue, durable=True, arguments=arguments)
        if self.exchange:
            await channel.exchange_declare(
                exchange=self.exchange, exchange_type="topic", durable=True
            )
            await channel.queue_bind(queue=self.queue, exchange=self.exchange, routing_key="#")


def defaultKey(exchange: str, queue: str | None) -> str:
    """The routing key when none is given: the queue's name on the default exchange."""
    if not exchange and queue:
        return queue
    return "{domain}"


def checkKey(exchange: str, queue: str | None, key: str | None) -> Template:
    """The routing key template of the options. @raise ValueError: for a bad one."""
    return Template(key if key is not None else defaultKey(exchange, queue))
