"""
Where mail for a domain goes: L{Router}, built from plain data with
L{Router.fromConfig}, answers with C{routeFor} (local, a configured
L{NextHop}, or the domain's MX hosts), C{routeKey} (what the queue groups
and limits by) and C{destinations} (the addresses to try, in order).

MX routing (RFC 5321 5.1) with twisted.names: MX hosts in preference
order, random among equal preferences; the domain itself when it has no MX
(implicit MX, from its AAAA and A records); RFC 7505 null MX ends at once
with 556 5.1.10; CNAMEs followed (bounded); IPv6 and IPv4 addresses;
address literals (C{user@[192.0.2.1]}) taken as they are.  A smarthost
sends everything to one host; per-domain routes send a domain (or, with a
leading dot, its subdomains) to a host, or mark it local.

Owns: routing decisions and DNS lookups.  Must not: connect, send mail,
or read configuration files (the caller hands in the data).
"""

from __future__ import annotations

import functools
import ipaddress
import random as _random
import socket
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from twisted.internet import defer
from twisted.internet import error as netError
from twisted.logger import Logger
from twisted.names import dns
from twisted.names import error as dnserror

from mailframe.address import Domain
from mailframe.client.nexthop import (
    LOCAL,
    Destination,
    NextHop,
    configKey,
    nextHopFrom,
    parseNextHop,
)
from mailframe.client.options import (
    TLS_OPPORTUNISTIC,
    TLS_VERIFY,
    checkTLSPolicy,
)
from mailframe.policy._dns import isAuthenticated
from mailframe.reply import Reply

__all__ = [
    "LOCAL",
    "Destination",
    "NextHop",
    "Router",
    "RoutingError",
    "parseNextHop",
]


NULL_MX = Reply(556, (5, 1, 10), "Recipient address has null MX (RFC 7505)")
NO_DOMAIN = Reply(550, (5, 1, 2), "Domain not found: no MX or address records")
NO_ROUTE = Reply(550, (5, 4, 4), "Unable to route: no mail host of the domain has an address")
DNS_FAILURE = Reply(451, (4, 4, 3), "Temporary DNS failure looking up the mail hosts")
LOCAL_ERROR = Reply(451, (4, 3, 0), "Local error looking up the mail hosts; will try again")
BAD_LITERAL = Reply(550, (5, 1, 2), "Cannot route to this address literal")

_MAX_CNAMES = 8

log = Logger(namespace="mailframe.routing")

_DNS_TROUBLE = (
    dnserror.DomainError,  # SERVFAIL, REFUSED, FORMERR ... (no such name is told apart first)
    dnserror.ResolverError,
    defer.TimeoutError,  # DNSQueryTimeoutError among them
    defer.CancelledError,
    netError.ConnectError,  # the TCP retry of a truncated answer
    netError.ConnectionClosed,
    OSError,  # the network under the resolver (DNSLookupError among them)
)
"""What a twisted.names lookup fails with when DNS, not mailframe, is at fault."""


def _nameError(e: BaseException) -> bool:
    """
    True for "no such domain" (NXDOMAIN, or no resolver of a chain knows
    it); False for SERVFAIL, timeouts, refusals, which are temporary.
    (DNSServerError and the others are subclasses of DomainError.)
    """
    if isinstance(e, dnserror.DNSNameError | dnserror.AuthoritativeDomainError):
        return True
    return type(e) is dnserror.DomainError


def _lookupFailed(e: Exception, what: str, name: str) -> bool:
    """
    Call in an C{except} clause around a lookup.  True if C{e} says the
    name does not exist; False for a DNS failure that may pass.  Anything
    else is a bug of ours, not of DNS: its traceback is logged and
    L{RoutingError} raised with L{LOCAL_ERROR} (still temporary).
    """
    if _nameError(e):
        return True
    if isinstance(e, _DNS_TROUBLE):
        return False
    log.failure("looking up the {what} records of {name}", what=what, name=name)
    raise RoutingError(LOCAL_ERROR) from None


