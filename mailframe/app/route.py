"""
C{mailframe route [OPTIONS] ADDRESS...}: what each address expands to (SRS
bounce addresses, the virtual map, the aliases, subaddressing), whether the
validators accept each result, and where each would go (the listener's
delivery backend, through the queue or not; a route's next hop, the
smarthost, or the domain's MX hosts), without sending anything.  The
C{mailframe} script runs it (L{mailframe.app.main}); it is installed as
C{mailframe-route} too.

OPTIONS are those of C{twistd mailframe} (C{--config}, C{--aliases},
C{--virtual}, C{--domain}, C{--deliver}, C{--relay-host} ...), so that the
answer is the server's; and C{--listener NAME} (the listener whose
settings apply; the first by default), C{--sender ADDRESS} (shows the SRS
sender of a forwarded copy from it), C{--resolve} (looks up the MX hosts
and addresses of relayed results, with the server's DNS settings).  It
reads the files the server reads; it writes nothing, and opens no spool.

Exit status: 0 every address accepted; 1 one refused (its reply is
printed); 2 a usage error or settings that cannot be used.

Owns: the explanation.  Must not: send mail, open a spool or listen.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TextIO

from twisted.internet import defer, task
from twisted.python import usage

from mailframe.address import Address, AddressError, Domain, parseMailbox
from mailframe.app import tap
from mailframe.app.config import ListenerSpec
from mailframe.app.listener import NotesList, rewriters, withRoutedDomains
from mailframe.envelope import Envelope, Recipient, SessionInfo
from mailframe.plugins import redact
from mailframe.reply import Reply, SMTPError

if TYPE_CHECKING:
    from mailframe.client.routing import Router

__all__ = ["RouteOptions", "explain", "main"]

_TIMEOUT = 30.0


class RouteOptions(tap.Options):
    """C{twistd mailframe}'s options, the addresses, and what only the route tool takes."""

    synopsis = "[options] ADDRESS..."
    longdesc = (
        "Print what each ADDRESS expands to (aliases, virtual map, subaddressing, SRS) "
        "and where each result would be delivered or relayed, with the settings "
        "twistd mailframe would use; nothing is sent."
    )
    # added to twistd mailframe's (usage.Options gathers those of the base classes)
    optParameters = [
        ["listener", None, None, "The listener whose settings apply (default: the first)."],
        ["sender", None, None, "Show the SRS sender of a copy forwarded from this address."],
    ]
    optFlags = [["resolve", None, "Look up the MX hosts and addresses of relayed results."]]

    def parseArgs(self, *addresses: str) -> None:
        if not addresses:
            raise usage.UsageError("give at least one ADDRESS")
        self.addresses = list(addresses)

    def postOptions(self) -> None:
        super().postOptions()
        name = self["listener"]
        specs = [s for s in self.listeners if name is None or s.config.listener == name]
        if not specs:
            known = ", ".join(s.config.listener for s in self.listeners)
            raise usage.UsageError(f"no listener named {name!r} (listeners: {known})")
        self.spec: ListenerSpec = specs[0]
        try:
            self.parsed = [_address(a, self.spec.config.hostname) for a in self.addresses]
            self.sender = parseMailbox(self["sender"]) if self["sender"] else None
        except AddressError as e:
            raise usage.UsageError(str(e))


def _address(text: str, hostname: str) -> Address:
    text = text.strip().removeprefix("<").removesuffix(">")
    if "@" not in text:
        return Address(text, None) if text.lower() == "postmaster" else parseMailbox(
            f"{text}@{hostname}"
        )  # fmt: skip
    return parseMailbox(text)


