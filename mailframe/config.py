"""
L{ServerConfig}: every setting of an SMTP listener in one immutable value,
and L{ProviderContext}, what a plug-in factory is given to build a provider.

Owns: settings, their defaults and their validation.  The twistd options
(mailframe.app.tap) and the TOML config file produce one of these; embedding code
builds one directly.  Must not: import twisted or zope; read files.
"""

from __future__ import annotations

import functools
import socket
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from typing import Any

from mailframe.address import Domain
from mailframe.protocol import Limits

__all__ = ["ProviderContext", "ServerConfig", "defaultHostname", "inNetworks"]


def defaultHostname() -> str:
    """This machine's fully qualified name, as well as the resolver knows it."""
    fqdn = socket.getfqdn()
    if "." in fqdn and not fqdn.lower().startswith("localhost"):
        return fqdn
    return socket.gethostname() or fqdn or "localhost"


def inNetworks(host: str, networks: tuple[IPv4Network | IPv6Network, ...]) -> bool:
    """True if C{host} (an IP address; IPv4-mapped IPv6 counts as IPv4) is in C{networks}."""
    if not networks:
        return False
    address = _clientAddress(host)
    if address is None:
        return False
    return any(address in n for n in networks)


@functools.lru_cache(maxsize=1024)
def _clientAddress(host: str) -> IPv4Address | IPv6Address | None:
    """
    C{host} parsed (an IPv4-mapped IPv6 address as IPv4), or None if it is
    not an address.  Cached: the relay check asks it at every RCPT, and
    parsing costs more than the rest of the check.
    """
    try:
        address = ip_address(host.partition("%")[0])
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@dataclass(frozen=True)
class ServerConfig:
    """
    The settings of one SMTP service.

    C{localDomains}: mail for these is accepted (subject to the validators);
    any other domain is relaying, refused with 550 5.7.1.  Timeouts are in
    seconds (RFC 5321 4.5.3.2); the C{maxErrors}th 4xx/5xx reply of a
    session is a 421 that ends it (the count restarts after each accepted
    message).
    C{lmtp}: the listener speaks LMTP (RFC 2033) instead of SMTP: LHLO, and
    one reply per accepted recipient after the data (a delivery agent for
    another MTA, such as Postfix's C{lmtp:} transport).
    C{requireAuthentication} (submission listeners, RFC 6409): MAIL needs an
    authenticated session, else 530 5.7.0.  C{logMessages}: one log line
    per message (accepted or refused after its data); C{transcript}: every
    command and reply.

    Relay and abuse controls: C{relayNetworks}, client networks that may
    relay (as authenticated sessions may).  C{enforceSync}: a client that
    talks before the greeting or sends a command before the previous one's
    reply without PIPELINING gets 554 5.5.0 and is dropped (Exim's
    smtp_enforce_sync).  C{greetDelay}: seconds to wait before the greeting
    (so that early talkers show themselves; postscreen's pregreet test), on
    a client's first connection only: a client that passed is greeted at
    once for C{greetPassTime} seconds (postscreen's cache), and a client of
    C{relayNetworks} at once.
    C{errorDelay}: after C{softErrors} errors each error reply waits
    C{errorDelay} seconds more than the last (a tarpit).

    Time limits besides RFC 5321's: C{handshakeTimeout}, seconds for a TLS
    handshake (after STARTTLS, or from the first byte of an implicit-TLS
    connection); C{closeTimeout}, seconds a closing session may take to
    drain its last reply (and, under TLS, for the client to answer the
    close_notify) before the connection is aborted.
    """

    hostname: str = field(default_factory=defaultHostname)
    localDomains: frozenset[Domain] = frozenset()
    limits: Limits = field(default_factory=Limits)
    listener: str = "smtp"
    requireAuthentication: bool = False
    lmtp: bool = False
    commandTimeout: float = 300.0
    dataTimeout: float = 300.0
    pluginTimeout: float = 240.0
    deliveryTimeout: float = 540.0
    handshakeTimeout: float = 30.0
    closeTimeout: float = 0.5
    maxErrors: int = 20
    transcript: bool = False
    logMessages: bool = True
    relayNetworks: tuple[IPv4Network | IPv6Network, ...] = ()
    enforceSync: bool = False
    greetDelay: float = 0.0
    greetPassTime: float = 86400.0
    errorDelay: float = 0.0
    softErrors: int = 3
    software: str = "mailframe"
    spillThreshold: int = 1 << 20
    tempDirectory: str | None = None
    # the keys of localDomains (made in __post_init__), for isLocal
    _localKeys: frozenset[str] = field(init=False, repr=False, compare=False, default=frozenset())

    def __post_init__(self) -> None:
        try:
            Domain.parse(self.hostname)
        except ValueError:
            raise ValueError(f"bad hostname {self.hostname!r}: not a domain name") from None
        domains = frozenset(Domain(d) if isinstance(d, str) else d for d in self.localDomains)
        if not domains:
            domains = frozenset({Domain("localhost"), Domain(self.hostname)})
        object.__setattr__(self, "localDomains", domains)
        # their comparison keys (str: hashed in C), for isLocal at every RCPT
        object.__setattr__(self, "_localKeys", frozenset(d.key for d in domains))
        for name in (
            "commandTimeout",
            "dataTimeout",
            "pluginTimeout",
            "deliveryTimeout",
            "handshakeTimeout",
            "closeTimeout",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.maxErrors < 1:
            raise ValueError("maxErrors must be at least 1")
        networks = tuple(
            n if isinstance(n, IPv4Network | IPv6Network) else ip_network(n, strict=False)
            for n in self.relayNetworks
        )
        object.__setattr__(self, "relayNetworks", networks)
        if min(self.greetDelay, self.greetPassTime, self.errorDelay, self.softErrors) < 0:
            raise ValueError(
                "greetDelay, greetPassTime, errorDelay and softErrors may not be negative"
            )

    def mayRelay(self, host: str) -> bool:
        """True if a client at C{host} (an IP address) is in a relay network."""
        return inNetworks(host, self.relayNetworks)

    def isLocal(self, domain: Domain | None) -> bool:
        """True if mail for C{domain} is ours to deliver."""
        return domain is None or domain.key in self._localKeys


@dataclass(frozen=True)
class ProviderContext:
    """
    Given to a plug-in factory's C{makeProvider}: the reactor (a clock and
    thread pool for providers that need them), the server's settings, and
    the process's DNS resolver (a C{twisted.names} C{IResolver} with a
    cache, made from the C{dns-server} or C{resolv-conf} setting; None: the
    system's, L{mailframe.policy._dns.defaultResolver}).  A plug-in that
    looks names up uses C{resolver}, so that every check shares one cache.
    C{forwarding}: the server's backend is the queue, which relays mail for
    addresses of other domains (aliases and virtual maps may forward there).
    """

    reactor: Any
    config: ServerConfig
    resolver: Any = None
    forwarding: bool = False
