"""
Write-through: send a reply on a plain TCP transport at once, instead of
queueing it for the reactor's next turn (which costs two epoll updates and
a loop iteration per reply; about a quarter of the instructions per message
on kept connections).

This is the one place mailframe reads private attributes of Twisted
(C{twisted.internet.tcp.Connection}'s C{socket}, C{dataBuffer},
C{_tempDataBuffer}, C{TLS}, C{disconnecting}).  L{available} checks that
they are still there: the server uses write-through only if it says so,
and tests/test_server_writethrough.py fails when a Twisted release changes
them, so the loss is noticed rather than silent.  Everything else goes
through C{transport.write}, the public fallback.

Owns: that.  Must not: be used for any transport but a plain
C{twisted.internet.tcp.Server}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.tcp import Server

__all__ = ["PRIVATE_ATTRIBUTES", "available", "drained", "isPlainTCP", "sendNow"]

PRIVATE_ATTRIBUTES = (
    "socket",
    "dataBuffer",
    "_tempDataBuffer",
    "TLS",
    "connected",
    "disconnecting",
)
"""What write-through reads of a TCP transport."""


def available(transport: object) -> bool:
    """True if C{transport} still has every attribute write-through reads."""
    return all(hasattr(transport, name) for name in PRIVATE_ATTRIBUTES)


def isPlainTCP(transport: object) -> bool:
    """True for a plain TCP server transport (not a wrapper, not a test double)."""
    return type(transport) is Server


def drained(transport: Any) -> bool:
    """True if nothing waits to be written on C{transport} (closing it is then prompt)."""
    try:
        return not (transport.TLS or transport._tempDataBuffer or transport.dataBuffer)
    except AttributeError:
        return False


def sendNow(transport: Any, data: bytes) -> bytes:
    """
    Send C{data} now if nothing is queued on C{transport}; return what is
    left to hand to C{transport.write} (everything if this cannot be done
    safely).
    """
    try:
        if transport.TLS or transport._tempDataBuffer or transport.dataBuffer:
            return data
        if not transport.connected or transport.disconnecting:
            return data
        sent = transport.socket.send(data)
    except (AttributeError, BlockingIOError, InterruptedError):
        return data
    except OSError:
        return data  # let Twisted's own write path meet and report the error
    return data[sent:]
