"""
L{DNSBL}: DNS block lists and allow lists (RFC 5782), an
L{IConnectionFilter}.  For a client at 192.0.2.1 it looks up
C{1.2.0.192.ZONE} (IPv6: the 32 reversed nibbles) in every zone at once,
with twisted.names, before the greeting.  A client listed on an allow
list (DNSWL) is not checked further; a client listed on a block list is
greeted with C{554 5.7.1} naming the zone and quoting its TXT record
(RFC 5321 3.1: it may then only QUIT).

Only answers in 127.0.0.0/8 count as listings, and not 127.255.255.0/24,
the range lists use to say "your query was refused" (Spamhaus returns
127.255.255.254 to public resolvers).  A zone may be given the codes
that count (C{zen.example=127.0.0.2;127.0.0.3}).  A lookup that fails or
times out counts as not listed (the check fails open, and says so in the
log).  Clients in the relay networks are not checked.

Owns: the queries, the verdict and the reply.  Must not: block, or use
the global reactor (the resolver and clock are given).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from mailframe.envelope import SessionInfo
from mailframe.interfaces import IConnectionFilter
from mailframe.policy import isTrusted
from mailframe.policy._dns import AsyncDNS, DNSTemporaryError
from mailframe.reply import Reply, SMTPError, clientText

if TYPE_CHECKING:
    from twisted.python.failure import Failure

    from mailframe.config import ServerConfig

__all__ = ["DNSBL", "Zone", "queryName"]

log = Logger(namespace="mailframe.dnsbl")

_LISTED = ipaddress.ip_network("127.0.0.0/8")
_REFUSED_QUERY = ipaddress.ip_network("127.255.255.0/24")


@dataclass(frozen=True)
class Zone:
    """A list's DNS zone, and the answers that count (all of 127/8 when empty)."""

    name: str
    codes: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, text: str) -> Zone:
        """C{zen.example} or C{zen.example=127.0.0.2;127.0.0.4}."""
        name, _, codes = text.strip().partition("=")
        name = name.strip().rstrip(".").lower()
        if not name or "." not in name or any(c.isspace() for c in name):
            raise ValueError(f"not a DNS zone: {text!r}")
        found = frozenset(c.strip() for c in codes.split(";") if c.strip())
        for code in found:
            try:
                ipaddress.IPv4Address(code)
            except ValueError:
                raise ValueError(f"bad answer code {code!r} for zone {name}") from None
        return cls(name, found)

    def counts(self, answer: str) -> bool:
        """True if C{answer} (an A record's address) means listed."""
        try:
            address = ipaddress.IPv4Address(answer)
        except ValueError:
            return False
        if address not in _LISTED or address in _REFUSED_QUERY:
            return False
        return not self.codes or answer in self.codes


def queryName(host: str, zone: str) -> str:
    """The name to look up for a client address in a zone (RFC 5782 2.1, 2.4)."""
    address = ipaddress.ip_address(host.partition("%")[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if isinstance(address, ipaddress.IPv4Address):
        prefix = ".".join(reversed(str(address).split(".")))
    else:
        prefix = ".".join(reversed(address.exploded.replace(":", "")))
    return f"{prefix}.{zone}"


@implementer(IConnectionFilter)
class DNSBL:
    """
    Refuses clients listed in C{zones} unless listed in C{allow}.

    @param dns: an L{AsyncDNS} (its timeout bounds each lookup).
    @param zones: block lists (L{Zone} or strings for L{Zone.parse}).
    @param allow: allow lists, checked first.
    @param config: the L{ServerConfig}, for its relay networks (optional).
    @param refuse: False to only log listed clients (a trial run).
    """

    def __init__(
        self,
        dns: AsyncDNS,
        zones: Iterable[Zone | str],
        allow: Iterable[Zone | str] = (),
        config: ServerConfig | None = None,
        refuse: bool = True,
    ) -> None:
        self.dns = dns
        self.zones = tuple(z if isinstance(z, Zone) else Zone.parse(z) for z in zones)
        self.allow = tuple(z if isinstance(z, Zone) else Zone.parse(z) for z in allow)
        if not self.zones and not self.allow:
            raise ValueError("give at least one zone")
        self.config = config
        self.refuse = refuse

    def acceptConnection(self, session: SessionInfo) -> defer.Deferred[Reply | None] | None:
        """Look the client up; a Deferred firing None, or failing with 554 5.7.1."""
        try:
            ipaddress.ip_address(session.peerHost.partition("%")[0])
        except ValueError:
            return None  # not an IP client (a UNIX socket, a test transport)
        if isTrusted(session, self.config) or not self.zones:
            return None
        d = self._listed(session.peerHost, self.allow) if self.allow else defer.succeed([])
        return d.addCallback(self._afterAllow, session)

    def _afterAllow(self, allowed: list[tuple[Zone, list[str]]], session: SessionInfo) -> Any:
        if allowed:
            log.info(
                "{id} {peer} on allow list {zone}: block lists skipped",
                id=session.sessionID,
                peer=session.peer,
                zone=allowed[0][0].name,
            )
            return None
        return self._listed(session.peerHost, self.zones).addCallback(self._verdict, session)

    def _verdict(
        self, listed: list[tuple[Zone, list[str]]], session: SessionInfo
    ) -> defer.Deferred[None] | None:
        if not listed:
            return None
        session.dnsblListings = tuple(zone.name for zone, _ in listed)
        zone, _codes = listed[0]
        d = self.dns.txt(queryName(session.peerHost, zone.name))
        d.addErrback(lambda _: [])
        return d.addCallback(self._refuseListed, session, zone)

    def _refuseListed(self, texts: list[bytes], session: SessionInfo, zone: Zone) -> None:
        text = " ".join(t.decode("utf-8", "replace") for t in texts[:1])
        text = clientText(" ".join(text.split()), 300)
        log.info(
            "{id} {peer} listed on {zone}{action}: {text}",
            id=session.sessionID,
            peer=session.peer,
            zone=zone.name,
            action="" if self.refuse else " (not refused: refuse=no)",
            text=text or "-",
        )
        if not self.refuse:
            return None
        message = f"Service unavailable; client [{session.peerHost}] blocked using {zone.name}"
        raise SMTPError(Reply(554, (5, 7, 1), f"{message}: {text}" if text else message))

    def _listed(
        self, host: str, zones: Sequence[Zone]
    ) -> defer.Deferred[list[tuple[Zone, list[str]]]]:
        """The zones listing C{host}, in the given order, with their answers."""
        lookups = [
            self.dns.addresses(queryName(host, zone.name)).addErrback(self._failed, zone, host)
            for zone in zones
        ]
        gathered = defer.gatherResults(lookups, consumeErrors=True)
        return gathered.addCallback(
            lambda results: [
                (zone, codes)
                for zone, answers in zip(zones, results, strict=True)
                if (codes := [a for a in answers if zone.counts(a)])
            ]
        )

    @staticmethod
    def _failed(reason: Failure, zone: Zone, host: str) -> list[str]:
        reason.trap(DNSTemporaryError)
        log.warn(
            "DNS list {zone} could not be asked about {host} ({why}): not counted as listed",
            zone=zone.name,
            host=host,
            why=reason.getErrorMessage(),
        )
        return []
