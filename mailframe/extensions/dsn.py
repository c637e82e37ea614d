"""
The DSN extension (RFC 3461): delivery status notification parameters.

It advertises C{DSN} and owns the MAIL parameters C{RET} (C{FULL} or
C{HDRS}: what a report returns of the message) and C{ENVID} (an xtext
envelope id of at most 100 characters, echoed in reports), and the RCPT
parameters C{NOTIFY} (C{NEVER}, or a comma list of C{SUCCESS}, C{FAILURE}
and C{DELAY}) and C{ORCPT} (C{addr-type;xtext}, the original recipient).
A bad value is refused with C{501 5.5.4}.  Accepted values stay, as sent,
in C{envelope.mailParams} and C{recipient.params}, where the queue reads
them (L{notifyKeywords}, L{decodeOrcpt}) and the relay passes them on.

Offer it only with a server that can send the reports: C{twistd mailframe}
does when the queue is on (C{--spool}).

Owns: the syntax of the four parameters.  Must not: import mailframe.server
or the queue; send anything.
"""

from __future__ import annotations

import re

from mailframe import reply as R
from mailframe.address import asciiUpper
from mailframe.envelope import Envelope, Recipient, SessionInfo
from mailframe.extensions._base import Extension
from mailframe.protocol import decodeXtext
from mailframe.reply import SMTPError

__all__ = ["DSN", "decodeOrcpt", "notifyKeywords"]

MAX_ENVID = 100
MAX_ORCPT = 500
NOTIFY_KEYWORDS = frozenset({"SUCCESS", "FAILURE", "DELAY"})

_BAD_RET = R.Reply(501, (5, 5, 4), "RET must be FULL or HDRS")
_BAD_ENVID = R.Reply(501, (5, 5, 4), f"ENVID must be xtext of at most {MAX_ENVID} characters")
_BAD_NOTIFY = R.Reply(
    501, (5, 5, 4), "NOTIFY must be NEVER, or SUCCESS, FAILURE and/or DELAY separated by commas"
)
_BAD_ORCPT = R.Reply(
    501, (5, 5, 4), "ORCPT must be addr-type;xtext (e.g. rfc822;user@example.org)"
)
_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+\Z")
_UNITEXT_ESCAPE = re.compile(r"\\x\{([0-9A-Fa-f]{1,6})\}")


def notifyKeywords(value: str | None) -> frozenset[str] | None:
    """
    The NOTIFY keywords of a recipient: None when NOTIFY was not given, the
    empty set for NEVER, else a subset of SUCCESS, FAILURE and DELAY.

    @raise ValueError: for a value the extension would have refused.
    """
    if value is None:
        return None
    words = [asciiUpper(w.strip()) for w in value.split(",")]
    if words == ["NEVER"]:
        return frozenset()
    found = frozenset(words)
    if not words or len(found) != len(words) or not found <= NOTIFY_KEYWORDS:
        raise ValueError(f"bad NOTIFY value {value!r}")
    return found


def decodeOrcpt(value: str | None) -> tuple[str, str] | None:
    """
    C{(addr-type, address)} from an ORCPT value (xtext decoded; for the
    C{utf-8} type also the C{\\x{HEX}} escapes of RFC 6533), or None when
    ORCPT was not given or cannot be decoded.
    """
    if not value:
        return None
    kind, semicolon, text = value.partition(";")
    if not semicolon or not _ATOM.match(kind) or not text:
        return None
    try:
        address = decodeXtext(text)
    except (ValueError, UnicodeError):
        return None
    if kind.lower() == "utf-8":
        address = _UNITEXT_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), address)
    return kind.lower(), address


def _printable(text: str) -> bool:
    return all(" " <= c <= "~" for c in text)


class DSN(Extension):
    """DSN: RET and ENVID on MAIL, NOTIFY and ORCPT on RCPT (RFC 3461)."""

    keyword = "DSN"
    mailParameters = frozenset({"RET", "ENVID"})
    rcptParameters = frozenset({"NOTIFY", "ORCPT"})
    commandLineIncrease = 560  # ORCPT (500) and NOTIFY on RCPT; RET and ENVID on MAIL

    def mailParameter(
        self, session: SessionInfo, envelope: Envelope, name: str, value: str | None
    ) -> None:
        if name == "RET":
            if value is None or asciiUpper(value) not in ("FULL", "HDRS"):
                raise SMTPError(_BAD_RET)
            return
        if value is None or not value or len(value) > MAX_ENVID:
            raise SMTPError(_BAD_ENVID)
        try:
            decoded = decodeXtext(value)
        except (ValueError, UnicodeError):
            raise SMTPError(_BAD_ENVID) from None
        if not _printable(decoded):
            raise SMTPError(_BAD_ENVID)

    def rcptParameter(
        self,
        session: SessionInfo,
        envelope: Envelope,
        recipient: Recipient,
        name: str,
        value: str | None,
    ) -> None:
        if name == "NOTIFY":
            try:
                notifyKeywords(value if value else "")
            except ValueError:
                raise SMTPError(_BAD_NOTIFY) from None
            return
        if value is None or len(value) > MAX_ORCPT:
            raise SMTPError(_BAD_ORCPT)
        decoded = decodeOrcpt(value)
        if decoded is None or not decoded[1]:
            raise SMTPError(_BAD_ORCPT)
        if decoded[0] != "utf-8" and not _printable(decoded[1]):
            raise SMTPError(_BAD_ORCPT)
