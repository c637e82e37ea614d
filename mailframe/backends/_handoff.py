"""
What the backends that hand mail to an application's broker share (C{amqp},
C{redis-stream}): the envelope as named fields, the templates that choose a
routing key or a stream from a recipient (L{Template}), reading the message
without blocking the reactor (L{readMessage}), and one connection kept up
with backoff (L{Connector}).

The envelope fields, the same names in AMQP headers and Redis stream
fields (L{envelopeFields}):

  - C{queue-id}: the transaction's ID (the queue's, behind C{--spool}):
    with the recipient, what a consumer deduplicates on;
  - C{sender}: the reverse-path, C{""} for the null sender C{<>};
  - C{recipients}: the recipients of this publication (a list);
  - C{notify}, C{orcpt}: per recipient, the DSN NOTIFY and ORCPT
    parameters (lists in the order of C{recipients}, C{""} where absent),
    present when any recipient has one;
  - C{ret}, C{envid}: MAIL's DSN parameters, when given;
  - C{body} (C{7BIT}, C{8BITMIME}, C{BINARYMIME}), C{smtputf8} (C{yes}),
    C{size} (octets of the message);
  - C{client-address}, C{client-port}, C{client-name} (its verified
    reverse name), C{helo}, C{protocol} (C{ESMTPS}...), C{auth} (the
    authenticated user), C{tls} (version and cipher): the session's facts,
    present when known.

Owns: those names and their values.  Must not: import mailframe.server or
the global reactor; know a broker's protocol.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from mailframe._threads import DISK, threadPools
from mailframe.envelope import Envelope, Recipient
from mailframe.message import Message

__all__ = ["Connector", "Template", "Unavailable", "envelopeFields", "readMessage", "shorten"]

log = Logger(namespace="mailframe.backends")

T = TypeVar("T")
FieldValue = str | int | list[str]


def envelopeFields(
    envelope: Envelope, recipients: Sequence[Recipient], size: int
) -> list[tuple[str, FieldValue]]:
    """The envelope of a publication to C{recipients}, as (name, value) in a fixed order."""
    fields: list[tuple[str, FieldValue]] = [
        ("queue-id", envelope.queueID),
        ("sender", "" if envelope.mailFrom.isNull else str(envelope.mailFrom)),
        ("recipients", [str(r.address) for r in recipients]),
    ]
    notify = [r.params.get("NOTIFY") or "" for r in recipients]
    orcpt = [r.params.get("ORCPT") or "" for r in recipients]
    if any(notify) or any(orcpt):
        fields += [("notify", notify), ("orcpt", orcpt)]
    params = envelope.mailParams
    for name in ("RET", "ENVID"):
        value = params.get(name)
        if value:
            fields.append((name.lower(), value))
    fields.append(("body", envelope.body))
    if envelope.smtputf8:
        fields.append(("smtputf8", "yes"))
    fields.append(("size", size))
    session = envelope.session
    if session is not None:
        facts: list[tuple[str, FieldValue | None]] = [
            ("client-address", session.peerHost or None),
            ("client-port", session.peerPort or None),
            ("client-name", session.peerName),
            ("helo", session.heloName),
            ("protocol", session.protocol),
            ("auth", session.authenticated),
            ("tls", f"{session.tls.version} {session.tls.cipher}" if session.tls else None),
        ]
        fields += [(name, value) for name, value in facts if value is not None]
    return fields


def shorten(error: object, limit: int = 200) -> str:
    """An error (or a Failure) as one short line for a reply."""
    value = getattr(error, "value", error)
    text = " ".join(str(value).split())[:limit]
    return text or type(value).__name__


class Template:
    """
    A routing key or stream name with C{{domain}} (the recipient's domain,
    lowercase), C{{recipient}}, C{{local}} (its local part) and C{{sender}}
    (C{""} for <>) in it; C{{{} and C{}}} for braces.

    @raise ValueError: at construction, for another name or a bad brace.
    """

    NAMES = ("domain", "recipient", "local", "sender")

    def __init__(self, text: str) -> None:
        self.text = text
        try:
            parsed = list(string.Formatter().parse(text))
        except ValueError as e:
            raise ValueError(f"bad template {text!r}: {e}") from None
        used = set()
        for _, name, spec, conversion in parsed:
            if name is None:
                continue
            if name not in self.NAMES or spec or conversion:
                names = ", ".join(f"{{{n}}}" for n in self.NAMES)
                raise ValueError(f"bad template {text!r}: it may use {names}")
            used.add(name)
        self.perRecipient = bool(used - {"sender"})

    def render(self, envelope: Envelope, recipient: Recipient) -> str:
        address = recipient.address
        sender = envelope.mailFrom
        return self.text.format(
            domain=address.domain.key if address.domain is not None else "",
            recipient=str(address),
            local=address.localPart,
            sender="" if sender.isNull else str(sender),
        )

    def groups(
        self, envelope: Envelope, recipients: Sequence[Recipient]
    ) -> list[tuple[str, list[int]]]:
        """The recipients' indexes by rendered name, in order of first appearance."""
        if not self.perRecipient:
            return [(self.render(envelope, recipients[0]), list(range(len(recipients))))]
        groups: dict[str, list[int]] = {}
        for i, r in enumerate(recipients):
            groups.setdefault(self.render(envelope, r), []).append(i)
        return list(groups.items())

    def __repr__(self) -> str:
        return f"Template({self.text!r})"


