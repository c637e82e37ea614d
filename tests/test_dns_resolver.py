"""
Tests for the process's DNS resolver (L{mailframe.policy._dns.makeResolver},
L{mailframe.policy._dns.CachingResolver}) and the C{dns-server} /
C{resolv-conf} settings (L{mailframe.app.resolver}): every check and MX
routing ask one caching resolver, which asks the configured servers.

The DNS server is a tiny one written here with C{twisted.names} (its
records in a L{MemoryResolver}), on a loopback UDP port other than 53.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.names import dns, error, server
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mailframe.app import registry, tap
from mailframe.app.resolver import DNSSpec, dnsServers
from mailframe.config import ProviderContext, ServerConfig
from mailframe.plugins import SettingError
from mailframe.policy._dns import (
    AsyncDNS,
    CachingResolver,
    makeResolver,
    parseServer,
    readResolvConf,
)
from mailframe.policy.testing import SERVFAIL, MemoryResolver, makeSession

ZONE_SOA = dns.RRHeader(
    b"test", dns.SOA, dns.IN, 600,
    dns.Record_SOA(b"ns.test", b"hostmaster.test", serial=1, minimum=120),
)  # fmt: skip


class _Factory(server.DNSServerFactory):
    """
    A DNS server that, like a real one, sends its zone's SOA with "no such
    name" and "no such record", and SERVFAIL for a server failure.
    """

    def gotResolverResponse(
        self, response: Any, protocol: Any, message: Any, address: Any
    ) -> None:
        answers, authority, additional = response
        if not answers:
            authority = [*authority, ZONE_SOA]
        super().gotResolverResponse((answers, authority, additional), protocol, message, address)

    def gotResolverError(
        self, failure: Failure, protocol: Any, message: Any, address: Any
    ) -> None:
        if failure.check(error.DNSNameError):
            response = self._responseFromMessage(message=message, rCode=dns.ENAME,
                                                 authority=[ZONE_SOA])  # fmt: skip
        else:
            response = self._responseFromMessage(message=message, rCode=dns.ESERVER)
        self.sendReply(protocol, response, address)


class TinyDNS:
    """A DNS server on 127.0.0.1 (a random UDP port) serving C{records}; C{queries} is what it was asked."""

    def __init__(self, case: TestCase, records: dict[Any, Any]) -> None:
        self.zone = MemoryResolver(records)
        factory = _Factory(authorities=[self.zone])
        self.port = reactor.listenUDP(0, dns.DNSDatagramProtocol(factory), interface="127.0.0.1")  # type: ignore[attr-defined]
        case.addCleanup(self.port.stopListening)

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port.getHost().port)

    @property
    def setting(self) -> str:
        return f"127.0.0.1:{self.port.getHost().port}"

    @property
    def queries(self) -> list[tuple[str, str]]:
        return self.zone.queries


RECORDS = {
    ("mx.example.org", "A"): ["192.0.2.25"],
    ("example.org", "MX"): [(10, "mx.example.org")],
    ("example.org", "TXT"): ["v=spf1 ip4:192.0.2.0/24 -all"],
    ("2.0.0.127.bl.test", "A"): ["127.0.0.2"],
    ("2.0.0.127.bl.test", "TXT"): ["listed for tests"],
    ("only-a.example.org", "A"): ["192.0.2.9"],
    "broken.example.org": SERVFAIL,
}


class ResolverOverTheNetworkTests(TestCase):
    """makeResolver asks the servers it is given, on their port, and keeps the answers."""

    def setUp(self) -> None:
        self.dns = TinyDNS(self, RECORDS)
        self.resolver = makeResolver(reactor, [self.dns.address], hosts=None, timeout=(2,))

    @defer.inlineCallbacks
    def test_answersAndCache(self) -> Any:
        """An answer comes from the server once; the same lookup again comes from the cache."""
        lookups = AsyncDNS(self.resolver, reactor, timeout=10)  # type: ignore[arg-type]
        first = yield lookups.addresses("mx.example.org")
        self.assertEqual(first, ["192.0.2.25"])
        again = yield lookups.addresses("MX.example.org.")
        self.assertEqual(again, ["192.0.2.25"])
        self.assertEqual(self.dns.queries, [("mx.example.org", "A")])
        self.assertEqual((self.resolver.hits, self.resolver.misses), (1, 1))
        txt = yield lookups.txt("example.org")
        self.assertEqual(txt, [b"v=spf1 ip4:192.0.2.0/24 -all"])

    @defer.inlineCallbacks
    def test_negativeAnswersKept(self) -> Any:
        """NXDOMAIN (with its SOA) and "no such record" are kept; asked once each."""
        lookups = AsyncDNS(self.resolver, reactor, timeout=10)  # type: ignore[arg-type]
        for _ in range(2):
            self.assertEqual((yield lookups.addresses("nothing.example.org")), [])
            self.assertEqual((yield lookups.txt("only-a.example.org")), [])
        self.assertEqual(
            self.dns.queries, [("nothing.example.org", "A"), ("only-a.example.org", "TXT")]
        )

    @defer.inlineCallbacks
    def test_serverFailureNotKept(self) -> Any:
        """SERVFAIL is a temporary error, asked again next time."""
        from mailframe.policy._dns import DNSTemporaryError

        lookups = AsyncDNS(self.resolver, reactor, timeout=10)  # type: ignore[arg-type]
        for _ in range(2):
            yield self.assertFailure(lookups.txt("broken.example.org"), DNSTemporaryError)
        self.assertEqual(self.dns.queries.count(("broken.example.org", "TXT")), 2)
        self.assertEqual(len(self.resolver), 0)

    @defer.inlineCallbacks
    def test_mxRouting(self) -> Any:
        """The router's MX lookups go to the same server."""
        from mailframe.client.routing import Router

        router = Router(self.resolver)
        [destination] = yield router.destinations("example.org")
        self.assertEqual(
            (destination.hostname, destination.address), ("mx.example.org", "192.0.2.25")
        )
        self.assertIn(("example.org", "MX"), self.dns.queries)


