"""
How server sessions end, in memory on a fake clock: after 221 or 421 the
session stops being its transport's producer (Twisted's TLS layer sends its
close_notify only then) and reads nothing more; a peer that neither reads
its last reply nor closes is cut off after C{closeTimeout}; a TLS handshake
has its own time limit; the error limit ends a session with one reply.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import ISSLTransport
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import alsoProvides

from mailframe.backends.memory import MemoryBackend
from mailframe.config import ServerConfig
from mailframe.extensions import defaultExtensions
from mailframe.extensions.starttls import StartTLS
from mailframe.server import SMTPServerFactory, SMTPServerProtocol
from tests._transports import TLSTransport
from tests.test_server import Listed, codes


class _Context:
    def getContext(self) -> None:
        return None


class LifetimeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = MemoryReactorClock()

    def connect(self, implicit: bool = False, **settings: Any) -> tuple[SMTPServerProtocol, Any]:
        config = ServerConfig(
            hostname="mx.test", localDomains=frozenset({"example.com"}), **settings
        )
        factory = SMTPServerFactory(
            config,
            MemoryBackend(),
            [Listed("user")],
            extensions=[*defaultExtensions(1 << 20), StartTLS(_Context())],
            clock=self.clock,
        )
        proto = factory.buildProtocol(None)
        transport = TLSTransport()
        if implicit:
            alsoProvides(transport, ISSLTransport)
        proto.makeConnection(transport)
        self.assertIs(transport.producer, proto)
        return proto, transport

    def test_quitUnregistersAndCloses(self) -> None:
        """After 221 the session is no longer the producer, and the connection closes."""
        proto, t = self.connect()
        proto.dataReceived(b"EHLO c\r\nQUIT\r\n")
        self.assertEqual(codes(t.value())[-1], "221 2.0.0")
        self.assertIsNone(t.producer)
        self.assertTrue(t.disconnecting)

    def test_nothingReadAfterQuit(self) -> None:
        """Bytes sent after QUIT are neither answered nor kept."""
        proto, t = self.connect()
        proto.dataReceived(b"QUIT\r\n")
        out = t.value()
        proto.dataReceived(b"NOOP\r\n" + b"x" * 100_000)
        self.assertEqual(t.value(), out)
        self.assertEqual(proto._conn.buffered, 0)

    def test_abortedIfNotClosed(self) -> None:
        """A peer that keeps the connection open after 221 is cut off after closeTimeout."""
        proto, t = self.connect(closeTimeout=0.5)
        proto.dataReceived(b"QUIT\r\n")
        self.clock.advance(0.4)
        self.assertFalse(t.disconnected)
        self.clock.advance(0.2)
        self.assertTrue(t.disconnected)  # abortConnection

    def test_closedInTimeNotAborted(self) -> None:
        """A connection that closes in time leaves no timer behind."""
        proto, _t = self.connect()
        proto.dataReceived(b"QUIT\r\n")
        proto.connectionLost(None)  # type: ignore[arg-type]
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_idleTimeoutCloses(self) -> None:
        """The idle 421 unregisters the producer too, then aborts a peer that stays."""
        _proto, t = self.connect(commandTimeout=10.0)
        self.clock.advance(10.0)
        self.assertEqual(codes(t.value())[-1], "421")
        self.assertIsNone(t.producer)
        self.clock.advance(1.0)
        self.assertTrue(t.disconnected)

    def test_nonReadingClient(self) -> None:
        """A client that stops reading is timed out, and aborted when its replies cannot drain."""
        proto, t = self.connect(commandTimeout=10.0)
        proto.pauseProducing()  # its replies fill the buffers
        proto.dataReceived(b"EHLO c\r\nNOOP\r\n")
        self.clock.advance(10.0)
        self.clock.advance(1.0)
        self.assertTrue(t.disconnected)

    def test_startTLSHandshakeTimeout(self) -> None:
        """A client that sends STARTTLS and never handshakes is aborted after handshakeTimeout."""
        proto, t = self.connect(handshakeTimeout=30.0)
        proto.dataReceived(b"EHLO c\r\nSTARTTLS\r\n")
        self.assertEqual(codes(t.value())[-1], "220 2.0.0")
        self.clock.advance(29.0)
        self.assertFalse(t.disconnected)
        self.clock.advance(1.0)
        self.assertTrue(t.disconnected)

    def test_handshakeInTime(self) -> None:
        """A completed handshake cancels its timer."""
        proto, t = self.connect(handshakeTimeout=30.0, commandTimeout=300.0)
        proto.dataReceived(b"EHLO c\r\nSTARTTLS\r\n")
        proto.handshakeCompleted()
        self.clock.advance(60.0)
        self.assertFalse(t.disconnected)

    def test_implicitTLSHandshakeTimeout(self) -> None:
        """On an implicit-TLS connection the handshake is timed from the start."""
        _proto, t = self.connect(implicit=True, handshakeTimeout=5.0)
        self.clock.advance(5.0)
        self.assertTrue(t.disconnected)

    def test_errorLimitOneReply(self) -> None:
        """The last error allowed is answered with the 421 alone."""
        proto, t = self.connect(maxErrors=2)
        proto.dataReceived(b"FOO\r\nBAR\r\n")
        self.assertEqual(codes(t.value()), ["220", "500", "421"])
        self.assertIsNone(t.producer)
