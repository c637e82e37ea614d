"""
The milter protocol (Sendmail's mail filter protocol, version 6, as Postfix
and libmilter speak it) as bytes, in both directions: the packets an MTA
sends (commands) and those a milter answers (responses), their framing, and
option negotiation.

A packet is a 4-octet length in network order (counting the command octet
and the data), one command octet, and the data: NUL-terminated strings,
32-bit and 16-bit integers in network order.  L{PacketReader} splits
received bytes into packets, with a size limit; the C{encode...} functions
make the packets an MTA sends, L{parseResponse} turns a milter's packet
into a typed event, and L{parseCommand} / the C{respond...} functions do
the same for the milter side (the tests' scripted milters).

Owns: the wire format, the protocol's constants and the rules of
negotiation (L{negotiate}).  Must not: import twisted, zope or the rest of
mailframe; do I/O; know what a stage means for a session.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import IntEnum, IntFlag

__all__ = [
    "ALL_ACTIONS",
    "BODY_CHUNK",
    "MAX_PACKET",
    "OFFERED_PROTOCOL",
    "VERSION",
    "Action",
    "Command",
    "MilterProtocolError",
    "Negotiated",
    "PacketReader",
    "Protocol",
    "Response",
    "Stage",
    "bodyChunks",
    "encodeBody",
    "encodeConnect",
    "encodeHeader",
    "encodeMacros",
    "encodeOptions",
    "encodeStrings",
    "negotiate",
    "packet",
    "parseCommand",
    "parseResponse",
    "respond",
    "respondOptions",
    "validReplyText",
]

VERSION = 6
"""The protocol version mailframe speaks (libmilter's SMFI_PROT_VERSION)."""

BODY_CHUNK = 65535
"""The most body octets in one SMFIC_BODY packet (MILTER_CHUNK_SIZE)."""

MAX_PACKET = 1 << 18
"""The largest packet accepted from a peer (data and command octet)."""

_LENGTH = struct.Struct("!I")
_OPTIONS = struct.Struct("!III")


class MilterProtocolError(Exception):
    """The peer sent something the protocol does not allow (one line)."""


class Command:
    """The command octets an MTA sends (SMFIC_*)."""

    ABORT = b"A"
    BODY = b"B"
    CONNECT = b"C"
    MACRO = b"D"
    BODYEOB = b"E"
    HELO = b"H"
    QUIT_NC = b"K"
    HEADER = b"L"
    MAIL = b"M"
    EOH = b"N"
    OPTNEG = b"O"
    QUIT = b"Q"
    RCPT = b"R"
    DATA = b"T"
    UNKNOWN = b"U"


class Response:
    """The response octets a milter sends (SMFIR_*)."""

    ADDRCPT = b"+"
    DELRCPT = b"-"
    ADDRCPT_PAR = b"2"
    SHUTDOWN = b"4"
    ACCEPT = b"a"
    REPLBODY = b"b"
    CONTINUE = b"c"
    DISCARD = b"d"
    CHGFROM = b"e"
    CONN_FAIL = b"f"
    ADDHEADER = b"h"
    INSHEADER = b"i"
    SETSYMLIST = b"l"
    CHGHEADER = b"m"
    PROGRESS = b"p"
    QUARANTINE = b"q"
    REJECT = b"r"
    SKIP = b"s"
    TEMPFAIL = b"t"
    REPLYCODE = b"y"
    OPTNEG = b"O"


class Action(IntFlag):
    """What a milter may do at the end of a message (SMFIF_*)."""

    ADDHDRS = 0x001
    CHGBODY = 0x002
    ADDRCPT = 0x004
    DELRCPT = 0x008
    CHGHDRS = 0x010
    QUARANTINE = 0x020
    CHGFROM = 0x040
    ADDRCPT_PAR = 0x080
    SETSYMLIST = 0x100


ALL_ACTIONS = Action(0x1FF)
"""Every action of version 6: mailframe lets a milter do all of them."""


class Protocol(IntFlag):
    """Steps a milter does not want, or answers it will not send (SMFIP_*)."""

    NOCONNECT = 0x000001
    NOHELO = 0x000002
    NOMAIL = 0x000004
    NORCPT = 0x000008
    NOBODY = 0x000010
    NOHDRS = 0x000020
    NOEOH = 0x000040
    NR_HDR = 0x000080
    NOUNKNOWN = 0x000100
    NODATA = 0x000200
    SKIP = 0x000400
    RCPT_REJ = 0x000800
    NR_CONN = 0x001000
    NR_HELO = 0x002000
    NR_MAIL = 0x004000
    NR_RCPT = 0x008000
    NR_DATA = 0x010000
    NR_UNKN = 0x020000
    NR_EOH = 0x040000
    NR_BODY = 0x080000
    HDR_LEADSPC = 0x100000


OFFERED_PROTOCOL = Protocol(0x1FFFFF) & ~Protocol.RCPT_REJ
"""What mailframe offers: every step may be left out or left unanswered, SMFIR_SKIP,
leading spaces of header values; not RCPT_REJ (a milter sees a recipient
before the validators decide, so refused ones are never sent again)."""


class Stage(IntEnum):
    """The stages whose macros a milter may choose (SMFIM_*), in negotiation."""

    CONNECT = 0
    HELO = 1
    ENVFROM = 2
    ENVRCPT = 3
    DATA = 4
    EOM = 5
    EOH = 6


#: The command that carries each stage's macros.
STAGE_COMMANDS: dict[Stage, bytes] = {
    Stage.CONNECT: Command.CONNECT,
    Stage.HELO: Command.HELO,
    Stage.ENVFROM: Command.MAIL,
    Stage.ENVRCPT: Command.RCPT,
    Stage.DATA: Command.DATA,
    Stage.EOM: Command.BODYEOB,
    Stage.EOH: Command.EOH,
}


# -- framing -----------------------------------------------------------------


def packet(command: bytes, data: bytes = b"") -> bytes:
    """One packet: length, command octet, data."""
    return _LENGTH.pack(len(data) + 1) + command + data


class PacketReader:
    """
    Splits received bytes into packets: C{feed(data)}, then iterate for
    each whole packet as C{(command, data)}.

    @raise MilterProtocolError: for a packet of length 0 or larger than
        C{limit} (the stream cannot be trusted after that).
    """

    __slots__ = ("_buffer", "limit")

    def __init__(self, limit: int = MAX_PACKET) -> None:
        self._buffer = bytearray()
        self.limit = limit

    def feed(self, data: bytes) -> None:
        self._buffer += data

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        buffer = self._buffer
        while len(buffer) >= 4:
            (length,) = _LENGTH.unpack_from(buffer)
            if length < 1 or length > self.limit:
                raise MilterProtocolError(f"bad packet length {length}")
            if len(buffer) < 4 + length:
                return
            command = bytes(buffer[4:5])
            data = bytes(buffer[5 : 4 + length])
            del buffer[: 4 + length]
            yield command, data


def encodeStrings(strings: Iterable[str]) -> bytes:
    """NUL-terminated strings, UTF-8 (a NUL inside one is refused)."""
    out = []
    for s in strings:
        raw = s.encode("utf-8", "surrogateescape")
        if b"\0" in raw:
            raise ValueError(f"a NUL in {s!r}")
        out.append(raw + b"\0")
    return b"".join(out)


def _strings(data: bytes, count: int | None = None) -> list[bytes]:
    """The NUL-terminated strings of C{data} (exactly C{count} if given)."""
    if data and not data.endswith(b"\0"):
        raise MilterProtocolError("a string without its NUL")
    parts = data.split(b"\0")[:-1] if data else []
    if count is not None and len(parts) != count:
        raise MilterProtocolError(f"expected {count} strings, got {len(parts)}")
    return parts


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


# -- what an MTA sends ----------------------------------------------------------


def encodeOptions(
    version: int = VERSION,
    actions: int = ALL_ACTIONS,
    protocol: int = OFFERED_PROTOCOL,
) -> bytes:
    """SMFIC_OPTNEG: the version, the actions allowed, the steps that may be left out."""
    return packet(Command.OPTNEG, _OPTIONS.pack(version, actions, protocol))


def encodeMacros(command: bytes, macros: Iterable[tuple[str, str]]) -> bytes:
    """SMFIC_MACRO: the macros of the stage whose command is C{command}."""
    return packet(Command.MACRO, command + encodeStrings(s for pair in macros for s in pair))


def encodeConnect(hostname: str, family: bytes, port: int = 0, address: str = "") -> bytes:
    """
    SMFIC_CONNECT: the client's name, its family (C{b"4"}, C{b"6"}, C{b"L"}
    for a Unix socket, C{b"U"} unknown), port and address.
    """
    data = encodeStrings([hostname]) + family
    if family != b"U":
        data += struct.pack("!H", port) + encodeStrings([address])
    return packet(Command.CONNECT, data)


def encodeHeader(name: str, value: str) -> bytes:
    return packet(Command.HEADER, encodeStrings([name, value]))


def encodeBody(chunk: bytes) -> bytes:
    if len(chunk) > BODY_CHUNK:
        raise ValueError(f"a body chunk holds at most {BODY_CHUNK} octets")
    return packet(Command.BODY, chunk)


def bodyChunks(chunks: Iterable[bytes], size: int = BODY_CHUNK) -> Iterator[bytes]:
    """Re-cut a stream of byte strings into pieces of exactly C{size} (the last shorter)."""
    pending = bytearray()
    for chunk in chunks:
        pending += chunk
        while len(pending) >= size:
            yield bytes(pending[:size])
            del pending[:size]
    if pending:
        yield bytes(pending)


# -- what a milter answers --------------------------------------------------------


@dataclass(frozen=True)
class Negotiated:
    """
    SMFIC_OPTNEG answered: the milter's version, the actions it wants, the
    protocol steps it leaves out, and the macros it asks for per stage
    (overriding the MTA's lists).
    """

    version: int
    actions: Action
    protocol: Protocol
    macros: dict[Stage, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class Reply:
    """A decision: C{response} is one of accept, continue, reject, tempfail,
    discard, skip, shutdown, conn_fail, progress (no data)."""

    response: bytes


@dataclass(frozen=True)
class ReplyCode:
    """SMFIR_REPLYCODE: an SMTP reply, C{"550 5.7.1 text"} (CRLF between lines)."""

    text: str


@dataclass(frozen=True)
class Quarantine:
    reason: str


@dataclass(frozen=True)
class AddHeader:
    name: str
    value: str


@dataclass(frozen=True)
class InsertHeader:
    index: int
    name: str
    value: str


@dataclass(frozen=True)
class ChangeHeader:
    """Change the C{index}th (1-based) field named C{name}; an empty value deletes it."""

    index: int
    name: str
    value: str


@dataclass(frozen=True)
class AddRecipient:
    address: str
    args: str | None = None


@dataclass(frozen=True)
class DeleteRecipient:
    address: str


@dataclass(frozen=True)
class ChangeSender:
    address: str
    args: str | None = None


@dataclass(frozen=True)
class ReplaceBody:
    chunk: bytes


Modification = (
    AddHeader
    | InsertHeader
    | ChangeHeader
    | AddRecipient
    | DeleteRecipient
    | ChangeSender
    | ReplaceBody
)
Event = Negotiated | Reply | ReplyCode | Quarantine | Modification

_NO_DATA = frozenset(
    {
        Response.ACCEPT,
        Response.CONTINUE,
        Response.DISCARD,
        Response.REJECT,
        Response.TEMPFAIL,
        Response.SKIP,
        Response.SHUTDOWN,
        Response.CONN_FAIL,
        Response.PROGRESS,
    }
)

#: The action each modification needs to have been negotiated.
MODIFICATION_ACTIONS: dict[type, Action] = {
    AddHeader: Action.ADDHDRS,
    InsertHeader: Action.ADDHDRS,
    ChangeHeader: Action.CHGHDRS,
    AddRecipient: Action.ADDRCPT,
    DeleteRecipient: Action.DELRCPT,
    ChangeSender: Action.CHGFROM,
    ReplaceBody: Action.CHGBODY,
    Quarantine: Action.QUARANTINE,
}

_REPLY_LINE_RE = re.compile(r"([45]\d\d)(?:([ -])([^\r\n\0]*))?\Z")
_ENHANCED_RE = re.compile(r"([245])\.\d{1,3}\.\d{1,3}(?: |\Z)")


def validReplyText(text: str) -> bool:
    """
    True for an SMTP reply as a milter gives it: one or more lines (CRLF
    between them) of the same 4xx/5xx code, C{-} after the code on every
    line but the last, an optional enhanced code of the same class.
    """
    lines = text.split("\r\n")
    if lines[-1] == "" and len(lines) > 1:
        lines.pop()
    code = lines[0][:3]
    last = len(lines) - 1
    for i, line in enumerate(lines):
        m = _REPLY_LINE_RE.match(line)
        if m is None or m.group(1) != code or (m.group(2) == "-") != (i < last):
            return False
        enhanced = _ENHANCED_RE.match(m.group(3) or "")
        if enhanced is not None and enhanced.group(1) != code[0]:
            return False
    return True


def _index(data: bytes) -> tuple[int, bytes]:
    if len(data) < 4:
        raise MilterProtocolError("an index without its four octets")
    return _LENGTH.unpack_from(data)[0], data[4:]


def _nameValue(data: bytes) -> tuple[str, str]:
    name, value = _strings(data, 2)
    if not name:
        raise MilterProtocolError("a header field without a name")
    return _text(name), _text(value)


def _addressArgs(data: bytes) -> tuple[str, str | None]:
    parts = _strings(data)
    if not 1 <= len(parts) <= 2 or not parts[0]:
        raise MilterProtocolError("expected an address and its optional ESMTP arguments")
    return _text(parts[0]), (_text(parts[1]) if len(parts) == 2 else None)


def parseNegotiation(data: bytes) -> Negotiated:
    """The data of a milter's SMFIC_OPTNEG answer."""
    if len(data) < _OPTIONS.size:
        raise MilterProtocolError("option negotiation without its three numbers")
    version, actions, protocol = _OPTIONS.unpack_from(data)
    rest = data[_OPTIONS.size :]
    macros: dict[Stage, tuple[str, ...]] = {}
    while rest:
        where, rest = _index(rest)
        end = rest.find(b"\0")
        if end < 0:
            raise MilterProtocolError("a macro list without its NUL")
        names, rest = rest[:end], rest[end + 1 :]
        try:
            stage = Stage(where)
        except ValueError:
            continue  # as Postfix does: an unknown stage is ignored
        macros[stage] = tuple(_text(names).split())
    return Negotiated(version, Action(actions & 0xFFFFFFFF), Protocol(protocol), macros)


def parseResponse(command: bytes, data: bytes) -> Event:
    """
    One milter packet as an event.

    @raise MilterProtocolError: an unknown response or malformed data.
    """
    if command in _NO_DATA:
        if data:
            raise MilterProtocolError(f"response {command!r} with {len(data)} octets of data")
        return Reply(command)
    if command == Response.OPTNEG:
        return parseNegotiation(data)
    if command == Response.REPLYCODE:
        [text] = _strings(data, 1)
        reply = _text(text)
        if not validReplyText(reply):
            raise MilterProtocolError(f"malformed SMTP reply {reply[:80]!r}")
        return ReplyCode(reply)
    if command == Response.QUARANTINE:
        [reason] = _strings(data, 1)
        return Quarantine(_text(reason))
    if command == Response.ADDHEADER:
        return AddHeader(*_nameValue(data))
    if command == Response.INSHEADER:
        index, rest = _index(data)
        return InsertHeader(index, *_nameValue(rest))
    if command == Response.CHGHEADER:
        index, rest = _index(data)
        return ChangeHeader(index, *_nameValue(rest))
    if command in (Response.ADDRCPT, Response.ADDRCPT_PAR):
        address, args = _addressArgs(data)
        if command == Response.ADDRCPT and args is not None:
            raise MilterProtocolError("SMFIR_ADDRCPT with ESMTP arguments")
        return AddRecipient(address, args)
    if command == Response.DELRCPT:
        [removed] = _strings(data, 1)
        return DeleteRecipient(_text(removed))
    if command == Response.CHGFROM:
        return ChangeSender(*_addressArgs(data))
    if command == Response.REPLBODY:
        return ReplaceBody(data)
    raise MilterProtocolError(f"unknown response {command!r}")


def negotiate(offeredActions: int, offeredProtocol: int, answer: Negotiated) -> Negotiated:
    """
    Check a milter's answer against what was offered (as Postfix does): a
    version from 2 to 6, no action that was not offered.  Steps it leaves
    out that were not offered are dropped (an old milter may set bits of
    its own version).

    @raise MilterProtocolError: the answer cannot be used.
    """
    if not 2 <= answer.version <= VERSION:
        raise MilterProtocolError(f"protocol version {answer.version} (mailframe speaks 2 to 6)")
    if answer.actions & ~offeredActions:
        raise MilterProtocolError(
            f"actions 0x{int(answer.actions):x} beyond those offered (0x{offeredActions:x})"
        )
    return Negotiated(
        answer.version,
        answer.actions,
        Protocol(answer.protocol & offeredProtocol),
        answer.macros,
    )


# -- the milter side (scripted milters, tests) ---------------------------------------


@dataclass(frozen=True)
class Received:
    """A command as a milter sees it: its octet and its parsed arguments."""

    command: bytes
    args: tuple[object, ...] = ()


def parseCommand(command: bytes, data: bytes) -> Received:
    """
    One MTA packet, for a milter: C{args} are strings, except OPTNEG
    (three ints), MACRO (the stage's command, then a dict), CONNECT
    (name, family, port, address) and BODY (the bytes).
    """
    if command == Command.OPTNEG:
        return Received(command, _OPTIONS.unpack_from(data.ljust(12, b"\0")))
    if command == Command.MACRO:
        if not data:
            raise MilterProtocolError("a macro packet without its command")
        parts = _strings(data[1:])
        pairs = dict(zip(map(_text, parts[::2]), map(_text, parts[1::2]), strict=False))
        return Received(command, (data[:1], pairs))
    if command == Command.CONNECT:
        end = data.find(b"\0")
        if end < 0:
            raise MilterProtocolError("a connect packet without the client's name")
        name, family = _text(data[:end]), data[end + 1 : end + 2]
        if family == b"U":
            return Received(command, (name, family, 0, ""))
        (port,) = struct.unpack_from("!H", data, end + 2)
        [address] = _strings(data[end + 4 :], 1)
        return Received(command, (name, family, port, _text(address)))
    if command == Command.BODY:
        return Received(command, (data,))
    return Received(command, tuple(_text(s) for s in _strings(data)))


def respond(response: bytes, *args: str | int | bytes) -> bytes:
    """
    A milter's response packet: ints are 32-bit, strings NUL-terminated,
    bytes as they are (C{respond(Response.INSHEADER, 0, "X-A", "b")}).
    """
    data = []
    for arg in args:
        if isinstance(arg, bytes):
            data.append(arg)
        elif isinstance(arg, int):
            data.append(_LENGTH.pack(arg))
        else:
            data.append(encodeStrings([arg]))
    return packet(response, b"".join(data))


def respondOptions(
    actions: int = 0,
    protocol: int = 0,
    version: int = VERSION,
    macros: Sequence[tuple[Stage, str]] = (),
) -> bytes:
    """A milter's SMFIC_OPTNEG answer, with its macro lists."""
    data = _OPTIONS.pack(version, actions, protocol)
    for stage, names in macros:
        data += _LENGTH.pack(stage) + encodeStrings([names])
    return packet(Response.OPTNEG, data)
