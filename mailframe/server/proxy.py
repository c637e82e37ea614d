"""
Listening behind a load balancer that speaks the PROXY protocol (HAProxy's,
v1 and v2): L{ProxyHeaderFactory} wraps a server factory so that each
connection first reads the header, and only then starts the session with
the client's address from it.

Twisted's own C{haproxy:} endpoint starts the wrapped protocol at once, so
an SMTP session would take the proxy's address for every check and greet
before the header arrived; it also believes any peer.  Here: a header is
accepted only from a trusted proxy address (others are dropped unread), no
byte reaches the session before the header has been read, the header has
a time limit, and the session sees the client's address in C{getPeer} (and
the proxy's listening address in C{getHost}).

Owns: the wrapping protocol.  Must not: know about SMTP.
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Network, IPv6Network, ip_network

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import (
    IDelayedCall,
    IHandshakeListener,
    IProtocolFactory,
    IReactorTime,
    ITCPTransport,
)
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from mailframe.config import inNetworks
from mailframe.protocol.proxy import ProxyHeader, ProxyHeaderError, ProxyHeaderReader

__all__ = ["DEFAULT_TRUSTED", "HEADER_TIMEOUT", "ProxyHeaderFactory", "splitProxyEndpoint"]

log = Logger(namespace="mailframe.proxy")

HEADER_TIMEOUT = 10.0
"""Seconds a connection may take to send its PROXY header."""

DEFAULT_TRUSTED = ("127.0.0.0/8", "::1/128")
"""The proxies believed when none are configured: on this machine only."""

_PREFIX = "haproxy:"


def splitProxyEndpoint(description: str) -> tuple[bool, str]:
    """C{(True, inner)} for C{haproxy:INNER}, else C{(False, description)}."""
    if description[: len(_PREFIX)].lower() == _PREFIX:
        return True, description[len(_PREFIX) :]
    return False, description


def _addressObject(pair: tuple[str, int]) -> IPv4Address | IPv6Address:
    host, port = pair
    if ":" in host:
        return IPv6Address("TCP", host, port)
    return IPv4Address("TCP", host, port)


@implementer(IHandshakeListener)
class _ProxyHeaderProtocol(ProtocolWrapper):
    factory: ProxyHeaderFactory
    transport: ITCPTransport

    _header: ProxyHeader | None = None
    _reader: ProxyHeaderReader | None = None
    _timer: IDelayedCall | None = None
    _started = False

    def makeConnection(self, transport: ITCPTransport) -> None:
        # ProtocolWrapper.makeConnection would start the wrapped protocol now
        self.transport = transport
        self.connected = True
        self.factory.registerProtocol(self)
        peer = transport.getPeer()
        host = getattr(peer, "host", "")
        if not self.factory.trusts(host):
            log.warn(
                "PROXY listener: connection from [{host}], not a trusted proxy: dropped",
                host=host,
            )
            transport.abortConnection()
            return
        self._reader = ProxyHeaderReader()
        self._timer = self.factory.clock.callLater(self.factory.timeout, self._expired)

    def dataReceived(self, data: bytes) -> None:
        if self._started:
            self.wrappedProtocol.dataReceived(data)
            return
        if self._reader is None:
            return  # dropped, closing
        try:
            found = self._reader.feed(data)
        except ProxyHeaderError as e:
            self._drop(str(e))
            return
        if found is None:
            return
        self._header, rest = found
        self._reader = None
        self._cancelTimer()
        self._started = True
        self.wrappedProtocol.makeConnection(self)  # type: ignore[arg-type]
        if rest:
            self.wrappedProtocol.dataReceived(rest)

    def _drop(self, why: str) -> None:
        peer = self.transport.getPeer()
        log.warn(
            "PROXY listener: {why} from [{host}]: dropped",
            why=why,
            host=getattr(peer, "host", ""),
        )
        self._reader = None
        self._cancelTimer()
        self.transport.abortConnection()

    def _expired(self) -> None:
        self._timer = None
        self._drop("no PROXY header in time")

    def _cancelTimer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    @property
    def proxied(self) -> bool:
        """True once a PROXY header named the client (C{getPeer} is that client)."""
        return self._header is not None and self._header.source is not None

    def getPeer(self) -> IPv4Address | IPv6Address:
        if self._header is not None and self._header.source is not None:
            return _addressObject(self._header.source)
        return self.transport.getPeer()

    def getHost(self) -> IPv4Address | IPv6Address:
        if self._header is not None and self._header.destination is not None:
            return _addressObject(self._header.destination)
        return self.transport.getHost()

    def handshakeCompleted(self) -> None:
        """Passed on: STARTTLS puts the TLS layer outside this wrapper."""
        listener = IHandshakeListener(self.wrappedProtocol, None)
        if listener is not None:
            listener.handshakeCompleted()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancelTimer()
        if not self._started:
            self.connected = False
            self.factory.unregisterProtocol(self)
            self.wrappedProtocol = None  # type: ignore[assignment]
            return
        super().connectionLost(reason)


class ProxyHeaderFactory(WrappingFactory):
    """
    C{wrappedFactory}'s connections, each started once its PROXY header has
    been read from a C{trusted} network (CIDR strings or networks).
    """

    protocol = _ProxyHeaderProtocol
    noisy = False

    def __init__(
        self,
        wrappedFactory: IProtocolFactory,
        trusted: Iterable[str | IPv4Network | IPv6Network],
        clock: IReactorTime,
        timeout: float = HEADER_TIMEOUT,
    ) -> None:
        super().__init__(wrappedFactory)
        self.trusted = tuple(
            n if isinstance(n, IPv4Network | IPv6Network) else ip_network(n, strict=False)
            for n in trusted
        )
        self.clock = clock
        self.timeout = timeout

    def trusts(self, host: str) -> bool:
        return inNetworks(host, self.trusted)

    def logPrefix(self) -> str:
        return f"{type(self.wrappedFactory).__name__} (PROXY)"
