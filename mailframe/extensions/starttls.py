"""
STARTTLS (RFC 3207) as an IExtension provider.

The extension only decides whether to offer and to start TLS; the server
(through L{ISessionControl.startTLS}) and the sans-IO core do the rest:
after the 220 reply nothing more is read until the handshake starts, every
byte buffered before it is discarded, and HELO/EHLO and the transaction
are forgotten; a second STARTTLS is 503.

Owns: advertising STARTTLS and choosing the TLS context.  Must not: import
mailframe.server; touch the transport.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.logger import Logger

from mailframe.envelope import SessionInfo
from mailframe.extensions._base import Extension
from mailframe.reply import Reply

if TYPE_CHECKING:
    from mailframe.interfaces import ISessionControl, TLSContextFactory

__all__ = ["TLS_AFTER_AUTH", "TLS_ALREADY_ACTIVE", "TLS_READY", "TLS_UNAVAILABLE", "StartTLS"]

log = Logger(namespace="mailframe.tls")

TLS_READY = Reply(220, (2, 0, 0), "Ready to start TLS")
TLS_UNAVAILABLE = Reply(454, (4, 7, 0), "TLS not available due to temporary reason")
TLS_ALREADY_ACTIVE = Reply(503, (5, 5, 1), "TLS is already active")
TLS_AFTER_AUTH = Reply(503, (5, 5, 1), "STARTTLS is not allowed after AUTH")


class StartTLS(Extension):
    """
    STARTTLS with C{contextFactory} (a L{mailframe.server.tls.ServerTLS} or any
    Twisted server TLS context factory); with None it is never offered and
    answers 454.  It is not offered once a session is in TLS (after
    STARTTLS, or on an implicit-TLS listener).
    """

    keyword = "STARTTLS"
    verbs = frozenset({"STARTTLS"})

    def __init__(self, contextFactory: TLSContextFactory | None) -> None:
        self.contextFactory = contextFactory

    def ehloParameters(self, session: SessionInfo) -> str | None:
        if self.contextFactory is None or session.tls is not None:
            return None
        return ""

    def handleCommand(self, control: ISessionControl, verb: str, argument: str) -> Reply:
        session = control.session
        if session.tls is not None:
            return TLS_ALREADY_ACTIVE
        if session.authenticated is not None:
            # RFC 3207 4.2 would have the server forget the authentication;
            # refusing keeps a plaintext-authenticated session from carrying it
            return TLS_AFTER_AUTH
        factory = self.contextFactory
        if factory is None:
            return TLS_UNAVAILABLE
        try:
            if hasattr(factory, "getContext"):
                factory.getContext()  # loads (or reloads) the certificates now
        except Exception:
            log.failure("{id} no TLS context for STARTTLS", id=session.sessionID)
            return TLS_UNAVAILABLE
        control.startTLS(factory)
        return TLS_READY
