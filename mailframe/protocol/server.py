"""
L{ServerConnection}: the server side of an SMTP session, sans I/O.

Bytes go in with C{receiveData}; C{nextEvent} returns the next event, or
NEED_DATA / PAUSED; replies go out with C{send}, which returns the bytes to
write.  A command is answered before the next one is parsed: while an event
awaits its reply, C{nextEvent} returns PAUSED.  That single rule is what keeps
pipelined commands in order whatever the plug points do.

With C{lmtp=True} it speaks LMTP (RFC 2033), the L{LMTP} dialect of the
tables: LHLO greets (HELO and EHLO are unknown), PIPELINING and
ENHANCEDSTATUSCODES always hold, and the end of a message awaits one reply
per accepted recipient: C{sendEach} gives each its own, C{send} the same
one to all (a refusal of the whole message).

Owns: the protocol rules that do not depend on policy (limits, SMTPUTF8,
the BODY parameter, BDAT framing, STARTTLS buffer discard), and applying
the tables of L{mailframe.protocol._state}: every state change and every
sequence refusal comes from there, none is written here.  Must not: depend
on twisted or zope, or decide whether to accept an address or a message.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mailframe import reply as R
from mailframe.protocol import _events as E
from mailframe.protocol._buffer import (
    ChunkReader,
    DotReader,
    LineTooLong,
    ReceiveBuffer,
    _MessageChecks,
)
from mailframe.protocol._errors import CommandSyntaxError, LocalProtocolError, RemoteProtocolError
from mailframe.protocol._parse import lineParserFor, parsersFor
from mailframe.protocol._state import (
    ADMISSION,
    BINARY_BODY,
    CLEAR,
    CLOSING,
    GREETING_REPLIES,
    HANDSHAKE,
    LAST_CHUNK_REFUSED,
    LMTP,
    NO_TRANSACTION,
    NOT_OFFERED,
    PAUSED_IN,
    SMTP,
    TLS_ACTIVE,
    TRANSACTION_FACTS,
    TRANSITIONS,
    Dialect,
    State,
)

__all__ = ["Limits", "LocalProtocolError", "RemoteProtocolError", "ServerConnection"]


@dataclass(frozen=True, slots=True)
class Limits:
    """
    The bounds of a session.  C{commandLine} already includes what the
    extensions add to RFC 5321's 512 octets; C{messageSize} 0 means no limit.
    """

    commandLine: int = 512
    dataLine: int = 1000
    messageSize: int = 35 * 1024 * 1024
    recipients: int = 1000
    normaliseBareLineEndings: bool = False
    continuationLine: int = 12288 + 2  # RFC 4954 4: an AUTH response line

    def __post_init__(self) -> None:
        if self.commandLine < 512:
            raise ValueError("commandLine may not be below RFC 5321's 512 octets")
        if self.dataLine < 1000:
            raise ValueError("dataLine may not be below RFC 5321's 1000 octets")
        if self.messageSize < 0 or self.recipients < 1:
            raise ValueError("messageSize must be >= 0 and recipients >= 1")


_ERROR = E.Event()  # the pending marker for an error reply
_BAD_BODY = R.Reply(501, (5, 5, 4), "BODY must be 7BIT, 8BITMIME or BINARYMIME")
_EXCHANGE_TOO_LONG = R.Reply(500, (5, 5, 6), "Authentication exchange line is too long")
_UNOFFERED = frozenset(NOT_OFFERED.values())
_OFFERED: dict[tuple[frozenset[str], tuple[str, ...]], frozenset[str]] = {}
"""The keywords an EHLO reply offers (with the dialect's own), by its lines."""
_UNOFFERED_BY: dict[frozenset[str], frozenset[str]] = {}
"""The facts of the keywords a set of extensions lacks (L{NOT_OFFERED}), by the set."""
_BDAT = TRANSITIONS[E.Bdat]
_ADMIT_BDAT = ADMISSION[E.Bdat]


class ServerConnection:
    """
    One SMTP (or, with C{lmtp}, LMTP) server session, as a state machine
    over bytes and events.
    """

    def __init__(
        self,
        limits: Limits | None = None,
        extensionVerbs: frozenset[str] = frozenset(),
        lmtp: bool = False,
    ) -> None:
        self.limits = limits or Limits()
        self.extensionVerbs = extensionVerbs
        self.dialect: Dialect = LMTP if lmtp else SMTP
        self.lmtp = lmtp
        self._parse = lineParserFor(parsersFor(self.dialect.hello), extensionVerbs)
        self.state = State.GREETING
        self.heloName: str | None = None
        self.extended = False
        self.extensions: frozenset[str] = self.dialect.alwaysOffered
        self.lastLine = b""
        # what the session knows besides its state (see _state's facts)
        self._facts: set[str] = set(_UNOFFERED)
        self._continuation = False
        self._buffer = ReceiveBuffer()
        # receiveData is the buffer's own feed: one call fewer per read
        self.receiveData = self._buffer.feed  # type: ignore[method-assign]
        self._pending: E.Event | None = None
        self._reader: DotReader | ChunkReader | None = None
        self._readerError: R.Reply | None = None
        self._lastChunk = False
        self._chunkChecks: _MessageChecks | None = None
        self._chunkCR = False
        self._smtputf8 = False
        self._recipients = 0
        self._due = 0  # LMTP: the replies the end of a message still awaits

    # -- inspection -----------------------------------------------------

    @property
    def pending(self) -> E.Event | None:
        """The event that awaits a reply, if any."""
        return self._pending

    @property
    def repliesDue(self) -> int:
        """
        The replies the pending event still awaits: 0 if none is pending,
        else 1, or in LMTP one per accepted recipient for the end of a message.
        """
        if self._pending is None:
            return 0
        return self._due or 1

    @property
    def buffered(self) -> int:
        """Octets received and not yet consumed."""
        return len(self._buffer)

    @property
    def receiveBuffer(self) -> bytearray:
        """
        The octets received and not yet consumed, as the live buffer (read
        it, never change it).  Every event consumes input, so while it is
        empty C{nextEvent} can only return NEED_DATA or PAUSED: a driver may
        test it instead of calling.  It is the same object for the life of
        the connection.
        """
        return self._buffer.data

    @property
    def inTransaction(self) -> bool:
        return self.state not in NO_TRANSACTION

    @property
    def tlsActive(self) -> bool:
        """True once the STARTTLS handshake has begun (set it if TLS came first)."""
        return TLS_ACTIVE in self._facts

    @tlsActive.setter
    def tlsActive(self, value: bool) -> None:
        if value:
            self._facts.add(TLS_ACTIVE)
        else:
            self._facts.discard(TLS_ACTIVE)

    @property
    def facts(self) -> frozenset[str]:
        """The facts of L{mailframe.protocol._state} that hold now."""
        return frozenset(self._facts)

    # -- input ------------------------------------------------------------

    def receiveData(self, data: bytes) -> None:
        """Buffer bytes from the peer."""
        self._buffer.feed(data)

    def nextEvent(self) -> E.Event | E.Sentinel:
        """
        The next event, NEED_DATA if more bytes are needed, or PAUSED while
        an event awaits its reply.  Raises L{RemoteProtocolError} for a
        command that must be refused; its reply must be sent before anything
        else.
        """
        if self._pending is not None or self.state in PAUSED_IN:
            return E.PAUSED
        if self._reader is not None:
            return self._readMessage()
        if self._continuation:
            return self._readContinuation()
        try:
            line = self._buffer.readLine(self.limits.commandLine)
        except LineTooLong:
            return self._refuse(R.LINE_TOO_LONG)
        if line is None:
            return E.NEED_DATA
        self.lastLine = line
        try:
            event = self._parse(line)
        except CommandSyntaxError as e:
            return self._refuse(e.reply)
        return self._admit(event)

    def _readContinuation(self) -> E.Event | E.Sentinel:
        try:
            line = self._buffer.readLine(self.limits.continuationLine)
        except LineTooLong:
            self._continuation = False
            return self._refuse(_EXCHANGE_TOO_LONG)
        if line is None:
            return E.NEED_DATA
        self._continuation = False
        event = E.ContinuationLine(line)
        self._pending = event
        return event

    def _refuse(self, reply: R.Reply) -> E.Event:  # always raises
        self._pending = _ERROR
        raise RemoteProtocolError(reply)

    def _admit(self, event: E.Event) -> E.Event | E.Sentinel:
        kind = type(event)
        if kind is E.Bdat:
            return self._startChunk(event)  # type: ignore[arg-type]
        admission = ADMISSION[kind][self.state]
        if admission is not None:  # the table has a refusal or guards here
            refusal = admission.refusal
            for guard in admission.guards:
                if guard.fact in self._facts:
                    refusal = guard.reply
                    break
            if refusal is not None:
                return self._refuse(refusal)
        if kind is E.MailFrom:
            params = event.params  # type: ignore[attr-defined]
            self._smtputf8 = "SMTPUTF8" in params and "SMTPUTF8" in self.extensions
            body = params.get("BODY") or ""
            if not body.isascii():  # "BINARYM\u0131ME".upper() is BINARYMIME
                return self._refuse(_BAD_BODY)
            if body.upper() == "BINARYMIME":
                self._facts.add(BINARY_BODY)
            else:
                self._facts.discard(BINARY_BODY)
            # (an all-ASCII line holds no UTF-8 address: the cheaper test first)
            address = event.address  # type: ignore[attr-defined]
            if not self._smtputf8 and not self.lastLine.isascii() and address.isUTF8:
                return self._refuse(R.UTF8_WITHOUT_SMTPUTF8)
        elif kind is E.RcptTo:
            address = event.address  # type: ignore[attr-defined]
            if not self._smtputf8 and not self.lastLine.isascii() and address.isUTF8:
                return self._refuse(R.UTF8_WITHOUT_SMTPUTF8)
            if self._recipients >= self.limits.recipients:
                return self._refuse(R.TOO_MANY_RECIPIENTS)
        self._pending = event
        return event

    def _startChunk(self, event: E.Bdat) -> E.Event | E.Sentinel:
        admission = _ADMIT_BDAT[self.state]
        refusal: R.Reply | None = None
        if admission is not None:
            refusal = admission.refusal
            for guard in admission.guards:
                if guard.fact in self._facts:
                    if guard.unread:
                        return self._refuse(guard.reply)  # no framing known: not consumed
                    refusal = guard.reply
                    break
        if self._chunkChecks is None or refusal is not None:
            checks = _MessageChecks(self.limits.messageSize)
            if refusal is None:
                self._chunkChecks = checks
        else:
            checks = self._chunkChecks
        if (
            refusal is None
            and self.limits.messageSize
            and (checks.size + event.size > self.limits.messageSize)
        ):
            checks.error = checks.error or R.MESSAGE_TOO_BIG
        self._reader = ChunkReader(
            event.size,
            checks,
            discard=refusal is not None,
            binary=BINARY_BODY in self._facts,
            normaliseBareLineEndings=self.limits.normaliseBareLineEndings,
            prevCR=self._chunkCR,
            last=event.last,
        )
        self._readerError = refusal
        self._lastChunk = event.last
        if refusal is None:
            self.state = _BDAT.positive  # type: ignore[assignment]
        return self._readMessage()  # a refused chunk is consumed, then refused

    def _readMessage(self) -> E.Event | E.Sentinel:
        reader = self._reader
        assert reader is not None
        pieces, done = reader.read(self._buffer)
        if done:
            return self._end(reader, pieces[0] if pieces else b"")
        if pieces:
            return E.MessageData(pieces[0])
        return E.NEED_DATA

    def _end(self, reader: DotReader | ChunkReader, data: bytes) -> E.Event:
        self._reader = None
        refusal, self._readerError = self._readerError, None
        if isinstance(reader, DotReader):
            error, size, last = reader.error, reader.size, True
        else:
            last = self._lastChunk
            if refusal is not None:
                if last:
                    if self.lmtp:
                        self._due = self._recipients or 1
                    self._go(LAST_CHUNK_REFUSED.get(self.state))
                return self._refuse(refusal)
            self._chunkCR = reader.endsWithCR  # the reader judged it if last
            error, size = reader.checks.error, reader.checks.size
        if last and self.lmtp:
            self._due = self._recipients or 1  # one reply per accepted recipient
        if error is not None:
            # refused as if its end had been answered with the error
            transition = TRANSITIONS[E.EndOfMessage if last else E.EndOfChunk]
            self._go(transition.negative)
            if transition.refused is not None:
                self._facts.add(transition.refused)
            return self._refuse(error)
        event: E.Event = E.EndOfMessage(size, data) if last else E.EndOfChunk(reader.size, data)
        self._pending = event
        return event

    def _go(self, target: State | str | None) -> None:
        """Take a transition of the table to C{target}."""
        if target is CLEAR:
            self._clear()
        elif target is not None:
            self.state = target  # type: ignore[assignment]

    def _clear(self) -> None:
        self._resetTransaction()
        self.state = State.READY if self.heloName is not None else State.CONNECTED

    # -- output -----------------------------------------------------------

    def send(self, reply: R.Reply) -> bytes:
        """
        Answer the pending event (or send the greeting, or an unsolicited
        421) and return the bytes to write.
        """
        pending = self._pending
        code = reply.code
        enhanced = "ENHANCEDSTATUSCODES" in self.extensions
        if pending is None:
            if self.state is State.GREETING:
                greeted = GREETING_REPLIES.get(code)
                if greeted is None:
                    raise LocalProtocolError(
                        f"a greeting is {', '.join(map(str, GREETING_REPLIES))}, not {code}"
                    )
                self.state = greeted
                # a greeting (220, 554) carries no enhanced code: no EHLO yet
                # (RFC 2034); a 421 is the service closing the channel, as
                # it may at any time (RFC 5321 3.8), and says why in full
                return reply.toBytes(code == CLOSING)
            if code != CLOSING:
                raise LocalProtocolError("no command awaits a reply")
            self.state = State.CLOSED
            return reply.toBytes(enhanced)
        self._pending = None
        if code == CLOSING:
            self.state = State.CLOSED
            self._due = 0
            return reply.toBytes(enhanced)
        if pending is _ERROR:
            if self._due > 1:  # LMTP: the message is refused for every recipient
                return self._repeat(reply.toBytes(enhanced))
            return reply.toBytes(enhanced)
        kind = type(pending)
        transition = TRANSITIONS[kind]
        positive = code < 400
        if positive and code not in transition.replies:
            self._pending = pending
            raise LocalProtocolError(f"{code} is not a positive reply to {kind.__name__}")
        if code == 334:
            self._continuation = True  # the next line is the client's answer
        target = transition.positive if positive else transition.negative
        if kind is E.Hello:
            enhanced = False  # RFC 2034 3: not in replies to HELO/EHLO
            if positive:
                self._acceptHello(pending, reply)  # type: ignore[arg-type]
        elif kind is E.RcptTo and positive:
            self._recipients += 1
        elif kind is E.Data and positive:
            self._reader = DotReader(
                self.limits.messageSize,
                self.limits.dataLine,
                self.limits.normaliseBareLineEndings,
            )
        if target is CLEAR:
            if self._due > 1:  # LMTP: the same reply for every recipient
                self._clear()
                return self._repeat(reply.toBytes(enhanced))
            self._clear()
        elif target is not None:
            self.state = target  # type: ignore[assignment]
        if not positive and transition.refused is not None:
            self._facts.add(transition.refused)
        return reply.toBytes(enhanced)

    def _repeat(self, data: bytes) -> bytes:
        due, self._due = self._due, 0
        return data * due

    def sendEach(self, replies: Sequence[R.Reply]) -> bytes:
        """
        LMTP: answer the end of a message with one reply per accepted
        recipient, in the order of their RCPT commands (L{repliesDue} of
        them), and return the bytes to write.  A 421 is not one of them
        (it would end the session after the first recipients): send it
        with L{send}.
        """
        pending = self._pending
        if pending is not _ERROR and type(pending) not in self.dialect.perRecipient:
            raise LocalProtocolError("no end of a message awaits replies per recipient")
        due = self.repliesDue
        if len(replies) != due:
            raise LocalProtocolError(f"{due} replies are due, not {len(replies)}")
        if due == 1:
            return self.send(replies[0])
        enhanced = "ENHANCEDSTATUSCODES" in self.extensions
        allowed = TRANSITIONS[E.EndOfMessage].replies
        out = []
        for reply in replies:
            if reply.code == CLOSING or (reply.code < 400 and reply.code not in allowed):
                raise LocalProtocolError(f"{reply.code} may not answer one recipient")
            out.append(reply.toBytes(enhanced))
        self._pending = None
        self._due = 0
        if pending is not _ERROR:  # a refused message took its transition already
            self._clear()
        return b"".join(out)

    def _acceptHello(self, event: E.Hello, reply: R.Reply) -> None:
        self._resetTransaction()
        self.heloName = event.name
        self.extended = event.extended
        if event.extended:
            key = (self.dialect.alwaysOffered, reply.lines)
            extensions = _OFFERED.get(key)
            if extensions is None:  # each EHLO reply's keywords, found once
                if len(_OFFERED) >= 256:
                    _OFFERED.clear()
                extensions = _OFFERED[key] = self.dialect.alwaysOffered | frozenset(
                    line.split(" ", 1)[0].upper() for line in reply.lines[1:] if line
                )
            self.extensions = extensions
        else:
            self.extensions = self.dialect.alwaysOffered
        self._offered()

    def _offered(self) -> None:
        """The facts of what the last EHLO reply did not offer."""
        unoffered = _UNOFFERED_BY.get(self.extensions)
        if unoffered is None:
            if len(_UNOFFERED_BY) >= 256:
                _UNOFFERED_BY.clear()
            unoffered = _UNOFFERED_BY[self.extensions] = frozenset(
                fact for keyword, fact in NOT_OFFERED.items() if keyword not in self.extensions
            )
        self._facts = (self._facts - _UNOFFERED) | unoffered

    def _resetTransaction(self) -> None:
        self._smtputf8 = False
        self._recipients = 0
        self._chunkChecks = None
        self._chunkCR = False
        self._facts -= TRANSACTION_FACTS

    # -- starting over -----------------------------------------------------

    def restart(self, rejected: bool = False) -> None:
        """
        The session starts over on the same connection, as after a new
        greeting (XCLIENT's 220): forget HELO/EHLO and what it offered; the
        client must greet again.  With C{rejected} the new greeting was a
        refusal: only QUIT is served (as after a 554 greeting).  TLS stays;
        what is buffered stays (the client is a trusted front end).

        @raise LocalProtocolError: in a transaction, or with a reply pending.
        """
        if self._pending is not None or self.state not in (State.CONNECTED, State.READY):
            raise LocalProtocolError("restart() only between transactions, with no reply due")
        self._resetTransaction()
        self.heloName = None
        self.extended = False
        self.extensions = self.dialect.alwaysOffered
        self._offered()
        self.state = State.REJECTED if rejected else State.CONNECTED

    # -- TLS --------------------------------------------------------------

    def startTLS(self) -> None:
        """
        The TLS handshake starts: discard everything buffered before it and
        forget HELO/EHLO and the transaction (RFC 3207 4.2).
        """
        before, after = HANDSHAKE
        if self.state is not before:
            raise LocalProtocolError("startTLS() only after a 220 reply to STARTTLS")
        self._buffer.clear()
        self._resetTransaction()
        self._reader = None
        self._continuation = False
        self.heloName = None
        self.extended = False
        self.extensions = self.dialect.alwaysOffered
        self._offered()
        self._facts.add(TLS_ACTIVE)
        self.state = after
