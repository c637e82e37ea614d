"""
The decision events of a server session (L{mailframe.events}): connect,
TLS, AUTH, every refusal, every accepted message, and the disconnect with
its counts per command, each one twisted.logger event carrying the
C{mfEvent} key, a greppable format and its fields.

L{SessionRecord} is a session's part: the session (L{SMTPServerProtocol})
tells it each command it takes and each reply it writes (a dict increment
or two); it emits the events, when the server's C{decisions} are on
(C{ServerConfig.logMessages}: C{--quiet} turns them off), and keeps the
server's totals (L{mailframe.server.context.ServerStats}) whether or not.

Formatting is left to the observers: an event holds its fields and a
format naming them, nothing is rendered here.

Owns: the decision events' formats and fields for the server.  Must not:
decide anything, write to the transport, or import the session's modules.
"""

from __future__ import annotations

from collections.abc import Sequence
from time import time
from typing import TYPE_CHECKING, Any, Protocol

from twisted.logger import Logger

from mailframe import events
from mailframe._eventlog import INFO, counting, emit
from mailframe.protocol import _events as E
from mailframe.reply import Reply

if TYPE_CHECKING:
    from mailframe.envelope import Envelope, SessionInfo
    from mailframe.interfaces import IExtension
    from mailframe.message import Message
    from mailframe.server.context import ServerContext


class Commands(Protocol):
    """What a L{SessionRecord} reads of the session's commands (L{mailframe.server.commands})."""

    envelope: Envelope | None
    message: Message | None
    decider: object
    conversation: tuple[IExtension, str] | None


__all__ = ["SessionRecord", "clientName", "deciderName", "replyText"]

log = Logger(namespace="mailframe.server")
_NAMESPACE = log.namespace
_SOURCE = log.source


def _publish(fields: dict[str, Any], logged: bool) -> None:
    """
    Hand a whole event (its C{log_*} keys too, made by the caller in the
    same dict display as its fields: one dict, sized once) to the log's
    observers, or, when the lines are off, to the L{counting} ones.
    """
    if logged:
        log.observer(fields)
    else:
        for observer in counting:
            observer(fields)


def _info(format: str, **fields: Any) -> None:
    emit(log, format, fields)


_KEY = events.KEY

#: The verb of each command event (the ones that depend on the event are
#: worked out in L{SessionRecord.command}).
_VERBS: dict[type, str] = {
    E.MailFrom: "mail",
    E.RcptTo: "rcpt",
    E.Data: "data",
    E.Rset: "rset",
    E.Noop: "noop",
    E.Quit: "quit",
    E.Vrfy: "vrfy",
    E.Expn: "expn",
    E.Help: "help",
    E.StartTLS: "starttls",
    E.EndOfChunk: "bdat",
}
_KNOWN_VERBS = frozenset(
    {"helo", "ehlo", "lhlo", "mail", "rcpt", "data", "bdat", "rset", "noop", "quit", "vrfy",
     "expn", "help", "starttls", "auth"}
)  # fmt: skip

_FORMATS = {
    "connect": "{sessionID} refused connect from {clientName}[{clientAddress}]: "
    "{reply} (by {decider})",
    "session": "{sessionID} refused {stage} from {clientName}[{clientAddress}] helo=<{helo}>: "
    "{reply} (by {decider})",
    "mail": "{sessionID} refused {stage} from {clientName}[{clientAddress}] "
    "helo=<{helo}> from=<{sender}>: {reply} (by {decider})",
    "transaction": "{sessionID} {queueID} refused {stage} from {clientName}[{clientAddress}] "
    "helo=<{helo}> from=<{sender}>: {reply} (by {decider})",
    "rcpt": "{sessionID} {queueID} refused {stage} from {clientName}[{clientAddress}] "
    "helo=<{helo}> from=<{sender}> to=<{recipient}>: {reply} (by {decider})",
    "message": "{sessionID} {queueID} refused {stage} from {clientName}[{clientAddress}] "
    "helo=<{helo}> from=<{sender}> to={to} size={size}: {reply} (by {decider})",
}


