"""
L{LMTPSession}: one connection of the C{lmtp} backend to an LMTP server
(RFC 2033), on the sans-IO L{ClientConnection} in its LMTP dialect.

The session reads the greeting and sends LHLO; L{LMTPSession.ready} fires
once LHLO is accepted (or fails with L{SessionFailed}).  Then it carries
one message at a time (L{LMTPSession.deliver}): MAIL, every RCPT and (for
DATA) DATA in one write, as RFC 2033 lets every LMTP client do (an LMTP
server must offer PIPELINING); the message by BDAT when CHUNKING is
offered, else by DATA, streamed as a push producer; and then one reply
per accepted recipient, each recipient's own.  A reused session sends RSET
first when the last transaction did not end with its data.

What no reply answers is a 4xx of ours for the recipients still waiting,
never a success: a timeout (C{replies} seconds for each reply and each
block of data written, C{final} for the replies after the data) or a lost
connection.  Such a recipient may have been delivered (the server said
nothing yet), so it may get a second copy when it is tried again; it is
never lost.  A 421 from the server for one recipient is reported as a 451
(it is about the session, not the recipient).

Owns: the dialogue and its timers.  Must not: pool or retry (the backend
in L{mailframe.backends.lmtp} does), import mailframe.client or
mailframe.server, or import the global reactor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mailframe.envelope import DeliveryResult, Envelope
from mailframe.message import Message
from mailframe.protocol import LocalProtocolError, RemoteProtocolError
from mailframe.protocol import _events as E
from mailframe.protocol.client import GREETING, ClientConnection, ServerReply
from mailframe.reply import Reply

if TYPE_CHECKING:
    from twisted.internet.interfaces import IConsumer, ITCPTransport

    class _Transport(ITCPTransport, IConsumer):
        """The transport of a session, as it uses it: for type checking only."""


__all__ = ["LMTPSession", "SessionFailed", "Settings", "Unanswered"]

log = Logger(namespace="mailframe.backends.lmtp")

CHUNK_SIZE = 1 << 20
"""Octets per BDAT chunk."""

TIMED_OUT = Reply(451, (4, 4, 2), "Timed out waiting for the LMTP server")
LOST = Reply(451, (4, 4, 2), "Connection to the LMTP server lost")
NO_SMTPUTF8 = Reply(553, (5, 6, 7), "The message needs SMTPUTF8; the LMTP server lacks it")
TOO_BIG = Reply(552, (5, 3, 4), "The message is larger than the LMTP server accepts")
NEEDS_BDAT = Reply(
    554, (5, 6, 3), "The message needs BDAT (binary, or a bare CR or LF); the server lacks it"
)
_LOCAL_ERROR = Reply(451, (4, 3, 0), "Local error in the LMTP client")


def quoted(reply: Reply) -> str:
    codes = [str(reply.code)] + (["{}.{}.{}".format(*reply.enhanced)] if reply.enhanced else [])
    return " ".join((*codes, *reply.lines))


def temporary(reply: Reply, what: str) -> Reply:
    """A 4xx of ours for a session the server refused or broke (quoting its reply)."""
    if 400 <= reply.code < 500 and reply.code != 421:
        return reply
    return Reply(451, (4, 4, 0), f"The LMTP server {what}: {quoted(reply)}"[:400])


def perRecipient(reply: Reply) -> Reply:
    """A server's reply for one recipient: its 421 (a session matter) becomes 451."""
    return Reply(451, reply.enhanced, reply.lines) if reply.code == 421 else reply


class SessionFailed(Exception):
    """The session could not start (greeting or LHLO refused, broken, timed out)."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply


class Unanswered(Exception):
    """The session ended (with C{reply}) before the server answered anything of this message."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply


@dataclass(frozen=True)
class Settings:
    """What every session of one backend shares."""

    heloName: str
    name: str  # the server, as results and logs name it
    replies: float = 300.0
    final: float = 600.0
    chunking: bool = True


@dataclass(eq=False)
class _Transaction:
    envelope: Envelope
    message: Message
    deferred: defer.Deferred[DeliveryResult] = field(default_factory=defer.Deferred)
    replies: list[Reply | None] = field(default_factory=list)
    accepted: list[int] = field(default_factory=list)
    rcptAnswered: int = 0
    endAnswered: int = 0
    answered: bool = False
    bdat: bool = False
    utf8: bool = False
    chunks: Iterator[tuple[bytes, bool]] | None = None
    failed: Reply | None = None  # MAIL refused, or the data refused as a whole


