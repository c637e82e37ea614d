"""
The queue's control socket: the AMP commands C{mailframe-queue} sends to a
running server (L{ListQueue}, L{ShowEntry}, L{FlushQueue}, L{DeleteEntry},
L{DeleteAll}, L{HoldEntry}, L{ReleaseEntry}), the responder that carries
them out through the L{QueueRunner} (L{ControlProtocol}), and the spool's
lock.

Each spool directory has, while a server uses it::

    SPOOL/lock           an exclusive flock(2), held from before the spool is
                         read until the server stops (a crash releases it);
                         the file says who holds it (pid, role)
    SPOOL/control.sock   a UNIX socket (mode 0600, in the 0700 spool), listening
                         once the runner has read the spool

The lock is what keeps the offline mode of C{mailframe-queue} (which edits
the spool's files when no server answers) and a server apart: the tool
changes files only while it holds the lock, and a server starting waits
for it (L{LOCK_WAIT} seconds) before it reads the spool.  Two servers on
one spool are refused the same way.

Owns: the control protocol and the lock; the operations themselves and the
JSON each listed message is described with are L{mailframe.queue.operations}'s
(shared with the web console).  Must not: change entries except through
the runner; import mailframe.server or mailframe.app.tap.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import time

from twisted.internet import defer
from twisted.internet.interfaces import IAddress, IListeningPort, IReactorUNIX, ITransport
from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

from mailframe.backends._files import makeDirectory
from mailframe.interfaces import IRelay
from mailframe.queue._files import SpoolError
from mailframe.queue.backend import QueueService
from mailframe.queue.operations import (
    HEAD_LIMIT,
    ControlError,
    NoSuchEntry,
    QueueOperations,
    describeEntry,
)
from mailframe.queue.runner import QueueRunner

__all__ = [
    "HEAD_LIMIT",
    "LOCK",
    "LOCK_WAIT",
    "SOCKET",
    "ControlError",
    "ControlFactory",
    "ControlProtocol",
    "ControlledQueueService",
    "DeleteAll",
    "DeleteEntry",
    "FlushQueue",
    "HoldEntry",
    "ListQueue",
    "LongJSON",
    "NoSuchEntry",
    "QueueControl",
    "ReleaseEntry",
    "ShowEntry",
    "SpoolBusy",
    "describeEntry",
    "lockHolder",
    "lockSpool",
]

log = Logger(namespace="mailframe.queue")

SOCKET = "control.sock"
"""The control socket's name in the spool directory."""
LOCK = "lock"
"""The lock file's name in the spool directory."""
LOCK_WAIT = 30.0
"""Seconds a server starting waits for the spool's lock."""
_CHUNK = 60000
_MAX_PARTS = 4096


# -- the lock --------------------------------------------------------------------


class SpoolBusy(SpoolError):
    """Another process holds the spool's lock; C{holder} is what its file says."""

    def __init__(self, path: str, holder: str) -> None:
        super().__init__(f"the spool {path} is in use by {holder}")
        self.holder = holder


def lockHolder(path: str) -> str:
    """Who holds (or last held) the spool's lock, from its file: C{"pid 123 (server)"}."""
    try:
        with open(os.path.join(path, LOCK), encoding="utf-8", errors="replace") as f:
            pid, _, role = f.read(200).strip().partition(" ")
    except OSError:
        pid, role = "", ""
    return f"pid {pid} ({role or '?'})" if pid.isdigit() else "another process"


