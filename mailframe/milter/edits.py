"""
Applying what a content filter (a milter, rspamd) asks at the end of a
message: header fields added, inserted, changed or deleted; recipients
added or deleted; the sender changed; the body replaced; the message
quarantined.

All of it is collected and checked first (L{Changes}); the L{Message} and
the L{Envelope} change only in L{Changes.apply}, all at once, so a filter
that fails halfway (a bad request, a dropped connection, a timeout) changes
nothing.  A replacement body is written to storage of its own as it comes
(L{BodyWriter}) and swapped in only then.

Header fields as a filter sees them: every field of the message as it
stands except the server's own C{Received:} field (L{Message.traceField}),
which keeps its place from the top (first, unless a filter before prepended
something above it); indexes of inserts and changes count the fields the
filter sees.

Owns: the meaning of the changes.  Must not: import twisted or zope; speak
a protocol.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from mailframe.address import Address, AddressError, parseMailbox
from mailframe.envelope import Envelope, Recipient
from mailframe.message import BodyReplacement, Message

__all__ = [
    "BodyWriter",
    "Changes",
    "HeaderEditor",
    "fieldBytes",
    "parseArguments",
    "parsePath",
    "splitField",
]

_BARE_LF = re.compile(rb"(?<!\r)\n")


def fieldBytes(name: str, value: str, leadingSpace: bool = False) -> bytes:
    """
    A header field from a filter's name and value (its lines separated by
    LF or CRLF): CRLF line endings, one space after the colon unless the
    value brings its own (C{leadingSpace}).
    """
    text = value.replace("\r\n", "\n").replace("\n", "\r\n")
    separator = ":" if leadingSpace else ": "
    return f"{name}{separator}{text}\r\n".encode("utf-8", "surrogateescape")


def splitField(raw: bytes, leadingSpace: bool = False) -> tuple[str, str]:
    """
    A stored field as a milter is sent it: its name, and its value without
    the CRLF at its end, lines separated by LF, the one space after the
    colon left out (unless C{leadingSpace}), as Postfix does.
    """
    name, _, value = raw.partition(b":")
    if value.endswith(b"\r\n"):
        value = value[:-2]
    if not leadingSpace and value.startswith(b" "):
        value = value[1:]
    value = value.replace(b"\r\n", b"\n")
    return (
        name.rstrip(b" \t").decode("utf-8", "surrogateescape"),
        value.decode("utf-8", "surrogateescape"),
    )


def _named(raw: bytes, name: str) -> bool:
    return raw.partition(b":")[0].rstrip(b" \t").lower() == name.lower().encode(
        "utf-8", "surrogateescape"
    )


class HeaderEditor:
    """
    The header fields of a message being edited (see the module docstring):
    L{visible} are the fields a filter sees; L{result} puts the server's
    trace field back.
    """

    def __init__(self, fields: list[bytes], trace: bytes | None) -> None:
        self.trace = trace
        self.above = 0
        if trace is not None and trace in fields:
            self.above = fields.index(trace)
            fields = fields[: self.above] + fields[self.above + 1 :]
        else:
            self.trace = None
        self.visible = fields
        self.changed = False

    def add(self, name: str, value: str, leadingSpace: bool = False) -> None:
        """A field at the end of the header section."""
        self.visible.append(fieldBytes(name, value, leadingSpace))
        self.changed = True

    def insert(self, index: int, name: str, value: str, leadingSpace: bool = False) -> None:
        """A field before the C{index}th (0: at the top; past the end: at the end)."""
        self.visible.insert(max(0, index), fieldBytes(name, value, leadingSpace))
        self.changed = True

    def change(self, index: int, name: str, value: str, leadingSpace: bool = False) -> None:
        """
        Replace the C{index}th field named C{name} (1-based; 0 counts as 1),
        or delete it when C{value} is empty; a field that is not there is
        added (libmilter's smfi_chgheader), unless it was to be deleted.
        """
        index = max(index, 1)
        seen = 0
        for i, raw in enumerate(self.visible):
            if _named(raw, name):
                seen += 1
                if seen == index:
                    if value:
                        self.visible[i] = fieldBytes(name, value, leadingSpace)
                    else:
                        del self.visible[i]
                    self.changed = True
                    return
        if value:
            self.add(name, value, leadingSpace)

    def remove(self, name: str, index: int = 0) -> None:
        """
        Delete fields named C{name}: every one (C{index} 0), the C{index}th
        (1-based), or counting from the last (negative), as rspamd asks.
        """
        positions = [i for i, raw in enumerate(self.visible) if _named(raw, name)]
        if index == 0:
            chosen = positions
        elif -len(positions) <= index <= len(positions) and index:
            chosen = [positions[index - 1 if index > 0 else index]]
        else:
            chosen = []
        for i in reversed(chosen):
            del self.visible[i]
            self.changed = True

    def result(self) -> list[bytes]:
        fields = list(self.visible)
        if self.trace is not None:
            fields.insert(min(self.above, len(fields)), self.trace)
        return fields


def parsePath(text: str, nullAllowed: bool = False) -> Address:
    """
    An address as a milter gives it (C{<user@example.org>} or without the
    angle brackets); C{<>} only where C{nullAllowed}.

    @raise ValueError: not a mailbox.
    """
    text = text.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    if not text:
        if nullAllowed:
            return Address.null()
        raise ValueError("an empty address")
    try:
        return parseMailbox(text)
    except AddressError as e:
        raise ValueError(str(e)) from None


def parseArguments(text: str | None) -> dict[str, str | None]:
    """ESMTP arguments (C{NOTIFY=NEVER ORCPT=rfc822;a@b}) as a parameter mapping."""
    params: dict[str, str | None] = {}
    for word in (text or "").split():
        key, equals, value = word.partition("=")
        if not key:
            raise ValueError(f"bad ESMTP argument {word!r}")
        params[key.upper()] = value if equals else None
    return params


class BodyWriter:
    """
    A replacement body as it arrives in pieces: bare LFs become CRLF (across
    pieces), it ends with CRLF, and it may not grow past C{limit} octets
    (0: no limit).
    """

    def __init__(self, replacement: BodyReplacement, limit: int = 0) -> None:
        self.replacement = replacement
        self.limit = limit
        self._carry = b""
        self._last = b""

    def write(self, data: bytes) -> None:
        data = self._carry + data
        self._carry = b""
        if data.endswith(b"\r"):
            data, self._carry = data[:-1], b"\r"
        if not data:
            return
        data = _BARE_LF.sub(b"\r\n", data)
        self._last = (self._last + data)[-2:]
        self.replacement.write(data)
        if self.limit and self.replacement.size > self.limit:
            raise ValueError(f"the replacement body is larger than {self.limit} octets")

    def finish(self) -> None:
        if self._carry:
            carry, self._carry = self._carry, b""
            self._last = (self._last + carry)[-2:]
            self.replacement.write(carry)
        if self._last and self._last != b"\r\n":
            self.replacement.write(b"\r\n")

    def discard(self) -> None:
        self.replacement.discard()


@dataclass
class Changes:
    """
    What one filter asked at the end of one message, collected in order
    and applied at once (L{apply}).  Recipient and sender requests are
    checked as they come (L{addRecipient} ... raise ValueError).
    """

    headers: HeaderEditor | None = None
    added: list[Recipient] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    sender: tuple[Address, dict[str, str | None] | None] | None = None
    body: BodyWriter | None = None
    quarantine: str | None = None

    def headerEditor(self, message: Message) -> HeaderEditor:
        if self.headers is None:
            self.headers = HeaderEditor(message.headerFields(), message.traceField)
        return self.headers

    def addRecipient(self, address: str, args: str | None = None) -> None:
        params: Mapping[str, str | None] = MappingProxyType(parseArguments(args))
        self.added.append(Recipient(parsePath(address), params))

    def deleteRecipient(self, address: str) -> None:
        self.deleted.append(str(parsePath(address)))

    def changeSender(self, address: str, args: str | None = None) -> None:
        self.sender = (
            parsePath(address, nullAllowed=True),
            parseArguments(args) if args is not None else None,
        )

    def bodyWriter(self, message: Message, limit: int = 0) -> BodyWriter:
        if self.body is None:
            self.body = BodyWriter(message.bodyReplacement(), limit)
        return self.body

    @property
    def empty(self) -> bool:
        return (
            (self.headers is None or not self.headers.changed)
            and not self.added
            and not self.deleted
            and self.sender is None
            and self.body is None
            and self.quarantine is None
        )

    def discard(self) -> None:
        """Nothing will be applied: free the replacement body's storage."""
        if self.body is not None:
            self.body.discard()
            self.body = None

    def apply(self, message: Message, envelope: Envelope) -> None:
        """
        Change the message and the envelope.  The header fields are checked
        before anything changes (ValueError, nothing changed).
        """
        fields = None
        if self.headers is not None and self.headers.changed:
            fields = self.headers.result()
        if self.body is not None:
            self.body.finish()
        if fields is not None:
            message.replaceHeaderFields(fields)
        if self.deleted:
            gone = {a.lower() for a in self.deleted}
            envelope.recipients[:] = [
                r for r in envelope.recipients if str(r.address).lower() not in gone
            ]
        for recipient in self.added:
            if all(r.address != recipient.address for r in envelope.recipients):
                envelope.recipients.append(recipient)
        if self.sender is not None:
            envelope.mailFrom, params = self.sender
            if params is not None:
                envelope.mailParams = MappingProxyType(params)
        if self.quarantine is not None:
            envelope.quarantine = self.quarantine
        if self.body is not None:
            body, self.body = self.body, None
            message.replaceBody(body.replacement)
