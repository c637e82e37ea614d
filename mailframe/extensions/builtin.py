"""
The built-in ESMTP extensions, each an IExtension provider: SIZE (RFC 1870),
8BITMIME (RFC 6152), PIPELINING (RFC 2920), ENHANCEDSTATUSCODES (RFC 2034),
SMTPUTF8 (RFC 6531), CHUNKING and BINARYMIME (RFC 3030).

Owns: advertising them and checking the parameters they own.  The wire
semantics they switch on (BDAT framing, UTF-8 paths, size counting, enhanced
codes in replies) live in the sans-IO core, which learns what was advertised
from the EHLO reply itself.  Must not: import mailframe.server.
"""

from __future__ import annotations

from mailframe import reply as R
from mailframe.address import asciiUpper
from mailframe.envelope import Envelope, SessionInfo
from mailframe.extensions._base import BAD_VALUE, NO_VALUE, Extension
from mailframe.interfaces import IExtension
from mailframe.reply import SMTPError

__all__ = [
    "SMTPUTF8",
    "BinaryMIME",
    "Chunking",
    "EightBitMIME",
    "EnhancedStatusCodes",
    "Pipelining",
    "Size",
    "defaultExtensions",
]


class Size(Extension):
    """SIZE: advertise the limit; refuse MAIL whose SIZE= is over it."""

    keyword = "SIZE"
    mailParameters = frozenset({"SIZE"})
    commandLineIncrease = 26  # RFC 1870 4

    def __init__(self, maxSize: int) -> None:
        self.maxSize = maxSize

    def ehloParameters(self, session: SessionInfo) -> str | None:
        return str(self.maxSize) if self.maxSize else ""

    def mailParameter(
        self, session: SessionInfo, envelope: Envelope, name: str, value: str | None
    ) -> None:
        if value is None or not value.isdigit() or not value.isascii() or len(value) > 20:
            raise SMTPError(BAD_VALUE.withText("SIZE takes a number of octets"))
        if self.maxSize and int(value) > self.maxSize:
            raise SMTPError(R.MESSAGE_TOO_BIG)


class EightBitMIME(Extension):
    """8BITMIME: the BODY parameter (BINARYMIME only where it is advertised)."""

    keyword = "8BITMIME"
    mailParameters = frozenset({"BODY"})
    commandLineIncrease = 16

    def mailParameter(
        self, session: SessionInfo, envelope: Envelope, name: str, value: str | None
    ) -> None:
        body = asciiUpper(value or "")
        if body in ("7BIT", "8BITMIME"):
            return
        if body == "BINARYMIME" and "BINARYMIME" in session.extensions:
            return
        raise SMTPError(R.Reply(501, (5, 5, 4), "BODY must be 7BIT or 8BITMIME"))


class Pipelining(Extension):
    """PIPELINING: the server answers pipelined commands in order, in one write."""

    keyword = "PIPELINING"


class EnhancedStatusCodes(Extension):
    """ENHANCEDSTATUSCODES: every 2xx/4xx/5xx reply carries x.y.z (RFC 2034)."""

    keyword = "ENHANCEDSTATUSCODES"


class SMTPUTF8(Extension):
    """SMTPUTF8: UTF-8 addresses, for transactions that ask with the parameter."""

    keyword = "SMTPUTF8"
    mailParameters = frozenset({"SMTPUTF8"})
    commandLineIncrease = 10

    def mailParameter(
        self, session: SessionInfo, envelope: Envelope, name: str, value: str | None
    ) -> None:
        if value is not None:
            raise SMTPError(NO_VALUE)


class Chunking(Extension):
    """CHUNKING: the BDAT command."""

    keyword = "CHUNKING"


class BinaryMIME(Extension):
    """BINARYMIME: BODY=BINARYMIME, sent with BDAT only."""

    keyword = "BINARYMIME"


def defaultExtensions(maxSize: int) -> list[IExtension]:
    """The built-ins, in the order the EHLO reply lists them."""
    return [
        Pipelining(),
        Size(maxSize),
        EightBitMIME(),
        EnhancedStatusCodes(),
        SMTPUTF8(),
        Chunking(),
        BinaryMIME(),
    ]
