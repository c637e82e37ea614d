"""
Helpers for the interop tests: a mailframe server on 127.0.0.1 (port 0) in
the trial reactor, blocking clients run in threads, swaks run as a child
process.  Every wait is bounded: sockets have a timeout, thread results a
Deferred timeout, swaks is killed by coreutils' timeout(1).

Owns: nothing of mailframe.  Must not: sleep in the reactor thread.
"""

from __future__ import annotations

import shutil
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from twisted.internet import defer, reactor, task, threads
from twisted.internet.interfaces import IListeningPort
from twisted.internet.utils import getProcessOutputAndValue
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from mailframe import reply as R
from mailframe.backends.memory import MemoryBackend, StoredMessage
from mailframe.config import ServerConfig
from mailframe.envelope import Envelope, Recipient, SessionInfo
from mailframe.interfaces import IRecipientValidator
from mailframe.protocol import Limits
from mailframe.server import SMTPServerFactory

__all__ = [
    "CLIENT_TIMEOUT",
    "HOST",
    "SWAKS",
    "AcceptLocal",
    "RawClient",
    "RunningServer",
    "inThread",
    "runSwaks",
    "splitReceived",
    "startServer",
]

HOST = "127.0.0.1"
CLIENT_TIMEOUT = 15.0
"""Seconds a blocking client waits for any one socket operation."""
THREAD_TIMEOUT = 60.0
"""Seconds a whole client scenario in a thread may take."""
PROCESS_TIMEOUT = 30
"""Seconds before a swaks process is killed."""
SHUTDOWN_TIMEOUT = 5.0
"""Seconds to wait for server sessions to end after a test before aborting them."""

SWAKS = shutil.which("swaks") or "/usr/bin/swaks"
_TIMEOUT_COMMAND = shutil.which("timeout") or "/usr/bin/timeout"

T = TypeVar("T")


# -- recipient validators for the tests ----------------------------------------


@implementer(IRecipientValidator)
class AcceptLocal:
    """
    Accepts every recipient except those whose local part is in C{unknown}
    (no opinion: the server answers 550 5.1.1).  With C{delay} > 0 the answer
    comes that many seconds later from a real reactor.callLater.
    """

    def __init__(self, unknown: Iterable[str] = ("nobody",), delay: float = 0.0) -> None:
        self.unknown = frozenset(unknown)
        self.delay = delay
        self.seen: list[str] = []

    def validateRecipient(
        self, session: SessionInfo, envelope: Envelope, recipient: Recipient
    ) -> Any:
        self.seen.append(str(recipient.address))
        answer = None if recipient.address.localPart in self.unknown else R.RECIPIENT_OK
        if self.delay > 0:
            return task.deferLater(reactor, self.delay, lambda: answer)  # type: ignore[arg-type]
        return answer


# -- the server ------------------------------------------------------------------


class _RecordingWrapper(ProtocolWrapper):
    """A transport in front of one server session that records each write."""

    def __init__(self, factory: Any, wrappedProtocol: Any) -> None:
        super().__init__(factory, wrappedProtocol)
        self.writes: list[bytes] = []
        factory.connections.append(self)

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        super().write(data)

    def writeSequence(self, data: Iterable[bytes]) -> None:
        self.write(b"".join(data))


class _RecordingFactory(WrappingFactory):
    protocol = _RecordingWrapper

    def __init__(self, wrappedFactory: Any) -> None:
        super().__init__(wrappedFactory)
        self.connections: list[_RecordingWrapper] = []


@dataclass
class RunningServer:
    """A listening mailframe server and what it delivered."""

    factory: SMTPServerFactory
    backend: MemoryBackend
    port: IListeningPort
    recorder: _RecordingFactory | None = None

    @property
    def connections(self) -> list[_RecordingWrapper]:
        """With C{recordWrites}: each session's transport, in connection order."""
        assert self.recorder is not None, "start the server with recordWrites=True"
        return self.recorder.connections

    @property
    def portNumber(self) -> int:
        return self.port.getHost().port  # type: ignore[attr-defined,no-any-return]

    @property
    def address(self) -> str:
        return f"{HOST}:{self.portNumber}"

    @property
    def messages(self) -> list[StoredMessage]:
        return self.backend.messages

    def bodies(self) -> list[bytes]:
        """Each delivered message without the Received: field the server added."""
        return [splitReceived(m.data)[1] for m in self.backend.messages]

    def recipients(self, i: int = 0) -> list[str]:
        """The recipients of the i-th delivered message, as strings."""
        return [str(r.address) for r in self.backend.messages[i].envelope.recipients]


def startServer(
    testCase: TestCase,
    validators: Sequence[Any] | None = None,
    *,
    localDomains: Iterable[str] = ("example.com",),
    limits: Limits | None = None,
    recordWrites: bool = False,
    **config: Any,
) -> RunningServer:
    """
    Listen on 127.0.0.1, port 0, in the trial reactor, with a MemoryBackend.
    The test's cleanup stops listening and waits (bounded) for every session
    to end, so that the reactor is clean.  With C{recordWrites} every
    session's transport writes are recorded in C{server.connections}.
    """
    backend = MemoryBackend()
    cfg = ServerConfig(
        hostname="mx.test",
        localDomains=frozenset(localDomains),  # type: ignore[arg-type]
        limits=limits or Limits(),
        **config,
    )
    factory = SMTPServerFactory(
        cfg,
        backend,
        validators=[AcceptLocal()] if validators is None else validators,
        clock=reactor,  # type: ignore[arg-type]
    )
    listening: Any = factory
    recorder = None
    if recordWrites:
        recorder = _RecordingFactory(factory)
        listening = recorder
    port = reactor.listenTCP(0, listening, interface=HOST)  # type: ignore[attr-defined]
    server = RunningServer(factory, backend, port, recorder)
    testCase.addCleanup(_shutdown, server)
    return server


