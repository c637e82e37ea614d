"""
Tests for L{mailframe.client.routing}: MX routing with an in-memory twisted.names
authority (no network): preference order, random order among equal
preferences (seeded), implicit MX, null MX, CNAMEs, AAAA and A, NXDOMAIN
and SERVFAIL; address literals; smarthost and per-domain routes from plain
data.
"""

from __future__ import annotations

import random
from typing import Any

from twisted.internet import defer
from twisted.internet import error as internetError
from twisted.internet.error import ConnectionRefusedError
from twisted.names import authority, common, dns
from twisted.names import error as dnserror
from twisted.trial.unittest import SynchronousTestCase

from mailframe.client import Credentials
from mailframe.client.routing import (
    LOCAL,
    Destination,
    NextHop,
    Router,
    RoutingError,
    parseNextHop,
)


class MemoryAuthority(authority.FileAuthority):
    """An authority for C{zone} holding C{records} (name -> record list), in memory."""

    def __init__(self, zone: str, records: dict[str, list[Any]]) -> None:
        common.ResolverBase.__init__(self)
        soa = dns.Record_SOA(mname=b"ns." + zone.encode(), rname=b"root." + zone.encode(),
                             serial=1, refresh=1, retry=1, expire=1, minimum=1)  # fmt: skip
        self.soa = (zone.encode(), soa)
        self.records = {name.encode().lower(): r for name, r in records.items()}
        self._cache: dict[Any, Any] = {}


class Failing(common.ResolverBase):
    """Fails every query for C{names} with C{error}; asks C{other} for the rest."""

    def __init__(self, other: Any, names: set[bytes], error: type[Exception]) -> None:
        common.ResolverBase.__init__(self)
        self.other, self.names, self.error = other, names, error
        self.queries: list[bytes] = []

    def _lookup(self, name: bytes, cls: int, type: int, timeout: Any = None) -> Any:
        self.queries.append(name)
        if name.lower() in self.names:
            return defer.fail(self.error(name))
        return self.other._lookup(name, cls, type, timeout)


def MX(preference: int, name: str) -> Any:
    return dns.Record_MX(preference, name.encode())


def A(address: str) -> Any:
    return dns.Record_A(address)


def AAAA(address: str) -> Any:
    return dns.Record_AAAA(address)


def CNAME(name: str) -> Any:
    return dns.Record_CNAME(name.encode())


ZONE = {
    "example.com": [MX(20, "mx2.example.com"), MX(10, "mx1.example.com")],
    "mx1.example.com": [A("192.0.2.1"), AAAA("2001:db8::1")],
    "mx2.example.com": [A("192.0.2.2")],
    "equal.example.com": [MX(10, "a.example.com"), MX(10, "b.example.com"),
                          MX(10, "c.example.com"), MX(5, "first.example.com")],
    "a.example.com": [A("192.0.2.10")],
    "b.example.com": [A("192.0.2.11")],
    "c.example.com": [A("192.0.2.12")],
    "first.example.com": [A("192.0.2.9")],
    "implicit.example.com": [A("192.0.2.20"), AAAA("2001:db8::20")],
    "nullmx.example.com": [MX(0, "")],
    "alias.example.com": [CNAME("example.com")],
    "mxalias.example.com": [MX(10, "mxcname.example.com")],
    "mxcname.example.com": [CNAME("mx2.example.com")],
    "nohost.example.com": [MX(10, "missing.example.com")],
    "bad.example.com": [MX(10, "servfail.example.com"), MX(20, "mx2.example.com")],
    "loop1.example.com": [CNAME("loop2.example.com")],
    "loop2.example.com": [CNAME("loop1.example.com")],
    "smarthost.example.com": [A("192.0.2.99")],
}  # fmt: skip


def resolver(
    failing: set[str] = frozenset(), error: type[Exception] = dnserror.DNSServerError
) -> Failing:  # type: ignore[assignment]
    return Failing(MemoryAuthority("example.com", ZONE), {n.encode() for n in failing}, error)