class EveryCheckTests(TestCase):
    """twistd mailframe: one resolver per process, from --dns-server, for every check and MX."""

    def setUp(self) -> None:
        self.dns = TinyDNS(self, RECORDS)

    def makeService(self, *args: str) -> tap.MailframeService:
        options = tap.Options()
        options.parseOptions(["--listen", "tcp:0:interface=127.0.0.1", "--deliver", "memory",
                              "--hostname", "mx.test", "--dns-server", self.dns.setting, *args])  # fmt: skip
        return tap.makeService(options)

    def test_oneResolver(self) -> None:
        """DNSBL, HELO, SPF, DKIM, DMARC and the relay's router share one resolver."""
        service = self.makeService(
            "--filter", "dnsbl:bl.test", "--filter", "helo:fcrdns=record", "--filter", "spf",
            "--filter", "dkim-verify", "--filter", "dmarc", "--relay-host", "mx:example.org",
            "--spool", self.mktemp(),
        )  # fmt: skip
        [factory] = service.factories
        checks = [
            *factory.connectionFilters, *factory.heloValidators, *factory.senderValidators,
            *factory.messageFilters,
        ]  # fmt: skip
        resolvers = {id(c.dns.resolver) for c in checks if hasattr(c, "dns")}
        self.assertEqual(len([c for c in checks if hasattr(c, "dns")]), 5)
        self.assertEqual(len(resolvers), 1)
        [resolverID] = resolvers
        relays = [s.relay for s in service if getattr(s, "relay", None) is not None]
        self.assertEqual([id(r.router.resolver) for r in relays], [resolverID])
        self.assertIsInstance(relays[0].router.resolver, CachingResolver)
        self.assertIn(f"mailframe: DNS from {self.dns.setting}, cached", service.announcements)

    @defer.inlineCallbacks
    def test_dnsblAsksTheServer(self) -> Any:
        """The DNSBL check of a configured server refuses a client the tiny server lists."""
        service = self.makeService("--filter", "dnsbl:bl.test")
        [factory] = service.factories
        [dnsbl] = [f for f in factory.connectionFilters if type(f).__name__ == "DNSBL"]
        refusal = yield defer.maybeDeferred(
            dnsbl.acceptConnection, makeSession("127.0.0.2")
        ).addErrback(lambda f: f.value.reply)
        self.assertEqual(refusal.code, 554)
        self.assertIn("listed for tests", str(refusal))
        self.assertIn(("2.0.0.127.bl.test", "A"), self.dns.queries)

    def test_providerContext(self) -> None:
        """A plug-in built with a ProviderContext's resolver uses it; without one, the system's."""
        resolver = MemoryResolver()
        config = ServerConfig(hostname="mx.test")
        check: Any = registry.makeFilter("spf", ProviderContext(reactor, config, resolver))
        self.assertIs(check.dns.resolver, resolver)
        check = registry.makeFilter("spf", ProviderContext(reactor, config))
        self.assertIsInstance(check.dns.resolver, CachingResolver)


