"""
Security policies that plug into the server: connection limits
(L{limits}), DNS block and allow lists (L{dnsbl}), HELO checks (L{helo}),
SPF (L{spf}), DKIM verification and signing (L{dkim}), DMARC (L{dmarc}),
the Authentication-Results header (L{authresults}), and failed-AUTH limits
(L{authlimits}).  Each is a plug-in provider; C{docs/security.rst} lists
their settings, defaults and replies.

Owns: L{isTrusted}, the one rule of which sessions are "ours" (their mail
is outbound, not checked as inbound).  Must not: import mailframe.server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mailframe.config import ServerConfig
    from mailframe.envelope import SessionInfo

__all__ = ["isTrusted"]


def isTrusted(session: SessionInfo, config: ServerConfig | None) -> bool:
    """
    True for an authenticated session or a client in the relay networks
    (C{ServerConfig.relayNetworks}): its mail is outbound mail of ours.
    """
    if session.authenticated is not None:
        return True
    return config is not None and bool(config.mayRelay(session.peerHost))
