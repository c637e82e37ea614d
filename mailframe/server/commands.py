"""
L{Commands}: the policy of one server session, what each SMTP command and
message event does with the plug points (HELO validators, sender and
recipient validators, extensions, message filters, the delivery backend).

A handler returns a L{Reply}, None (no reply due), or a Deferred of a
reply.  The chains of plug-ins run by the one contract of
L{mailframe.server.chains}: synchronously until a plug-in answers with a
Deferred, so the common case costs no callbacks.  L{SMTPServerProtocol}
owns the I/O and calls the handlers (L{HANDLERS}) with its Commands.

After the final dot the message filters run (each within the plug-in time
limit: one that does not answer is cancelled, and the client gets 451),
then the delivery backend, which is never cancelled: a backend writing in a
thread cannot be stopped, and answering 451 while its write goes on would
make the client send the message twice.  A delivery slower than
C{deliveryTimeout} is logged, and the session waits for it.

Text the client sent is echoed in a reply only through L{clientText}:
printable ASCII, bounded.

Owns: the policy order of a session (relay check, routing forms,
postmaster, parameters, validators; filters then delivery) and the
transaction's state (envelope, message, the extension conversation).
Must not: touch the transport or the timers, or parse (the core does).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailframe import reply as R
from mailframe._deferreds import settled, then
from mailframe.address import Address, Domain
from mailframe.envelope import DeliveryResult, Envelope, Recipient, SessionInfo
from mailframe.interfaces import IExtension, IUnadvertisedCommands
from mailframe.message import Message
from mailframe.protocol import _events as E
from mailframe.reply import Reply, SMTPError, clientText
from mailframe.server._decisions import SessionRecord
from mailframe.server.context import ServerContext
from mailframe.server.control import SessionControl
from mailframe.server.expansion import rewrite
from mailframe.trace import protocolName, receivedHeader

__all__ = ["EARLY_TALKER", "GROUP_ENDERS", "HANDLERS", "OUT_OF_SYNC", "Commands"]

log = Logger(namespace="mailframe.server")

_Deferred = defer.Deferred
_T = TypeVar("_T")
_Answer = Reply | tuple[Reply, ...]
"""The answer to the end of a message: a reply, or in LMTP one per recipient."""
_CORE_VERBS = "HELO EHLO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP"

_AUTH_REQUIRED = Reply(530, (5, 7, 0), "Authentication required")
_ROUTING_DENIED = Reply(
    550, (5, 7, 1), "Routing through this server (%, ! or @ in a local part) is not allowed"
)
OUT_OF_SYNC = Reply(
    554, (5, 5, 0), "Protocol error: commands sent before the reply (no PIPELINING)"
)
EARLY_TALKER = Reply(554, (5, 5, 0), "Protocol error: client talked before the greeting")
GROUP_ENDERS = frozenset({E.Hello, E.Data, E.Vrfy, E.Expn, E.Noop, E.StartTLS})
"""Commands after which a client must wait for the reply, even with PIPELINING."""


_EHLO_REPLIES: dict[tuple[tuple[str, ...], tuple[str, ...]], tuple[Reply, frozenset[str]]] = {}
"""The EHLO replies made last, by their lines and keywords (a client greets
with the same name each time, and the extensions offer it the same): the
reply, checked and encoded once, and the keywords it offers."""


class Commands:
    """
    The command and message-event handlers of one session, with the
    transaction they build.  C{decider} is the plug-in that decided the
    reply to the command being answered (for log lines), or None: the
    server's own rules.  C{record}: the session's decision events.
    """

    __slots__ = (
        "context",
        "control",
        "conversation",
        "decider",
        "envelope",
        "message",
        "record",
        "session",
    )

    def __init__(
        self,
        context: ServerContext,
        session: SessionInfo,
        control: SessionControl,
        record: SessionRecord | None = None,
    ):
        self.context = context
        self.session = session
        self.control = control
        self.record = record if record is not None else SessionRecord(context, session, 0.0)
        self.envelope: Envelope | None = None
        self.message: Message | None = None
        self.conversation: tuple[IExtension, str] | None = None  # (extension, verb) after a 334
        self.decider: object = None

    # -- HELO / EHLO ------------------------------------------------------------

    def hello(self, event: E.Hello) -> Reply | defer.Deferred[Reply]:
        chain = self.context.heloChain
        if not chain.calls:
            return self._helloReply(None, event)
        return then(
            chain.ask(self, (self.session, event.name, event.extended)), self._helloReply, event
        )

    def _helloReply(self, decided: Reply | None, event: E.Hello) -> Reply:
        if decided is not None and decided.code >= 400:
            return decided
        session = self.session
        cfg = self.context.config
        session.heloName = event.name
        session.esmtp = event.extended
        if not event.extended:
            session.extensions = frozenset()
            return decided or Reply(250, None, cfg.hostname)
        first = decided.lines[0] if decided is not None else (
            f"{cfg.hostname} greets {clientText(event.name, 255)}"
        )  # fmt: skip
        lines = [first]
        keywords = []
        for keyword, ext in self.context.ehloPlan:
            if ext is None:  # the keyword alone, whatever the session
                keywords.append(keyword)
                lines.append(keyword)
                continue
            params = ext.ehloParameters(session)
            if params is None:
                continue
            keywords.append(keyword)
            lines.append(f"{keyword} {params}" if params else keyword)
        key = (tuple(lines), tuple(keywords))
        made = _EHLO_REPLIES.get(key)
        if made is None:  # the reply (checked and encoded once) and its keywords
            if len(_EHLO_REPLIES) >= 256:
                _EHLO_REPLIES.clear()
            made = _EHLO_REPLIES[key] = (Reply(250, None, key[0]), frozenset(keywords))
        session.extensions = made[1]
        return made[0]

    # -- the transaction --------------------------------------------------------------

    def mail(self, event: E.MailFrom) -> Reply | defer.Deferred[Reply]:
        session = self.session
        context = self.context
        if context.config.requireAuthentication and session.authenticated is None:
            return _AUTH_REQUIRED
        envelope = Envelope(context.ids.next(), event.address, event.params)
        self.envelope = envelope
        if event.params:
            owners = context.mailParameters
            for name, value in event.params.items():
                ext = owners.get(name)
                if ext is None or ext.keyword not in session.extensions:
                    return _unknownParameter(name)
                self.decider = ext
                ext.mailParameter(session, envelope, name, value)
            self.decider = None
        envelope.session = session.snapshot(protocolName(session, envelope, context.config.lmtp))
        chain = context.senderChain
        if not chain.calls:
            return R.SENDER_OK
        decided = chain.ask(self, (session, envelope))
        if decided is None:
            return R.SENDER_OK
        if type(decided) is Reply:
            return decided
        return then(decided, _orDefault, R.SENDER_OK)

    def rcpt(self, event: E.RcptTo) -> Reply | defer.Deferred[Reply]:
        address = event.address
        session = self.session
        context = self.context
        cfg = context.config
        envelope = self.envelope
        assert envelope is not None
        local = True
        localPart = address.localPart
        if "%" in localPart or "!" in localPart or "@" in localPart:  # source routing
            return _ROUTING_DENIED  # user%remote@here, remote!user@here, "a@b"@here
        if address.domain is None:  # the bare <Postmaster> (RFC 5321 4.5.1)
            address = Address(address.localPart, Domain(cfg.hostname))
        elif address.domain.key not in cfg._localKeys:  # not cfg.isLocal(), inline
            if session.authenticated is None and not cfg.mayRelay(session.peerHost):
                return R.RELAY_DENIED
            local = False  # relayed: an authenticated or trusted client's mail
        recipient = Recipient(address, event.params)
        if event.params:
            owners = context.rcptParameters
            for name, value in event.params.items():
                ext = owners.get(name)
                if ext is None or ext.keyword not in session.extensions:
                    return _unknownParameter(name)
                self.decider = ext
                ext.rcptParameter(session, envelope, recipient, name, value)
            self.decider = None
        if local and context.rewriters:  # aliases, virtual maps, subaddressing, SRS
            rewritten = rewrite(context, session, envelope, recipient, self)
            return then(rewritten, self._rewritten, envelope, recipient)
        if not local or localPart.lower() == "postmaster":  # address.isPostmaster, inline
            envelope.recipients.append(recipient)
            return R.RECIPIENT_OK
        decided = context.recipientChain.ask(self, (session, envelope, recipient))
        if type(decided) is Reply:  # _recipientDecided, inline: a validator answered at once
            if decided.code < 400:
                envelope.recipients.append(recipient)
            return decided
        return then(decided, self._recipientDecided, envelope, recipient)

    def _rewritten(
        self, rewritten: Recipient | Reply | None, envelope: Envelope, recipient: Recipient
    ) -> Reply | defer.Deferred[Reply]:
        """After the rewriters (L{mailframe.server.expansion}): judged, refused or accepted."""
        if isinstance(rewritten, Reply):
            return rewritten
        if rewritten is not None:
            return self._recipientDecided(R.RECIPIENT_OK, envelope, rewritten)
        if recipient.address.isPostmaster:  # not rewritten: judged as it is
            envelope.recipients.append(recipient)
            return R.RECIPIENT_OK
        decided = self.context.recipientChain.ask(self, (self.session, envelope, recipient))
        return then(decided, self._recipientDecided, envelope, recipient)

    def _recipientDecided(self, reply: Reply, envelope: Envelope, recipient: Recipient) -> Reply:
        if reply.code < 400 and envelope is self.envelope:
            envelope.recipients.append(recipient)
        return reply

    def data(self, event: E.Data) -> Reply:
        return R.START_DATA

    def _newMessage(self) -> Message:
        cfg = self.context.config
        message = self.message = Message(cfg.spillThreshold, cfg.tempDirectory)
        return message

    def messageData(self, event: E.MessageData) -> None:
        (self.message or self._newMessage()).write(event.data)

    def endOfChunk(self, event: E.EndOfChunk) -> Reply:
        message = self.message or self._newMessage()
        if event.data:
            message.write(event.data)
        return R.chunkReceived(event.size)

    def endOfMessage(self, event: E.EndOfMessage) -> _Answer | defer.Deferred[_Answer]:
        """The message is complete: filters (time-limited), then delivery (never cancelled)."""
        message, envelope = self.message or self._newMessage(), self.envelope
        assert envelope is not None
        if event.data:
            message.write(event.data)
        message.finish()
        context = self.context
        message.prependTrace(
            b"Received: %s\r\n"
            % receivedHeader(
                self.session, envelope, context.clock.seconds(), context.config.lmtp
            ).encode()
        )
        chain = context.messageChain
        if not chain.calls:
            return self._deliver(None, envelope, message)
        filtered = settled(chain.ask(self, (self.session, envelope, message)))
        if filtered is None or type(filtered) is Reply:  # every filter answered at once
            return self._deliver(filtered, envelope, message)
        if isinstance(filtered, _Deferred):
            timer = context.clock.callLater(context.config.pluginTimeout, filtered.cancel)
            filtered.addBoth(_cancelTimer, timer)
        return then(filtered, self._deliver, envelope, message)

    def _deliver(
        self, filtered: Reply | None, envelope: Envelope, message: Message
    ) -> _Answer | defer.Deferred[_Answer]:
        context = self.context
        if filtered is not None and filtered.code >= 400:
            return filtered  # its line and count: the session's record (_decisions)
        if envelope.discard is not None:  # a filter's discard: 250, delivered to nobody
            return self._delivered(None, envelope, filtered)
        try:
            result = settled(context.backend.deliver(envelope, message))
        except SMTPError as e:
            return self._delivered(DeliveryResult.allDelivered(envelope, e.reply), envelope, None)
        except Exception:
            log.failure("{id} the delivery backend failed", id=self.session.sessionID)
            return self._delivered(
                DeliveryResult.allDelivered(envelope, R.LOCAL_ERROR), envelope, None
            )
        if isinstance(result, _Deferred):
            warning = context.clock.callLater(
                context.config.deliveryTimeout, self._slowDelivery, envelope
            )
            result.addBoth(_cancelTimer, warning)
            result.addErrback(self._deliveryFailed, envelope)
            return result.addCallback(self._delivered, envelope, filtered)
        return self._delivered(result, envelope, filtered)

    def _slowDelivery(self, envelope: Envelope) -> None:
        log.warn(
            "{id} {queueID}: the delivery backend has not answered in {seconds:g} s; "
            "the session waits for it",
            id=self.session.sessionID,
            queueID=envelope.queueID,
            seconds=self.context.config.deliveryTimeout,
        )

    def _deliveryFailed(self, reason: Failure, envelope: Envelope) -> DeliveryResult:
        error = reason.value
        if isinstance(error, SMTPError):
            return DeliveryResult.allDelivered(envelope, error.reply)
        log.failure("{id} the delivery backend failed", reason, id=self.session.sessionID)
        return DeliveryResult.allDelivered(envelope, R.LOCAL_ERROR)

    def _delivered(
        self, result: DeliveryResult | None, envelope: Envelope, filtered: Reply | None
    ) -> _Answer:
        if self.context.config.lmtp:
            return self._deliveredEach(result, envelope, filtered)
        stats = self.context.stats
        if result is None or result.delivered:
            queueID = (result.queueID if result is not None else None) or envelope.queueID
            reply = filtered if filtered is not None else R.accepted(queueID)
            self.session.messages += 1
            stats.accepted += 1
            stats.acceptedRecipients += len(envelope.recipients)
            size = self.message.size if self.message is not None else 0
            self.record.accepted(envelope, queueID, size, reply)
        else:  # refused: the session's record counts it and says so
            replies = result.replies
            reply = next((r for r in replies if 400 <= r.code < 500), None) or next(
                r for r in replies if r.code >= 400
            )
            self.decider = self.context.backend
        return reply

    def _deliveredEach(
        self, result: DeliveryResult | None, envelope: Envelope, filtered: Reply | None
    ) -> tuple[Reply, ...]:
        """
        LMTP (RFC 2033 4.2): each accepted recipient's own reply, in the
        order of the RCPT commands.  A delivered one gets C{filtered} (a
        message filter's positive reply) or a 250 naming it and the queue
        ID; a 421 of the backend's becomes a 451 (a 421 would end the
        session before the other recipients are answered).
        """
        recipients = envelope.recipients
        if result is not None and len(result.replies) != len(recipients):
            log.error(
                "{id} {queueID}: the backend answered {n} replies for {count} recipients",
                id=self.session.sessionID,
                queueID=envelope.queueID,
                n=len(result.replies),
                count=len(recipients),
            )
            result = DeliveryResult.allDelivered(envelope, R.LOCAL_ERROR)
        queueID = (result.queueID if result is not None else None) or envelope.queueID
        replies = []
        for i, recipient in enumerate(recipients):
            answer = result.replies[i] if result is not None else None
            if answer is None or answer.code < 400:
                replies.append(filtered or _deliveredTo(recipient, queueID))
            elif answer.code == 421:
                replies.append(Reply(451, answer.enhanced, answer.lines))
            else:
                replies.append(answer)
        delivered = sum(r.code < 400 for r in replies)
        stats = self.context.stats
        if result is not None and delivered < len(replies):
            self.decider = self.context.backend  # who refused the others
        if delivered:  # the refused recipients: the session's record counts and says them
            self.session.messages += 1
            stats.accepted += 1
            stats.acceptedRecipients += delivered
            size = self.message.size if self.message is not None else 0
            reply = next(r for r in replies if r.code < 400)
            self.record.accepted(envelope, queueID, size, reply, replies)
        return tuple(replies)

    def endTransaction(self) -> None:
        """Forget the transaction; the message is closed (by its last user, see L{Message})."""
        if self.message is not None:
            self.message.close()
        self.message = None
        self.envelope = None

    def forget(self) -> None:
        """STARTTLS: forget the transaction and any extension conversation (RFC 3207 4.2)."""
        self.endTransaction()
        self.conversation = None

    # -- the other commands --------------------------------------------------------------

    def rset(self, event: E.Rset) -> Reply:
        return R.OK

    def noop(self, event: E.Noop) -> Reply:
        return R.OK

    def quit(self, event: E.Quit) -> Reply:
        return R.closing(self.context.config.hostname)

    def vrfy(self, event: E.Vrfy) -> Reply | defer.Deferred[Reply | None] | None:
        return self.context.verifyChain.ask(self, (self.session, event.argument))

    def unknown(self, line: bytes, default: Reply) -> Reply | defer.Deferred[Reply]:
        """A command the server does not know: C{default} (500), unless a plug-in refuses it."""
        decided = self.context.unknownChain.ask(
            self, (self.session, line.decode("utf-8", "replace"))
        )
        if decided is None or type(decided) is Reply:
            return _refusalOr(decided, default)
        return then(decided, _refusalOr, default)

    def expn(self, event: E.Expn) -> Reply:
        return R.NOT_IMPLEMENTED.withText("EXPN is not available")

    def help(self, event: E.Help) -> Reply:
        verbs = " ".join([_CORE_VERBS, *sorted(self.context.verbs)])
        if "CHUNKING" in self.session.extensions:
            verbs = verbs.replace("DATA", "DATA BDAT")
        return Reply(
            214,
            (2, 0, 0),
            (f"Commands: {verbs}", "See RFC 5321; mailframe https://pypi.org/project/mailframe/"),
        )

    def extension(self, event: E.ExtensionCommand) -> Reply | defer.Deferred[Reply]:
        ext = self.context.verbs.get(event.name)
        if ext is None:
            return R.UNRECOGNIZED
        if ext.keyword not in self.session.extensions:
            if IUnadvertisedCommands.providedBy(ext):
                reply = ext.refuseCommand(self.control, event.name, event.argument)
                if reply is not None and reply.code >= 400:
                    return reply
            return R.UNRECOGNIZED
        self.conversation = (ext, event.name)
        self.decider = ext
        return ext.handleCommand(self.control, event.name, event.argument)

    def continuation(self, event: E.ContinuationLine) -> Reply | defer.Deferred[Reply]:
        if self.conversation is None:
            return R.BAD_SEQUENCE
        ext, verb = self.conversation
        self.decider = ext
        return ext.continueCommand(self.control, verb, event.data)

    def starttls(self, event: E.StartTLS) -> Reply | defer.Deferred[Reply]:
        ext = self.context.verbs.get("STARTTLS")
        if ext is None:
            return R.UNRECOGNIZED
        self.decider = ext
        return ext.handleCommand(self.control, "STARTTLS", "")


def _unknownParameter(name: str) -> Reply:
    """The 555 for a MAIL or RCPT parameter nobody owns, naming it (cut short)."""
    return R.UNKNOWN_PARAMETER.withText(f"Unsupported parameter {clientText(name, 64)}")


def _deliveredTo(recipient: Recipient, queueID: str) -> Reply:
    """LMTP: the 250 of one delivered recipient."""
    text = f"{clientText(recipient.address.toPath(), 300)} OK queued as {queueID}"
    return Reply(250, (2, 0, 0), text)


def _refusalOr(decided: Reply | None, default: Reply) -> Reply:
    return decided if decided is not None and decided.code >= 400 else default


def _orDefault(decided: Reply | None, default: Reply) -> Reply:
    return default if decided is None else decided


def _cancelTimer(result: _T, timer: IDelayedCall) -> _T:
    if timer.active():
        timer.cancel()
    return result


_Handled = (
    _Answer | defer.Deferred[Reply] | defer.Deferred[Reply | None] | defer.Deferred[_Answer] | None
)
"""What a handler returns: a reply, a Deferred of one, or None (no reply due)."""

HANDLERS: dict[type, Callable[[Commands, Any], _Handled]] = {
    E.Hello: Commands.hello,
    E.MailFrom: Commands.mail,
    E.RcptTo: Commands.rcpt,
    E.Data: Commands.data,
    E.MessageData: Commands.messageData,
    E.EndOfChunk: Commands.endOfChunk,
    E.EndOfMessage: Commands.endOfMessage,
    E.Rset: Commands.rset,
    E.Noop: Commands.noop,
    E.Quit: Commands.quit,
    E.Vrfy: Commands.vrfy,
    E.Expn: Commands.expn,
    E.Help: Commands.help,
    E.ExtensionCommand: Commands.extension,
    E.ContinuationLine: Commands.continuation,
    E.StartTLS: Commands.starttls,
}
"""Event type -> its handler, called as C{HANDLERS[type(event)](commands, event)}."""