class _Explainer:
    """The listener's rewriters, validators and routes, built as the server builds them."""

    def __init__(self, reactor: Any, options: RouteOptions, out: TextIO) -> None:
        from mailframe.app import registry
        from mailframe.backends.memory import MemoryBackend
        from mailframe.config import ProviderContext
        from mailframe.interfaces import IRecipientValidator
        from mailframe.server.context import ServerContext

        self.out = out
        self.options = options
        spec = options.spec
        queue = getattr(options, "queue", None)
        self.queue = queue
        self.srs = None
        if queue is not None and queue.srsSecret is not None:
            from mailframe.validators.srs import SRS, readSecrets

            domain = queue.srsDomain or options.listeners[0].config.hostname
            self.srs = SRS(readSecrets(queue.srsSecret), domain)
        context = ProviderContext(reactor, spec.config, forwarding=queue is not None)
        service = NotesList()
        validators = [
            *rewriters(spec, context, self.srs, service),
            *(registry.makeProvider(IRecipientValidator, d, context) for d in spec.validate),
        ]
        config = withRoutedDomains(spec.config, spec)
        self.router: Router | None = None
        self.routeKey: Callable[[Address], str] | None = None
        if queue is not None:  # the queue's routing, as QueueWiring makes it
            from mailframe.client.relay import SMTPRelay

            self.router = SMTPRelay.fromConfig(dict(queue.relay), reactor, config.hostname).router
            local = frozenset(Domain(d) for d in queue.localRoutes)
            config = replace(config, localDomains=config.localDomains | local)
        self.context = ServerContext(config, MemoryBackend(), validators, clock=reactor)
        if self.router is not None:
            from mailframe.queue.wiring import routeKeyFor

            self.routeKey = routeKeyFor(self.router, self.context.config.isLocal)
        self.session = SessionInfo(
            "route", "127.0.0.1", 0, "127.0.0.1", 25, config.hostname, listener=config.listener
        )
        self.decider: object = None

    def line(self, text: str) -> None:
        self.out.write(text + "\n")

    async def explain(self, address: Address) -> bool:
        """Print what becomes of C{address}; True if it is accepted."""
        from mailframe._deferreds import settled
        from mailframe.server.expansion import rewrite

        context = self.context
        config = context.config
        self.line(str(address) or "<>")
        if address.domain is None:  # the bare <Postmaster>
            address = Address(address.localPart, Domain(config.hostname))
        envelope = Envelope("route", self.options.sender or Address.null())
        recipient = Recipient(address)
        if not config.isLocal(address.domain):
            self.line("  not a local domain: relayed only for authenticated clients and "
                      "relay-network; never rewritten")  # fmt: skip
            await self.where(recipient, relayed=True)
            return True
        items = [recipient]
        for stage in context.rewriters:
            out: list[Recipient] = []
            for item in items:
                if not config.isLocal(item.address.domain):
                    out.append(item)
                    continue
                try:
                    result = await _wait(stage.rewriteRecipient(self.session, envelope, item))
                except SMTPError as e:
                    self.line(f"  {_describe(stage, item)}: {item.address} refused: {e.reply}")
                    return False
                if result is None:
                    out.append(item)
                    continue
                targets = ", ".join(_show(r) for r in result) or "nowhere (discarded)"
                self.line(f"  {_describe(stage, item)}: {_show(item)} -> {targets}")
                out.extend(result)
            items = out
        outcome = await _wait(settled(rewrite(context, self.session, envelope, recipient, self)))
        if isinstance(outcome, Reply):
            self.line(f"  refused: {outcome}" + self._by())
            return False
        if outcome is None:
            if not address.isPostmaster:
                decided = await _wait(
                    context.recipientChain.ask(self, (self.session, envelope, recipient))
                )
                if decided is not None and decided.code >= 400:
                    self.line(f"  refused: {decided}" + self._by())
                    return False
            self.line(f"  accepted{self._by()}")
            await self.where(recipient)
            return True
        if not outcome.targets:
            self.line("  accepted, delivered nowhere")
        for target in outcome.targets or ():
            self.line(f"  {_show(target)}")
            await self.where(target)
        return True

    def _by(self) -> str:
        decider, self.decider = self.decider, None
        if decider is None:
            return ""
        name = repr(decider) if type(decider).__repr__ is not object.__repr__ else None
        return f" (by {name or type(decider).__name__})"

    async def where(self, recipient: Recipient, relayed: bool = False) -> None:
        """Print where C{recipient} would be delivered."""
        spec = self.options.spec
        address = recipient.address
        domain = address.domain
        assert domain is not None
        deliver = redact(_deliveredBy(spec, domain))
        if self.routeKey is None:
            if relayed:
                self.line("    no queue: relayed mail is refused")
            else:
                self.line(f"    delivered by {deliver} (no queue)")
            return
        key = self.routeKey(address)
        if key == "local":
            self.line(f"    queued, then delivered by {deliver}")
            return
        assert self.router is not None
        route = self.router.routeFor(domain)
        if key.startswith("nexthop "):
            hop = key.removeprefix("nexthop ")
            what = "the smarthost" if route is self.router.smarthost else f"the route of {domain}"
            self.line(f"    queued, then relayed to {hop} ({what})")
        else:
            self.line(f"    queued, then relayed to the MX hosts of {domain.name}")
        if recipient.original is not None and not relayed:
            self.line(f"    {self.senderLine()}")
        if self.options["resolve"]:
            await self.resolve(domain)

    def senderLine(self) -> str:
        srs = self.srs
        if srs is None:
            return "forwarded with the sender as it is (no srs-secret)"
        sender = self.options.sender
        if sender is None:
            return f"forwarded with an SRS sender at {srs.domain} (--sender shows it)"
        domain = sender.domain
        if domain is not None and self.context.config.isLocal(domain):
            return f"forwarded with the sender <{sender}> (a local domain)"
        forwarded = srs.forward(sender, self.context.clock.seconds())
        if forwarded is None:
            return f"forwarded with the sender <{sender}> (its SRS form would be too long)"
        return f"forwarded with the sender <{forwarded}>"

    async def resolve(self, domain: Any) -> None:
        from mailframe.client.routing import RoutingError

        assert self.router is not None
        try:
            found = await defer.Deferred.fromCoroutine(_destinations(self.router, domain))
        except RoutingError as e:
            self.line(f"      {e.reply}")
            return
        for destination in found:
            self.line(f"      {destination.remote} port {destination.port}")


