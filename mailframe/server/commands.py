"""
The server's command handlers: what each SMTP command and message event
does with the plug points (HELO validators, sender and recipient
validators, extensions, message filters, the delivery backend).

A handler returns a L{Reply}, None (no reply due), or a Deferred of a reply;
chains of plug points run synchronously until one returns a Deferred, so
the common case costs no callbacks.  Mixed into
L{mailframe.server.protocol.SMTPServerProtocol}, which owns the I/O.

Owns: the policy order of a session (relay check, routing forms, postmaster,
parameters, validators; filters then delivery).  What the client sent is
echoed only through L{R.clientText}: printable ASCII, bounded.  Must not: touch the
transport or the timers, or parse (the sans-IO core does).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.logger import Logger

from mailframe import reply as R
from mailframe._deferreds import settled, then
from mailframe.address import Address, Domain
from mailframe.envelope import DeliveryResult, Envelope, Recipient, SessionInfo
from mailframe.interfaces import IUnadvertisedCommands
from mailframe.message import Message
from mailframe.protocol import _events as E
from mailframe.reply import Reply
from mailframe.trace import protocolName, receivedHeader

if TYPE_CHECKING:
    from mailframe.protocol.server import ServerConnection

__all__ = ["HANDLERS", "CommandHandlers"]

log = Logger(namespace="mailframe.server")

_Deferred = defer.Deferred
_CORE_VERBS = "HELO EHLO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP"

_AUTH_REQUIRED = Reply(530, (5, 7, 0), "Authentication required")
_ROUTING_CHARACTERS = frozenset("%!@")
_ROUTING_DENIED = Reply(
    550, (5, 7, 1), "Routing through this server (%, ! or @ in a local part) is not allowed"
)
_OUT_OF_SYNC = Reply(
    554, (5, 5, 0), "Protocol error: commands sent before the reply (no PIPELINING)"
)
_EARLY_TALKER = Reply(554, (5, 5, 0), "Protocol error: client talked before the greeting")
_GROUP_ENDERS = frozenset({E.Hello, E.Data, E.Vrfy, E.Expn, E.Noop, E.StartTLS})
_NAME_ECHO = 255  # the most of a HELO/EHLO name echoed (a domain's length)
_PARAMETER_ECHO = 64  # the most of a parameter keyword echoed


def _unknownParameter(name: str) -> Reply:
    """The 555 for a MAIL or RCPT parameter nobody owns, naming it (cut short)."""
    return R.UNKNOWN_PARAMETER.withText(
        f"Unsupported parameter {R.clientText(name, _PARAMETER_ECHO)}"
    )


class CommandHandlers:
    """The command and message-event handlers of a server session."""

    factory: Any  # the SMTPServerFactory
    session: SessionInfo
    control: Any  # the SessionControl
    envelope: Envelope | None = None
    message: Message | None = None
    _conn: ServerConnection
    _errors: int
    _closing: bool
    _conversation: Any

    def _hello(self, event: E.Hello) -> Any:
        if self.factory.heloValidators:
            return self._checkHelo(0, event)
        return self._helloReply(event)

    def _checkHelo(self, i: int, event: E.Hello) -> Any:
        validators = self.factory.heloValidators
        while i < len(validators):
            result = settled(validators[i].validateHelo(self.session, event.name, event.extended))
            if isinstance(result, _Deferred):
                return result.addCallback(self._heloAnswered, i, event)
            if isinstance(result, Reply) and result.code >= 400:
                return result
            i += 1
        return self._helloReply(event)

    def _heloAnswered(self, result: Any, i: int, event: E.Hello) -> Any:
        if isinstance(result, Reply) and result.code >= 400:
            return result
        return self._checkHelo(i + 1, event)

    def _helloReply(self, event: E.Hello) -> Reply:
        session = self.session
        cfg = self.factory.config
        session.heloName = event.name
        session.esmtp = event.extended
        if not event.extended:
            session.extensions = frozenset()
            return Reply(250, None, cfg.hostname)
        lines = [f"{cfg.hostname} greets {R.clientText(event.name, _NAME_ECHO)}"]
        keywords = []
        for ext in self.factory.extensions:
            params = ext.ehloParameters(session)
            if params is None:
                continue
            keywords.append(ext.keyword)
            lines.append(f"{ext.keyword} {params}" if params else ext.keyword)
        session.extensions = frozenset(keywords)
        return Reply(250, None, tuple(lines))

    def _mail(self, event: E.MailFrom) -> Any:
        session = self.session
        if self.factory.config.requireAuthentication and session.authenticated is None:
            return _AUTH_REQUIRED
        envelope = Envelope(self.factory.ids.next(), event.address, event.params)
        self.envelope = envelope
        if event.params:
            owners = self.factory.mailParameters
            for name, value in event.params.items():
                ext = owners.get(name)
                if ext is None or ext.keyword not in session.extensions:
                    return _unknownParameter(name)
                ext.mailParameter(session, envelope, name, value)
        envelope.session = session.snapshot(protocolName(session, envelope))
        return self._checkSender(0, R.SENDER_OK)

    def _checkSender(self, i: int, reply: Reply) -> Any:
        validators = self.factory.senderValidators
        while i < len(validators):
            result = validators[i].validateSender(self.session, self.envelope)
            if isinstance(result, _Deferred):
                return result.addCallback(self._senderAnswered, i, reply)
            if isinstance(result, Reply):
                if result.code >= 400:
                    return result
                reply = result
            i += 1
        return reply

    def _senderAnswered(self, result: Any, i: int, reply: Reply) -> Any:
        if isinstance(result, Reply):
            if result.code >= 400:
                return result
            reply = result
        return self._checkSender(i + 1, reply)

    def _rcpt(self, event: E.RcptTo) -> Any:
        address = event.address
        session = self.session
        cfg = self.factory.config
        envelope = self.envelope
        assert envelope is not None
        local = True
        if _ROUTING_CHARACTERS.intersection(address.localPart):
            return _ROUTING_DENIED  # user%remote@here, remote!user@here, "a@b"@here
        if address.domain is None:  # the bare <Postmaster> (RFC 5321 4.5.1)
            address = Address(address.localPart, Domain(cfg.hostname))
        elif not cfg.isLocal(address.domain):
            if session.authenticated is None and not cfg.mayRelay(session.peerHost):
                return R.RELAY_DENIED
            local = False  # relayed: an authenticated or trusted client's mail
        recipient = Recipient(address, event.params)
        if event.params:
            owners = self.factory.rcptParameters
            for name, value in event.params.items():
                ext = owners.get(name)
                if ext is None or ext.keyword not in session.extensions:
                    return _unknownParameter(name)
                ext.rcptParameter(session, envelope, recipient, name, value)
        if address.isPostmaster or not local:
            envelope.recipients.append(recipient)
            return R.RECIPIENT_OK
        return self._askValidators(0, recipient)

    def _askValidators(self, i: int, recipient: Recipient) -> Any:
        validators = self.factory.validators
        while i < len(validators):
            result = validators[i].validateRecipient(self.session, self.envelope, recipient)
            if isinstance(result, _Deferred):
                return result.addCallback(self._validatorAnswered, i, recipient)
            if result is not None:
                return self._decide(result, recipient)
            i += 1
        return R.USER_UNKNOWN

    def _validatorAnswered(self, result: Any, i: int, recipient: Recipient) -> Any:
        if result is None:
            return self._askValidators(i + 1, recipient)
        return self._decide(result, recipient)

    def _decide(self, result: Any, recipient: Recipient) -> Reply:
        reply = result if isinstance(result, Reply) else R.RECIPIENT_OK
        if reply.code < 400 and self.envelope is not None and not self._closing:
            self.envelope.recipients.append(recipient)
        return reply

    def _data(self, event: E.Data) -> Reply:
        return R.START_DATA

    def _newMessage(self) -> Message:
        cfg = self.factory.config
        message = self.message = Message(cfg.spillThreshold, cfg.tempDirectory)
        return message

    def _messageData(self, event: E.MessageData) -> None:
        (self.message or self._newMessage()).write(event.data)

    def _endOfChunk(self, event: E.EndOfChunk) -> Reply:
        message = self.message or self._newMessage()
        if event.data:
            message.write(event.data)
        return R.chunkReceived(event.size)

    def _endOfMessage(self, event: E.EndOfMessage) -> Any:
        message, envelope = self.message or self._newMessage(), self.envelope
        assert envelope is not None
        if event.data:
            message.write(event.data)
        message.finish()
        message.prependTrace(
            b"Received: %s\r\n"
            % receivedHeader(self.session, envelope, self.factory.clock.seconds()).encode()
        )
        return self._filterMessage(0, envelope, message)

    def _filterMessage(self, i: int, envelope: Envelope, message: Message) -> Any:
        filters = self.factory.messageFilters
        while i < len(filters):
            result = filters[i].filterMessage(self.session, envelope, message)
            if isinstance(result, _Deferred):
                return result.addCallback(self._afterMessageFilter, i + 1, envelope, message)
            i += 1
        return then(self.factory.backend.deliver(envelope, message), self._delivered, envelope)

    def _afterMessageFilter(self, _: object, i: int, envelope: Envelope, message: Message) -> Any:
        return self._filterMessage(i, envelope, message)

    def _delivered(self, result: DeliveryResult | None, envelope: Envelope) -> Reply:
        factory = self.factory
        if result is None or result.delivered:
            reply = R.accepted(envelope.queueID)
            self._errors = 0
            self.session.messages += 1
            factory.accepted += 1
            factory.acceptedRecipients += len(envelope.recipients)
        else:
            replies = result.replies
            reply = next((r for r in replies if r.code < 500 and r.code >= 400), None) or next(
                r for r in replies if r.code >= 400
            )
            factory.refused += 1
        if self.factory.logMessages:
            # one field holding the line: observers format it for almost nothing
            size = self.message.size if self.message is not None else 0
            user = self.session.authenticated
            log.info(
                "{line}",
                line=f"{self.session.sessionID} {envelope.queueID} "
                f"{'accepted' if reply.code < 400 else 'refused'} "
                f"from={envelope.mailFrom.toPath()} "
                f"to={','.join(str(r.address) for r in envelope.recipients)} "
                f"size={size}{f' user={user}' if user else ''} ({reply.code})",
                queueID=envelope.queueID,
                code=reply.code,
            )
        return reply

    def _endTransaction(self) -> None:
        if self.message is not None:
            self.message.close()
        self.message = None
        self.envelope = None

    def _rset(self, event: E.Rset) -> Reply:
        return R.OK

    def _noop(self, event: E.Noop) -> Reply:
        return R.OK

    def _quit(self, event: E.Quit) -> Reply:
        return R.closing(self.factory.config.hostname)

    def _vrfy(self, event: E.Vrfy) -> Any:
        return self._verify(0, event.argument)

    def _verify(self, i: int, argument: str) -> Any:
        verifiers = self.factory.verifiers
        if i >= len(verifiers):
            return R.CANNOT_VRFY
        return then(
            verifiers[i].verifyAddress(self.session, argument),
            lambda r: r if r is not None else self._verify(i + 1, argument),
        )

    def _expn(self, event: E.Expn) -> Reply:
        return R.NOT_IMPLEMENTED.withText("EXPN is not available")

    def _help(self, event: E.Help) -> Reply:
        verbs = " ".join([_CORE_VERBS, *sorted(self.factory.verbs)])
        if "CHUNKING" in self.session.extensions:
            verbs = verbs.replace("DATA", "DATA BDAT")
        return Reply(
            214,
            (2, 0, 0),
            (f"Commands: {verbs}", "See RFC 5321; mailframe https://pypi.org/project/mailframe/"),
        )

    def _extension(self, event: E.ExtensionCommand) -> Any:
        ext = self.factory.verbs.get(event.name)
        if ext is None:
            return R.UNRECOGNIZED
        if ext.keyword not in self.session.extensions:
            if IUnadvertisedCommands.providedBy(ext):
                reply = ext.refuseCommand(self.control, event.name, event.argument)
                if reply is not None and reply.code >= 400:
                    return reply
            return R.UNRECOGNIZED
        self._conversation = (ext, event.name)
        return ext.handleCommand(self.control, event.name, event.argument)

    def _continuation(self, event: E.ContinuationLine) -> Any:
        if self._conversation is None:
            return R.BAD_SEQUENCE
        ext, verb = self._conversation
        return ext.continueCommand(self.control, verb, event.data)

    def _starttls(self, event: E.StartTLS) -> Any:
        ext = self.factory.verbs.get("STARTTLS")
        if ext is None:
            return R.UNRECOGNIZED
        return ext.handleCommand(self.control, "STARTTLS", "")


HANDLERS: dict[type, Callable[[Any, Any], Any]] = {
    E.Hello: CommandHandlers._hello,
    E.MailFrom: CommandHandlers._mail,
    E.RcptTo: CommandHandlers._rcpt,
    E.Data: CommandHandlers._data,
    E.MessageData: CommandHandlers._messageData,
    E.EndOfChunk: CommandHandlers._endOfChunk,
    E.EndOfMessage: CommandHandlers._endOfMessage,
    E.Rset: CommandHandlers._rset,
    E.Noop: CommandHandlers._noop,
    E.Quit: CommandHandlers._quit,
    E.Vrfy: CommandHandlers._vrfy,
    E.Expn: CommandHandlers._expn,
    E.Help: CommandHandlers._help,
    E.ExtensionCommand: CommandHandlers._extension,
    E.ContinuationLine: CommandHandlers._continuation,
    E.StartTLS: CommandHandlers._starttls,
}
