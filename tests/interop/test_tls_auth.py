"""
Interop for STARTTLS, implicit TLS and AUTH over 127.0.0.1: smtplib
(C{starttls()}, C{login()}, C{auth_plain}, C{auth_login}, C{auth_cram_md5},
C{SMTP_SSL}) in threads and swaks (C{--tls}, C{--tlsc}, C{--auth PLAIN},
C{LOGIN}, C{CRAM-MD5}) as child processes, against a server in the trial
reactor with certificates from a test CA; the STARTTLS injection test from
a raw socket; and the issue's "done when" command: twistd in a subprocess.
"""

from __future__ import annotations

import os
import smtplib
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

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
from tests.interop._mailpeers import waitForTwistd
from tests.interop._support import (
    _TIMEOUT_COMMAND,
    CLIENT_TIMEOUT,
    HOST,
    PROCESS_TIMEOUT,
    SWAKS,
    AcceptLocal,
    RawClient,
    RunningServer,
    _shutdown,
    inThread,
    splitReceived,
)

REPO = Path(__file__).resolve().parents[2]
TWISTD = Path(sys.executable).with_name("twistd")
MESSAGE = b"From: alice@example.com\r\nTo: bob@far.example\r\nSubject: tls\r\n\r\nHello.\r\n"

_noSwaks = not os.path.exists(SWAKS) and not os.environ.get("MAILFRAME_REQUIRE_INTEROP")


def startSecureServer(
    case: TestCase,
    ca: TestCA,
    *,
    implicit: bool = False,
    allowPlaintext: bool = False,
    requireAuthentication: bool = True,
    checkers: list[Any] | None = None,
    limiter: AuthFailureLimiter | None = None,
    failureDelay: float = 0.0,
) -> RunningServer:
    """
    A submission server with STARTTLS, or implicit TLS, on 127.0.0.1:0; by
    default its one user is alice/secret.
    """
    issued = ca.issue("server", "mx.test", "localhost", HOST)
    tls = ServerTLS([CertificatePair(issued.fullchain, issued.privkey)])
    if checkers is None:
        checkers = [_memory(alice="secret")]
    if limiter is None:
        limiter = AuthFailureLimiter(reactor, maxFailures=100)  # type: ignore[arg-type]
    extensions = [*defaultExtensions(1 << 20)]
    if not implicit:
        extensions.append(StartTLS(tls))
    auth = Auth(
        makePortal(checkers),
        reactor,  # type: ignore[arg-type]
        allowPlaintext=allowPlaintext,
        limiter=limiter,
        failureDelay=failureDelay,
    )
    extensions.append(auth)
    backend = MemoryBackend()
    config = ServerConfig(
        hostname="mx.test",
        localDomains=frozenset({"example.com"}),  # type: ignore[arg-type]
        listener="submissions" if implicit else "submission",
        requireAuthentication=requireAuthentication,
    )
    factory = SMTPServerFactory(
        config, backend, [AcceptLocal()], connectionFilters=[limiter],
        extensions=extensions, clock=reactor,  # type: ignore[arg-type]
    )  # fmt: skip
    listening: Any = implicitTLS(tls, factory) if implicit else factory
    port = reactor.listenTCP(0, listening, interface=HOST)  # type: ignore[attr-defined]
    server = RunningServer(factory, backend, port)
    case.addCleanup(_shutdown, server)
    return server


def _memory(**users: str) -> Any:
    from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse

    checker = InMemoryUsernamePasswordDatabaseDontUse()
    for name, password in users.items():
        checker.addUser(name, password)  # type: ignore[arg-type]
    return checker