class RoutingError(Exception):
    """No destination for a domain: C{reply} is what every recipient gets."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply


def _name(rr: Any) -> str:
    return rr.name.name.decode("ascii", "replace").rstrip(".").lower()


@functools.lru_cache(maxsize=256)  # asked per message: a route's host is one of a few
def _isLoopback(text: str) -> bool:
    try:
        return ipaddress.ip_address(text).is_loopback
    except ValueError:
        return text.lower() == "localhost"


@functools.lru_cache(maxsize=256)
def _isIP(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


class Router:
    """
    Routes domains.  C{resolver} is a twisted.names C{IResolver} (None:
    the system's, L{mailframe.policy._dns.defaultResolver}, shared with the
    checks, found when first needed); C{routes} maps a domain (or
    C{.domain} for its subdomains) to L{LOCAL} or a L{NextHop}; C{smarthost}
    takes every other domain.  C{mxTLS} is the policy for MX delivery,
    C{smarthostTLS} the default for configured hops without their own.
    C{addressOrder}: which address family to try first for each host.
    """

    def __init__(
        self,
        resolver: Any = None,
        *,
        routes: Mapping[str, NextHop | str] | None = None,
        smarthost: NextHop | None = None,
        mxTLS: str = TLS_OPPORTUNISTIC,
        smarthostTLS: str = TLS_VERIFY,
        routeTLS: str = TLS_OPPORTUNISTIC,
        port: int = 25,
        addressOrder: Iterable[str] = ("ipv6", "ipv4"),
        maxHosts: int = 10,
        random: _random.Random | None = None,
    ) -> None:
        self._resolver = resolver
        self.routes: dict[str, NextHop | str] = {}
        for name, hop in (routes or {}).items():
            key = name.strip().lower()
            prefix = "." if key.startswith(".") else ""
            self.routes[prefix + Domain(key.lstrip(".")).key] = nextHopFrom(hop)
        self.smarthost = smarthost
        self.mxTLS = checkTLSPolicy(mxTLS)
        self.smarthostTLS = checkTLSPolicy(smarthostTLS)
        self.routeTLS = checkTLSPolicy(routeTLS)
        self.port = port
        self.addressOrder = tuple(a.lower() for a in addressOrder)
        if not self.addressOrder or set(self.addressOrder) - {"ipv4", "ipv6"}:
            raise ValueError("addressOrder lists 'ipv6' and/or 'ipv4'")
        self.maxHosts = maxHosts
        self.random = random or _random.Random()

    @classmethod
    def fromConfig(
        cls,
        config: Mapping[str, Any],
        resolver: Any = None,
        random: _random.Random | None = None,
    ) -> Router:
        """
        A router from plain data (a TOML table, say), keys in any of
        C{tls-hostname}, C{tls_hostname} or C{tlsHostname} spelling::

            {"smarthost": "tcp:smtp.example.net:587",   # or a table:
             # {"host": ..., "port": 587, "tls": "verify", "username": ...,
             #  "password": ..., "auth-plaintext": False, "tls-hostname": ...},
             "routes": {"example.org": "local", "example.net": "tcp:10.0.0.5:25",
                        ".lan.example": {"host": "10.0.0.6", "tls": "none"}},
             "tls": "opportunistic",        # MX delivery
             "smarthost-tls": "verify",     # hops without their own tls
             "address-order": ["ipv6", "ipv4"], "max-hosts": 10, "port": 25}

        @raise ValueError: one line saying what is wrong.
        """
        data = {configKey(k): v for k, v in config.items()}
        known = {"smarthost", "routes", "tls", "smarthosttls", "routetls", "addressorder",
                 "maxhosts", "port"}  # fmt: skip
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown routing settings: {', '.join(sorted(unknown))}")
        smarthost = None
        if data.get("smarthost"):
            hop = nextHopFrom(data["smarthost"])
            if not isinstance(hop, NextHop):
                raise ValueError("the smarthost cannot be 'local'")
            smarthost = hop
        routes = data.get("routes") or {}
        if not isinstance(routes, Mapping):
            raise ValueError("routes is a table of domain = route")
        return cls(
            resolver,
            routes={str(k): nextHopFrom(v) for k, v in routes.items()},
            smarthost=smarthost,
            mxTLS=str(data.get("tls", TLS_OPPORTUNISTIC)),
            smarthostTLS=str(data.get("smarthosttls", TLS_VERIFY)),
            routeTLS=str(data.get("routetls", TLS_OPPORTUNISTIC)),
            port=int(data.get("port", 25)),
            addressOrder=data.get("addressorder", ("ipv6", "ipv4")),
            maxHosts=int(data.get("maxhosts", 10)),
            random=random,
        )

    @property
    def resolver(self) -> Any:
        if self._resolver is None:
            from mailframe.policy._dns import defaultResolver

            self._resolver = defaultResolver()
        return self._resolver

    # -- decisions ------------------------------------------------------------

    def routeFor(self, domain: Domain | str | None) -> NextHop | str | None:
        """L{LOCAL}, the L{NextHop} for C{domain}, or None for its MX hosts."""
        if domain is None:
            return LOCAL
        key = (Domain(domain) if isinstance(domain, str) else domain).key
        route = self.routes.get(key)
        if route is not None:
            return route
        labels = key.split(".")
        for i in range(1, len(labels)):
            route = self.routes.get("." + ".".join(labels[i:]))
            if route is not None:
                return route
        if self.smarthost is not None and not key.startswith("["):
            return self.smarthost
        return None

    def isLocal(self, domain: Domain | str | None) -> bool:
        """True if C{domain} is routed to the local delivery backend."""
        return self.routeFor(domain) == LOCAL

    def routeKey(self, domain: Domain | str | None) -> str:
        """
        What recipients are grouped by: C{local}, C{nexthop HOST:PORT} or
        C{mx DOMAIN} (recipients with the same key may share one message
        transfer and one connection limit).
        """
        route = self.routeFor(domain)
        if route == LOCAL:
            return LOCAL
        if isinstance(route, NextHop):
            return f"nexthop {route}"
        key = (Domain(domain) if isinstance(domain, str) else domain).key  # type: ignore[union-attr]
        return f"mx {key}"

    def tlsFor(self, route: NextHop | str | None) -> str:
        """
        The TLS policy for a route: its own, else C{smarthostTLS} for the
        smarthost (but C{opportunistic} for a loopback address, where no
        certificate names the host and no network lies in between),
        C{routeTLS} for a domain route, C{mxTLS} for MX delivery.
        """
        if isinstance(route, NextHop):
            if route.tls is not None:
                return route.tls
            if route is not self.smarthost:
                return self.routeTLS
            if _isLoopback(route.host) and self.smarthostTLS == TLS_VERIFY:
                return TLS_OPPORTUNISTIC
            return self.smarthostTLS
        return self.mxTLS

    # -- lookups ----------------------------------------------------------------

    def destinations(self, domain: Domain | str) -> defer.Deferred[list[Destination]]:
        """
        The addresses to try for C{domain}, best first.  Fails with
        L{RoutingError} (null MX, no such domain, temporary DNS failure);
        a local domain has none.
        """
        return defer.ensureDeferred(self._destinations(domain))

    async def _destinations(self, domain: Domain | str) -> list[Destination]:
        dom = Domain(domain) if isinstance(domain, str) else domain
        route = self.routeFor(dom)
        if route == LOCAL:
            raise RoutingError(Reply(550, (5, 4, 4), f"{dom.name} is delivered locally"))
        tls = self.tlsFor(route)
        if isinstance(route, NextHop):
            return await self._nextHop(route, tls)
        if dom.isLiteral:
            return [self._literal(dom, tls)]
        try:
            name = dom.ascii
        except ValueError:
            raise RoutingError(NO_DOMAIN) from None
        return await self._mx(name, tls, self.port, None, permanent=True)

    def _literal(self, dom: Domain, tls: str) -> Destination:
        inner = dom.name[1:-1]
        if inner[:5].lower() == "ipv6:":
            inner = inner[5:]
        if not _isIP(inner):
            raise RoutingError(BAD_LITERAL)
        return Destination(dom.name, inner, self.port, tls)

    async def _nextHop(self, hop: NextHop, tls: str) -> list[Destination]:
        def make(hostname: str, address: str) -> Destination:
            return Destination(hostname, address, hop.port, tls, hop.tlsHostname,
                               hop.credentials, hop.authPlaintext, hop.implicitTLS)  # fmt: skip

        if _isIP(hop.host):
            return [make(hop.host, hop.host)]
        if hop.mx:
            found = await self._mx(hop.host, tls, hop.port, make, permanent=False)
            return found
        addresses, _ = await self._addresses(hop.host)
        if not addresses:
            raise RoutingError(DNS_FAILURE.withText(f"Cannot find the address of {hop.host}"))
        return [make(hop.host, a) for a in addresses]

    async def _mx(
        self,
        name: str,
        tls: str,
        port: int,
        make: Callable[[str, str], Destination] | None,
        permanent: bool,
    ) -> list[Destination]:
        try:
            records, mxSecure = await self._secureQuery(dns.MX, name)
        except Exception as e:
            gone = _lookupFailed(e, "MX", name) and permanent
            raise RoutingError(NO_DOMAIN if gone else DNS_FAILURE) from None
        hosts: list[tuple[int, str]] = []
        nulls = 0
        for rr in records:
            exchange = rr.payload.name.name.decode("ascii", "replace").rstrip(".")
            if not exchange:
                nulls += 1
            else:
                hosts.append((rr.payload.preference, exchange))
        if nulls and not hosts:
            raise RoutingError(NULL_MX)
        implicit = not hosts
        if implicit:
            hosts = [(0, name)]
        ordered = self._order(hosts)[: self.maxHosts]
        out: list[Destination] = []
        anyTemporary = False
        for host in ordered:
            addresses, temporary, secure = await self._secureAddresses(host)
            anyTemporary = anyTemporary or temporary
            for address in addresses:
                if make is not None:
                    out.append(make(host, address))
                else:
                    out.append(Destination(host, address, port, tls, policyDomain=name.lower(),
                                           dnssec=mxSecure and secure))  # fmt: skip
        if out:
            return out
        if anyTemporary or not permanent:
            raise RoutingError(DNS_FAILURE)
        raise RoutingError(NO_DOMAIN if implicit else NO_ROUTE)

    def _order(self, hosts: list[tuple[int, str]]) -> list[str]:
        """By preference; hosts of equal preference in random order (RFC 5321 5.1)."""
        byPreference: dict[int, list[str]] = {}
        for preference, host in hosts:
            group = byPreference.setdefault(preference, [])
            if host.lower() not in (h.lower() for h in group):
                group.append(host)
        out: list[str] = []
        for preference in sorted(byPreference):
            group = byPreference[preference]
            self.random.shuffle(group)
            out.extend(group)
        return out

    async def _addresses(self, host: str) -> tuple[list[str], bool]:
        """The host's addresses in C{addressOrder}, and whether a lookup failed for now."""
        addresses, temporary, _ = await self._secureAddresses(host)
        return addresses, temporary

    async def _secureAddresses(self, host: str) -> tuple[list[str], bool, bool]:
        """
        The host's addresses in C{addressOrder}, whether a lookup failed for
        now, and whether every answer with addresses was DNSSEC-validated.
        """
        found: dict[str, list[str]] = {}
        temporary = False
        secure = True
        for family in self.addressOrder:
            kind = dns.AAAA if family == "ipv6" else dns.A
            try:
                records, validated = await self._secureQuery(kind, host)
            except Exception as e:
                what = "AAAA" if kind == dns.AAAA else "A"
                temporary = temporary or not _lookupFailed(e, what, host)
                records, validated = [], False
            if records and not validated:
                secure = False
            found[family] = [_address(rr.payload) for rr in records]
        out = [a for family in self.addressOrder for a in found[family]]
        return out, temporary, secure and bool(out)

    async def _query(self, kind: int, name: str) -> list[Any]:
        """Records of C{kind} for C{name}, following CNAMEs (at most 8)."""
        records, _ = await self._secureQuery(kind, name)
        return records

    async def _secureQuery(self, kind: int, name: str) -> tuple[list[Any], bool]:
        """
        Records of C{kind} for C{name}, following CNAMEs (at most 8), and
        whether every answer on the way had the AD bit (L{isAuthenticated}).
        """
        lookup = {
            dns.MX: self.resolver.lookupMailExchange,
            dns.A: self.resolver.lookupAddress,
            dns.AAAA: self.resolver.lookupIPV6Address,
        }[kind]
        target = name.rstrip(".").lower()
        steps = 0
        secure = True
        while steps <= _MAX_CNAMES:
            result = await lookup(target)
            answers, _authority, _additional = result
            secure = secure and isAuthenticated(result)
            followed = False
            while steps <= _MAX_CNAMES:
                records = [rr for rr in answers if rr.type == kind and _name(rr) == target]
                if records:
                    return records, secure
                alias = next(
                    (rr for rr in answers if rr.type == dns.CNAME and _name(rr) == target), None
                )
                if alias is None:
                    break
                target = alias.payload.name.name.decode("ascii", "replace").rstrip(".").lower()
                followed = True
                steps += 1
            if not followed:
                return [], secure
        raise dnserror.DNSServerError(f"CNAME chain too long at {name}")


def _address(payload: Any) -> str:
    if isinstance(payload, dns.Record_AAAA):
        return socket.inet_ntop(socket.AF_INET6, payload.address)
    return payload.dottedQuad()
