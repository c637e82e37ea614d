"""
The SMTP client session state machine, as data.

Owns: the client's states; what may be sent in each and where sending it
leads; which replies to which commands change the state; and the replies
and calls that end or restart a session.  These tables are the only place
the client's transitions live: L{mailframe.protocol.client} reads them and
C{docs/statemachine.py} draws them.  The client core polices framing, not
the server's sequence rules (a MAIL before EHLO is the server's to refuse):
in CONNECTED and READY every command may be sent.  Must not: parse,
buffer, or import twisted or zope.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from mailframe.protocol import _events as E

__all__ = [
    "ANY",
    "CLIENT_DIALECTS",
    "CLIENT_STATES",
    "CLOSING",
    "COMMANDS",
    "HANDSHAKE",
    "LMTP",
    "PAUSED_IN",
    "REPLIES",
    "SAME",
    "SENDS",
    "SMTP",
    "ClientDialect",
    "ClientState",
]


class ClientState:
    """Where a client session is (plain strings, compared by identity)."""

    GREETING = "GREETING"  # connected, the server's first reply not read yet
    CONNECTED = "CONNECTED"  # greeted; no EHLO/HELO accepted yet (again, after STARTTLS)
    READY = "READY"  # EHLO/HELO accepted: the capabilities are known
    DATA = "DATA"  # DATA got its 354: message data, then the end of data
    TLS = "TLS"  # STARTTLS got its 220: nothing is read until startTLS()
    CLOSED = "CLOSED"  # 421, a protocol error, QUIT answered, or close()


_C = ClientState
CLIENT_STATES = (_C.GREETING, _C.CONNECTED, _C.READY, _C.DATA, _C.TLS, _C.CLOSED)
"""Every state, in order."""

SAME = None
"""In a transition: the state does not change."""

ANY = "any"
"""In a reply rule: any code not listed on its own."""

COMMANDS = frozenset(
    {
        E.Hello,
        E.MailFrom,
        E.RcptTo,
        E.Data,
        E.Bdat,
        E.Rset,
        E.Noop,
        E.Help,
        E.Vrfy,
        E.Expn,
        E.Quit,
        E.StartTLS,
        E.ExtensionCommand,
        E.ContinuationLine,
    }
)
"""What may be sent outside DATA (BDAT with its chunk, by C{sendChunk})."""

SENDS: Mapping[str, Mapping[type[E.Event], str | None]] = {
    _C.CONNECTED: dict.fromkeys(COMMANDS, SAME),
    _C.READY: dict.fromkeys(COMMANDS, SAME),
    _C.DATA: {E.MessageData: SAME, E.EndOfMessage: _C.READY},
}
"""
state -> what may be sent in it -> the state after sending it.  Nothing may
be sent in the other states.  Every command but message data and the BDAT
chunk's own octets awaits one reply, in the order sent.
"""

REPLIES: Mapping[type[E.Event | E.Sentinel], Mapping[int | str, str]] = {
    E.Greeting: {ANY: _C.CONNECTED},  # a 554 greeting still waits for QUIT
    E.Hello: {250: _C.READY},
    E.StartTLS: {220: _C.TLS},
    E.Data: {354: _C.DATA},
    E.Quit: {ANY: _C.CLOSED},
}
"""
what a reply answers (its command's type) -> reply code -> the next state.
Any other reply leaves the state as it is.
"""

CLOSING = 421
"""
A 421, answering any command or unasked, leads to CLOSED and every byte
after it is dropped.  So does a reply that breaks the syntax or the bounds,
or any other reply that answers nothing (a L{RemoteProtocolError}).
"""

HANDSHAKE: tuple[str, str] = (_C.TLS, _C.CONNECTED)
"""
C{startTLS()}: allowed in the first state; what came with the 220 is
dropped and the capabilities forgotten, so EHLO must be sent again.
"""

PAUSED_IN = frozenset({_C.TLS, _C.CLOSED})
"""States in which no reply is read (C{nextEvent} returns PAUSED)."""


class ClientDialect(NamedTuple):
    """
    What one protocol changes for the client: the verb it greets with
    (C{hello}: for an extended greeting, True, and a plain one, False; a
    protocol without a plain greeting has no False), and the commands
    whose reply comes once per recipient accepted since the last MAIL, in
    the order of the RCPT commands (at least once), instead of once: the
    end of the data, and a BDAT chunk when it is the last one.
    """

    name: str
    hello: Mapping[bool, str]
    perRecipient: frozenset[type[E.Event]]


SMTP = ClientDialect("SMTP", {True: "EHLO", False: "HELO"}, frozenset())
"""SMTP (RFC 5321): EHLO, or HELO; one reply to each command and to the end of the data."""

LMTP = ClientDialect("LMTP", {True: "LHLO"}, frozenset({E.EndOfMessage, E.Bdat}))
"""LMTP (RFC 2033): LHLO only; the end of the data (DATA or BDAT LAST) answered per recipient."""

CLIENT_DIALECTS = (SMTP, LMTP)
"""Every dialect (for the documentation)."""
