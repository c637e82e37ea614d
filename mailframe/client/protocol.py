"""
L{SMTPClientProtocol}: one outbound SMTP session on Twisted.

Bytes from the transport go into a sans-IO L{ClientConnection}; its
replies drive the dialogue: greeting, EHLO (HELO after a 5xx), STARTTLS
by the TLS policy and EHLO again, AUTH PLAIN/LOGIN, then each queued
message: MAIL, RCPT..., DATA or BDAT, with the group pipelined in one write
when PIPELINING is offered.  Every recipient gets one reply.  Timers run on
the clock passed in (RFC 5321 4.5.3.2).

Owns: the session's I/O, timers, and which command comes next.  Must not:
parse replies (the core does), route, retry, or queue (the relay and the
queue do).
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from twisted.internet import defer
from twisted.internet.interfaces import (
    IDelayedCall,
    IHandshakeListener,
    IPushProducer,
    IReactorTime,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mailframe.client.options import (
    TLS_NONE,
    TLS_OPPORTUNISTIC,
    TLS_VERIFY,
    ClientOptions,
    SessionFailed,
    clientTLS,
    quoted,
    temporary,
)
from mailframe.client.transaction import LOCAL_ERROR, LOST, MessageSender, Transaction, unexpected
from mailframe.envelope import DeliveryResult, Envelope, Recipient, TLSInfo
from mailframe.message import Message
from mailframe.protocol import LocalProtocolError, RemoteProtocolError
from mailframe.protocol import _events as E
from mailframe.protocol.client import GREETING, ClientConnection, ClientState, ServerReply
from mailframe.reply import Reply

if TYPE_CHECKING:
    from OpenSSL import SSL
    from twisted.internet.interfaces import IConsumer, ITLSTransport

    from mailframe.client.dane import DANECheck

    class _Transport(ITLSTransport, IConsumer):
        """
        The transport a session runs on, as the session uses it (TCP, or TLS
        over it; a consumer of the message data): for type checking only.
        """

        def getHandle() -> SSL.Connection:
            """The OpenSSL connection, once TLS has started."""


__all__ = ["SMTPClientProtocol"]

log = Logger(namespace="mailframe.client")

_TIMEOUT = Reply(421, (4, 4, 2), "Timed out waiting for the server")
_NO_TLS = Reply(421, (4, 7, 4), "TLS is required but the server does not offer STARTTLS")
_TLS_REFUSED = Reply(421, (4, 7, 4), "TLS is required but STARTTLS was refused")
_TLS_FAILED = Reply(421, (4, 7, 5), "TLS handshake failed")
_NO_AUTH = Reply(421, (4, 7, 0), "Credentials are set; the server offers no AUTH PLAIN or LOGIN")
_AUTH_CLEAR = Reply(421, (4, 7, 10), "AUTH is offered only without TLS; not sending credentials")
_NO_REQUIRETLS = Reply(
    421,
    (4, 7, 10),
    "REQUIRETLS: the message requires TLS and the server does not offer REQUIRETLS",
)


@implementer(IHandshakeListener)
class SMTPClientProtocol(Protocol):
    """
    One client session.  L{deliver} queues a message; the session sends
    the queued messages in turn over one connection (RSET between them) and
    QUITs when none is left (after C{options.keepAlive} idle seconds).

    C{onIdle(protocol)} and C{onEnd(protocol)}, if set, are called when the
    session is ready for another message and when it is over.

    Where the dialogue is comes from the core's state (L{ClientConnection}
    and the commands it awaits) and from the L{MessageSender} it owns for
    the messages; the session itself keeps only transport facts (a TLS
    handshake under way, closing) and its timer.
    """

    transport: _Transport

    def __init__(self, options: ClientOptions, clock: IReactorTime, name: str = "") -> None:
        self.options = options
        self.clock = clock
        self.name = name
        self.onIdle: Callable[[SMTPClientProtocol], None] | None = None
        self.onEnd: Callable[[SMTPClientProtocol], None] | None = None
        self.tls: TLSInfo | None = None
        self.tlsVerdict: str | None = None  # what options.tlsProbe found (None: it passed)
        self.usable = True  # may take another message
        self._conn = ClientConnection(options.limits)
        self._sender = MessageSender(
            self._conn,
            options,
            remote=lambda: self.remote,
            write=self._write,
            arm=self._arm,
            fail=self._fail,
            done=self._messageDone,
            producer=self._produce,
        )
        self._timer: IDelayedCall | None = None
        self._timedFor: object = None
        self._triedTLS = False
        self._handshaking = False
        self._authSteps: list[bytes] = []
        self._closing = False
        self._failure: SessionFailed | None = None

    @property
    def remote(self) -> str:
        """The server, as DeliveryResult.remote names it: C{name [address]}."""
        if self.name:
            return self.name
        peer = self.transport.getPeer() if self.transport is not None else None
        return f"[{getattr(peer, 'host', '?')}]"

    @property
    def idle(self) -> bool:
        """True if connected, greeted, and not busy with a message."""
        return self.usable and self._waiting()

    @property
    def messagesSent(self) -> int:
        """The messages this session has sent MAIL for."""
        return self._sender.messagesSent

    def _waiting(self) -> bool:
        """
        Nothing is going on: EHLO (and TLS and AUTH) done, no command
        awaits its reply, no message is being sent.
        """
        conn = self._conn
        return (
            not self._closing
            and conn.state is ClientState.READY
            and not conn.awaiting
            and not self._sender.busy
        )

    # -- the API ------------------------------------------------------------

    def deliver(
        self, envelope: Envelope, recipients: Sequence[Recipient], message: Message
    ) -> defer.Deferred[DeliveryResult]:
        """
        Queue C{message} for C{recipients}: fires one reply per recipient;
        fails with L{SessionFailed} if the session ends before its MAIL.
        """
        txn = Transaction(envelope, tuple(recipients), message)
        if self._closing or not self.usable:
            txn.deferred.errback(self._failure or SessionFailed(LOST))
            return txn.deferred
        self._sender.enqueue(txn)
        if self._waiting():
            self._next()
        return txn.deferred

    def quit(self) -> None:
        """Send QUIT once the queued messages are sent (or now, if idle)."""
        self.usable = False
        if self._waiting():
            self._quit()

    # -- connection -----------------------------------------------------------

    def connectionMade(self) -> None:
        if self.options.implicitTLS:  # TLS from the first byte (RFC 8314)
            self._conn.tlsActive = True
            self._triedTLS = True
            self._handshaking = True
        self._arm()

    def dataReceived(self, data: bytes) -> None:
        conn = self._conn
        conn.receiveData(data)
        while not self._closing:
            try:
                event = conn.nextEvent()
            except RemoteProtocolError as e:
                log.info("{name}: {reply}", name=self.remote, reply=str(e.reply))
                self._fail(e.reply)
                return
            if not isinstance(event, ServerReply):
                break
            if self.options.transcript:
                log.info("{name} S: {reply}", name=self.remote, reply=str(event.reply))
            try:
                self._handle(event)
            except Exception:
                log.failure("{name}: error in the SMTP client", name=self.remote)
                self._fail(LOCAL_ERROR)
                return
        self._arm()

    def handshakeCompleted(self) -> None:
        """IHandshakeListener: TLS is up (and verified, if asked): EHLO again."""
        self._handshaking = False
        handle = self.transport.getHandle()
        try:
            self.tls = TLSInfo(
                version=handle.get_protocol_version_name(),
                cipher=handle.get_cipher_name() or "",
                bits=handle.get_cipher_bits() or 0,
                peerCertificate=handle.get_peer_certificate(),
            )
        except AttributeError:
            self.tls = TLSInfo("TLS", "unknown")
        probe = self.options.tlsProbe
        if probe is not None:
            try:
                self.tlsVerdict = probe.verify(
                    list(handle.get_peer_cert_chain(as_cryptography=True) or [])
                )
            except Exception:
                log.failure("{name}: checking the certificate chain", name=self.remote)
                self.tlsVerdict = "validation-failure"
        dane = self.options.dane
        if dane is not None:
            why = self._daneMismatch(dane, handle)
            if why is not None:
                log.info("{name}: DANE: {why}", name=self.remote, why=why)
                self._tlsRequired(_TLS_FAILED.withText(f"DANE: {why}"), "validation-failure")
                return
        conn = self._conn
        if not self._closing and conn.state is ClientState.CONNECTED and not conn.awaiting:
            self._send(E.Hello(self.options.heloName, True))  # again, after STARTTLS
            self._arm()

    def _daneMismatch(self, dane: DANECheck, handle: SSL.Connection) -> str | None:
        """Why the server's certificate chain fails C{dane}, or None if it passes."""
        try:
            chain = handle.get_peer_cert_chain(as_cryptography=True) or []
        except Exception:
            log.failure("{name}: reading the certificate chain", name=self.remote)
            return "the server's certificate chain could not be read"
        return dane.verify(list(chain))

    def _tlsRequired(self, reply: Reply, result: str, tlsFailed: bool = False) -> None:
        """
        End the session: TLS is mandatory (C{options.tlsLabel} says why) and
        cannot be had as required; C{result} is the RFC 8460 result type.
        """
        label = self.options.tlsLabel
        text = " ".join(reply.lines)
        if label and not text.startswith(label + ":"):
            reply = reply.withText(f"{label}: {text}")
        if self._failure is None:
            self._failure = SessionFailed(reply, True, tlsFailed=tlsFailed, tlsResult=result)
        self._fail(reply, quit=True)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancelTimer()
        self._conn.close()
        self._sender.stop()
        if self._handshaking:
            why = " ".join(str(getattr(reason, "value", reason)).split())[:200]
            log.info("{name}: TLS handshake failed: {why}", name=self.remote, why=why)
            label = self.options.tlsLabel
            text = f"{label + ': ' if label else ''}TLS handshake failed: {why}"
            result = "certificate-not-trusted" if self.options.tls == TLS_VERIFY else None
            self._failTLS(_TLS_FAILED.withText(text), result or "validation-failure")
        self._closing = True
        self.usable = False
        self._sender.failAll(self._failure or SessionFailed(LOST))
        if self.onEnd is not None:
            self.onEnd(self)

    # -- replies ----------------------------------------------------------------

    def _handle(self, event: ServerReply) -> None:
        command, reply = event.command, event.reply
        if command is None or reply.code == 421:  # unsolicited, or closing
            self._fail(reply)
            return
        if self._sender.busy:
            self._sender.reply(command, reply)
            return
        kind = type(command)
        if command is GREETING:
            if reply.code != 220:  # RFC 5321 3.1: a 554 (or 521) still waits for QUIT
                self._refused(reply)
                return
            self._send(E.Hello(self.options.heloName, True))
        elif kind is E.Hello:
            self._hello(command, reply)  # type: ignore[arg-type]
        elif kind is E.StartTLS:
            self._startTLS(reply)
        elif kind is E.ExtensionCommand or kind is E.ContinuationLine:
            self._auth(reply)
        elif kind is E.Rset:
            if reply.code != 250:
                self._refused(reply, temporary(reply, "refused RSET", (4, 5, 0)))
                return
            self._sender.begin()
        elif kind is E.Quit:
            self._closeTransport()

    def _hello(self, command: E.Hello, reply: Reply) -> None:
        if reply.code == 250:
            self._afterHello()
        elif command.extended and reply.code >= 500:
            self._send(E.Hello(self.options.heloName, False))
        else:  # a 5xx to HELO after EHLO was refused: this host will not take mail
            self._refused(reply)

    def _refused(self, reply: Reply, ours: Reply | None = None) -> None:
        """
        End the session after a reply that is not the one wanted: the
        server's own reply (a 5xx refuses this host for good), or C{ours}
        if given; a 2xx or 3xx out of place is a protocol error, never
        passed on as if it were a result.
        """
        if reply.code < 400:
            self._fail(unexpected(reply), quit=True)
        else:
            self._fail(ours or reply, quit=True)

    def _afterHello(self) -> None:
        options, conn = self.options, self._conn
        policy = options.tls
        if not conn.tlsActive and policy != TLS_NONE and not self._triedTLS:
            if conn.supports("STARTTLS"):
                self._triedTLS = True
                self._send(E.StartTLS())
                return
            if policy != TLS_OPPORTUNISTIC:
                self._tlsRequired(_NO_TLS, "starttls-not-supported")
                return
        if options.requireTLS and not (conn.tlsActive and conn.supports("REQUIRETLS")):
            self._tlsRequired(_NO_REQUIRETLS, "starttls-not-supported")
            return
        if options.credentials is not None:
            self._startAuth()
            return
        self._ready()

    def _startTLS(self, reply: Reply) -> None:
        options = self.options
        if reply.code != 220:
            if options.tls == TLS_OPPORTUNISTIC:
                log.info("{name}: STARTTLS refused, going on in clear: {reply}",
                         name=self.remote, reply=str(reply))  # fmt: skip
                if options.credentials is not None:
                    self._startAuth()
                else:
                    self._ready()
                return
            self._tlsRequired(
                _TLS_REFUSED.withText(f"TLS is required; STARTTLS got: {quoted(reply)}"),
                "starttls-not-supported",
            )
            return
        self._conn.startTLS()  # what came with the 220 is dropped here
        hostname = options.tlsHostname or self.name.split(" ")[0] or ""
        try:
            creator = clientTLS(options.tls, hostname, options.trustRoot)
        except Exception:
            log.failure("{name}: no TLS context", name=self.remote)
            self._failTLS(_TLS_FAILED.withText("No TLS context for this destination"))
            self._fail(self._failure.reply)  # type: ignore[union-attr]
            return
        self._handshaking = True
        self.transport.startTLS(creator)

    def _failTLS(self, reply: Reply, result: str | None = None) -> None:
        if self._failure is None:
            mandatory = self.options.tls != TLS_OPPORTUNISTIC
            self._failure = SessionFailed(
                reply, True, tlsFailed=True, tlsResult=result if mandatory else None
            )

    def _startAuth(self) -> None:
        conn, options = self._conn, self.options
        creds = options.credentials
        assert creds is not None
        mechanisms: set[str] = set()
        for keyword, params in conn.extensions.items():
            if keyword == "AUTH":
                mechanisms.update(params.upper().split())
            elif keyword.startswith("AUTH="):  # the old form some servers still send
                mechanisms.update((keyword[5:] + " " + params).upper().split())
        if not mechanisms & {"PLAIN", "LOGIN"}:
            self._fail(_NO_AUTH, quit=True)
            return
        if not conn.tlsActive and not options.authPlaintext:
            self._fail(_AUTH_CLEAR, quit=True)
            return
        user, password = creds.username.encode(), creds.password.encode()
        if "PLAIN" in mechanisms:
            token = base64.b64encode(b"\0" + user + b"\0" + password).decode("ascii")
            self._authSteps = []
            self._send(E.ExtensionCommand("AUTH", "PLAIN " + (token or "=")), secret=True)
        else:
            self._authSteps = [base64.b64encode(user), base64.b64encode(password)]
            self._send(E.ExtensionCommand("AUTH", "LOGIN"))

    def _auth(self, reply: Reply) -> None:
        if reply.code == 235:
            self._authSteps = []
            self._ready()
        elif reply.code == 334 and self._authSteps:
            self._send(E.ContinuationLine(self._authSteps.pop(0)), secret=True)
        else:
            if reply.code == 334:  # asked for more than the mechanism has: cancel
                self._send(E.ContinuationLine(b"*"))
                return
            log.info("{name}: authentication failed: {reply}", name=self.remote, reply=str(reply))
            self._refused(reply, temporary(reply, "refused AUTH", (4, 7, 0)))

    # -- messages -----------------------------------------------------------------------

    def _ready(self) -> None:
        """EHLO, TLS and AUTH are done: send what is queued."""
        self._next()

    def _next(self) -> None:
        """Start the next queued message (RSET first after one), or go idle, or QUIT."""
        sender = self._sender
        if not sender.queued:
            if not self.usable or not self.options.keepAlive:
                self._quit()
                return
            self._arm()
            if self.onIdle is not None:
                self.onIdle(self)
            return
        if sender.messagesSent:
            self._send(E.Rset())
            self._arm()
            return
        sender.begin()

    def _messageDone(self) -> None:
        """The sender finished a message: go on, unless the session is ending."""
        if not self._closing:
            self._next()

    def _produce(self, producer: IPushProducer | None) -> None:
        if producer is None:
            self.transport.unregisterProducer()
        else:
            self.transport.registerProducer(producer, True)

    # -- output, failure, timers ------------------------------------------------------

    def _send(self, command: E.Event, secret: bool = False) -> None:
        data = self._conn.send(command)
        if self.options.transcript:
            text = data.decode("utf-8", "replace").rstrip()
            if secret:
                text = text.split(" ")[0] + " ********"
            log.info("{name} C: {line}", name=self.remote, line=text)
        self._write(data)

    def _write(self, data: bytes) -> None:
        if not self._closing:
            self.transport.write(data)

    def _quit(self) -> None:
        if self._closing:
            return
        self.usable = False
        try:
            self._send(E.Quit())
        except LocalProtocolError:
            self._closeTransport()
            return
        self._arm()

    def _closeTransport(self) -> None:
        self._closing = True
        self._cancelTimer()
        if self.transport is not None:
            self.transport.loseConnection()

    def _fail(self, reply: Reply, quit: bool = False) -> None:
        """
        End the session: a message not yet begun fails with C{reply} (see
        L{SessionFailed}); recipients of the current one not yet answered
        get C{reply} (a 4xx: the message may still go).
        """
        if self._failure is None:
            self._failure = SessionFailed(reply)
        if self._closing:
            return
        sendQuit = quit and self._conn.canSend(E.Quit)
        self._closing = True
        self.usable = False
        self._cancelTimer()
        self._sender.stop()
        self._sender.failAll(self._failure)
        if sendQuit:
            self.transport.write(self._conn.send(E.Quit()))
            self.transport.loseConnection()
        else:
            self.transport.abortConnection()

    def _timeoutFor(self) -> tuple[object, float] | None:
        t = self.options.timeouts
        stream = self._sender.dataStream
        if stream is not None:
            return stream, t.dataBlock
        awaiting = self._conn.awaiting
        if awaiting:
            first = awaiting[0]
            kind = type(first)
            if first is GREETING:
                return first, t.greeting
            if kind is E.MailFrom:
                return first, t.mail
            if kind is E.RcptTo:
                return first, t.rcpt
            if kind is E.Data:
                return first, t.dataInit
            if kind is E.EndOfMessage or kind is E.Bdat:
                return first, t.dataEnd
            return first, t.command
        if self._handshaking:
            return "handshake", t.handshake
        if self.options.keepAlive and self._waiting():
            return "idle", self.options.keepAlive
        return None

    def _arm(self, force: bool = False) -> None:
        """(Re)start the timer for what is awaited now (unchanged if it is the same)."""
        if self._closing:
            return
        wanted = self._timeoutFor()
        if wanted is None:
            self._cancelTimer()
            return
        key, seconds = wanted
        timer = self._timer
        if key is self._timedFor and not force and timer is not None:
            return
        self._timedFor = key
        if timer is not None and timer.active():
            timer.reset(seconds)  # one timer per session, moved: no call made and cancelled
        else:  # per command
            self._timer = self.clock.callLater(seconds, self._timedOut)

    def _cancelTimer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._timedFor = None

    def _timedOut(self) -> None:
        key = self._timedFor
        self._timer = None
        if key == "idle":
            self._quit()
            return
        what = "the greeting" if key is GREETING else type(key).__name__
        if key == "handshake":
            what = "the TLS handshake"
            self._failTLS(_TIMEOUT.withText("Timed out in the TLS handshake"))
        log.info("{name}: timed out waiting for {what}", name=self.remote, what=what)
        self._fail(_TIMEOUT.withText(f"Timed out waiting for the server ({what})"))