def addresses(destinations: list[Destination]) -> list[tuple[str, str]]:
    return [(d.hostname, d.address) for d in destinations]


class MXTests(SynchronousTestCase):
    def route(self, domain: str, router: Router | None = None) -> list[Destination]:
        router = router or Router(resolver(), random=random.Random(1))
        return self.successResultOf(router.destinations(domain))

    def refusal(self, domain: str, router: Router | None = None) -> tuple[int, Any]:
        router = router or Router(resolver(), random=random.Random(1))
        f = self.failureResultOf(router.destinations(domain), RoutingError)
        return f.value.reply.code, f.value.reply.enhanced

    def test_preferenceOrder(self) -> None:
        """MX hosts by preference; each host's IPv6 then IPv4 addresses."""
        self.assertEqual(
            addresses(self.route("example.com")),
            [("mx1.example.com", "2001:db8::1"), ("mx1.example.com", "192.0.2.1"),
             ("mx2.example.com", "192.0.2.2")],
        )  # fmt: skip
        d = self.route("example.com")[0]
        self.assertEqual(
            (d.port, d.tls, d.remote), (25, "opportunistic", "mx1.example.com [2001:db8::1]")
        )

    def test_ipv4First(self) -> None:
        """addressOrder puts IPv4 first, or leaves IPv6 out."""
        router = Router(resolver(), addressOrder=("ipv4", "ipv6"))
        self.assertEqual(addresses(self.route("example.com", router))[:2],
                         [("mx1.example.com", "192.0.2.1"), ("mx1.example.com", "2001:db8::1")])  # fmt: skip
        router = Router(resolver(), addressOrder=("ipv4",))
        self.assertEqual(len(self.route("example.com", router)), 2)
        self.assertRaises(ValueError, Router, resolver(), addressOrder=("ipx",))

    def test_equalPreferenceRandom(self) -> None:
        """Hosts of equal preference come in random order (seeded here), after the better ones."""
        orders = set()
        for seed in range(20):
            router = Router(resolver(), random=random.Random(seed))
            found = [h for h, _ in addresses(self.route("equal.example.com", router))]
            self.assertEqual(found[0], "first.example.com")
            self.assertEqual(
                sorted(found[1:]), ["a.example.com", "b.example.com", "c.example.com"]
            )
            orders.add(tuple(found))
        self.assertGreater(len(orders), 1)
        again = [Router(resolver(), random=random.Random(7)) for _ in range(2)]
        self.assertEqual(*[addresses(self.route("equal.example.com", r)) for r in again])

    def test_implicitMX(self) -> None:
        """No MX: the domain's own AAAA and A records (RFC 5321 5.1)."""
        self.assertEqual(addresses(self.route("implicit.example.com")),
                         [("implicit.example.com", "2001:db8::20"),
                          ("implicit.example.com", "192.0.2.20")])  # fmt: skip

    def test_nullMX(self) -> None:
        """A null MX (RFC 7505) is 556 5.1.10 at once: no address lookups."""
        r = resolver()
        self.assertEqual(self.refusal("nullmx.example.com", Router(r)), (556, (5, 1, 10)))
        self.assertEqual(r.queries, [b"nullmx.example.com"])

    def test_cnameDomain(self) -> None:
        """A domain that is a CNAME is followed to its MX records."""
        self.assertEqual(
            addresses(self.route("alias.example.com"))[-1], ("mx2.example.com", "192.0.2.2")
        )

    def test_cnameMXHost(self) -> None:
        """An MX host that is a CNAME is followed to its address."""
        self.assertEqual(addresses(self.route("mxalias.example.com")),
                         [("mxcname.example.com", "192.0.2.2")])  # fmt: skip

    def test_cnameLoop(self) -> None:
        """A CNAME loop is a temporary failure, not a hang."""
        self.assertEqual(self.refusal("loop1.example.com"), (451, (4, 4, 3)))

    def test_noSuchDomain(self) -> None:
        """NXDOMAIN: 550 5.1.2, for good."""
        self.assertEqual(self.refusal("nowhere.example.com"), (550, (5, 1, 2)))
        router = Router(resolver({"gone.example.com"}, dnserror.DNSNameError))
        self.assertEqual(self.refusal("gone.example.com", router), (550, (5, 1, 2)))

    def test_noAddresses(self) -> None:
        """MX hosts without addresses: 550 5.4.4 (unable to route)."""
        self.assertEqual(self.refusal("nohost.example.com"), (550, (5, 4, 4)))

    def test_servfail(self) -> None:
        """SERVFAIL or a timeout on the MX lookup is temporary: 451 4.4.3."""
        for error in (dnserror.DNSServerError, dnserror.DNSQueryTimeoutError):
            router = Router(resolver({"example.com"}, error))
            self.assertEqual(self.refusal("example.com", router), (451, (4, 4, 3)))

    def test_servfailOneHost(self) -> None:
        """A host whose address lookup fails is skipped; the others are tried."""
        router = Router(resolver({"servfail.example.com"}))
        self.assertEqual(addresses(self.route("bad.example.com", router)),
                         [("mx2.example.com", "192.0.2.2")])  # fmt: skip
        router = Router(resolver({"servfail.example.com", "mx2.example.com"}))
        self.assertEqual(self.refusal("bad.example.com", router), (451, (4, 4, 3)))

    def test_classifiedErrors(self) -> None:
        """
        Each kind of lookup failure, on the MX lookup and on an address lookup:
        NXDOMAIN is final, a DNS failure (SERVFAIL, REFUSED, a timeout, the
        network) is 4.4.3, and nothing is logged for either.
        """
        temporary = (dnserror.DNSServerError, dnserror.DNSQueryRefusedError,
                     dnserror.DNSQueryTimeoutError, defer.TimeoutError, ConnectionRefusedError,
                     internetError.DNSLookupError, internetError.ConnectionLost,
                     dnserror.ResolverError)  # fmt: skip
        for error in temporary:
            router = Router(resolver({"example.com"}, error))
            self.assertEqual(self.refusal("example.com", router), (451, (4, 4, 3)), error)
            router = Router(resolver({"mx1.example.com", "mx2.example.com"}, error))
            self.assertEqual(self.refusal("example.com", router), (451, (4, 4, 3)), error)
        router = Router(resolver({"example.com"}, dnserror.DNSNameError))
        self.assertEqual(self.refusal("example.com", router), (550, (5, 1, 2)))
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_localErrorOnMX(self) -> None:
        """A bug of ours in the MX lookup is logged with its traceback and is 451 4.3.0, not DNS."""
        for error in (TypeError, AttributeError, KeyError):
            router = Router(resolver({"example.com"}, error))
            f = self.failureResultOf(router.destinations("example.com"), RoutingError)
            reply = f.value.reply
            self.assertEqual((reply.code, reply.enhanced), (451, (4, 3, 0)))
            self.assertIn("local error", reply.text.lower())
            self.assertNotIn("DNS", reply.text)
            self.assertEqual(len(self.flushLoggedErrors(error)), 1)

    def test_localErrorOnAddresses(self) -> None:
        """A bug of ours in an address lookup is not a host without addresses: 451 4.3.0, logged."""
        router = Router(resolver({"mx1.example.com"}, AttributeError))
        f = self.failureResultOf(router.destinations("example.com"), RoutingError)
        self.assertEqual(f.value.reply.enhanced, (4, 3, 0))
        self.assertEqual(len(self.flushLoggedErrors(AttributeError)), 1)
        router = Router(resolver({"smarthost.example.com"}, TypeError),
                        smarthost=NextHop("smarthost.example.com"))  # fmt: skip
        f = self.failureResultOf(router.destinations("example.org"), RoutingError)
        self.assertEqual(f.value.reply.enhanced, (4, 3, 0))
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 1)

    def test_maxHosts(self) -> None:
        """At most maxHosts MX hosts are looked up."""
        router = Router(resolver(), maxHosts=1)
        self.assertEqual(
            {h for h, _ in addresses(self.route("example.com", router))}, {"mx1.example.com"}
        )

    def test_addressLiterals(self) -> None:
        """user@[192.0.2.5] and user@[IPv6:2001:db8::5] go to that address, no DNS."""
        r = resolver()
        router = Router(r)
        [d] = self.route("[192.0.2.5]", router)
        self.assertEqual((d.address, d.port, d.remote), ("192.0.2.5", 25, "[192.0.2.5]"))
        [d] = self.route("[IPv6:2001:db8::5]", router)
        self.assertEqual(d.address, "2001:db8::5")
        self.assertEqual(r.queries, [])
        self.assertEqual(self.refusal("[tag:stuff]", router)[0], 550)

    def test_idn(self) -> None:
        """A UTF-8 domain is looked up by its A-label form."""
        r = resolver()
        self.failureResultOf(Router(r).destinations("bücher.example.com"), RoutingError)
        self.assertEqual(r.queries[0], b"xn--bcher-kva.example.com")


