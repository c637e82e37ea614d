"""
Relay control and connection limits seen from real sockets on 127.0.0.1.

The sixteen MAIL FROM / RCPT TO combinations of nmap's smtp-open-relay
script (written down here from what that script sends: a null or forged
sender, then the relay target written plainly, with C{%} hacks, quoted,
with a double C{@}, as a source route, as a bang path, at our name or our
address literal) must all be refused by a server in the default
configuration: the library's (L{ServerConfig} defaults) and C{twistd
mailframe}'s own, in a real twistd process.  Early talkers are refused
too.  The connection limits are exercised with many loopback connections,
bounded in count and time.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import SkipTest, TestCase

from mailframe.backends.memory import MemoryBackend
from mailframe.config import ServerConfig
from mailframe.policy.limits import ConnectionLimits
from mailframe.server import SMTPServerFactory
from tests.interop._mailpeers import announced
from tests.interop._support import CLIENT_TIMEOUT, HOST, RawClient, inThread, startServer

REPO = Path(__file__).resolve().parents[2]
TWISTD = Path(sys.executable).with_name("twistd")

RELAY = "nmap.scanme.org"  # the script's default domain
FROM, TO = "antispam", "relaytest"


def openRelayForms(server: str, ip: str) -> list[tuple[str, str]]:
    """
    The sixteen (MAIL FROM, RCPT TO) paths of nmap's smtp-open-relay
    script, C{server} being the name in our greeting and C{ip} our address.
    """
    spoofed = f"{FROM}@[{ip}]"
    return [
        ("", f"{TO}@{RELAY}"),
        (f"{FROM}@{RELAY}", f"{TO}@{RELAY}"),
        (f"{FROM}@{server}", f"{TO}@{RELAY}"),
        (spoofed, f"{TO}@{RELAY}"),
        (spoofed, f"{TO}%{RELAY}@[{ip}]"),
        (spoofed, f"{TO}%{RELAY}@{server}"),
        (spoofed, f'"{TO}@{RELAY}"'),
        (spoofed, f'"{TO}%{RELAY}"'),
        (spoofed, f"{TO}@{RELAY}@[{ip}]"),
        (spoofed, f'"{TO}@{RELAY}"@[{ip}]'),
        (spoofed, f"{TO}@{RELAY}@{server}"),
        (spoofed, f"@[{ip}]:{TO}@{RELAY}"),
        (spoofed, f"@{server}:{TO}@{RELAY}"),
        (spoofed, f"{RELAY}!{TO}"),
        (spoofed, f"{RELAY}!{TO}@[{ip}]"),
        (spoofed, f"{RELAY}!{TO}@{server}"),
    ]


def tryRelaying(port: int) -> list[tuple[str, str, int, int]]:
    """
    Run the sixteen tests the way the script does (EHLO once; then RSET,
    MAIL, and RCPT if MAIL was accepted): (from, to, MAIL code, RCPT code).
    """
    sock = socket.create_connection((HOST, port), timeout=CLIENT_TIMEOUT)
    client = RawClient.__new__(RawClient)
    client.sock, client.buffer, client.recvSizes = sock, b"", []
    results = []
    try:
        code, lines = client.reply()
        assert code == 220, (code, lines)
        server = re.match(r"[\w][\w.-]*", lines[0])
        assert server is not None
        assert client.command(f"EHLO {RELAY}".encode())[0] == 250
        for sender, recipient in openRelayForms(server.group(0), HOST):
            assert client.command(b"RSET")[0] == 250
            mailCode, _ = client.command(f"MAIL FROM:<{sender}>".encode())
            rcptCode = 0
            if mailCode == 250:
                rcptCode, _ = client.command(f"RCPT TO:<{recipient}>".encode())
            results.append((sender, recipient, mailCode, rcptCode))
        client.command(b"QUIT")
    finally:
        sock.close()
    return results


class OpenRelayTests(TestCase):
    """nmap's sixteen relay attempts, from a socket."""

    timeout = 120

    def assertAllRefused(self, results: list[tuple[str, str, int, int]]) -> None:
        self.assertEqual(len(results), 16)
        relayed = [r for r in results if r[2] == 250 and 200 <= r[3] < 300]
        self.assertEqual(relayed, [], "relayed!")
        for sender, recipient, _mailCode, rcptCode in results:
            if rcptCode:
                self.assertIn(rcptCode, (501, 550, 553), (sender, recipient))

    @defer.inlineCallbacks
    def test_libraryDefaults(self) -> Generator[Any, Any, None]:
        """A server with ServerConfig's defaults (every local address accepted) refuses all 16."""
        server = startServer(self, localDomains=())
        results = yield inThread(tryRelaying, server.portNumber)
        self.assertAllRefused(results)

    @defer.inlineCallbacks
    def test_twistdDefaults(self) -> Generator[Any, Any, None]:
        """A real `twistd -n mailframe` with its defaults refuses all 16, and early talkers."""
        port = yield inThread(self.startTwistd)
        results = yield inThread(tryRelaying, port)
        self.assertAllRefused(results)
        replies = yield inThread(earlyTalker, port)
        self.assertEqual([code for code, _ in replies], [220, 554])
        self.assertIn("Protocol error", replies[1][1])

    @defer.inlineCallbacks
    def test_twistdPregreet(self) -> Generator[Any, Any, None]:
        """Default twistd: a first contact that says EHLO before its greeting gets 554 5.5.0."""
        port = yield inThread(self.startTwistd)
        replies = yield inThread(pregreetTalker, port)
        self.assertEqual(replies[0][0], 554)
        self.assertIn("talked before the greeting", replies[0][1])

    def startTwistd(self) -> int:
        """twistd -n mailframe on a free port with only --listen and --deliver memory."""
        if not TWISTD.exists():
            raise SkipTest(f"no twistd next to {sys.executable}")
        cwd = os.path.abspath(self.mktemp())
        os.mkdir(cwd)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *sys.path])}
        log = Path(cwd, "twistd.log")  # a file: a pipe nobody reads once it listens may fill
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [str(TWISTD), "-n", "--pidfile=", "--logfile=-", "mailframe",
                 "--listen", "tcp:0:interface=127.0.0.1", "--deliver", "memory"],
                cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        self.addCleanup(process.wait, 30)
        self.addCleanup(process.kill)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            output = log.read_text(errors="replace")
            found = re.search(r"starting on (\d+)", output)
            if found and announced(output):
                return int(found.group(1))
            if process.poll() is not None:
                break
            time.sleep(0.05)  # a worker thread (inThread), never the reactor's
        raise AssertionError(f"twistd did not start: {log.read_text(errors='replace')}")