class SMTPLibTLSTests(TestCase):
    """smtplib with STARTTLS and AUTH."""

    timeout = 60

    def setUp(self) -> None:
        self.ca = TestCA(self.mktemp())

    def verifying(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca.rootFile)

    @defer.inlineCallbacks
    def test_starttlsLogin(self) -> Generator[Any, Any, None]:
        """starttls() with a verified certificate, login(), send: ESMTPSA with the TLS version."""
        server = startSecureServer(self, self.ca)

        def client() -> tuple[Any, ...]:
            with smtplib.SMTP(HOST, server.portNumber, "client.test", CLIENT_TIMEOUT) as c:
                c.ehlo()
                before = c.has_extn("auth")
                c.starttls(context=self.verifying())  # checks the certificate names 127.0.0.1
                c.ehlo()
                code, _ = c.login("alice", "secret")
                refused = c.sendmail("alice@example.com", ["bob@far.example"], MESSAGE)
                return before, c.has_extn("starttls"), code, refused, c.sock.version()

        before, starttls, code, refused, version = yield inThread(client)
        self.assertFalse(before)
        self.assertFalse(starttls)
        self.assertEqual((code, refused), (235, {}))
        received, body = splitReceived(server.messages[0].data)
        self.assertEqual(body, MESSAGE)
        self.assertIn(b"with ESMTPSA id", received)
        self.assertIn(version.encode(), received)
        self.assertEqual(server.recipients(), ["bob@far.example"])

    @defer.inlineCallbacks
    def test_eachMechanism(self) -> Generator[Any, Any, None]:
        """auth_plain, auth_login and auth_cram_md5 each authenticate; a wrong password is 535."""
        server = startSecureServer(self, self.ca)

        def attempt(method: str, password: str) -> tuple[int, bytes]:
            with smtplib.SMTP(HOST, server.portNumber, "client.test", CLIENT_TIMEOUT) as c:
                c.starttls(context=self.verifying())
                c.ehlo()
                c.user, c.password = "alice", password
                try:
                    return c.auth(method, getattr(c, "auth_" + method.lower().replace("-", "_")))
                except smtplib.SMTPAuthenticationError as e:
                    return e.smtp_code, e.smtp_error

        for method in ("PLAIN", "LOGIN", "CRAM-MD5"):
            code, _ = yield inThread(attempt, method, "secret")
            self.assertEqual(code, 235, method)
            code, text = yield inThread(attempt, method, "wrong")
            self.assertEqual((code, text), (535, b"5.7.8 Authentication credentials invalid"))

    @defer.inlineCallbacks
    def test_argon2BesidePlaintext(self) -> Generator[Any, Any, None]:
        """
        --auth mailframe:FILE (argon2) beside a plaintext checker: no CRAM-MD5
        offered, so login() of an argon2 user succeeds with its first
        mechanism, eleven times in a row, with no failure counted or delayed.
        """
        from mailframe.auth import passwords
        from tests.test_passwords import fastHashing

        fastHashing(self)
        path = self.mktemp()
        entry = passwords.makeEntry("alice", "argon-secret", 4096)
        Path(path).write_text(passwords.formatEntry(entry) + "\n")
        limiter = AuthFailureLimiter(reactor)  # type: ignore[arg-type]  # 10 failures block
        server = startSecureServer(
            self, self.ca, checkers=[passwords.PasswordFileChecker(path), _memory(bob="plain")],
            limiter=limiter, failureDelay=1.0,
        )  # fmt: skip

        def client(user: str, password: str) -> tuple[Any, ...]:
            with smtplib.SMTP(HOST, server.portNumber, "client.test", CLIENT_TIMEOUT) as c:
                c.starttls(context=self.verifying())
                c.ehlo()
                tried: list[str] = []
                auth = c.auth

                def recording(mechanism: str, authobject: Any, **kw: Any) -> Any:
                    tried.append(mechanism)
                    return auth(mechanism, authobject, **kw)

                c.auth = recording  # type: ignore[method-assign]
                started = time.monotonic()
                code, _ = c.login(user, password)
                return c.esmtp_features["auth"], tried, code, time.monotonic() - started

        for _ in range(11):
            advertised, tried, code, seconds = yield inThread(client, "alice", "argon-secret")
            self.assertEqual(advertised.split(), ["SCRAM-SHA-256", "PLAIN", "LOGIN"])
            self.assertEqual((tried, code), (["PLAIN"], 235))
            self.assertLess(seconds, 1.0)
        _advertised, tried, code, _seconds = yield inThread(client, "bob", "plain")
        self.assertEqual((tried, code), (["PLAIN"], 235))
        self.assertEqual(limiter.failures(HOST), 0)
        self.assertFalse(limiter.isBlocked(HOST))

    @defer.inlineCallbacks
    def test_implicitTLS(self) -> Generator[Any, Any, None]:
        """SMTP_SSL (port 465 style) verifies the chain, logs in and sends."""
        server = startSecureServer(self, self.ca, implicit=True)

        def client() -> tuple[Any, ...]:
            context = self.verifying()
            with smtplib.SMTP_SSL(HOST, server.portNumber, "client.test",
                                  timeout=CLIENT_TIMEOUT, context=context) as c:  # fmt: skip
                c.ehlo()
                features = (c.has_extn("starttls"), c.has_extn("auth"))
                c.login("alice", "secret")
                c.sendmail("alice@example.com", ["bob@far.example"], MESSAGE)
                return features

        features = yield inThread(client)
        self.assertEqual(features, (False, True))
        self.assertIn(b"with ESMTPSA id", server.messages[0].data)

    @defer.inlineCallbacks
    def test_withoutTLS(self) -> Generator[Any, Any, None]:
        """Without STARTTLS there is no AUTH to use, and MAIL is 530 5.7.0."""
        server = startSecureServer(self, self.ca)

        def client() -> tuple[Any, ...]:
            with smtplib.SMTP(HOST, server.portNumber, "client.test", CLIENT_TIMEOUT) as c:
                c.ehlo()
                try:
                    c.login("alice", "secret")
                    login = "logged in"
                except smtplib.SMTPNotSupportedError:
                    login = "not supported"
                return login, c.mail("alice@example.com")

        login, mail = yield inThread(client)
        self.assertEqual(login, "not supported")
        self.assertEqual(mail, (530, b"5.7.0 Authentication required"))


