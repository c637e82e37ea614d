"""
The values of routing: L{NextHop} (a configured destination), L{Destination}
(one address to connect to, with how to talk to it), and their parsing from
plain data (L{parseNextHop}, L{nextHopFrom}).

Owns: the syntax of next hops in configuration data.  Public through
L{mailframe.client.routing}.  Must not: look anything up or connect.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mailframe.client.options import TLS_OPPORTUNISTIC, Credentials, checkTLSPolicy

__all__ = ["LOCAL", "Destination", "NextHop", "configKey", "nextHopFrom", "parseNextHop"]

LOCAL = "local"
"""The route of a domain that the local delivery backend takes."""


@dataclass(frozen=True)
class NextHop:
    """
    A configured destination: C{host} (a name, or an IP address) and
    C{port}; the host's MX records are used only with C{mx}, else its AAAA
    and A records.  C{tls} None means the router's default for the route
    (C{verify} for a smarthost, C{opportunistic} for a domain route).
    C{implicitTLS}: TLS from the first byte (RFC 8314, port 465), not
    STARTTLS; C{tls} then says only whether the certificate is verified.
    """

    host: str
    port: int = 25
    mx: bool = False
    tls: str | None = None
    tlsHostname: str | None = None
    credentials: Credentials | None = None
    authPlaintext: bool = False
    implicitTLS: bool = False

    def __post_init__(self) -> None:
        if not self.host or not 0 < self.port < 65536:
            raise ValueError(f"bad next hop {self.host!r} port {self.port!r}")
        if self.tls is not None:
            object.__setattr__(self, "tls", checkTLSPolicy(self.tls))

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        kind = "mx:" if self.mx else "tls:" if self.implicitTLS else ""
        return f"{kind}{host}:{self.port}"


@dataclass(frozen=True)
class Destination:
    """
    One address to connect to, with how to talk to it.  For MX delivery,
    C{policyDomain} is the recipient domain (whose MTA-STS policy applies)
    and C{dnssec} says whether the MX records and this host's address
    records came with the AD bit of a validating resolver (DANE applies
    only then, RFC 7672 2.2).
    """

    hostname: str  # the MX or configured host name (TLS verification, Remote-MTA)
    address: str  # the IP address
    port: int = 25
    tls: str = TLS_OPPORTUNISTIC
    tlsHostname: str | None = None
    credentials: Credentials | None = field(default=None, repr=False)
    authPlaintext: bool = False
    implicitTLS: bool = False
    policyDomain: str | None = None
    dnssec: bool = False

    @property
    def remote(self) -> str:
        """C{mx.example.org [192.0.2.7]}, as DSNs name the remote MTA."""
        if self.hostname.strip("[]") == self.address:
            return f"[{self.address}]"
        return f"{self.hostname} [{self.address}]"


def configKey(text: str) -> str:
    """A configuration key in any spelling (tls-hostname, tls_hostname, tlsHostname)."""
    return text.strip().lower().replace("-", "").replace("_", "")


def parseNextHop(text: str, **settings: Any) -> NextHop:
    """
    A L{NextHop} from C{tcp:HOST:PORT}, C{tcp:host=HOST:port=PORT},
    C{HOST:PORT}, C{[IPV6]:PORT}, C{HOST}, C{mx:HOST[:PORT]} (the host's
    MX records) or C{tls:HOST[:PORT]} (implicit TLS, port 465 by default).
    C{settings} are further L{NextHop} fields.
    """
    text = text.strip()
    mx = implicit = False
    kind, colon, rest = text.partition(":")
    kind = kind.lower() if colon else ""
    if kind in ("tcp", "tcp6", "mx", "tls", "ssl"):
        mx = kind == "mx"
        implicit = kind in ("tls", "ssl")
        text = rest
    elif kind == "unix":
        raise ValueError(f"next hop {text!r}: only tcp:, tls: and mx: are supported")
    mx = bool(settings.pop("mx", False)) or mx
    implicit = bool(settings.pop("implicitTLS", False)) or implicit
    host, port = text, 465 if implicit else 25
    if "=" in text:
        parts = dict(p.partition("=")[::2] for p in text.replace("\\:", "\0").split(":"))
        host = parts.get("host", "").replace("\0", ":")
        port = int(parts.get("port", str(port)))
    elif text.startswith("["):
        inner, _, after = text[1:].partition("]")
        host = inner[5:] if inner.lower().startswith("ipv6:") else inner
        if after.startswith(":"):
            port = int(after[1:])
    elif text.count(":") == 1:
        host, _, number = text.partition(":")
        port = int(number)
    return NextHop(host, port, mx=mx, implicitTLS=implicit, **settings)


def nextHopFrom(value: object) -> NextHop | str:
    """A route's value in configuration data: C{"local"}, a string, or a table."""
    if isinstance(value, NextHop):
        return value
    if isinstance(value, str):
        return LOCAL if value.strip().lower() == LOCAL else parseNextHop(value)
    if not isinstance(value, Mapping):
        raise ValueError(f"a route is 'local', a host string or a table, not {value!r}")
    data = {configKey(k): v for k, v in value.items()}
    known = {"host", "port", "mx", "tls", "tlshostname", "username", "password", "authplaintext",
             "implicittls"}  # fmt: skip
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown route settings: {', '.join(sorted(unknown))}")
    if "host" not in data:
        raise ValueError("a route table needs a host")
    credentials = None
    if data.get("username") is not None:
        credentials = Credentials(str(data["username"]), str(data.get("password", "")))
    hop = parseNextHop(str(data["host"]), implicitTLS=bool(data.get("implicittls", False)))
    return NextHop(
        hop.host,
        int(data.get("port", hop.port)),
        mx=bool(data.get("mx", hop.mx)),
        tls=data.get("tls"),
        tlsHostname=data.get("tlshostname"),
        credentials=credentials,
        authPlaintext=bool(data.get("authplaintext", False)),
        implicitTLS=hop.implicitTLS,
    )
