"""
The message half of an outbound SMTP session: L{Transaction} (one message
for some recipients and the reply each gets) and L{MessageSender}, the
object a L{mailframe.client.protocol.SMTPClientProtocol} owns to send its
queued messages: MAIL/RCPT/DATA (pipelined in one write when offered),
BDAT chunks, and the message data streamed as a push producer.

Owns: the queue of messages, the order of commands within a transaction,
pairing replies with recipients, and the data stream.  Must not: parse
replies, route, or retry; touch the session's state but through the
callables it is given.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from mailframe.client.options import ClientOptions, SessionFailed, quoted, temporary
from mailframe.client.plan import Plan, makePlan, regroup
from mailframe.envelope import DeliveryResult, Envelope, Recipient
from mailframe.message import Message
from mailframe.protocol import LocalProtocolError
from mailframe.protocol import _events as E
from mailframe.protocol.client import ClientConnection
from mailframe.reply import Reply

__all__ = ["LOCAL_ERROR", "LOST", "MessageSender", "SMTPResult", "Transaction", "unexpected"]

log = Logger(namespace="mailframe.client")

LOST = Reply(421, (4, 4, 2), "Connection lost before the server replied")
LOCAL_ERROR = Reply(451, (4, 3, 0), "Local error in the SMTP client")


def unexpected(reply: Reply) -> Reply:
    """The 4xx for a reply that makes no sense where it came (a 354 to the final dot ...)."""
    return Reply(451, (4, 5, 0), f"Protocol error: unexpected reply: {quoted(reply)}"[:400])


SMTPResult = DeliveryResult
"""
The L{DeliveryResult} of an SMTP delivery (kept for compatibility: its
C{dsn} field, per recipient True if the server offered DSN so that the
NOTIFY/ORCPT/RET/ENVID parameters went on with the message, is
L{DeliveryResult}'s own now).
"""


@dataclass(eq=False)
class Transaction:
    """One message for some recipients, and the reply each one gets."""

    envelope: Envelope
    recipients: tuple[Recipient, ...]
    message: Message
    deferred: defer.Deferred[DeliveryResult] = field(default_factory=defer.Deferred)
    replies: list[Reply | None] = field(default_factory=list)
    accepted: list[int] = field(default_factory=list)
    plan: Plan | None = None
    started: bool = False  # MAIL was sent: the outcome is this session's
    mailReply: Reply | None = None
    sending: list[int] = field(default_factory=list)  # indices sent RCPT, in order
    rcptAnswered: int = 0
    chunks: Iterator[tuple[bytes, bool]] | None = None
    emptyDot: bool = False
    answered: bool = False  # the server replied to something of it

    def __post_init__(self) -> None:
        self.replies = [None] * len(self.recipients)

    def setAll(self, reply: Reply, indices: Iterable[int] | None = None) -> None:
        for i in range(len(self.replies)) if indices is None else indices:
            if self.replies[i] is None:
                self.replies[i] = reply


@implementer(IPushProducer)
class MessageSender:
    """
    Sends the queued messages of one session, one at a time, over its
    L{ClientConnection}: MAIL, RCPT... and DATA (pipelined in one write when
    the plan says so) or BDAT chunks, pairs each reply with its recipient,
    and streams the message data as the transport's push producer.

    Its interface to the session: L{enqueue} a L{Transaction}, L{begin} the
    next one once the session is ready (after EHLO, AUTH, or a 250 to
    RSET), pass it every L{reply} while L{busy}, L{failAll} when the
    session ends, and L{stop} the data stream when the connection is gone;
    L{queued}, L{messagesSent} and L{dataStream} say where it is.  It acts
    on the session only through the callables it is given: C{remote()} (the
    server's name), C{write(data)}, C{arm(force)} (the reply timer),
    C{fail(reply)} (end the session), C{done()} (a message is finished:
    the session decides what comes next), and C{producer(p)} (register
    C{p} as the transport's streaming producer, or unregister it if None).
    """

    def __init__(
        self,
        conn: ClientConnection,
        options: ClientOptions,
        *,
        remote: Callable[[], str],
        write: Callable[[bytes], None],
        arm: Callable[[bool], None],
        fail: Callable[[Reply], None],
        done: Callable[[], None],
        producer: Callable[[IPushProducer | None], None],
    ) -> None:
        self._conn = conn
        self._options = options
        self._remote = remote
        self._write = write
        self._arm = arm
        self._fail = fail
        self._done = done
        self._producer = producer
        self.messagesSent = 0
        self._queue: deque[Transaction] = deque()
        self._current: Transaction | None = None
        self._stream: Iterator[bytes] | None = None
        self._streamPaused = False
        self._pumping = False

    @property
    def busy(self) -> bool:
        """True from MAIL to the last reply of a message: the replies are this sender's."""
        return self._current is not None

    @property
    def queued(self) -> int:
        """The messages waiting for their turn."""
        return len(self._queue)

    @property
    def dataStream(self) -> object | None:
        """The message data being written (a key for its timer), or None."""
        return self._stream

    def enqueue(self, txn: Transaction) -> None:
        """Queue C{txn} for its turn."""
        self._queue.append(txn)

    def stop(self) -> None:
        """The session is over: write no more message data."""
        self._stream = None

    # -- transactions -------------------------------------------------------------

    def begin(self) -> None:
        """Start the next queued message (the session is ready, and RSET done after one)."""
        txn = self._queue.popleft()
        self._current = txn
        plan = txn.plan = makePlan(
            txn.envelope, txn.recipients, txn.message, self._conn, self._options
        )
        for i, reply in plan.refused.items():
            txn.replies[i] = reply
        if not plan.send:
            self._finish(txn)
            return
        txn.started = True
        self.messagesSent += 1
        out = [self._conn.send(E.MailFrom(plan.mailFrom, plan.mailParams))]
        pipelining = plan.pipelining
        if pipelining:
            for i in plan.send:
                out.append(self._rcptBytes(txn, i))
            if not plan.bdat:
                out.append(self._conn.send(E.Data()))
        self._command(b"".join(out))
        self._arm(False)

    def _rcptBytes(self, txn: Transaction, i: int) -> bytes:
        assert txn.plan is not None
        txn.sending.append(i)
        return self._conn.send(E.RcptTo(txn.recipients[i].address, txn.plan.rcptParams[i]))

    def reply(self, command: Any, reply: Reply) -> None:
        """A reply to a command of the current message."""
        txn = self._current
        assert txn is not None and txn.plan is not None
        plan = txn.plan
        txn.answered = True
        kind = type(command)
        code = reply.code
        if 300 <= code < 400 and not (kind is E.Data and code == 354):
            # out of step with the protocol: nothing more it says can be trusted
            self._fail(unexpected(reply))
            return
        if kind is E.MailFrom:
            if code >= 400:
                txn.mailReply = reply
                txn.setAll(reply)
                if not plan.pipelining:
                    self._finish(txn)
                return
            if not plan.pipelining:
                self._command(self._rcptBytes(txn, plan.send[0]))
        elif kind is E.RcptTo:
            i = txn.sending[txn.rcptAnswered]
            txn.rcptAnswered += 1
            if txn.mailReply is None:
                if code < 300:
                    txn.accepted.append(i)
                else:
                    txn.replies[i] = reply
            if txn.rcptAnswered < len(plan.send):
                if not plan.pipelining:
                    self._command(self._rcptBytes(txn, plan.send[txn.rcptAnswered]))
                return
            if txn.mailReply is not None or not txn.accepted:
                if not plan.pipelining or plan.bdat:
                    self._finish(txn)
                return  # the pipelined DATA is still to be answered
            if plan.bdat:
                txn.chunks = regroup(txn.message.chunks(), self._options.chunkSize)
                self._sendChunk(txn)
            elif not plan.pipelining:
                self._command(self._conn.send(E.Data()))
        elif kind is E.Data:
            if code == 354:
                if txn.mailReply is not None or not txn.accepted:
                    txn.emptyDot = True  # RFC 2920 3.1: end the empty message at once
                    self._write(self._conn.send(E.EndOfMessage(0)))
                    return
                self._startStream(txn)
                return
            if code < 300:  # a 2xx to DATA: no data was taken
                self._fail(unexpected(reply))
                return
            txn.setAll(reply, txn.accepted)
            self._finish(txn)
        elif kind is E.EndOfMessage:
            if not txn.emptyDot:
                txn.setAll(reply, txn.accepted)
            self._finish(txn)
        elif kind is E.Bdat:
            if code >= 300 or command.last:
                txn.setAll(reply, txn.accepted)
                self._finish(txn)
            else:
                self._sendChunk(txn)

    def _command(self, data: bytes, payload: int = 0) -> None:
        """Write command lines (and a BDAT chunk of C{payload} octets), logged with transcript."""
        if self._options.transcript:
            head = data[: len(data) - payload] if payload else data
            for line in head.decode("utf-8", "replace").splitlines():
                log.info("{name} C: {line}", name=self._remote(), line=line)
        self._write(data)

    def _sendChunk(self, txn: Transaction) -> None:
        assert txn.chunks is not None
        data, last = next(txn.chunks)
        self._command(self._conn.sendChunk(data, last), len(data))

    def _finish(self, txn: Transaction) -> None:
        self._current = None
        for i, reply in enumerate(txn.replies):
            if reply is None:  # answered by RCPT and never refused: the final reply is missing
                txn.replies[i] = LOST
        plan = txn.plan
        refused = plan.refused if plan is not None else {}
        remote = self._remote()
        n = len(txn.replies)
        result = DeliveryResult(
            tuple(txn.replies),  # type: ignore[arg-type]
            tuple(None if i in refused else remote for i in range(n)),
            tuple(plan is not None and plan.dsn and i not in refused for i in range(n)),
        )
        self._done()  # first: whoever gets the result may already reuse this session
        txn.deferred.callback(result)

    def failAll(self, failure: SessionFailed) -> None:
        """
        The session ends with C{failure}: queued messages fail with it; the
        current one, if the server said something about it, gets its reply
        for every recipient not yet answered (a 4xx: the message may still go).
        """
        txn, self._current = self._current, None
        if txn is not None:
            if txn.answered:
                txn.setAll(temporary(failure.reply))
                self._finish(txn)
            else:  # the server said nothing about it: another server may take it
                txn.deferred.errback(failure)
        queued, self._queue = self._queue, deque()
        for txn in queued:
            txn.deferred.errback(failure)

    # -- message data ---------------------------------------------------------------

    def _startStream(self, txn: Transaction) -> None:
        self._stream = iter(txn.message.chunks())
        self._streamPaused = False
        self._producer(self)
        self._arm(True)
        self._pump()

    def _pump(self) -> None:
        if self._pumping:
            return
        self._pumping = True
        conn = self._conn
        try:
            while self._stream is not None and not self._streamPaused:
                chunk = next(self._stream, None)
                if chunk is None:
                    self._stream = None
                    self._producer(None)
                    self._write(conn.send(E.EndOfMessage(0)))
                    break
                data = conn.send(E.MessageData(chunk))
                if data:
                    self._write(data)
                self._arm(True)
        except LocalProtocolError:
            log.failure("{name}: message data refused by the client core", name=self._remote())
            self._fail(LOCAL_ERROR)
        finally:
            self._pumping = False
        self._arm(False)

    # -- IPushProducer ------------------------------------------------------------

    def pauseProducing(self) -> None:
        self._streamPaused = True

    def resumeProducing(self) -> None:
        self._streamPaused = False
        self._arm(True)
        self._pump()

    def stopProducing(self) -> None:
        self._stream = None
