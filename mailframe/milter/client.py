"""
The Twisted side of a milter connection: L{MilterAddress} (Postfix's
C{inet:HOST:PORT} and C{unix:PATH}), connecting with a time limit, and
L{MilterConnection}, one connection's packets as events with a time limit
on each answer, and body chunks sent no faster than the socket drains.

Postfix opens one connection per SMTP session (libmilter closes its side
when a session ends); so does mailframe (L{mailframe.milter.filter}).

Owns: sockets, timers and flow control of one milter connection.  Must
not: decide anything about a session (the filter does), or parse packets
(the codec does).
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any, cast

from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from mailframe.milter.codec import (
    Event,
    MilterProtocolError,
    PacketReader,
    parseResponse,
)
from mailframe.milter.settings import MilterAddress

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall, IReactorTime

__all__ = ["MilterAddress", "MilterConnection", "MilterGone", "MilterTimeout", "connect"]


class MilterGone(Exception):
    """The milter closed the connection, or could not be reached (one line)."""


class MilterTimeout(Exception):
    """The milter did not answer in time."""


@implementer(IPushProducer)
class MilterConnection(Protocol):
    """
    One connection to a milter.  L{send} writes packets; L{next} is a
    Deferred of the next answer (a codec event), failing with
    L{MilterTimeout} after its time limit (the connection is then aborted:
    its place in the conversation is lost) or L{MilterGone} once the
    connection is lost.  Cancelling it aborts the connection too.
    """

    def __init__(self, clock: IReactorTime, name: str) -> None:
        self.clock = clock
        self.name = name
        self._reader = PacketReader()
        self._events: deque[Event] = deque()
        self._waiting: defer.Deferred[Event] | None = None
        self._timer: IDelayedCall | None = None
        self._error: Exception | None = None
        self._paused = False
        self._drained: list[defer.Deferred[None]] = []
        self.connected = False

    # -- the transport ----------------------------------------------------------

    def connectionMade(self) -> None:
        self.connected = True
        self.transport.registerProducer(self, True)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        if self._error is not None:
            return
        self._reader.feed(data)
        try:
            for command, payload in self._reader:
                self._events.append(parseResponse(command, payload))
        except MilterProtocolError as e:
            self._fail(MilterProtocolError(f"milter {self.name}: {e}"))
            return
        self._deliver()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.connected = False
        if self._error is None:
            self._error = MilterGone(f"milter {self.name} closed the connection")
        self._flushWaiters()

    # -- IPushProducer: the socket's buffer is full -------------------------------

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        drained, self._drained = self._drained, []
        for d in drained:
            d.callback(None)

    def stopProducing(self) -> None:
        self._paused = False

    # -- what the filter uses -------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Write packets (nothing happens once the connection failed)."""
        if self._error is None and self.transport is not None:
            self.transport.write(data)

    def drained(self) -> defer.Deferred[None]:
        """Fires once the socket takes more (at once when it does)."""
        if not self._paused or self._error is not None:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred(lambda _: self.abort())
        self._drained.append(d)
        return d

    def next(self, timeout: float) -> defer.Deferred[Event]:
        """The next answer, within C{timeout} seconds."""
        if self._events:
            return defer.succeed(self._events.popleft())
        if self._error is not None:
            return defer.fail(self._error)
        if self._waiting is not None:
            raise RuntimeError("already waiting for an answer")
        d: defer.Deferred[Event] = defer.Deferred(self._cancelled)
        self._waiting = d
        self._timer = self.clock.callLater(timeout, self._timedOut, timeout)
        return d

    def close(self) -> None:
        """Close after what was written (QUIT)."""
        if self._error is None:
            self._error = MilterGone(f"milter {self.name}: connection closed")
        transport: Any = self.transport
        if transport is not None and self.connected:
            transport.unregisterProducer()
            transport.loseConnection()
        self._flushWaiters()

    def abort(self) -> None:
        """Drop the connection now."""
        if self._error is None:
            self._error = MilterGone(f"milter {self.name}: connection aborted")
        if self.transport is not None and self.connected:
            self.transport.abortConnection()  # type: ignore[attr-defined]
        self._flushWaiters()

    # -- inside ---------------------------------------------------------------------

    def _deliver(self) -> None:
        if self._waiting is not None and self._events:
            d, self._waiting = self._waiting, None
            self._cancelTimer()
            d.callback(self._events.popleft())

    def _fail(self, error: Exception) -> None:
        if self._error is None:
            self._error = error
        self.abort()

    def _flushWaiters(self) -> None:
        self._cancelTimer()
        d, self._waiting = self._waiting, None
        if d is not None and self._error is not None:
            d.errback(self._error)
        drained, self._drained = self._drained, []
        for waiter in drained:
            waiter.callback(None)

    def _timedOut(self, timeout: float) -> None:
        self._timer = None
        self._fail(MilterTimeout(f"milter {self.name} did not answer in {timeout:g} s"))

    def _cancelled(self, d: defer.Deferred[Event]) -> None:
        if self._waiting is d:
            self._waiting = None
        self._fail(MilterTimeout(f"milter {self.name}: the server stopped waiting"))

    def _cancelTimer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()


def connect(
    address: MilterAddress, reactor: Any, timeout: float, name: str
) -> defer.Deferred[MilterConnection]:
    """
    Connect to the milter at C{address} within C{timeout} seconds; fails
    with L{MilterGone} (one line) if it cannot.
    """
    factory = Factory.forProtocol(lambda: MilterConnection(reactor, name))
    d = address.endpoint(reactor, timeout).connect(factory)
    d.addTimeout(timeout + 1.0, reactor)

    def failed(reason: Failure) -> Failure:
        if reason.check(defer.CancelledError):
            reason.raiseException()
        error = reason.value
        text = error.__class__.__name__ if not str(error) else str(error).splitlines()[0]
        raise MilterGone(f"cannot connect to milter {name}: {text}")

    return cast("defer.Deferred[MilterConnection]", d.addErrback(failed))
