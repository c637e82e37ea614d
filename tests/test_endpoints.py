"""
Tests for L{mailframe.app.endpoints}: endpoint strings are read with
Twisted's parsers and a stand-in reactor of our own, never a test reactor
or an endpoint's private attributes, and nothing listens.
"""

from __future__ import annotations

import socket

from twisted.trial.unittest import SynchronousTestCase

from mailframe.app.endpoints import TCPAddress, checkServerEndpoint, tcpListenAddress


class CheckTests(SynchronousTestCase):
    def test_parses(self) -> None:
        """Server endpoint strings of several kinds parse; nothing listens."""
        for description in ["tcp:2525", "tcp6:25:interface=\\:\\:1", "unix:/tmp/mf.sock",
                            "haproxy:tcp:2525"]:  # fmt: skip
            self.assertIsNotNone(checkServerEndpoint(description))

    def test_refuses(self) -> None:
        """A string the parsers refuse raises their error."""
        for description in ["tcp:notaport", "nosuch:25", ""]:
            self.assertRaises(ValueError, checkServerEndpoint, description)


class AddressTests(SynchronousTestCase):
    def test_tcp(self) -> None:
        """A tcp: endpoint's family, interface, port and backlog, by default and as given."""
        self.assertEqual(
            tcpListenAddress("tcp:2525:interface=127.0.0.1:backlog=7"),
            TCPAddress(socket.AF_INET, "127.0.0.1", 2525, 7),
        )
        self.assertEqual(tcpListenAddress("tcp:25"), TCPAddress(socket.AF_INET, "", 25, 50))

    def test_tcp6(self) -> None:
        """A tcp6: endpoint listens on every IPv6 address unless told otherwise."""
        self.assertEqual(tcpListenAddress("tcp6:25"), TCPAddress(socket.AF_INET6, "::", 25, 50))

    def test_notTCP(self) -> None:
        """Other kinds are a ValueError."""
        self.assertRaises(ValueError, tcpListenAddress, "unix:/tmp/mf.sock")
