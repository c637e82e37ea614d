"""
C{mailframe simulate}, like Exim's C{-bh}: run an SMTP session read from a
file or standard input against the plug-ins the configuration sets up (the
same command line and config file as C{twistd mailframe}: validators,
checks, DNS lookups, milters, AUTH) as if it came from C{--client ADDRESS},
printing each command, each reply and the plug-in that decided it.
Nothing is delivered: the delivery backend is replaced by one that
accepts without writing anything, and no spool is made.

The input is what a client sends, one command a line (LF or CRLF), the
message after DATA up to its "." line::

    EHLO client.example
    MAIL FROM:<alice@example.org>
    RCPT TO:<bob@example.com>
    DATA
    Subject: test

    Hello
    .
    QUIT

Each command waits for its reply, so pipelining is not simulated; nor is
BDAT.  STARTTLS is answered and the session goes on as if the handshake
had succeeded (C{--inside-tls}: as if the connection were TLS from the
first byte).  The greeting delay (pregreet test) is skipped.

Owns: the simulated connection and its transcript.  Must not: deliver,
create a spool or Maildir, or listen.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TextIO

from twisted.internet import defer, error
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import ISSLTransport
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)
from twisted.python import usage
from twisted.python.failure import Failure
from zope.interface import directlyProvides, implementer

from mailframe.address import Domain
from mailframe.app.resolver import makeProcessResolver
from mailframe.app.security import Security
from mailframe.interfaces import IDeliveryBackend
from mailframe.server._decisions import deciderName

if TYPE_CHECKING:
    from mailframe.app.config import ListenerSpec
    from mailframe.config import ServerConfig
    from mailframe.envelope import DeliveryResult, Envelope
    from mailframe.interfaces import IExtension, IMessageFilter
    from mailframe.message import Message
    from mailframe.queue.settings import QueueSpec
    from mailframe.server import SMTPServerFactory, SMTPServerProtocol

__all__ = ["SimulatedBackend", "Simulation", "SimulationError", "main", "parser", "simulate"]

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
REPLY_TIMEOUT = 300.0
"""Seconds to wait for one reply (the server's own plug-in time limit is shorter)."""


@implementer(IDeliveryBackend)
class SimulatedBackend:
    """Accepts every message and keeps none: C{delivered} counts them."""

    def __init__(self) -> None:
        self.delivered = 0

    def deliver(self, envelope: Envelope, message: Message) -> DeliveryResult | None:
        self.delivered += 1
        return None


class _Queue:
    """What the queue does to a listener (locally routed domains, DSN), without a spool."""

    def __init__(self, spec: QueueSpec) -> None:
        self.spec = spec

    def listener(
        self,
        config: ServerConfig,
        local: IDeliveryBackend,
        extensions: list[IExtension],
        messageFilters: list[IMessageFilter],
    ) -> tuple[ServerConfig, IDeliveryBackend, list[IMessageFilter]]:
        from mailframe.extensions.dsn import DSN

        extra = {Domain(d) for d in self.spec.localRoutes}
        if extra:
            config = replace(config, localDomains=frozenset(config.localDomains | extra))
        if not any(e.keyword == "DSN" for e in extensions):
            extensions.append(DSN())
        return config, local, list(messageFilters)


class _Handle:
    """What a simulated TLS connection has instead of an OpenSSL one: nothing to ask."""


class _Transport:
    """The server's side of the simulated connection: it keeps what is written."""

    disconnecting = False
    connected = True

    def __init__(
        self, reactor: Any, peer: IPv4Address | IPv6Address, host: IPv4Address | IPv6Address
    ) -> None:
        self.reactor = reactor
        self.peer = peer
        self.host = host
        self.buffer = b""
        self.protocol: SMTPServerProtocol | None = None
        self.waiting: defer.Deferred[list[str]] | None = None
        self.closed = False
        self.tlsStarted = False  # STARTTLS: the session awaits its handshake

    # what the session calls
    def write(self, data: bytes) -> None:
        self.buffer += data
        self._check()

    def writeSequence(self, data: Sequence[bytes]) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        self.disconnecting = True
        self.closed = True
        self._check()

    abortConnection = loseConnection

    def getPeer(self) -> IPv4Address | IPv6Address:
        return self.peer

    def getHost(self) -> IPv4Address | IPv6Address:
        return self.host

    def getHandle(self) -> _Handle:
        return _Handle()

    def registerProducer(self, producer: object, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass

    def startTLS(self, contextFactory: object) -> None:
        """STARTTLS: no handshake; the session is told it completed before the next command."""
        directlyProvides(self, ISSLTransport)
        self.tlsStarted = True

    # what the simulation asks
    def reply(self) -> defer.Deferred[list[str]]:
        """The next whole reply, as its lines; an empty list if the connection closed first."""
        self.waiting = defer.Deferred()
        d = self.waiting
        self._check()
        return d

    def pending(self) -> list[str]:
        """A whole reply already written after the one awaited (its lines), or nothing."""
        lines = []
        data = self.buffer
        while b"\r\n" in data:
            line, data = data.split(b"\r\n", 1)
            lines.append(line.decode("utf-8", "replace"))
            if line[3:4] != b"-":
                self.buffer = data
                return lines
        return []

    def _check(self) -> None:
        if self.waiting is None:
            return
        lines = self.pending()
        if lines:
            self._answer(lines)
        elif self.closed:
            self._answer([])

    def _answer(self, lines: list[str]) -> None:
        # later, not from within the session's write: the next command is
        # sent once the session has done what follows its reply
        waiting, self.waiting = self.waiting, None
        assert waiting is not None
        self.reactor.callLater(0, waiting.callback, lines)


class Simulation:
    """
    One simulated session against C{factory} from C{peer}, its transcript
    written to C{out}.  C{names}: the description of each plug-in, by id.
    """

    def __init__(
        self,
        reactor: Any,
        factory: SMTPServerFactory,
        peer: IPv4Address | IPv6Address,
        out: TextIO,
        names: dict[int, str] | None = None,
        tls: bool = False,
        timeout: float = REPLY_TIMEOUT,
    ) -> None:
        self.reactor = reactor
        self.factory = factory
        self.out = out
        self.names = names or {}
        self.timeout = timeout
        family = IPv6Address if isinstance(peer, IPv6Address) else IPv4Address
        local = "::1" if family is IPv6Address else "127.0.0.1"
        self.transport = _Transport(reactor, peer, family("TCP", local, 25))
        self.tls = tls
        self.protocol: SMTPServerProtocol | None = None

    def describe(self, provider: object) -> str:
        if provider is None:
            return "mailframe (no plug-in decided: its own rules and defaults)"
        return deciderName(self.names, provider)  # as the decision lines name it

    def _print(self, text: str) -> None:
        print(text, file=self.out)

    async def _reply(self) -> list[str]:
        d = self.transport.reply()
        d.addTimeout(self.timeout, self.reactor)
        try:
            lines = await d
        except defer.TimeoutError:
            raise SimulationError(f"no reply in {self.timeout:g} s") from None
        protocol = self.protocol
        assert protocol is not None
        if self.transport.tlsStarted:  # the handshake that a real client would do now
            self.transport.tlsStarted = False
            protocol.handshakeCompleted()
        for line in lines:
            self._print(f"<<< {line}")
        if lines:
            self._print(f"    decided by {self.describe(protocol.commands.decider)}")
        more = self.transport.pending()
        while more:  # LMTP's reply per recipient after the data; a 421 after a reply
            for line in more:
                self._print(f"<<< {line}")
            more = self.transport.pending()
        return lines

    async def run(self, lines: Sequence[str]) -> int:
        """Play C{lines}; the exit status."""
        protocol = self.protocol = self.factory.buildProtocol(None)
        transport = self.transport
        transport.protocol = protocol
        if self.tls:
            directlyProvides(transport, ISSLTransport)
        peer = transport.peer
        self._print(
            f"*** connection from [{peer.host}]:{peer.port} to the "
            f"{self.factory.config.listener} listener"
            + (" (TLS from the first byte)" if self.tls else "")
            + "; nothing is delivered"
        )
        protocol.makeConnection(transport)
        try:
            if self.tls:
                protocol.handshakeCompleted()
            replied = await self._reply()
            inData = False
            data = 0
            for line in lines:
                if not replied or transport.closed:
                    self._print("*** the server closed the connection")
                    return EXIT_OK
                protocol.commands.decider = None
                protocol.dataReceived(line.encode("utf-8", "surrogateescape") + b"\r\n")
                if inData:
                    if line != ".":
                        data += 1
                        continue
                    self._print(f">>> ({data} lines of message data)")
                    inData = False
                self._print(f">>> {line}")
                replied = await self._reply()
                code = replied[0][:3] if replied else ""
                if code == "354":
                    inData, data = True, 0
                elif code == "250" and line == ".":
                    self._print("    (simulated: not delivered)")
            if replied and not transport.closed:
                self._print("*** end of input: the client goes away")
            elif not transport.closed or not replied:
                self._print("*** the server closed the connection")
            return EXIT_OK
        finally:
            protocol.connectionLost(Failure(error.ConnectionDone()))


class SimulationError(Exception):
    """The simulation could not go on (one line)."""


def parser() -> argparse.ArgumentParser:
    """The simulator's own options; the others are C{twistd mailframe}'s."""
    top = argparse.ArgumentParser(
        prog="mailframe simulate",
        allow_abbrev=False,
        description="Run an SMTP session from a file (or standard input) against the plug-ins "
        "of the configuration, as if from a client address, printing each reply and the "
        "plug-in that decided it.  Nothing is delivered.  The other options are those of "
        "twistd mailframe (--config FILE, --validate ...).",
    )
    top.add_argument("--client", required=True, metavar="ADDRESS",
                     help="the client's IP address, as the checks see it")  # fmt: skip
    top.add_argument("--client-port", type=int, default=49152, metavar="PORT",
                     help="the client's port [49152]")  # fmt: skip
    top.add_argument("--input", default="-", metavar="FILE",
                     help="the session, one command a line [- for standard input]")  # fmt: skip
    top.add_argument("--listener", metavar="NAME",
                     help="the listener (smtp, submission ...) [the first]")  # fmt: skip
    top.add_argument("--inside-tls", action="store_true", dest="tls",
                     help="as if the connection were TLS from the first byte")  # fmt: skip
    return top


def _peer(text: str, port: int) -> IPv4Address | IPv6Address:
    address = ipaddress.ip_address(text)
    if address.version == 6:
        return IPv6Address("TCP", str(address), port)
    return IPv4Address("TCP", str(address), port)


def _listener(specs: Sequence[ListenerSpec], name: str | None) -> ListenerSpec:
    if name is None:
        return specs[0]
    for spec in specs:
        if spec.config.listener == name:
            return spec
    known = ", ".join(s.config.listener for s in specs)
    raise SimulationError(f"no listener {name!r} (the listeners: {known})")


async def simulate(
    reactor: Any,
    args: argparse.Namespace,
    options: Any,
    lines: Sequence[str],
    build: Callable[..., tuple[SMTPServerFactory, IDeliveryBackend]],
    out: TextIO,
    err: TextIO,
) -> int:
    """
    Play C{lines} against the listener of C{options} (C{twistd mailframe}'s,
    parsed) that C{args} (L{parser}'s) names, from its C{--client}; the
    exit status.  C{build} is C{mailframe.app.listener.buildListener}.
    """
    try:
        peer = _peer(args.client, args.client_port)
        spec = _listener(options.listeners, args.listener)
        spec = replace(spec, config=replace(spec.config, greetDelay=0.0))
        names: dict[int, str] = {}
        security = Security(reactor, options.clientLimits)
        resolver = makeProcessResolver(reactor, options.dns)
        queue = _Queue(options.queue) if options.queue is not None else None
        factory, _ = build(reactor, spec, security, resolver, queue,
                           backend=SimulatedBackend(), names=names)  # fmt: skip
        simulation = Simulation(reactor, factory, peer, out, names, tls=args.tls)
        return await simulation.run(lines)
    except ValueError:
        print(f"mailframe simulate: --client: not an IP address: {args.client!r}", file=err)
        return EXIT_USAGE
    except SimulationError as e:
        print(f"mailframe simulate: {e}", file=err)
        return EXIT_ERROR
    except SystemExit as e:  # a plug-in that cannot be set up: one line
        print(str(e.code), file=err)
        return EXIT_ERROR


def main(argv: Sequence[str]) -> int:
    """
    The C{mailframe simulate} command: its exit status (0 the session was
    played, 1 an error, 2 a usage error).
    """
    from mailframe.app.tap import Options, buildListener

    args, rest = parser().parse_known_args(list(argv))
    build = buildListener
    optionsClass = Options
    options = optionsClass()
    try:
        options.parseOptions(rest)
    except usage.UsageError as e:
        print(f"mailframe simulate: {e}", file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.input == "-":
            text = sys.stdin.read()
        else:
            with open(args.input, encoding="utf-8", errors="surrogateescape") as f:
                text = f.read()
    except OSError as e:
        print(f"mailframe simulate: cannot read {args.input}: {e.strerror or e}", file=sys.stderr)
        return EXIT_ERROR
    from twisted.internet import reactor

    globalLogBeginner.beginLoggingTo(
        [
            FilteringLogObserver(
                textFileLogObserver(sys.stderr), [LogLevelFilterPredicate(LogLevel.warn)]
            )
        ],
        redirectStandardIO=False,
    )
    status: list[int] = []

    def start() -> None:
        d = defer.ensureDeferred(
            simulate(reactor, args, options, text.splitlines(), build, sys.stdout, sys.stderr)
        )
        d.addCallback(status.append)
        d.addErrback(lambda f: print(f.getTraceback(), file=sys.stderr))
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(start)
    reactor.run()
    return status[0] if status else EXIT_ERROR
