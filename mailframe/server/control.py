"""
L{SessionControl}: what an extension's command handler may do to its
session besides replying (L{ISessionControl}): read the session, ask for
TLS, mark the session authenticated, replace its client (XCLIENT).

Owns: that interface.  It talks to its session only through the session's
public methods (L{SessionHost}), never its attributes.  Must not: import
the session's modules.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from zope.interface import implementer

from mailframe.envelope import SessionInfo
from mailframe.interfaces import ISessionControl

if TYPE_CHECKING:
    from mailframe.interfaces import TLSContextFactory
    from mailframe.reply import Reply
    from mailframe.results import IPRevResult

__all__ = ["SessionControl", "SessionHost"]


class SessionHost(Protocol):
    """What a L{SessionControl} needs of its session (the server protocol provides it)."""

    session: SessionInfo

    @property
    def inTransaction(self) -> bool: ...

    def requestTLS(self, contextFactory: TLSContextFactory) -> None: ...

    def authenticated(self, avatarId: str, mechanism: str) -> None: ...

    def replaceClient(self, **facts: Any) -> Reply: ...


@implementer(ISessionControl)
class SessionControl:
    """What an extension may do to its session (L{ISessionControl})."""

    __slots__ = ("_host",)

    def __init__(self, host: SessionHost) -> None:
        self._host = host

    @property
    def session(self) -> SessionInfo:
        return self._host.session

    @property
    def inTransaction(self) -> bool:
        return self._host.inTransaction

    def startTLS(self, contextFactory: TLSContextFactory) -> None:
        self._host.requestTLS(contextFactory)

    def authenticate(self, avatarId: str, mechanism: str) -> None:
        self._host.authenticated(avatarId, mechanism)

    def replaceClient(
        self,
        host: str | None = None,
        port: int | None = None,
        iprev: IPRevResult | None = None,
        heloName: str | None = None,
        login: str | None = None,
        localHost: str | None = None,
        localPort: int | None = None,
    ) -> Reply:
        return self._host.replaceClient(
            host=host,
            port=port,
            iprev=iprev,
            heloName=heloName,
            login=login,
            localHost=localHost,
            localPort=localPort,
        )