_CONNECT = "{sessionID} connect from {clientName}[{clientAddress}] listener={listener}"
_DISCONNECT = (
    "{sessionID} disconnect from {clientName}[{clientAddress}] {counts} "
    "bytes={bytesIn} duration={duration:.3f}s"
)
_ACCEPTED = (
    "{sessionID} {queueID} accepted from=<{sender}> to={to} size={size} "
    "client={clientName}[{clientAddress}] helo=<{helo}>{notes} ({code})"
)


def clientName(session: SessionInfo) -> str:
    """The client's verified reverse name (forward-confirmed), or C{unknown}."""
    return session.verifiedName or "unknown"


def deciderName(names: dict[int, str], provider: object) -> str:
    """
    The plug-in C{provider} as the log names it: its description
    (C{names}, by id: what C{--validate} or C{--filter} said), its own
    C{repr} if it has one, else its class name; C{mailframe} for None (the
    server's own rules), as C{mailframe simulate} names them.
    """
    if provider is None:
        return "mailframe"
    name = names.get(id(provider))
    if name is not None:
        return name
    if type(provider).__repr__ is not object.__repr__:
        return repr(provider)
    return type(provider).__name__


def replyText(reply: Reply) -> str:
    """The whole reply, its lines joined by a space (C{550 5.1.1 No such user})."""
    text = reply.text
    if type(text) is str and text and len(text) <= 100 and reply.code != 334:
        # one short line (most replies, and every 250 after the data): what
        # str(reply) gives, without encoding the reply and decoding it again
        enhanced = reply.enhanced
        if enhanced is None:
            return f"{reply.code} {text}"
        return f"{reply.code} {enhanced[0]}.{enhanced[1]}.{enhanced[2]} {text}"
    return str(reply).replace("\r\n", " ")


def _sentText(sent: bytes) -> str:
    """A reply as it went on the wire (enhanced code only if offered), on one line."""
    return " ".join(sent.decode("utf-8", "replace").split("\r\n")).strip()


def _recipientList(envelope: Envelope) -> list[str]:
    return [str(r.address) for r in envelope.recipients]


_MESSAGE_END = object()
"""The event of a message whose end the core refused (too big, a bare CR or LF ...)."""

_REPLY_KEYS: dict[str, tuple[str, ...]] = {}


