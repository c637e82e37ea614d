"""
L{SMTPServerFactory}: a Twisted server factory building one
L{SMTPServerProtocol} per connection, all sharing one L{ServerContext}
(the settings, the checked plug-ins, the totals).

Owns: the public face of a server for embedding code and twistd.  Must
not: hold session state.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.internet.protocol import Factory, Protocol

from mailframe.config import ServerConfig
from mailframe.interfaces import (
    IConnectionFilter,
    IDeliveryBackend,
    IExtension,
    IHeloValidator,
    IMessageFilter,
    IRecipientValidator,
    ISenderValidator,
    ISessionObserver,
)
from mailframe.server.context import ServerContext
from mailframe.server.protocol import SMTPServerProtocol

__all__ = ["SMTPServerFactory"]


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
    session ends.  The chains follow the one contract of
    L{mailframe.interfaces} ("Plug-in chains").  C{context} holds all of
    it; the attributes below are the parts embedding code reads.

    @raise TypeError: for a plug-in that does not provide its interface.
    """

    noisy = False  # mailframe logs its own start-up line

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
    ) -> None:
        self.context = ServerContext(
            config,
            backend,
            validators,
            senderValidators,
            connectionFilters,
            messageFilters,
            extensions,
            clock,
            heloValidators,
        )

    def buildProtocol(self, addr: IAddress | None) -> SMTPServerProtocol:
        p = SMTPServerProtocol(self.context)
        p.factory = self
        return p

    def reconfigure(self, other: SMTPServerFactory) -> None:
        """
        Serve new sessions with C{other}'s settings and plug-ins (a reload);
        each open session keeps those it started with, to its end.  The
        running totals, the open sessions, the greeting passes and the ID
        source go on: they are this server's, whatever its settings.
        """
        new, old = other.context, self.context
        new.stats, new.sessions, new.ids = old.stats, old.sessions, old.ids
        new.greetPasses = old.greetPasses
        new.setPluginTimer(old.pluginTimer)  # the metrics go on timing the new plug-ins
        self.context = new

    # -- what embedding code and twistd read ---------------------------------------

    @property
    def config(self) -> ServerConfig:
        """The settings in force (local domains and command line limit completed)."""
        return self.context.config

    @property
    def backend(self) -> IDeliveryBackend:
        return self.context.backend

    @property
    def validators(self) -> tuple[IRecipientValidator, ...]:
        return self.context.validators

    @property
    def senderValidators(self) -> tuple[ISenderValidator, ...]:
        return self.context.senderValidators

    @property
    def connectionFilters(self) -> tuple[IConnectionFilter, ...]:
        return self.context.connectionFilters

    @property
    def messageFilters(self) -> tuple[IMessageFilter, ...]:
        return self.context.messageFilters

    @property
    def heloValidators(self) -> tuple[IHeloValidator, ...]:
        return self.context.heloValidators

    @property
    def extensions(self) -> tuple[IExtension, ...]:
        return self.context.extensions

    @property
    def observers(self) -> tuple[ISessionObserver, ...]:
        return self.context.observers

    @property
    def sessions(self) -> set[Protocol]:
        """The open sessions."""
        return self.context.sessions

    @property
    def accepted(self) -> int:
        """Messages answered 250 after their data, since start."""
        return self.context.stats.accepted

    @property
    def acceptedRecipients(self) -> int:
        return self.context.stats.acceptedRecipients

    @property
    def refused(self) -> int:
        """
        Refusals of mail since start: one per 4xx/5xx reply to MAIL, RCPT or
        the end of a message (L{mailframe.server.context.ServerStats}).
        """
        return self.context.stats.refused
