"""
Helpers for the milter tests: L{ScriptedMilter}, a milter on 127.0.0.1
written on mailframe's codec that records every command and answers as a
test scripts it, and L{startMilterServer}, a mailframe server on 127.0.0.1
with milters at every stage and a memory backend.  Every wait is bounded
(the cleanup waits at most a few seconds for sessions to end).

Owns: nothing of mailframe.  Must not: sleep in the reactor thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase

from mailframe.backends.memory import MemoryBackend
from mailframe.config import ServerConfig
from mailframe.milter import codec as C
from mailframe.milter.filter import Milter
from mailframe.milter.settings import MilterAddress, MilterSettings
from mailframe.server import SMTPServerFactory
from tests.interop._support import HOST, AcceptLocal

__all__ = ["MilterServer", "ScriptedMilter", "startMilterServer"]

SHUTDOWN_TIMEOUT = 5.0

#: A handler answers one command: the bytes to send back (or None), given
#: the command and the milter's side of the connection.
Handler = Callable[[C.Received, "MilterSide"], bytes | None]


class MilterSide(Protocol):
    """The milter's end of one connection (one SMTP session)."""

    def __init__(self, milter: ScriptedMilter) -> None:
        self.milter = milter
        self.reader = C.PacketReader(limit=1 << 20)
        self.received: list[C.Received] = []

    def connectionMade(self) -> None:
        self.milter.sessions.append(self.received)
        self.milter.connections.append(self)

    def dataReceived(self, data: bytes) -> None:
        self.reader.feed(data)
        for command, payload in self.reader:
            received = C.parseCommand(command, payload)
            self.received.append(received)
            out = self.milter.answer(received, self)
            if out and self.transport is not None and self.transport.connected:  # type: ignore[attr-defined]
                self.transport.write(out)

    def connectionLost(self, reason: Any = None) -> None:
        self.milter.closed += 1


class ScriptedMilter:
    """
    A milter listening on 127.0.0.1 (port 0): it negotiates C{actions} and
    C{protocol} (with C{macros} lists), answers continue to every command
    that wants an answer, and C{handlers[command]} instead where given.
    C{sessions}: per connection, the commands received, parsed.
    """

    def __init__(
        self,
        testCase: TestCase,
        handlers: dict[bytes, Handler] | None = None,
        actions: int = C.ALL_ACTIONS,
        protocol: int = 0,
        macros: Sequence[tuple[C.Stage, str]] = (),
        version: int = C.VERSION,
    ) -> None:
        self.handlers = dict(handlers or {})
        self.actions = actions
        self.protocol = protocol
        self.macros = macros
        self.version = version
        self.sessions: list[list[C.Received]] = []
        self.connections: list[MilterSide] = []
        self.closed = 0
        factory = Factory.forProtocol(lambda: MilterSide(self))
        self.port: IListeningPort = reactor.listenTCP(0, factory, interface=HOST)  # type: ignore[attr-defined]
        testCase.addCleanup(self.stop)

    @property
    def address(self) -> str:
        return f"inet:{HOST}:{self.port.getHost().port}"  # type: ignore[attr-defined]

    def stop(self) -> defer.Deferred[None]:
        for connection in self.connections:
            if connection.transport is not None:
                connection.transport.abortConnection()  # type: ignore[attr-defined]
        return defer.maybeDeferred(self.port.stopListening)  # type: ignore[return-value]

    def answer(self, received: C.Received, side: MilterSide) -> bytes | None:
        handler = self.handlers.get(received.command)
        if handler is not None:
            return handler(received, side)
        command = received.command
        if command == C.Command.OPTNEG:
            return C.respondOptions(self.actions, self.protocol, self.version, self.macros)
        if command in (C.Command.MACRO, C.Command.ABORT):
            return None
        if command == C.Command.QUIT:
            side.transport.loseConnection()  # type: ignore[union-attr]
            return None
        noReply = {
            C.Command.CONNECT: C.Protocol.NR_CONN,
            C.Command.HELO: C.Protocol.NR_HELO,
            C.Command.MAIL: C.Protocol.NR_MAIL,
            C.Command.RCPT: C.Protocol.NR_RCPT,
            C.Command.DATA: C.Protocol.NR_DATA,
            C.Command.HEADER: C.Protocol.NR_HDR,
            C.Command.EOH: C.Protocol.NR_EOH,
            C.Command.BODY: C.Protocol.NR_BODY,
            C.Command.UNKNOWN: C.Protocol.NR_UNKN,
        }.get(command)
        if noReply is not None and self.protocol & noReply:
            return None
        return C.respond(C.Response.CONTINUE)

    # -- reading what it got --------------------------------------------------------

    def commands(self, session: int = 0) -> list[bytes]:
        """The command octets of a session, macros left out."""
        return [r.command for r in self.sessions[session] if r.command != C.Command.MACRO]

    def macrosOf(self, session: int = 0) -> dict[bytes, dict[str, str]]:
        """The macros of a session by the command they came with (the last set of each)."""
        out: dict[bytes, dict[str, str]] = {}
        for r in self.sessions[session]:
            if r.command == C.Command.MACRO:
                stage, pairs = r.args
                out[stage] = pairs  # type: ignore[index,assignment]
        return out

    def received(self, command: bytes, session: int = 0) -> list[C.Received]:
        return [r for r in self.sessions[session] if r.command == command]


