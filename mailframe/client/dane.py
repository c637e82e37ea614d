"""
DANE for SMTP (RFC 7672): TLSA records (L{TLSA}, L{parseTLSA}), which of
them SMTP can use (DANE-TA(2) and DANE-EE(3), selectors 0 and 1, matching
types 0, 1 and 2: L{TLSA.usable}), matching a server's certificate chain
against them (L{DANECheck}), and the TLSA lookup of one MX host
(L{lookupTLSA}) through the process's resolver, trusted only when it set
the AD bit.

The decisions, as RFC 7672 2.2 and 3 make them:

  - no TLSA records, an insecure answer (no AD), or no such name: no DANE
    for the host (the next policy decides: MTA-STS, or opportunistic TLS);
  - usable records: TLS is mandatory and the certificate must match one
    (DANE-EE: the server's own certificate or key, names and dates not
    checked; DANE-TA: a certificate of the chain the server sent, the
    chain below it signed by it, the server's certificate current and
    naming the MX host or the recipient domain);
  - records, none usable: TLS is mandatory, the certificate not checked;
  - the lookup failed (SERVFAIL, which a validating resolver answers for
    bogus data, or a timeout): the host is not used.

Owns: TLSA parsing and matching, and the lookup.  Must not: connect,
choose hosts (L{mailframe.client.tlspolicy} does), or validate DNSSEC
itself (the resolver does; its AD bit is believed only as the operator
says, see the C{dane} setting).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.names import dns
from twisted.names import error as dnserror

from mailframe.policy._dns import isAuthenticated

__all__ = [
    "DANE_EE",
    "DANE_TA",
    "TLSA",
    "TLSA_TYPE",
    "DANECheck",
    "TLSALookup",
    "lookupTLSA",
    "parseTLSA",
    "tlsaName",
]

TLSA_TYPE = 52
DANE_TA = 2
DANE_EE = 3
_DIGESTS = {1: 32, 2: 64}


@dataclass(frozen=True)
class TLSA:
    """One TLSA record: usage, selector, matching type and the associated data."""

    usage: int
    selector: int
    matching: int
    data: bytes

    @property
    def usable(self) -> bool:
        """True for DANE-TA(2) or DANE-EE(3), selector 0 or 1, matching 0, 1 or 2, well formed."""
        if self.usage not in (DANE_TA, DANE_EE) or self.selector not in (0, 1):
            return False
        if self.matching == 0:
            return bool(self.data)
        return _DIGESTS.get(self.matching) == len(self.data)

    def matches(self, certificate: x509.Certificate) -> bool:
        """True if C{certificate} (its whole DER, or its key) is what this record names."""
        if self.selector == 0:
            blob = certificate.public_bytes(Encoding.DER)
        else:
            blob = certificate.public_key().public_bytes(
                Encoding.DER, PublicFormat.SubjectPublicKeyInfo
            )
        if self.matching == 1:
            blob = hashlib.sha256(blob).digest()
        elif self.matching == 2:
            blob = hashlib.sha512(blob).digest()
        return blob == self.data

    def __str__(self) -> str:
        return f"{self.usage} {self.selector} {self.matching} {self.data.hex()[:16]}"


def parseTLSA(rdata: bytes) -> TLSA | None:
    """A L{TLSA} from its wire form (RFC 6698 2.1), or None if too short."""
    if len(rdata) < 4:
        return None
    return TLSA(rdata[0], rdata[1], rdata[2], bytes(rdata[3:]))


def tlsaName(host: str, port: int = 25) -> str:
    """C{_25._tcp.mx.example.org}."""
    return f"_{port}._tcp.{host.rstrip('.').lower()}"


def _hostnameMatches(certificate: x509.Certificate, names: Iterable[str]) -> bool:
    from service_identity import CertificateError, VerificationError
    from service_identity.cryptography import verify_certificate_hostname

    for name in names:
        if not name:
            continue
        try:
            verify_certificate_hostname(certificate, name)
        except (VerificationError, CertificateError, ValueError):
            continue
        return True
    return False


def _issuedBy(child: x509.Certificate, parent: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(parent)
    except Exception:  # a wrong issuer, a bad signature, an unsupported key
        return False
    return True


class DANECheck:
    """
    The check of one server's certificate chain against C{records} (its
    usable TLSA records): C{names} are the reference identifiers for
    DANE-TA (the MX host name, then the recipient domain); C{clock} tells
    the time for DANE-TA's dates.
    """

    def __init__(
        self, records: Sequence[TLSA], names: Sequence[str], clock: IReactorTime | None = None
    ) -> None:
        self.records = tuple(r for r in records if r.usable)
        self.names = tuple(n.rstrip(".").lower() for n in names if n)
        self.clock = clock

    def _now(self) -> datetime:
        if self.clock is None:
            return datetime.now(UTC)
        return datetime.fromtimestamp(self.clock.seconds(), UTC)

    def verify(self, chain: Sequence[x509.Certificate]) -> str | None:
        """
        None if C{chain} (the server's certificate first, as the server sent
        it) matches a usable record; else why not, in one line.
        """
        if not chain:
            return "the server sent no certificate"
        leaf = chain[0]
        for record in self.records:
            if record.usage == DANE_EE and record.matches(leaf):
                return None
        anchors = [r for r in self.records if r.usage == DANE_TA]
        if not anchors:
            return "the server's certificate matches no TLSA record"
        for depth, certificate in enumerate(chain):
            if not any(r.matches(certificate) for r in anchors):
                continue
            if not all(_issuedBy(chain[i], chain[i + 1]) for i in range(depth)):
                continue
            now = self._now()
            if not leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc:
                return "the server's certificate is outside its validity period"
            if not _hostnameMatches(leaf, self.names):
                return f"the server's certificate does not name {' or '.join(self.names)}"
            return None
        return "no certificate of the server's chain matches a TLSA record"


@dataclass(frozen=True)
class TLSALookup:
    """
    What DNS said about a host's TLSA records: C{state} is C{"none"} (no
    DANE for it), C{"usable"} (TLS and a match required), C{"unusable"}
    (TLS required, certificate not checked) or C{"failed"} (do not use the
    host); C{records} the records found; C{reason} a line for the logs.
    """

    state: str
    records: tuple[TLSA, ...] = ()
    reason: str = ""

    @property
    def usableRecords(self) -> tuple[TLSA, ...]:
        return tuple(r for r in self.records if r.usable)


_TEMPORARY = (
    dnserror.DNSServerError,
    dnserror.DNSQueryRefusedError,
    dnserror.DNSQueryTimeoutError,
    dnserror.ResolverError,
    defer.TimeoutError,
    defer.CancelledError,
    OSError,
)


async def lookupTLSA(
    resolver: Any, host: str, clock: IReactorTime, port: int = 25, timeout: float = 10.0
) -> TLSALookup:
    """
    The TLSA records of C{host} (C{_25._tcp.HOST}) through C{resolver} (an
    C{IResolver} whose answers keep the AD bit: L{mailframe.policy._dns}),
    as a L{TLSALookup}.  Never fails.
    """
    name = tlsaName(host, port)
    d = defer.maybeDeferred(resolver.query, dns.Query(name, TLSA_TYPE, dns.IN))
    d.addTimeout(timeout, clock)
    try:
        result = await d
    except Exception as e:
        if isinstance(e, dnserror.DNSNameError | dnserror.AuthoritativeDomainError) or (
            type(e) is dnserror.DomainError
        ):  # no such name; or no resolver of the chain has it
            return TLSALookup("none", (), f"no TLSA records at {name}")
        if isinstance(e, (*_TEMPORARY, dnserror.DomainError)):
            why = "SERVFAIL" if isinstance(e, dnserror.DNSServerError) else type(e).__name__
            return TLSALookup("failed", (), f"TLSA lookup of {name} failed ({why})")
        raise
    answers = result[0] if isinstance(result, tuple) else result
    records = []
    for rr in answers:
        if rr.type != TLSA_TYPE:
            continue
        raw = getattr(rr.payload, "data", None)
        if not isinstance(raw, bytes):
            continue
        record = parseTLSA(raw)
        if record is not None:
            records.append(record)
    if not records:
        return TLSALookup("none", (), f"no TLSA records at {name}")
    if not isAuthenticated(result):
        return TLSALookup("none", tuple(records), f"TLSA records of {name} are not DNSSEC-signed")
    if any(r.usable for r in records):
        return TLSALookup("usable", tuple(records), f"{len(records)} TLSA records at {name}")
    return TLSALookup("unusable", tuple(records), f"no usable TLSA record at {name}")