def earlyTalker(port: int) -> list[tuple[int, str]]:
    """Send EHLO and MAIL at once without waiting for any reply."""
    with socket.create_connection((HOST, port), timeout=CLIENT_TIMEOUT) as sock:
        sock.sendall(b"EHLO impatient.example\r\nMAIL FROM:<spam@example.org>\r\n")
        client = RawClient.__new__(RawClient)
        client.sock, client.buffer, client.recvSizes = sock, b"", []
        replies = client.replies(2)
        assert client.atEOF()
        return replies


class LimitsTests(TestCase):
    """ConnectionLimits with many loopback connections (at most 40, bounded waits)."""

    timeout = 120

    def serve(self, limits: ConnectionLimits) -> int:
        config = ServerConfig(hostname="mx.test", localDomains=frozenset({"example.com"}))
        factory = SMTPServerFactory(
            config,
            MemoryBackend(),
            [],
            connectionFilters=[limits],
            clock=reactor,  # type: ignore[arg-type]
        )
        port = reactor.listenTCP(0, factory, interface=HOST)  # type: ignore[attr-defined]
        self.factory = factory
        self.addCleanup(self.shutdown, port)
        return port.getHost().port  # type: ignore[no-any-return]

    @defer.inlineCallbacks
    def shutdown(self, port: Any) -> Generator[Any, Any, None]:
        yield port.stopListening()
        deadline = time.monotonic() + 5
        while self.factory.sessions and time.monotonic() < deadline:
            yield task.deferLater(reactor, 0.01, lambda: None)  # type: ignore[arg-type]
        for s in list(self.factory.sessions):
            s.transport.abortConnection()  # type: ignore[union-attr]

    @defer.inlineCallbacks
    def waitForSessions(self, count: int) -> Generator[Any, Any, None]:
        deadline = time.monotonic() + 10
        while len(self.factory.sessions) != count and time.monotonic() < deadline:
            yield task.deferLater(reactor, 0.01, lambda: None)  # type: ignore[arg-type]
        self.assertEqual(len(self.factory.sessions), count)

    @defer.inlineCallbacks
    def test_perClient(self) -> Generator[Any, Any, None]:
        """Of 30 concurrent connections from 127.0.0.1, 5 are served, 25 get 421; then room again."""
        limits = ConnectionLimits(reactor, total=100, perClient=5)  # type: ignore[arg-type]
        port = self.serve(limits)
        sockets: list[socket.socket] = []
        self.addCleanup(lambda: [s.close() for s in sockets])

        def connectAll(n: int) -> list[bytes]:
            greetings = []
            for _ in range(n):
                s = socket.create_connection((HOST, port), timeout=CLIENT_TIMEOUT)
                sockets.append(s)
                greetings.append(s.recv(512))
            return greetings

        greetings = yield inThread(connectAll, 30)
        served = [g for g in greetings if g.startswith(b"220 ")]
        refused = [g for g in greetings if g.startswith(b"421 ")]
        self.assertEqual((len(served), len(refused)), (5, 25))
        self.assertIn(b"Too many connections from your address", refused[0])
        self.assertEqual(limits.connections, 5)
        for s in sockets:
            s.close()
        del sockets[:]
        yield self.waitForSessions(0)
        self.assertEqual(limits.connections, 0)
        [again] = yield inThread(connectAll, 1)
        self.assertTrue(again.startswith(b"220 "), again)

    @defer.inlineCallbacks
    def test_connectionRate(self) -> Generator[Any, Any, None]:
        """The eleventh connection in a minute, one after another, gets 421."""
        limits = ConnectionLimits(reactor, perClient=0, connectionRate=10)  # type: ignore[arg-type]
        port = self.serve(limits)

        def oneByOne(n: int) -> list[bytes]:
            greetings = []
            for _ in range(n):
                with socket.create_connection((HOST, port), timeout=CLIENT_TIMEOUT) as s:
                    greetings.append(s.recv(512))
                    s.sendall(b"QUIT\r\n")
                    s.recv(512)
            return greetings

        greetings = yield inThread(oneByOne, 12)
        self.assertEqual([g[:3] for g in greetings], [b"220"] * 10 + [b"421"] * 2)
        self.assertIn(b"per minute", greetings[-1])


def pregreetTalker(port: int) -> list[tuple[int, str]]:
    """Connect and say EHLO at once, as bots do, without waiting for the greeting."""
    with socket.create_connection((HOST, port), timeout=CLIENT_TIMEOUT) as sock:
        sock.sendall(b"EHLO bot.example\r\n")
        client = RawClient.__new__(RawClient)
        client.sock, client.buffer, client.recvSizes = sock, b"", []
        replies = client.replies(1)
        assert client.atEOF()
        return replies
