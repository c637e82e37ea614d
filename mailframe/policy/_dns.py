"""
Asynchronous DNS for the security checks and MX routing: L{AsyncDNS} asks
a C{twisted.names} resolver (any L{IResolver}: the process's
L{CachingResolver}, or L{mailframe.policy.testing.MemoryResolver} in
tests) and turns its answers into plain L{Answer} values, with one timeout
on the given clock.

Outcomes are three, as SPF, DKIM and DMARC want them (RFC 7208 5, RFC 7489
6.6.3): answers; no answers (the name does not exist, or has no record of
that type: an empty list); or L{DNSTemporaryError} (SERVFAIL, a refusal, a
timeout), which the checks report as C{temperror}.

One process has one resolver (L{makeResolver}): the servers of
C{dns-server} (any port), or the C{nameserver} lines of a resolv.conf(5)
file (port 53), behind C{/etc/hosts} and one L{CachingResolver}, which
keeps answers for their TTL and "no such name" / "no such record" answers
for their SOA's negative TTL (RFC 2308), in a bounded table, with no timer:
an entry is dropped when it is found expired.  Every check and the
router share it, so a name looked up by the DNSBL check, SPF and the relay
is asked once.  (C{twisted.names.client.createResolver}'s chain has a cache
that nothing fills, and its resolv.conf parser fixes port 53.)

Owns: the query types the checks need (A, AAAA, MX, PTR, TXT), the
conversion of records, the timeout, the cache, and the process's default
resolver.  Must not: block (every lookup is a Deferred; resolv.conf is
read once, when the resolver is made), or schedule timers.

DNSSEC: the process's resolver asks with the AD bit (RFC 6840 5.7) and
EDNS0's DO bit, and every answer it gives (L{Sections}) keeps the AD bit of
the response it came from (L{isAuthenticated}), so that DANE can trust a
validating resolver on loopback as Postfix does.  Nothing here validates.
"""

from __future__ import annotations

import ipaddress
import socket
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.internet import error as netError
from twisted.internet.interfaces import IReactorTime
from twisted.names import client, common, dns, error
from twisted.python.failure import Failure

__all__ = [
    "DEFAULT_RESOLV_CONF",
    "Answer",
    "AsyncDNS",
    "CachingResolver",
    "DNSSECClient",
    "DNSTemporaryError",
    "Sections",
    "defaultResolver",
    "isAuthenticated",
    "makeResolver",
    "parseServer",
    "readResolvConf",
    "resolverServers",
    "reverseName",
]

DEFAULT_RESOLV_CONF = "/etc/resolv.conf"
HOSTS = "/etc/hosts"

#: The query types the checks use, and the IResolver method of each.
_METHODS = {
    "A": "lookupAddress",
    "AAAA": "lookupIPV6Address",
    "MX": "lookupMailExchange",
    "PTR": "lookupPointer",
    "TXT": "lookupText",
}

_TYPES = {dns.A: "A", dns.AAAA: "AAAA", dns.MX: "MX", dns.PTR: "PTR", dns.TXT: "TXT",
          dns.CNAME: "CNAME"}  # fmt: skip


class DNSTemporaryError(Exception):
    """A lookup failed for now: SERVFAIL, refused, or no answer in time."""


@dataclass(frozen=True)
class Answer:
    """
    One resource record: its owner C{name} (lowercase, no trailing dot), its
    C{type} (C{"A"}, C{"MX"} ...) and C{value}: an address string for A and
    AAAA, C{(preference, exchange)} for MX, a name for PTR and CNAME, and
    the tuple of character strings (bytes) of a TXT record.
    """

    name: str
    type: str
    value: Any


def reverseName(address: str) -> str:
    """The PTR name of an IP address (C{4.3.2.1.in-addr.arpa})."""
    return ipaddress.ip_address(address.partition("%")[0]).reverse_pointer


def _name(value: object) -> str:
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
    return text.rstrip(".").lower()


def _answer(rr: Any) -> Answer | None:
    kind = _TYPES.get(rr.type)
    if kind is None:
        return None
    p = rr.payload
    value: Any
    if kind == "A":
        value = p.dottedQuad()
    elif kind == "AAAA":
        value = socket.inet_ntop(socket.AF_INET6, p.address)
    elif kind == "MX":
        value = (p.preference, _name(p.name.name))
    elif kind == "TXT":
        value = tuple(d if isinstance(d, bytes) else str(d).encode() for d in p.data)
    else:
        value = _name(p.name.name)
    return Answer(_name(rr.name.name), kind, value)


