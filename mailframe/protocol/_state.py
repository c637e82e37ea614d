"""
The SMTP server session state machine, as data.

Owns: the states; which command is allowed in which state and the state it
leads to after a positive or a negative reply; the replies that answer no
command (the greeting, a 421); the guards that refuse a command a state
would allow, or give a refusal of its own, when a fact of the session
holds (no recipient accepted, BODY=BINARYMIME, an extension not offered,
TLS already active, a failed chunk); and where a message the core refuses
itself leads.  These tables are the only place transitions and sequence
refusals live: L{mailframe.protocol.server} reads them (through the lookups
precomputed at the end of this module) and C{docs/statemachine.py} draws
them.  Must not: parse, buffer, or import twisted or zope.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import ClassVar, NamedTuple

from mailframe import reply as R
from mailframe.protocol import _events as E

__all__ = [
    "ADMISSION",
    "BINARY_BODY",
    "CHUNK_FAILED",
    "CLEAR",
    "CLOSING",
    "DIALECTS",
    "FACTS",
    "GREETING_REPLIES",
    "GUARDS",
    "HANDSHAKE",
    "LAST_CHUNK_REFUSED",
    "LMTP",
    "NOT_OFFERED",
    "NO_CHUNKING",
    "NO_STARTTLS",
    "NO_TRANSACTION",
    "PAUSED_IN",
    "RCPT_REFUSED",
    "REFUSALS",
    "SAME",
    "SMTP",
    "TLS_ACTIVE",
    "TRANSACTION_FACTS",
    "TRANSITIONS",
    "Admission",
    "Dialect",
    "Guard",
    "State",
    "Transition",
]


class _StateType(type):
    """Iterating over L{State} gives its members, in order, as for an Enum."""

    _members: tuple[State, ...]

    def __iter__(cls) -> Iterator[State]:
        return iter(cls._members)


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
"""
In a transition: the transaction is forgotten, and the session goes back to
READY, or to CONNECTED if no HELO/EHLO was accepted.
"""

Target = State | str | None

# -- facts --------------------------------------------------------------------
#
# A fact is something the session knows besides its state.  The core keeps
# the facts that hold in a set; a guard names one.

RCPT_REFUSED = "a RCPT was refused"
BINARY_BODY = "MAIL said BODY=BINARYMIME"
CHUNK_FAILED = "a chunk of this message failed"
TLS_ACTIVE = "TLS is active"
NO_STARTTLS = "STARTTLS not offered"
NO_CHUNKING = "CHUNKING not offered"

FACTS: Mapping[str, str] = {
    RCPT_REFUSED: "after a negative reply to RCPT, until the transaction ends",
    BINARY_BODY: "after MAIL with BODY=BINARYMIME, until the transaction ends",
    CHUNK_FAILED: "after a refused chunk that was not the last, until the transaction ends",
    TLS_ACTIVE: "after the STARTTLS handshake began",
    NO_STARTTLS: "while the last EHLO reply did not offer STARTTLS (or none was sent)",
    NO_CHUNKING: "while the last EHLO reply did not offer CHUNKING (or none was sent)",
}
"""Every fact, and when it holds (for the documentation)."""

NOT_OFFERED: Mapping[str, str] = {"STARTTLS": NO_STARTTLS, "CHUNKING": NO_CHUNKING}
"""EHLO keyword -> the fact that holds while the last EHLO reply did not offer it."""

TRANSACTION_FACTS = frozenset({RCPT_REFUSED, BINARY_BODY, CHUNK_FAILED})
"""The facts forgotten with the transaction (RSET, HELO/EHLO, the end of a message)."""


# -- commands ---------------------------------------------------------------------


class Transition(NamedTuple):
    """One row of the command table."""

    allowed: frozenset[State]
    positive: Target
    negative: Target
    refusal: R.Reply  # the 503 when the command comes in another state
    replies: frozenset[int] = frozenset(range(200, 300))  # its positive replies
    refused: str | None = None  # the fact a negative reply makes hold


_S = State
_OPEN = frozenset({_S.CONNECTED, _S.READY, _S.MAIL, _S.RCPT})
_EVERY = frozenset(set(State) - {_S.GREETING, _S.CLOSED, _S.DATA, _S.BDAT, _S.TLS})
_2XX = range(200, 300)

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
        refused=RCPT_REFUSED,
    ),
    E.Data: Transition(
        frozenset({_S.RCPT}),
        _S.DATA,
        SAME,
        R.BAD_SEQUENCE.withText("Need RCPT before DATA"),
        replies=frozenset({354}),
    ),
    # BDAT is not answered itself: it is admitted (to BDAT) or its chunk is
    # read and refused; the chunk's end is answered
    E.Bdat: Transition(
        frozenset({_S.RCPT, _S.CHUNKING}),
        _S.BDAT,
        SAME,
        R.BAD_SEQUENCE.withText("BDAT needs MAIL and RCPT first"),
    ),
    # a refused chunk: later chunks of the message get 503 until RSET
    E.EndOfChunk: Transition(
        frozenset({_S.BDAT}), _S.CHUNKING, _S.CHUNKING, R.BAD_SEQUENCE, refused=CHUNK_FAILED
    ),
    E.EndOfMessage: Transition(frozenset({_S.DATA, _S.BDAT}), CLEAR, CLEAR, R.BAD_SEQUENCE),
    E.Rset: Transition(_EVERY - {_S.REJECTED}, CLEAR, SAME, R.BAD_SEQUENCE),
    E.Noop: Transition(_EVERY - {_S.REJECTED}, SAME, SAME, R.BAD_SEQUENCE),
    E.Help: Transition(_EVERY - {_S.REJECTED}, SAME, SAME, R.BAD_SEQUENCE),
    E.Vrfy: Transition(_EVERY - {_S.REJECTED, _S.CHUNKING}, SAME, SAME, R.BAD_SEQUENCE),
    E.Expn: Transition(_EVERY - {_S.REJECTED, _S.CHUNKING}, SAME, SAME, R.BAD_SEQUENCE),
    E.ExtensionCommand: Transition(
        _EVERY - {_S.REJECTED, _S.CHUNKING},
        SAME,
        SAME,
        R.BAD_SEQUENCE,
        replies=frozenset({*_2XX, 334}),
    ),
    E.StartTLS: Transition(
        frozenset({_S.READY, _S.MAIL, _S.RCPT}),
        _S.TLS,
        SAME,
        R.BAD_SEQUENCE.withText("Send EHLO first, and STARTTLS once"),
        replies=frozenset({220}),
    ),
    E.ContinuationLine: Transition(
        _OPEN, SAME, SAME, R.BAD_SEQUENCE, replies=frozenset({*_2XX, 334})
    ),
    E.Quit: Transition(_EVERY, _S.CLOSED, SAME, R.BAD_SEQUENCE),
}
"""
command type -> (states where allowed, after 2xx/3xx, after 4xx/5xx, the
503 otherwise, the positive replies it may get, the fact a negative reply
makes hold).  A 334 to any command means the next line is its answer.
"""

REFUSALS: Mapping[State, R.Reply] = {_S.REJECTED: R.NO_SERVICE}
"""In these states a command that is not allowed gets this reply, not its row's."""


