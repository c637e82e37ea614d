"""
SMTP replies: the immutable L{Reply} value, L{SMTPError}, and the named
replies the framework sends.

Owns: what a reply is and how it is encoded on the wire (multi-line replies,
RFC 2034 enhanced status codes).  Must not: import twisted, zope or anything
of mailframe's; know about sessions or state.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

__all__ = [
    "Enhanced",
    "Reply",
    "SMTPError",
    "clientText",
]

Enhanced = tuple[int, int, int]

MAX_LINE = 512
"""The longest reply line, CRLF included (RFC 5321 4.5.3.1.5)."""


def clientText(text: str, limit: int = 100) -> str:
    """
    Text the client sent, made fit to echo in a reply: printable ASCII as it
    is; controls, DEL, backslash and non-ASCII as Python escapes (C{\\x1b},
    C{\\xfc}, C{\\u017f}); cut to at most C{limit} characters (at least 3),
    ending with C{...}, never inside an escape.  Only the first C{limit}
    characters are looked at, so a long line costs no more than a short one.
    """
    if len(text) <= limit and text.isascii() and text.isprintable() and "\\" not in text:
        return text
    head = text[: limit + 1]
    if head.isascii() and head.isprintable() and "\\" not in head:
        return text[: limit - 3] + "..."
    pieces = [c if " " <= c <= "~" and c != "\\" else ascii(c)[1:-1] for c in head]
    if len(text) <= limit and sum(map(len, pieces)) <= limit:
        return "".join(pieces)
    out = []
    room = limit - 3
    for piece in pieces:
        room -= len(piece)
        if room < 0:
            break
        out.append(piece)
    return "".join(out) + "..."


@dataclass(frozen=True, slots=True)
class Reply:
    """
    One SMTP reply: a three-digit code, an optional enhanced status code
    (RFC 3463) and one or more lines of text.

    C{Reply(550, (5, 7, 1), "Relaying denied")}; a multi-line reply passes a
    tuple of lines.  The wire form is computed once, here, so sending a named
    reply costs a dictionary-free attribute read.
    """

    code: int
    enhanced: Enhanced | None = None
    text: str | tuple[str, ...] = ""
    _plain: bytes = field(init=False, repr=False, compare=False, default=b"")
    _rich: bytes = field(init=False, repr=False, compare=False, default=b"")

    def __post_init__(self) -> None:
        code = self.code
        if type(code) is not int or not 200 <= code <= 599:
            raise ValueError(f"SMTP reply code must be 200..599, not {code!r}")
        enhanced = self.enhanced
        if enhanced is not None:
            cls, subject, detail = enhanced
            if cls != code // 100 or cls == 3:
                raise ValueError(f"enhanced status {enhanced!r} does not match reply code {code}")
            if not (0 <= subject <= 999 and 0 <= detail <= 999):
                raise ValueError(f"enhanced status {enhanced!r} out of range")
        text = self.text
        if type(text) is str:
            if "\r" in text or "\n" in text:
                raise ValueError("reply text may not contain CR or LF")
            return
        lines = tuple(text) or ("",)
        for line in lines:
            if "\r" in line or "\n" in line:
                raise ValueError("reply text may not contain CR or LF")
        object.__setattr__(self, "text", lines[0] if len(lines) == 1 else lines)

    @property
    def lines(self) -> tuple[str, ...]:
        """The text, one string per line."""
        return (self.text,) if isinstance(self.text, str) else self.text

    @property
    def isPositive(self) -> bool:
        """True for 2xx and 3xx replies."""
        return self.code < 400

    @property
    def isTransient(self) -> bool:
        """True for 4xx replies: try again later."""
        return 400 <= self.code < 500

    @property
    def isPermanent(self) -> bool:
        """True for 5xx replies."""
        return self.code >= 500

    def toBytes(self, enhanced: bool = True) -> bytes:
        """
        The reply on the wire.  With C{enhanced} false the enhanced status code
        is left out (a session that did not negotiate ENHANCEDSTATUSCODES).
        Encoded once, on first use.
        """
        if enhanced and self.enhanced is not None:
            data = self._rich
            if not data:
                data = _encode(self.code, self.enhanced, self.lines)
                object.__setattr__(self, "_rich", data)
            return data
        data = self._plain
        if not data:
            data = _encode(self.code, None, self.lines)
            object.__setattr__(self, "_plain", data)
        return data

    def withText(self, text: str | tuple[str, ...]) -> Reply:
        """The same codes with other text."""
        return Reply(self.code, self.enhanced, text)

    def __str__(self) -> str:
        return self.toBytes().decode("utf-8", "replace").rstrip("\r\n")


def _fit(line: bytes) -> bytes:
    """A reply line (with its CRLF) cut to L{MAX_LINE} octets, ending with C{...}."""
    if len(line) <= MAX_LINE:
        return line
    cut = line[: MAX_LINE - 5].decode("utf-8", "ignore")  # no character cut in half
    return cut.encode("utf-8") + b"...\r\n"


def _encode(code: int, enhanced: Enhanced | None, lines: tuple[str, ...]) -> bytes:
    if code == 334:
        # RFC 4954 4: "334" SP [base64]: an empty challenge keeps its SP, and
        # a challenge is never cut (the mechanism would fail, not the length)
        return f"334 {lines[0]}\r\n".encode() if len(lines) == 1 else _lines(code, None, lines)
    if len(lines) == 1 and lines[0]:
        if enhanced is None:
            return _fit(f"{code} {lines[0]}\r\n".encode())
        return _fit(f"{code} {enhanced[0]}.{enhanced[1]}.{enhanced[2]} {lines[0]}\r\n".encode())
    data = _lines(code, enhanced, lines)
    if len(data) > MAX_LINE:  # some line may be too long: measure each in octets
        return b"".join(_fit(line) for line in data.splitlines(keepends=True))
    return data


def _lines(code: int, enhanced: Enhanced | None, lines: tuple[str, ...]) -> bytes:
    prefix = "{}.{}.{} ".format(*enhanced) if enhanced is not None else ""
    last = len(lines) - 1
    out = []
    for i, line in enumerate(lines):
        sep = " " if i == last else "-"
        body = (prefix + line).rstrip(" ")
        out.append(f"{code}{sep}{body}\r\n" if body else f"{code}{sep.strip()}\r\n")
    return "".join(out).encode("utf-8")


class SMTPError(Exception):
    """
    Raised by a plug point to refuse: carries the L{Reply} the client gets.

    C{SMTPError(Reply(550, (5, 1, 1), "No such user"))} or, shorter,
    C{SMTPError(550, (5, 1, 1), "No such user")}.
    """

    def __init__(
        self,
        reply: Reply | int,
        enhanced: Enhanced | None = None,
        text: str | tuple[str, ...] = "",
    ) -> None:
        if not isinstance(reply, Reply):
            reply = Reply(reply, enhanced, text)
        if reply.code < 400:
            raise ValueError(f"SMTPError needs a 4xx or 5xx reply, not {reply.code}")
        super().__init__(str(reply))
        self.reply = reply


# -- named replies -----------------------------------------------------------
# Positive

OK = Reply(250, (2, 0, 0), "OK")
SENDER_OK = Reply(250, (2, 1, 0), "Sender OK")
RECIPIENT_OK = Reply(250, (2, 1, 5), "Recipient OK")
RESET_OK = Reply(250, (2, 0, 0), "Reset OK")
START_DATA = Reply(354, None, "End data with <CR><LF>.<CR><LF>")
CANNOT_VRFY = Reply(
    252, (2, 5, 0), "Cannot VRFY user, but will accept message and attempt delivery"
)


@functools.lru_cache(maxsize=64)
def greeting(hostname: str, software: str = "mailframe") -> Reply:
    """The 220 greeting (one value per name: it is sent on every connection)."""
    return Reply(220, None, f"{hostname} ESMTP {software}")


@functools.lru_cache(maxsize=64)
def closing(hostname: str) -> Reply:
    """The 221 reply to QUIT (one value per name)."""
    return Reply(221, (2, 0, 0), f"{hostname} closing connection")


def accepted(queueID: str) -> Reply:
    """The 250 after the final dot: the message is durable."""
    return Reply(250, (2, 0, 0), f"OK queued as {queueID}")


def chunkReceived(size: int) -> Reply:
    """The 250 to a BDAT chunk that is not the last."""
    return Reply(250, (2, 0, 0), f"{size} octets received")


# Syntax and sequence (RFC 5321 4.2.4, RFC 3463 5.5.x)

UNRECOGNIZED = Reply(500, (5, 5, 1), "Command unrecognized")
LINE_TOO_LONG = Reply(500, (5, 5, 6), "Line too long")
BAD_ENCODING = Reply(500, (5, 5, 2), "Command is not valid UTF-8 or contains NUL")
NOT_IMPLEMENTED = Reply(502, (5, 5, 1), "Command not implemented")
BAD_SEQUENCE = Reply(503, (5, 5, 1), "Bad sequence of commands")
NO_PARAMETERS = Reply(501, (5, 5, 4), "This command takes no arguments")
UNKNOWN_PARAMETER = Reply(555, (5, 5, 4), "Unsupported parameter")
NO_VALID_RECIPIENTS = Reply(554, (5, 5, 1), "No valid recipients")

# Addresses

PATH_TOO_LONG = Reply(501, (5, 1, 3), "Path too long")
LOCAL_PART_TOO_LONG = Reply(501, (5, 1, 3), "Local part too long (at most 64 octets)")
DOMAIN_TOO_LONG = Reply(501, (5, 1, 3), "Domain too long (at most 255 octets)")
UTF8_WITHOUT_SMTPUTF8 = Reply(
    553, (5, 6, 7), "UTF-8 address requires the SMTPUTF8 parameter on MAIL"
)
USER_UNKNOWN = Reply(550, (5, 1, 1), "No such user here")
RELAY_DENIED = Reply(550, (5, 7, 1), "Relaying denied")
TOO_MANY_RECIPIENTS = Reply(452, (4, 5, 3), "Too many recipients")

# Message data

MESSAGE_TOO_BIG = Reply(552, (5, 3, 4), "Message size exceeds fixed maximum message size")
DATA_LINE_TOO_LONG = Reply(
    550, (5, 6, 0), "Message has a line longer than 1000 octets (RFC 5321 4.5.3.1.6)"
)
BARE_LINE_ENDING = Reply(
    550, (5, 5, 2), "Message contains a bare CR or LF; lines must end with CRLF"
)

# Session

TIMEOUT = Reply(421, (4, 4, 2), "Timeout exceeded, closing connection")
TOO_MANY_ERRORS = Reply(421, (4, 7, 0), "Too many errors, closing connection")
SHUTTING_DOWN = Reply(421, (4, 3, 2), "Service shutting down, closing connection")
LOCAL_ERROR = Reply(451, (4, 3, 0), "Local error in processing; try again later")
NO_SERVICE = Reply(503, (5, 5, 1), "No service here; send QUIT")
