"""Tests for L{mailframe.config}."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mailframe.address import Domain
from mailframe.config import ServerConfig
from mailframe.protocol import Limits


class ServerConfigTests(SynchronousTestCase):
    def test_defaultDomains(self) -> None:
        """Without local domains, localhost and the host name are local."""
        c = ServerConfig(hostname="mx.example")
        self.assertEqual(c.localDomains, frozenset({Domain("localhost"), Domain("mx.example")}))
        self.assertTrue(c.isLocal(Domain("MX.example")))
        self.assertFalse(c.isLocal(Domain("other.example")))

    def test_domainsFromStrings(self) -> None:
        """Local domains may be given as strings."""
        c = ServerConfig(hostname="mx", localDomains=frozenset({"Example.com"}))  # type: ignore[arg-type]
        self.assertTrue(c.isLocal(Domain("example.COM")))

    def test_defaultHostname(self) -> None:
        """The default host name is a real name, never localhost when the host has one."""
        import socket

        from mailframe import config

        self.patch(socket, "getfqdn", lambda: "localhost")
        self.patch(socket, "gethostname", lambda: "box")
        self.assertEqual(config.defaultHostname(), "box")
        self.patch(socket, "getfqdn", lambda: "box.example.org")
        self.assertEqual(config.defaultHostname(), "box.example.org")

    def test_validation(self) -> None:
        """Bad host names, timeouts and limits are refused."""
        self.assertRaises(ValueError, ServerConfig, hostname="a b")
        self.assertRaises(ValueError, ServerConfig, hostname="a:b:c")
        self.assertRaises(ValueError, ServerConfig, hostname="mx", commandTimeout=0)
        self.assertRaises(ValueError, ServerConfig, hostname="mx", maxErrors=0)
        self.assertRaises(ValueError, Limits, commandLine=100)
        self.assertRaises(ValueError, Limits, dataLine=999)
        self.assertRaises(ValueError, Limits, recipients=0)