def _scan(message: Message) -> tuple[bool, bool]:
    """(has 8-bit octets, has a bare CR or LF), in bulk per chunk."""
    eightBit = bare = heldCR = False
    for chunk in message.chunks():
        if heldCR:
            chunk = b"\r" + chunk
        heldCR = chunk[-1:] == b"\r"
        if heldCR:
            chunk = chunk[:-1]
        eightBit = eightBit or not chunk.isascii()
        crlf = chunk.count(b"\r\n")
        bare = bare or chunk.count(b"\n") != crlf or chunk.count(b"\r") != crlf
    return eightBit, bare or heldCR


def _regroup(chunks: Iterator[bytes], size: int) -> Iterator[tuple[bytes, bool]]:
    """C{chunks} as pieces of at most C{size} octets, each with whether it is the last."""
    pending = bytearray()
    for chunk in chunks:
        pending += chunk
        while len(pending) > size:
            piece = bytes(pending[:size])
            del pending[:size]
            yield piece, False
    yield bytes(pending), True


@implementer(IPushProducer)
class LMTPSession(Protocol):
    """
    One LMTP connection.  C{onEnd(session)}, if set, is called when the
    connection is gone.  C{usable}: it may take another message.
    """

    transport: _Transport

    def __init__(self, settings: Settings, clock: IReactorTime) -> None:
        self.settings = settings
        self.clock = clock
        self.ready: defer.Deferred[LMTPSession] = defer.Deferred()
        self.onEnd: Callable[[LMTPSession], None] | None = None
        self.usable = False
        self.messagesSent = 0
        self._conn = ClientConnection(lmtp=True)
        self._txn: _Transaction | None = None
        self._clean = True  # no transaction left open on the server
        self._timer: IDelayedCall | None = None
        self._closing = False
        self._stream: Iterator[bytes] | None = None
        self._paused = False

    # -- the API --------------------------------------------------------------

    def deliver(self, envelope: Envelope, message: Message) -> defer.Deferred[DeliveryResult]:
        """
        Send C{message} to the envelope's recipients: fires one reply per
        recipient, or fails with L{Unanswered} if the session ended before
        the server said anything about it.
        """
        txn = _Transaction(envelope, message)
        txn.replies = [None] * len(envelope.recipients)
        self.usable = False
        self._txn = txn
        self.messagesSent += 1
        try:
            self._begin(txn)
        except Exception:
            log.failure("{name}: error in the LMTP client", name=self.settings.name)
            self._fail(_LOCAL_ERROR)
        return txn.deferred

    def quit(self) -> None:
        """Say QUIT (an idle session) and close."""
        self.usable = False
        if self._closing:
            return
        try:
            self._write(self._conn.send(E.Quit()))
        except LocalProtocolError:
            self._close()
            return
        self._arm(self.settings.replies)

    # -- connection -------------------------------------------------------------

    def connectionMade(self) -> None:
        self._arm(self.settings.replies)

    def dataReceived(self, data: bytes) -> None:
        conn = self._conn
        conn.receiveData(data)
        while not self._closing:
            try:
                event = conn.nextEvent()
            except RemoteProtocolError as e:
                self._fail(e.reply)
                return
            if not isinstance(event, ServerReply):
                break
            try:
                self._handle(event)
            except Exception:
                log.failure("{name}: error in the LMTP client", name=self.settings.name)
                self._fail(_LOCAL_ERROR)
                return

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancelTimer()
        self._conn.close()
        self._stream = None
        self._closing = True
        self._fail(LOST)
        if self.onEnd is not None:
            self.onEnd(self)

    # -- replies --------------------------------------------------------------------

    def _handle(self, event: ServerReply) -> None:
        command, reply = event.command, event.reply
        if command is None or reply.code == 421:
            self._fail(temporary(reply, "closed the session"))
            return
        if self._txn is not None:
            self._reply(self._txn, command, reply)
            return
        if command is GREETING:
            if reply.code != 220:
                self._fail(temporary(reply, "refused the session"), quit=True)
                return
            self._send(E.Hello(self.settings.heloName, True))
        elif type(command) is E.Hello:
            if reply.code != 250:
                self._fail(temporary(reply, "refused LHLO"), quit=True)
                return
            self._idle()
            if not self.ready.called:
                self.ready.callback(self)
        elif type(command) is E.Quit:
            self._close()
        elif type(command) is E.Rset and reply.code >= 400:
            self._fail(temporary(reply, "refused RSET"), quit=True)

    def _reply(self, txn: _Transaction, command: Any, reply: Reply) -> None:
        kind = type(command)
        code = reply.code
        if kind is not E.Rset:
            txn.answered = True
        if kind is E.Rset:
            if code >= 400:
                self._fail(temporary(reply, "refused RSET"), quit=True)
        elif kind is E.MailFrom:
            if code >= 300:
                txn.failed = reply
            self._arm(self.settings.replies)
        elif kind is E.RcptTo:
            i = txn.rcptAnswered
            txn.rcptAnswered += 1
            if txn.failed is not None:
                txn.replies[i] = txn.failed
            elif code < 300:
                txn.accepted.append(i)
            else:
                txn.replies[i] = perRecipient(reply)
            if txn.rcptAnswered == len(txn.replies) and txn.bdat:
                self._afterRecipients(txn)
            else:
                self._arm(self.settings.replies)
        elif kind is E.Data:
            if code == 354:
                if txn.failed is not None or not txn.accepted:
                    self._write(self._conn.send(E.EndOfMessage(0)))  # RFC 2920 3.1
                    txn.failed = txn.failed or reply
                    self._arm(self.settings.final)
                    return
                self._startStream(txn)
            else:
                self._dataRefused(txn, reply)
        elif kind is E.Bdat and not command.last and code < 300:
            self._sendChunk(txn)
        elif kind is E.Bdat and not command.last:
            self._dataRefused(txn, reply)  # a refused chunk: the message failed
        else:  # the end of the data (the dot, or BDAT LAST): one reply per accepted RCPT
            if txn.failed is not None or not txn.accepted:
                self._finish(txn)  # the empty end after a refused transaction
                return
            i = txn.accepted[txn.endAnswered]
            txn.endAnswered += 1
            txn.replies[i] = perRecipient(reply)
            if txn.endAnswered == len(txn.accepted):
                self._clean = True
                self._finish(txn)

    def _dataRefused(self, txn: _Transaction, reply: Reply) -> None:
        """DATA or a BDAT chunk refused: every accepted recipient gets the refusal."""
        for i in txn.accepted:
            txn.replies[i] = perRecipient(reply)
        self._finish(txn)

    def _afterRecipients(self, txn: _Transaction) -> None:
        """BDAT: every RCPT is answered; send the data if any recipient was accepted."""
        if txn.failed is not None or not txn.accepted:
            self._finish(txn)
            return
        txn.chunks = _regroup(iter(txn.message.chunks()), CHUNK_SIZE)
        self._sendChunk(txn)

    # -- a message ---------------------------------------------------------------------

    def _begin(self, txn: _Transaction) -> None:
        conn, envelope, message = self._conn, txn.envelope, txn.message
        ext = conn.extensions
        refused = self._plan(txn, ext)
        if refused is not None:
            txn.replies = [refused] * len(txn.replies)
            self._finish(txn)
            return
        params: dict[str, str | None] = {}
        if "SIZE" in ext:
            params["SIZE"] = str(message.size)
        body = envelope.body
        if body == "BINARYMIME" or (body == "8BITMIME" and "8BITMIME" in ext):
            params["BODY"] = body
        if txn.utf8:
            params["SMTPUTF8"] = None
        out = [] if self._clean else [conn.send(E.Rset())]
        self._clean = False
        out.append(conn.send(E.MailFrom(envelope.mailFrom, params)))
        out.extend(conn.send(E.RcptTo(r.address)) for r in envelope.recipients)
        if not txn.bdat:
            out.append(conn.send(E.Data()))
        self._write(b"".join(out))
        self._arm(self.settings.replies)

    def _plan(self, txn: _Transaction, ext: Any) -> Reply | None:
        """BDAT or DATA, and the refusal of a message this server cannot take, if any."""
        envelope, message = txn.envelope, txn.message
        txn.utf8 = (
            envelope.smtputf8
            or envelope.mailFrom.isUTF8
            or any(r.address.isUTF8 for r in envelope.recipients)
        )
        if txn.utf8 and "SMTPUTF8" not in ext:
            return NO_SMTPUTF8
        limit = ext.get("SIZE", "").split(" ")[0]
        if limit.isdigit() and limit.isascii() and 0 < int(limit) < message.size:
            return TOO_BIG
        chunking = "CHUNKING" in ext
        if envelope.body == "BINARYMIME":
            if not (chunking and "BINARYMIME" in ext):
                return NEEDS_BDAT
            txn.bdat = True
        elif chunking and self.settings.chunking:
            txn.bdat = True
        elif _scan(message)[1]:
            return NEEDS_BDAT
        return None

    def _sendChunk(self, txn: _Transaction) -> None:
        assert txn.chunks is not None
        data, last = next(txn.chunks)
        self._write(self._conn.sendChunk(data, last))
        self._arm(self.settings.final if last else self.settings.replies)

    def _finish(self, txn: _Transaction) -> None:
        self._txn = None
        replies = [r if r is not None else LOST for r in txn.replies]
        name = self.settings.name
        result = DeliveryResult(tuple(replies), tuple(name for _ in replies))
        if not self._closing:
            self._idle()
        txn.deferred.callback(result)

    def _idle(self) -> None:
        self.usable = not self._closing
        self._cancelTimer()

    # -- message data (DATA) -------------------------------------------------------

    def _startStream(self, txn: _Transaction) -> None:
        self._stream = iter(txn.message.chunks())
        self._paused = False
        self.transport.registerProducer(self, True)
        self._pump()

    def _pump(self) -> None:
        conn = self._conn
        while self._stream is not None and not self._paused and not self._closing:
            chunk = next(self._stream, None)
            if chunk is None:
                self._stream = None
                self.transport.unregisterProducer()
                self._write(conn.send(E.EndOfMessage(0)))
                self._arm(self.settings.final)
                return
            try:
                data = conn.send(E.MessageData(chunk))
            except LocalProtocolError:  # a bare CR or LF after all: never sent as it is
                log.failure("{name}: message data refused", name=self.settings.name)
                self._fail(_LOCAL_ERROR)
                return
            self._write(data)
            self._arm(self.settings.replies)

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._arm(self.settings.replies)
        self._pump()

    def stopProducing(self) -> None:
        self._stream = None

    # -- failure, output, timers --------------------------------------------------

    def _fail(self, reply: Reply, quit: bool = False) -> None:
        """
        End the session: a start that has not happened fails with C{reply};
        the recipients of the current message not yet answered get C{reply}
        (as a 4xx), or it fails with L{Unanswered} if nothing was answered.
        """
        self.usable = False
        closing, self._closing = self._closing, True
        self._cancelTimer()
        self._stream = None
        if not self.ready.called:
            self.ready.errback(SessionFailed(reply))
        txn = self._txn
        if txn is not None:
            if txn.answered:
                reply = temporary(reply, "failed")
                txn.replies = [r if r is not None else reply for r in txn.replies]
                self._finish(txn)
            else:
                self._txn = None
                txn.deferred.errback(Unanswered(temporary(reply, "failed")))
        if not closing:
            if quit and self._conn.canSend(E.Quit):
                self.transport.write(self._conn.send(E.Quit()))
                self.transport.loseConnection()
            else:
                self.transport.abortConnection()

    def _send(self, event: E.Event) -> None:
        self._write(self._conn.send(event))
        self._arm(self.settings.replies)

    def _write(self, data: bytes) -> None:
        if not self._closing and data:
            self.transport.write(data)

    def _close(self) -> None:
        self._closing = True
        self._cancelTimer()
        self.transport.loseConnection()

    def _arm(self, seconds: float) -> None:
        self._cancelTimer()
        if not self._closing:
            self._timer = self.clock.callLater(seconds, self._timedOut)

    def _cancelTimer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _timedOut(self) -> None:
        self._timer = None
        log.info("{name}: timed out", name=self.settings.name)
        self._fail(TIMED_OUT)