class Guard(NamedTuple):
    """
    In C{states}, while C{fact} holds, the command gets C{reply}: before the
    state is checked, so a guard may refuse a command its state allows, or
    give one its state refuses a reply of its own.  C{unread}: the command
    is unknown in this session (its extension was not offered), so a BDAT's
    chunk is not read either, its framing being unknown; other refused BDAT
    chunks are read and discarded first.
    """

    fact: str
    states: frozenset[State]
    reply: R.Reply
    unread: bool = False


_TRANSACTION = frozenset({_S.READY, _S.MAIL, _S.RCPT})
_NO_RECIPIENT = Guard(RCPT_REFUSED, frozenset({_S.MAIL}), R.NO_VALID_RECIPIENTS)  # RFC 2920 3.1

GUARDS: Mapping[type[E.Event], tuple[Guard, ...]] = {
    E.Data: (
        _NO_RECIPIENT,
        Guard(
            BINARY_BODY,
            frozenset({_S.RCPT}),
            R.BAD_SEQUENCE.withText("BODY=BINARYMIME needs BDAT, not DATA"),
        ),
    ),
    E.Bdat: (
        Guard(NO_CHUNKING, frozenset(State), R.UNRECOGNIZED, unread=True),
        Guard(
            CHUNK_FAILED,
            frozenset({_S.CHUNKING}),
            R.BAD_SEQUENCE.withText("This message failed; send RSET"),
        ),
        _NO_RECIPIENT,
    ),
    E.StartTLS: (
        Guard(TLS_ACTIVE, _TRANSACTION, R.BAD_SEQUENCE.withText("TLS is already active")),
        Guard(NO_STARTTLS, _TRANSACTION, R.UNRECOGNIZED),
    ),
}
"""command type -> its guards, the first whose fact holds deciding."""


