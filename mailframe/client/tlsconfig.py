"""
The outbound TLS settings of the relay's configuration data
(L{outboundFromConfig}): C{dane} (C{auto}: on when every DNS server the
resolver asks is on loopback, where its AD bit can be believed; C{yes};
C{no}), C{mta-sts} (on by default), C{mta-sts-skip} (domains without
MTA-STS), C{tls-state} (the directory of the MTA-STS cache and the TLS
report counts), C{tlsrpt-org} and C{tlsrpt-sender} (TLS reporting, off
unless both are given).

Owns: reading those keys and building the L{OutboundTLS},
L{mailframe.client.mtasts.MTASTS} and L{mailframe.client.tlsrpt.TLSReporter}
they describe.  Must not: connect or look anything up (the objects do,
later).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from mailframe.client.tlspolicy import OutboundTLS

__all__ = ["KEYS", "daneTrusted", "outboundFromConfig"]

#: The keys (as relayKey spells them) that this module reads.
KEYS = frozenset({"dane", "mtasts", "mtastsskip", "tlsstate", "tlsrptorg", "tlsrptsender"})


def _isLoopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def daneTrusted(resolver: Any) -> bool:
    """True if every server C{resolver} asks is on loopback (its AD bit cannot be forged)."""
    from mailframe.policy._dns import resolverServers

    servers = resolverServers(resolver)
    return bool(servers) and all(_isLoopback(h) for h, _ in servers or ())


def _flag(name: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("yes", "on", "true", "1"):
        return True
    if text in ("no", "off", "false", "0"):
        return False
    raise ValueError(f"{name}: expected yes or no, not {value!r}")


def outboundFromConfig(
    data: Mapping[str, Any], reactor: Any, resolver: Any, trustRoot: Any = None
) -> tuple[OutboundTLS, Any]:
    """
    The L{OutboundTLS} and the TLS reporter (None: reporting off) of the
    relay's configuration C{data} (keys already folded: C{mtastsskip}).

    @raise ValueError: one line saying what is wrong.
    """
    dane = str(data.get("dane", "auto")).strip().lower()
    if dane in ("true", "false"):
        dane = "yes" if dane == "true" else "no"
    if dane not in ("auto", "yes", "no"):
        raise ValueError(f"dane: expected auto, yes or no, not {data.get('dane')!r}")
    daneOn = resolver is not None and (dane == "yes" or (dane == "auto" and daneTrusted(resolver)))
    state = data.get("tlsstate")
    state = str(state) if state else None
    mtasts = None
    txt = None
    addresses: Any = None
    if resolver is not None:
        from mailframe.policy._dns import AsyncDNS

        lookups = AsyncDNS(resolver, reactor)
        txt = lookups.txt

        async def addresses(name: str) -> list[str]:  # the policy's web server, through it too
            found: list[str] = []
            for kind in ("A", "AAAA"):
                try:
                    found += await lookups.addresses(name, kind)
                except Exception:
                    if kind == "AAAA" and found:
                        break
                    raise
            return found

    if _flag("mta-sts", data.get("mtasts", True)) and txt is not None:
        from mailframe.client.mtasts import MTASTS

        skip = data.get("mtastsskip") or ()
        if isinstance(skip, str):
            skip = [s for s in skip.replace(",", " ").split() if s]
        mtasts = MTASTS(txt, reactor, reactor=reactor, trustRoot=trustRoot, addresses=addresses,
                        stateDirectory=state, skip=list(skip))  # fmt: skip
    reporter = None
    org, sender = data.get("tlsrptorg"), data.get("tlsrptsender")
    if (org is None) != (sender is None):
        raise ValueError("give tlsrpt-org and tlsrpt-sender together")
    if org is not None and txt is not None:
        from mailframe.client.tlsrpt import TLSReporter

        reporter = TLSReporter(reactor, str(org), str(sender), txt=txt, stateDirectory=state,
                               post=_poster(reactor))  # fmt: skip
    engine = OutboundTLS(reactor, resolver, dane=daneOn, mtasts=mtasts)
    engine.description = (
        f"outbound TLS: DANE {'on' if daneOn else f'off ({dane})'}, MTA-STS "
        + (("on" + (f", policies kept in {state}" if state else "")) if mtasts else "off")
        + f", TLS reports {f'on, from {sender}' if reporter is not None else 'off'}"
    )
    return engine, reporter


_REPORT_HEADERS: dict[bytes | str, bytes | str] = {"Content-Type": "application/tlsrpt+gzip"}


def _poster(reactor: Any) -> Any:
    async def post(url: str, data: bytes) -> bool:
        import treq

        d = treq.post(url, data=data, headers=_REPORT_HEADERS,
                      timeout=60, reactor=reactor, persistent=False)  # fmt: skip
        response = await d
        await treq.content(response)
        return bool(200 <= response.code < 300)

    return post
