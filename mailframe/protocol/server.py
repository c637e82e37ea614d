"""
L{ServerConnection}: the server side of an SMTP session, sans I/O.

Bytes go in with C{receiveData}; C{nextEvent} returns the next event, or
NEED_DATA / PAUSED; replies go out with C{send}, which returns the bytes to
write.  A command is answered before the next one is parsed: while an event
awaits its reply, C{nextEvent} returns PAUSED.  That single rule is what keeps
pipelined commands in order whatever the plug points do.

Owns: the protocol rules that do not depend on policy (sequence, limits,
SMTPUTF8, BINARYMIME, BDAT framing, STARTTLS buffer discard).  Must not:
depend on twisted or zope, or decide whether to accept an address or a
message.
"""

from __future__ import annotations

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
from mailframe.protocol._parse import parseCommand
from mailframe.protocol._state import CLEAR, NO_TRANSACTION, TRANSITIONS, State

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
_2XX = range(200, 300)
_POSITIVE: dict[type, range | tuple[int, ...]] = {
    E.Data: (354,),
    E.StartTLS: (220,),
    E.ExtensionCommand: (*_2XX, 334),
    E.ContinuationLine: (*_2XX, 334),
}
"""The positive replies a command may get, where they are not just 2xx."""


class ServerConnection:
    """One SMTP server session, as a state machine over bytes and events."""

    def __init__(
        self, limits: Limits | None = None, extensionVerbs: frozenset[str] = frozenset()
    ) -> None:
        self.limits = limits or Limits()
        self.extensionVerbs = extensionVerbs
        self.state = State.GREETING
        self.heloName: str | None = None
        self.extended = False
        self.extensions: frozenset[str] = frozenset()
        self.lastLine = b""
        self.tlsActive = False
        self._continuation = False
        self._buffer = ReceiveBuffer()
        self._pending: E.Event | None = None
        self._reader: DotReader | ChunkReader | None = None
        self._readerError: R.Reply | None = None
        self._lastChunk = False
        self._chunkChecks: _MessageChecks | None = None
        self._chunkCR = False
        self._bdatFailed = False
        self._smtputf8 = False
        self._body = ""
        self._recipients = 0
        self._rcptAttempts = 0

    # -- inspection -----------------------------------------------------

    @property
    def pending(self) -> E.Event | None:
        """The event that awaits a reply, if any."""
        return self._pending

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
        test it instead of calling.
        """
        return self._buffer.data

    @property
    def inTransaction(self) -> bool:
        return self.state not in NO_TRANSACTION

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
        if self._pending is not None or self.state in (State.GREETING, State.CLOSED):
            return E.PAUSED
        if self._reader is not None:
            return self._readMessage()
        if self.state is State.TLS:
            return E.PAUSED
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
            event = parseCommand(line, self.extensionVerbs)
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
        transition = TRANSITIONS[kind]
        state = self.state
        if kind is E.Bdat:
            return self._startChunk(event)  # type: ignore[arg-type]
        if state not in transition.allowed:
            if state is State.REJECTED and kind is not E.Quit:
                return self._refuse(R.NO_SERVICE)
            if kind is E.Data and state is State.MAIL and self._rcptAttempts:
                return self._refuse(R.NO_VALID_RECIPIENTS)
            return self._refuse(transition.refusal)
        if kind is E.MailFrom:
            params = event.params  # type: ignore[attr-defined]
            self._smtputf8 = "SMTPUTF8" in params and "SMTPUTF8" in self.extensions
            body = params.get("BODY") or ""
            if not body.isascii():  # "BINARYM\u0131ME".upper() is BINARYMIME
                return self._refuse(_BAD_BODY)
            self._body = body.upper()
            if event.address.isUTF8 and not self._smtputf8:  # type: ignore[attr-defined]
                return self._refuse(R.UTF8_WITHOUT_SMTPUTF8)
        elif kind is E.RcptTo:
            if event.address.isUTF8 and not self._smtputf8:  # type: ignore[attr-defined]
                return self._refuse(R.UTF8_WITHOUT_SMTPUTF8)
            self._rcptAttempts += 1
            if self._recipients >= self.limits.recipients:
                return self._refuse(R.TOO_MANY_RECIPIENTS)
        elif kind is E.StartTLS and "STARTTLS" not in self.extensions:
            if self.tlsActive:
                return self._refuse(R.BAD_SEQUENCE.withText("TLS is already active"))
            return self._refuse(R.UNRECOGNIZED)
        elif kind is E.Data and self._body == "BINARYMIME":
            return self._refuse(R.BAD_SEQUENCE.withText("BODY=BINARYMIME needs BDAT, not DATA"))
        self._pending = event
        return event

    def _startChunk(self, event: E.Bdat) -> E.Event | E.Sentinel:
        refusal: R.Reply | None = None
        state = self.state
        if "CHUNKING" not in self.extensions:
            return self._refuse(R.UNRECOGNIZED)  # no framing known: not consumed
        if state is State.CHUNKING and self._bdatFailed:
            refusal = R.BAD_SEQUENCE.withText("This message failed; send RSET")
        elif state not in TRANSITIONS[E.Bdat].allowed:
            refusal = TRANSITIONS[E.Bdat].refusal
            if state is State.MAIL and self._rcptAttempts:
                refusal = R.NO_VALID_RECIPIENTS
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
            binary=self._body == "BINARYMIME",
            normaliseBareLineEndings=self.limits.normaliseBareLineEndings,
            prevCR=self._chunkCR,
            last=event.last,
        )
        self._readerError = refusal
        self._lastChunk = event.last
        if refusal is None:
            self.state = State.BDAT
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
                if last and self.state is State.CHUNKING:
                    self._clear()
                return self._refuse(refusal)
            self._chunkCR = reader.endsWithCR  # the reader judged it if last
            error, size = reader.checks.error, reader.checks.size
        if error is not None:
            self._clear()
            if not last:
                # the client may go on sending chunks: refuse them until RSET
                self._bdatFailed = True
                self.state = State.CHUNKING
            return self._refuse(error)
        event: E.Event = E.EndOfMessage(size, data) if last else E.EndOfChunk(reader.size, data)
        self._pending = event
        return event

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
        state = self.state
        enhanced = "ENHANCEDSTATUSCODES" in self.extensions
        if pending is None:
            if state is State.GREETING:
                if reply.code == 220:
                    self.state = State.CONNECTED
                elif reply.code == 554:
                    self.state = State.REJECTED
                elif reply.code == 421:
                    self.state = State.CLOSED
                else:
                    raise LocalProtocolError(f"a greeting is 220, 554 or 421, not {reply.code}")
                return reply.toBytes(False)
            if reply.code != 421:
                raise LocalProtocolError("no command awaits a reply")
            self.state = State.CLOSED
            return reply.toBytes(enhanced)
        self._pending = None
        if reply.code == 421:
            self.state = State.CLOSED
            return reply.toBytes(enhanced)
        if pending is _ERROR:
            return reply.toBytes(enhanced)
        kind = type(pending)
        positive = reply.code < 400
        if positive and reply.code not in _POSITIVE.get(kind, _2XX):
            self._pending = pending
            raise LocalProtocolError(f"{reply.code} is not a positive reply to {kind.__name__}")
        if reply.code == 334:
            self._continuation = True  # the next line is the client's answer
        transition = TRANSITIONS[kind]
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
            self._clear()
        elif target is not None:
            self.state = target  # type: ignore[assignment]
        if kind is E.EndOfChunk and not positive:
            self._bdatFailed = True
        return reply.toBytes(enhanced)

    def _acceptHello(self, event: E.Hello, reply: R.Reply) -> None:
        self._resetTransaction()
        self.heloName = event.name
        self.extended = event.extended
        if event.extended:
            self.extensions = frozenset(
                line.split(" ", 1)[0].upper() for line in reply.lines[1:] if line
            )
        else:
            self.extensions = frozenset()

    def _resetTransaction(self) -> None:
        self._smtputf8 = False
        self._body = ""
        self._recipients = 0
        self._rcptAttempts = 0
        self._chunkChecks = None
        self._chunkCR = False
        self._bdatFailed = False

    # -- TLS --------------------------------------------------------------

    def startTLS(self) -> None:
        """
        The TLS handshake starts: discard everything buffered before it and
        forget HELO/EHLO and the transaction (RFC 3207 4.2).
        """
        if self.state is not State.TLS:
            raise LocalProtocolError("startTLS() only after a 220 reply to STARTTLS")
        self._buffer.clear()
        self._resetTransaction()
        self._reader = None
        self._continuation = False
        self.tlsActive = True
        self.heloName = None
        self.extended = False
        self.extensions = frozenset()
        self.state = State.CONNECTED
