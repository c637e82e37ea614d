"""
L{buildListener}: one listener's server factory and its plug-ins, built
from its L{ListenerSpec}: the recipient rewriters, validators, checks and
milters, the delivery backend (with its per-domain routes), TLS and AUTH,
and the queue in front.  Used at start (L{mailframe.app.tap}), by a reload
(L{mailframe.app.reload}), by the simulator and by C{mailframe route}.

Owns: the order of a listener's plug-ins and their one-line errors.  Must
not: import L{mailframe.app.tap} (which imports it), or the reactor at
import time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from zope.interface import Interface
from zope.interface.interface import InterfaceClass

from mailframe import plugins
from mailframe.app import registry
from mailframe.app.config import ListenerSpec
from mailframe.app.security import Security
from mailframe.config import ProviderContext
from mailframe.interfaces import (
    IConnectionFilter,
    IDeliveryBackend,
    IHeloValidator,
    IMessageFilter,
    IRecipientValidator,
    ISenderValidator,
)
from mailframe.plugins import oneLine

if TYPE_CHECKING:
    from mailframe.server import SMTPServerFactory
    from mailframe.validators.srs import SRS

__all__ = ["Notes", "NotesList", "buildListener", "rewriters", "withRoutedDomains"]

_I = TypeVar("_I", bound=Interface)


class Notes(Protocol):
    """Where a listener's start-up lines and warnings go (the service, at start)."""

    announcements: list[str]
    warnings: list[str]


@dataclass
class NotesList:
    """L{Notes} kept in lists (a reload's or the simulator's, shown by no one)."""

    announcements: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _build(interface: type[_I], description: str, context: ProviderContext) -> _I:
    try:
        return registry.makeProvider(interface, description, context)
    except plugins.PlugInError as e:
        raise SystemExit(f"mailframe: {e}")
    except (OSError, ValueError) as e:
        raise SystemExit(
            f"mailframe: cannot set up {plugins.kindName(interface)} {description!r}: {oneLine(e)}"
        )


def buildListener(
    reactor: Any,
    spec: ListenerSpec,
    security: Security,
    resolver: Any = None,
    queue: Any = None,
    *,
    notes: Notes | None = None,
    backend: IDeliveryBackend | None = None,
    kept: dict[object, object] | None = None,
    previous: Mapping[object, object] | None = None,
    names: dict[int, str] | None = None,
) -> tuple[SMTPServerFactory, IDeliveryBackend]:
    """
    The server factory of one listener and its local delivery backend: the
    plug-ins of its descriptions built (C{backend} instead of its
    C{deliver}: the simulator's), its rewriters and checks, TLS and AUTH
    from C{security}, every lookup through C{resolver}; with C{queue} (a
    L{QueueWiring}, or what has its C{listener} method), the queue's backend
    in front of the local one.  Used at start, by a reload and by the
    simulator.

    @param notes: where the rewriters' start-up lines and warnings go.
    @param kept: filled with the providers that outlive a reload (the
        connection limits, with their counts), by what made them.
    @param previous: the C{kept} of the configuration in force: such a
        provider made the same way is used again.
    @param names: filled with the description of each plug-in, by id.
    @raise SystemExit: one line, if a plug-in cannot be set up.
    """
    from mailframe.server import SMTPServerFactory

    named = names if names is not None else {}
    context = ProviderContext(reactor, spec.config, resolver, forwarding=queue is not None)
    srs = getattr(queue, "srs", None)
    rewriterList = rewriters(spec, context, srs, notes or NotesList())
    validators: list[IRecipientValidator] = []
    for description in spec.validate:
        validator = _build(IRecipientValidator, description, context)
        named[id(validator)] = description
        validators.append(validator)
    local = backend
    if local is None:
        local = _build(IDeliveryBackend, spec.deliver, context)
        named[id(local)] = spec.deliver
        if spec.deliverRoutes:  # per-domain backends in front of deliver
            local = _deliverRoutes(spec, context, local, notes or NotesList())
    extensions, filters, _ = security.forListener(spec)
    checks = _checks(spec, context, kept, previous, named)
    config, delivering, messageFilters = spec.config, local, checks[IMessageFilter]
    config = withRoutedDomains(config, spec)  # deliver-routes' domains are local
    if queue is not None:  # the queue takes the mail; the backend delivers local mail
        config, delivering, messageFilters = queue.listener(
            config, local, extensions, messageFilters
        )
    factory = SMTPServerFactory(
        config,
        delivering,
        [*checks[IRecipientValidator], *rewriterList, *validators],
        senderValidators=checks[ISenderValidator],
        connectionFilters=[*filters, *checks[IConnectionFilter]],
        messageFilters=messageFilters,
        extensions=extensions,
        clock=reactor,
        heloValidators=checks[IHeloValidator],
    )
    factory.context.deciderNames.update(named)  # the log lines name plug-ins so
    return factory, local


