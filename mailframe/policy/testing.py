"""
L{MemoryResolver}: an in-memory C{twisted.names} resolver for testing the
security checks (and third-party plug-ins that look names up) without a
network, the way C{MemoryReactor} stands in for the reactor.

Records are given as plain values; a name can instead be made to fail with
SERVFAIL, to refuse, or to never answer (a timeout, once the caller's clock
passes its limit).

Owns: serving records from a dict.  Must not: touch the network, the
reactor, or any global state.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.names import dns, error
from twisted.names.common import ResolverBase

if TYPE_CHECKING:
    from mailframe.envelope import Envelope, SessionInfo
    from mailframe.message import Message

__all__ = [
    "NEVER",
    "REFUSED",
    "SERVFAIL",
    "MemoryResolver",
    "makeEnvelope",
    "makeMessage",
    "makeSession",
]

SERVFAIL = "SERVFAIL"
"""A name whose every lookup fails with a server failure."""
REFUSED = "REFUSED"
"""A name whose every lookup is refused."""
NEVER = "NEVER"
"""A name whose lookups never answer (the caller's timeout decides)."""

_TYPES = {"A": dns.A, "AAAA": dns.AAAA, "MX": dns.MX, "PTR": dns.PTR, "TXT": dns.TXT,
          "CNAME": dns.CNAME}  # fmt: skip
_NAMES = {v: k for k, v in _TYPES.items()}


def _payload(qtype: str, value: Any) -> dns.IEncodableRecord:
    if qtype == "A":
        return dns.Record_A(value)
    if qtype == "AAAA":
        return dns.Record_AAAA(value)
    if qtype == "MX":
        preference, exchange = value
        return dns.Record_MX(preference, exchange.encode())
    if qtype in ("PTR", "CNAME"):
        cls = dns.Record_PTR if qtype == "PTR" else dns.Record_CNAME
        return cls(value.encode())
    if isinstance(value, str):
        value = value.encode()
    if isinstance(value, bytes):  # long strings split as a zone file would
        value = [value[i : i + 255] for i in range(0, len(value), 255)] or [b""]
    return dns.Record_TXT(*value)


class MemoryResolver(ResolverBase):
    """
    Serves records from memory.

    @param records: C{{(name, type): [value, ...]}}, or C{{name: SERVFAIL}}
        (also L{REFUSED}, L{NEVER}) to make every lookup of a name fail.  A
        TXT value is a string (split in 255-octet strings) or a list of
        strings; A/AAAA an address; MX C{(preference, exchange)}; PTR and
        CNAME a name.  A name with a CNAME is followed, as a recursive
        resolver would.  A name with no record at all is NXDOMAIN.

    C{queries} lists C{(name, type)} in the order asked.
    """

    def __init__(self, records: dict[Any, Any] | None = None) -> None:
        super().__init__()
        self.records: dict[tuple[str, str], list[Any]] = {}
        self.failures: dict[str, str] = {}
        self.queries: list[tuple[str, str]] = []
        self.pending: list[defer.Deferred[object]] = []
        for key, value in (records or {}).items():
            if isinstance(key, str):
                self.failures[key.lower().rstrip(".")] = value
            else:
                name, qtype = key
                self.add(name, qtype, *value)

    def add(self, name: str, qtype: str, *values: Any) -> None:
        """Add records of C{qtype} to C{name}."""
        key = (name.lower().rstrip("."), qtype.upper())
        self.records.setdefault(key, []).extend(values)

    def _exists(self, name: str) -> bool:
        return any(n == name for n, _ in self.records)

    def _rrs(self, name: str, qtype: str) -> Iterable[dns.RRHeader]:
        for value in self.records.get((name, qtype), []):
            yield dns.RRHeader(
                name.encode(), _TYPES[qtype], dns.IN, 300, _payload(qtype, value), auth=False
            )

    def _lookup(
        self, name: bytes | str, cls: int, type: int, timeout: object
    ) -> defer.Deferred[object]:
        text = (name.decode() if isinstance(name, bytes) else str(name)).lower().rstrip(".")
        qtype = _NAMES.get(type, str(type))
        self.queries.append((text, qtype))
        failure = self.failures.get(text)
        if failure == SERVFAIL:
            return defer.fail(error.DNSServerError(text))
        if failure == REFUSED:
            return defer.fail(error.DNSQueryRefusedError(text))
        if failure == NEVER:
            d: defer.Deferred[object] = defer.Deferred()
            self.pending.append(d)
            return d
        answers: list[dns.RRHeader] = []
        seen = 0
        while (text, "CNAME") in self.records and qtype != "CNAME" and seen < 8:
            answers.extend(self._rrs(text, "CNAME"))
            text = self.records[(text, "CNAME")][0].lower().rstrip(".")
            seen += 1
        answers.extend(self._rrs(text, qtype))
        if not answers and not self._exists(text):
            return defer.fail(error.DNSNameError(text))
        return defer.succeed((answers, [], []))


def makeSession(
    peerHost: str = "192.0.2.1",
    heloName: str | None = "client.example.org",
    authenticated: str | None = None,
    hostname: str = "mx.example.com",
) -> SessionInfo:
    """A L{SessionInfo} as a check sees it after HELO."""
    from mailframe.envelope import SessionInfo

    return SessionInfo(
        "S1",
        peerHost,
        40000,
        "198.51.100.25",
        25,
        hostname,
        heloName=heloName,
        esmtp=True,
        authenticated=authenticated,
    )


def makeEnvelope(sender: str = "alice@example.org", *recipients: str) -> Envelope:
    """An L{Envelope} from C{sender} (C{""} for the null sender) to C{recipients}."""
    from mailframe.address import Address, parseMailbox
    from mailframe.envelope import Envelope, Recipient

    mailFrom = parseMailbox(sender) if sender else Address.null()
    return Envelope("Q1", mailFrom, recipients=[Recipient(parseMailbox(r)) for r in recipients])


def makeMessage(data: bytes) -> Message:
    """A finished L{Message} holding C{data} (CRLF line endings)."""
    from mailframe.message import Message

    message = Message()
    message.write(data)
    message.finish()
    return message
