"""
The values plug points are handed: L{SessionInfo}, L{TLSInfo},
L{SessionSnapshot}, L{Envelope}, L{Recipient} and L{DeliveryResult}.

Owns: what a plug point may know about a session and a transaction.  These
are plain objects (standard library only) so that validators, backends and
tests build them without a server.  Every fact mailframe records is a typed
field; a plug-in keeps its own per-session or per-transaction state with
L{SessionInfo.stateFor} and L{Envelope.stateFor} (keyed by the plug-in, not
by a string).  Must not: import twisted, zope or mailframe.server; hold
behaviour beyond derived properties.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeVar

from mailframe.address import Address, asciiUpper
from mailframe.reply import Reply
from mailframe.results import DKIMResult, DMARCResult, IPRevResult, SPFResult

if TYPE_CHECKING:
    from OpenSSL.crypto import X509

__all__ = [
    "DeliveryResult",
    "Envelope",
    "Recipient",
    "SessionInfo",
    "SessionSnapshot",
    "TLSInfo",
]

_NONE: Mapping[str, str | None] = MappingProxyType({})
_T = TypeVar("_T")


def _stateFor(states: dict[int, tuple[object, Any]], owner: object, make: Callable[[], _T]) -> _T:
    entry = states.get(id(owner))
    if entry is None or entry[0] is not owner:
        entry = states[id(owner)] = (owner, make())
    return entry[1]


@dataclass(frozen=True, slots=True)
class TLSInfo:
    """The TLS state of a session: protocol version, cipher, the peer's cert."""

    version: str
    cipher: str
    bits: int = 0
    peerCertificate: X509 | None = None


@dataclass(frozen=True, slots=True)
class SessionSnapshot:
    """
    The facts of a session when a transaction began (at MAIL): what a
    delivery backend, the queue, a bounce or a log line may need after the
    session itself is gone.  Frozen: it travels with the L{Envelope}.

    C{peerName} is the client's verified reverse name (iprev pass), if a
    check found one; C{protocol} the with-clause keyword of the Received
    field (ESMTPSA ...); C{authMechanism} the SASL mechanism of the login.
    """

    sessionID: str = ""
    peerHost: str = ""
    peerPort: int = 0
    localHost: str = ""
    localPort: int = 0
    hostname: str = ""
    listener: str = "smtp"
    heloName: str | None = None
    protocol: str = "SMTP"
    tls: TLSInfo | None = None
    authenticated: str | None = None
    authMechanism: str | None = None
    peerName: str | None = None


@dataclass(slots=True, eq=False)
class SessionInfo:
    """
    What is known about one SMTP session.  The server updates it; plug
    points read it.  Checks record what they found in typed fields
    (C{iprev}, C{dnsblListings}); a plug-in keeps its own state with
    L{stateFor}.  C{frontEnd} is the address of a trusted front end that
    named the client with XCLIENT (C{peerHost} is then the client it named).
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
    authMechanism: str | None = None
    messages: int = 0
    iprev: IPRevResult | None = None
    dnsblListings: tuple[str, ...] = ()
    frontEnd: str | None = None
    _states: dict[int, tuple[object, Any]] = field(default_factory=dict, repr=False)
    _snapshot: tuple[tuple[object, ...], SessionSnapshot] | None = field(default=None, repr=False)

    @property
    def peer(self) -> str:
        """C{[host]:port}, for log lines."""
        return f"[{self.peerHost}]:{self.peerPort}"

    @property
    def verifiedName(self) -> str | None:
        """The client's forward-confirmed reverse name (iprev pass), or None."""
        iprev = self.iprev
        if iprev is not None and iprev.result == "pass" and iprev.names:
            return iprev.names[0]
        return None

    def stateFor(self, owner: object, make: Callable[[], _T]) -> _T:
        """
        The state C{owner} (a plug-in) keeps for this session: made with
        C{make()} on first use, the same object after.  Plug-ins use a small
        class of their own for it, so that its fields are typed.
        """
        return _stateFor(self._states, owner, make)

    def dropState(self, owner: object) -> None:
        """Forget C{owner}'s state for this session (the next L{stateFor} makes a new one)."""
        self._states.pop(id(owner), None)

    def replaceClient(
        self,
        host: str | None = None,
        port: int | None = None,
        iprev: IPRevResult | None = None,
        heloName: str | None = None,
        login: str | None = None,
        localHost: str | None = None,
        localPort: int | None = None,
    ) -> None:
        """
        A trusted front end (XCLIENT) names the client it speaks for: the
        given facts replace the session's (None: unchanged), C{frontEnd}
        keeps the front end's own address, and what was found about the old
        client (its reverse name unless C{iprev} is given, DNSBL listings,
        a login) is forgotten.  C{login}: the front end's user (an empty
        string: none).
        """
        if self.frontEnd is None:
            self.frontEnd = self.peerHost
        if host is not None and host != self.peerHost:
            self.peerHost = host
            self.iprev = None
            self.dnsblListings = ()
        if port is not None:
            self.peerPort = port
        if iprev is not None:
            self.iprev = iprev
        if localHost is not None:
            self.localHost = localHost
        if localPort is not None:
            self.localPort = localPort
        self.heloName = heloName
        self.esmtp = False
        self.extensions = frozenset()
        self.authenticated = login or None
        self.authMechanism = "XCLIENT" if login else None
        self._snapshot = None

    def snapshot(self, protocol: str = "") -> SessionSnapshot:
        """
        The facts of the session now, frozen (C{protocol}: the with-clause
        keyword).  The same object comes back while the facts are the same
        (the messages of one session usually share it): building one costs
        more than comparing what it depends on.
        """
        iprev = self.iprev
        key = (
            protocol,
            self.heloName,
            self.esmtp,
            self.tls,
            self.authenticated,
            self.authMechanism,
            iprev,
        )
        cached = self._snapshot
        if cached is not None and cached[0] == key:
            return cached[1]
        snapshot = SessionSnapshot(
            sessionID=self.sessionID,
            peerHost=self.peerHost,
            peerPort=self.peerPort,
            localHost=self.localHost,
            localPort=self.localPort,
            hostname=self.hostname,
            listener=self.listener,
            heloName=self.heloName,
            protocol=protocol or ("ESMTP" if self.esmtp else "SMTP"),
            tls=self.tls,
            authenticated=self.authenticated,
            authMechanism=self.authMechanism,
            peerName=self.verifiedName,
        )
        self._snapshot = (key, snapshot)
        return snapshot


