"""
Every zope.interface Interface of mailframe, and nothing else.

Plug points are small, one job each.  A hook gets typed values
(L{mailframe.envelope.SessionInfo}, L{mailframe.envelope.Envelope},
L{mailframe.envelope.Recipient}, L{mailframe.message.Message}) and returns a
value, a L{mailframe.reply.Reply}, or a Deferred of either; it raises
L{mailframe.reply.SMTPError} (or fails its Deferred with one) to refuse.
Optional capabilities are separate interfaces, checked with C{providedBy}.

Plug-in chains.  Connection filters, HELO validators, sender validators, recipient
validators, message filters and address verifiers are each a chain, asked
in order, and every chain follows one contract (run by
L{mailframe.server.chains.Chain}), whether a plug-in answers at once or
with a Deferred:

  - accept: return None.  Where the stage has a default positive reply,
    a plug-in may return a positive L{Reply} instead: the last one given
    replaces the default (the greeting's 220, the first line of the reply
    to HELO/EHLO, the 250 to MAIL, the 250 after the data once the backend
    has the message).
  - refuse: raise L{SMTPError} (or return the 4xx/5xx L{Reply}); the
    plug-ins after it are not asked.
  - no opinion, for the stages where the first answer decides (recipient
    validators, address verifiers): return None, and the next plug-in is
    asked; a positive L{Reply} (or True) accepts, and if nobody decides the
    stage answers its default (550 5.1.1 for a recipient, 252 for VRFY).

A plug-in that provides several plug points but has nothing to do at some
of them, for a given configuration, may define C{asksAt(point) -> bool}:
the server leaves it out of each chain whose interface it answers False
for (the connection limits with no message or recipient rate, at MAIL,
RCPT and DATA), so that no command pays for a call that always accepts.
It is still a session observer if it is one.

A plug-in that fails (any other exception) is logged with its traceback and
the client gets 451 4.3.0; one that does not answer within the server's
plug-in time limit is cancelled, logged by name, and answered the same.
Answering synchronously costs nothing: no Deferred is made on that path.

Before the recipient validators, the recipient rewriters among them
(L{IRecipientRewriter}: aliases, virtual maps, subaddressing) run as a
pipeline of addresses rather than a chain of replies, with the same ways to
refuse and to fail; the validators then judge what they produced.

Must not: import mailframe.server, .client or .tap; hold implementations;
import anything of mailframe when it runs (the value types its signatures
name are imported for type checking only).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any, TypeAlias

    from twisted.internet.defer import Deferred
    from twisted.internet.interfaces import (
        IOpenSSLContextFactory,
        IOpenSSLServerConnectionCreator,
    )

    from mailframe.config import ProviderContext
    from mailframe.envelope import DeliveryResult, Envelope, Recipient, SessionInfo
    from mailframe.message import Message
    from mailframe.reply import Reply
    from mailframe.results import IPRevResult

    #: What a chain's plug-in answers (see "Plug-in chains").
    Answer: TypeAlias = "Reply | Deferred[Reply | None] | None"
    #: What a recipient validator answers: True accepts too.
    Decision: TypeAlias = "Reply | bool | Deferred[Reply | bool | None] | None"
    #: What a recipient rewriter answers: None (unchanged), or what it stands for.
    Rewritten: TypeAlias = "Sequence[Recipient] | Deferred[Sequence[Recipient] | None] | None"
    #: What a delivery backend answers.
    Delivered: TypeAlias = "DeliveryResult | Deferred[DeliveryResult | None] | None"
    #: What an extension's command handler answers.
    CommandReply: TypeAlias = "Reply | Deferred[Reply]"
    #: A Twisted server TLS context factory, new style or old.
    TLSContextFactory: TypeAlias = "IOpenSSLServerConnectionCreator | IOpenSSLContextFactory"

__all__ = [
    "IAddressVerifier",
    "IConnectionFilter",
    "IDeliveryBackend",
    "IExtension",
    "IHeloValidator",
    "ILocalDomains",
    "IMessageFilter",
    "IPlugInFactory",
    "IQueueStore",
    "IRecipientRewriter",
    "IRecipientValidator",
    "IRelay",
    "ISenderValidator",
    "ISessionControl",
    "ISessionObserver",
    "IUnadvertisedCommands",
    "IUnknownCommandFilter",
]


class IConnectionFilter(Interface):
    """Decides whether to serve a new connection, before the greeting."""

    def acceptConnection(session: SessionInfo) -> Answer:
        """
        Called once per connection with its L{SessionInfo}.

        @return: None to serve it (or a Deferred firing None), or a 220
            L{Reply} to greet with.  Raise L{SMTPError} with a 554 reply to
            greet with it and serve only QUIT (RFC 5321 3.1), or with 421
            to refuse and close.  See "Plug-in chains" above.
        """


class IHeloValidator(Interface):
    """Accepts or refuses the name a client gives in HELO/EHLO."""

    def validateHelo(session: SessionInfo, name: str, extended: bool) -> Answer:
        """
        @param name: the HELO/EHLO argument, as sent.
        @param extended: True for EHLO.
        @return: None (or a Deferred firing None) to accept, or a positive
            L{Reply} whose text replaces the first line of the reply.
            Raise L{SMTPError} to refuse (the client may try again).
        """


class ISessionObserver(Interface):
    """
    Optional, for any plug-in given to the server: told when a session ends
    (connection filters that count connections, rate limits ...).
    """

    def sessionEnded(session: SessionInfo) -> None:
        """The connection of C{session} is gone.  Must not raise."""


class IUnknownCommandFilter(Interface):
    """
    Optional, for any plug-in given to the server: told of each command line
    the server does not know (answered 500 5.5.1), and may answer it with a
    refusal of its own (a milter's SMFIC_UNKNOWN).  Asked in order, as a
    chain: the first 4xx/5xx reply is the answer.
    """

    def unknownCommand(session: SessionInfo, line: str) -> Answer:
        """
        @param line: the command line as sent, without CRLF (UTF-8; bytes
            that are not become replacement characters).
        @return: None for the server's 500, or a 4xx/5xx L{Reply} to send
            instead (or a Deferred of either).
        """


class ISenderValidator(Interface):
    """Accepts or refuses the reverse-path of MAIL FROM."""

    def validateSender(session: SessionInfo, envelope: Envelope) -> Answer:
        """
        C{envelope.mailFrom} and C{envelope.mailParams} are set, no
        recipients yet.

        @return: None or a positive L{Reply} (sent instead of the default
            250), or a Deferred of either.  Raise L{SMTPError} to refuse.
        """


class IRecipientValidator(Interface):
    """
    Accepts, refuses, or has no opinion on one recipient of a local domain.

    Validators are asked in order; the first that accepts or refuses
    decides.  If none decides, the recipient is refused with 550 5.1.1.
    Recipients of domains that are not local never get here (they are
    relaying, refused with 550 5.7.1 unless a relay policy allows them).
    """

    def validateRecipient(
        session: SessionInfo, envelope: Envelope, recipient: Recipient
    ) -> Decision:
        """
        @param recipient: the L{Recipient} (address and RCPT parameters).
        @return: a positive L{Reply} to accept, None for no opinion, or a
            Deferred of either.  Raise L{SMTPError} to refuse.
        """


class IRecipientRewriter(Interface):
    """
    Optional, for a recipient validator: replaces a recipient of a local
    domain by what it stands for (an alias's members, a virtual address's
    targets, C{user} for C{user+tag}, the original sender of an SRS bounce
    address), before any validator judges it.

    The server asks the rewriters among its validators in their order, as
    a pipeline: each is given, one at a time, every address of a local
    domain that the ones before it produced (an address of another domain
    is forwarded as it is).  A rewriter answers for one recipient:

      - None: unchanged, given as it is to the next rewriter;
      - a sequence of L{Recipient}s (their C{address}, and C{detail} if it
        took a subaddress off): what the recipient stands for; an empty one
        accepts it and delivers it nowhere (an alias to C{/dev/null});
      - raise L{SMTPError} to refuse it (an alias loop, a forged SRS
        address): the client gets that reply to its RCPT;
      - or a Deferred of any of these.

    Then the validators judge each target of a local domain as if the
    client had given it (the first refusal refuses the RCPT); targets of
    other domains are forwarded, so a rewriter produces them only for a
    server whose backend is the queue (C{--spool}).  The recipient the
    server records has the targets (L{Recipient.targets}), each with the
    RCPT's parameters (and an ORCPT naming the RCPT address, RFC 3461 4.2)
    and C{original}; the delivery backend is given the targets instead of
    it.  Recipients of other domains (relaying) are never rewritten.

    Answering synchronously costs no Deferred; a server without rewriters
    does nothing of this.
    """

    def rewriteRecipient(
        session: SessionInfo, envelope: Envelope, recipient: Recipient
    ) -> Rewritten:
        """
        @param recipient: the L{Recipient} (the RCPT's, or a target of an
            earlier rewriter: C{original} and C{detail} may be set).
        @return: None, a sequence of L{Recipient}s, or a Deferred of either.
            Raise L{SMTPError} to refuse.
        """


class IAddressVerifier(Interface):
    """Optional, for a recipient validator: answers VRFY."""

    def verifyAddress(session: SessionInfo, argument: str) -> Answer:
        """
        @param argument: the VRFY argument, as sent.
        @return: a L{Reply} (250/251/252/550/553 ...), None for the default
            252, or a Deferred of either.
        """


class ILocalDomains(Interface):
    """Optional, for a recipient validator: the domains it makes local."""

    domains = Attribute("An iterable of domain names (str).")


class IMessageFilter(Interface):
    """Sees a complete message before delivery; may add header fields."""

    def filterMessage(session: SessionInfo, envelope: Envelope, message: Message) -> Answer:
        """
        @param message: the L{Message}; C{message.prependHeader} adds a field.
        @return: None, or a positive L{Reply} to answer after the final dot
            instead of the default C{250 ... queued as ID} once the backend
            has the message, or a Deferred of either.  Raise L{SMTPError}
            to refuse the message (the client gets that reply after its
            final dot, and nothing is delivered).

        To accept the message and deliver it to nobody (a milter's
        "discard"), set C{envelope.discard} to the reason and accept: the
        client gets 250, the log line says why, and the backend never
        sees it.  To hold it for a person to look at, set
        C{envelope.quarantine}: with the queue it is held there
        (C{mailframe-queue release} sends it on); without, it is
        delivered, and logged as quarantined.
        """


class IDeliveryBackend(Interface):
    """Takes a message for its recipients and makes it durable."""

    def deliver(envelope: Envelope, message: Message) -> Delivered:
        """
        @return: a L{DeliveryResult} (one reply per recipient), or None
            meaning every recipient succeeded, or a Deferred firing either.
            Success only once the message is durable: the client is told 250
            then, and may delete its copy.  (A plain value is for backends
            with nothing to wait for, such as C{memory}.)
        """


class IRelay(Interface):
    """Hands a message on to other mail servers (the outbound side)."""

    def relay(
        envelope: Envelope, recipients: Sequence[Recipient], message: Message
    ) -> Deferred[DeliveryResult]:
        """
        Send C{message} from C{envelope.mailFrom} to C{recipients} (a
        sequence of L{Recipient}, all routed to the same destination) and
        report what became of each.

        @return: a Deferred firing a L{DeliveryResult} with one reply per
            given recipient, in order: 2xx accepted by the next hop, 4xx try
            again later, 5xx failed for good; C{remote} names the next hop.
            It fires; it does not fail (a failure becomes 4xx replies).
        """


class IQueueStore(Interface):
    """
    Where the queue keeps accepted mail until it is delivered or reported:
    the file spool (L{mailframe.queue.spool.Spool}, one process) or
    PostgreSQL (L{mailframe.queue.pgstore.PostgresStore}, shared by many
    nodes).  The queue runner, the queue's delivery backend, the bounce
    code and the queue tools use a store only through these methods.
    Entries (C{Any} below: the queue's own value type, which this layer
    cannot import) are L{mailframe.queue.entry.QueueEntry}; every Deferred fires
    in the reactor thread.  A shared store hands the runner only the
    entries this node holds a lease on: C{start} and the commit listener
    give them, and the store renews their leases while they are held.
    """

    path = Attribute("Where the queue is, for logs and the tools (a directory, or a URL).")

    def start() -> Deferred[list[Any]]:
        """Open the store (recovering after a crash); the entries to deliver, oldest first."""

    def stop() -> None:
        """Let go of threads and connections (leases are left to expire or given back)."""

    def setCommitListener(listener: Callable[[Any, bytes | None], None] | None) -> None:
        """C{listener(entry, data)} with each entry this node should deliver, once durable."""

    def newID(preferred: str) -> str:
        """An id for a new entry: C{preferred} unless the store has it already."""

    def add(entry: Any, data: bytes | Message) -> Deferred[None]:
        """
        Make a new entry and its message durable: the Deferred fires only
        then (the server's 250 waits for it), or fails (a 4xx).
        """

    def addReport(parentID: str, report: Any, data: bytes) -> Deferred[None]:
        """
        Queue a delivery status notification about the entry C{parentID},
        durable no later than the next L{update} or L{remove} of that entry
        (a store with transactions makes both one, so that a report is made
        exactly once).
        """

    def update(entry: Any) -> Deferred[None]:
        """Record the entry's recipients' states and next attempt."""

    def remove(entryID: str) -> None:
        """The entry is finished (or deleted): forget it and its message."""

    def readMessage(
        entryID: str, spillThreshold: int = 1 << 20, tempDir: str | None = None
    ) -> Deferred[Message]:
        """The queued message, as a L{Message}."""

    def readHead(entryID: str, limit: int) -> Deferred[tuple[bytes, bool]]:
        """The first C{limit} octets of the message, and whether that is all of it."""


class IExtension(Interface):
    """
    An ESMTP extension: an EHLO keyword, the MAIL/RCPT parameters it owns,
    and the verbs it adds.  The built-ins (SIZE, 8BITMIME, PIPELINING,
    ENHANCEDSTATUSCODES, SMTPUTF8, CHUNKING, BINARYMIME) are providers too.
    """

    keyword = Attribute("The EHLO keyword, uppercase, e.g. 'SIZE'.")
    mailParameters = Attribute("frozenset of MAIL FROM parameter names it owns.")
    rcptParameters = Attribute("frozenset of RCPT TO parameter names it owns.")
    verbs = Attribute("frozenset of command verbs it adds (uppercase).")
    commandLineIncrease = Attribute("Octets it adds to the 512-octet command line limit.")

    def ehloParameters(session: SessionInfo) -> str | None:
        """
        @return: None to leave the keyword out of this session's EHLO reply,
            C{""} for the bare keyword, or its parameters (e.g. C{"35651584"}).
        """

    def mailParameter(
        session: SessionInfo, envelope: Envelope, name: str, value: str | None
    ) -> None:
        """
        Check one MAIL FROM parameter it owns (C{value} is None for a bare
        keyword); raise L{SMTPError} (501/504/552/555 ...) to refuse MAIL.
        """

    def rcptParameter(
        session: SessionInfo,
        envelope: Envelope,
        recipient: Recipient,
        name: str,
        value: str | None,
    ) -> None:
        """Check one RCPT TO parameter it owns; raise L{SMTPError} to refuse."""

    def handleCommand(control: ISessionControl, verb: str, argument: str) -> CommandReply:
        """
        Answer one of its verbs: a L{Reply} or a Deferred of one.

        @param control: an L{ISessionControl} (C{control.session} is the
            L{SessionInfo}).  A 334 reply makes the client's next line an
            answer, given to L{continueCommand}.
        """

    def continueCommand(control: ISessionControl, verb: str, line: bytes) -> CommandReply:
        """
        The client's line (bytes, without CRLF) after a 334 reply to C{verb};
        answer as L{handleCommand} does (334 again to ask for more).
        """


class IUnadvertisedCommands(Interface):
    """
    Optional, for an extension: answer its own verbs in a session where it
    is not advertised, instead of the default 500 (e.g. AUTH before TLS gets
    538 5.7.11 "Encryption required").
    """

    def refuseCommand(control: ISessionControl, verb: str, argument: str) -> Reply | None:
        """@return: a 4xx/5xx L{Reply}, or None for the default 500."""


class ISessionControl(Interface):
    """
    What an extension's command handler may do to its session, besides
    replying.  The server provides it; extensions never see the protocol.
    """

    session = Attribute("The L{SessionInfo}.")
    inTransaction = Attribute("True between an accepted MAIL and the end of its message.")

    def startTLS(contextFactory: TLSContextFactory) -> None:
        """
        Start TLS once this command's reply (which must be 220) is sent.  The
        session then forgets everything buffered, HELO/EHLO and the
        transaction (RFC 3207 4.2).  C{contextFactory} is a Twisted TLS server
        context factory (e.g. C{CertificateOptions}).
        """

    def authenticate(avatarId: str, mechanism: str) -> None:
        """Mark the session authenticated as C{avatarId} (a str) via C{mechanism}."""

    def replaceClient(
        host: str | None = None,
        port: int | None = None,
        iprev: IPRevResult | None = None,
        heloName: str | None = None,
        login: str | None = None,
        localHost: str | None = None,
        localPort: int | None = None,
    ) -> Reply:
        """
        A trusted front end names the client it speaks for (XCLIENT): the
        session's facts are replaced (L{SessionInfo.replaceClient}) and the
        greeting to answer this command with is returned.  Once that reply
        (a 220) is sent the session starts over: the client greets again.
        Only outside a transaction (check C{inTransaction}).
        """


class IPlugInFactory(Interface):
    """
    A twisted.plugin dropin that builds a provider from a description string,
    the way endpoint parsers do: C{maildir:/var/mail:layout=user} is prefix
    C{maildir}, args C{("/var/mail",)}, kwargs C{{"layout": "user"}}.
    """

    prefix = Attribute("The word before the first colon, e.g. 'maildir'.")
    provides = Attribute("The Interface its providers provide, e.g. IDeliveryBackend.")
    synopsis = Attribute("One line: the description syntax, e.g. 'maildir:PATH[:layout=...]'.")
    description = Attribute("One or two sentences for --help.")

    def makeProvider(context: ProviderContext, *args: str, **kwargs: str) -> object:
        """
        Build the provider.  C{context} is a L{ProviderContext} (reactor and
        settings).  Raise ValueError with a one-line message for bad
        arguments; it is shown to the user as is.
        """
