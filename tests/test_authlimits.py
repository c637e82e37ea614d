"""
Tests for L{mailframe.policy.authlimits}: failures per client over a
sliding window, blocking for a while, IPv6 /64 grouping, bounded tables,
and the connection filter, on a fake clock.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from mailframe.envelope import SessionInfo
from mailframe.interfaces import IConnectionFilter
from mailframe.policy.authlimits import AuthFailureLimiter, clientKey
from mailframe.reply import SMTPError


def session(host: str) -> SessionInfo:
    return SessionInfo("S1", host, 1234, "127.0.0.1", 25, "mx.test")


class LimiterTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.limiter = AuthFailureLimiter(self.clock, maxFailures=3, window=60, blockFor=120)

    def test_provides(self) -> None:
        """The limiter is an IConnectionFilter."""
        verifyObject(IConnectionFilter, self.limiter)

    def test_window(self) -> None:
        """Failures older than the window do not count."""
        self.assertFalse(self.limiter.recordFailure("192.0.2.1"))
        self.clock.advance(40)
        self.assertFalse(self.limiter.recordFailure("192.0.2.1"))
        self.clock.advance(30)  # the first is 70 s old now
        self.assertEqual(self.limiter.failures("192.0.2.1"), 1)
        self.assertFalse(self.limiter.recordFailure("192.0.2.1"))
        self.assertTrue(self.limiter.recordFailure("192.0.2.1"))

    def test_block(self) -> None:
        """Over the limit a client is refused at connect with 421 4.7.0 until the block ends."""
        for _ in range(3):
            self.limiter.recordFailure("192.0.2.1")
        self.assertTrue(self.limiter.isBlocked("192.0.2.1"))
        e = self.assertRaises(SMTPError, self.limiter.acceptConnection, session("192.0.2.1"))
        self.assertEqual((e.reply.code, e.reply.enhanced), (421, (4, 7, 0)))
        self.assertIsNone(self.limiter.acceptConnection(session("192.0.2.2")))
        self.clock.advance(119)
        self.assertTrue(self.limiter.isBlocked("192.0.2.1"))
        self.clock.advance(1)
        self.assertIsNone(self.limiter.acceptConnection(session("192.0.2.1")))
        self.assertEqual(self.limiter.failures("192.0.2.1"), 0)

    def test_ipv6Network(self) -> None:
        """IPv6 clients are counted by /64; IPv4-mapped addresses as IPv4."""
        self.assertEqual(clientKey("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::/64")
        self.assertEqual(clientKey("::ffff:192.0.2.1"), "192.0.2.1")
        self.assertEqual(clientKey("fe80::1%eth0"), "fe80::/64")
        self.assertEqual(clientKey("not-an-address"), "not-an-address")
        for host in ("2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2:ffff::3"):
            self.limiter.recordFailure(host)
        self.assertTrue(self.limiter.isBlocked("2001:db8:1:2::99"))
        self.assertFalse(self.limiter.isBlocked("2001:db8:1:3::1"))

    def test_bounded(self) -> None:
        """The table of clients is bounded: the least recent is forgotten."""
        limiter = AuthFailureLimiter(self.clock, maxFailures=2, maxClients=2)
        limiter.recordFailure("192.0.2.1")
        limiter.recordFailure("192.0.2.2")
        limiter.recordFailure("192.0.2.3")
        self.assertEqual(limiter.failures("192.0.2.1"), 0)
        self.assertEqual(limiter.failures("192.0.2.3"), 1)

    def test_boundedBlocks(self) -> None:
        """Blocks are bounded too: past the table size the earliest-ending are dropped."""
        limiter = AuthFailureLimiter(self.clock, maxFailures=1, blockFor=10, maxClients=1000)
        for i in range(1030):
            self.clock.advance(0.001)
            limiter.recordFailure(f"10.0.{i // 256}.{i % 256}")
        self.assertLessEqual(len(limiter._blocked), 1025)
        self.assertTrue(limiter.isBlocked("10.0.4.5"))

    def test_badSettings(self) -> None:
        """Zero limits and times are refused."""
        self.assertRaises(ValueError, AuthFailureLimiter, self.clock, maxFailures=0)
        self.assertRaises(ValueError, AuthFailureLimiter, self.clock, window=0)
        self.assertRaises(ValueError, AuthFailureLimiter, self.clock, blockFor=0)
