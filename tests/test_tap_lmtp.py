"""
Tests for LMTP in C{twistd mailframe}: the C{lmtp} setting (a listener that
speaks LMTP; never port 25), a C{[[listener]]} named lmtp, and makeService
building an LMTP server that answers each recipient over a unix socket.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.endpoints import UNIXClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.python import usage
from twisted.trial import unittest

from mailframe.app import tap
from tests.test_tap import parse


class OptionsTests(unittest.TestCase):
    def test_lmtpOnly(self) -> None:
        """--lmtp ENDPOINT without --listen: only the LMTP listener, named lmtp, no greet delay."""
        [spec] = parse("--lmtp", "unix:/run/mailframe/lmtp").listeners
        self.assertEqual(spec.endpoints, ("unix:/run/mailframe/lmtp",))
        self.assertEqual(spec.config.listener, "lmtp")
        self.assertTrue(spec.config.lmtp)
        self.assertEqual(spec.config.greetDelay, 0.0)

    def test_withListen(self) -> None:
        """--listen and --lmtp (repeatable): an SMTP listener and an LMTP one."""
        smtp, lmtp = parse("--listen", "tcp:2525", "--lmtp", "tcp:2424:interface=127.0.0.1",
                           "--lmtp", "unix:/tmp/lmtp", "--deliver", "memory").listeners  # fmt: skip
        self.assertFalse(smtp.config.lmtp)
        self.assertEqual(smtp.config.greetDelay, 1.0)
        self.assertTrue(lmtp.config.lmtp)
        self.assertEqual(lmtp.endpoints, ("tcp:2424:interface=127.0.0.1", "unix:/tmp/lmtp"))
        self.assertEqual(lmtp.deliver, "memory")
        self.assertEqual(lmtp.validate, smtp.validate)

    def test_port25(self) -> None:
        """LMTP on port 25 is a one-line usage error (RFC 2033 5)."""
        for endpoint in ("tcp:25", "tcp6:port=25:interface=\\:\\:1", "haproxy:tcp:25"):
            e = self.assertRaises(usage.UsageError, parse, "--lmtp", endpoint)
            self.assertIn("may not use port 25", str(e))
            self.assertNotIn("\n", str(e))

    def test_badEndpoint(self) -> None:
        """A bad endpoint is a usage error naming the setting."""
        e = self.assertRaises(usage.UsageError, parse, "--lmtp", "nonsense:1")
        self.assertIn("lmtp", str(e))

    def test_listenerTable(self) -> None:
        """A [[listener]] named lmtp speaks LMTP; the file's top-level lmtp key adds one too."""
        path = self.mktemp()
        Path(path).write_text('lmtp = ["unix:/tmp/a"]\n'
                              '[[listener]]\nname = "lmtp"\nlisten = "unix:/tmp/b"\n')  # fmt: skip
        first, second = parse("--config", path).listeners
        self.assertEqual((first.endpoints, second.endpoints), (("unix:/tmp/a",), ("unix:/tmp/b",)))
        self.assertTrue(first.config.lmtp and second.config.lmtp)

    def test_help(self) -> None:
        """--help lists --lmtp."""
        self.assertIn("--lmtp=", tap.Options().getUsage(width=100))


class LMTPClient(Protocol):
    """
    Sends a scripted LMTP session step by step, as a client must (RFC 2920:
    LHLO and DATA end a group): each step once so many replies have come.
    """

    def __init__(self, steps: list[tuple[int, bytes]], done: defer.Deferred[bytes]) -> None:
        self.steps, self.done, self.received = list(steps), done, b""

    def replies(self) -> int:
        return sum(1 for line in self.received.split(b"\r\n") if line[3:4] == b" ")

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        while self.steps and self.replies() >= self.steps[0][0]:
            self.transport.write(self.steps.pop(0)[1])  # type: ignore[union-attr]
        if self.received.endswith(b"221 2.0.0 mx.test closing connection\r\n"):
            self.transport.loseConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Any = None) -> None:
        self.done.callback(self.received)


class MakeServiceTests(unittest.TestCase):
    timeout = 20

    @defer.inlineCallbacks
    def test_servesLMTP(self) -> Any:
        """makeService with --lmtp unix:PATH: an LMTP session, one reply per recipient."""
        path = os.path.abspath(self.mktemp())
        service = tap.makeService(
            parse("--lmtp", f"unix:{path}", "--deliver", "memory", "--hostname", "mx.test",
                  "--domain", "example.com", "--validate", "addresses:" + self.users())
        )  # fmt: skip
        self.assertTrue(
            service.announcements[0].startswith("mailframe: LMTP (RFC 2033) on unix:/")
        )
        service.startService()
        self.addCleanup(service.stopService)
        done: defer.Deferred[bytes] = defer.Deferred()
        steps = [
            (1, b"LHLO client.test\r\n"),
            (2, b"MAIL FROM:<a@b.example>\r\nRCPT TO:<ann@example.com>\r\n"
                b"RCPT TO:<nobody@example.com>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n"),
            (7, b"Subject: hi\r\n\r\nHello\r\n.\r\n"),
            (9, b"QUIT\r\n"),
        ]  # fmt: skip
        yield connectProtocol(UNIXClientEndpoint(reactor, path), LMTPClient(steps, done))
        received = yield done
        codes = [line[:9] for line in received.split(b"\r\n") if line[3:4] == b" "]
        self.assertEqual(codes, [b"220 mx.te", b"250 BINAR", b"250 2.1.0", b"250 2.1.5",
                                 b"550 5.1.1", b"250 2.1.5", b"354 End d", b"250 2.0.0",
                                 b"250 2.0.0", b"221 2.0.0"])  # fmt: skip
        [factory] = service.factories
        [stored] = factory.backend.messages  # type: ignore[attr-defined]
        self.assertEqual([str(r.address) for r in stored.envelope.recipients],
                         ["ann@example.com", "bob@example.com"])  # fmt: skip

    def users(self) -> str:
        path = self.mktemp()
        Path(path).write_text("ann@example.com\nbob@example.com\n")
        return path