class AsyncDNS:
    """
    Lookups through a C{twisted.names} resolver, each bounded by C{timeout}
    seconds on C{clock}.

    @param resolver: an L{twisted.internet.interfaces.IResolver}.
    """

    def __init__(self, resolver: Any, clock: IReactorTime, timeout: float = 10.0) -> None:
        if timeout <= 0:
            raise ValueError("a DNS timeout must be positive")
        self.resolver = resolver
        self.clock = clock
        self.timeout = timeout

    def lookup(self, name: str, qtype: str) -> defer.Deferred[list[Answer]]:
        """
        The records of C{qtype} for C{name}, with any CNAMEs met on the way.

        @return: a Deferred firing a list of L{Answer} (empty when the name
            does not exist or has no such record), or failing with
            L{DNSTemporaryError}.
        """
        method = getattr(self.resolver, _METHODS[qtype])
        name = name.rstrip(".")
        try:
            d = defer.maybeDeferred(method, name.encode("idna") if not name.isascii() else name)
        except Exception:  # pragma: no cover (maybeDeferred catches)
            d = defer.fail()
        d.addTimeout(self.timeout, self.clock)
        return d.addCallbacks(self._answers, self._failed, errbackArgs=(name, qtype))

    @staticmethod
    def _answers(result: Any) -> list[Answer]:
        records: Iterable[Any] = result[0] if isinstance(result, tuple) else result
        out = []
        for rr in records:
            answer = _answer(rr)
            if answer is not None:
                out.append(answer)
        return out

    @staticmethod
    def _failed(reason: Failure, name: str, qtype: str) -> list[Answer]:
        if reason.check(defer.TimeoutError, defer.CancelledError, error.DNSQueryTimeoutError):
            raise DNSTemporaryError(f"DNS timeout looking up {qtype} {name}")
        if reason.check(error.DNSServerError):
            raise DNSTemporaryError(f"DNS server failure (SERVFAIL) for {qtype} {name}")
        if reason.check(error.DNSQueryRefusedError):
            raise DNSTemporaryError(f"DNS query refused for {qtype} {name}")
        if reason.check(error.DNSNameError, error.AuthoritativeDomainError) or (
            type(reason.value) is error.DomainError
        ):  # NXDOMAIN, or nothing of that type
            return []
        raise DNSTemporaryError(f"DNS error for {qtype} {name}: {reason.getErrorMessage()}")

    # -- conveniences -------------------------------------------------------

    def txt(self, name: str) -> defer.Deferred[list[bytes]]:
        """Each TXT record of C{name} as one byte string (its strings joined)."""
        return self.lookup(name, "TXT").addCallback(
            lambda answers: [b"".join(a.value) for a in answers if a.type == "TXT"]
        )

    def addresses(self, name: str, qtype: str = "A") -> defer.Deferred[list[str]]:
        """The A (or AAAA) addresses of C{name}."""
        return self.lookup(name, qtype).addCallback(
            lambda answers: [a.value for a in answers if a.type == qtype]
        )

    def pointers(self, address: str) -> defer.Deferred[list[str]]:
        """The PTR names of an IP address."""
        return self.lookup(reverseName(address), "PTR").addCallback(
            lambda answers: [a.value for a in answers if a.type == "PTR"]
        )


# -- the process's resolver -----------------------------------------------------------


def parseServer(text: str) -> tuple[str, int]:
    """
    C{ADDRESS}, C{ADDRESS:PORT} or C{[IPV6]:PORT} as (address, port); port
    53 by default.  A name is not an address: the resolver could not find
    its own server.

    @raise ValueError: one line saying what is wrong.
    """
    text = text.strip()
    host, port = text, "53"
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"expected [IPV6]:PORT, not {text!r}")
        port = rest[1:] or "53"
    elif text.count(":") == 1:
        host, port = text.split(":")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"expected an IP address, ADDRESS:PORT or [IPV6]:PORT, not {text!r}"
        ) from None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad port in {text!r}")
    return str(address), int(port)


def readResolvConf(path: str = DEFAULT_RESOLV_CONF) -> list[tuple[str, int]]:
    """
    The servers of a resolv.conf(5) file: its C{nameserver} lines, port 53
    (the file cannot say another); 127.0.0.1 if it names none or does not
    exist, as the C library does.

    @raise OSError: the file exists but cannot be read.
    """
    servers: list[tuple[str, int]] = []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.readlines()
    except FileNotFoundError:
        lines = []
    for line in lines:
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver":
            try:
                servers.append((str(ipaddress.ip_address(words[1].partition("%")[0])), 53))
            except ValueError:
                continue
    return servers or [("127.0.0.1", 53)]


