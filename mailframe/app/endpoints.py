"""
Reading server endpoint strings without listening: whether one parses, and
the TCP address a C{tcp:} or C{tcp6:} one would listen on.

Twisted's endpoint parsers only need a reactor to keep; the address comes
from asking the endpoint to listen on L{_Recorder}, a stand-in reactor of
our own that notes the public C{listenTCP} call and opens nothing.  So no
private attribute of an endpoint, and no test reactor, is used.

Owns: L{checkServerEndpoint}, L{tcpListenAddress}.  Must not: import the
reactor, or listen.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint, serverFromString
from twisted.internet.interfaces import IProtocolFactory, IStreamServerEndpoint

__all__ = ["TCPAddress", "checkServerEndpoint", "tcpListenAddress"]


class _Recorder:
    """A reactor that only remembers the listenTCP call an endpoint makes."""

    def __init__(self) -> None:
        self.listened: tuple[int, int, str] | None = None

    def listenTCP(
        self, port: int, factory: IProtocolFactory, backlog: int = 50, interface: str = ""
    ) -> None:
        self.listened = (port, backlog, interface)


def checkServerEndpoint(description: str) -> IStreamServerEndpoint:
    """
    Parse a server endpoint string; nothing listens.

    @return: the endpoint, bound to a stand-in reactor (not for use).
    @raise Exception: whatever the endpoint's parser raises.
    """
    return serverFromString(_Recorder(), description)


@dataclass(frozen=True)
class TCPAddress:
    """Where a TCP endpoint listens: address family, interface, port and backlog."""

    family: int
    interface: str
    port: int
    backlog: int


def tcpListenAddress(description: str) -> TCPAddress:
    """
    The address a C{tcp:} or C{tcp6:} endpoint string listens on.

    @raise ValueError: for any other kind of endpoint.
    """
    recorder = _Recorder()
    endpoint = serverFromString(recorder, description)
    if isinstance(endpoint, TCP6ServerEndpoint):
        family = socket.AF_INET6
    elif isinstance(endpoint, TCP4ServerEndpoint):
        family = socket.AF_INET
    else:
        raise ValueError(f"not a tcp: or tcp6: endpoint: {description!r}")
    endpoint.listen(_NoFactory())
    assert recorder.listened is not None, description  # listen() calls listenTCP at once
    port, backlog, interface = recorder.listened
    return TCPAddress(family, interface, port, backlog)


class _NoFactory:
    """The protocol factory handed to an endpoint that will not listen."""