def withRoutedDomains(config: Any, spec: ListenerSpec) -> Any:
    """C{config} (a ServerConfig) with the domains of C{spec}'s deliver-routes local too."""
    from dataclasses import replace

    from mailframe.address import Domain

    routed = {Domain(d.rstrip(".")) for d in spec.deliverRoutes if not d.startswith(".")}
    return replace(config, localDomains=config.localDomains | routed) if routed else config


def rewriters(
    spec: ListenerSpec, context: ProviderContext, srs: SRS | None, service: Notes
) -> list[IRecipientValidator]:
    """
    A listener's recipient rewriters, in the order they rewrite: bounces to
    SRS addresses, the virtual map, the aliases, subaddressing.
    """
    from mailframe.validators.aliases import AliasMap
    from mailframe.validators.srs import SRSReverser
    from mailframe.validators.subaddress import Subaddress
    from mailframe.validators.virtual import VirtualMap

    config = context.config
    out: list[IRecipientValidator] = []
    if srs is not None:
        out.append(SRSReverser(srs, context.reactor, srs.domain not in config.localDomains))
    separators, forwarding = spec.subaddress, context.forwarding
    for what, path in (("virtual map", spec.virtual), ("aliases", spec.aliases)):
        if path is None:
            continue
        try:
            if what == "aliases":
                out.append(AliasMap(context.reactor, path, separators, forwarding, config.isLocal))
            else:
                out.append(VirtualMap(context.reactor, path, config.hostname, separators,
                                      forwarding, config.isLocal))  # fmt: skip
        except ValueError as e:
            raise SystemExit(f"mailframe: cannot use the {what} {path}: {oneLine(e)}")
    if separators:
        out.append(Subaddress(separators))
    if out:
        names = [repr(r) for r in out]
        service.announcements.append(
            f"mailframe: {config.listener} rewrites recipients with {', '.join(names)}"
        )
    if forwarding and srs is None and (spec.aliases or spec.virtual):
        service.warnings.append(
            f"mailframe: mail that the aliases of {config.listener} forward to other domains "
            "keeps its sender (no srs-secret): SPF checks at the next hop may refuse it"
        )
    return out


def _deliverRoutes(
    spec: ListenerSpec, context: ProviderContext, backend: IDeliveryBackend, notes: Any
) -> IDeliveryBackend:
    """The listener's backend with its per-domain backends in front (deliver-routes)."""
    from mailframe.backends.routed import RoutedDelivery

    routes = {d: _build(IDeliveryBackend, description, context)
              for d, description in spec.deliverRoutes.items()}  # fmt: skip
    notes.announcements.append(
        f"mailframe: {spec.config.listener} delivers "
        + "; ".join(f"{d} with {description}" for d, description in spec.deliverRoutes.items())
    )
    return RoutedDelivery(backend, routes)


def _checks(
    spec: ListenerSpec,
    context: ProviderContext,
    kept: dict[object, object] | None = None,
    previous: Mapping[object, object] | None = None,
    names: dict[int, str] | None = None,
) -> dict[InterfaceClass, list[Any]]:
    """
    The providers of a listener's --filter descriptions (and its connection
    limits), by plug point: each is used at every plug point it provides.
    Message filters run in the order given, except that authresults comes
    after the checks it reports on and dkim-sign last.  The connection
    limits are kept across reloads (C{kept}, C{previous}: see
    L{buildListener}); C{names} gets each provider's description.
    """
    from mailframe.policy.authresults import orderFilters

    named = names if names is not None else {}
    built: list[object] = []
    if spec.limits is not None:
        limits = f"limits:{spec.limits}" if spec.limits else "limits"
        key = (spec.config.listener, limits, spec.config.relayNetworks)
        provider = (previous or {}).get(key) or _build(IConnectionFilter, limits, context)
        if kept is not None:
            kept[key] = provider
        named[id(provider)] = limits
        built.append(provider)
    for description in spec.filters:
        try:
            built.append(registry.makeFilter(description, context))
            named[id(built[-1])] = description
        except plugins.PlugInError as e:
            raise SystemExit(f"mailframe: {e}")
        except (OSError, ValueError) as e:
            raise SystemExit(f"mailframe: cannot set up filter {description!r}: {oneLine(e)}")
    built.extend(_milters(spec, context))
    kinds = (IConnectionFilter, IHeloValidator, ISenderValidator, IRecipientValidator)
    checks: dict[InterfaceClass, list[Any]] = {
        k: [p for p in built if k.providedBy(p)] for k in kinds
    }
    checks[IMessageFilter] = orderFilters(p for p in built if IMessageFilter.providedBy(p))
    return checks


def _milters(spec: ListenerSpec, context: ProviderContext) -> list[object]:
    """The listener's milters, asked after its --filter checks at every stage."""
    if not spec.milters:
        return []
    from mailframe.milter.filter import Milter

    config = context.config
    return [
        Milter(m, context.reactor, isLocal=config.isLocal, maxBody=config.limits.messageSize)
        for m in spec.milters
    ]
