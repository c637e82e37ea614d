"""
The settings of an outbound SMTP session and the values it reports:
L{ClientOptions}, L{Timeouts}, L{Credentials}, the TLS policies
(L{TLS_NONE}, L{TLS_OPPORTUNISTIC}, L{TLS_REQUIRE}, L{TLS_VERIFY}),
L{SessionFailed}, and the TLS connection creators for each policy.

Owns: what a client session may be told and the replies it invents for its
own failures.  Public through L{mailframe.client.send}.  Must not: import
mailframe.server or the queue; touch the network.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.ssl import CertificateOptions, TLSVersion, optionsForClientTLS
from zope.interface import implementer

from mailframe.protocol.client import ClientLimits
from mailframe.reply import Enhanced, Reply

if TYPE_CHECKING:
    from twisted.internet._sslverify import IOpenSSLTrustRoot  # not exported, for typing only
    from twisted.internet.ssl import Certificate
    from twisted.protocols.tls import TLSMemoryBIOProtocol

    from mailframe.client.dane import DANECheck

__all__ = [
    "TLS_NONE",
    "TLS_OPPORTUNISTIC",
    "TLS_POLICIES",
    "TLS_REQUIRE",
    "TLS_VERIFY",
    "ClientOptions",
    "Credentials",
    "SessionFailed",
    "Timeouts",
    "checkTLSPolicy",
    "clientTLS",
    "quoted",
    "temporary",
]

TLS_NONE = "none"
"""Never STARTTLS."""
TLS_OPPORTUNISTIC = "opportunistic"
"""STARTTLS when offered, unverified; plain if not offered or if it fails (RFC 7435)."""
TLS_REQUIRE = "require"
"""No delivery without STARTTLS (4xx); the certificate is not checked."""
TLS_VERIFY = "verify"
"""No delivery without STARTTLS and a certificate valid for the host name."""
TLS_POLICIES = (TLS_NONE, TLS_OPPORTUNISTIC, TLS_REQUIRE, TLS_VERIFY)


def checkTLSPolicy(policy: str) -> str:
    """C{policy} lowercased, or ValueError naming the four policies."""
    name = policy.strip().lower()
    if name not in TLS_POLICIES:
        raise ValueError(f"TLS policy {policy!r}: use one of {', '.join(TLS_POLICIES)}")
    return name


@dataclass(frozen=True)
class Timeouts:
    """
    Seconds to wait for each reply (RFC 5321 4.5.3.2): the greeting, MAIL,
    RCPT, DATA's 354, each block of message data written, the reply to the
    final dot (and to BDAT); C{command} for EHLO/HELO, STARTTLS, AUTH, RSET
    and QUIT; C{handshake} for the TLS handshake.
    """

    greeting: float = 300.0
    mail: float = 300.0
    rcpt: float = 300.0
    dataInit: float = 120.0
    dataBlock: float = 180.0
    dataEnd: float = 600.0
    command: float = 300.0
    handshake: float = 300.0

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not value > 0:
                raise ValueError(f"timeout {name} must be positive, not {value!r}")


@dataclass(frozen=True)
class Credentials:
    """A user name and password for AUTH PLAIN or LOGIN (the password is never shown)."""

    username: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class ClientOptions:
    """
    How to talk to one destination.

    C{heloName}: our name in EHLO/HELO.  C{tls}: the TLS policy (one of
    L{TLS_POLICIES}).  C{tlsHostname}: the name the certificate must carry
    (C{verify}), also sent as SNI; None means the destination's host name.
    C{trustRoot}: the CAs for C{verify} (a Twisted C{IOpenSSLTrustRoot} or
    C{Certificate}); None means the platform's.  C{credentials}: AUTH
    PLAIN/LOGIN with these (a smarthost); C{authPlaintext} allows AUTH
    outside TLS.  C{pipelining}, C{chunking}: use PIPELINING and BDAT when
    offered; C{chunkSize}: octets per BDAT chunk.  C{keepAlive}: seconds an
    idle session waits for another message before QUIT (0: QUIT once the
    queued messages are sent).  C{transcript}: log every command and reply.
    C{implicitTLS}: the transport is TLS from the first byte (RFC 8314);
    no STARTTLS, and AUTH is allowed.

    Outbound TLS policies (L{mailframe.client.tlspolicy}): C{dane}, a
    L{mailframe.client.dane.DANECheck} the server's certificate chain must
    pass once TLS is up; C{tlsLabel} names the mechanism that made TLS
    mandatory (C{"DANE"}, C{"MTA-STS"}, C{"REQUIRETLS"}) in the replies of
    its failures; C{requireTLS}: the message carries REQUIRETLS (RFC 8689):
    the server must offer it after TLS, and MAIL passes it on.
    C{tlsProbe}: a check (C{verify(chain)}: None or an RFC 8460 result) run
    once TLS is up whose verdict is only kept (C{session.tlsVerdict}), for
    MTA-STS in testing mode.
    """

    heloName: str = "localhost"
    tls: str = TLS_OPPORTUNISTIC
    tlsHostname: str | None = None
    trustRoot: IOpenSSLTrustRoot | Certificate | None = None
    credentials: Credentials | None = None
    authPlaintext: bool = False
    timeouts: Timeouts = field(default_factory=Timeouts)
    limits: ClientLimits = field(default_factory=ClientLimits)
    pipelining: bool = True
    chunking: bool = True
    chunkSize: int = 1 << 20
    keepAlive: float = 0.0
    transcript: bool = False
    implicitTLS: bool = False
    dane: DANECheck | None = None
    tlsLabel: str = ""
    requireTLS: bool = False
    tlsProbe: Any = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "tls", checkTLSPolicy(self.tls))
        if self.chunkSize < 1 or self.keepAlive < 0:
            raise ValueError("chunkSize must be positive and keepAlive not negative")


class SessionFailed(Exception):
    """
    A session could not carry a message at all (no MAIL was sent): the
    connection failed, the greeting or EHLO/HELO was refused, TLS or AUTH
    failed, or it timed out.  C{reply} is what to report if no other
    destination does better: the server's own reply where one ended the
    session, or a 4xx of ours that says what happened.  It is a 5xx only
    when the server refused the session for good (a 5xx greeting, or a 5xx
    to HELO after EHLO was refused): L{permanent}.  C{tryNext} says another
    destination may do better; C{tlsFailed} that the TLS handshake failed
    (an opportunistic sender may try the same host again without TLS).
    C{tlsResult}, when TLS was mandatory and could not be had as required,
    is the failure's result type in TLS reports (RFC 8460 4.3:
    C{starttls-not-supported}, C{validation-failure} ...).
    """

    def __init__(
        self,
        reply: Reply,
        tryNext: bool = True,
        tlsFailed: bool = False,
        tlsResult: str | None = None,
    ) -> None:
        super().__init__(str(reply))
        self.reply = reply
        self.tryNext = tryNext
        self.tlsFailed = tlsFailed
        self.tlsResult = tlsResult

    @property
    def permanent(self) -> bool:
        """True if this server refused the session for good (its reply is a 5xx)."""
        return self.reply.code >= 500


def quoted(reply: Reply) -> str:
    """C{reply} on one line as sent (its codes, every line of text), to quote in our own reply."""
    codes = [str(reply.code)]
    if reply.enhanced is not None:
        codes.append("{}.{}.{}".format(*reply.enhanced))
    return " ".join((*codes, *reply.lines)).rstrip(" ")


def temporary(reply: Reply, what: str = "answered", enhanced: Enhanced = (4, 4, 0)) -> Reply:
    """
    C{reply} itself if it is not a 5xx.  A 5xx that is not taken as final
    (a refused AUTH or RSET; a host that refused while others could not be
    reached) becomes a 451 of ours with C{enhanced}, quoting the server's
    reply whole: never a code the server did not send.
    """
    if reply.code < 500:
        return reply
    return Reply(451, enhanced, f"Will try again; the server {what}: {quoted(reply)}"[:400])


@implementer(IOpenSSLClientConnectionCreator)
class _UnverifiedTLS:
    """Encryption without authentication (opportunistic and require): SNI, no checks."""

    def __init__(self, hostname: str | None, minimum: TLSVersion | None) -> None:
        self._options = CertificateOptions(raiseMinimumTo=minimum) if minimum else None
        if self._options is None:
            self._options = CertificateOptions()
        self._sni: bytes | None = None
        if hostname and not _isAddress(hostname):
            try:
                self._sni = hostname.encode("idna")
            except UnicodeError:
                self._sni = None

    def clientConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        assert self._options is not None
        connection = SSL.Connection(self._options.getContext(), None)
        connection.set_app_data(tlsProtocol)
        if self._sni:
            connection.set_tlsext_host_name(self._sni)
        return connection


def _isAddress(name: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    return True


_CREATORS: dict[
    tuple[str, str, int],
    tuple[IOpenSSLTrustRoot | Certificate | None, IOpenSSLClientConnectionCreator],
] = {}
_MAX_CREATORS = 256


def clientTLS(
    policy: str, hostname: str, trustRoot: IOpenSSLTrustRoot | Certificate | None = None
) -> IOpenSSLClientConnectionCreator:
    """
    The Twisted client connection creator for C{policy}: the certificate
    checked with service_identity against C{hostname} for C{verify} (an IP
    address is checked as one), none checked otherwise; TLS 1.2 at least
    where TLS is required.  Creators are kept (a few hundred at most), so
    that the CA store is not loaded again for every connection.
    """
    key = (policy, hostname.lower(), id(trustRoot))
    cached = _CREATORS.get(key)
    if cached is not None and cached[0] is trustRoot:
        return cached[1]
    if policy == TLS_VERIFY:
        creator: IOpenSSLClientConnectionCreator = optionsForClientTLS(
            hostname.strip("[]"),
            trustRoot=trustRoot,
            extraCertificateOptions={"raiseMinimumTo": TLSVersion.TLSv1_2},
        )
    else:
        minimum = TLSVersion.TLSv1_2 if policy == TLS_REQUIRE else None
        creator = _UnverifiedTLS(hostname, minimum)
    if len(_CREATORS) >= _MAX_CREATORS:
        _CREATORS.clear()
    _CREATORS[key] = (trustRoot, creator)  # the root is kept: its id stays its own
    return creator
