"""
Tests for L{mailframe.policy.dnsbl}, L{mailframe.policy.helo} and the
shared DNS helpers: block and allow lists, HELO names and literals,
forward-confirmed reverse DNS, answers, NXDOMAIN, SERVFAIL and timeouts
from the in-memory resolver.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from mailframe.backends.memory import MemoryBackend
from mailframe.config import ServerConfig
from mailframe.interfaces import IConnectionFilter, IHeloValidator
from mailframe.policy._dns import AsyncDNS, DNSTemporaryError, reverseName
from mailframe.policy.dnsbl import DNSBL, Zone, queryName
from mailframe.policy.helo import HeloCheck, forwardConfirmed
from mailframe.policy.testing import NEVER, REFUSED, SERVFAIL, MemoryResolver, makeSession
from mailframe.reply import SMTPError
from mailframe.server import SMTPServerFactory
from tests.test_server import Listed, codes

RECORDS: dict[Any, Any] = {
    ("2.0.0.127.bl.example", "A"): ["127.0.0.2"],
    ("2.0.0.127.bl.example", "TXT"): ["Listed: see https://bl.example/lookup?127.0.0.2"],
    ("1.2.0.192.bl.example", "A"): ["127.0.0.4"],
    ("1.2.0.192.bl.example", "TXT"): ["bad\r\nline"],
    ("9.2.0.192.bl.example", "A"): ["127.255.255.254"],  # "your query was refused"
    ("8.2.0.192.bl.example", "A"): ["10.0.0.1"],  # not a listing
    ("1.2.0.192.wl.example", "A"): ["127.0.10.2"],
    "3.2.0.192.bl.example": SERVFAIL,
    "4.2.0.192.bl.example": NEVER,
    ("1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl.example", "A"): [
        "127.0.0.3"
    ],
    ("1.2.0.192.in-addr.arpa", "PTR"): ["mail.example.org"],
    ("mail.example.org", "A"): ["192.0.2.1"],
    ("2.2.0.192.in-addr.arpa", "PTR"): ["liar.example.org"],
    ("liar.example.org", "A"): ["203.0.113.5"],
    "5.2.0.192.in-addr.arpa": SERVFAIL,
    ("1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa", "PTR"): [
        "v6.example.org"
    ],
    ("v6.example.org", "AAAA"): ["2001:db8::1"],
}


class DNSTests(SynchronousTestCase):
    """AsyncDNS over the MemoryResolver."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.resolver = MemoryResolver(RECORDS)
        self.resolver.failures["refused.example"] = REFUSED
        self.dns = AsyncDNS(self.resolver, self.clock, timeout=3)

    def test_answers(self) -> None:
        """A, TXT and PTR answers come back as plain values."""
        self.assertEqual(
            self.successResultOf(self.dns.addresses("mail.example.org")), ["192.0.2.1"]
        )
        self.assertEqual(
            self.successResultOf(self.dns.pointers("192.0.2.1")), ["mail.example.org"]
        )
        txt = self.successResultOf(self.dns.txt("1.2.0.192.bl.example"))
        self.assertEqual(txt, [b"bad\r\nline"])

    def test_nothing(self) -> None:
        """NXDOMAIN and no record of the type are both an empty list."""
        self.assertEqual(self.successResultOf(self.dns.lookup("nx.example", "A")), [])
        self.assertEqual(self.successResultOf(self.dns.lookup("mail.example.org", "MX")), [])

    def test_temporary(self) -> None:
        """SERVFAIL, REFUSED and a timeout fail with DNSTemporaryError."""
        for name in ("3.2.0.192.bl.example", "refused.example"):
            self.failureResultOf(self.dns.lookup(name, "A"), DNSTemporaryError)
        d = self.dns.lookup("4.2.0.192.bl.example", "A")
        self.assertNoResult(d)
        self.clock.advance(3)
        self.assertIn("timeout", str(self.failureResultOf(d, DNSTemporaryError).value))

    def test_longTXT(self) -> None:
        """A TXT record longer than 255 octets is served in strings and joined."""
        self.resolver.add("long.example", "TXT", "x" * 600)
        [answer] = self.successResultOf(self.dns.lookup("long.example", "TXT"))
        self.assertEqual([len(s) for s in answer.value], [255, 255, 90])
        self.assertEqual(self.successResultOf(self.dns.txt("long.example")), [b"x" * 600])

    def test_reverseName(self) -> None:
        """PTR names for IPv4 and IPv6."""
        self.assertEqual(reverseName("192.0.2.1"), "1.2.0.192.in-addr.arpa")
        self.assertTrue(reverseName("2001:db8::1").endswith(".8.b.d.0.1.0.0.2.ip6.arpa"))

    def test_badTimeout(self) -> None:
        """A timeout must be positive."""
        self.assertRaises(ValueError, AsyncDNS, self.resolver, self.clock, 0)