class InjectionTests(TestCase):
    """Commands sent with STARTTLS in one write are never run (CVE-2011-0411 class)."""

    timeout = 60

    @defer.inlineCallbacks
    def test_pipelinedAfterStartTLS(self) -> Generator[Any, Any, None]:
        """STARTTLS\\r\\nRSET\\r\\n in one write: no reply after the handshake; RCPT then is 503."""
        ca = TestCA(self.mktemp())
        server = startSecureServer(self, ca, requireAuthentication=False)

        def client() -> tuple[Any, ...]:
            with RawClient(server) as raw:
                raw.greetAndEhlo()
                raw.send(b"MAIL FROM:<a@example.com>\r\n")
                assert raw.replies(1)[0][0] == 250
                raw.send(b"STARTTLS\r\nRSET\r\nRCPT TO:<user@example.com>\r\n")
                ready = raw.replies(1)[0]
                assert not raw.buffer, raw.buffer  # nothing but the 220 in clear
                context = ssl.create_default_context(cafile=ca.rootFile)
                tls = context.wrap_socket(raw.sock, server_hostname="mx.test")
                tls.settimeout(0.5)
                try:
                    early = tls.recv(1000)
                except TimeoutError:
                    early = b""
                tls.settimeout(CLIENT_TIMEOUT)
                raw.sock = tls  # type: ignore[assignment]
                rcpt = raw.command(b"RCPT TO:<user@example.com>")
                mail = raw.command(b"MAIL FROM:<a@example.com>")
                raw.send(b"EHLO client.test\r\n")
                code, lines = raw.reply()
                return ready, early, rcpt, mail, code, lines

        ready, early, rcpt, mail, code, lines = yield inThread(client)
        self.assertEqual(ready, (220, "2.0.0 Ready to start TLS"))
        self.assertEqual(early, b"")
        self.assertEqual(rcpt[0], 503)
        self.assertEqual(mail[0], 503)  # HELO/EHLO was forgotten too
        self.assertEqual(code, 250)
        self.assertNotIn("STARTTLS", lines)
        self.assertIn("AUTH SCRAM-SHA-256 CRAM-MD5 PLAIN LOGIN", lines)
        self.assertEqual(server.messages, [])


class HandshakeFailureTests(TestCase):
    """A client that does not speak TLS to an implicit-TLS port is logged in one line."""

    timeout = 60

    @defer.inlineCallbacks
    def test_plaintextToImplicit(self) -> Generator[Any, Any, None]:
        """EHLO in clear on port 465 style: the connection ends, one readable log line."""
        from twisted.logger import formatEvent, globalLogPublisher

        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        server = startSecureServer(self, TestCA(self.mktemp()), implicit=True)

        def client() -> bytes:
            with socket.create_connection((HOST, server.portNumber), CLIENT_TIMEOUT) as s:
                s.sendall(b"EHLO client.test\r\n")
                data = b""
                while chunk := s.recv(1000):
                    data += chunk
                return data

        received = yield inThread(client)
        self.assertNotIn(b"220", received)
        deadline = time.monotonic() + 10
        while server.factory.sessions and time.monotonic() < deadline:
            yield deferLater(0.05)
        lines = [formatEvent(e) for e in events if "TLS handshake" in formatEvent(e)]
        self.assertEqual(len(lines), 1, lines)
        self.assertIn(f"with [{HOST}]:", lines[0])
        self.assertNotIn("\n", lines[0])


def deferLater(seconds: float) -> defer.Deferred[None]:
    from twisted.internet import task

    return task.deferLater(reactor, seconds, lambda: None)  # type: ignore[arg-type]