@dataclass(frozen=True, slots=True)
class Recipient:
    """
    One accepted RCPT TO: the address and its ESMTP parameters.

    Rewriting (aliases, virtual maps, subaddressing, SRS bounce addresses:
    L{mailframe.interfaces.IRecipientRewriter}) fills in the rest:

      - C{targets}: what an accepted recipient stands for, each a Recipient
        of its own (an empty tuple: accepted and delivered nowhere, as an
        alias to C{/dev/null}); None when it is delivered as it is.  The
        server keeps one Recipient per RCPT in C{envelope.recipients}; the
        delivery backend is given the targets in their place (see
        L{mailframe.server.expansion.ExpandedDelivery}).
      - C{original}, on a target: the address the client gave in RCPT TO.
      - C{detail}, on a target: the subaddress (RFC 5233) taken off its
        local part: C{"tag"} for C{user+tag}, delivered to C{user}.
    """

    address: Address
    params: Mapping[str, str | None] = field(default_factory=lambda: _NONE)
    targets: tuple[Recipient, ...] | None = None
    original: Address | None = None
    detail: str | None = None


@dataclass(slots=True, eq=False)
class Envelope:
    """
    One mail transaction: the reverse-path and its parameters, and the
    recipients accepted so far.  C{queueID} names the transaction in logs,
    in the Received: header and in the reply to the final dot.

    C{session}: the facts of the session it arrived in (None for an
    envelope made outside a server session, as the queue's retries and
    tests do).  C{authIdentity}: the MAIL C{AUTH=} identity (RFC 4954 5:
    a mailbox, or C{<>}), once the AUTH extension accepted it.  C{spf},
    C{dkim}, C{dmarc}: what the checks found, for the checks after them and
    the Authentication-Results field.  A plug-in keeps its own state for
    the transaction with L{stateFor}.

    C{discard} and C{quarantine} are set by a message filter (a milter's
    SMFIR_DISCARD and SMFIR_QUARANTINE, say), with the reason for the log:
    a discarded message is answered 250 and delivered to nobody; a
    quarantined one is held in the queue (C{mailframe-queue release}), or,
    without a queue, delivered and logged as quarantined.
    """

    queueID: str
    mailFrom: Address
    mailParams: Mapping[str, str | None] = field(default_factory=lambda: _NONE)
    recipients: list[Recipient] = field(default_factory=list)
    session: SessionSnapshot | None = None
    authIdentity: str | None = None
    spf: SPFResult | None = None
    dkim: tuple[DKIMResult, ...] | None = None
    dmarc: DMARCResult | None = None
    discard: str | None = None
    quarantine: str | None = None
    _states: dict[int, tuple[object, Any]] = field(default_factory=dict, repr=False)

    def stateFor(self, owner: object, make: Callable[[], _T]) -> _T:
        """As L{SessionInfo.stateFor}, for this transaction."""
        return _stateFor(self._states, owner, make)

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
    dsn: tuple[bool, ...] = ()
    """Per recipient, True if the next hop took the DSN request with the
    message (it offered DSN, so NOTIFY/ORCPT/RET/ENVID went on): it reports
    delivery itself, and a NOTIFY=SUCCESS is not answered "relayed" here
    (RFC 3461 5.2).  Empty means False for every recipient."""
    queueID: str | None = None
    """The ID under which the backend keeps the message, when it is not the
    envelope's (the reply to the final dot names this one)."""
    tls: str | None = None
    """The TLS version of the session that took the message (C{"TLSv1.3"}),
    for the queue's log; None in clear, or for a backend that does not say."""

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