def _deliveredBy(spec: ListenerSpec, domain: Domain) -> str:
    """The backend description that delivers mail for C{domain} (deliver-routes, else deliver)."""
    routes = {k.strip().lower().rstrip("."): v for k, v in spec.deliverRoutes.items()}
    key = domain.key
    if key in routes:
        return routes[key]
    labels = key.split(".")
    for i in range(1, len(labels)):
        found = routes.get("." + ".".join(labels[i:]))
        if found is not None:
            return found
    return spec.deliver


async def _destinations(router: Any, domain: Any) -> Any:
    from twisted.internet import reactor

    return await router.destinations(domain).addTimeout(_TIMEOUT, reactor)


async def _wait(result: Any) -> Any:
    from twisted.internet import reactor

    if isinstance(result, defer.Deferred):
        return await result.addTimeout(_TIMEOUT, reactor)
    return result


def _show(recipient: Recipient) -> str:
    detail = f" (detail {recipient.detail!r})" if recipient.detail is not None else ""
    return f"{recipient.address}{detail}"


def _describe(stage: object, item: Recipient) -> str:
    """Which stage (and entry, with its file and line) rewrote C{item}."""
    from mailframe.validators.aliases import AliasMap
    from mailframe.validators.virtual import VirtualMap

    if isinstance(stage, AliasMap):
        found = stage.entryFor(item.address.localPart)
        if found is not None:
            return f"alias {found[0].name} ({found[0].where})"
    if isinstance(stage, VirtualMap):
        try:
            virtual = stage.entryFor(item.address)
        except SMTPError:
            virtual = None
        if virtual is not None:
            return f"virtual {virtual[0].key} ({virtual[0].where})"
    return repr(stage)


async def explain(reactor: Any, options: RouteOptions, out: TextIO) -> int:
    """Explain every address of C{options}; the exit status."""
    explainer = _Explainer(reactor, options, out)
    status = 0
    for address in options.parsed:
        if not await explainer.explain(address):
            status = 1
    return status


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """C{mailframe route} and C{mailframe-route}."""
    out = out or sys.stdout
    options = RouteOptions()
    try:
        options.parseOptions(list(sys.argv[1:] if argv is None else argv))
    except usage.UsageError as e:
        sys.stderr.write(f"mailframe route: {e}\n")
        return 2
    status: list[int] = []

    async def run(reactor: Any) -> None:
        try:
            status.append(await explain(reactor, options, out))
        except (ValueError, OSError) as e:
            from mailframe.plugins import oneLine

            sys.stderr.write(f"mailframe route: {oneLine(e)}\n")
            status.append(2)
        except SystemExit as e:
            sys.stderr.write(f"{e.code}\n")
            status.append(2)

    with contextlib.suppress(SystemExit):  # react() exits when done
        task.react(lambda reactor: defer.Deferred.fromCoroutine(run(reactor)))
    return status[0] if status else 2
