"""
Write-through (L{mailframe.server._writethrough}) reads private attributes of
Twisted's TCP transport.  These tests fail when a Twisted release changes
them, so that the loss of the fast path is noticed; the server falls back to
C{transport.write} in that case.
"""

from __future__ import annotations

import socket
from collections.abc import Generator
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.tcp import Server
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase

from mailframe.server import _writethrough
from tests.interop._support import inThread


class _Capture(Protocol):
    transports: list[Any] = []

    def connectionMade(self) -> None:
        _Capture.transports.append(self.transport)


class WriteThroughTests(TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def test_tcpTransportHasTheAttributes(self) -> Generator[Any, Any, None]:
        """A real TCP server transport still has every attribute write-through reads."""
        _Capture.transports = []
        port = reactor.listenTCP(0, Factory.forProtocol(_Capture), interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)

        def connect() -> bytes:
            with socket.create_connection(("127.0.0.1", port.getHost().port), timeout=10) as s:
                return s.recv(5)

        d = inThread(connect)
        for _ in range(200):
            if _Capture.transports:
                break
            yield task.deferLater(reactor, 0.01, lambda: None)  # type: ignore[arg-type]
        (transport,) = _Capture.transports
        self.assertIs(type(transport), Server)
        self.assertTrue(_writethrough.isPlainTCP(transport))
        missing = [a for a in _writethrough.PRIVATE_ATTRIBUTES if not hasattr(transport, a)]
        self.assertEqual(missing, [], "Twisted's TCP transport changed: write-through is off")
        self.assertEqual(_writethrough.sendNow(transport, b"hello"), b"")
        self.assertEqual((yield d), b"hello")
        transport.loseConnection()

    def test_otherTransportsFallBack(self) -> None:
        """A transport that is not plain TCP is not written through."""
        t = StringTransport()
        self.assertFalse(_writethrough.isPlainTCP(t))
        self.assertFalse(_writethrough.available(t))
        self.assertEqual(_writethrough.sendNow(t, b"x"), b"x")