class SwaksTLSTests(TestCase):
    """swaks with --tls, --tlsc and --auth."""

    timeout = 90
    if _noSwaks:
        skip = "swaks is not installed (Debian package swaks)"

    def setUp(self) -> None:
        self.ca = TestCA(self.mktemp())

    def swaks(self, server: RunningServer, *args: str) -> defer.Deferred[tuple[str, int]]:
        home = self.mktemp()
        os.makedirs(home)
        d = runSwaks(server.address, home, *args)
        return d.addCallback(lambda r: ((r[0] + r[1]).decode("utf-8", "replace"), r[2]))

    @defer.inlineCallbacks
    def test_mechanisms(self) -> Generator[Any, Any, None]:
        """swaks --tls --auth PLAIN, LOGIN and CRAM-MD5 each submit a message."""
        server = startSecureServer(self, self.ca)
        for mechanism in ("PLAIN", "LOGIN", "CRAM-MD5"):
            transcript, code = yield self.swaks(
                server, "--tls", "--auth", mechanism, "--auth-user", "alice",
                "--auth-password", "secret",
            )  # fmt: skip
            self.assertEqual(code, 0, transcript)
            self.assertIn("<~  235 2.7.0 Authentication successful", transcript)
        self.assertEqual(len(server.messages), 3)
        self.assertTrue(all(b"with ESMTPSA id" in m.data for m in server.messages))

    @defer.inlineCallbacks
    def test_implicit(self) -> Generator[Any, Any, None]:
        """swaks --tlsc (TLS from the first byte) --auth PLAIN submits a message."""
        server = startSecureServer(self, self.ca, implicit=True)
        transcript, code = yield self.swaks(
            server,
            "--tlsc",
            "--auth",
            "PLAIN",
            "--auth-user",
            "alice",
            "--auth-password",
            "secret",
        )
        self.assertEqual(code, 0, transcript)
        self.assertNotIn("STARTTLS", transcript)
        self.assertEqual(len(server.messages), 1)

    @defer.inlineCallbacks
    def test_refusals(self) -> Generator[Any, Any, None]:
        """A wrong password is 535 5.7.8; no TLS means no AUTH and MAIL gets 530 5.7.0."""
        server = startSecureServer(self, self.ca)
        transcript, code = yield self.swaks(
            server, "--tls", "--auth", "PLAIN", "--auth-user", "alice", "--auth-password", "nope"
        )
        self.assertNotEqual(code, 0)
        self.assertIn("<~* 535 5.7.8 Authentication credentials invalid", transcript)
        transcript, code = yield self.swaks(
            server, "--auth-optional", "--auth", "PLAIN", "--auth-user", "alice",
            "--auth-password", "secret",
        )  # fmt: skip
        self.assertNotEqual(code, 0)
        self.assertIn("Host did not advertise authentication", transcript)
        self.assertIn("<** 530 5.7.0 Authentication required", transcript)
        self.assertEqual(server.messages, [])


def runSwaks(address: str, home: str, *args: str) -> defer.Deferred[tuple[bytes, bytes, int]]:
    """swaks to bob@far.example from alice@example.com, killed after PROCESS_TIMEOUT s."""
    env = {"PATH": "/usr/bin:/bin", "HOME": home, "LANG": "C", "LC_ALL": "C"}
    argv = ["-s", "KILL", str(PROCESS_TIMEOUT), SWAKS, "--server", address,
            "--timeout", str(int(CLIENT_TIMEOUT)), "--helo", "client.test",
            "--from", "alice@example.com", "--to", "bob@far.example", *args]  # fmt: skip
    return getProcessOutputAndValue(_TIMEOUT_COMMAND, argv, env=env, reactor=reactor)  # type: ignore[no-any-return]


def swaksSync(port: int, *args: str) -> tuple[str, int]:
    """swaks against 127.0.0.1:port, blocking and bounded; (transcript, exit code)."""
    argv = [SWAKS, "--server", f"{HOST}:{port}", "--timeout", str(int(CLIENT_TIMEOUT)),
            "--helo", "client.test", "--from", "alice@localhost", "--to", "bob@far.example",
            *args]  # fmt: skip
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=PROCESS_TIMEOUT,
        env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "LANG": "C", "LC_ALL": "C"},
    )  # fmt: skip
    return result.stdout + result.stderr, result.returncode