def lockSpool(path: str, role: str) -> int:
    """
    Take the spool's lock without waiting and write C{"PID ROLE"} into it.

    @return: the file descriptor that holds it (close it to let go).
    @raise SpoolBusy: another process holds it.
    @raise OSError: the lock file cannot be opened.
    """
    fd = os.open(os.path.join(path, LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise SpoolBusy(path, lockHolder(path)) from None
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {role}\n".encode(), 0)
    return fd


# -- the commands ------------------------------------------------------------------


class LongJSON(amp.Argument):
    """
    A JSON value of any size.  An AMP value holds at most 65535 octets, so
    the text is split over the keys C{NAME}, C{NAME.1}, C{NAME.2} ...
    """

    def toBox(
        self, name: bytes, strings: dict[bytes, bytes], objects: dict[str, object], proto: object
    ) -> None:
        value = objects[name.decode("ascii")]
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
        strings[name] = text[:_CHUNK]
        for i, start in enumerate(range(_CHUNK, len(text), _CHUNK), 1):
            strings[name + b".%d" % i] = text[start : start + _CHUNK]

    def fromBox(
        self, name: bytes, strings: dict[bytes, bytes], objects: dict[str, object], proto: object
    ) -> None:
        parts = [strings.pop(name)]
        while (key := name + b".%d" % len(parts)) in strings and len(parts) < _MAX_PARTS:
            parts.append(strings.pop(key))
        objects[name.decode("ascii")] = json.loads(b"".join(parts))


_ERRORS: dict[type[Exception], bytes] = {
    NoSuchEntry: b"NO_SUCH_ENTRY",
    ControlError: b"CONTROL_ERROR",
}


class ListQueue(amp.Command):
    """
    A page of the queue, oldest first: at most C{limit} messages after the
    one with C{afterArrival}/C{afterID} (none: from the start).  C{entries}
    are L{describeEntry} objects; C{more} says whether others follow;
    C{now} is the server's clock.
    """

    arguments = [
        (b"limit", amp.Integer()),
        (b"afterArrival", amp.Float(optional=True)),
        (b"afterID", amp.Unicode(optional=True)),
    ]
    response = [(b"entries", LongJSON()), (b"more", amp.Boolean()), (b"now", amp.Float())]
    errors = _ERRORS


class ShowEntry(amp.Command):
    """One message: its L{describeEntry} object and its first L{HEAD_LIMIT} octets."""

    arguments = [(b"id", amp.Unicode())]
    response = [(b"entry", LongJSON()), (b"head", amp.String()), (b"now", amp.Float())]
    errors = _ERRORS


class FlushQueue(amp.Command):
    """Try every message now, except held ones; C{count}: how many."""

    arguments = []
    response = [(b"count", amp.Integer())]
    errors = _ERRORS


class DeleteEntry(amp.Command):
    """Delete one message (no report to anyone)."""

    arguments = [(b"id", amp.Unicode())]
    response = []
    errors = _ERRORS


class DeleteAll(amp.Command):
    """Delete every message; C{count}: how many."""

    arguments = []
    response = [(b"count", amp.Integer())]
    errors = _ERRORS


class HoldEntry(amp.Command):
    """Hold one message; C{changed} is false if it was held already."""

    arguments = [(b"id", amp.Unicode())]
    response = [(b"changed", amp.Boolean())]
    errors = _ERRORS


class ReleaseEntry(amp.Command):
    """Release one held message; C{changed} is false if it was not held."""

    arguments = [(b"id", amp.Unicode())]
    response = [(b"changed", amp.Boolean())]
    errors = _ERRORS


# -- the responder -----------------------------------------------------------------


class ControlProtocol(amp.AMP):
    """One connection of C{mailframe-queue}; every command goes to C{runner}."""

    def __init__(self, runner: QueueRunner) -> None:
        super().__init__()
        self.runner = runner
        self.operations = QueueOperations(runner)

    def makeConnection(self, transport: ITransport) -> None:
        """Without AMP's log line for every connection."""
        self._transportPeer = transport.getPeer()
        self._transportHost = transport.getHost()
        amp.BinaryBoxProtocol.makeConnection(self, transport)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        amp.BinaryBoxProtocol.connectionLost(self, reason)
        self.transport = None

    @ListQueue.responder
    def listQueue(
        self, limit: int, afterArrival: float | None = None, afterID: str | None = None
    ) -> dict[str, object]:
        page, more = self.operations.page(limit, afterArrival, afterID)
        return {
            "entries": [self.operations.describe(e) for e in page],
            "more": more,
            "now": self.operations.now(),
        }

    @ShowEntry.responder
    def showEntry(self, id: str) -> defer.Deferred[dict[str, object]]:
        operations = self.operations
        described = operations.describe(operations.entry(id))
        return operations.head(id, HEAD_LIMIT).addCallback(
            lambda head: {"entry": described, "head": head, "now": operations.now()}
        )

    @FlushQueue.responder
    def flushQueue(self) -> dict[str, object]:
        return {"count": self.operations.flush()}

    @DeleteEntry.responder
    def deleteEntry(self, id: str) -> dict[str, object]:
        self.operations.delete(id)
        return {}

    @DeleteAll.responder
    def deleteAll(self) -> dict[str, object]:
        return {"count": self.operations.deleteAll()}

    @HoldEntry.responder
    def holdEntry(self, id: str) -> defer.Deferred[dict[str, object]]:
        return self._hold(id, True)

    @ReleaseEntry.responder
    def releaseEntry(self, id: str) -> defer.Deferred[dict[str, object]]:
        return self._hold(id, False)

    def _hold(self, entryID: str, held: bool) -> defer.Deferred[dict[str, object]]:
        # the runner logs it (queue.held, queue.released)
        return self.operations.hold(entryID, held).addCallback(lambda c: {"changed": c})


class ControlFactory(Factory):
    """Makes a L{ControlProtocol} for each connection."""

    noisy = False

    def __init__(self, runner: QueueRunner) -> None:
        self.runner = runner

    def buildProtocol(self, addr: IAddress | None) -> ControlProtocol:
        protocol = ControlProtocol(self.runner)
        protocol.factory = self
        return protocol


# -- the service -------------------------------------------------------------------


class QueueControl:
    """
    The lock and the control socket of the spool C{path}.

    @param lockWait: seconds L{lock} waits for another holder to let go.
    """

    def __init__(self, reactor: IReactorUNIX, path: str, lockWait: float = LOCK_WAIT) -> None:
        self.reactor = reactor
        self.path = path
        self.socketPath = os.path.join(path, SOCKET)
        self.lockWait = lockWait
        self.lockFD: int | None = None
        self.port: IListeningPort | None = None

    def lock(self) -> None:
        """
        Blocking (at start, before the reactor serves anything): take the
        lock, waiting up to C{lockWait} seconds for a C{mailframe-queue}
        working offline.  @raise SpoolBusy: it is still held.
        """
        if self.lockFD is not None:
            return
        makeDirectory(self.path)
        deadline = time.monotonic() + self.lockWait
        while True:
            try:
                self.lockFD = lockSpool(self.path, "server")
                return
            except SpoolBusy:
                if time.monotonic() >= deadline:
                    raise
            time.sleep(0.05)

    def listen(self, runner: QueueRunner) -> None:
        """Listen on the control socket (one a crash left behind is replaced)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socketPath)
        try:
            self.port = self.reactor.listenUNIX(
                self.socketPath, ControlFactory(runner), mode=0o600
            )
        except Exception as e:
            log.warn(
                "queue {path}: no control socket ({error}); mailframe-queue cannot "
                "reach this server",
                path=self.path,
                error=" ".join(str(e).split()),
            )

    def stopListening(self) -> defer.Deferred[None] | None:
        """Stop listening (the socket file goes); a Deferred, or None."""
        port, self.port = self.port, None
        return port.stopListening() if port is not None else None

    def unlock(self) -> None:
        """Let go of the lock."""
        if self.lockFD is not None:
            os.close(self.lockFD)
            self.lockFD = None


class ControlledQueueService(QueueService):
    """
    A L{QueueService} with the spool's lock and control socket: the lock
    before the runner reads the spool (L{SystemExit} if another process
    keeps it), the socket once it has.
    """

    def __init__(
        self, runner: QueueRunner | None, control: QueueControl, relay: IRelay | None = None
    ):
        super().__init__(runner, relay)
        self.control = control

    def _lock(self) -> None:
        try:
            self.control.lock()
        except (SpoolError, OSError) as e:
            raise SystemExit(f"mailframe: cannot use the spool: {e}") from None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._lock()

    def startService(self) -> None:
        self._lock()
        super().startService()
        runner = self.runner
        assert runner is not None

        def listen(_: None) -> None:
            if self.running:
                self.control.listen(runner)

        runner.whenRunning().addCallback(listen)

    def stopService(self) -> defer.Deferred[None] | None:
        stopping = self.control.stopListening()
        super().stopService()
        self.control.unlock()
        return stopping
