"""
The DNS resolver of C{twistd mailframe}: one per process, shared by every
check (DNSBL, SPF, DKIM, DMARC, HELO) and by MX routing, made from the
C{dns-server} setting (servers on any port: a local caching or validating
resolver, a private one in tests) or the C{resolv-conf} one (a
resolv.conf(5) file, port 53; C{/etc/resolv.conf} by default).  See
L{mailframe.policy._dns.makeResolver}.

Owns: the converter of C{dns-server}, L{DNSSpec} (the two settings fitted
together) and making the resolver of a spec.  Must not: import the reactor
or twisted.names at import time (the settings table imports this module).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mailframe.plugins import SettingError

if TYPE_CHECKING:
    from mailframe.policy._dns import CachingResolver

__all__ = ["DNSSpec", "dnsServers", "dnsSpec", "makeProcessResolver", "resolvedServers"]


def dnsServers(value: object) -> tuple[str, ...]:
    """
    The C{dns-server} setting: addresses with an optional port (C{ADDRESS},
    C{ADDRESS:PORT}, C{[IPV6]:PORT}), a list or commas; normalised.
    """
    from mailframe.policy._dns import parseServer

    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
        raise SettingError(f"expected a list of DNS servers (ADDRESS[:PORT]), not {value!r}")
    out = []
    for item in items:
        for text in item.split(","):
            if not text.strip():
                continue
            try:
                address, port = parseServer(text)
            except ValueError as e:
                raise SettingError(str(e)) from None
            out.append(f"[{address}]:{port}" if ":" in address else f"{address}:{port}")
    if not out:
        raise SettingError(f"expected a list of DNS servers (ADDRESS[:PORT]), not {value!r}")
    return tuple(out)


@dataclass(frozen=True)
class DNSSpec:
    """Where the process's resolver sends its queries: C{servers}, or C{resolvConf}'s."""

    servers: tuple[tuple[str, int], ...] = ()
    resolvConf: str | None = None

    def describe(self) -> str:
        """For the start-up line: C{127.0.0.1:5353}, or the resolv.conf file."""
        if self.servers:
            return ", ".join(f"[{a}]:{p}" if ":" in a else f"{a}:{p}" for a, p in self.servers)
        from mailframe.policy._dns import DEFAULT_RESOLV_CONF

        return f"those of {self.resolvConf or DEFAULT_RESOLV_CONF}"


def dnsSpec(command: Mapping[str, Any], fileTop: Mapping[str, Any] | None = None) -> DNSSpec:
    """
    The L{DNSSpec} of converted settings, the command line's replacing the
    file's.  @raise SettingError: both settings are given.
    """
    from mailframe.policy._dns import parseServer

    top = {**(fileTop or {}), **command}
    servers = top.get("dns-server") or ()
    resolvConf = top.get("resolv-conf")
    if servers and resolvConf:
        raise SettingError("give dns-server or resolv-conf, not both")
    return DNSSpec(tuple(parseServer(s) for s in servers), resolvConf)


def resolvedServers(spec: DNSSpec) -> tuple[tuple[str, int], ...]:
    """
    The servers C{spec} names: its own, or those of its resolv.conf file,
    read now.  @raise SystemExit: one line, when that file cannot be read.
    """
    if spec.servers:
        return spec.servers
    from mailframe.policy._dns import DEFAULT_RESOLV_CONF, readResolvConf

    path = spec.resolvConf or DEFAULT_RESOLV_CONF
    try:
        return tuple(readResolvConf(path))
    except OSError as e:
        raise SystemExit(f"mailframe: cannot read resolv-conf {path}: {e.strerror or e}") from None


def makeProcessResolver(reactor: Any, spec: DNSSpec) -> CachingResolver:
    """
    The process's resolver for C{spec}.  @raise SystemExit: one line, when
    the resolv.conf file cannot be read.
    """
    from mailframe.policy._dns import makeResolver

    return makeResolver(reactor, resolvedServers(spec))