def freePort() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class DoneWhenTests(SynchronousTestCase):
    """The issue's acceptance command, run as a subprocess."""

    if _noSwaks:
        skip = "swaks is not installed (Debian package swaks)"

    def test_submission(self) -> None:
        """twistd -n mailframe --tls-cert --tls-key --auth memory:alice:secret --submission."""
        if not TWISTD.exists():
            raise SkipTest(f"no twistd next to {sys.executable}")
        cwd = os.path.abspath(self.mktemp())
        os.makedirs(cwd)
        from tests._certs import writeKeyAndCert

        cert, key = writeKeyAndCert(cwd, "localhost")
        port = freePort()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *sys.path])}
        logPath = Path(cwd, "twistd.log")
        with open(logPath, "wb") as out:
            process = subprocess.Popen(
                [str(TWISTD), "-n", "--pidfile=", "--logfile=-", "mailframe",
                 "--tls-cert", cert, "--tls-key", key, "--auth", "memory:alice:secret",
                 "--submission", f"tcp:{port}:interface=127.0.0.1"],
                cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        self.addCleanup(process.wait, 30)
        self.addCleanup(process.kill)
        waitForTwistd(process, logPath)

        transcript, code = swaksSync(
            port, "--tls", "--auth", "PLAIN", "--auth-user", "alice", "--auth-password", "secret"
        )
        self.assertEqual(code, 0, transcript)
        self.assertIn("<~  235 2.7.0 Authentication successful", transcript)
        self.assertIn("<~  250 2.0.0 OK queued as", transcript)
        [delivered] = os.listdir(os.path.join(cwd, "Maildir", "new"))  # the default backend
        data = Path(cwd, "Maildir", "new", delivered).read_bytes()
        self.assertIn(b"with ESMTPSA id", data)

        transcript, code = swaksSync(
            port, "--auth", "PLAIN", "--auth-user", "alice", "--auth-password", "secret",
            "--auth-optional",
        )  # fmt: skip
        self.assertNotEqual(code, 0)
        self.assertIn("*** Host did not advertise authentication", transcript)
        self.assertIn("<** 530 5.7.0 Authentication required", transcript)

        transcript, code = swaksSync(port, "--tls")
        self.assertNotEqual(code, 0)
        self.assertIn("<~* 530 5.7.0 Authentication required", transcript)

        process.terminate()
        process.wait(30)
        log = logPath.read_text("utf-8", "replace")
        self.assertIn("auth ok user=alice mechanism=PLAIN ", log)
        self.assertIn("; STARTTLS; AUTH SCRAM-SHA-256 CRAM-MD5 PLAIN LOGIN; MAIL needs AUTH", log)
        self.assertNotIn("secret", log.replace("memory:alice:secret", ""))


def tlsGreeting(port: int, cafile: str) -> tuple[str, bytes]:
    """Connect with TLS from the first byte and read the greeting."""
    context = ssl.create_default_context(cafile=cafile)
    raw = socket.create_connection((HOST, port), timeout=CLIENT_TIMEOUT)
    with raw, context.wrap_socket(raw, server_hostname="mx.test") as s:
        data = b""
        while not data.endswith(b"\r\n"):
            chunk = s.recv(1000)
            if not chunk:
                break
            data += chunk
        return s.version() or "", data


class TapImplicitTests(TestCase):
    """twistd mailframe's implicit-TLS listeners serve SMTP inside TLS from the first byte."""

    timeout = 60

    @defer.inlineCallbacks
    def test_sslEndpointAndSubmissions(self) -> Generator[Any, Any, None]:
        """An ssl: endpoint and a --submissions tcp: endpoint both greet inside TLS."""
        from mailframe.app import tap

        ca = TestCA(self.mktemp())
        issued = ca.issue("mx", "mx.test")
        options = tap.Options()
        options.parseOptions([
            "--deliver", "memory", "--hostname", "mx.test",
            "--listen", f"ssl:0:interface={HOST}:privateKey={issued.privkey}"
                        f":certKey={issued.certOnly}:extraCertChain={issued.chain}",
            "--tls-cert", issued.fullchain, "--tls-key", issued.privkey,
            "--auth", "memory:alice:secret", "--submissions", f"tcp:0:interface={HOST}",
        ])  # fmt: skip
        service = tap.makeService(options)
        service.startService()
        self.addCleanup(service.stopService)
        for child in service:
            port = child._waitingForPort.result  # type: ignore[attr-defined]  # listening now
            version, greeting = yield inThread(tlsGreeting, port.getHost().port, ca.rootFile)
            self.assertIn(version, ("TLSv1.2", "TLSv1.3"))
            self.assertEqual(greeting, b"220 mx.test ESMTP mailframe\r\n")
