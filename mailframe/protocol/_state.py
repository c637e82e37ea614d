"""
The SMTP server session state machine, as data.

Owns: the states, which command is allowed in which state, and the state
each one leads to after a positive or a negative reply.  This table is the
only place transitions live; C{docs/statemachine.py} draws it.  Must not:
parse, buffer, or import twisted or zope.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar, NamedTuple

from mailframe import reply as R
from mailframe.protocol import _events as E

__all__ = ["CLEAR", "SAME", "TRANSITIONS", "State", "Transition"]


class _StateType(type):
    """Iterating over L{State} gives its members, in order, as for an Enum."""

    def __iter__(cls) -> Iterator[State]:
        return iter(cls._members)  # type: ignore[attr-defined]


class State(metaclass=_StateType):
    """
    Where a server session is.  A plain class, not an C{enum.Enum}: the
    core compares and hashes states on every command, and on Python 3.11
    reading an Enum member and hashing it each cost a Python-level call.
    """

    __slots__ = ("name", "value")

    GREETING: ClassVar[State]  # connected; our 220 (or 554) not sent yet
    REJECTED: ClassVar[State]  # greeted with 554: only QUIT is served
    CONNECTED: ClassVar[State]  # greeted; no HELO/EHLO yet
    READY: ClassVar[State]  # HELO/EHLO done, no transaction
    MAIL: ClassVar[State]  # MAIL accepted, no recipient yet
    RCPT: ClassVar[State]  # at least one recipient accepted
    DATA: ClassVar[State]  # reading the message after 354
    BDAT: ClassVar[State]  # reading a BDAT chunk
    CHUNKING: ClassVar[State]  # between BDAT chunks of one message
    TLS: ClassVar[State]  # 220 sent to STARTTLS; nothing is read until the handshake
    CLOSED: ClassVar[State]  # QUIT answered or 421 sent
    _members: ClassVar[tuple[State, ...]]

    def __init__(self, name: str) -> None:
        self.name = name
        self.value = name.lower()

    def __repr__(self) -> str:
        return f"<State.{self.name}>"

    def __reduce__(self) -> tuple[object, ...]:
        return getattr, (State, self.name)


State._members = tuple(
    State(name)
    for name in (
        "GREETING",
        "REJECTED",
        "CONNECTED",
        "READY",
        "MAIL",
        "RCPT",
        "DATA",
        "BDAT",
        "CHUNKING",
        "TLS",
        "CLOSED",
    )
)
for _member in State._members:
    setattr(State, _member.name, _member)
del _member


SAME = None
"""In a transition: the state does not change."""

CLEAR = "clear"
"""In a transition: back to READY, or to CONNECTED if no HELO/EHLO was accepted."""

Target = State | str | None


class Transition(NamedTuple):
    """One row of the table."""

    allowed: frozenset[State]
    positive: Target
    negative: Target
    refusal: R.Reply  # the 503 when the command comes in another state


_S = State
_OPEN = frozenset({_S.CONNECTED, _S.READY, _S.MAIL, _S.RCPT})
_EVERY = frozenset(set(State) - {_S.GREETING, _S.CLOSED, _S.DATA, _S.BDAT, _S.TLS})

TRANSITIONS: dict[type[E.Event], Transition] = {
    E.Hello: Transition(_OPEN, _S.READY, SAME, R.BAD_SEQUENCE),
    E.MailFrom: Transition(
        frozenset({_S.READY}),
        _S.MAIL,
        SAME,
        R.BAD_SEQUENCE.withText("Send HELO/EHLO first, and MAIL only once per message"),
    ),
    E.RcptTo: Transition(
        frozenset({_S.MAIL, _S.RCPT}),
        _S.RCPT,
        SAME,
        R.BAD_SEQUENCE.withText("Need MAIL before RCPT"),
    ),
    E.Data: Transition(
        frozenset({_S.RCPT}), _S.DATA, SAME, R.BAD_SEQUENCE.withText("Need RCPT before DATA")
    ),
    E.Bdat: Transition(
        frozenset({_S.RCPT, _S.CHUNKING}),
        _S.BDAT,
        SAME,
        R.BAD_SEQUENCE.withText("BDAT needs MAIL and RCPT first"),
    ),
    # a refused chunk: later chunks of the message get 503 until RSET
    E.EndOfChunk: Transition(frozenset({_S.BDAT}), _S.CHUNKING, _S.CHUNKING, R.BAD_SEQUENCE),
    E.EndOfMessage: Transition(frozenset({_S.DATA, _S.BDAT}), CLEAR, CLEAR, R.BAD_SEQUENCE),
    E.Rset: Transition(_EVERY - {_S.REJECTED}, CLEAR, SAME, R.BAD_SEQUENCE),
    E.Noop: Transition(_EVERY - {_S.REJECTED}, SAME, SAME, R.BAD_SEQUENCE),
    E.Help: Transition(_EVERY - {_S.REJECTED}, SAME, SAME, R.BAD_SEQUENCE),
    E.Vrfy: Transition(_EVERY - {_S.REJECTED, _S.CHUNKING}, SAME, SAME, R.BAD_SEQUENCE),
    E.Expn: Transition(_EVERY - {_S.REJECTED, _S.CHUNKING}, SAME, SAME, R.BAD_SEQUENCE),
    E.ExtensionCommand: Transition(
        _EVERY - {_S.REJECTED, _S.CHUNKING}, SAME, SAME, R.BAD_SEQUENCE
    ),
    E.StartTLS: Transition(
        frozenset({_S.READY, _S.MAIL, _S.RCPT}),
        _S.TLS,
        SAME,
        R.BAD_SEQUENCE.withText("Send EHLO first, and STARTTLS once"),
    ),
    E.ContinuationLine: Transition(_OPEN, SAME, SAME, R.BAD_SEQUENCE),
    E.Quit: Transition(_EVERY, _S.CLOSED, SAME, R.BAD_SEQUENCE),
}
"""command type -> (states where allowed, after 2xx/3xx, after 4xx/5xx, 503)."""

NO_TRANSACTION = frozenset({_S.GREETING, _S.REJECTED, _S.CONNECTED, _S.READY, _S.CLOSED, _S.TLS})
"""States in which no MAIL transaction is open."""
