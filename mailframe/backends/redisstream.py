"""
The C{redis-stream} backend: each message becomes an entry of a Redis
stream (XADD), the envelope as fields and the message as the field
C{message}, or, above C{inline} octets, stored under a key of its own
(SET) that the entry names in the field C{message-key}:
C{--deliver redis-stream:redis://127.0.0.1:6379/0:stream=mail:{domain}}.

A recipient is delivered once Redis has answered the XADD (and the SET
before it, in one MULTI/EXEC) with success, and, with C{replicas=N}, once
WAIT says N replicas have it.  What Redis acknowledges is as durable as its
configuration makes it: only C{appendonly yes} with C{appendfsync always}
has the entry on disk before the answer (the backend warns at connection
when CONFIG GET shows otherwise).  Anything else (an error reply, a lost
connection, no answer within C{timeout}, no connection at all) is a 451 of
ours for the recipients of that entry, never a success: the entry may then
exist all the same, and the retry adds it again (at least once).

The client is mailframe's own (L{mailframe.backends._redisclient}, RESP2):
the commands of all deliveries share one connection, pipelined, on the
reactor, without threads; it is made again with backoff when lost.

Owns: the entry's layout and the per-recipient result.  Must not: import
mailframe.server or the global reactor.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IStreamClientEndpoint
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
from mailframe.backends._redisclient import RedisProtocol, RedisURL, connectRedis
from mailframe.backends._resp import RedisError
from mailframe.envelope import DeliveryResult, Envelope, Recipient
from mailframe.interfaces import IDeliveryBackend
from mailframe.message import Message, MessageClosed
from mailframe.reply import Reply

__all__ = ["RedisStreamBackend", "RedisURL", "connectRedis", "entryFields"]

log = Logger(namespace="mailframe.backends.redisstream")

_LOCAL_ERROR = Reply(451, (4, 3, 0), "Local error in the Redis stream backend")


def entryFields(
    envelope: Envelope, recipients: Sequence[Recipient], size: int
) -> list[tuple[str, bytes | str]]:
    """The envelope as stream fields: lists as JSON arrays, numbers as decimal text."""
    out: list[tuple[str, bytes | str]] = []
    for name, value in envelopeFields(envelope, recipients, size):
        if isinstance(value, list):
            out.append((name, json.dumps(value, ensure_ascii=False)))
        else:
            out.append((name, str(value)))
    return out


@implementer(IDeliveryBackend)
class RedisStreamBackend:
    """
    Adds entries to the stream C{stream} (a L{Template}: one entry per
    distinct name among the recipients) of the Redis server at C{url}.

    @param maxlen: trim the stream to about this many entries (C{MAXLEN ~});
        None keeps every entry.
    @param inline: messages larger than this are stored by reference (a key
        C{STREAM:message:UUID}); None: always inline.
    @param expire: seconds to live of a key stored by reference (None: none).
    @param replicas: wait (WAIT) until this many replicas have the entry.
    @param timeout: seconds for a connection and for each answer.
    @param endpoint: connect through this endpoint instead of C{url}'s (tests).
    """

    def __init__(
        self,
        reactor: Any,
        url: RedisURL,
        stream: Template,
        *,
        maxlen: int | None = None,
        inline: int | None = None,
        expire: float | None = None,
        replicas: int = 0,
        timeout: float = 30.0,
        endpoint: IStreamClientEndpoint | None = None,
    ) -> None:
        if timeout <= 0 or replicas < 0:
            raise ValueError("timeout must be positive, replicas not negative")
        self.reactor = reactor
        self.url = url
        self.stream = stream
        self.maxlen = maxlen
        self.inline = inline
        self.expire = expire
        self.replicas = replicas
        self.timeout = timeout
        self.endpoint = endpoint
        self.name = str(url)
        self.connector: Connector[RedisProtocol] = Connector(
            reactor, self._connect, self.name, discard=lambda p: p.abort("closed")
        )
        self._warned = False

    # -- IDeliveryBackend --------------------------------------------------------

    def deliver(
        self, envelope: Envelope, message: Message
    ) -> defer.Deferred[DeliveryResult | None]:
        """One result per recipient: 250 once Redis answered its XADD, else 451."""
        return heldDelivery(
            envelope, message, lambda: self._deliver(envelope, message), log, "Redis",
            _LOCAL_ERROR
        )  # fmt: skip

    def close(self) -> defer.Deferred[None]:
        """Close the connection and make no other (tests, shutdown)."""
        current = self.connector.current
        self.connector.close()
        if current is None or not current.connected:
            return defer.succeed(None)
        done: defer.Deferred[None] = defer.Deferred()
        current.onLost = lambda protocol, reason: done.callback(None)
        return done

    # -- delivery ------------------------------------------------------------------

    async def _deliver(self, envelope: Envelope, message: Message) -> DeliveryResult:
        recipients = envelope.recipients
        count = len(recipients)
        try:
            data = await readMessage(self.reactor, message)
        except MessageClosed:
            return self._all(count, GONE)
        try:
            connection = await self.connector.get(self.timeout)
        except Unavailable as e:
            return self._all(count, Reply(451, (4, 4, 1), f"Redis is unavailable: {e}"))
        groups = self.stream.groups(envelope, recipients)
        answers = [
            self._add(connection, name, envelope, [recipients[i] for i in indexes], data)
            for name, indexes in groups
        ]
        outcomes: list[Reply] = []
        with self._deadline(connection):
            for name, answer in zip((name for name, _ in groups), answers, strict=True):
                outcomes.append(await self._outcome(name, answer, envelope))
        if self.replicas and any(r.code < 300 for r in outcomes):
            with self._deadline(connection):
                shortfall = await self._wait(connection)
            if shortfall is not None:
                outcomes = [shortfall if r.code < 300 else r for r in outcomes]
        replies: list[Reply] = [_LOCAL_ERROR] * count
        for (_, indexes), reply in zip(groups, outcomes, strict=True):
            for i in indexes:
                replies[i] = reply
        return DeliveryResult(tuple(replies), (self.name,) * count)

    def _add(
        self,
        connection: RedisProtocol,
        stream: str,
        envelope: Envelope,
        recipients: list[Recipient],
        data: bytes,
    ) -> defer.Deferred[Any]:
        """Write the commands of one entry (pipelined); a Deferred of the entry's ID."""
        fields: list[bytes | str] = []
        for name, value in entryFields(envelope, recipients, len(data)):
            fields += [name, value]
        trim: list[bytes | str | int] = ["MAXLEN", "~", self.maxlen] if self.maxlen else []
        if self.inline is None or len(data) <= self.inline:
            return connection.execute("XADD", stream, *trim, "*", *fields, "message", data)
        key = f"{stream}:message:{uuid.uuid4().hex}"
        ttl: list[bytes | str | int] = ["PX", int(self.expire * 1000)] if self.expire else []
        steps = [
            connection.execute("MULTI"),
            connection.execute("SET", key, data, *ttl),
            connection.execute("XADD", stream, *trim, "*", *fields, "message-key", key),
            connection.execute("EXEC"),
        ]

        def entryID(results: list[tuple[bool, Any]]) -> Any:
            for ok, value in results:
                if not ok:
                    value.raiseException()
            executed = results[-1][1]
            if executed is None:
                raise RedisError("EXECABORT the transaction was discarded")
            for value in executed:
                if isinstance(value, RedisError):
                    raise value
            return executed[-1]

        return defer.DeferredList(steps, consumeErrors=True).addCallback(entryID)

    async def _outcome(
        self, stream: str, answer: defer.Deferred[Any], envelope: Envelope
    ) -> Reply:
        try:
            entry = await answer
        except RedisError as e:
            log.warn("{id}: Redis refused: {error}", id=envelope.queueID, error=e.text)
            return Reply(451, (4, 3, 0), f"Redis: {shorten(e.text)}")
        except Exception as e:
            log.warn("{id}: {error}", id=envelope.queueID, error=shorten(e))
            return Reply(451, (4, 4, 2), f"No answer from Redis: {shorten(e)}")
        entryID = entry.decode("ascii", "replace") if isinstance(entry, bytes) else str(entry)
        return Reply(250, (2, 6, 0), f"Added to Redis stream {stream} as {entryID}")

    @contextmanager
    def _deadline(self, connection: RedisProtocol) -> Iterator[None]:
        """Abort the connection if what is awaited inside takes more than C{timeout}."""
        timer = self.reactor.callLater(
            self.timeout, connection.abort, f"no answer in {self.timeout:g} s"
        )
        try:
            yield
        finally:
            if timer.active():
                timer.cancel()

    async def _wait(self, connection: RedisProtocol) -> Reply | None:
        """None once C{replicas} replicas have what was written, else the 451 to give."""
        milliseconds = max(1, int(self.timeout * 800))  # Redis answers before our deadline
        try:
            acknowledged = await connection.execute("WAIT", self.replicas, milliseconds)
        except Exception as e:
            return Reply(451, (4, 4, 2), f"WAIT for the Redis replicas failed: {shorten(e)}")
        if isinstance(acknowledged, int) and acknowledged >= self.replicas:
            return None
        return Reply(
            451,
            (4, 4, 2),
            f"Only {acknowledged} of {self.replicas} Redis replicas confirmed the entry",
        )

    def _all(self, count: int, reply: Reply) -> DeliveryResult:
        return DeliveryResult((reply,) * count, (self.name,) * count)

    # -- the connection ------------------------------------------------------------

    def _connect(self) -> defer.Deferred[RedisProtocol]:
        return defer.ensureDeferred(self._connectAndCheck())

    async def _connectAndCheck(self) -> RedisProtocol:
        connection = await connectRedis(
            self.reactor, self.url, self.timeout, self.name, self.endpoint
        )
        connection.onLost = self._lost
        if not self._warned:
            self._warned = True
            await self._checkPersistence(connection)
        return connection

    async def _checkPersistence(self, connection: RedisProtocol) -> None:
        """Warn once if CONFIG GET shows a configuration that can lose acknowledged entries."""
        try:
            appendonly = await connection.execute("CONFIG", "GET", "appendonly")
            appendfsync = await connection.execute("CONFIG", "GET", "appendfsync")
        except RedisError:
            return  # CONFIG renamed or refused (a managed Redis): nothing to tell
        values = dict(zip(appendonly[::2], appendonly[1::2], strict=True))
        values.update(zip(appendfsync[::2], appendfsync[1::2], strict=True))
        if values.get(b"appendonly") != b"yes" or values.get(b"appendfsync") != b"always":
            log.warn(
                "{name}: appendonly is {appendonly}, appendfsync {appendfsync}: entries Redis "
                "acknowledged can be lost in a crash (appendonly yes and appendfsync always "
                "keep them)",
                name=self.name,
                appendonly=values.get(b"appendonly", b"?").decode(),
                appendfsync=values.get(b"appendfsync", b"?").decode(),
            )

    def _lost(self, connection: RedisProtocol, reason: Any) -> None:
        self.connector.lost(connection, shorten(reason))
