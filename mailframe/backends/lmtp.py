"""
The C{lmtp} backend: hands each message to an LMTP server (RFC 2033), the
way mail reaches Dovecot, Cyrus or another mailframe:
C{--deliver lmtp:unix:/run/dovecot/lmtp}, C{--deliver lmtp:tcp:HOST:PORT}.

Every recipient gets the LMTP server's own reply for it: 2xx means the
server has the message for that recipient (Dovecot answers 250 once the
mail is saved, fsync'd as its C{mail_fsync} says), 4xx try again later,
5xx failed.  Behind C{--spool} the queue retries or bounces each recipient
on its own.  Without it, the SMTP client gets one reply after its data:
250 only if every recipient was delivered, else the first 4xx, else the
first 5xx (see L{mailframe.server.commands}); recipients already delivered
may then get a second copy when the client sends again after a 4xx.

Sessions (L{mailframe.backends._lmtpsession.LMTPSession}) are reused: at
most C{connections} at once (deliveries beyond wait for one), an idle one
kept C{idle} seconds (then QUIT), at most C{maxMessages} messages each.  A
reused session that ends before the server answers anything of a message
(it closed an idle connection) is replaced by a new one, once.  What no
reply answers (a timeout, a lost connection, no connection at all) is a
4xx of ours for the recipients still waiting, never a success.

A delivery is never cancelled from outside (the server and the queue wait
for a local backend); its own timers bound it.  It holds the message
(L{Message.retain}) until its transaction is over, so the owner may close
it at any time.

Owns: the pool and the per-recipient result.  Must not: import
mailframe.client or mailframe.server (the protocol is the sans-IO core's,
L{mailframe.protocol.client} in its LMTP dialect), or the global reactor.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, cast

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from zope.interface import implementer

from mailframe.backends._held import heldDelivery
from mailframe.backends._lmtpsession import LMTPSession, SessionFailed, Settings, Unanswered
from mailframe.envelope import DeliveryResult, Envelope
from mailframe.interfaces import IDeliveryBackend
from mailframe.message import Message
from mailframe.reply import Reply

__all__ = ["LMTPBackend", "endpointString"]

log = Logger(namespace="mailframe.backends.lmtp")

_LOCAL_ERROR = Reply(451, (4, 3, 0), "Local error in the LMTP client")


def _connectionFailed(reason: object) -> Reply:
    value = getattr(reason, "value", reason)
    text = " ".join(str(value).split())[:200] or type(value).__name__
    return Reply(451, (4, 4, 1), f"Cannot connect to the LMTP server: {text}")


class _SessionFactory(Factory):
    noisy = False

    def __init__(self, settings: Settings, clock: Any) -> None:
        self.settings = settings
        self.clock = clock

    def buildProtocol(self, addr: object) -> LMTPSession:
        session = LMTPSession(self.settings, self.clock)
        session.factory = self
        return session


@implementer(IDeliveryBackend)
class LMTPBackend:
    """
    Delivers over LMTP to C{endpoint} (an C{IStreamClientEndpoint}),
    timed by C{clock}.  C{name} names the server in results and logs;
    C{heloName} is ours in LHLO.  C{replies}: seconds to wait for each
    reply and each block of data written; C{final}: for the replies after
    the data.  C{chunking}: send by BDAT when the server offers CHUNKING.
    """

    def __init__(
        self,
        clock: Any,
        endpoint: IStreamClientEndpoint,
        name: str,
        heloName: str,
        *,
        connections: int = 10,
        idle: float = 30.0,
        maxMessages: int = 100,
        replies: float = 300.0,
        final: float = 600.0,
        chunking: bool = True,
    ) -> None:
        if connections < 1 or maxMessages < 1 or idle < 0:
            raise ValueError("connections and maxMessages must be at least 1, idle not negative")
        self.clock = clock
        self.endpoint = endpoint
        self.name = name
        self.connections = connections
        self.idle = idle
        self.maxMessages = maxMessages
        self.settings = Settings(heloName, name, replies, final, chunking)
        self._factory = _SessionFactory(self.settings, clock)
        self._idle: list[tuple[LMTPSession, IDelayedCall | None]] = []
        self._open = 0  # sessions connected or connecting
        self._waiting: deque[defer.Deferred[None]] = deque()

    @property
    def openSessions(self) -> int:
        """Sessions connected or connecting."""
        return self._open

    @property
    def idleSessions(self) -> int:
        return len(self._idle)

    # -- IDeliveryBackend --------------------------------------------------------

    def deliver(
        self, envelope: Envelope, message: Message
    ) -> defer.Deferred[DeliveryResult | None]:
        """One reply per recipient from the LMTP server (or a 4xx of ours); never fails."""
        return heldDelivery(
            envelope, message, lambda: self._deliver(envelope, message), log, "LMTP",
            _LOCAL_ERROR
        )  # fmt: skip

    def closeIdle(self) -> None:
        """QUIT every idle session (at shutdown)."""
        idle, self._idle = self._idle, []
        for session, timer in idle:
            if timer is not None and timer.active():
                timer.cancel()
            session.quit()

    # -- the pool ----------------------------------------------------------------

    async def _deliver(self, envelope: Envelope, message: Message) -> DeliveryResult:
        count = len(envelope.recipients)
        for attempt in (1, 2):
            try:
                session, reused = await self._acquire()
            except SessionFailed as e:
                return self._all(count, e.reply)
            try:
                result = await session.deliver(envelope, message)
            except Unanswered as e:
                self._release(session)
                if reused and attempt == 1:
                    continue  # an idle connection the server had closed: a new one
                return self._all(count, e.reply)
            self._release(session)
            return result
        raise AssertionError("unreachable")

    def _all(self, count: int, reply: Reply) -> DeliveryResult:
        return DeliveryResult((reply,) * count, (self.name,) * count)

    async def _acquire(self) -> tuple[LMTPSession, bool]:
        """An idle session (reused: True), a new one, or the next one free."""
        while True:
            while self._idle:
                session, timer = self._idle.pop()
                if timer is not None and timer.active():
                    timer.cancel()
                if session.usable:
                    return session, True
            if self._open < self.connections:
                return await self._connect(), False
            waiter: defer.Deferred[None] = defer.Deferred()
            self._waiting.append(waiter)
            await waiter

    async def _connect(self) -> LMTPSession:
        self._open += 1
        try:
            session = cast(LMTPSession, await self.endpoint.connect(self._factory))
        except Exception as e:
            self._ended()
            log.info("{name}: {error}", name=self.name, error=str(e))
            raise SessionFailed(_connectionFailed(e)) from None
        session.onEnd = self._sessionEnded
        return await session.ready

    def _release(self, session: LMTPSession) -> None:
        """A session is done with a message: keep it idle, or close it."""
        if session.usable and session.messagesSent < self.maxMessages and self.idle:
            timer = self.clock.callLater(self.idle, self._expire, session)
            self._idle.append((session, timer))
        elif session.usable:
            session.quit()
        self._wake()

    def _expire(self, session: LMTPSession) -> None:
        self._idle = [(s, t) for s, t in self._idle if s is not session]
        session.quit()

    def _sessionEnded(self, session: LMTPSession) -> None:
        for i, (s, timer) in enumerate(self._idle):
            if s is session:
                del self._idle[i]
                if timer is not None and timer.active():
                    timer.cancel()
                break
        self._ended()

    def _ended(self) -> None:
        self._open -= 1
        self._wake()

    def _wake(self) -> None:
        if self._waiting:
            self._waiting.popleft().callback(None)


def endpointString(args: Sequence[str], options: Mapping[str, str]) -> str:
    """
    The client endpoint string of a description's arguments and the
    options that are not the backend's (C{unix}, C{/run/dovecot/lmtp},
    C{timeout=5}), each part escaped again, and checked by parsing it
    (nothing connects).

    @raise ValueError: one line, for a string no endpoint parser takes.
    """
    from twisted.internet.endpoints import clientFromString

    def escape(text: str) -> str:
        return text.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")

    parts = [escape(a) for a in args] + [f"{k}={escape(v)}" for k, v in options.items()]
    description = ":".join(parts)
    try:
        clientFromString(_NoReactor(), description)
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(f"bad endpoint {description!r}: {e}") from None
    return description


class _NoReactor:
    """What an endpoint parser is given to check a string: it keeps it and never uses it."""
