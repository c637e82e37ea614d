"""
L{Milter}: a milter plugged into every stage of a session, as Postfix does
it.  It is a connection filter, a HELO, sender and recipient validator, a
message filter and a session observer at once; each session opens its own
connection to the milter (L{MilterSession}, kept with C{session.stateFor}).

  - connect (greeting): connect, negotiate (version 6, every action, every
    step may be left out or left unanswered), then the client's facts;
  - HELO/EHLO, MAIL, RCPT: each asked when the client sends it, so that a
    refusal is that command's reply and a pipelined group stays in order.
    For a recipient the milter's "continue" is no opinion: the validators
    after it decide;
  - after the final dot: DATA, the header fields (not the server's own
    Received: field), end of headers, the body in chunks of at most 65535
    octets, end of message; the changes it asks for are collected and
    applied to the message and envelope only once its final answer accepts
    (L{mailframe.milter.edits});
  - a command the server does not know: the milter may refuse it with its
    own reply instead of the 500 (L{IUnknownCommandFilter});
  - a transaction that ends without its message (RSET, a refused DATA,
    another MAIL or HELO) is aborted before the next command reaches the
    milter; the end of the session sends QUIT.

Answers: continue and accept accept (accept: the milter is not asked again
in this message, or in this session at connect and HELO); reject is 550
5.7.1, tempfail 451 4.7.1, replycode its own reply (at connect and HELO
the session refuses every command after, as Postfix does); discard accepts
the message and delivers it to nobody (C{envelope.discard}); quarantine
holds it (C{envelope.quarantine}); shutdown is 421.

A milter that cannot be reached, times out or breaks the protocol is
dropped for the rest of the session and its C{defaultAction} answers for
it: C{accept} (as if it were not there) or C{tempfail} (451 4.7.1 for
every command after; 421 at connect).  It never half-changes a message.

Owns: the stages' meaning for a milter.  Must not: import the server.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mailframe.address import Domain
from mailframe.envelope import Envelope, Recipient, SessionInfo
from mailframe.interfaces import (
    IConnectionFilter,
    IHeloValidator,
    IMessageFilter,
    IRecipientValidator,
    ISenderValidator,
    ISessionObserver,
    IUnknownCommandFilter,
)
from mailframe.message import Message
from mailframe.milter import codec as C
from mailframe.milter.client import (
    MilterConnection,
    MilterGone,
    MilterTimeout,
    connect,
)
from mailframe.milter.edits import Changes, splitField
from mailframe.milter.macros import DEFAULT_MACROS, macroValues
from mailframe.milter.settings import DEFAULT_ACTIONS, MilterSettings
from mailframe.reply import Reply

__all__ = ["DEFAULT_ACTIONS", "Milter", "MilterSession", "MilterSettings", "replyFromText"]

log = Logger(namespace="mailframe.milter")

_T = TypeVar("_T")

REJECTED = Reply(550, (5, 7, 1), "Command rejected")
TEMPFAILED = Reply(451, (4, 7, 1), "Service unavailable - try again later")
SHUTDOWN = Reply(421, (4, 7, 0), "Service unavailable - closing connection")

_CONNECT_STAGES = frozenset({C.Command.CONNECT, C.Command.HELO})


def replyFromText(text: str) -> Reply:
    """A milter's SMTP reply (C{"550 5.7.1 No"}, lines separated by CRLF) as a L{Reply}."""
    lines = [line for line in text.split("\r\n") if line]
    code = int(lines[0][:3])
    enhanced = None
    out = []
    for line in lines:
        rest = line[4:]
        head, _, tail = rest.partition(" ")
        parts = head.split(".")
        if len(parts) == 3 and all(p.isdigit() for p in parts) and int(parts[0]) == code // 100:
            enhanced = enhanced or (int(parts[0]), int(parts[1]), int(parts[2]))
            rest = tail
        out.append(rest.replace("%%", "%"))
    return Reply(code, enhanced, tuple(out))