def _soaTTL(records: Iterable[Any]) -> float | None:
    """The negative TTL an SOA in C{records} gives (RFC 2308 5), or None."""
    for rr in records:
        if rr.type == dns.SOA:
            return float(min(rr.ttl, rr.payload.minimum))
    return None


class CachingResolver(common.ResolverBase):
    """
    An L{IResolver} that keeps what C{upstream} (another IResolver) answers:
    answers for the lowest TTL of their records, "no such name" (NXDOMAIN)
    and "no such record" answers for the negative TTL of the SOA that comes
    with them (none: not kept), each at most C{maxTTL} / C{maxNegativeTTL}
    seconds.  Failures for now (SERVFAIL, timeouts) are never kept.  At most
    C{maxEntries} names are kept, the least recently used going first;
    expired entries go when they are next asked for.  No timer is ever
    scheduled.

    C{hits} and C{misses} count the lookups answered from the table and not.
    """

    def __init__(
        self,
        upstream: Any,
        clock: IReactorTime,
        maxEntries: int = 10000,
        maxTTL: float = 86400.0,
        maxNegativeTTL: float = 3600.0,
    ) -> None:
        super().__init__()
        if maxEntries < 1:
            raise ValueError("maxEntries must be at least 1")
        self.upstream = upstream
        self.clock = clock
        self.maxEntries = maxEntries
        self.maxTTL = maxTTL
        self.maxNegativeTTL = maxNegativeTTL
        self.hits = 0
        self.misses = 0
        self._table: OrderedDict[tuple[str, int, int], tuple[float, Any, bool]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._table)

    def clear(self) -> None:
        """Forget every entry."""
        self._table.clear()

    def _lookup(self, name: Any, cls: int, type: int, timeout: Any) -> defer.Deferred[Any]:
        text = name.decode("ascii", "replace") if isinstance(name, bytes) else str(name)
        key = (text.rstrip(".").lower(), type, cls)
        entry = self._table.get(key)
        if entry is not None:
            expires, value, failed = entry
            if expires > self.clock.seconds():
                self.hits += 1
                self._table.move_to_end(key)
                return defer.fail(value) if failed else defer.succeed(value)
            del self._table[key]
        self.misses += 1
        d = defer.maybeDeferred(self.upstream.query, dns.Query(name, type, cls), timeout)
        return d.addCallbacks(
            self._answered, self._failed, callbackArgs=(key,), errbackArgs=(key,)
        )

    def _keep(
        self, key: tuple[str, int, int], ttl: float | None, value: Any, failed: bool
    ) -> None:
        if ttl is None or ttl <= 0:
            return
        table = self._table
        table[key] = (self.clock.seconds() + ttl, value, failed)
        table.move_to_end(key)
        while len(table) > self.maxEntries:
            table.popitem(last=False)

    def _answered(self, result: Any, key: tuple[str, int, int]) -> Any:
        answers, authority, _ = result
        if answers:
            ttl: float | None = min(min(rr.ttl for rr in answers), self.maxTTL)
        else:  # NODATA: the name exists, without a record of this type
            ttl = _soaTTL(authority)
            ttl = None if ttl is None else min(ttl, self.maxNegativeTTL)
        self._keep(key, ttl, result, False)
        return result

    def _failed(self, reason: Failure, key: tuple[str, int, int]) -> Failure:
        value = reason.value
        if isinstance(value, error.DNSNameError):  # NXDOMAIN, with the server's message
            message = value.args[0] if value.args else None
            ttl = _soaTTL(getattr(message, "authority", ()))
            if ttl is not None:
                self._keep(key, min(ttl, self.maxNegativeTTL), value, True)
        return reason


class Sections(tuple):
    """
    The (answers, authority, additional) of one response, as twisted.names
    gives them, with C{authenticData}: the AD bit of the response (the
    resolver validated it with DNSSEC).
    """

    authenticData: bool = False

    def __new__(cls, sections: Iterable[Any], authenticData: bool = False) -> Sections:
        self = super().__new__(cls, sections)
        self.authenticData = authenticData
        return self


def isAuthenticated(result: object) -> bool:
    """
    True if C{result} (an answer of an C{IResolver}, or the L{error.DomainError}
    of a "no such name" answer) came with the AD bit set.
    """
    if getattr(result, "authenticData", False):
        return True
    message = getattr(result, "args", (None,))[0] if getattr(result, "args", None) else None
    return bool(getattr(message, "authenticData", False))