@defer.inlineCallbacks
def _shutdown(server: RunningServer) -> Any:
    yield server.port.stopListening()
    sessions = server.factory.sessions
    deadline = time.monotonic() + SHUTDOWN_TIMEOUT
    while sessions and time.monotonic() < deadline:
        yield task.deferLater(reactor, 0.01, lambda: None)  # type: ignore[arg-type]
    if sessions:
        for s in list(sessions):
            s.transport.abortConnection()  # type: ignore[union-attr]
        deadline = time.monotonic() + SHUTDOWN_TIMEOUT
        while sessions and time.monotonic() < deadline:
            yield task.deferLater(reactor, 0.01, lambda: None)  # type: ignore[arg-type]


def splitReceived(data: bytes) -> tuple[bytes, bytes]:
    """
    Split a delivered message into the Received: field the server prepended
    (with its continuation lines) and the rest, as the client sent it.
    """
    if not data.startswith(b"Received: "):
        raise AssertionError(f"no Received: field first: {data[:80]!r}")
    end = data.index(b"\r\n") + 2
    while data[end : end + 1] in (b" ", b"\t"):
        end = data.index(b"\r\n", end) + 2
    return data[:end], data[end:]


# -- clients -----------------------------------------------------------------------


def inThread(f: Callable[..., T], *args: Any, **kwargs: Any) -> defer.Deferred[T]:
    """Run a blocking client scenario in the reactor's thread pool, bounded."""
    d = threads.deferToThread(f, *args, **kwargs)
    d.addTimeout(THREAD_TIMEOUT, reactor)  # type: ignore[arg-type]
    return d


def runSwaks(
    server: RunningServer, *args: str, home: str
) -> defer.Deferred[tuple[bytes, bytes, int]]:
    """
    Run swaks against the server: C{(stdout, stderr, exit code)}.  A swaks
    that hangs is killed after PROCESS_TIMEOUT seconds (exit code -9 / 137).
    C{home} is an empty directory, so no ~/.swaksrc changes the run.
    """
    env = {"PATH": "/usr/bin:/bin", "HOME": home, "LANG": "C", "LC_ALL": "C"}
    argv = [
        "-s",
        "KILL",
        str(PROCESS_TIMEOUT),
        SWAKS,
        "--server",
        server.address,
        "--timeout",
        str(int(CLIENT_TIMEOUT)),
        *args,
    ]
    return getProcessOutputAndValue(_TIMEOUT_COMMAND, argv, env=env, reactor=reactor)  # type: ignore[no-any-return]


class RawClient:
    """
    A blocking SMTP client over a plain socket, for the thread of a test:
    send raw bytes, read whole replies.  Every recv is bounded by
    CLIENT_TIMEOUT.
    """

    def __init__(self, server: RunningServer) -> None:
        self.sock = socket.create_connection((HOST, server.portNumber), timeout=CLIENT_TIMEOUT)
        self.buffer = b""
        self.recvSizes: list[int] = []

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recvOnce(self) -> bytes:
        """One recv: what has arrived (b"" at end of stream)."""
        data = self.sock.recv(1 << 16)
        self.recvSizes.append(len(data))
        self.buffer += data
        return data

    def reply(self) -> tuple[int, list[str]]:
        """The next whole reply: its code and its lines (without the code)."""
        lines: list[str] = []
        while True:
            while b"\r\n" not in self.buffer:
                if not self.recvOnce():
                    raise ConnectionError(f"closed after {lines!r} + {self.buffer!r}")
            raw, self.buffer = self.buffer.split(b"\r\n", 1)
            line = raw.decode("utf-8")
            lines.append(line[4:])
            if line[3:4] != "-":
                return int(line[:3]), lines

    def replies(self, n: int) -> list[tuple[int, str]]:
        """The next n replies, each as (code, first line of text)."""
        out = []
        for _ in range(n):
            code, lines = self.reply()
            out.append((code, lines[0]))
        return out

    def command(self, line: bytes) -> tuple[int, str]:
        """Send one command line (CRLF added) and read its reply."""
        self.send(line + b"\r\n")
        return self.replies(1)[0]

    def greetAndEhlo(self) -> list[str]:
        """Read the greeting, send EHLO; the EHLO reply's lines."""
        code, _ = self.reply()
        assert code == 220, code
        self.send(b"EHLO client.test\r\n")
        code, lines = self.reply()
        assert code == 250, (code, lines)
        return lines

    def atEOF(self) -> bool:
        """True if the server closed the connection (after what is buffered)."""
        if self.buffer:
            return False
        try:
            return self.recvOnce() == b""
        except ConnectionResetError:
            return True
