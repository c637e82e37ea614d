"""
L{SMTPServerProtocol}: the I/O of one SMTP server session.

Bytes from the transport go into a sans-IO L{ServerConnection}; its events
go to the session's L{Commands} (the policy: plug points, transaction);
their answers go back through the connection as replies.  While a plug
point's Deferred is pending, no further command is taken from the buffer,
so pipelined commands are answered in order; the replies of a pipelined
group leave in one write.

Owns: the session's I/O, timers, error count, and TLS start.  Must not:
parse or decide protocol rules (the core does), decide policy (the
commands do), or block.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet import defer, task
from twisted.internet.interfaces import (
    IDelayedCall,
    IHandshakeListener,
    IPushProducer,
    ISSLTransport,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mailframe import reply as R
from mailframe._deferreds import settled
from mailframe.envelope import SessionInfo, TLSInfo
from mailframe.protocol import _events as E
from mailframe.protocol._state import NO_TRANSACTION, State
from mailframe.protocol.server import RemoteProtocolError, ServerConnection
from mailframe.reply import Reply, SMTPError
from mailframe.server import _writethrough
from mailframe.server._decisions import SessionRecord
from mailframe.server._util import oneLine
from mailframe.server.commands import EARLY_TALKER, GROUP_ENDERS, HANDLERS, OUT_OF_SYNC, Commands
from mailframe.server.context import ServerContext
from mailframe.server.control import SessionControl

if TYPE_CHECKING:
    from OpenSSL import SSL
    from twisted.internet.interfaces import (
        IConsumer,
        IOpenSSLClientConnectionCreator,
        ITLSTransport,
    )

    from mailframe.interfaces import TLSContextFactory

    class _Transport(ITLSTransport, IConsumer, IPushProducer):
        """
        The transport a session runs on, as the session uses it (TCP, or TLS
        over it; a consumer of the session's output): for type checking only.
        """

        def getHandle() -> SSL.Connection:
            """The OpenSSL connection, once TLS has started."""

        def startTLS(
            contextFactory: TLSContextFactory | IOpenSSLClientConnectionCreator,
        ) -> None:
            """Start TLS (an old-style context factory will do, as Twisted documents)."""


__all__ = ["SMTPServerProtocol"]

log = Logger(namespace="mailframe.server")

_Deferred = defer.Deferred
_MAX_UNREAD = 1 << 18  # octets buffered while paused before reading stops
_NEED_DATA = E.NEED_DATA
_PAUSED = E.PAUSED
_END_OF_MESSAGE = E.EndOfMessage
_MESSAGE_DATA = E.MessageData
_NO_TRANSACTION = NO_TRANSACTION


@implementer(IPushProducer, IHandshakeListener)
class SMTPServerProtocol(Protocol):
    """
    One SMTP server session of the server described by C{context} (a
    L{ServerContext}; the factory's).  C{session} is its L{SessionInfo} and
    C{commands} its L{Commands}, once connected.
    """

    session: SessionInfo
    commands: Commands
    record: SessionRecord
    transport: _Transport

    _busy = False
    _inLoop = False
    _closing = False
    _writePaused = False  # the transport asked us to stop producing output
    _readPaused = False  # we asked the transport to stop reading
    _timer: IDelayedCall | None = None
    _closeTimer: IDelayedCall | None = None
    _registered = False  # the session is its transport's producer
    _handshakeTimer: IDelayedCall | None = None
    _pregreet = False
    _tlsContext: TLSContextFactory | None = None
    _restart = False  # XCLIENT: start over once its 220 is out
    _tlsStarted = False

    def __init__(self, context: ServerContext) -> None:
        self.context = context

    # -- what SessionControl and the commands may ask -----------------------------

    @property
    def inTransaction(self) -> bool:
        """True between an accepted MAIL and the end of its message."""
        return self._conn.inTransaction

    def requestTLS(self, contextFactory: TLSContextFactory) -> None:
        """Start TLS with C{contextFactory} once the reply to this command (220) is out."""
        self._tlsContext = contextFactory

    def authenticated(self, avatarId: str, mechanism: str) -> None:
        """Mark the session authenticated as C{avatarId} by C{mechanism}."""
        session = self.session
        session.authenticated = avatarId
        session.authMechanism = mechanism
        self.record.authenticated(avatarId, mechanism)

    def replaceClient(self, **facts: Any) -> Reply:
        """
        XCLIENT: the session's client is the one a trusted front end names
        (L{SessionInfo.replaceClient}); the reply is the greeting, and once
        it is out the session starts over (the core forgets HELO/EHLO).
        """
        session = self.session
        before = session.peer
        session.replaceClient(**facts)
        log.info(
            "{id} XCLIENT from {frontEnd}: client {before} is now {peer}",
            id=session.sessionID,
            frontEnd=session.frontEnd,
            before=before,
            peer=session.peer,
        )
        self._restart = True
        return self.context.greeting

    # -- connection -----------------------------------------------------------

    def connectionMade(self) -> None:
        context = self.context
        cfg = context.config
        transport = self.transport
        peer, host = transport.getPeer(), transport.getHost()
        session = self.session = SessionInfo(
            sessionID=context.ids.next(),
            peerHost=getattr(peer, "host", ""),
            peerPort=getattr(peer, "port", 0),
            localHost=getattr(host, "host", ""),
            localPort=getattr(host, "port", 0),
            hostname=cfg.hostname,
            listener=cfg.listener,
        )
        self._direct = _writethrough.isPlainTCP(transport) and _writethrough.available(transport)
        conn = self._conn = ServerConnection(cfg.limits, context.verbNames, cfg.lmtp)
        # what every command uses, looked up once a session
        self._receive = conn.receiveData
        self._inbox = conn.receiveBuffer  # the same buffer for the whole session
        self._seconds = context.clock.seconds
        self.record = SessionRecord(context, session, context.clock.seconds())
        # the record counts replies for the lines; 2xx replies only for them
        self._recording = self.record.on
        self.commands = Commands(context, session, SessionControl(self), self.record)
        if ISSLTransport.providedBy(transport):  # implicit TLS (RFC 8314)
            self._conn.tlsActive = True
            self._tlsStarted = True
            self._handshakeTimer = context.clock.callLater(
                cfg.handshakeTimeout, self._handshakeExpired
            )
        self._out: list[bytes] = []
        self._errors = 0
        self._transcript = cfg.transcript
        self._checkSync = cfg.enforceSync
        self._lastActivity = context.clock.seconds()
        self._timer = context.clock.callLater(cfg.commandTimeout, self._checkIdle)
        transport.registerProducer(self, True)
        self._registered = True
        context.sessions.add(self)
        if self._transcript and not self.record.on:
            log.info("{id} connect from {peer}", id=session.sessionID, peer=session.peer)
        delay = cfg.greetDelay
        if delay and (
            context.greetPasses.passed(session.peerHost)  # seen to wait not long ago
            or cfg.mayRelay(session.peerHost)  # our own network (Postfix: permit_mynetworks)
        ):
            delay = 0.0
        self._pregreet = bool(delay)
        chain = context.connectionChain
        if not chain.calls and not delay:
            self._greet(None)
            return
        result: object = chain.ask(self.commands, (session,)) if chain.calls else None
        if not delay and (result is None or type(result) is Reply):
            self._greet(result)  # every filter answered at once: nothing to wait for
            return
        if delay:  # the filters run while we wait; the greeting needs both
            filtered = result
            result = task.deferLater(context.clock, delay, lambda: filtered)
        self._startAsync(result)

    def _greet(self, reply: Reply | None) -> None:
        cfg = self.context.config
        early = False
        if reply is None or reply.code < 400:
            if reply is None or reply.code != 220:
                reply = self.context.greeting
            if self._conn.buffered and (cfg.enforceSync or self._pregreet):
                early = True
                reply = EARLY_TALKER
                log.info(
                    "{id} {peer} talked before the greeting: dropped",
                    id=self.session.sessionID,
                    peer=self.session.peer,
                )
            elif self._pregreet:
                self.context.greetPasses.add(self.session.peerHost)
        elif reply.code not in (421, 554):
            reply = Reply(421 if reply.code < 500 else 554, None, reply.lines)
        self.record.connect(getattr(self.transport, "proxied", False) is True)
        self._write(reply)
        self._flush()
        if early:
            self._close()

    def handshakeCompleted(self) -> None:
        """IHandshakeListener: record the TLS version, cipher and client cert."""
        self._cancelTimer("_handshakeTimer")
        handle = self.transport.getHandle()
        try:
            self.session.tls = TLSInfo(
                version=handle.get_protocol_version_name(),
                cipher=handle.get_cipher_name() or "",
                bits=handle.get_cipher_bits() or 0,
                peerCertificate=handle.get_peer_certificate(),
            )
        except AttributeError:  # not an OpenSSL connection (tests)
            self.session.tls = TLSInfo("TLS", "unknown")
        self.record.tls()
        if self._transcript and not self.record.on:
            log.info(
                "{id} TLS {version} {cipher}",
                id=self.session.sessionID,
                version=self.session.tls.version,
                cipher=self.session.tls.cipher,
            )

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._tlsStarted and self.session.tls is None:
            log.info(
                "{id} TLS handshake with {peer} failed: {why}",
                id=self.session.sessionID,
                peer=self.session.peer,
                why=oneLine(reason),
            )
        self._closing = True
        timer = self._timer
        if timer is not None:
            self._timer = None
            if timer.active():
                timer.cancel()
        if self._closeTimer is not None:
            self._cancelTimer("_closeTimer")
        if self._handshakeTimer is not None:
            self._cancelTimer("_handshakeTimer")
        self.commands.endTransaction()
        context = self.context
        context.sessions.discard(self)
        for observer in context.observers:
            try:
                observer.sessionEnded(self.session)
            except Exception:
                log.failure("{id} sessionEnded failed", id=self.session.sessionID)
        self.record.disconnect(context.clock.seconds())
        if self._transcript and not self.record.on:
            log.info("{id} disconnect", id=self.session.sessionID)

    # -- input ----------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return  # after 221 or 421 nothing more is read (or kept)
        self._lastActivity = self._seconds()
        self._receive(data)
        if self._busy or self._writePaused:
            if not self._readPaused and len(self._inbox) > _MAX_UNREAD:
                self._readPaused = True
                self.transport.pauseProducing()
            return
        self._process()

    def _resumeReading(self) -> None:
        if self._readPaused and not self._busy and not self._writePaused and not self._closing:
            self._readPaused = False
            self.transport.resumeProducing()

    def _process(self) -> None:
        conn = self._conn
        pending = self._inbox  # every event consumes input: none left, none due
        commands = self.commands
        record = self.record
        self._inLoop = True
        try:
            while pending and not self._busy and not self._writePaused and not self._closing:
                try:
                    event = conn.nextEvent()
                except RemoteProtocolError as e:
                    if self._transcript:
                        self._logIn(conn)
                    record.protocolError(conn.lastLine)
                    commands.decider = None
                    reply = e.reply
                    if reply is R.UNRECOGNIZED and self.context.unknownChain.calls:
                        told = commands.unknown(conn.lastLine, reply)
                        if isinstance(told, _Deferred):
                            self._startAsync(told)
                            continue
                        reply = told
                    if self._tarpit(reply):
                        continue
                    self._write(reply)
                    continue
                if event is _NEED_DATA or event is _PAUSED:
                    break
                if self._transcript:
                    self._logIn(conn, event)
                kind = type(event)
                if kind is not _MESSAGE_DATA:
                    record.command(event, commands)
                    commands.decider = None
                if pending and self._checkSync and self._outOfSync(event):
                    self._write(OUT_OF_SYNC)
                    log.info(
                        "{id} {peer} pipelined without PIPELINING: dropped",
                        id=self.session.sessionID,
                        peer=self.session.peer,
                    )
                    self._close()
                    break
                try:
                    result = HANDLERS[kind](commands, event)
                except SMTPError as e:
                    result = e.reply
                except Exception:
                    log.failure(
                        "{id} error handling {event}", id=self.session.sessionID, event=event
                    )
                    result = R.LOCAL_ERROR
                if type(result) is not Reply:
                    if result is None:
                        continue
                    result = settled(result)
                    if isinstance(result, _Deferred):
                        # a delivery is never cancelled (Commands.endOfMessage)
                        self._startAsync(result, type(event) is not _END_OF_MESSAGE)
                        continue
                    if type(result) is tuple:  # LMTP: one reply per recipient
                        self._writeEach(result)
                        continue
                if result.code >= 400 and self._tarpit(result):
                    continue
                self._write(result)
        finally:
            self._inLoop = False
        if not self._busy:
            self._flush()

    def _outOfSync(self, event: E.Event | E.Sentinel) -> bool:
        """
        With enforceSync: input already waits behind C{event}, which is a
        point where the client must wait for our reply (RFC 2920 3.1: every
        command without PIPELINING; EHLO/HELO, DATA, VRFY, EXPN, NOOP and
        STARTTLS even with it).
        """
        if type(event) in GROUP_ENDERS:
            return True
        if "PIPELINING" in self.session.extensions:
            return False
        return isinstance(event, E.Command | E.EndOfMessage | E.EndOfChunk)

    def _tarpit(self, reply: Reply) -> bool:
        """
        After softErrors errors, hold each error reply errorDelay seconds
        longer than the last (no command is read meanwhile).  True if held.
        """
        cfg = self.context.config
        over = self._errors - cfg.softErrors + 1
        if not cfg.errorDelay or over <= 0 or reply.code < 400 or reply.code == 421:
            return False
        self._startAsync(
            task.deferLater(self.context.clock, cfg.errorDelay * over, lambda: reply), False
        )
        return True

    def _startAsync(self, result: Any, cancellable: bool = True) -> None:
        """
        Wait for a plug point: take no command until it answers.  A
        C{cancellable} one is cancelled after C{pluginTimeout} (its
        answer is then 451).
        """
        if not isinstance(result, _Deferred):
            self._asyncDone(result)
            return
        self._busy = True
        if result.called or not cancellable:  # answered already, or waited for
            result.addBoth(self._asyncDone)
            return
        call = self.context.clock.callLater(self.context.config.pluginTimeout, result.cancel)
        result.addBoth(self._asyncDone, call)

    def _asyncDone(self, result: Any, call: IDelayedCall | None = None) -> None:
        if call is not None and call.active():
            call.cancel()
        if isinstance(result, Failure):
            error = result.value
            if isinstance(error, SMTPError):
                result = error.reply
            else:
                if result.check(defer.CancelledError):
                    log.warn("{id} a plug point timed out", id=self.session.sessionID)
                else:
                    log.failure("{id} plug point failed", result, id=self.session.sessionID)
                result = R.LOCAL_ERROR
        if self._closing:
            return
        self._busy = False
        if self._conn.state is State.GREETING:
            self._greet(result)
        elif type(result) is tuple:
            self._writeEach(result)
        else:
            self._write(result)
        self._resumeReading()
        if not self._inLoop:
            self._process()

    # -- output ---------------------------------------------------------------

    def _write(self, reply: Reply) -> None:
        if self._closing:
            return
        conn = self._conn
        code = reply.code
        if code >= 400 and code != 421 and self._errors + 1 >= self.context.config.maxErrors:
            reply, code = R.TOO_MANY_ERRORS, 421  # the last error: one reply, the 421, not two
        # only an error count needs to know which command this answers
        answered = conn.pending if self._errors else None
        sent = conn.send(reply)
        self._out.append(sent)
        if self._transcript:
            log.info("{id} S: {reply}", id=self.session.sessionID, reply=str(reply))
        if code >= 300:
            self.record.reply(reply, self.commands, sent)
        elif self._recording:  # a 2xx is only counted for the lines: SessionRecord.ok, inline
            record = self.record
            ok, verb = record.ok, record.verb
            ok[verb] = ok.get(verb, 0) + 1
        if code >= 400:
            if code == 421:
                self._close()
                return
            self._errors += 1
        elif type(answered) is _END_OF_MESSAGE:
            self._errors = 0  # an accepted message: the count starts again
        commands = self.commands
        state = conn.state
        if commands.envelope is not None and state in _NO_TRANSACTION:  # not conn.inTransaction
            commands.endTransaction()
        if state is State.CLOSED:
            self._close()
        elif state is State.TLS:
            self._startTLS()
        elif self._tlsContext is not None:
            self._tlsContext = None  # the handler asked for TLS but refused
        elif self._restart:
            self._restart = False
            if code == 220:
                conn.restart()  # XCLIENT: the client greets again

    def _writeEach(self, replies: tuple[Reply, ...]) -> None:
        """
        LMTP: the replies to the end of a message, one per accepted
        recipient.  The message counts as one error if every recipient
        was refused; as accepted (the count starts again) if any was not.
        """
        if self._closing:
            return
        conn = self._conn
        if len(replies) != conn.repliesDue:
            log.error(
                "{id} {n} replies for {due} recipients",
                id=self.session.sessionID,
                n=len(replies),
                due=conn.repliesDue,
            )
            self._write(R.LOCAL_ERROR)
            return
        self._out.append(conn.sendEach(replies))
        self.record.replyEach(replies, self.commands)
        if self._transcript:
            for reply in replies:
                log.info("{id} S: {reply}", id=self.session.sessionID, reply=str(reply))
        if any(r.code < 400 for r in replies):
            self._errors = 0
        else:
            self._errors += 1
        commands = self.commands
        if commands.envelope is not None and not conn.inTransaction:
            commands.endTransaction()
        if self._errors >= self.context.config.maxErrors:
            self._write(R.TOO_MANY_ERRORS)

    def _startTLS(self) -> None:
        """The 220 to STARTTLS is out: hand the transport to TLS, forget all."""
        context, self._tlsContext = self._tlsContext, None
        if context is None:
            log.error(
                "{id} STARTTLS answered 220 without a TLS context", id=self.session.sessionID
            )
            self._write(Reply(421, (4, 3, 0), "TLS not available"))
            return
        self._flush()
        self._direct = False
        self.transport.startTLS(context)
        self._tlsStarted = True
        self._handshakeTimer = self.context.clock.callLater(
            self.context.config.handshakeTimeout, self._handshakeExpired
        )
        self._conn.startTLS()
        session = self.session
        session.heloName = None  # RFC 3207 4.2: forget what the client said
        session.esmtp = False
        session.extensions = frozenset()
        session.authenticated = None
        session.authMechanism = None
        self.commands.forget()

    def _flush(self) -> None:
        if self._out:
            out = self._out
            self._out = []
            data = out[0] if len(out) == 1 else b"".join(out)
            if self._direct:
                data = _writethrough.sendNow(self.transport, data)
                if not data:
                    return
            self.transport.write(data)

    def _close(self) -> None:
        """
        Close after the replies written so far.  The session stops being the
        transport's producer first: Twisted's TLS layer sends its close_notify
        only once no producer is registered.  A peer that does not read its
        last reply, or does not answer the close_notify, is cut off after
        C{closeTimeout} seconds.
        """
        if self._closing:
            return
        self._flush()
        self._closing = True
        transport: Any = self.transport
        if self._registered:
            self._registered = False
            transport.unregisterProducer()
        transport.loseConnection()
        # a plain TCP connection with nothing left to write closes at once:
        # no timer to schedule (one per connection) and cancel
        if getattr(transport, "connected", True) and not (
            self._direct and _writethrough.drained(transport)
        ):
            self._closeTimer = self.context.clock.callLater(
                self.context.config.closeTimeout, self._abort
            )

    def _abort(self) -> None:
        self._closeTimer = None
        log.info(
            "{id} {peer} did not close the connection: aborted",
            id=self.session.sessionID,
            peer=self.session.peer,
        )
        self.transport.abortConnection()

    def _handshakeExpired(self) -> None:
        self._handshakeTimer = None
        log.info(
            "{id} {peer} did not complete the TLS handshake in time: aborted",
            id=self.session.sessionID,
            peer=self.session.peer,
        )
        self._closing = True
        self.transport.abortConnection()

    def _cancelTimer(self, name: str) -> None:
        timer = getattr(self, name)
        if timer is not None:
            if timer.active():
                timer.cancel()
            setattr(self, name, None)

    def _logIn(self, conn: ServerConnection, event: E.Event | E.Sentinel | None = None) -> None:
        if isinstance(event, E.MessageData | E.EndOfMessage | E.EndOfChunk):
            text = f"<{len(event.data)} octets of message data>"
            if not isinstance(event, E.MessageData):
                text += f" <{type(event).__name__}>"
        elif event is not None and not isinstance(event, E.Command):
            text = f"<{type(event).__name__}>"
        else:
            text = conn.lastLine.decode("utf-8", "replace")
        log.info("{id} C: {line}", id=self.session.sessionID, line=text)

    # -- timers -----------------------------------------------------------------

    def _checkIdle(self) -> None:
        cfg = self.context.config
        clock = self.context.clock
        if self._busy:
            self._timer = clock.callLater(cfg.commandTimeout, self._checkIdle)
            return
        limit = (
            cfg.dataTimeout if self._conn.state in (State.DATA, State.BDAT) else cfg.commandTimeout
        )
        left = self._lastActivity + limit - clock.seconds()
        if left > 0:
            self._timer = clock.callLater(left, self._checkIdle)
            return
        self._timer = None
        if not self.record.on:  # else the refusal's line says it
            log.info("{id} timeout from {peer}", id=self.session.sessionID, peer=self.session.peer)
        self.record.verb = "timeout"  # the 421 answers no command
        self._write(R.TIMEOUT)

    # -- IPushProducer: the transport's write buffer is full -------------------

    # Paused, the session stops answering commands (input waits in the
    # buffer) but keeps reading until that buffer is large.  Reading must go
    # on: a TLS layer pauses us while the greeting waits for the handshake,
    # and the handshake needs the ClientHello read.

    def pauseProducing(self) -> None:
        self._writePaused = True

    def resumeProducing(self) -> None:
        self._writePaused = False
        self._resumeReading()
        if not self._inLoop and not self._busy and not self._closing:
            self._process()

    def stopProducing(self) -> None:
        self._closing = True
