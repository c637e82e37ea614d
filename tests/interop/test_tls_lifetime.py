"""
TLS clients as they are found outside, over 127.0.0.1: Python's ssl and
C{openssl s_client} offering ALPN (on STARTTLS and implicit TLS), and the
end of TLS sessions: after 221, after the idle 421, after too many errors
and after the AUTH failure limit the client sees the connection end within
a second; a client that never starts its handshake and one that never reads
are closed by their time limits; waves of such clients leave no descriptor
behind; and bytes sent after 221 are not buffered.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import smtplib
import socket
import ssl
import subprocess
import time
from collections.abc import Generator
from typing import Any

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.internet import defer, reactor, task, threads
from twisted.trial.unittest import SkipTest, TestCase

from mailframe.auth.credentials import makePortal
from mailframe.backends.memory import MemoryBackend
from mailframe.config import ServerConfig
from mailframe.extensions import defaultExtensions
from mailframe.extensions.auth import Auth
from mailframe.extensions.starttls import StartTLS
from mailframe.policy.authlimits import AuthFailureLimiter
from mailframe.server import SMTPServerFactory
from mailframe.server.tls import CertificatePair, ServerTLS, implicitTLS
from tests._certs import TestCA
from tests.interop._support import HOST, AcceptLocal, RunningServer, _shutdown, inThread

OPENSSL = shutil.which("openssl")
_REQUIRED = bool(os.environ.get("MAILFRAME_REQUIRE_INTEROP"))

CLOSE_WITHIN = 1.0
"""Seconds in which the client must see the end of the connection."""


def _openFiles() -> int:
    return len(os.listdir("/proc/self/fd"))


class _Servers:
    """A STARTTLS server and an implicit-TLS server with short time limits."""

    def __init__(self, case: TestCase, **settings: Any) -> None:
        self.ca = TestCA(case.mktemp())
        issued = self.ca.issue("server", "mx.test", "localhost", HOST)
        tls = ServerTLS([CertificatePair(issued.fullchain, issued.privkey)])
        self.servers: dict[str, RunningServer] = {}
        for kind in ("starttls", "implicit"):
            checker = InMemoryUsernamePasswordDatabaseDontUse()
            checker.addUser(b"alice", b"secret")
            limiter = AuthFailureLimiter(reactor, maxFailures=1000)  # type: ignore[arg-type]
            extensions = [*defaultExtensions(1 << 20)]
            if kind == "starttls":
                extensions.append(StartTLS(tls))
            extensions.append(
                Auth(
                    makePortal([checker]),
                    reactor,  # type: ignore[arg-type]
                    limiter=limiter,
                    maxFailures=2,
                    failureDelay=0.0,
                )
            )
            config = ServerConfig(
                hostname="mx.test", localDomains=frozenset({"example.com"}), **settings
            )  # type: ignore[arg-type]
            backend = MemoryBackend()
            factory = SMTPServerFactory(
                config, backend, [AcceptLocal()], extensions=extensions,
                clock=reactor,  # type: ignore[arg-type]
            )  # fmt: skip
            listening: Any = implicitTLS(tls, factory) if kind == "implicit" else factory
            port = reactor.listenTCP(0, listening, interface=HOST)  # type: ignore[attr-defined]
            server = RunningServer(factory, backend, port)
            case.addCleanup(_shutdown, server)
            self.servers[kind] = server

    def context(self, alpn: list[str] | None = None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.ca.rootFile)
        if alpn:
            ctx.set_alpn_protocols(alpn)
        return ctx

    def tlsSocket(self, kind: str, alpn: list[str] | None = None) -> ssl.SSLSocket:
        """A TLS socket after EHLO: STARTTLS done for 'starttls', greeting read."""
        server = self.servers[kind]
        raw = socket.create_connection((HOST, server.portNumber), timeout=10)
        ctx = self.context(alpn)
        if kind == "starttls":
            f = raw.makefile("rb")
            _reply(f)
            raw.sendall(b"EHLO c\r\n")
            _reply(f)
            raw.sendall(b"STARTTLS\r\n")
            assert _reply(f).startswith(b"220")
            sock = ctx.wrap_socket(raw, server_hostname="mx.test")
        else:
            sock = ctx.wrap_socket(raw, server_hostname="mx.test")
            _reply(sock.makefile("rb"))
        sock.settimeout(10)
        return sock


def _reply(f: Any) -> bytes:
    """One whole (multi-line) reply."""
    out = b""
    for _ in range(100):
        line = f.readline()
        out += line
        if not line or line[3:4] != b"-":
            return out
    raise AssertionError("reply too long")


def _secondsToEOF(sock: socket.socket) -> float:
    """Read until the peer ends the connection: the seconds it took (bounded)."""
    start = time.monotonic()
    sock.settimeout(5)
    for _ in range(1000):
        try:
            if not sock.recv(65536):
                break
        except (ssl.SSLError, ConnectionError):
            break
        except TimeoutError:
            return float("inf")
    return time.monotonic() - start


class ALPNTests(TestCase):
    """Clients that offer ALPN complete their handshakes (issue 9, bug 1)."""

    timeout = 60

    def setUp(self) -> None:
        self.tls = _Servers(self)

    @defer.inlineCallbacks
    def test_pythonSSLWithALPN(self) -> Generator[Any, Any, None]:
        """smtplib with ALPN 'smtp' (and a browser's h2/http/1.1) on both listener kinds."""

        def run(alpn: list[str]) -> list[Any]:
            out = []
            starttls = self.tls.servers["starttls"]
            with smtplib.SMTP(HOST, starttls.portNumber, timeout=10) as c:
                c.starttls(context=self.tls.context(alpn))
                out.append(c.sock.selected_alpn_protocol())  # type: ignore[union-attr]
                out.append(c.noop()[0])
            implicit = self.tls.servers["implicit"]
            with smtplib.SMTP_SSL(
                HOST, implicit.portNumber, timeout=10, context=self.tls.context(alpn)
            ) as c:
                out.append(c.sock.selected_alpn_protocol())  # type: ignore[union-attr]
                out.append(c.noop()[0])
            return out

        self.assertEqual((yield inThread(run, ["smtp"])), ["smtp", 250, "smtp", 250])
        self.assertEqual((yield inThread(run, ["h2", "http/1.1"])), [None, 250, None, 250])

    @defer.inlineCallbacks
    def test_openSSLClientWithALPN(self) -> Generator[Any, Any, None]:
        """openssl s_client -alpn smtp completes STARTTLS and implicit TLS, 'smtp' chosen."""
        if OPENSSL is None:
            if _REQUIRED:
                self.fail("openssl is not installed")
            raise SkipTest("openssl is not installed")

        def run(args: list[str]) -> str:
            done = subprocess.run(
                [OPENSSL, "s_client", "-alpn", "smtp", "-CAfile", self.tls.ca.rootFile,
                 "-servername", "mx.test", "-ign_eof", "-nocommands", *args],
                input=b"QUIT\r\n", capture_output=True, timeout=30,
            )  # fmt: skip
            return done.stdout.decode("utf-8", "replace") + done.stderr.decode("utf-8", "replace")

        starttls = self.tls.servers["starttls"].portNumber
        implicit = self.tls.servers["implicit"].portNumber
        out = yield inThread(run, ["-starttls", "smtp", "-connect", f"{HOST}:{starttls}"])
        self.assertIn("ALPN protocol: smtp", out)
        self.assertIn("221", out)
        self.assertNotIn("alert", out.lower().replace("alert number", ""))
        out = yield inThread(run, ["-connect", f"{HOST}:{implicit}"])
        self.assertIn("ALPN protocol: smtp", out)
        self.assertIn("221", out)


class CloseTests(TestCase):
    """Under TLS the server ends the connection within a second of its goodbye."""

    timeout = 120

    def setUp(self) -> None:
        self.tls = _Servers(self, commandTimeout=1.0, maxErrors=3, closeTimeout=0.5)

    def _check(self, scenario: Any) -> Any:
        def run() -> list[float]:
            return [scenario(self.tls.tlsSocket(kind)) for kind in ("starttls", "implicit")]

        d = inThread(run)
        d.addCallback(lambda times: [self.assertLess(t, CLOSE_WITHIN, times) for t in times])
        return d

    def test_afterQuit(self) -> Any:
        """221, then the end of the connection within a second."""

        def scenario(sock: ssl.SSLSocket) -> float:
            sock.sendall(b"QUIT\r\n")
            self.assertTrue(_reply(sock.makefile("rb")).startswith(b"221"))
            return _secondsToEOF(sock)

        return self._check(scenario)

    def test_afterIdleTimeout(self) -> Any:
        """The idle 421, then the end of the connection within a second."""

        def scenario(sock: ssl.SSLSocket) -> float:
            sock.settimeout(5)
            self.assertTrue(_reply(sock.makefile("rb")).startswith(b"421"))
            return _secondsToEOF(sock)

        return self._check(scenario)

    def test_afterTooManyErrors(self) -> Any:
        """The too-many-errors 421, then the end of the connection within a second."""

        def scenario(sock: ssl.SSLSocket) -> float:
            f = sock.makefile("rb")
            for _ in range(2):
                sock.sendall(b"FOO\r\n")
                self.assertTrue(_reply(f).startswith(b"500"))
            sock.sendall(b"FOO\r\n")
            self.assertTrue(_reply(f).startswith(b"421"))
            return _secondsToEOF(sock)

        return self._check(scenario)

    def test_afterAuthFailures(self) -> Any:
        """The AUTH-failure 421, then the end of the connection within a second."""

        def scenario(sock: ssl.SSLSocket) -> float:
            f = sock.makefile("rb")
            sock.sendall(b"EHLO c\r\n")
            _reply(f)
            bad = b"AUTH PLAIN AGFsaWNlAHdyb25n\r\n"  # alice / wrong
            sock.sendall(bad)
            self.assertTrue(_reply(f).startswith(b"535"))
            sock.sendall(bad)
            self.assertTrue(_reply(f).startswith(b"421"))
            return _secondsToEOF(sock)

        return self._check(scenario)

    def test_dataAfterQuitNotBuffered(self) -> Any:
        """Megabytes sent after QUIT are not kept by the server."""
        server = self.tls.servers["starttls"]

        def buffered() -> int:
            return max((s._conn.buffered for s in server.factory.sessions), default=0)

        def run() -> int:
            sock = self.tls.tlsSocket("starttls")
            sock.sendall(b"QUIT\r\n")
            most = 0
            try:
                for _ in range(64):
                    sock.sendall(b"y" * 65536)
                    most = max(most, threads.blockingCallFromThread(reactor, buffered))
            except (OSError, ssl.SSLError):
                pass  # the server closed the connection under us: as it should
            sock.close()
            return most

        d = inThread(run)
        d.addCallback(lambda most: self.assertLess(most, 1 << 16))
        return d


class TimeLimitTests(TestCase):
    """Clients that never handshake or never read are closed; descriptors come back."""

    timeout = 120

    def setUp(self) -> None:
        self.tls = _Servers(self, commandTimeout=1.0, handshakeTimeout=1.0, closeTimeout=0.5)

    def _raw(self, kind: str) -> socket.socket:
        server = self.tls.servers[kind]
        return socket.create_connection((HOST, server.portNumber), timeout=10)

    def noHandshake(self) -> socket.socket:
        """STARTTLS answered, then silence: no ClientHello."""
        sock = self._raw("starttls")
        f = sock.makefile("rb")
        _reply(f)
        sock.sendall(b"EHLO c\r\nSTARTTLS\r\n")
        _reply(f)
        _reply(f)
        return sock

    def noRead(self) -> socket.socket:
        """Sends a flood of NOOPs and never reads a reply."""
        sock = self._raw("starttls")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        data = b"NOOP\r\n" * 100_000
        with contextlib.suppress(BlockingIOError):
            sock.send(data)
        return sock

    def idleTLS(self) -> socket.socket:
        return self.tls.tlsSocket("implicit")

    def silentImplicit(self) -> socket.socket:
        """Connects to the implicit-TLS port and sends nothing."""
        return self._raw("implicit")

    @defer.inlineCallbacks
    def test_waves(self) -> Generator[Any, Any, None]:
        """Three waves of idle-TLS, no-handshake, non-reading and silent clients: all closed."""
        factories = [s.factory for s in self.tls.servers.values()]
        baseline = _openFiles()
        for _wave in range(3):
            socks = yield inThread(
                lambda: [
                    make()
                    for make in (self.idleTLS, self.noHandshake, self.noRead, self.silentImplicit)
                    for _ in range(5)
                ]
            )
            self.assertGreater(sum(len(f.sessions) for f in factories), 0)
            for _ in range(100):  # the limits: 1 s + 0.5 s to close; bounded wait
                if not any(f.sessions for f in factories):
                    break
                yield task.deferLater(reactor, 0.1, lambda: None)  # type: ignore[arg-type]
            self.assertEqual([len(f.sessions) for f in factories], [0, 0])
            for s in socks:
                s.close()
        yield task.deferLater(reactor, 0.2, lambda: None)  # type: ignore[arg-type]
        self.assertLessEqual(_openFiles(), baseline + 2)