def _dnssecBytes(message: Any) -> bytes:
    """C{message} with AD set (RFC 6840 5.7) and an EDNS0 OPT record with DO (RFC 3225)."""
    message.authenticData = 1
    if not any(getattr(rr, "type", None) == dns.OPT for rr in message.additional):
        message.additional.append(dns._OPTHeader(udpPayloadSize=1232, dnssecOK=True))
    return bytes(message.toStr())


class _DNSSECDatagram(dns.DNSDatagramProtocol):
    def writeMessage(self, message: Any, address: Any) -> None:
        self.transport.write(_dnssecBytes(message), address)


class _DNSSECStream(dns.DNSProtocol):
    def writeMessage(self, message: Any) -> None:
        self.sendString(_dnssecBytes(message))


class _DNSSECStreamFactory(client.DNSClientFactory):
    def buildProtocol(self, addr: Any) -> _DNSSECStream:
        p = _DNSSECStream(self.controller)
        p.factory = self
        return p


class DNSSECClient(client.Resolver):
    """
    A C{twisted.names.client.Resolver} whose queries carry the AD and DO
    bits and whose answers are L{Sections} keeping the response's AD bit.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.factory = _DNSSECStreamFactory(self, getattr(self.factory, "timeout", 10))

    def _connectedProtocol(self, interface: str = "") -> _DNSSECDatagram:
        proto = _DNSSECDatagram(self, reactor=self._reactor)
        for _ in range(1000):  # bounded, as twisted.names' own
            try:
                self._reactor.listenUDP(dns.randomSource(), proto, interface=interface)
            except netError.CannotListenError:
                continue
            return proto
        raise netError.CannotListenError(interface, 0, OSError("no UDP port for DNS"))

    def filterAnswers(self, message: Any) -> Any:
        if message.trunc:
            return self.queryTCP(message.queries).addCallback(self.filterAnswers)
        if message.rCode != dns.OK:
            return Failure(self.exceptionForCode(message.rCode)(message))
        return Sections(
            (message.answers, message.authority, message.additional),
            bool(message.authenticData),
        )


def resolverServers(resolver: Any) -> tuple[tuple[str, int], ...] | None:
    """
    The DNS servers a resolver of L{makeResolver} asks, or None for another
    kind of resolver (whose servers are not known).
    """
    upstream = getattr(resolver, "upstream", None)
    for r in getattr(upstream, "resolvers", ()):
        if isinstance(r, client.Resolver):
            return tuple((str(h), int(p)) for h, p in r.servers)
    return None


def makeResolver(
    reactor: Any,
    servers: Sequence[tuple[str, int]] = (),
    resolvConf: str | None = None,
    hosts: str | None = HOSTS,
    timeout: Sequence[int] = (1, 3, 11, 45),
) -> CachingResolver:
    """
    The resolver of one process: C{hosts} first (for A and AAAA), then the
    DNS C{servers}, or those of the resolv.conf C{resolvConf} (default
    C{/etc/resolv.conf}), asked in turn with C{timeout} (seconds before each
    retry); all behind one L{CachingResolver}.  C{resolvConf} is read now,
    once.  Queries carry the AD and DO bits (L{DNSSECClient}).

    @raise OSError: C{resolvConf} cannot be read.
    """
    from twisted.names import hosts as hostsModule
    from twisted.names import resolve

    found = list(servers) or readResolvConf(resolvConf or DEFAULT_RESOLV_CONF)
    chain: list[Any] = []
    if hosts:
        chain.append(hostsModule.Resolver(hosts.encode()))
    chain.append(DNSSECClient(servers=found, timeout=tuple(timeout), reactor=reactor))
    return CachingResolver(resolve.ResolverChain(chain), reactor)


_defaults: dict[int, CachingResolver] = {}


def defaultResolver(reactor: Any = None) -> CachingResolver:
    """
    The system's resolver (C{/etc/hosts}, then C{/etc/resolv.conf}'s
    servers, with a cache: L{makeResolver}), made once per reactor and
    shared by every check and router not given one.  C{reactor} None is the
    global reactor.
    """
    if reactor is None:
        from twisted.internet import reactor as globalReactor

        reactor = globalReactor
    key = id(reactor)
    if key not in _defaults:
        _defaults[key] = makeResolver(reactor)
    return _defaults[key]
