"""
mailframe's SRS addresses against postsrsd's (Debian package postsrsd, the
libsrs2 scheme Postfix sites use): with the same secret and domain, both
write the same SRS0 and SRS1 addresses, and each reverses the other's.

postsrsd runs in the foreground on two loopback ports with a secret file in
the test's temporary directory (never the system's instance); it is killed
at the end.  Without the program the tests skip, or fail when
MAILFRAME_REQUIRE_INTEROP=1.  Every wait is bounded.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from twisted.internet import defer, reactor, threads
from twisted.internet.protocol import ProcessProtocol
from twisted.trial.unittest import SkipTest, TestCase

from mailframe.address import parseMailbox
from mailframe.validators.srs import SRS
from tests.interop._mailpeers import heldBy

POSTSRSD = shutil.which("postsrsd") or "/usr/sbin/postsrsd"
REQUIRE = bool(os.environ.get("MAILFRAME_REQUIRE_INTEROP"))
SECRET = b"the secret both sides share"
DOMAIN = "mx.example.com"
TIMEOUT = 10.0


def _freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Child(ProcessProtocol):
    def __init__(self) -> None:
        self.ended: defer.Deferred[None] = defer.Deferred()
        self.output = b""

    def errReceived(self, data: bytes) -> None:
        self.output += data

    def outReceived(self, data: bytes) -> None:
        self.output += data

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(None)


def _ask(port: int, key: str) -> tuple[int, str]:
    """One Postfix tcp_table lookup: (status, value)."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as s:
        s.sendall(b"get " + quote(key, safe="@=+-./_").encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    status, _, value = data.decode().strip().partition(" ")
    return int(status), unquote(value)


class PostSRSdTests(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        if not os.access(POSTSRSD, os.X_OK):
            if REQUIRE:
                raise RuntimeError("postsrsd is not installed (MAILFRAME_REQUIRE_INTEROP is set)")
            raise SkipTest("postsrsd is not installed (Debian package postsrsd)")
        directory = Path(os.path.abspath(self.mktemp()))
        directory.mkdir()
        secret = directory / "srs.key"
        secret.write_bytes(SECRET + b"\n")
        self.forwardPort, self.reversePort = _freePort(), _freePort()
        child = _Child()
        argv = [POSTSRSD, f"-s{secret}", f"-d{DOMAIN}", "-l127.0.0.1", "-4",
                f"-f{self.forwardPort}", f"-r{self.reversePort}"]  # fmt: skip
        self.process = reactor.spawnProcess(  # type: ignore[attr-defined]
            child, POSTSRSD, argv, env={"PATH": "/usr/sbin:/usr/bin:/bin"}
        )
        self.addCleanup(self._stop, child)
        yield threads.deferToThread(self._waitForPort, self.forwardPort, child)
        self.srs = SRS((SECRET,), DOMAIN)

    def _waitForPort(self, port: int, child: _Child) -> None:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            if heldBy(self.process.pid, port):  # this postsrsd, not a server on a reused port
                return
            time.sleep(0.05)  # a worker thread, never the reactor's
        raise RuntimeError(f"postsrsd did not listen: {child.output[-500:]!r}")

    def _stop(self, child: _Child) -> defer.Deferred[None]:
        if child.ended.called:
            return child.ended
        self.process.signalProcess("KILL")
        return child.ended.addTimeout(TIMEOUT, reactor)  # type: ignore[arg-type]

    def ask(self, port: int, key: str) -> defer.Deferred[tuple[int, str]]:
        return threads.deferToThread(_ask, port, key)

    @defer.inlineCallbacks
    def test_sameSRS0(self) -> Any:
        """postsrsd and mailframe write the same SRS0 address, and reverse each other's."""
        sender = parseMailbox("Alice.Smith@Sender.example")
        before = str(self.srs.forward(sender, time.time()))
        status, theirs = yield self.ask(self.forwardPort, str(sender))
        after = str(self.srs.forward(sender, time.time()))
        self.assertEqual(status, 200)
        self.assertIn(theirs, (before, after))  # the same day, unless midnight passed
        self.assertEqual(self.srs.reverse(parseMailbox(theirs), time.time()), sender)
        status, back = yield self.ask(self.reversePort, after)
        self.assertEqual((status, back.lower()), (200, str(sender).lower()))

    @defer.inlineCallbacks
    def test_sameSRS1(self) -> Any:
        """An SRS0 sender of another forwarder becomes the same SRS1 address on both sides."""
        first = SRS((b"another forwarder's secret",), "first.example")
        srs0 = first.forward(parseMailbox("bob@origin.example"), time.time())
        assert srs0 is not None
        ours = str(self.srs.forward(srs0, time.time()))
        status, theirs = yield self.ask(self.forwardPort, str(srs0))
        self.assertEqual((status, theirs), (200, ours))
        status, back = yield self.ask(self.reversePort, ours)
        self.assertEqual((status, back), (200, str(srs0)))
        self.assertEqual(self.srs.reverse(parseMailbox(theirs), time.time()), srs0)

    @defer.inlineCallbacks
    def test_forgedRefusedByBoth(self) -> Any:
        """An address with a wrong hash is refused by both."""
        forged = "SRS0=AAAA=JW=sender.example=alice@" + DOMAIN
        status, _ = yield self.ask(self.reversePort, forged)
        self.assertNotEqual(status, 200)
        self.assertRaises(ValueError, self.srs.reverse, parseMailbox(forged), time.time())