class MilterSession:
    """One session's conversation with one milter."""

    # states, as Postfix names them
    CLOSED, READY, ACCEPT_CONNECTION, REJECT_CONNECTION, ACCEPT_MESSAGE, ERROR = range(6)

    def __init__(self) -> None:
        self.state = MilterSession.CLOSED
        self.connection: MilterConnection | None = None
        self.negotiated = C.Negotiated(C.VERSION, C.Action(0), C.Protocol(0))
        self.macros: dict[C.Stage, tuple[str, ...]] = dict(DEFAULT_MACROS)
        self.sticky: Reply | None = None  # the answer to every command, once decided
        self.skip: bytes | None = None
        self.inTransaction = False

    @property
    def active(self) -> bool:
        return self.state in (MilterSession.READY, MilterSession.ACCEPT_MESSAGE)

    def close(self) -> None:
        connection, self.connection = self.connection, None
        if connection is not None:
            connection.close()

    def leaves(self, flag: C.Protocol) -> bool:
        return bool(self.negotiated.protocol & flag)


@implementer(
    IConnectionFilter,
    IHeloValidator,
    ISenderValidator,
    IRecipientValidator,
    IMessageFilter,
    ISessionObserver,
    IUnknownCommandFilter,
)
class Milter:
    """
    A milter at every stage of the sessions of one listener.

    @param settings: its L{MilterSettings}.
    @param reactor: connects and times.
    @param isLocal: says whether a domain is local (the C{{rcpt_mailer}} macro).
    @param maxBody: the largest replacement body accepted (0: no limit).
    """

    def __init__(
        self,
        settings: MilterSettings,
        reactor: Any,
        isLocal: Callable[[Domain | None], bool] | None = None,
        maxBody: int = 0,
    ) -> None:
        self.settings = settings
        self.reactor = reactor
        self.isLocal = isLocal or (lambda domain: True)
        self.maxBody = maxBody

    def __repr__(self) -> str:
        return f"<Milter {self.settings.name}>"

    def sessionState(self, session: SessionInfo) -> MilterSession:
        return session.stateFor(self, MilterSession)

    # -- the stages -------------------------------------------------------------------

    def acceptConnection(self, session: SessionInfo) -> Any:
        state = self.sessionState(session)
        return self._run(state, self._connect(session, state))

    def validateHelo(self, session: SessionInfo, name: str, extended: bool) -> Any:
        state = self.sessionState(session)
        if not state.active:
            return state.sticky
        return self._run(state, self._helo(session, state, name))

    def validateSender(self, session: SessionInfo, envelope: Envelope) -> Any:
        state = self.sessionState(session)
        if not state.active:
            return state.sticky
        return self._run(state, self._mail(session, state, envelope))

    def validateRecipient(
        self, session: SessionInfo, envelope: Envelope, recipient: Recipient
    ) -> Any:
        state = self.sessionState(session)
        if state.state != MilterSession.READY or not state.inTransaction:
            return state.sticky
        return self._run(state, self._rcpt(session, state, envelope, recipient))

    def filterMessage(self, session: SessionInfo, envelope: Envelope, message: Message) -> Any:
        state = self.sessionState(session)
        if state.state == MilterSession.ACCEPT_MESSAGE:
            self._abort(state)
            return None
        if state.state != MilterSession.READY:
            return state.sticky
        return self._run(state, self._message(session, state, envelope, message))

    def unknownCommand(self, session: SessionInfo, line: str) -> Any:
        """An SMTP command the server does not know (SMFIC_UNKNOWN); the milter may refuse it."""
        state = self.sessionState(session)
        if not state.active:
            return state.sticky
        return self._run(state, self._unknown(session, state, line))

    def sessionEnded(self, session: SessionInfo) -> None:
        state = self.sessionState(session)
        connection = state.connection
        if connection is not None and state.active:
            if state.inTransaction:
                connection.send(C.packet(C.Command.ABORT))
            connection.send(C.packet(C.Command.QUIT))
        state.close()
        state.state = MilterSession.CLOSED
        session.dropState(self)

    # -- running a stage ----------------------------------------------------------------

    def _run(
        self, state: MilterSession, work: Coroutine[Any, Any, Reply | None]
    ) -> defer.Deferred[Reply | None]:
        d = defer.ensureDeferred(work)
        return d.addErrback(self._failed, state)

    def _failed(self, reason: Failure, state: MilterSession) -> Reply | None:
        error = reason.value
        cancelled = reason.check(defer.CancelledError) is not None
        if (
            isinstance(error, MilterGone | MilterTimeout | C.MilterProtocolError | ValueError)
            or cancelled
        ):
            log.warn(
                "milter {name}: {why}; default-action {action}",
                name=self.settings.name,
                why=str(error).splitlines()[0] if str(error) else type(error).__name__,
                action=self.settings.defaultAction,
            )
        else:
            log.failure("milter {name} failed", reason, name=self.settings.name)
        state.close()
        state.state = MilterSession.ERROR
        state.sticky = None if self.settings.defaultAction == "accept" else TEMPFAILED
        if cancelled:
            reason.raiseException()  # the server stopped waiting: it answers for itself
        return state.sticky

    async def _event(
        self,
        state: MilterSession,
        command: bytes,
        data: bytes,
        stage: C.Stage | None,
        macros: list[tuple[str, str]],
        leaveOut: C.Protocol | None,
        noReply: C.Protocol | None,
        timeout: float,
    ) -> C.Event | None:
        """Send a stage's macros and its command; its answer, or None if none is due."""
        connection = state.connection
        if connection is None:
            raise MilterGone(f"milter {self.settings.name}: not connected")
        if stage is not None and macros:
            connection.send(C.encodeMacros(command, macros))
        if leaveOut is not None and state.leaves(leaveOut):
            return None
        if state.skip is not None:
            if state.skip == command:
                return None
            state.skip = None
        connection.send(C.packet(command, data))
        if noReply is not None and state.leaves(noReply):
            return None
        return await self._answer(connection, timeout)

    async def _answer(self, connection: MilterConnection, timeout: float) -> C.Event:
        while True:
            event = await connection.next(timeout)
            if not (isinstance(event, C.Reply) and event.response == C.Response.PROGRESS):
                return event

    def _decide(
        self,
        state: MilterSession,
        command: bytes,
        event: C.Event | None,
        envelope: Envelope | None = None,
    ) -> Reply | None:
        """What a milter's answer to C{command} means: None (go on) or a refusal."""
        if event is None:
            return None
        connecting = command in _CONNECT_STAGES
        if isinstance(event, C.ReplyCode):
            return self._refuse(state, connecting, replyFromText(event.text))
        if not isinstance(event, C.Reply):
            raise C.MilterProtocolError(
                f"unexpected {type(event).__name__} after command {command!r}"
            )
        response = event.response
        if response == C.Response.CONTINUE:
            return None
        if response == C.Response.ACCEPT:
            if connecting:
                state.close()
                state.state = MilterSession.ACCEPT_CONNECTION
            else:
                state.state = MilterSession.ACCEPT_MESSAGE
            return None
        if response == C.Response.REJECT:
            return self._refuse(state, connecting, REJECTED)
        if response == C.Response.TEMPFAIL:
            return self._refuse(state, connecting, TEMPFAILED)
        if response == C.Response.DISCARD:
            if connecting:
                log.warn(
                    "milter {name}: DISCARD at connect or HELO ignored", name=self.settings.name
                )
                return None
            if envelope is not None:
                envelope.discard = f"milter {self.settings.name}"
            state.state = MilterSession.ACCEPT_MESSAGE
            return None
        if response == C.Response.SKIP:
            state.skip = command
            return None
        if response in (C.Response.SHUTDOWN, C.Response.CONN_FAIL):
            state.close()
            state.state = MilterSession.REJECT_CONNECTION
            state.sticky = SHUTDOWN
            return SHUTDOWN
        raise C.MilterProtocolError(f"unexpected response {response!r} after {command!r}")

    def _refuse(self, state: MilterSession, connecting: bool, reply: Reply) -> Reply:
        if connecting:  # every command after is refused (Postfix's REJECT_CON)
            state.close()
            state.state = MilterSession.REJECT_CONNECTION
            state.sticky = reply
        return reply

    def _abort(self, state: MilterSession) -> None:
        """The transaction ended without its message (or after an accept): tell the milter."""
        if state.inTransaction and state.connection is not None:
            state.connection.send(C.packet(C.Command.ABORT))
        state.inTransaction = False
        if state.state == MilterSession.ACCEPT_MESSAGE:
            state.state = MilterSession.READY

    # -- connect, HELO, MAIL, RCPT, unknown ------------------------------------------------

    async def _connect(self, session: SessionInfo, state: MilterSession) -> Reply | None:
        settings = self.settings
        state.connection = await connect(
            settings.address, self.reactor, settings.connectTimeout, settings.name
        )
        state.connection.send(C.encodeOptions())
        answer = await self._answer(state.connection, settings.commandTimeout)
        if not isinstance(answer, C.Negotiated):
            raise C.MilterProtocolError(f"expected option negotiation, got {answer!r}")
        state.negotiated = C.negotiate(C.ALL_ACTIONS, C.OFFERED_PROTOCOL, answer)
        state.macros.update(answer.macros)
        state.state = MilterSession.READY
        event = await self._event(
            state,
            C.Command.CONNECT,
            _connectData(session),
            C.Stage.CONNECT,
            self._macros(state, C.Stage.CONNECT, session),
            C.Protocol.NOCONNECT,
            C.Protocol.NR_CONN,
            settings.commandTimeout,
        )
        reply = self._decide(state, C.Command.CONNECT, event)
        if reply is not None and reply.code < 500 and reply.code != 421:
            return Reply(421, reply.enhanced, reply.lines)  # refused at connect: closed
        return reply

    async def _helo(self, session: SessionInfo, state: MilterSession, name: str) -> Reply | None:
        self._abort(state)  # HELO/EHLO resets a transaction
        event = await self._event(
            state,
            C.Command.HELO,
            C.encodeStrings([name]),
            C.Stage.HELO,
            self._macros(state, C.Stage.HELO, session),
            C.Protocol.NOHELO,
            C.Protocol.NR_HELO,
            self.settings.commandTimeout,
        )
        return self._decide(state, C.Command.HELO, event)

    async def _mail(
        self, session: SessionInfo, state: MilterSession, envelope: Envelope
    ) -> Reply | None:
        self._abort(state)
        state.inTransaction = True
        args = [envelope.mailFrom.toPath(), *_parameters(envelope.mailParams)]
        event = await self._event(
            state,
            C.Command.MAIL,
            C.encodeStrings(args),
            C.Stage.ENVFROM,
            self._macros(state, C.Stage.ENVFROM, session, envelope),
            C.Protocol.NOMAIL,
            C.Protocol.NR_MAIL,
            self.settings.commandTimeout,
        )
        reply = self._decide(state, C.Command.MAIL, event, envelope)
        if reply is not None:
            state.inTransaction = False  # libmilter waits for the next MAIL
        return reply

    async def _rcpt(
        self,
        session: SessionInfo,
        state: MilterSession,
        envelope: Envelope,
        recipient: Recipient,
    ) -> Reply | None:
        args = [recipient.address.toPath(), *_parameters(recipient.params)]
        event = await self._event(
            state,
            C.Command.RCPT,
            C.encodeStrings(args),
            C.Stage.ENVRCPT,
            self._macros(state, C.Stage.ENVRCPT, session, envelope, recipient),
            C.Protocol.NORCPT,
            C.Protocol.NR_RCPT,
            self.settings.commandTimeout,
        )
        return self._decide(state, C.Command.RCPT, event, envelope)

    async def _unknown(
        self, session: SessionInfo, state: MilterSession, line: str
    ) -> Reply | None:
        if state.negotiated.version < 3:
            return None
        event = await self._event(
            state,
            C.Command.UNKNOWN,
            C.encodeStrings([line]),
            None,
            [],
            C.Protocol.NOUNKNOWN,
            C.Protocol.NR_UNKN,
            self.settings.commandTimeout,
        )
        return self._decide(state, C.Command.UNKNOWN, event)

    def _macros(
        self,
        state: MilterSession,
        stage: C.Stage,
        session: SessionInfo,
        envelope: Envelope | None = None,
        recipient: Recipient | None = None,
    ) -> list[tuple[str, str]]:
        return macroValues(state.macros.get(stage, ()), session, envelope, recipient, self.isLocal)

    # -- the message -------------------------------------------------------------------------

    async def _message(
        self,
        session: SessionInfo,
        state: MilterSession,
        envelope: Envelope,
        message: Message,
    ) -> Reply | None:
        hold = message.retain()
        changes = Changes()
        try:
            reply = await self._content(session, state, envelope, message, changes)
            if reply is not None or envelope.discard is not None:
                changes.discard()
                return reply
            if not changes.empty:
                changes.apply(message, envelope)
                if not envelope.recipients and envelope.discard is None:
                    envelope.discard = f"milter {self.settings.name} removed every recipient"
            if envelope.quarantine is not None:
                log.info(
                    "{queueID}: milter {name} quarantines the message: {reason}",
                    queueID=envelope.queueID,
                    name=self.settings.name,
                    reason=envelope.quarantine,
                )
            return None
        finally:
            changes.discard()
            hold.release()

    async def _content(
        self,
        session: SessionInfo,
        state: MilterSession,
        envelope: Envelope,
        message: Message,
        changes: Changes,
    ) -> Reply | None:
        """Send DATA, the header, the body and end of message; collect the changes asked for."""
        settings = self.settings
        version = state.negotiated.version
        eoh = self._macros(state, C.Stage.EOH, session, envelope)
        eom = self._macros(state, C.Stage.EOM, session, envelope)
        state.skip = None

        async def step(
            command: bytes,
            data: bytes,
            stage: C.Stage,
            macros: list[tuple[str, str]],
            leaveOut: C.Protocol,
            noReply: C.Protocol,
            timeout: float,
        ) -> Reply | bool | None:
            event = await self._event(
                state, command, data, stage, macros, leaveOut, noReply, timeout
            )
            reply = self._decide(state, command, event, envelope)
            if reply is not None:
                state.inTransaction = False
                return reply
            if state.state == MilterSession.ACCEPT_MESSAGE:
                self._abort(state)
                return True  # nothing more for this message
            return None

        if version >= 4:
            done = await step(
                C.Command.DATA,
                b"",
                C.Stage.DATA,
                self._macros(state, C.Stage.DATA, session, envelope),
                C.Protocol.NODATA,
                C.Protocol.NR_DATA,
                settings.commandTimeout,
            )
            if done is not None:
                return done if isinstance(done, Reply) else None
        leadingSpace = state.leaves(C.Protocol.HDR_LEADSPC)
        trace = message.traceField
        for raw in message.headerFields():
            if raw is trace or raw == trace:
                trace = None  # the server's own Received: field is not shown
                continue
            name, value = splitField(raw, leadingSpace)
            done = await step(
                C.Command.HEADER,
                C.encodeStrings([name, value]),
                C.Stage.EOH,
                eoh,
                C.Protocol.NOHDRS,
                C.Protocol.NR_HDR,
                settings.eomTimeout,
            )
            if done is not None:
                return done if isinstance(done, Reply) else None
        done = await step(
            C.Command.EOH,
            b"",
            C.Stage.EOH,
            eoh,
            C.Protocol.NOEOH,
            C.Protocol.NR_EOH,
            settings.eomTimeout,
        )
        if done is not None:
            return done if isinstance(done, Reply) else None
        connection = state.connection
        if not state.leaves(C.Protocol.NOBODY):
            reader = message.bodyChunks(C.BODY_CHUNK)
            try:
                for chunk in C.bodyChunks(reader):
                    done = await step(
                        C.Command.BODY,
                        chunk,
                        C.Stage.EOM,
                        eom,
                        C.Protocol.NOBODY,
                        C.Protocol.NR_BODY,
                        settings.eomTimeout,
                    )
                    if done is not None:
                        return done if isinstance(done, Reply) else None
                    if state.skip == C.Command.BODY:
                        break
                    if connection is not None:
                        await connection.drained()
            finally:
                close = getattr(reader, "close", None)
                if close is not None:
                    close()
        return await self._endOfMessage(state, envelope, message, changes, eom)

    async def _endOfMessage(
        self,
        state: MilterSession,
        envelope: Envelope,
        message: Message,
        changes: Changes,
        macros: list[tuple[str, str]],
    ) -> Reply | None:
        connection = state.connection
        if connection is None:
            raise MilterGone(f"milter {self.settings.name}: not connected")
        if macros:
            connection.send(C.encodeMacros(C.Command.BODYEOB, macros))
        connection.send(C.packet(C.Command.BODYEOB))
        actions = state.negotiated.actions
        while True:
            event = await self._answer(connection, self.settings.eomTimeout)
            if isinstance(event, C.Reply | C.ReplyCode):
                break
            need = C.MODIFICATION_ACTIONS.get(type(event))
            if need is None or not actions & need:
                raise C.MilterProtocolError(
                    f"{type(event).__name__} at end of message, not negotiated"
                )
            _collect(changes, event, message, state.leaves(C.Protocol.HDR_LEADSPC), self.maxBody)
        state.inTransaction = False
        reply = self._decide(state, C.Command.BODYEOB, event, envelope)
        if state.state == MilterSession.ACCEPT_MESSAGE:
            state.state = MilterSession.READY
        return reply


