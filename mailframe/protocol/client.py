"""
L{ClientConnection}: the client side of an SMTP session, sans I/O.

Server bytes go in with C{receiveData}; C{nextEvent} returns the next whole
reply as a L{ServerReply} (multi-line replies joined, the RFC 2034 enhanced
status code split off, and paired with the command it answers), or
NEED_DATA / PAUSED.  Commands and message data go out with C{send} (and
C{sendChunk} for BDAT), which return the bytes to write.  Replies are
matched to commands in the order the commands were sent, which is what makes
a pipelined MAIL/RCPT/DATA group (RFC 2920) safe to read back.

With C{lmtp=True} it speaks LMTP (RFC 2033), the L{LMTP} dialect of the
tables: L{E.Hello} goes out as LHLO (there is no HELO), and the end of the
data (the final dot, or the last BDAT chunk) is answered once per
recipient the server accepted since MAIL, in order: as many
L{ServerReply} events, each naming the same end of data.

Owns: the client's protocol rules that do not depend on policy: reply
syntax and its bounds (a line over 512 octets, a malformed line or a reply
of too many lines is a L{RemoteProtocolError} that ends the session),
the capabilities of the last EHLO reply, dot-stuffing of DATA (in bulk),
the refusal to send a bare CR or LF inside DATA (SMTP smuggling), BDAT
framing, and the STARTTLS discard (every byte that came with the 220 is
dropped); and applying the tables of L{mailframe.protocol._clientstate},
where every state change of the client lives.  Must not: import twisted or
zope; decide what to send (that is the glue in L{mailframe.client}).
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import NoReturn

from mailframe import reply as R
from mailframe.protocol import _events as E
from mailframe.protocol._buffer import ReceiveBuffer
from mailframe.protocol._clientstate import (
    ANY,
    CLIENT_STATES,
    CLOSING,
    COMMANDS,
    HANDSHAKE,
    LMTP,
    PAUSED_IN,
    REPLIES,
    SENDS,
    SMTP,
    ClientDialect,
    ClientState,
)
from mailframe.protocol._errors import LocalProtocolError, RemoteProtocolError
from mailframe.protocol._write import dotStuff, formatCommand

__all__ = [
    "GREETING",
    "ClientConnection",
    "ClientLimits",
    "ClientState",
    "ServerReply",
    "formatParameters",
]

GREETING = E.GREETING
"""What the first reply answers: the connection itself."""

# the tables as the hot path reads them: one subscript each, every key present
_SEND: dict[str, dict[type[E.Event], str | None]] = {
    state: {k: t for k, t in SENDS.get(state, {}).items() if k is not E.Bdat}  # by sendChunk
    for state in CLIENT_STATES
}
_ON_REPLY: dict[type, Mapping[int | str, str] | None] = {
    kind: REPLIES.get(kind) for kind in (*COMMANDS, E.Greeting, E.EndOfMessage)
}
_MESSAGE_DATA, _END_OF_MESSAGE = E.MessageData, E.EndOfMessage

_REPLY_LINE_RE = re.compile(rb"([2-5][0-9][0-9])([ -]|\Z)")
_ENHANCED_RE = re.compile(r"([245])\.([0-9]{1,3})\.([0-9]{1,3})(?: |\Z)")


@dataclass(frozen=True, slots=True)
class ClientLimits:
    """
    The bounds on what a server may send: C{replyLine} octets per reply
    line, CRLF included (RFC 5321 4.5.3.1.5: 512), and C{replyLines} lines
    per reply.
    """

    replyLine: int = 512
    replyLines: int = 100

    def __post_init__(self) -> None:
        if self.replyLine < 512 or self.replyLines < 1:
            raise ValueError("replyLine must be at least 512 and replyLines at least 1")


@dataclass(frozen=True, slots=True)
class ServerReply(E.Event):
    """
    One whole reply of the server and what it answers: C{command} is the
    event that was sent (L{E.Hello}, L{E.MailFrom}, L{E.RcptTo}, L{E.Data},
    L{E.EndOfMessage} for the final dot, L{E.Bdat} ...), L{GREETING} for the
    first reply, or None for an unsolicited 421.
    """

    command: E.Event | E.Sentinel | None
    reply: R.Reply


def formatParameters(params: Mapping[str, str | None]) -> str:
    """C{KEY=VALUE KEY ...} for MAIL and RCPT (values as given: xtext is the caller's)."""
    return " ".join(k if v is None else f"{k}={v}" for k, v in params.items())


def _text(line: bytes) -> str:
    return line.decode("utf-8", "replace")


class ClientConnection:
    """
    One SMTP (or, with C{lmtp}, LMTP) client session, as a state machine
    over bytes and events.
    """

    def __init__(self, limits: ClientLimits | None = None, lmtp: bool = False) -> None:
        self.limits = limits or ClientLimits()
        self.dialect: ClientDialect = LMTP if lmtp else SMTP
        self.lmtp = lmtp
        self._accepted = 0  # LMTP: recipients accepted since MAIL
        self._endDue = 0  # LMTP: replies the end of the data still awaits
        self.state = ClientState.GREETING
        self.extended = False
        self.extensions: Mapping[str, str] = MappingProxyType({})
        self.tlsActive = False
        self._buffer = ReceiveBuffer()
        self._lines: list[bytes] = []
        self._expected: deque[E.Event | E.Sentinel] = deque([GREETING])
        # DATA: whether the next octet starts a line, and a CR held back
        # from the end of the previous piece (its LF may start the next one)
        self._atLineStart = True
        self._heldCR = False
        self._sentData = False

    # -- inspection -----------------------------------------------------

    @property
    def awaiting(self) -> tuple[E.Event | E.Sentinel, ...]:
        """The commands sent and not yet answered, oldest first."""
        return tuple(self._expected)

    @property
    def buffered(self) -> int:
        """Octets received and not yet read as replies."""
        return len(self._buffer)

    def supports(self, keyword: str) -> bool:
        """True if the last EHLO reply advertised C{keyword}."""
        return keyword.upper() in self.extensions

    def canSend(self, kind: type[E.Event]) -> bool:
        """True if an event of type C{kind} may be sent now."""
        sends = SENDS.get(self.state)
        return sends is not None and kind in sends

    # -- input ------------------------------------------------------------

    def receiveData(self, data: bytes) -> None:
        """Buffer bytes from the server."""
        if self.state is not ClientState.CLOSED:
            self._buffer.feed(data)

    def nextEvent(self) -> ServerReply | E.Sentinel:
        """
        The next whole reply, NEED_DATA if more bytes are needed, or PAUSED
        while STARTTLS waits for L{startTLS} and once the session is closed.
        Raises L{RemoteProtocolError} (and closes) for a reply that breaks
        the syntax or the bounds; its C{reply} is a 4xx to report.
        """
        if self.state in PAUSED_IN:
            return E.PAUSED
        limits = self.limits
        buf = self._buffer.data
        while True:
            end = buf.find(b"\n", 0, limits.replyLine)
            if end < 0:
                if len(buf) >= limits.replyLine:
                    self._fail(f"a reply line longer than {limits.replyLine} octets")
                return E.NEED_DATA
            line = bytes(buf[:end])
            del buf[: end + 1]
            if line[-1:] == b"\r":
                line = line[:-1]
            m = _REPLY_LINE_RE.match(line)
            if m is None or b"\r" in line or b"\x00" in line:
                self._fail(f"a malformed reply line {_text(line[:60])!r}")
            lines = self._lines
            if lines and lines[0][:3] != line[:3]:
                self._fail("a multi-line reply whose lines have different codes")
            lines.append(line)
            if len(lines) > limits.replyLines:
                self._fail(f"a reply of more than {limits.replyLines} lines")
            if m.group(2) != b"-":
                self._lines = []
                return self._reply(lines)

    def _fail(self, why: str) -> NoReturn:
        self.state = ClientState.CLOSED
        self._buffer.clear()
        self._lines = []
        raise RemoteProtocolError(
            R.Reply(451, (4, 5, 0), f"Protocol error: the server sent {why}")
        )

    def _reply(self, raw: list[bytes]) -> ServerReply:
        code = int(raw[0][:3])
        texts = [_text(line[4:]) for line in raw]
        enhanced: R.Enhanced | None = None
        m = _ENHANCED_RE.match(texts[0])
        if m is not None and int(m.group(1)) == code // 100:
            enhanced = (int(m.group(1)), int(m.group(2)), int(m.group(3)))
            prefix = texts[0][: m.end()].rstrip(" ")
            texts = [t[len(prefix) :].lstrip(" ") if t.startswith(prefix) else t for t in texts]
        reply = R.Reply(code, enhanced, tuple(texts))
        if not self._expected:
            if code != CLOSING:
                self._fail(f"a reply nobody asked for ({code})")
            self.state = ClientState.CLOSED
            return ServerReply(None, reply)
        command = self._expected.popleft()
        if code == CLOSING:
            self.state = ClientState.CLOSED
            self._buffer.clear()
            return ServerReply(command, reply)
        kind = type(command)
        if self.lmtp:
            self._countLMTP(command, kind, code)
        rules = _ON_REPLY[kind]
        if rules is not None:
            target = rules.get(code) or rules.get(ANY)
            if target is not None:
                self.state = target
                if kind is E.Hello:
                    self._acceptHello(command, reply)  # type: ignore[arg-type]
                elif kind is E.Data:
                    self._atLineStart, self._heldCR, self._sentData = True, False, False
        return ServerReply(command, reply)

    def _countLMTP(self, command: E.Event | E.Sentinel, kind: type, code: int) -> None:
        """
        LMTP: count the recipients accepted since MAIL; the end of the data
        stays awaited until it has one reply per accepted recipient.
        """
        if kind is E.MailFrom:
            self._accepted = 0
        elif kind is E.RcptTo:
            if code < 300:
                self._accepted += 1
        elif kind in self.dialect.perRecipient and (kind is not E.Bdat or command.last):  # type: ignore[union-attr]
            due = self._endDue or max(1, self._accepted)
            self._endDue = due - 1
            if self._endDue:
                self._expected.appendleft(command)  # more replies to the same end

    def _acceptHello(self, event: E.Hello, reply: R.Reply) -> None:
        self.extended = event.extended
        found: dict[str, str] = {}
        if event.extended:
            for line in reply.lines[1:]:
                keyword, _, params = line.strip().partition(" ")
                if keyword:
                    found.setdefault(keyword.upper(), params.strip())
        self.extensions = MappingProxyType(found)

    # -- output -----------------------------------------------------------

    def send(self, event: E.Event) -> bytes:
        """
        The bytes for one command (L{E.Hello}, L{E.MailFrom}, L{E.RcptTo},
        L{E.Data}, L{E.Rset}, L{E.Noop}, L{E.Quit}, L{E.StartTLS}, L{E.Vrfy},
        L{E.ExtensionCommand} such as AUTH, L{E.ContinuationLine} to answer
        a 334), or, after DATA got 354, of L{E.MessageData} (dot-stuffed)
        and L{E.EndOfMessage} (the final dot).  Each command expects one
        reply, in order.
        """
        kind = type(event)
        sends = _SEND[self.state]
        if kind not in sends:
            raise LocalProtocolError(f"{kind.__name__} may not be sent in state {self.state}")
        if kind is _MESSAGE_DATA:
            return self._messageData(event.data)  # type: ignore[attr-defined]
        if kind is _END_OF_MESSAGE:
            return self._endOfData(event, sends[kind])  # type: ignore[arg-type]
        data = self._format(event)  # type: ignore[arg-type]
        self._expected.append(event)
        return data

    def _format(self, event: E.Command) -> bytes:
        kind = type(event)
        if kind is E.MailFrom or kind is E.RcptTo:
            prefix = "FROM:" if kind is E.MailFrom else "TO:"
            argument = prefix + event.address.toPath()  # type: ignore[attr-defined]
            params = event.params  # type: ignore[attr-defined]
            if params:
                argument += " " + formatParameters(params)
            return formatCommand(event.verb, argument)
        if kind is E.Hello:
            verb = self.dialect.hello.get(event.extended)  # type: ignore[attr-defined]
            if verb is None:
                raise LocalProtocolError(f"{self.dialect.name} has no plain HELO")
            return formatCommand(verb, event.name)  # type: ignore[attr-defined]
        if kind is E.ExtensionCommand:
            return formatCommand(event.name, event.argument)  # type: ignore[attr-defined]
        if kind is E.ContinuationLine:
            line = event.data  # type: ignore[attr-defined]
            if b"\r" in line or b"\n" in line:
                raise ValueError("a continuation line may not contain CR or LF")
            return line + b"\r\n"
        if kind is E.Vrfy or kind is E.Noop or kind is E.Help:
            return formatCommand(event.verb, event.argument)  # type: ignore[attr-defined]
        return formatCommand(event.verb)

    def _messageData(self, data: bytes) -> bytes:
        if self._heldCR:
            data = b"\r" + data
            self._heldCR = False
        if data[-1:] == b"\r":
            data = data[:-1]
            self._heldCR = True
        if not data:
            return b""
        crlf = data.count(b"\r\n")
        if data.count(b"\n") != crlf or data.count(b"\r") != crlf:
            raise LocalProtocolError(
                "a bare CR or LF may not be sent in DATA (it must go by BDAT)"
            )
        out = dotStuff(data, self._atLineStart)
        self._atLineStart = data[-2:] == b"\r\n"
        self._sentData = True
        return out

    def _endOfData(self, event: E.EndOfMessage, target: str) -> bytes:
        if self._heldCR:
            raise LocalProtocolError("a bare CR may not be sent in DATA")
        self.state = target
        self._expected.append(event)
        if self._sentData and not self._atLineStart:
            return b"\r\n.\r\n"  # RFC 5321 4.1.1.4: the data ends with CRLF
        return b".\r\n"

    def sendChunk(self, data: bytes, last: bool) -> bytes:
        """BDAT (RFC 3030): the command line and the chunk, sent as they are."""
        if not self.canSend(E.Bdat):
            raise LocalProtocolError(f"BDAT may not be sent in state {self.state}")
        self._expected.append(E.Bdat(len(data), last))
        return b"BDAT %d%s\r\n%s" % (len(data), b" LAST" if last else b"", data)

    # -- TLS --------------------------------------------------------------

    def startTLS(self) -> None:
        """
        The TLS handshake starts: drop every byte that came with the 220 (a
        server, or a man in the middle, may not pipeline replies into the
        TLS session) and forget the capabilities; EHLO must be sent again.
        """
        before, after = HANDSHAKE
        if self.state is not before:
            raise LocalProtocolError("startTLS() only after a 220 reply to STARTTLS")
        self._buffer.clear()
        self._lines = []
        self.extended = False
        self.extensions = MappingProxyType({})
        self.tlsActive = True
        self.state = after

    def close(self) -> None:
        """The connection is gone: nothing more is read or sent."""
        self.state = ClientState.CLOSED
        self._buffer.clear()