class DNSBLTests(SynchronousTestCase):
    """Block and allow lists."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.dns = AsyncDNS(MemoryResolver(RECORDS), self.clock, timeout=3)

    def accept(self, bl: DNSBL, host: str) -> Any:
        d = bl.acceptConnection(makeSession(host))
        self.clock.advance(3)
        return d

    def test_verifyObject(self) -> None:
        """DNSBL provides IConnectionFilter."""
        self.assertTrue(verifyObject(IConnectionFilter, DNSBL(self.dns, ["bl.example"])))

    def test_listed(self) -> None:
        """A listed client gets 554 5.7.1 naming the zone and quoting its TXT."""
        d = self.accept(DNSBL(self.dns, ["bl.example"]), "127.0.0.2")
        reply = self.failureResultOf(d, SMTPError).value.reply
        self.assertEqual((reply.code, reply.enhanced), (554, (5, 7, 1)))
        self.assertIn("blocked using bl.example: Listed: see https://bl.example/", str(reply))

    def test_txtSanitized(self) -> None:
        """A TXT text with CR LF cannot break the reply."""
        reply = self.failureResultOf(self.accept(DNSBL(self.dns, ["bl.example"]), "192.0.2.1"))
        self.assertIn("bad line", str(reply.value.reply))
        self.assertNotIn("\r", str(reply.value.reply))

    def test_notListed(self) -> None:
        """Clients not listed, or answered outside 127/8 or with 127.255.255.x, pass."""
        bl = DNSBL(self.dns, ["bl.example"])
        for host in ("192.0.2.77", "192.0.2.9", "192.0.2.8"):
            self.assertIsNone(self.successResultOf(self.accept(bl, host)), host)

    def test_failOpen(self) -> None:
        """SERVFAIL or a timeout counts as not listed."""
        bl = DNSBL(self.dns, ["bl.example"])
        for host in ("192.0.2.3", "192.0.2.4"):
            self.assertIsNone(self.successResultOf(self.accept(bl, host)), host)

    def test_allowListSkips(self) -> None:
        """A client on an allow list is not refused even if blocked."""
        bl = DNSBL(self.dns, ["bl.example"], allow=["wl.example"])
        self.assertIsNone(self.successResultOf(self.accept(bl, "192.0.2.1")))

    def test_codes(self) -> None:
        """A zone with codes counts only those answers."""
        self.assertIsNone(
            self.successResultOf(
                self.accept(DNSBL(self.dns, ["bl.example=127.0.0.2"]), "192.0.2.1")
            )
        )
        self.failureResultOf(self.accept(DNSBL(self.dns, ["bl.example=127.0.0.4"]), "192.0.2.1"))

    def test_ipv6(self) -> None:
        """An IPv6 client is looked up by its 32 reversed nibbles."""
        self.failureResultOf(
            self.accept(DNSBL(self.dns, ["bl.example"]), "2001:db8::1"), SMTPError
        )
        self.assertEqual(queryName("::ffff:192.0.2.1", "z.example"), "1.2.0.192.z.example")

    def test_logOnly(self) -> None:
        """refuse=False only logs a listed client."""
        bl = DNSBL(self.dns, ["bl.example"], refuse=False)
        self.assertIsNone(self.successResultOf(self.accept(bl, "127.0.0.2")))

    def test_trustedAndOddPeers(self) -> None:
        """Relay-network clients and non-IP peers are not looked up."""
        config = ServerConfig(hostname="mx.example.com", relayNetworks=("127.0.0.0/8",))
        bl = DNSBL(self.dns, ["bl.example"], config=config)
        self.assertIsNone(bl.acceptConnection(makeSession("127.0.0.2")))
        self.assertIsNone(bl.acceptConnection(makeSession("/tmp/socket")))

    def test_zoneParse(self) -> None:
        """Zones parse with codes; bad ones are refused."""
        self.assertEqual(
            Zone.parse("BL.Example.=127.0.0.2;127.0.0.3").codes, {"127.0.0.2", "127.0.0.3"}
        )
        for bad in ("", "nodot", "bl.example=x"):
            self.assertRaises(ValueError, Zone.parse, bad)
        self.assertRaises(ValueError, DNSBL, self.dns, [])

    def test_greetedWith554(self) -> None:
        """In a server, a listed client is greeted with 554 and may only QUIT."""
        from twisted.internet.address import IPv4Address

        config = ServerConfig(hostname="mx.test", localDomains=frozenset({"example.com"}))
        factory = SMTPServerFactory(
            config,
            MemoryBackend(),
            [Listed("user")],
            connectionFilters=[DNSBL(self.dns, ["bl.example"])],
            clock=self.clock,
        )
        proto = factory.buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.2", 5000))
        proto.makeConnection(transport)
        self.assertTrue(transport.value().startswith(b"554 "))
        transport.clear()
        proto.dataReceived(b"EHLO x\r\nQUIT\r\n")
        self.assertEqual(codes(transport.value()), ["503", "221"])


class HeloTests(SynchronousTestCase):
    """HELO names, literals and forward-confirmed reverse DNS."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.dns = AsyncDNS(MemoryResolver(RECORDS), self.clock, timeout=3)

    def refused(self, check: HeloCheck, name: str, host: str = "192.0.2.1") -> Any:
        e = self.assertRaises(SMTPError, check.validateHelo, makeSession(host), name, True)
        return e.reply

    def test_verifyObject(self) -> None:
        """HeloCheck provides IHeloValidator."""
        self.assertTrue(verifyObject(IHeloValidator, HeloCheck()))

    def test_fqdn(self) -> None:
        """Bare words, bad syntax and bare IPs get 504 5.5.2; FQDNs pass."""
        check = HeloCheck()
        for name in ("localhost", "bad_name!", "host.123", "192.0.2.1"):
            reply = self.refused(check, name)
            self.assertEqual((reply.code, reply.enhanced), (504, (5, 5, 2)), name)
        self.assertIsNone(check.validateHelo(makeSession(), "mail.example.org", True))
        self.assertIsNone(HeloCheck(fqdn=False).validateHelo(makeSession(), "localhost", False))

    def test_literal(self) -> None:
        """A literal must be the client's address (IPv4, IPv6, v4-mapped)."""
        check = HeloCheck()
        self.assertIsNone(check.validateHelo(makeSession("192.0.2.1"), "[192.0.2.1]", True))
        self.assertIsNone(check.validateHelo(makeSession("::ffff:192.0.2.1"), "[192.0.2.1]", True))
        self.assertIsNone(
            check.validateHelo(makeSession("2001:db8::1"), "[IPv6:2001:DB8::1]", True)
        )
        reply = self.refused(check, "[192.0.2.99]")
        self.assertEqual((reply.code, reply.enhanced), (550, (5, 7, 1)))
        self.assertEqual(self.refused(check, "[junk]").code, 550)
        self.assertIsNone(HeloCheck(literal=False).validateHelo(makeSession(), "[10.0.0.1]", True))

    def test_fcrdnsRequire(self) -> None:
        """Without a confirmed reverse name, 550 5.7.25; a DNS failure, 451 4.7.25."""
        check = HeloCheck(self.dns, fcrdns="require")
        session = makeSession("192.0.2.1")
        self.assertIsNone(self.successResultOf(check.validateHelo(session, "a.example", True)))
        self.assertEqual(session.iprev.names, ("mail.example.org",))
        for host, expected in [("192.0.2.2", (550, (5, 7, 25))), ("192.0.2.66", (550, (5, 7, 25))),
                               ("192.0.2.5", (451, (4, 7, 25)))]:  # fmt: skip
            d = check.validateHelo(makeSession(host), "a.example", True)
            reply = self.failureResultOf(d, SMTPError).value.reply
            self.assertEqual((reply.code, reply.enhanced), expected, host)

    def test_fcrdnsRecordOnly(self) -> None:
        """fcrdns=record notes the result without refusing, once per session."""
        resolver = MemoryResolver(RECORDS)
        check = HeloCheck(AsyncDNS(resolver, self.clock), fqdn=False, fcrdns="record")
        session = makeSession("192.0.2.2")
        self.assertIsNone(self.successResultOf(check.validateHelo(session, "x", True)))
        self.assertEqual(session.iprev.result, "fail")
        asked = len(resolver.queries)
        check.validateHelo(session, "x", True)
        self.assertEqual(len(resolver.queries), asked)

    def test_forwardConfirmed(self) -> None:
        """iprev results: pass (IPv4, IPv6), fail, temperror, permerror."""

        def result(host: str) -> str:
            return self.successResultOf(forwardConfirmed(self.dns, host)).result

        self.assertEqual(result("192.0.2.1"), "pass")
        self.assertEqual(result("2001:db8::1"), "pass")
        self.assertEqual(result("192.0.2.2"), "fail")
        self.assertEqual(result("192.0.2.5"), "temperror")
        self.assertEqual(result("not-an-ip"), "permerror")

    def test_trustedSkipped(self) -> None:
        """Relay-network clients are not checked."""
        config = ServerConfig(hostname="mx.example.com", relayNetworks=("192.0.2.0/24",))
        check = HeloCheck(self.dns, fcrdns="require", config=config)
        self.assertIsNone(check.validateHelo(makeSession("192.0.2.2"), "localhost", True))

    def test_badOptions(self) -> None:
        """fcrdns needs a resolver and a known choice."""
        self.assertRaises(ValueError, HeloCheck, None, fcrdns="record")
        self.assertRaises(ValueError, HeloCheck, self.dns, fcrdns="maybe")