def _collect(
    changes: Changes, event: C.Event, message: Message, leadingSpace: bool, maxBody: int
) -> None:
    """Record one change asked for at the end of a message (nothing is applied yet)."""
    if isinstance(event, C.AddHeader):
        changes.headerEditor(message).add(event.name, event.value, leadingSpace)
    elif isinstance(event, C.InsertHeader):
        changes.headerEditor(message).insert(event.index, event.name, event.value, leadingSpace)
    elif isinstance(event, C.ChangeHeader):
        changes.headerEditor(message).change(event.index, event.name, event.value, leadingSpace)
    elif isinstance(event, C.AddRecipient):
        changes.addRecipient(event.address, event.args)
    elif isinstance(event, C.DeleteRecipient):
        changes.deleteRecipient(event.address)
    elif isinstance(event, C.ChangeSender):
        changes.changeSender(event.address, event.args)
    elif isinstance(event, C.ReplaceBody):
        changes.bodyWriter(message, maxBody).write(event.chunk)
    elif isinstance(event, C.Quarantine):
        changes.quarantine = event.reason or "quarantined by a milter"


def _parameters(params: Any) -> list[str]:
    return [name if value is None else f"{name}={value}" for name, value in params.items()]


def _connectData(session: SessionInfo) -> bytes:
    """The data of SMFIC_CONNECT for the session's client."""
    return _connectPacket(session)[5:]


def _connectPacket(session: SessionInfo) -> bytes:
    host = session.peerHost
    iprev = session.iprev
    name = iprev.names[0] if iprev is not None and iprev.result == "pass" and iprev.names else ""
    try:
        version = ipaddress.ip_address(host.partition("%")[0]).version
    except ValueError:
        return C.encodeConnect(name or host or "localhost", b"L" if not host else b"U", 0, host)
    return C.encodeConnect(
        name or f"[{host}]", b"4" if version == 4 else b"6", session.peerPort, host
    )
