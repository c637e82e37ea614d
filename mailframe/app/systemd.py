"""
systemd's readiness protocol (sd_notify(3)) without libsystemd: one
datagram to the C{AF_UNIX} socket named by C{$NOTIFY_SOCKET} (a path, or
C{@name} in the abstract namespace).  C{twistd mailframe} says C{READY=1}
once its listeners listen (a C{Type=notify} unit then counts as started),
C{RELOADING=1} and C{READY=1} around a reload (SIGHUP), and C{STOPPING=1}
when it stops; C{STATUS=} lines say what it does.  Without
C{$NOTIFY_SOCKET} (not under systemd) nothing is sent.

Socket activation needs nothing here: Twisted's C{systemd:} endpoint
(C{systemd:domain=INET:name=smtp}) adopts the sockets systemd passes
(C{$LISTEN_FDS}); see docs/operations.rst for the units.

Owns: L{notify}.  Must not: block (the socket is non-blocking: a
notification that cannot be sent at once is dropped and logged), or import
the reactor.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

from twisted.logger import Logger

__all__ = ["notify", "reloading"]

log = Logger(namespace="mailframe")


def notify(state: str, environ: Mapping[str, str] | None = None) -> bool:
    """
    Send C{state} (C{"READY=1"}, lines of C{KEY=VALUE}) to systemd.

    @return: True if it was sent; False without C{$NOTIFY_SOCKET}, or if the
        socket cannot take it (logged).
    """
    path = (os.environ if environ is None else environ).get("NOTIFY_SOCKET", "")
    if not path:
        return False
    if path.startswith("@"):
        address = "\0" + path[1:]
    elif path.startswith("/"):
        address = path
    else:
        log.warn("NOTIFY_SOCKET={path!r} is not a path: not notified", path=path)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.setblocking(False)
            sock.sendto(state.encode("utf-8"), address)
    except OSError as e:
        log.warn(
            "cannot notify systemd ({state}): {error}",
            state=state.splitlines()[0],
            error=e.strerror or e,
        )
        return False
    return True


def reloading() -> str:
    """The C{RELOADING=1} notification, with the C{MONOTONIC_USEC} systemd 253 asks for."""
    return f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"