# -- what answers no command, and what no reply decides ---------------------------------

GREETING_REPLIES: Mapping[int, State] = {220: _S.CONNECTED, 554: _S.REJECTED, 421: _S.CLOSED}
"""In GREETING, the greeting's code -> the next state; no other code is a greeting."""

CLOSING = 421
"""
After the greeting, this code may answer any command or come unasked; it
always leads to CLOSED.  No other reply may be sent while no command awaits
one.
"""

HANDSHAKE: tuple[State, State] = (_S.TLS, _S.CONNECTED)
"""C{startTLS()}: allowed in the first state; the handshake starts the session again."""

PAUSED_IN = frozenset({_S.GREETING, _S.TLS, _S.CLOSED})
"""States in which nothing is read (C{nextEvent} returns PAUSED)."""

LAST_CHUNK_REFUSED: Mapping[State, Target] = {_S.CHUNKING: CLEAR}
"""
Where a refused BDAT LAST leads (its chunk read and discarded): in CHUNKING
it ends the failed message; in other states nothing changes.  A message
the core refuses itself once read (too big, a bare CR or LF, an overlong
line) takes the negative transition of its L{E.EndOfMessage} or
L{E.EndOfChunk}, as if the end had been answered with the refusal.
"""

NO_TRANSACTION = frozenset({_S.GREETING, _S.REJECTED, _S.CONNECTED, _S.READY, _S.CLOSED, _S.TLS})
"""States in which no MAIL transaction is open."""


# -- SMTP and LMTP -------------------------------------------------------------------------


class Dialect(NamedTuple):
    """
    What one protocol on these tables changes: the verbs that greet (each
    with whether it is extended, as EHLO is: its reply lists the
    extensions), the extensions always in force (in every reply's enhanced
    status codes, whatever the greeting's reply listed), and the events
    answered once per accepted recipient, in the order of the RCPT commands
    (duplicates included), instead of once; their transition is taken with
    the last of those replies.
    """

    name: str
    hello: Mapping[str, bool]
    alwaysOffered: frozenset[str]
    perRecipient: frozenset[type[E.Event]]


SMTP = Dialect("SMTP", {"HELO": False, "EHLO": True}, frozenset(), frozenset())
"""SMTP (RFC 5321): HELO or EHLO; one reply to each command and to each end of data."""

LMTP = Dialect(
    "LMTP",
    {"LHLO": True},
    frozenset({"PIPELINING", "ENHANCEDSTATUSCODES"}),
    frozenset({E.EndOfMessage}),
)
"""
LMTP (RFC 2033): LHLO only (HELO and EHLO are unknown commands, 500);
PIPELINING and ENHANCEDSTATUSCODES always; the end of a message (the final
dot, BDAT LAST) answered once per accepted recipient, a refusal of the
whole message included.  A refused BDAT LAST is answered so too; a
sequence error before any recipient was accepted gets its one reply.
"""

DIALECTS = (SMTP, LMTP)
"""Every dialect (for the documentation)."""


# -- the lookups the core makes, computed once from the tables above -----------------------


class Admission(NamedTuple):
    """What admitting a command in one state takes: its guards there, and its refusal."""

    guards: tuple[Guard, ...]
    refusal: R.Reply | None  # None: the state allows the command


def _admission(kind: type[E.Event], state: State) -> Admission | None:
    row = TRANSITIONS[kind]
    guards = tuple(g for g in GUARDS.get(kind, ()) if state in g.states)
    refusal = None if state in row.allowed else REFUSALS.get(state, row.refusal)
    if not guards and refusal is None:
        return None  # allowed, nothing to check: the fast path
    return Admission(guards, refusal)


ADMISSION: dict[type[E.Event], dict[State, Admission | None]] = {
    kind: {state: _admission(kind, state) for state in State} for kind in TRANSITIONS
}
"""command type -> state -> None if simply allowed, else its L{Admission}."""
