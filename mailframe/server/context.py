"""
L{ServerContext}: what every session of one server shares: its settings,
its plug-ins (checked, in order, with the maps derived from them and the
chain of each stage), the clock, the ID source, the greeting passes, the
open sessions and the running totals (L{ServerStats}).

The factory builds one; each session and its L{mailframe.server.commands.Commands}
read it.  Owns: checking the plug-ins once, at construction.  Must not:
import the session's modules (protocol, commands), or do I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, TypeVar

from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol

from mailframe import reply as R
from mailframe.address import Domain
from mailframe.config import ServerConfig
from mailframe.extensions import (
    EnhancedStatusCodes,
    Extension,
    Pipelining,
    defaultExtensions,
)
from mailframe.interfaces import (
    IAddressVerifier,
    IConnectionFilter,
    IDeliveryBackend,
    IExtension,
    IHeloValidator,
    ILocalDomains,
    IMessageFilter,
    IRecipientRewriter,
    IRecipientValidator,
    ISenderValidator,
    ISessionObserver,
    IUnknownCommandFilter,
)
from mailframe.plugins import checkProviders
from mailframe.server._util import GreetPasses, IDs, processIDs
from mailframe.server.chains import Chain, PluginTimer
from mailframe.server.expansion import ExpandedDelivery

if TYPE_CHECKING:
    from zope.interface.interface import InterfaceClass

__all__ = ["ServerContext", "ServerStats"]

_P = TypeVar("_P")


@dataclass(eq=False)
class ServerStats:
    """
    Running totals of a server since it started (for the stop line and
    metrics), kept whether or not the decision events are logged:

      - C{accepted}: messages answered 2xx after their data (LMTP: with at
        least one recipient delivered);
      - C{acceptedRecipients}: their recipients (LMTP: the delivered ones);
      - C{refused}: refusals of mail, one per 4xx/5xx reply to MAIL, to
        RCPT, or to the end of a message (LMTP: one per recipient refused
        after the data); a syntax or sequence error (501, 503) refuses no
        mail and is not counted;
      - C{refusedRecipients}: those of C{refused} that refused a recipient;
      - C{refusedConnections}: connections refused at the greeting (421, 554).
    """

    accepted: int = 0
    acceptedRecipients: int = 0
    refused: int = 0
    refusedRecipients: int = 0
    refusedConnections: int = 0


def _askedAt(providers: Sequence[_P], point: InterfaceClass) -> tuple[_P, ...]:
    """
    The plug-ins the chain at C{point} asks: each of C{providers} but those
    whose C{asksAt(point)} says they have nothing to do there (see
    L{mailframe.interfaces}, "Plug-in chains").
    """
    return tuple(
        p for p in providers if (asksAt := getattr(p, "asksAt", None)) is None or asksAt(point)
    )


class ServerContext:
    """
    The settings and plug-ins of one SMTP server, checked.  See
    L{mailframe.server.SMTPServerFactory} for the parameters.

    @raise TypeError: for a plug-in that does not provide its interface.
    """

    def __init__(
        self,
        config: ServerConfig,
        backend: IDeliveryBackend,
        validators: Sequence[IRecipientValidator] = (),
        senderValidators: Sequence[ISenderValidator] = (),
        connectionFilters: Sequence[IConnectionFilter] = (),
        messageFilters: Sequence[IMessageFilter] = (),
        extensions: Iterable[IExtension] | None = None,
        clock: IReactorTime | None = None,
        heloValidators: Sequence[IHeloValidator] = (),
        ids: IDs | None = None,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor

            clock = reactor
        checkProviders(IDeliveryBackend, [backend], "backend")
        checkProviders(IRecipientValidator, validators, "validator")
        checkProviders(ISenderValidator, senderValidators, "sender validator")
        checkProviders(IConnectionFilter, connectionFilters, "connection filter")
        checkProviders(IMessageFilter, messageFilters, "message filter")
        checkProviders(IHeloValidator, heloValidators, "HELO validator")
        exts = (
            list(extensions)
            if extensions is not None
            else defaultExtensions(config.limits.messageSize)
        )
        checkProviders(IExtension, exts, "extension")
        if config.lmtp:  # RFC 2033 4.1: PIPELINING and ENHANCEDSTATUSCODES, always
            offered = {e.keyword for e in exts}
            always: list[IExtension] = [Pipelining(), EnhancedStatusCodes()]
            exts = [*(e for e in always if e.keyword not in offered), *exts]
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
        self.validators = _askedAt(validators, IRecipientValidator)
        self.verifiers = tuple(v for v in validators if IAddressVerifier.providedBy(v))
        # aliases, virtual maps, subaddressing (mailframe.server.expansion): the
        # backend is then given the targets of the recipients they rewrite
        self.rewriters: tuple[IRecipientRewriter, ...] = tuple(
            v for v in validators if IRecipientRewriter.providedBy(v)
        )
        checkProviders(IRecipientRewriter, self.rewriters, "recipient rewriter")
        self.backend: IDeliveryBackend = ExpandedDelivery(backend) if self.rewriters else backend
        self.senderValidators = _askedAt(senderValidators, ISenderValidator)
        self.connectionFilters = _askedAt(connectionFilters, IConnectionFilter)
        self.messageFilters = _askedAt(messageFilters, IMessageFilter)
        self.heloValidators = _askedAt(heloValidators, IHeloValidator)
        self.extensions = tuple(exts)
        # each extension's EHLO line: its keyword alone when it keeps the
        # base class's ehloParameters (the same for every session), else
        # the extension, asked each time
        self.ehloPlan: tuple[tuple[str, IExtension | None], ...] = tuple(
            (e.keyword, None if type(e).ehloParameters is Extension.ehloParameters else e)
            for e in exts
        )
        everything: list[object] = [
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
        # the chains, one contract (mailframe.interfaces, "Plug-in chains")
        self.connectionChain = Chain("connect", self.connectionFilters, "acceptConnection")
        self.heloChain = Chain("helo", self.heloValidators, "validateHelo")
        self.senderChain = Chain("mail", self.senderValidators, "validateSender")
        self.recipientChain = Chain(
            "rcpt",
            self.validators,
            "validateRecipient",
            firstDecides=True,
            accepted=R.RECIPIENT_OK,
            undecided=R.USER_UNKNOWN,
        )
        self.messageChain = Chain("data", self.messageFilters, "filterMessage")
        self.unknownChain = Chain(
            "unknown",
            tuple(dict.fromkeys(p for p in everything if IUnknownCommandFilter.providedBy(p))),
            "unknownCommand",
        )
        self.verifyChain = Chain(
            "vrfy", self.verifiers, "verifyAddress", firstDecides=True, undecided=R.CANNOT_VRFY
        )
        self.clock: IReactorTime = clock
        self.ids = ids if ids is not None else processIDs()
        self.greetPasses = GreetPasses(clock, self.config.greetPassTime)
        cfg = self.config
        self.greeting = (
            R.Reply(220, None, f"{cfg.hostname} LMTP {cfg.software}")
            if cfg.lmtp
            else R.greeting(cfg.hostname, cfg.software)
        )
        self.stats = ServerStats()
        # the decision events (mailframe.server._decisions): on unless --quiet;
        # deciderNames: the description of each plug-in, by id, for their lines
        self.decisions = self.config.logMessages
        self.deciderNames: dict[int, str] = {}
        self.sessions: set[Protocol] = set()  # the open sessions (SMTPServerProtocol)
        self.pluginTimer: PluginTimer | None = None

    @property
    def chains(self) -> tuple[Chain, ...]:
        """Every plug-in chain of the server."""
        return (
            self.connectionChain,
            self.heloChain,
            self.senderChain,
            self.recipientChain,
            self.messageChain,
            self.unknownChain,
            self.verifyChain,
        )

    def setPluginTimer(self, timer: PluginTimer | None) -> None:
        """Time every plug-in of every chain with C{timer} (None: stop); see L{Chain.setTimer}."""
        self.pluginTimer = timer
        for chain in self.chains:
            chain.setTimer(timer)
