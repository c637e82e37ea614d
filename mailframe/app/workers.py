"""
Several worker processes on the same listening ports (C{--workers N}), so
that a Python server uses every core.

Each process binds its own socket to the same TCP address with
C{SO_REUSEPORT}; the kernel spreads new connections over them.  The process
twistd starts is worker 0: it serves too, and it starts workers 1..N-1 as
C{twistd -n mailframe <the same options> --worker I}, restarts one that dies
(at most a few times a minute), and stops them when it stops.

Owns: the reuse-port listening service and the supervision of the workers.
Must not: know about SMTP; parse options (mailframe.app.tap does).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
from collections.abc import Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer, error
from twisted.internet.interfaces import IProtocolFactory
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailframe.app.endpoints import tcpListenAddress

__all__ = ["ReusePortService", "WorkerPool", "reusePortEndpoint", "workerArgv"]

log = Logger(namespace="mailframe.workers")

RESTARTS_PER_MINUTE = 5
STOP_GRACE = 10.0
TERM_DELAY = 0.5


def reusePortEndpoint(description: str) -> tuple[int, str, int, int]:
    """
    The (family, interface, port, backlog) of a C{tcp:} or C{tcp6:} endpoint
    string; ValueError for any other kind, or for port 0 (each worker would
    get a different port).
    """
    try:
        address = tcpListenAddress(description)
    except ValueError:
        raise ValueError(f"--workers needs tcp: or tcp6: endpoints, not {description!r}") from None
    if address.port == 0:
        raise ValueError(f"--workers needs a fixed port, not 0 ({description!r})")
    return address.family, address.interface, address.port, address.backlog


class ReusePortService(Service):
    """Listens on a TCP address shared with the other workers (SO_REUSEPORT)."""

    def __init__(self, reactor: Any, description: str, factory: IProtocolFactory) -> None:
        self.reactor = reactor
        self.description = description
        self.factory = factory
        self.family, self.interface, self.port, self.backlog = reusePortEndpoint(description)
        self.listeningPort: Any = None

    def privilegedStartService(self) -> None:
        sock = socket.socket(self.family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            interface = self.interface or ("::" if self.family == socket.AF_INET6 else "")
            sock.bind((interface, self.port))
            sock.listen(self.backlog)
            sock.setblocking(False)
            self.listeningPort = self.reactor.adoptStreamPort(
                sock.fileno(), self.family, self.factory
            )
        finally:
            sock.close()  # the reactor's port holds its own descriptor
        super().privilegedStartService()

    def startService(self) -> None:
        if self.listeningPort is None:
            self.privilegedStartService()
        super().startService()

    def stopService(self) -> defer.Deferred[None] | None:
        super().stopService()
        port, self.listeningPort = self.listeningPort, None
        if port is not None:
            return defer.maybeDeferred(port.stopListening)
        return None


class _Worker(ProcessProtocol):
    def __init__(self, pool: WorkerPool, index: int) -> None:
        self.pool = pool
        self.index = index
        self.ended: defer.Deferred[None] = defer.Deferred()

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(None)
        self.pool._ended(self, reason)


class WorkerPool(Service):
    """
    Starts workers 1..N-1 of this service (this process is worker 0),
    restarts a worker that dies, and stops them all when it stops.

    @param argv: the command line of a worker, without its C{--worker I}.
    """

    def __init__(
        self, reactor: Any, count: int, argv: Sequence[str], env: dict[str, str] | None = None
    ) -> None:
        self.reactor = reactor
        self.count = count
        self.argv = list(argv)
        self.env = dict(os.environ if env is None else env)
        self.workers: dict[int, _Worker] = {}
        self._starts: list[float] = []
        self._stopping = False

    def startService(self) -> None:
        super().startService()
        self._stopping = False
        for index in range(1, self.count):
            self._spawn(index)
        log.info("mailframe: {count} worker processes share the listening ports", count=self.count)

    def _spawn(self, index: int) -> None:
        worker = _Worker(self, index)
        argv = [*self.argv, "--worker", str(index)]
        self.reactor.spawnProcess(
            worker, argv[0], argv, env=self.env, childFDs={0: "w", 1: 1, 2: 2}
        )
        self.workers[index] = worker

    def _ended(self, worker: _Worker, reason: Failure) -> None:
        if self.workers.get(worker.index) is worker:
            del self.workers[worker.index]
        if self._stopping:
            return
        now = self.reactor.seconds()
        self._starts = [t for t in self._starts if now - t < 60] + [now]
        if len(self._starts) > RESTARTS_PER_MINUTE:
            log.error(
                "mailframe: worker {index} ended ({why}); too many restarts, not restarting",
                index=worker.index,
                why=reason.value,
            )
            return
        log.warn(
            "mailframe: worker {index} ended ({why}); restarting it",
            index=worker.index,
            why=reason.value,
        )
        self.reactor.callLater(1, self._respawn, worker.index)

    def _respawn(self, index: int) -> None:
        if not self._stopping and index not in self.workers:
            self._spawn(index)

    def stopService(self) -> defer.Deferred[Any]:
        super().stopService()
        self._stopping = True
        waits = []
        for worker in list(self.workers.values()):
            waits.append(worker.ended)
            # a moment first: when the whole group got SIGTERM (systemd), a
            # worker is already stopping and a second signal only makes noise
            self.reactor.callLater(TERM_DELAY, self._signal, worker, signal.SIGTERM)
            self.reactor.callLater(STOP_GRACE, self._signal, worker, signal.SIGKILL)
        return defer.DeferredList(waits)

    def _signal(self, worker: _Worker, sig: int) -> None:
        if worker.ended.called or worker.transport is None:
            return
        with contextlib.suppress(error.ProcessExitedAlready):
            worker.transport.signalProcess(sig)


def workerArgv(parsed: Sequence[str]) -> list[str]:
    """The command line that starts one more worker with the same options."""
    return [
        sys.executable,
        "-c",
        "from twisted.scripts.twistd import run; run()",
        "-n",
        "--pidfile=",
        "mailframe",
        *parsed,
    ]