class RouteTests(SynchronousTestCase):
    def test_smarthost(self) -> None:
        """A smarthost takes every domain, with the verify policy by default."""
        router = Router(resolver(), smarthost=parseNextHop("tcp:smarthost.example.com:587"))
        [d] = self.successResultOf(router.destinations("anything.example"))
        self.assertEqual(
            (d.hostname, d.address, d.port, d.tls),
            ("smarthost.example.com", "192.0.2.99", 587, "verify"),
        )
        self.assertEqual(router.routeKey("a.example"), "nexthop smarthost.example.com:587")
        self.assertEqual(router.routeKey("b.example"), router.routeKey("a.example"))

    def test_smarthostByAddress(self) -> None:
        """A smarthost given by IP address needs no DNS; on loopback it defaults to opportunistic."""
        r = resolver()
        router = Router(r, smarthost=parseNextHop("127.0.0.1:2525"))
        [d] = self.successResultOf(router.destinations("x.example"))
        self.assertEqual((d.address, d.port, d.tls), ("127.0.0.1", 2525, "opportunistic"))
        self.assertEqual(r.queries, [])
        router = Router(r, smarthost=parseNextHop("192.0.2.9:2525"))
        self.assertEqual(self.successResultOf(router.destinations("x.example"))[0].tls, "verify")
        router = Router(r, smarthost=parseNextHop("[::1]:2525", tls="verify"))
        self.assertEqual(self.successResultOf(router.destinations("x.example"))[0].tls, "verify")

    def test_smarthostNotFound(self) -> None:
        """A smarthost name that does not resolve is temporary (our configuration, not the sender's)."""
        router = Router(resolver(), smarthost=NextHop("missing.example.com"))
        f = self.failureResultOf(router.destinations("x.example"), RoutingError)
        self.assertEqual(f.value.reply.code, 451)

    def test_domainRoutes(self) -> None:
        """Per-domain routes: local, a host, subdomains with a leading dot; the rest MX."""
        router = Router(resolver(), routes={
            "local.example": "local",
            "Other.Example": "tcp:192.0.2.50:2525",
            ".sub.example": {"host": "192.0.2.51", "tls": "none"},
        })  # fmt: skip
        self.assertTrue(router.isLocal("LOCAL.example"))
        self.assertFalse(router.isLocal("example.com"))
        self.assertEqual(router.routeKey("local.example"), LOCAL)
        self.assertEqual(router.routeKey("a.sub.example"), "nexthop 192.0.2.51:25")
        self.assertEqual(router.routeKey("Example.COM"), "mx example.com")
        self.assertIsNone(router.routeFor("sub.example"))
        [d] = self.successResultOf(router.destinations("other.example"))
        self.assertEqual((d.address, d.port, d.tls), ("192.0.2.50", 2525, "opportunistic"))
        [d] = self.successResultOf(router.destinations("x.sub.example"))
        self.assertEqual(d.tls, "none")
        self.failureResultOf(router.destinations("local.example"), RoutingError)

    def test_routeOverSmarthost(self) -> None:
        """A domain route wins over the smarthost; address literals never go to the smarthost."""
        router = Router(
            resolver(), smarthost=NextHop("192.0.2.99"), routes={"example.com": "mx:example.com"}
        )
        self.assertEqual(router.routeKey("example.com"), "nexthop mx:example.com:25")
        found = self.successResultOf(router.destinations("example.com"))
        self.assertEqual(found[-1].address, "192.0.2.2")
        self.assertEqual(router.routeKey("[192.0.2.1]"), "mx [192.0.2.1]")

    def test_parseNextHop(self) -> None:
        """Next hops from endpoint strings and host:port forms."""
        cases = {
            "tcp:mx.example:2525": ("mx.example", 2525, False),
            "tcp:host=mx.example:port=26": ("mx.example", 26, False),
            "mx.example:587": ("mx.example", 587, False),
            "mx.example": ("mx.example", 25, False),
            "[2001:db8::1]:2525": ("2001:db8::1", 2525, False),
            "[IPv6:2001:db8::1]": ("2001:db8::1", 25, False),
            "mx:example.net": ("example.net", 25, True),
            "tls:smtp.example.net": ("smtp.example.net", 465, False),
            "ssl:smtp.example.net:2465": ("smtp.example.net", 2465, False),
        }
        for text, (host, port, mx) in cases.items():
            hop = parseNextHop(text)
            self.assertEqual((hop.host, hop.port, hop.mx), (host, port, mx), text)
        self.assertEqual(str(parseNextHop("[2001:db8::1]:2525")), "[2001:db8::1]:2525")
        self.assertTrue(parseNextHop("tls:smtp.example.net").implicitTLS)
        self.assertEqual(str(parseNextHop("tls:smtp.example.net")), "tls:smtp.example.net:465")
        hop = Router.fromConfig(
            {"smarthost": {"host": "smtp.example.net", "implicit-tls": True}}
        ).smarthost
        self.assertEqual((hop.port, hop.implicitTLS), (465, True))  # type: ignore[union-attr]
        self.assertRaises(ValueError, parseNextHop, "unix:/var/run/smtp")
        self.assertRaises(ValueError, parseNextHop, "mx.example:0")
        self.assertRaises(ValueError, NextHop, "mx.example", tls="maybe")

    def test_fromConfig(self) -> None:
        """A router from plain data: smarthost table with credentials, routes, policies."""
        router = Router.fromConfig({
            "smarthost": {"host": "smarthost.example.com", "port": 587, "username": "u",
                          "password": "p", "tls-hostname": "smtp.example.com"},
            "routes": {"local.example": "local", "lan.example": "tcp:192.0.2.7:25"},
            "tls": "require",
            "route_tls": "none",
            "addressOrder": ["ipv4"],
        }, resolver=resolver())  # fmt: skip
        assert router.smarthost is not None
        self.assertEqual(router.smarthost.credentials, Credentials("u", "p"))
        [d] = self.successResultOf(router.destinations("far.example"))
        self.assertEqual(
            (d.port, d.tls, d.tlsHostname, d.credentials),
            (587, "verify", "smtp.example.com", Credentials("u", "p")),
        )
        [d] = self.successResultOf(router.destinations("lan.example"))
        self.assertEqual(d.tls, "none")
        self.assertTrue(router.isLocal("local.example"))
        self.assertEqual(router.mxTLS, "require")
        self.assertEqual(router.addressOrder, ("ipv4",))

    def test_fromConfigErrors(self) -> None:
        """Bad configuration data is a ValueError with one line."""
        for config in ({"smarthost": "local"}, {"routes": {"a.example": {"port": 25}}},
                       {"tls": "sometimes"}, {"bogus": 1}, {"routes": ["a"]},
                       {"routes": {"a.example": {"host": "h", "colour": "red"}}}):  # fmt: skip
            self.assertRaises(ValueError, Router.fromConfig, config, resolver=resolver())
