"""
L{AuthFailureLimiter}: failed AUTH attempts counted per client address over
a sliding window; a client over the limit is refused for a while.  It is
an L{IConnectionFilter} (a refused client is greeted with C{421 4.7.0} and
disconnected) and the AUTH extension reports failures to it.

IPv6 clients are counted by their /64 network, since one host usually has
a whole /64 to pick addresses from; IPv4 clients by their address.  The
table is bounded (C{maxClients}): when it is full the client with the
oldest failure is forgotten.

Owns: the counting and the refusal.  Must not: import mailframe.server;
use the wall clock (it is given a clock); grow without bound.
"""

from __future__ import annotations

import functools
import ipaddress
from collections import OrderedDict, deque

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from mailframe.envelope import SessionInfo
from mailframe.interfaces import IConnectionFilter
from mailframe.reply import Reply, SMTPError

__all__ = ["BLOCKED", "AuthFailureLimiter", "clientKey"]

log = Logger(namespace="mailframe.auth")

BLOCKED = Reply(421, (4, 7, 0), "Too many failed authentication attempts; try again later")


@functools.lru_cache(maxsize=1024)
def clientKey(host: str) -> str:
    """
    What failures are counted by: the address, or the /64 of an IPv6 address.
    Cached (a pure function of the text): the connection limits ask it at
    every MAIL, and parsing an address costs more than the rest of the check.
    """
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network(f"{address}/64", strict=False))
    return str(address)


@implementer(IConnectionFilter)
class AuthFailureLimiter:
    """
    Counts failed AUTH attempts per client; C{maxFailures} within C{window}
    seconds refuse the client for C{blockFor} seconds.

    @param clock: the reactor, or a Clock in tests.
    """

    def __init__(
        self,
        clock: IReactorTime,
        maxFailures: int = 10,
        window: float = 600.0,
        blockFor: float = 900.0,
        maxClients: int = 100_000,
    ) -> None:
        if maxFailures < 1 or window <= 0 or blockFor <= 0 or maxClients < 1:
            raise ValueError("maxFailures and maxClients must be >= 1, times positive")
        self.clock = clock
        self.maxFailures = maxFailures
        self.window = window
        self.blockFor = blockFor
        self.maxClients = maxClients
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._blocked: dict[str, float] = {}

    def recordFailure(self, host: str) -> bool:
        """
        Count one failed attempt from C{host}.

        @return: True if the client is now over the limit (and blocked).
        """
        key = clientKey(host)
        now = self.clock.seconds()
        times = self._failures.pop(key, None)
        if times is None:
            times = deque()
            while len(self._failures) >= self.maxClients:
                self._failures.popitem(last=False)
        self._failures[key] = times  # most recent last
        times.append(now)
        while times and times[0] <= now - self.window:
            times.popleft()
        if len(times) >= self.maxFailures:
            if key not in self._blocked:
                log.warn(
                    "client {client} blocked for {seconds:.0f} s after {count} failed "
                    "authentication attempts",
                    client=key,
                    seconds=self.blockFor,
                    count=len(times),
                )
            self._blocked[key] = now + self.blockFor
            del self._failures[key]
            self._expire()
            return True
        return False

    def isBlocked(self, host: str) -> bool:
        """True if C{host} is refused now."""
        key = clientKey(host)
        until = self._blocked.get(key)
        if until is None:
            return False
        if self.clock.seconds() >= until:
            del self._blocked[key]
            return False
        return True

    def failures(self, host: str) -> int:
        """Failed attempts of C{host} within the window (0 once it is blocked)."""
        times = self._failures.get(clientKey(host))
        if not times:
            return 0
        cutoff = self.clock.seconds() - self.window
        return sum(1 for t in times if t > cutoff)

    def acceptConnection(self, session: SessionInfo) -> None:
        """IConnectionFilter: refuse a blocked client with 421 4.7.0."""
        self._expire()
        if self.isBlocked(session.peerHost):
            raise SMTPError(BLOCKED)

    def _expire(self) -> None:
        if len(self._blocked) <= 1024:
            return
        now = self.clock.seconds()
        for key in [k for k, until in self._blocked.items() if until <= now]:
            del self._blocked[key]
        excess = len(self._blocked) - self.maxClients
        if excess > 0:  # keep the table bounded: forget the blocks that end first
            for key in sorted(self._blocked, key=self._blocked.__getitem__)[:excess]:
                del self._blocked[key]
