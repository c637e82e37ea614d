"""
The values plug points are handed: L{SessionInfo}, L{TLSInfo},
L{Envelope}, L{Recipient} and L{DeliveryResult}.

Owns: what a plug point may know about a session and a transaction.  These
are plain objects (standard library only) so that validators, backends and
tests build them without a server.  Must not: import twisted, zope or
mailframe.server; hold behaviour beyond derived properties.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from mailframe.address import Address, asciiUpper
from mailframe.reply import Reply

__all__ = ["DeliveryResult", "Envelope", "Recipient", "SessionInfo", "TLSInfo"]

_NONE: Mapping[str, str | None] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class TLSInfo:
    """The TLS state of a session: protocol version, cipher, the peer's cert."""

    version: str
    cipher: str
    bits: int = 0
    peerCertificate: Any = None


@dataclass(slots=True, eq=False)
class SessionInfo:
    """
    What is known about one SMTP session.  The server updates it; plug
    points read it (and may keep their own per-session state in C{extra}).
    """

    sessionID: str
    peerHost: str
    peerPort: int
    localHost: str
    localPort: int
    hostname: str
    listener: str = "smtp"
    heloName: str | None = None
    esmtp: bool = False
    extensions: frozenset[str] = frozenset()
    tls: TLSInfo | None = None
    authenticated: str | None = None
    messages: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def peer(self) -> str:
        """C{[host]:port}, for log lines."""
        return f"[{self.peerHost}]:{self.peerPort}"


@dataclass(frozen=True, slots=True)
class Recipient:
    """One accepted RCPT TO: the address and its ESMTP parameters."""

    address: Address
    params: Mapping[str, str | None] = field(default_factory=lambda: _NONE)


@dataclass(slots=True, eq=False)
class Envelope:
    """
    One mail transaction: the reverse-path and its parameters, and the
    recipients accepted so far.  C{queueID} names the transaction in logs,
    in the Received: header and in the reply to the final dot.
    """

    queueID: str
    mailFrom: Address
    mailParams: Mapping[str, str | None] = field(default_factory=lambda: _NONE)
    recipients: list[Recipient] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def body(self) -> str:
        """C{7BIT}, C{8BITMIME} or C{BINARYMIME} (RFC 6152, RFC 3030)."""
        return asciiUpper(self.mailParams.get("BODY") or "7BIT")

    @property
    def smtputf8(self) -> bool:
        """True if MAIL carried the SMTPUTF8 parameter (RFC 6531)."""
        return "SMTPUTF8" in self.mailParams

    @property
    def declaredSize(self) -> int | None:
        """The SIZE= of MAIL (RFC 1870), if given."""
        size = self.mailParams.get("SIZE")
        return int(size) if size and size.isdigit() else None


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """
    The outcome of a delivery, one L{Reply} per recipient of the envelope,
    in order: 2xx delivered (durably), 4xx try again later, 5xx failed.
    """

    replies: tuple[Reply, ...]
    remote: tuple[str | None, ...] = ()
    """Per recipient, the server that answered (C{"mx.example.org [192.0.2.7]"}),
    for delivery status notifications (RFC 3464 Remote-MTA); may be empty."""

    @classmethod
    def allDelivered(cls, envelope: Envelope, reply: Reply) -> DeliveryResult:
        """The same reply for every recipient."""
        return cls(tuple(reply for _ in envelope.recipients))

    @classmethod
    def fromMapping(
        cls, envelope: Envelope, replies: Mapping[Address, Reply], default: Reply
    ) -> DeliveryResult:
        """Replies keyed by recipient address; the others get C{default}."""
        return cls(tuple(replies.get(r.address, default) for r in envelope.recipients))

    def pairs(self, recipients: Sequence[Recipient]) -> Iterable[tuple[Recipient, Reply]]:
        return zip(recipients, self.replies, strict=True)

    @property
    def delivered(self) -> bool:
        """True if every recipient got a 2xx."""
        return all(r.code < 400 for r in self.replies)