@dataclass
class MilterServer:
    factory: SMTPServerFactory
    backend: MemoryBackend
    port: IListeningPort
    milters: list[Milter] = field(default_factory=list)

    @property
    def portNumber(self) -> int:
        return self.port.getHost().port  # type: ignore[attr-defined,no-any-return]


def milterFor(address: str, **settings: Any) -> Milter:
    """A L{Milter} for C{address} with short time limits, on the trial reactor."""
    settings.setdefault("connectTimeout", 5.0)
    settings.setdefault("commandTimeout", 5.0)
    settings.setdefault("eomTimeout", 10.0)
    return Milter(MilterSettings(MilterAddress.parse(address), **settings), reactor)


def startMilterServer(
    testCase: TestCase,
    milters: Sequence[Milter],
    validators: Sequence[Any] | None = None,
    messageFilters: Sequence[Any] = (),
    **config: Any,
) -> MilterServer:
    """
    A mailframe server on 127.0.0.1 (port 0) asking C{milters} at every
    stage (before C{validators}, by default L{AcceptLocal}), with a memory
    backend.  Cleanup stops it and waits (bounded) for its sessions.
    """
    backend = MemoryBackend()
    cfg = ServerConfig(
        hostname="mx.test",
        localDomains=frozenset({"example.com"}),  # type: ignore[arg-type]
        **config,
    )
    factory = SMTPServerFactory(
        cfg,
        backend,
        validators=[*milters, *(validators if validators is not None else [AcceptLocal()])],
        senderValidators=milters,
        connectionFilters=milters,
        messageFilters=[*messageFilters, *milters],
        heloValidators=milters,
        clock=reactor,  # type: ignore[arg-type]
    )
    port = reactor.listenTCP(0, factory, interface=HOST)  # type: ignore[attr-defined]
    server = MilterServer(factory, backend, port, list(milters))
    testCase.addCleanup(_shutdown, server)
    return server


@defer.inlineCallbacks
def _shutdown(server: MilterServer) -> Any:
    yield server.port.stopListening()
    sessions = server.factory.sessions
    deadline = time.monotonic() + SHUTDOWN_TIMEOUT
    while sessions and time.monotonic() < deadline:
        yield task.deferLater(reactor, 0.01, lambda: None)  # type: ignore[arg-type]
    for s in list(sessions):
        s.transport.abortConnection()  # type: ignore[union-attr]
    deadline = time.monotonic() + SHUTDOWN_TIMEOUT
    while sessions and time.monotonic() < deadline:
        yield task.deferLater(reactor, 0.01, lambda: None)  # type: ignore[arg-type]
    # let the milters' connections close too
    yield task.deferLater(reactor, 0.05, lambda: None)  # type: ignore[arg-type]
