"""
L{Extension}: a base class for IExtension providers with do-nothing
defaults, so that an extension states only what it adds.

Owns: the defaults.  Must not: import mailframe.server.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from zope.interface import implementer

from mailframe import reply as R
from mailframe.envelope import Envelope, Recipient, SessionInfo
from mailframe.interfaces import IExtension, ISessionControl

__all__ = ["BAD_VALUE", "NO_VALUE", "Extension"]

BAD_VALUE = R.Reply(501, (5, 5, 4), "Bad parameter value")
NO_VALUE = R.Reply(501, (5, 5, 4), "This parameter takes no value")


@implementer(IExtension)
class Extension:
    """Advertise C{keyword} alone; own no parameters and no verbs."""

    keyword = ""
    mailParameters: frozenset[str] = frozenset()
    rcptParameters: frozenset[str] = frozenset()
    verbs: frozenset[str] = frozenset()
    commandLineIncrease = 0

    def ehloParameters(self, session: SessionInfo) -> str | None:
        return ""

    def mailParameter(
        self, session: SessionInfo, envelope: Envelope, name: str, value: str | None
    ) -> None:
        return None

    def rcptParameter(
        self,
        session: SessionInfo,
        envelope: Envelope,
        recipient: Recipient,
        name: str,
        value: str | None,
    ) -> None:
        return None

    def handleCommand(
        self, control: ISessionControl, verb: str, argument: str
    ) -> R.Reply | Deferred[R.Reply]:
        return R.NOT_IMPLEMENTED

    def continueCommand(
        self, control: ISessionControl, verb: str, line: bytes
    ) -> R.Reply | Deferred[R.Reply]:
        return R.BAD_SEQUENCE

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.keyword}>"