def _replyKey(verb: str, code: int) -> str:
    """C{"verb:class"} (C{"rcpt:5"}), each made once."""
    keys = _REPLY_KEYS.get(verb)
    if keys is None:
        keys = _REPLY_KEYS[verb] = tuple(f"{verb}:{n}" for n in range(10))
    return keys[code // 100 % 10]


class _Counts:
    """
    The disconnect line's C{ehlo=1 mail=1 rcpt=1/2 ... commands=5/6}
    (successes/attempts where some failed), made only when it is shown.
    """

    __slots__ = ("commands", "failed")

    def __init__(self, commands: dict[str, int], failed: dict[str, int]) -> None:
        self.commands = commands
        self.failed = failed

    def __str__(self) -> str:
        failed = self.failed
        if not failed:  # the common session: every command answered 2xx/3xx
            commands = self.commands
            parts = [f"{verb}={n}" for verb, n in commands.items()]
            parts.append(f"commands={sum(commands.values())}")
            return " ".join(parts)
        parts = []
        total = ok = 0
        for verb, n in self.commands.items():
            bad = min(failed.get(verb, 0), n)
            total += n
            ok += n - bad
            parts.append(f"{verb}={n - bad}/{n}" if bad else f"{verb}={n}")
        parts.append(f"commands={ok}/{total}" if ok != total else f"commands={total}")
        return " ".join(parts)

    def __format__(self, spec: str) -> str:
        return format(str(self), spec) if spec else self.__str__()

    def __eq__(self, other: object) -> bool:
        return str(self) == other if isinstance(other, str) else NotImplemented

    __hash__ = None  # type: ignore[assignment]


class SessionRecord:
    """
    What the decision events of one session need: the counts per command
    and per reply class, the octets of message data, the start, and the
    command being answered.  C{on}: whether events are emitted.
    """

    __slots__ = (
        "bytesIn",
        "commands",
        "connected",
        "context",
        "dataVerb",
        "event",
        "failed",
        "logged",
        "ok",
        "on",
        "replies",
        "session",
        "started",
        "verb",
    )

    def __init__(self, context: ServerContext, session: SessionInfo, started: float) -> None:
        self.context = context
        self.session = session
        self.started = started
        self.logged = context.decisions
        self.on = self.logged or bool(counting)  # counted (metrics) even when not logged
        self.commands: dict[str, int] = {}
        # "verb:class" -> count; the 2xx of reply() go to ok instead (verb -> count: no
        # key made in the common case), merged by replyCounts()
        self.replies: dict[str, int] = {}
        self.ok: dict[str, int] = {}
        self.failed: dict[str, int] = {}
        self.bytesIn = 0
        self.verb = "connect"  # what the next reply answers
        self.event: object = None
        self.dataVerb: str | None = None  # "data" after a 354, until the end of the message
        self.connected = False

    # -- what the session tells it ----------------------------------------------------

    def command(self, event: object, commands: Commands) -> None:
        """A command (or the end of a message or chunk) is about to be handled."""
        kind = type(event)
        verb = _VERBS.get(kind)
        if verb is None:
            if kind is E.EndOfMessage:
                self.bytesIn += event.size  # type: ignore[attr-defined]
                verb, self.dataVerb = self.dataVerb or "bdat", None
                if verb == "data":  # the DATA command was counted already
                    self.verb, self.event = verb, event
                    return
            elif kind is E.Hello:
                verb = "lhlo" if self.context.config.lmtp else (
                    "ehlo" if event.extended else "helo"  # type: ignore[attr-defined]
                )  # fmt: skip
            elif kind is E.ExtensionCommand:
                verb = event.name.lower()  # type: ignore[attr-defined]
            elif kind is E.ContinuationLine:  # part of the command it continues
                conversation = commands.conversation
                self.verb = conversation[1].lower() if conversation else "unknown"
                self.event = event
                return
            else:
                verb = "unknown"
        self.verb, self.event = verb, event
        counts = self.commands
        counts[verb] = counts.get(verb, 0) + 1

    def protocolError(self, line: bytes) -> None:
        """The core refused a line (syntax, sequence, size): which command it was."""
        if self.dataVerb is not None:  # the end of a message the core refused
            verb, self.dataVerb = self.dataVerb, None
            self.verb, self.event = verb, _MESSAGE_END
            return
        word = line.split(b" ", 1)[0].decode("ascii", "replace").lower()
        if word == "bdat" and line.rstrip().lower().endswith(b" last"):
            counts = self.commands
            counts[word] = counts.get(word, 0) + 1
            self.verb, self.event = word, _MESSAGE_END  # the last chunk, refused
            return
        verb = (
            word if word in _KNOWN_VERBS or word.upper() in self.context.verbNames else "unknown"
        )
        self.verb, self.event = verb, None
        counts = self.commands
        counts[verb] = counts.get(verb, 0) + 1

    def reply(self, reply: Reply, commands: Commands, sent: bytes = b"") -> None:
        """A reply is written (to L{verb}); a refusal is emitted and counted."""
        code = reply.code
        if code < 300:
            ok, verb = self.ok, self.verb
            ok[verb] = ok.get(verb, 0) + 1
            return
        key = _replyKey(self.verb, code)
        replies = self.replies
        replies[key] = replies.get(key, 0) + 1
        if code == 354:
            self.dataVerb = "data"
        elif code >= 400:
            if self.verb == "data" and type(self.event) is E.Data:
                self.dataVerb = None
            failed = self.failed
            failed[self.verb] = failed.get(self.verb, 0) + 1
            self.refused(reply, commands, sent=sent)

    def replyCounts(self) -> dict[str, int]:
        """The replies so far by C{"verb:class"} (C{"rcpt:2"}, C{"rcpt:5"} ...)."""
        counts = dict(self.replies)
        for verb, n in self.ok.items():
            key = _replyKey(verb, 200)
            counts[key] = counts.get(key, 0) + n
        return counts

    def replyEach(self, replies: Sequence[Reply], commands: Commands) -> None:
        """LMTP: the replies to the end of a message, one per recipient, in order."""
        counts = self.replies
        envelope = commands.envelope
        recipients = envelope.recipients if envelope is not None else []
        failed = self.failed
        for i, reply in enumerate(replies):
            key = _replyKey(self.verb, reply.code)
            counts[key] = counts.get(key, 0) + 1
            if reply.code >= 400:
                failed[self.verb] = failed.get(self.verb, 0) + 1
                recipient = recipients[i] if i < len(recipients) else None
                self.refused(reply, commands, str(recipient.address) if recipient else None)

    # -- the events -------------------------------------------------------------------

    def _say(self, format: str, **fields: Any) -> None:
        emit(log, format, fields, self.logged)

    def connect(self, proxied: bool = False) -> None:
        """
        The session began (emitted once its greeting is decided, or as it
        ends); C{proxied}: a PROXY header named the client.
        """
        if self.connected:
            return
        self.connected = True
        if not self.on:
            return
        session = self.session
        _publish(  # a line per connection: the whole event made in one piece
            {
                "log_logger": log,
                "log_level": INFO,
                "log_namespace": _NAMESPACE,
                "log_source": _SOURCE,
                "log_format": _CONNECT,
                "log_time": time(),
                _KEY: events.CONNECT,
                "sessionID": session.sessionID,
                "listener": session.listener,
                "clientAddress": session.peerHost,
                "clientPort": session.peerPort,
                "clientName": clientName(session),
                "localAddress": session.localHost,
                "localPort": session.localPort,
                "proxied": proxied,
            },
            self.logged,
        )

    def tls(self) -> None:
        """TLS is established (the handshake completed)."""
        session = self.session
        tls = session.tls
        if not self.on or tls is None:
            return
        self._say(
            "{sessionID} TLS {tlsVersion} {cipher} with {clientName}[{clientAddress}]",
            mfEvent=events.TLS,
            sessionID=session.sessionID,
            listener=session.listener,
            clientAddress=session.peerHost,
            clientName=clientName(session),
            tlsVersion=tls.version,
            cipher=tls.cipher,
            bits=tls.bits,
        )

    def authenticated(self, user: str, mechanism: str) -> None:
        """AUTH succeeded (a failure is the AUTH extension's to tell: it knows the user)."""
        if not self.on:
            return
        session = self.session
        self._say(
            "{sessionID} auth ok user={user} mechanism={mechanism} "
            "client={clientName}[{clientAddress}]",
            mfEvent=events.AUTH,
            sessionID=session.sessionID,
            listener=session.listener,
            clientAddress=session.peerHost,
            clientName=clientName(session),
            mechanism=mechanism,
            user=user,
            success=True,
        )

    def refused(
        self, reply: Reply, commands: Commands, recipient: str | None = None, sent: bytes = b""
    ) -> None:
        """A 4xx/5xx reply to L{verb}: counted, and emitted with what the session knew."""
        stage = self.verb
        event = self.event
        envelope = commands.envelope
        stats = self.context.stats
        kind = type(event)
        message = kind is E.EndOfMessage or event is _MESSAGE_END
        if message and recipient is None:
            stats.refused += 1  # the message, refused after its data
        elif kind is E.MailFrom or kind is E.RcptTo or recipient is not None:
            stats.refused += 1  # not a syntax or sequence error: those refuse no mail
            if kind is E.RcptTo or recipient is not None:
                stats.refusedRecipients += 1
        elif stage == "connect":
            stats.refusedConnections += 1
        if not self.on:
            return
        session = self.session
        sender: str | None = None
        queueID: str | None = None
        recipients: list[str] | None = None
        size: int | None = None
        if kind is E.MailFrom:
            sender = str(event.address)  # type: ignore[attr-defined]
        elif envelope is not None:
            sender = str(envelope.mailFrom)
        if envelope is not None and stage != "mail":
            queueID = envelope.queueID
        if kind is E.RcptTo:
            recipient = str(event.address)  # type: ignore[attr-defined]
        if message:
            message_ = commands.message
            size = message_.size if message_ is not None else 0
            recipients = _recipientList(envelope) if envelope is not None else []
        if stage == "connect":
            form = "connect"
        elif stage == "mail" and kind is E.MailFrom:
            form = "mail"
        elif recipient is not None and not message:
            form = "rcpt"
        elif message and envelope is not None:
            form = "message"
            if recipient is not None:  # LMTP: one recipient's refusal after the data
                form, recipients = "rcpt", [recipient]
        elif queueID is not None and sender is not None:
            form = "transaction"
        else:
            form = "session"
        self._say(
            _FORMATS[form],
            mfEvent=events.REFUSED,
            sessionID=session.sessionID,
            queueID=queueID,
            listener=session.listener,
            stage=stage,
            clientAddress=session.peerHost,
            clientName=clientName(session),
            helo=session.heloName,
            sender=sender,
            recipient=recipient,
            recipients=recipients,
            to=",".join(recipients) if recipients is not None else None,
            size=size,
            user=session.authenticated,
            reply=_sentText(sent) if sent else replyText(reply),
            code=reply.code,
            decider=deciderName(self.context.deciderNames, commands.decider),
        )

    def accepted(
        self,
        envelope: Envelope,
        queueID: str,
        size: int,
        reply: Reply,
        results: Sequence[Reply] | None = None,
    ) -> None:
        """
        A message accepted after its data (LMTP: C{results}, each recipient's
        reply; the message counts as accepted if any was delivered).
        """
        if not self.on:
            return
        session = self.session
        rcpts = envelope.recipients
        # one recipient, the common case: its text made once, not joined
        recipients = [str(rcpts[0].address)] if len(rcpts) == 1 else _recipientList(envelope)
        user = session.authenticated
        iprev = session.iprev  # clientName(session), inline
        verified = iprev is not None and iprev.result == "pass" and iprev.names
        name = iprev.names[0] if verified else "unknown"  # type: ignore[union-attr]
        notes = f" user={user}" if user else ""
        if envelope.discard is not None:
            notes += f" discarded ({envelope.discard})"
        elif envelope.quarantine is not None:
            notes += f" quarantined ({envelope.quarantine})"
        if results is None:
            to = recipients[0] if len(recipients) == 1 else ",".join(recipients)
            result = None
        else:
            to = ",".join(f"{a}({r.code})" for a, r in zip(recipients, results, strict=True))
            result = [{"recipient": a, "code": r.code, "reply": replyText(r)}
                      for a, r in zip(recipients, results, strict=True)]  # fmt: skip
            recipients = [a for a, r in zip(recipients, results, strict=True) if r.code < 400]
        _publish(  # the line of every message: the whole event made here, in one piece
            {
                "log_logger": log,
                "log_level": INFO,
                "log_namespace": _NAMESPACE,
                "log_source": _SOURCE,
                "log_format": _ACCEPTED,
                "log_time": time(),
                _KEY: events.ACCEPTED,
                "sessionID": session.sessionID,
                "queueID": queueID,
                "listener": session.listener,
                "clientAddress": session.peerHost,
                "clientName": name,
                "helo": session.heloName,
                "sender": str(envelope.mailFrom),
                "recipients": recipients,
                "results": result,
                "to": to,
                "size": size,
                "user": user,
                "reply": replyText(reply),
                "code": reply.code,
                "notes": notes,
                "discarded": envelope.discard,
                "quarantined": envelope.quarantine,
            },
            self.logged,
        )

    def disconnect(self, now: float) -> None:
        """The session ended: its duration and what each command got."""
        if not self.connected:
            self.connect()
        if not self.on:
            return
        session = self.session
        commands, failed = self.commands, self.failed
        _publish(  # a line per connection: the whole event made in one piece
            {
                "log_logger": log,
                "log_level": INFO,
                "log_namespace": _NAMESPACE,
                "log_source": _SOURCE,
                "log_format": _DISCONNECT,
                "log_time": time(),
                _KEY: events.DISCONNECT,
                "sessionID": session.sessionID,
                "listener": session.listener,
                "clientAddress": session.peerHost,
                "clientName": clientName(session),
                "duration": max(0.0, now - self.started),
                "commands": commands,
                "failed": failed,
                "replies": self.replyCounts(),
                "bytesIn": self.bytesIn,
                "messages": session.messages,
                "counts": _Counts(commands, failed),
            },
            self.logged,
        )