def readMessage(reactor: Any, message: Message) -> defer.Deferred[bytes]:
    """
    The whole message as bytes: at once when it is in memory, else read in
    the DISK thread pool (the caller holds the message until this fires).
    """
    if message.inMemory:
        try:
            return defer.succeed(message.getvalue())
        except Exception:
            return defer.fail()
    return threadPools(reactor).run(DISK, message.getvalue)


class Unavailable(Exception):
    """No connection could be had in time: the reason is the last attempt's, one line."""


class Connector(Generic[T]):
    """
    Keeps one connection (whatever C{connect()} makes, a Deferred of a
    C{T}) and makes it again when it is lost, on demand, with exponential
    backoff between failed attempts (C{initial} seconds doubling to
    C{maximum}).  L{get} waits at most C{timeout} seconds for a connection,
    else fails with L{Unavailable}: a broker that is down costs a delivery
    that long at most, and nothing ever waits without a bound.

    The owner calls L{lost} when the connection it was given ends.
    """

    def __init__(
        self,
        clock: Any,
        connect: Callable[[], defer.Deferred[T]],
        name: str,
        *,
        discard: Callable[[T], object] | None = None,
        initial: float = 0.5,
        maximum: float = 5.0,
    ) -> None:
        self.clock = clock
        self._connect = connect
        self.name = name
        self._discard = discard
        self.initial = initial
        self.maximum = maximum
        self.current: T | None = None
        self.lastError = "not connected yet"
        self._failures = 0
        self._attempt: defer.Deferred[T] | None = None
        self._retry: IDelayedCall | None = None
        self._waiters: list[defer.Deferred[T]] = []
        self._closed = False

    def get(self, timeout: float) -> defer.Deferred[T]:
        """The connection, now or once made; L{Unavailable} after C{timeout} seconds."""
        if self.current is not None:
            return defer.succeed(self.current)
        if self._closed:
            return defer.fail(Unavailable("the connection is closed"))
        waiter: defer.Deferred[T] = defer.Deferred(self._forget)
        self._waiters.append(waiter)

        def timedOut(reason: Any, timeout: float) -> Any:
            if reason.check(defer.TimeoutError, defer.CancelledError):
                raise Unavailable(f"{self.lastError} (waited {timeout:g} s)")
            return reason

        waiter.addTimeout(timeout, self.clock)
        waiter.addErrback(timedOut, timeout)
        if self._attempt is None and self._retry is None:
            self._start()
        return waiter

    def lost(self, connection: object, reason: str) -> None:
        """C{connection} ended: the next L{get} makes a new one."""
        if connection is self.current:
            self.current = None
            self.lastError = reason
            if not self._closed:
                log.warn("{name}: connection lost: {reason}", name=self.name, reason=reason)
            if self._waiters and self._attempt is None and self._retry is None:
                self._start()

    def close(self) -> None:
        """Make no more connections; waiters fail."""
        self._closed = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self._attempt is not None:
            self._attempt.cancel()
        current, self.current = self.current, None
        if current is not None and self._discard is not None:
            self._discard(current)
        self._fail(Unavailable("the connection is closed"))

    @property
    def backoff(self) -> float:
        """Seconds before the next attempt after the failures so far."""
        if not self._failures:
            return 0.0
        return min(self.maximum, self.initial * 2 ** (self._failures - 1))

    def _forget(self, waiter: defer.Deferred[T]) -> None:
        if waiter in self._waiters:
            self._waiters.remove(waiter)

    def _start(self) -> None:
        self._retry = None
        if self._closed:
            return
        attempt = self._attempt = self._connect()
        attempt.addCallbacks(self._made, self._failed)

    def _made(self, connection: T) -> None:
        self._attempt = None
        if self._closed:
            if self._discard is not None:
                self._discard(connection)
            return
        if self._failures:
            log.info("{name}: connected again", name=self.name)
        self._failures = 0
        self.current = connection
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(connection)

    def _failed(self, reason: Any) -> None:
        self._attempt = None
        self._failures += 1
        self.lastError = shorten(reason)
        if self._failures == 1 or self.backoff == self.maximum:
            log.warn(
                "{name}: cannot connect: {error} (again in {delay:g} s)",
                name=self.name,
                error=self.lastError,
                delay=self.backoff,
            )
        if self._closed:
            return
        if self._waiters:
            self._retry = self.clock.callLater(self.backoff, self._start)

    def _fail(self, error: Exception) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.errback(error)