class CacheTests(SynchronousTestCase):
    """The cache's rules, on a clock."""

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.upstream = MemoryResolver({("a.example", "A"): ["192.0.2.1"],
                                        "bad.example": SERVFAIL})  # fmt: skip
        self.resolver = CachingResolver(self.upstream, self.clock, maxEntries=2)

    def lookup(self, name: str) -> Any:
        return self.successResultOf(self.resolver.lookupAddress(name))

    def test_ttl(self) -> None:
        """An answer is kept for its TTL (300 s here), then asked again."""
        self.lookup("a.example")
        self.clock.advance(299)
        self.lookup("a.example")
        self.assertEqual(len(self.upstream.queries), 1)
        self.clock.advance(1)
        self.lookup("a.example")
        self.assertEqual(len(self.upstream.queries), 2)

    def test_bounded(self) -> None:
        """At most maxEntries names are kept, the least recently used going first."""
        self.upstream.add("b.example", "A", "192.0.2.2")
        self.upstream.add("c.example", "A", "192.0.2.3")
        for name in ("a.example", "b.example", "a.example", "c.example"):
            self.lookup(name)
        self.assertEqual(len(self.resolver), 2)
        self.lookup("a.example")  # still there: used more recently than b
        self.assertEqual(self.upstream.queries.count(("a.example", "A")), 1)
        self.lookup("b.example")
        self.assertEqual(self.upstream.queries.count(("b.example", "A")), 2)

    def test_negativeWithoutSOA(self) -> None:
        """A "no such name" without an SOA (no negative TTL) is not kept."""
        for _ in range(2):
            self.failureResultOf(self.resolver.lookupAddress("none.example"), error.DNSNameError)
        self.assertEqual(len(self.upstream.queries), 2)

    def test_noTimers(self) -> None:
        """The cache schedules nothing."""
        self.lookup("a.example")
        self.failureResultOf(self.resolver.lookupAddress("bad.example"), error.DNSServerError)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class SettingTests(SynchronousTestCase):
    """dns-server and resolv-conf."""

    def test_servers(self) -> None:
        """Addresses, with a port or not, IPv6 in brackets; names and bad ports are refused."""
        self.assertEqual(parseServer("192.0.2.53"), ("192.0.2.53", 53))
        self.assertEqual(parseServer("127.0.0.1:5353"), ("127.0.0.1", 5353))
        self.assertEqual(parseServer("::1"), ("::1", 53))
        self.assertEqual(parseServer("[::1]:5353"), ("::1", 5353))
        self.assertEqual(dnsServers(["127.0.0.1:5353,::1"]), ("127.0.0.1:5353", "[::1]:53"))
        for bad in ("ns.example", "127.0.0.1:0", "127.0.0.1:x", "[::1", "[::1]x", ""):
            self.assertRaises((ValueError, SettingError), dnsServers, [bad])

    def test_options(self) -> None:
        """--dns-server (repeatable) and --resolv-conf make options.dns; both is a usage error."""
        options = tap.Options()
        options.parseOptions(["--dns-server", "127.0.0.1:5353", "--dns-server", "[::1]:53"])
        self.assertEqual(options.dns, DNSSpec((("127.0.0.1", 5353), ("::1", 53))))
        options = tap.Options()
        options.parseOptions(["--resolv-conf", "/etc/other.conf"])
        self.assertEqual(options.dns, DNSSpec((), "/etc/other.conf"))
        e = self.assertRaises(
            usage.UsageError, tap.Options().parseOptions,
            ["--dns-server", "127.0.0.1", "--resolv-conf", "/etc/x"],
        )  # fmt: skip
        self.assertIn("not both", str(e))
        e = self.assertRaises(usage.UsageError, tap.Options().parseOptions, ["--dns-server", "x"])
        self.assertIn("dns-server", str(e))

    def test_configFile(self) -> None:
        """dns-server is a list in the config file (top level only)."""
        path = Path(self.mktemp())
        path.write_text('dns-server = ["127.0.0.1:5353"]\n')
        options = tap.Options()
        options.parseOptions(["--config", str(path)])
        self.assertEqual(options.dns.servers, (("127.0.0.1", 5353),))
        path.write_text('[[listener]]\nlisten = ["tcp:0"]\ndns-server = ["127.0.0.1"]\n')
        self.assertRaises(usage.UsageError, tap.Options().parseOptions, ["--config", str(path)])

    def test_resolvConf(self) -> None:
        """nameserver lines give the servers, port 53; none (or no file) is 127.0.0.1."""
        path = Path(self.mktemp())
        path.write_text("# comment\nsearch example\nnameserver 192.0.2.53\nnameserver fe80::1%eth0\n"
                        "nameserver bogus\noptions ndots:2\n")  # fmt: skip
        self.assertEqual(readResolvConf(str(path)), [("192.0.2.53", 53), ("fe80::1", 53)])
        path.write_text("search example\n")
        self.assertEqual(readResolvConf(str(path)), [("127.0.0.1", 53)])
        self.assertEqual(readResolvConf(str(path) + ".missing"), [("127.0.0.1", 53)])

    def test_unreadableResolvConf(self) -> None:
        """A resolv-conf that cannot be read is a one-line SystemExit at start."""
        directory = self.mktemp()
        Path(directory).mkdir()
        options = tap.Options()
        options.parseOptions(["--resolv-conf", directory, "--deliver", "memory"])
        e = self.assertRaises(SystemExit, tap.makeService, options)
        self.assertTrue(str(e.code).startswith("mailframe: cannot read resolv-conf"), e.code)
        self.assertNotIn("\n", str(e.code))
