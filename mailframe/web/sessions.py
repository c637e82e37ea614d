"""
L{liveSessions}: the open SMTP sessions of some listener factories, as
C{/api/v1/sessions} describes them, read from each session's public
attributes (C{session}: its L{SessionInfo}; C{record}: what its decision
events count; C{inTransaction}).

Owns: the description.  Must not: change a session, or read a private
attribute of one; import mailframe.app.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from mailframe.envelope import SessionInfo

__all__ = ["describeSession", "liveSessions", "stageOf"]

_TRANSACTION = frozenset({"mail", "rcpt", "data", "bdat"})
_HELLO = frozenset({"helo", "ehlo", "lhlo"})


def stageOf(proto: Any) -> str:
    """
    Where a session is, as well as its public state tells: C{connected}
    (greeting not sent yet), C{greeted}, C{helo}, C{auth}, C{starttls},
    C{mail}, C{rcpt}, C{data} (receiving a message).
    """
    record = getattr(proto, "record", None)
    session: SessionInfo = proto.session
    if record is None or not getattr(record, "connected", True):
        return "connected"
    verb = getattr(record, "verb", "") or ""
    if getattr(record, "dataVerb", None) is not None:
        return "data"
    inTransaction = bool(getattr(proto, "inTransaction", False))
    if inTransaction:
        return verb if verb in _TRANSACTION else "mail"
    if verb in ("auth", "starttls"):
        return verb
    return "helo" if session.heloName is not None else "greeted"


def describeSession(proto: Any, clock: float) -> dict[str, Any]:
    """One session as the API gives it."""
    session: SessionInfo = proto.session
    record = getattr(proto, "record", None)
    tls = session.tls
    started = getattr(record, "started", None)
    return {
        "id": session.sessionID,
        "listener": session.listener,
        "client": session.peerHost,
        "clientPort": session.peerPort,
        "clientName": session.verifiedName or "unknown",
        "helo": session.heloName,
        "esmtp": session.esmtp,
        "stage": stageOf(proto),
        "tls": None if tls is None else {"version": tls.version, "cipher": tls.cipher},
        "user": session.authenticated,
        "started": started,
        "duration": None if started is None else max(0.0, clock - started),
        "messages": session.messages,
        "bytes": getattr(record, "bytesIn", 0),
        "frontEnd": session.frontEnd,
    }


def liveSessions(factories: Iterable[Any], now: float) -> list[dict[str, Any]]:
    """Every open session of C{factories} (each once), oldest first."""
    seen: set[int] = set()
    found = []
    for factory in factories:
        for proto in list(factory.sessions):
            if id(proto) in seen or getattr(proto, "session", None) is None:
                continue
            seen.add(id(proto))
            found.append(describeSession(proto, now))
    found.sort(key=lambda s: (s["started"] or 0.0, s["id"]))
    return found
