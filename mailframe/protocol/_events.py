"""
The events of an SMTP session, as frozen dataclasses.

Owns: the vocabulary between the sans-IO core and whatever drives it: the
commands a client sends, the pieces of message data, and the sentinels
NEED_DATA and PAUSED.  Must not: import twisted or zope; hold behaviour.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from mailframe.address import Address

__all__ = [
    "GREETING",
    "NEED_DATA",
    "PAUSED",
    "Bdat",
    "Command",
    "ContinuationLine",
    "Data",
    "EndOfChunk",
    "EndOfMessage",
    "Event",
    "Expn",
    "ExtensionCommand",
    "Greeting",
    "Hello",
    "Help",
    "MailFrom",
    "MessageData",
    "Noop",
    "Quit",
    "RcptTo",
    "Rset",
    "Sentinel",
    "StartTLS",
    "Vrfy",
]

Params = Mapping[str, "str | None"]
_NO_PARAMS: Params = MappingProxyType({})


class Sentinel:
    """A named marker returned by C{nextEvent} instead of an event."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


NEED_DATA = Sentinel("NEED_DATA")
"""Nothing complete is buffered: feed more bytes with C{receiveData}."""

PAUSED = Sentinel("PAUSED")
"""An event awaits its reply (or the greeting is not sent): call C{send}."""


class Greeting(Sentinel):
    """The type of L{GREETING} alone, so that a table can be keyed by it."""

    __slots__ = ()


GREETING = Greeting("GREETING")
"""For a client: what the server's first reply answers, the connection itself."""


class Event:
    """Base class of every event."""

    __slots__ = ()


class Command(Event):
    """A command from the client; each one expects exactly one reply."""

    __slots__ = ()
    verb = ""


@dataclass(frozen=True, slots=True)
class Hello(Command):
    """HELO (C{extended} false) or EHLO (true) with the client's name."""

    name: str
    extended: bool

    @property
    def verb(self) -> str:  # type: ignore[override]
        return "EHLO" if self.extended else "HELO"


@dataclass(frozen=True, slots=True)
class MailFrom(Command):
    """MAIL FROM: the reverse-path and its ESMTP parameters (keys uppercase)."""

    address: Address
    params: Params = field(default_factory=lambda: _NO_PARAMS)
    verb = "MAIL"


@dataclass(frozen=True, slots=True)
class RcptTo(Command):
    """RCPT TO: the forward-path (source route removed) and its parameters."""

    address: Address
    params: Params = field(default_factory=lambda: _NO_PARAMS)
    verb = "RCPT"


@dataclass(frozen=True, slots=True)
class Data(Command):
    """DATA: a positive reply must be 354, then message data follows."""

    verb = "DATA"


@dataclass(frozen=True, slots=True)
class Bdat(Event):
    """
    BDAT (RFC 3030) as parsed: a chunk of C{size} octets follows at once.
    C{nextEvent} never returns it: the chunk comes as L{MessageData} and
    ends with L{EndOfChunk} or, for the last one, L{EndOfMessage}.
    """

    size: int
    last: bool
    verb = "BDAT"


@dataclass(frozen=True, slots=True)
class Rset(Command):
    """RSET: abort the transaction."""

    verb = "RSET"


@dataclass(frozen=True, slots=True)
class Noop(Command):
    """NOOP, with its ignored argument."""

    argument: str = ""
    verb = "NOOP"


@dataclass(frozen=True, slots=True)
class Quit(Command):
    """QUIT: reply 221 and close."""

    verb = "QUIT"


@dataclass(frozen=True, slots=True)
class Vrfy(Command):
    """VRFY with its argument (a user name or mailbox, unparsed)."""

    argument: str
    verb = "VRFY"


@dataclass(frozen=True, slots=True)
class Expn(Command):
    """EXPN with its argument (a mailing list name, unparsed)."""

    argument: str
    verb = "EXPN"


@dataclass(frozen=True, slots=True)
class Help(Command):
    """HELP with its optional topic."""

    argument: str = ""
    verb = "HELP"


@dataclass(frozen=True, slots=True)
class ExtensionCommand(Command):
    """A verb added by an ESMTP extension, with its raw argument."""

    name: str
    argument: str

    @property
    def verb(self) -> str:  # type: ignore[override]
        return self.name


@dataclass(frozen=True, slots=True)
class StartTLS(Command):
    """
    STARTTLS (RFC 3207).  After a 220 reply the session waits, reading
    nothing, until C{ServerConnection.startTLS} is called as the handshake
    begins; everything buffered before it is then discarded.
    """

    verb = "STARTTLS"


@dataclass(frozen=True, slots=True)
class ContinuationLine(Command):
    """
    The client's answer to a 334 reply (an AUTH exchange, RFC 4954): a raw
    line, not a command.  It is answered like a command: 334 asks for another.
    """

    data: bytes
    verb = "CONTINUATION"


@dataclass(frozen=True, slots=True)
class MessageData(Event):
    """
    A piece of the message: for DATA dot-unstuffed, for BDAT as sent.  Pieces
    end at line boundaries for DATA; for BDAT they end anywhere.  The last
    piece comes in the L{EndOfMessage} or L{EndOfChunk} event instead.
    """

    data: bytes


@dataclass(frozen=True, slots=True)
class EndOfChunk(Event):
    """
    A BDAT chunk that is not the last one has been read; reply 250.  C{data}
    is its last piece of message data (possibly empty).
    """

    size: int
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class EndOfMessage(Event):
    """
    The message is complete (the final dot, or BDAT LAST): reply once it is
    durable.  C{data} is the last piece of message data (possibly empty;
    the pieces before it came as L{MessageData}); C{size} counts the octets
    of the whole message as delivered.
    """

    size: int
    data: bytes = b""
