"""
The C{webhook} backend: posts each message to an HTTP endpoint of an
application (C{--deliver webhook:https://app.example/inbound}), with treq.

The body is the message itself (C{format=raw}: C{message/rfc822}, the
envelope in C{X-Mailframe-*} headers) or a JSON document (C{format=json}:
envelope, client, authentication results, header fields, text and HTML
parts, attachments in base64; see L{mailframe.backends._webhookbody}).
With a secret (C{secret=PATH}, a file: never the secret itself on the
command line) every request is signed with HMAC-SHA256 over the timestamp
and the body.  One request carries every recipient (its answer is each
recipient's), or one per recipient with C{each=yes}.

The answer: 2xx is delivered; a status listed in C{refuse} fails the
message for good (5xx: a bounce from the queue, or the session's reply);
anything else (another status, a redirect, no connection, a connection
lost before the answer, or no answer within C{timeout}) is a 4xx to retry.
Never a success without a 2xx.  A request whose connection was lost before
any answer is sent again once at once (a kept-alive connection the
application had closed): the application may then see it twice, as it may
after any retry (at least once; the queue ID tells the copies apart).

A delivery is never cancelled from outside; its timer bounds it.  It
holds the message (L{Message.retain}) until its last request is over.  A
message that is not small (C{inlineLimit}) is read and signed in a thread
(a pool of its own) and sent in pieces, so the reactor never reads a large
message at once.

Owns: the HTTP exchange and its outcome per recipient.  Must not: import
mailframe.server or mailframe.queue, or the global reactor.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from twisted.internet import defer, task
from twisted.internet.error import ConnectError, ConnectionDone, DNSLookupError
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

from mailframe._threads import WorkerPool, deferToPool, threadPools
from mailframe.backends._held import heldDelivery
from mailframe.backends._webhookbody import (
    encodeDocument,
    messageDocument,
    rawHeaders,
    sign,
    signatureHeader,
)
from mailframe.envelope import DeliveryResult, Envelope, Recipient
from mailframe.interfaces import IDeliveryBackend
from mailframe.message import Message
from mailframe.reply import Reply

__all__ = ["WebhookBackend", "checkURL", "readSecret"]

log = Logger(namespace="mailframe.backends.webhook")

POOL = "webhook"
"""The thread pool that reads, converts and signs messages that are not small."""

_LOCAL_ERROR = Reply(451, (4, 3, 0), "Local error in the webhook client")
_KEEP = 1024  # octets of an answer's body kept for the reply text
_MAX_TEXT = 200


def checkURL(url: str) -> str:
    """
    C{url} if it is an absolute http or https URL with a host and no
    user name or password in it.

    @raise ValueError: one line, saying what is wrong.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"expected an http:// or https:// URL, not {url!r}")
    if not parts.hostname:
        raise ValueError(f"the URL {url!r} has no host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("a user name or password in the URL is not supported (use secret=)")
    try:
        parts.port  # noqa: B018 - checks the port
    except ValueError as e:
        raise ValueError(f"bad port in {url!r}: {e}") from None
    return url


def readSecret(path: str) -> bytes:
    """
    The key in the file C{path}: its octets without the whitespace around
    them (a trailing newline).

    @raise ValueError: for an empty file (an unreadable one raises OSError).
    """
    with open(path, "rb") as f:
        secret = f.read().strip()
    if not secret:
        raise ValueError(f"the secret file {path} is empty")
    return secret


def shownURL(url: str) -> str:
    """The URL for logs: without its query (which may hold a token)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def _printable(data: bytes) -> str:
    line = data.split(b"\n", 1)[0].decode("utf-8", "replace")
    text = "".join(c if 32 <= ord(c) < 127 else " " for c in line)
    return " ".join(text.split())[:_MAX_TEXT]


def _because(text: str) -> str:
    return f": {text}" if text else ""


def delivered(code: int) -> Reply:
    return Reply(250, (2, 0, 0), f"Delivered to the application (HTTP {code})")


def refused(code: int, text: str) -> Reply:
    return Reply(
        554, (5, 0, 0), f"The application refused the message (HTTP {code}){_because(text)}"
    )


def unavailable(code: int, text: str) -> Reply:
    return Reply(451, (4, 3, 0), f"The application answered HTTP {code}{_because(text)}")


def unreachable(why: str) -> Reply:
    return Reply(451, (4, 4, 1), f"Cannot reach the application: {why}")


def noAnswer(seconds: float) -> Reply:
    return Reply(451, (4, 4, 2), f"The application did not answer within {seconds:g} s")


@dataclass(frozen=True, slots=True)
class _Post:
    """One request: its recipients, headers, and body (None: the message, streamed)."""

    recipients: tuple[int, ...]
    headers: dict[bytes, list[bytes]]
    body: bytes | None
    envelope: bytes | None = None  # the raw format's X-Mailframe-Envelope, signed too


class _Lost(Exception):
    """The connection was lost before any answer (the request may be sent again)."""


@implementer(IBodyProducer)
class _BytesProducer:
    """A body in memory, written at once."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.length = len(body)

    def startProducing(self, consumer: Any) -> defer.Deferred[None]:
        consumer.write(self.body)
        return defer.succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


@implementer(IBodyProducer)
class _ChunksProducer:
    """A held message, written a chunk at a time by a cooperator (read as it is sent)."""

    def __init__(self, message: Message, cooperator: task.Cooperator) -> None:
        self.message = message
        self.length = message.size if message.size >= 0 else UNKNOWN_LENGTH
        self.cooperator = cooperator
        self._task: task.CooperativeTask | None = None

    def startProducing(self, consumer: Any) -> defer.Deferred[None]:
        chunks = self.message.chunks()
        self._task = self.cooperator.cooperate(self._write(consumer, chunks))
        d = self._task.whenDone()

        def done(result: object) -> None:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
            if isinstance(result, Failure):
                result.trap(task.TaskStopped)
            return None

        return d.addBoth(done)

    @staticmethod
    def _write(consumer: Any, chunks: Iterator[bytes]) -> Iterator[None]:
        for chunk in chunks:
            consumer.write(chunk)
            yield None

    def pauseProducing(self) -> None:
        if self._task is not None:
            self._task.pause()

    def resumeProducing(self) -> None:
        if self._task is not None:
            self._task.resume()

    def stopProducing(self) -> None:
        if self._task is not None:
            with contextlib.suppress(task.TaskDone, task.TaskFinished, task.TaskStopped):
                self._task.stop()


class _Collector(Protocol):
    """Reads an answer's body to its end, keeping its first octets."""

    def __init__(self) -> None:
        self.kept = b""
        self.done: defer.Deferred[bytes] = defer.Deferred(self._cancel)

    def dataReceived(self, data: bytes) -> None:
        if len(self.kept) < _KEEP:
            self.kept += data[: _KEEP - len(self.kept)]

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        if not self.done.called:
            self.done.callback(self.kept)

    def _cancel(self, d: defer.Deferred[bytes]) -> None:
        stop = getattr(self.transport, "stopProducing", None)
        if stop is not None:
            stop()


@implementer(IDeliveryBackend)
class WebhookBackend:
    """
    Posts messages to C{url} (see the module docstring).

    @param reactor: the reactor (time, connections, threads).
    @param format: C{"json"} or C{"raw"}.
    @param secret: the HMAC key, or None to send unsigned requests.
    @param timeout: seconds for a whole exchange (connect, send, answer).
    @param refuse: the HTTP statuses that fail a message for good.
    @param each: one request per recipient (else one for all).
    @param connections: requests at once; deliveries beyond wait.
    @param original: JSON: the whole message in base64 too.
    @param client: makes the requests (a C{treq.client.HTTPClient}; by
        default one with a persistent connection pool).
    @param pool: the thread pool for messages that are not small.
    @param inlineLimit: octets up to which a message in memory is read,
        converted and signed in the reactor thread.
    """

    def __init__(
        self,
        reactor: Any,
        url: str,
        *,
        format: str = "json",
        secret: bytes | None = None,
        timeout: float = 30.0,
        refuse: Iterable[int] = (),
        each: bool = False,
        connections: int = 10,
        original: bool = False,
        client: Any = None,
        pool: WorkerPool | None = None,
        inlineLimit: int = 256 * 1024,
    ) -> None:
        if format not in ("json", "raw"):
            raise ValueError(f"format must be json or raw, not {format!r}")
        if timeout <= 0 or connections < 1:
            raise ValueError("timeout and connections must be positive")
        self.reactor = reactor
        self.url = checkURL(url)
        self.name = shownURL(url)
        self.remote = urlsplit(url).netloc
        self.format = format
        self.secret = secret
        self.timeout = timeout
        self.refuse = frozenset(refuse)
        self.each = each
        self.original = original
        self.inlineLimit = inlineLimit
        self._pool = pool
        self._httpPool: Any = None
        if client is None:
            from treq.client import HTTPClient
            from twisted.web.client import Agent

            self._httpPool = _quietPool()(reactor, persistent=True)
            self._httpPool.maxPersistentPerHost = connections
            self._httpPool.retryAutomatically = False
            client = HTTPClient(Agent(reactor, pool=self._httpPool))
        self._client = client
        self._slots = defer.DeferredSemaphore(connections)
        self._cooperator = task.Cooperator(scheduler=lambda f: reactor.callLater(0, f))

    def __repr__(self) -> str:
        return f"<WebhookBackend {self.name} {self.format}>"

    def close(self) -> defer.Deferred[None]:
        """Close the connections kept alive (at shutdown, and in tests)."""
        self._cooperator.stop()
        if self._httpPool is not None:
            return defer.ensureDeferred(self._httpPool.closeCachedConnections())
        return defer.succeed(None)

    # -- IDeliveryBackend --------------------------------------------------------

    def deliver(
        self, envelope: Envelope, message: Message
    ) -> defer.Deferred[DeliveryResult | None]:
        """A reply per recipient from the application's answer (or a 4xx of ours); never fails."""
        return heldDelivery(
            envelope, message, lambda: self._deliver(envelope, message), log, "webhook",
            _LOCAL_ERROR, remote=self.remote
        )  # fmt: skip

    # -- the work ----------------------------------------------------------------

    def _small(self, message: Message) -> bool:
        return message.inMemory and message.size <= self.inlineLimit

    def _threads(self) -> WorkerPool:
        if self._pool is None:
            self._pool = threadPools(self.reactor).pool(POOL)
        return self._pool

    async def _inThread(self, f: Callable[[], Any]) -> Any:
        return await deferToPool(self.reactor, self._threads(), f)

    async def _deliver(self, envelope: Envelope, message: Message) -> DeliveryResult:
        recipients = list(envelope.recipients)
        count = len(recipients)
        groups = [(i,) for i in range(count)] if self.each else [tuple(range(count))]
        small = self._small(message)
        if self.format == "raw":
            body = message.getvalue() if small else None
            posts = []
            for group in groups:
                headers, encoded = rawHeaders(envelope, [recipients[i] for i in group])
                posts.append(_Post(group, headers, body, encoded))
        else:
            reader = message.chunks()
            build = self._jsonPosts(envelope, recipients, groups, reader)
            posts = build() if small else await self._inThread(build)
        replies: list[Reply] = [_LOCAL_ERROR] * count
        answers = await defer.gatherResults(
            [defer.ensureDeferred(self._post(envelope, post, message)) for post in posts],
            consumeErrors=True,
        )
        for post, reply in zip(posts, answers, strict=True):
            for i in post.recipients:
                replies[i] = reply
        return DeliveryResult(tuple(replies), (self.remote,) * count)

    def _jsonPosts(
        self,
        envelope: Envelope,
        recipients: Sequence[Recipient],
        groups: Sequence[tuple[int, ...]],
        reader: Iterator[bytes],
    ) -> Callable[[], list[_Post]]:
        headers = {
            b"Content-Type": [b"application/json"],
            b"X-Mailframe-Queue-Id": [envelope.queueID.encode("ascii", "replace")],
        }

        def build() -> list[_Post]:
            try:
                data = b"".join(reader)
            finally:
                close = getattr(reader, "close", None)
                if close is not None:
                    close()
            document = messageDocument(envelope, recipients, data, original=self.original)
            every = document["envelope"]["recipients"]
            posts = []
            for group in groups:
                if len(group) != len(recipients):
                    one = {
                        **document,
                        "envelope": {
                            **document["envelope"],
                            "recipients": [every[i] for i in group],
                        },
                    }
                else:
                    one = document
                posts.append(_Post(group, headers, encodeDocument(one)))
            return posts

        return build

    async def _post(self, envelope: Envelope, post: _Post, message: Message) -> Reply:
        """Send one request (again once if its connection was lost before an answer)."""
        await self._slots.acquire()
        try:
            for attempt in (1, 2):
                try:
                    return await self._exchange(envelope, post, message)
                except _Lost as e:
                    if attempt == 2:
                        return self._report(envelope, unreachable(str(e)))
                except Exception:
                    log.failure("{id}: webhook {url} failed", id=envelope.queueID, url=self.name)
                    return _LOCAL_ERROR
            raise AssertionError("unreachable")
        finally:
            self._slots.release()

    async def _signedHeaders(self, post: _Post, message: Message) -> dict[bytes, list[bytes]]:
        headers = dict(post.headers)
        if self.secret is None:
            return headers
        secret = self.secret
        timestamp = int(self.reactor.seconds())
        if post.body is not None:
            signature = sign(secret, timestamp, post.body)
        else:
            reader = message.chunks()

            def signChunks() -> str:
                try:
                    return sign(secret, timestamp, reader)
                finally:
                    close = getattr(reader, "close", None)
                    if close is not None:
                        close()

            signature = await self._inThread(signChunks)
        headers[b"X-Mailframe-Timestamp"] = [b"%d" % timestamp]
        headers[b"X-Mailframe-Signature"] = [signatureHeader(timestamp, signature)]
        if post.envelope is not None:
            headers[b"X-Mailframe-Envelope-Signature"] = [
                signatureHeader(timestamp, sign(secret, timestamp, post.envelope))
            ]
        return headers

    async def _exchange(self, envelope: Envelope, post: _Post, message: Message) -> Reply:
        headers = await self._signedHeaders(post, message)
        if post.body is not None:
            producer: Any = _BytesProducer(post.body)
        else:
            producer = _ChunksProducer(message, self._cooperator)
        expired = False
        current: defer.Deferred[Any] | None = None

        def expire() -> None:
            nonlocal expired
            expired = True
            if current is not None:
                current.cancel()

        timer = self.reactor.callLater(self.timeout, expire)
        try:
            current = self._client.request(
                "POST",
                self.url,
                headers=headers,
                data=producer,
                allow_redirects=False,
                unbuffered=True,
            )
            response = await current
            collector = _Collector()
            current = collector.done
            response.deliverBody(collector)
            text = _printable(await current)
        except Exception as e:
            if expired:
                return self._report(envelope, noAnswer(self.timeout))
            if isinstance(e, (ConnectError, DNSLookupError)):
                return self._report(envelope, unreachable(_errorText(e)))
            if _lostBeforeAnswer(e):
                raise _Lost(_errorText(e)) from None
            raise
        finally:
            if timer.active():
                timer.cancel()
        code = response.code
        if 200 <= code < 300:
            return delivered(code)
        if code in self.refuse:
            return self._report(envelope, refused(code, text))
        return self._report(envelope, unavailable(code, text))

    def _report(self, envelope: Envelope, reply: Reply) -> Reply:
        log.warn(
            "{id}: webhook {url}: {reply}",
            id=envelope.queueID,
            url=self.name,
            reply=f"{reply.code} {reply.text}",
        )
        return reply


def _quietPool() -> Any:
    """An HTTPConnectionPool whose connections do not log "Starting factory" each."""
    from twisted.web.client import HTTPConnectionPool, _HTTP11ClientFactory

    class QuietFactory(_HTTP11ClientFactory):
        noisy = False

    class QuietPool(HTTPConnectionPool):
        _factory = QuietFactory

    return QuietPool


def _errorText(e: BaseException) -> str:
    reasons = getattr(e, "reasons", None)
    if reasons:
        e = getattr(reasons[0], "value", e)
    text = " ".join(str(e).split())[:_MAX_TEXT]
    return text or type(e).__name__


def _lostBeforeAnswer(e: BaseException) -> bool:
    from twisted.web._newclient import (
        RequestNotSent,
        RequestTransmissionFailed,
        ResponseNeverReceived,
    )

    return isinstance(e, (RequestNotSent, RequestTransmissionFailed, ResponseNeverReceived))
