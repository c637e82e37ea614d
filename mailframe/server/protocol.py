"""
The SMTP server on Twisted: L{SMTPServerFactory} and L{SMTPServerProtocol}.

Bytes from the transport go into a sans-IO L{ServerConnection}; its events
go to the plug points (connection filters, sender and recipient validators,
extensions, message filters, the delivery backend); their answers go back
through the connection as replies.  While a plug point's Deferred is
pending, no further command is taken from the buffer, so pipelined commands
are answered in order; the replies of a pipelined group leave in one write.

Owns: the session's I/O, timers, error count, and calling plug points.
Must not: parse or decide protocol rules (the core does), or block.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

from twisted.internet import defer, task
from twisted.internet.interfaces import (
    IHandshakeListener,
    IPushProducer,
    IReactorTime,
    ISSLTransport,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.tcp import Server as _TCPServer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mailframe import reply as R
from mailframe._deferreds import settled
from mailframe.address import Domain
from mailframe.config import ServerConfig
from mailframe.envelope import Envelope, SessionInfo, TLSInfo
from mailframe.extensions import defaultExtensions
from mailframe.interfaces import (
    IAddressVerifier,
    IConnectionFilter,
    IDeliveryBackend,
    IExtension,
    IHeloValidator,
    ILocalDomains,
    IMessageFilter,
    IRecipientValidator,
    ISenderValidator,
    ISessionControl,
    ISessionObserver,
)
from mailframe.message import Message
from mailframe.protocol import _events as E
from mailframe.protocol._state import State
from mailframe.protocol.server import RemoteProtocolError, ServerConnection
from mailframe.reply import Reply, SMTPError
from mailframe.server._util import GreetPasses, IDs, check, oneLine, sendNow
from mailframe.server.commands import (
    _EARLY_TALKER,
    _GROUP_ENDERS,
    _OUT_OF_SYNC,
    HANDLERS,
    CommandHandlers,
)

__all__ = ["SMTPServerFactory", "SMTPServerProtocol"]

log = Logger(namespace="mailframe.server")

_Deferred = defer.Deferred
_MAX_UNREAD = 1 << 18  # octets buffered while paused before reading stops
_NEED_DATA = E.NEED_DATA
_PAUSED = E.PAUSED


class SMTPServerFactory(Factory):
    """
    Builds an SMTP server session per connection.

    @param config: the L{ServerConfig}.
    @param backend: the L{IDeliveryBackend} that makes accepted mail durable.
    @param validators: L{IRecipientValidator}s, asked in order.
    @param senderValidators: L{ISenderValidator}s; each must accept.
    @param connectionFilters: L{IConnectionFilter}s; each must accept.
    @param messageFilters: L{IMessageFilter}s, run in order after the data.
    @param extensions: L{IExtension}s; by default the built-ins.
    @param clock: the reactor (or a Clock in tests); default: the reactor.
    @param heloValidators: L{IHeloValidator}s; each must accept.

    Any of these that also provides L{ISessionObserver} is told when each
    session ends.
    """

    protocol = None  # set below; buildProtocol is explicit
    noisy = False  # mailframe logs its own start-up line

    def __init__(
        self,
        config: ServerConfig,
        backend: Any,
        validators: Sequence[Any] = (),
        senderValidators: Sequence[Any] = (),
        connectionFilters: Sequence[Any] = (),
        messageFilters: Sequence[Any] = (),
        extensions: Iterable[Any] | None = None,
        clock: IReactorTime | None = None,
        heloValidators: Sequence[Any] = (),
    ) -> None:
        if clock is None:
            from twisted.internet import reactor

            clock = reactor  # type: ignore[assignment]
        check(IDeliveryBackend, [backend], "backend")
        check(IRecipientValidator, validators, "validator")
        check(ISenderValidator, senderValidators, "sender validator")
        check(IConnectionFilter, connectionFilters, "connection filter")
        check(IMessageFilter, messageFilters, "message filter")
        check(IHeloValidator, heloValidators, "HELO validator")
        exts = (
            list(extensions)
            if extensions is not None
            else defaultExtensions(config.limits.messageSize)
        )
        check(IExtension, exts, "extension")
        domains = set(config.localDomains)
        for v in validators:
            if ILocalDomains.providedBy(v):
                domains.update(Domain(d) for d in v.domains)
        self.config = replace(
            config,
            localDomains=frozenset(domains),
            limits=replace(
                config.limits,
                commandLine=config.limits.commandLine + sum(e.commandLineIncrease for e in exts),
            ),
        )
        self.backend = backend
        self.validators = tuple(validators)
        self.verifiers = tuple(v for v in validators if IAddressVerifier.providedBy(v))
        self.senderValidators = tuple(senderValidators)
        self.connectionFilters = tuple(connectionFilters)
        self.messageFilters = tuple(messageFilters)
        self.heloValidators = tuple(heloValidators)
        self.extensions = tuple(exts)
        everything = [
            backend,
            *validators,
            *senderValidators,
            *connectionFilters,
            *messageFilters,
            *heloValidators,
            *exts,
        ]
        self.observers = tuple(
            dict.fromkeys(p for p in everything if ISessionObserver.providedBy(p))
        )
        self.mailParameters = {p: e for e in exts for p in e.mailParameters}
        self.rcptParameters = {p: e for e in exts for p in e.rcptParameters}
        self.verbs = {v: e for e in exts for v in e.verbs}
        self.verbNames = frozenset(self.verbs)
        self.greetPasses = GreetPasses(clock, self.config.greetPassTime)  # type: ignore[arg-type]
        self.clock: IReactorTime = clock  # type: ignore[assignment]
        self.logMessages = config.logMessages
        self.accepted = 0  # messages answered 250 after their data, since start
        self.acceptedRecipients = 0
        self.refused = 0  # messages refused after their data (by filters or the backend)
        self.ids = IDs()
        self.sessions: set[SMTPServerProtocol] = set()

    def buildProtocol(self, addr: Any) -> SMTPServerProtocol:  # type: ignore[override]
        p = SMTPServerProtocol()
        p.factory = self
        return p


@implementer(ISessionControl)
class SessionControl:
    """What an extension may do to its session (L{ISessionControl})."""

    def __init__(self, protocol: SMTPServerProtocol) -> None:
        self._protocol = protocol

    @property
    def session(self) -> SessionInfo:
        return self._protocol.session

    @property
    def inTransaction(self) -> bool:
        return self._protocol._conn.inTransaction

    def startTLS(self, contextFactory: Any) -> None:
        self._protocol._tlsContext = contextFactory

    def authenticate(self, avatarId: str, mechanism: str) -> None:
        session = self._protocol.session
        session.authenticated = avatarId
        session.authMechanism = mechanism
        log.info(
            "{id} authenticated as {user} ({mechanism}) from {peer}",
            id=session.sessionID,
            user=avatarId,
            mechanism=mechanism,
            peer=session.peer,
        )


@implementer(IPushProducer, IHandshakeListener)
class SMTPServerProtocol(CommandHandlers, Protocol):
    """One SMTP server session."""

    factory: SMTPServerFactory
    session: SessionInfo
    envelope: Envelope | None = None
    message: Message | None = None

    _handlers = HANDLERS
    _busy = False
    _inLoop = False
    _closing = False
    _writePaused = False  # the transport asked us to stop producing output
    _readPaused = False  # we asked the transport to stop reading
    _timer: Any = None
    _closeTimer: Any = None
    _registered = False  # the session is its transport's producer
    _handshakeTimer: Any = None
    _pregreet = False
    _tlsContext: Any = None
    _tlsStarted = False
    _conversation: Any = None

    # -- connection -----------------------------------------------------------

    def connectionMade(self) -> None:
        f = self.factory
        cfg = f.config
        peer, host = self.transport.getPeer(), self.transport.getHost()  # type: ignore[union-attr]
        self.session = SessionInfo(
            sessionID=f.ids.next(),
            peerHost=getattr(peer, "host", ""),
            peerPort=getattr(peer, "port", 0),
            localHost=getattr(host, "host", ""),
            localPort=getattr(host, "port", 0),
            hostname=cfg.hostname,
            listener=cfg.listener,
        )
        self._direct = type(self.transport) is _TCPServer
        self._conn = ServerConnection(cfg.limits, f.verbNames)
        self.control = SessionControl(self)
        if ISSLTransport.providedBy(self.transport):  # implicit TLS (RFC 8314)
            self._conn.tlsActive = True
            self._tlsStarted = True
            self._handshakeTimer = f.clock.callLater(cfg.handshakeTimeout, self._handshakeExpired)
        self._out: list[bytes] = []
        self._errors = 0
        self._transcript = cfg.transcript
        self._checkSync = cfg.enforceSync
        self._lastActivity = f.clock.seconds()
        self._timer = f.clock.callLater(cfg.commandTimeout, self._checkIdle)
        self.transport.registerProducer(self, True)  # type: ignore[union-attr]
        self._registered = True
        f.sessions.add(self)
        if self._transcript:
            log.info("{id} connect from {peer}", id=self.session.sessionID, peer=self.session.peer)
        delay = cfg.greetDelay
        if delay and f.greetPasses.passed(self.session.peerHost):
            delay = 0.0  # seen to wait for its greeting not long ago
        self._pregreet = bool(delay)
        if not f.connectionFilters and not delay:
            self._greet(None)
            return
        try:
            result = self._filterConnection(0)
        except Exception:
            result = Failure()
        if delay:  # the filters run while we wait; the greeting needs both
            filtered = result
            result = task.deferLater(f.clock, delay, lambda: filtered)
        self._startAsync(result)

    def _filterConnection(self, i: int) -> Any:
        filters = self.factory.connectionFilters
        while i < len(filters):
            result = filters[i].acceptConnection(self.session)
            if isinstance(result, _Deferred):
                return result.addCallback(self._afterConnectionFilter, i + 1)
            i += 1
        return None

    def _afterConnectionFilter(self, _: object, i: int) -> Any:
        return self._filterConnection(i)

    def _greet(self, reply: Reply | None) -> None:
        cfg = self.factory.config
        early = False
        if reply is None or reply.code < 400:
            reply = R.greeting(cfg.hostname, cfg.software)
            if self._conn.buffered and (cfg.enforceSync or self._pregreet):
                early = True
                reply = _EARLY_TALKER
                log.info(
                    "{id} {peer} talked before the greeting: dropped",
                    id=self.session.sessionID,
                    peer=self.session.peer,
                )
            elif self._pregreet:
                self.factory.greetPasses.add(self.session.peerHost)
        elif reply.code not in (421, 554):
            reply = Reply(421 if reply.code < 500 else 554, None, reply.lines)
        self._write(reply)
        self._flush()
        if early:
            self._close()

    def handshakeCompleted(self) -> None:
        """IHandshakeListener: record the TLS version, cipher and client cert."""
        self._cancelTimer("_handshakeTimer")
        handle = self.transport.getHandle()  # type: ignore[union-attr]
        try:
            self.session.tls = TLSInfo(
                version=handle.get_protocol_version_name(),
                cipher=handle.get_cipher_name() or "",
                bits=handle.get_cipher_bits() or 0,
                peerCertificate=handle.get_peer_certificate(),
            )
        except AttributeError:  # not an OpenSSL connection (tests)
            self.session.tls = TLSInfo("TLS", "unknown")
        if self._transcript:
            log.info(
                "{id} TLS {version} {cipher}",
                id=self.session.sessionID,
                version=self.session.tls.version,
                cipher=self.session.tls.cipher,
            )

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self._tlsStarted and self.session.tls is None:
            log.info(
                "{id} TLS handshake with {peer} failed: {why}",
                id=self.session.sessionID,
                peer=self.session.peer,
                why=oneLine(reason),
            )
        self._closing = True
        for name in ("_timer", "_closeTimer", "_handshakeTimer"):
            self._cancelTimer(name)
        self._endTransaction()
        self.factory.sessions.discard(self)
        for observer in self.factory.observers:
            try:
                observer.sessionEnded(self.session)
            except Exception:
                log.failure("{id} sessionEnded failed", id=self.session.sessionID)
        if self._transcript:
            log.info("{id} disconnect", id=self.session.sessionID)

    # -- input ----------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return  # after 221 or 421 nothing more is read (or kept)
        self._lastActivity = self.factory.clock.seconds()
        self._conn.receiveData(data)
        if self._busy or self._writePaused:
            if not self._readPaused and self._conn.buffered > _MAX_UNREAD:
                self._readPaused = True
                self.transport.pauseProducing()  # type: ignore[union-attr]
            return
        self._process()

    def _resumeReading(self) -> None:
        if self._readPaused and not self._busy and not self._writePaused and not self._closing:
            self._readPaused = False
            self.transport.resumeProducing()  # type: ignore[union-attr]

    def _process(self) -> None:
        conn = self._conn
        pending = conn.receiveBuffer  # every event consumes input: none left, none due
        handlers = self._handlers
        self._inLoop = True
        try:
            while pending and not self._busy and not self._writePaused and not self._closing:
                try:
                    event = conn.nextEvent()
                except RemoteProtocolError as e:
                    if self._transcript:
                        self._logIn(conn)
                    if self._tarpit(e.reply):
                        continue
                    self._write(e.reply)
                    continue
                if event is _NEED_DATA or event is _PAUSED:
                    break
                if self._transcript:
                    self._logIn(conn, event)
                if pending and self._checkSync and self._outOfSync(event):
                    self._write(_OUT_OF_SYNC)
                    log.info(
                        "{id} {peer} pipelined without PIPELINING: dropped",
                        id=self.session.sessionID,
                        peer=self.session.peer,
                    )
                    self._close()
                    break
                try:
                    result = handlers[type(event)](self, event)
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
                        self._startAsync(result)
                        continue
                if result.code >= 400 and self._tarpit(result):
                    continue
                self._write(result)
        finally:
            self._inLoop = False
        if not self._busy:
            self._flush()

    def _outOfSync(self, event: Any) -> bool:
        """
        With enforceSync: input already waits behind C{event}, which is a
        point where the client must wait for our reply (RFC 2920 3.1: every
        command without PIPELINING; EHLO/HELO, DATA, VRFY, EXPN, NOOP and
        STARTTLS even with it).
        """
        if type(event) in _GROUP_ENDERS:
            return True
        if "PIPELINING" in self.session.extensions:
            return False
        return isinstance(event, E.Command | E.EndOfMessage | E.EndOfChunk)

    def _tarpit(self, reply: Reply) -> bool:
        """
        After softErrors errors, hold each error reply errorDelay seconds
        longer than the last (no command is read meanwhile).  True if held.
        """
        cfg = self.factory.config
        over = self._errors - cfg.softErrors + 1
        if not cfg.errorDelay or over <= 0 or reply.code < 400 or reply.code == 421:
            return False
        self._startAsync(task.deferLater(self.factory.clock, cfg.errorDelay * over, lambda: reply))
        return True

    def _startAsync(self, result: Any) -> None:
        """Wait for a plug point: take no command until it answers."""
        if not isinstance(result, _Deferred):
            self._asyncDone(result)
            return
        self._busy = True
        if result.called:  # answered already (memory backend, cached lookups): no timer
            result.addBoth(self._asyncDone)
            return
        timeout = (
            self.factory.config.deliveryTimeout
            if self.message is not None and self._conn.state in (State.DATA, State.BDAT)
            else self.factory.config.pluginTimeout
        )
        call = self.factory.clock.callLater(timeout, result.cancel)
        result.addBoth(self._asyncDone, call)

    def _asyncDone(self, result: Any, call: Any = None) -> None:
        if call is not None and call.active():
            call.cancel()
        if isinstance(result, Failure):
            if result.check(SMTPError):
                result = result.value.reply  # type: ignore[union-attr]
            else:
                if result.check(defer.CancelledError):
                    log.warn("{id} a plug point timed out", id=self.session.sessionID)
                else:
                    log.failure("{id} plug point failed", result, id=self.session.sessionID)
                result = R.LOCAL_ERROR
        if self._closing:
            return
        if self._conn.state is State.GREETING:
            self._busy = False
            self._greet(result)
        else:
            self._busy = False
            self._write(result)
        self._resumeReading()
        if not self._inLoop:
            self._process()

    # -- output ---------------------------------------------------------------

    def _write(self, reply: Reply) -> None:
        if self._closing:
            return
        if (
            reply.code >= 400
            and reply.code != 421
            and self._errors + 1 >= self.factory.config.maxErrors
        ):
            reply = R.TOO_MANY_ERRORS  # the last error: one reply, the 421, not two
        self._out.append(self._conn.send(reply))
        if self._transcript:
            log.info("{id} S: {reply}", id=self.session.sessionID, reply=str(reply))
        code = reply.code
        if code >= 400:
            if code == 421:
                self._close()
                return
            self._errors += 1
        if self.envelope is not None and not self._conn.inTransaction:
            self._endTransaction()
        state = self._conn.state
        if state is State.CLOSED:
            self._close()
        elif state is State.TLS:
            self._startTLS()
        elif self._tlsContext is not None:
            self._tlsContext = None  # the handler asked for TLS but refused

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
        self.transport.startTLS(context)  # type: ignore[union-attr]
        self._tlsStarted = True
        self._handshakeTimer = self.factory.clock.callLater(
            self.factory.config.handshakeTimeout, self._handshakeExpired
        )
        self._conn.startTLS()
        session = self.session
        session.heloName = None  # RFC 3207 4.2: forget what the client said
        session.esmtp = False
        session.extensions = frozenset()
        session.authenticated = None
        session.authMechanism = None
        self._conversation = None

    def _flush(self) -> None:
        if self._out:
            out = self._out
            self._out = []
            data = out[0] if len(out) == 1 else b"".join(out)
            if self._direct:
                data = sendNow(self.transport, data)
                if not data:
                    return
            self.transport.write(data)  # type: ignore[union-attr]

    def _close(self) -> None:
        """
        Close after the replies written so far.  The session stops being the
        transport's producer first: Twisted's TLS layer sends its close_notify
        only once no producer is registered.  A peer that does not read its
        last reply, or does not answer the close_notify, is cut off after
        C{closeTimeout} seconds.
        """
        if self._closeTimer is not None:
            return
        self._flush()
        self._closing = True
        transport: Any = self.transport
        if self._registered:
            self._registered = False
            transport.unregisterProducer()
        transport.loseConnection()
        if getattr(transport, "connected", True):
            self._closeTimer = self.factory.clock.callLater(
                self.factory.config.closeTimeout, self._abort
            )

    def _abort(self) -> None:
        self._closeTimer = None
        log.info(
            "{id} {peer} did not close the connection: aborted",
            id=self.session.sessionID,
            peer=self.session.peer,
        )
        self.transport.abortConnection()  # type: ignore[union-attr]

    def _handshakeExpired(self) -> None:
        self._handshakeTimer = None
        log.info(
            "{id} {peer} did not complete the TLS handshake in time: aborted",
            id=self.session.sessionID,
            peer=self.session.peer,
        )
        self._closing = True
        self.transport.abortConnection()  # type: ignore[union-attr]

    def _cancelTimer(self, name: str) -> None:
        timer = getattr(self, name)
        if timer is not None:
            if timer.active():
                timer.cancel()
            setattr(self, name, None)

    def _logIn(self, conn: ServerConnection, event: Any = None) -> None:
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
        cfg = self.factory.config
        clock = self.factory.clock
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
        log.info("{id} timeout from {peer}", id=self.session.sessionID, peer=self.session.peer)
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
