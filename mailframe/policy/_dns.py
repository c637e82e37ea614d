"""
Asynchronous DNS for the security checks: L{AsyncDNS} asks a
C{twisted.names} resolver (any L{IResolver}: the system's, or
L{mailframe.policy.testing.MemoryResolver} in tests) and turns its answers
into plain L{Answer} values, with one timeout on the given clock.

Outcomes are three, as SPF, DKIM and DMARC want them (RFC 7208 5, RFC 7489
6.6.3): answers; no answers (the name does not exist, or has no record of
that type: an empty list); or L{DNSTemporaryError} (SERVFAIL, a refusal, a
timeout), which the checks report as C{temperror}.

Owns: the query types the checks need (A, AAAA, MX, PTR, TXT), the
conversion of records, the timeout, and the process's default resolver.
Must not: block (every lookup is a Deferred), or cache beyond what the
resolver does (C{twisted.names.client.createResolver} has its own cache).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.names import dns, error
from twisted.python.failure import Failure

__all__ = [
    "Answer",
    "AsyncDNS",
    "DNSTemporaryError",
    "defaultResolver",
    "reverseName",
]

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


_defaults: dict[int, Any] = {}


def defaultResolver(reactor: Any) -> Any:
    """
    The system's resolver (C{/etc/resolv.conf}, C{/etc/hosts}, with a
    cache), made once per reactor and shared by every check.
    """
    key = id(reactor)
    if key not in _defaults:
        from twisted.names import client

        _defaults[key] = client.createResolver()
    return _defaults[key]
