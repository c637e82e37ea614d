"""
L{ConnectionLimits}: how much one listener serves at once and how fast one
client may use it.  Concurrent connections in total and per client, new
connections per client per minute, messages (MAIL commands) and recipients
per client per minute.  Over a limit, the client is told C{421 4.7.0} with
the limit in words, and the connection closes.

It is one object with several plug points: an L{IConnectionFilter} (counts
and refuses connections), an L{ISessionObserver} (forgets them), an
L{ISenderValidator} (counts MAIL), an L{IRecipientValidator} (counts RCPT
of local recipients; it has no opinion otherwise, so put it before the
validators that accept) and an L{IMessageFilter} (counts the recipients no
validator saw: relayed ones and postmaster, so that the next MAIL is
refused once the client is over).

Clients are counted by address, IPv6 clients by their /64 (as
L{mailframe.policy.authlimits} does).  Clients in C{exempt} networks are
not limited per client (only the total applies), as Postfix exempts
C{$mynetworks}.  Tables are bounded by C{maxClients}.

Owns: the counting and the 421 replies.  Must not: use the wall clock (a
clock is given), import mailframe.server, or grow without bound.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict, deque
from collections.abc import Iterable
from typing import TYPE_CHECKING

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from mailframe.config import inNetworks
from mailframe.envelope import Envelope, Recipient, SessionInfo
from mailframe.interfaces import (
    IConnectionFilter,
    IMessageFilter,
    IRecipientValidator,
    ISenderValidator,
    ISessionObserver,
)
from mailframe.policy.authlimits import clientKey
from mailframe.reply import Reply, SMTPError

if TYPE_CHECKING:
    from zope.interface.interface import InterfaceClass

    from mailframe.message import Message

__all__ = [
    "CLIENT_BUSY",
    "CLIENT_TOO_FAST",
    "SERVER_BUSY",
    "TOO_MANY_MESSAGES",
    "TOO_MANY_RECIPIENTS",
    "ConnectionLimits",
]

log = Logger(namespace="mailframe.limits")

SERVER_BUSY = Reply(421, (4, 7, 0), "Too many connections to this server; try again later")
CLIENT_BUSY = Reply(421, (4, 7, 0), "Too many connections from your address; try again later")
CLIENT_TOO_FAST = Reply(
    421, (4, 7, 0), "Too many new connections from your address per minute; try again later"
)
TOO_MANY_MESSAGES = Reply(
    421, (4, 7, 0), "Too many messages from your address per minute; try again later"
)
TOO_MANY_RECIPIENTS = Reply(
    421, (4, 7, 0), "Too many recipients from your address per minute; try again later"
)

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class _Rate:
    """Events per key within a sliding window, in a bounded table."""

    def __init__(self, clock: IReactorTime, limit: int, window: float, maxKeys: int) -> None:
        self.clock = clock
        self.limit = limit
        self.window = window
        self.maxKeys = maxKeys
        self._times: OrderedDict[str, deque[float]] = OrderedDict()

    def count(self, key: str, n: int = 1) -> int:
        """Record C{n} events of C{key} now; return how many are in the window."""
        now = self.clock.seconds()
        times = self._times.pop(key, None)
        if times is None:
            times = deque()
            while len(self._times) >= self.maxKeys:
                self._times.popitem(last=False)
        self._times[key] = times
        times.extend([now] * n)
        return self._trim(times, now)

    def current(self, key: str) -> int:
        """Events of C{key} in the window, recording none."""
        times = self._times.get(key)
        return self._trim(times, self.clock.seconds()) if times else 0

    def _trim(self, times: deque[float], now: float) -> int:
        cutoff = now - self.window
        while times and times[0] <= cutoff:
            times.popleft()
        while len(times) > self.limit + 1:  # no need to remember more than that
            times.popleft()
        return len(times)


@implementer(
    IConnectionFilter, ISessionObserver, ISenderValidator, IRecipientValidator, IMessageFilter
)
class ConnectionLimits:
    """
    Limits of one listener; 0 turns a limit off.

    @param clock: the reactor, or a Clock in tests.
    @param total: concurrent connections in all.
    @param perClient: concurrent connections of one client.
    @param connectionRate: new connections (attempts) of one client per C{window}.
    @param messageRate: MAIL commands of one client per C{window}.
    @param recipientRate: recipients of one client per C{window}.
    @param exempt: networks not limited per client.
    @param window: seconds; a minute by default.
    """

    def __init__(
        self,
        clock: IReactorTime,
        total: int = 1000,
        perClient: int = 50,
        connectionRate: int = 0,
        messageRate: int = 0,
        recipientRate: int = 0,
        exempt: Iterable[str | _Network] = (),
        window: float = 60.0,
        maxClients: int = 100_000,
    ) -> None:
        for name, value in [
            ("total", total),
            ("perClient", perClient),
            ("connectionRate", connectionRate),
            ("messageRate", messageRate),
            ("recipientRate", recipientRate),
        ]:
            if value < 0:
                raise ValueError(f"{name} may not be negative")
        if window <= 0 or maxClients < 1:
            raise ValueError("window must be positive and maxClients at least 1")
        self.clock = clock
        self.total = total
        self.perClient = perClient
        self.exempt = tuple(
            n if isinstance(n, _Network) else ipaddress.ip_network(n, strict=False) for n in exempt
        )
        self._active: dict[str, str] = {}  # session id -> client key
        self._perClient: dict[str, int] = {}
        self._connections = _Rate(clock, connectionRate, window, maxClients)
        self._messages = _Rate(clock, messageRate, window, maxClients)
        self._recipients = _Rate(clock, recipientRate, window, maxClients)

    @property
    def connections(self) -> int:
        """Connections open now."""
        return len(self._active)

    def clientConnections(self, host: str) -> int:
        """Connections of the client at C{host} open now."""
        return self._perClient.get(clientKey(host), 0)

    def asksAt(self, point: InterfaceClass) -> bool:
        """
        Whether these limits have work at the plug point C{point}: they count
        connections always, and MAIL, RCPT and DATA only when a message or
        recipient rate is set.  The server leaves them out of a chain where
        this is False (every answer there would be None: a call saved per
        command; L{mailframe.interfaces}, "Plug-in chains").
        """
        if point is ISenderValidator:
            return bool(self._messages.limit or self._recipients.limit)
        if point is IRecipientValidator or point is IMessageFilter:
            return bool(self._recipients.limit)
        return point.providedBy(self)

    def isExempt(self, host: str) -> bool:
        """True if C{host} is in an exempt network."""
        return inNetworks(host, self.exempt)  # the address parsed once per client

    def _refuse(self, session: SessionInfo, reply: Reply, what: str) -> SMTPError:
        log.info("{id} {peer} refused: {what}", id=session.sessionID, peer=session.peer, what=what)
        return SMTPError(reply)

    # -- IConnectionFilter, ISessionObserver ---------------------------------------

    def acceptConnection(self, session: SessionInfo) -> None:
        """Count the connection, or refuse it with 421 4.7.0."""
        if self.total and len(self._active) >= self.total:
            raise self._refuse(session, SERVER_BUSY, f"{self.total} connections open")
        key = clientKey(session.peerHost)
        if not self.isExempt(session.peerHost):
            if self._connections.limit:
                attempts = self._connections.count(key)
                if attempts > self._connections.limit:
                    raise self._refuse(session, CLIENT_TOO_FAST, f"{attempts} connections/min")
            if self.perClient and self._perClient.get(key, 0) >= self.perClient:
                raise self._refuse(session, CLIENT_BUSY, f"{self.perClient} connections open")
        self._active[session.sessionID] = key
        self._perClient[key] = self._perClient.get(key, 0) + 1

    def sessionEnded(self, session: SessionInfo) -> None:
        """Forget a counted connection."""
        key = self._active.pop(session.sessionID, None)
        if key is None:
            return
        left = self._perClient.get(key, 1) - 1
        if left > 0:
            self._perClient[key] = left
        else:
            self._perClient.pop(key, None)

    # -- ISenderValidator, IRecipientValidator, IMessageFilter ----------------------

    def validateSender(self, session: SessionInfo, envelope: Envelope) -> None:
        """Count a MAIL command; refuse a client over its message or recipient rate."""
        if self.isExempt(session.peerHost):
            return
        key = clientKey(session.peerHost)
        if self._recipients.limit and self._recipients.current(key) >= self._recipients.limit:
            raise self._refuse(session, TOO_MANY_RECIPIENTS, "recipient rate")
        if self._messages.limit and self._messages.count(key) > self._messages.limit:
            raise self._refuse(session, TOO_MANY_MESSAGES, "message rate")

    def validateRecipient(
        self, session: SessionInfo, envelope: Envelope, recipient: Recipient
    ) -> None:
        """Count a recipient (no opinion on it); refuse one over the rate."""
        if not self._recipients.limit or self.isExempt(session.peerHost):
            return
        envelope.stateFor(self, set[str]).add(str(recipient.address))  # counted at RCPT
        if self._recipients.count(clientKey(session.peerHost)) > self._recipients.limit:
            raise self._refuse(session, TOO_MANY_RECIPIENTS, "recipient rate")

    def filterMessage(self, session: SessionInfo, envelope: Envelope, message: Message) -> None:
        """Count the recipients no validator saw (relayed ones, postmaster)."""
        if not self._recipients.limit or self.isExempt(session.peerHost):
            return
        seen: set[str] = envelope.stateFor(self, set[str])
        unseen = sum(1 for r in envelope.recipients if str(r.address) not in seen)
        if unseen:
            self._recipients.count(clientKey(session.peerHost), unseen)
