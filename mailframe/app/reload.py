"""
Reloading C{twistd mailframe} without dropping a session: on SIGHUP the
process reads its command line and config file again, and builds every
listener's plug-ins anew: the address files, aliases and other files the
validators read, the DKIM keys, the TLS certificates and keys, the AUTH
checkers, the DNS servers (resolv.conf included), the queue's routes,
smarthost, retry and report settings.  Nothing is changed until all of it
was built: a configuration that does not parse, a plug-in that cannot be
set up, or a change only a restart can make (the endpoints a listener
listens on, its implicit TLS or proxy networks, the number of workers, the
spool and its threads and connections) is refused with one log line, and
the configuration in force stays.

How new sessions get the new configuration: each listener's
L{mailframe.server.SMTPServerFactory} stays bound to its ports, and
L{SMTPServerFactory.reconfigure} gives it the new settings and plug-ins
(its C{context}) for the sessions it builds from then on.  An open session
holds the context it started with, plug-ins included, to its end: a
session in the middle of a transaction finishes it under the rules it
began with.  What must outlive a reload does: the totals and the open
sessions of each listener, the greeting passes, the connection limits'
counts (when the limits did not change), the clients blocked for failed
AUTH (when those limits did not change), the DNS cache (when the servers
did not change), the queue and its spool.  An implicit-TLS listener's
ports keep a L{ReloadableTLS}, which the reload points at the new
certificates.

With C{--workers}, worker 0 passes the SIGHUP on to the others once its
own reload succeeded; each reloads itself.  Under systemd the reload is
announced with C{RELOADING=1} and C{READY=1} (L{mailframe.app.systemd}).

Owns: L{Reloader} and L{ReloadableTLS}.  Must not: import
L{mailframe.app.tap} (it is handed the options' class and the builder),
block, or leave anything half changed.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.logger import Logger
from twisted.python import usage
from zope.interface import implementer

from mailframe.app.resolver import DNSSpec, makeProcessResolver, resolvedServers
from mailframe.app.security import Security
from mailframe.app.systemd import notify, reloading
from mailframe.plugins import SettingError, oneLine

if TYPE_CHECKING:
    from OpenSSL import SSL
    from twisted.protocols.tls import TLSMemoryBIOProtocol

    from mailframe.address import Domain
    from mailframe.app.config import ListenerSpec
    from mailframe.app.workers import WorkerPool
    from mailframe.client.relay import SMTPRelay
    from mailframe.interfaces import IDeliveryBackend
    from mailframe.queue.settings import QueueSpec
    from mailframe.queue.wiring import QueueWiring
    from mailframe.server import SMTPServerFactory
    from mailframe.server.tls import ServerTLS

__all__ = ["ReloadRefused", "ReloadableTLS", "Reloader"]

log = Logger(namespace="mailframe")

Build = Callable[..., "tuple[SMTPServerFactory, IDeliveryBackend]"]
"""C{mailframe.app.listener.buildListener}."""


class ReloadRefused(Exception):
    """A new configuration that cannot be put in force; the message says why, in one line."""


@implementer(IOpenSSLServerConnectionCreator)
class ReloadableTLS:
    """
    The TLS of an implicit-TLS listener's ports: each new connection uses
    C{current} (a L{mailframe.server.tls.ServerTLS}), which a reload replaces.
    """

    def __init__(self, current: ServerTLS) -> None:
        self.current = current

    def serverConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        return self.current.serverConnectionForTLS(tlsProtocol)

    def getContext(self) -> SSL.Context:
        return self.current.getContext()


@dataclass
class _Prepared:
    """A new configuration, built and not yet in force."""

    options: Any
    security: Security
    dns: DNSSpec
    servers: tuple[tuple[str, int], ...]
    resolver: Any
    kept: dict[object, object]
    built: list[tuple[SMTPServerFactory, IDeliveryBackend]]
    tls: dict[int, ServerTLS]
    relay: SMTPRelay | None


_RESTART_QUEUE = (
    ("spool", "spool"),
    ("sync", "spool-sync"),
    ("threads", "spool-threads"),
    ("connections", "queue-connections"),
    ("destinationConnections", "queue-destination-connections"),
    ("srsSecret", "srs-secret"),
    ("srsDomain", "srs-domain"),
    ("passwordFile", "spool-password-file"),
    ("nodeName", "node-name"),
    ("lease", "queue-lease"),
)
"""The queue's settings (QueueSpec field, setting) that need a restart."""


def restartNeeded(old: Any, new: Any) -> str | None:
    """What C{new} options change that only a restart can, in words; None if nothing."""
    if getattr(old, "workers", 1) != getattr(new, "workers", 1):
        return f"workers changed ({old.workers} -> {new.workers})"
    metrics = getattr(old, "metrics", None), getattr(new, "metrics", None)
    if metrics[0] != metrics[1]:
        return f"metrics changed ({metrics[0] or 'none'} -> {metrics[1] or 'none'})"
    before: Sequence[ListenerSpec] = old.listeners
    after: Sequence[ListenerSpec] = new.listeners
    names = [s.config.listener for s in before], [s.config.listener for s in after]
    if names[0] != names[1]:
        return f"the listeners changed ({', '.join(names[0])} -> {', '.join(names[1])})"
    for a, b in zip(before, after, strict=True):
        name = a.config.listener
        if a.endpoints != b.endpoints:
            return (
                f"the endpoints of {name} changed ({' '.join(a.endpoints)} -> "
                f"{' '.join(b.endpoints)})"
            )
        if a.implicitTLS != b.implicitTLS:
            return f"implicit-tls of {name} changed"
        if a.proxyNetworks != b.proxyNetworks:
            return f"proxy-network of {name} changed"
    queues: tuple[QueueSpec | None, QueueSpec | None] = (old.queue, new.queue)
    if (queues[0] is None) != (queues[1] is None):
        return "the queue was turned " + ("off" if queues[1] is None else "on")
    if queues[0] is not None and queues[1] is not None:
        for field, setting in _RESTART_QUEUE:
            if getattr(queues[0], field) != getattr(queues[1], field):
                return f"{setting} changed"
    return None


class Reloader:
    """
    Reloads the configuration of one process (see the module docstring):
    L{reload}, or SIGHUP once L{install}ed.

    @param options: the options in force (C{twistd mailframe}'s; their
        class parses the new ones, from the same C{argv}).
    @param build: what builds a listener's server factory and local backend
        (C{mailframe.app.listener.buildListener}).
    @param announce: the start-up line of a listener, from its spec and factory.
    @param factories: the server factory of each listener, in order.
    @param tls: the L{ReloadableTLS} of each implicit-TLS listener, by index.
    @param notifies: this process tells systemd (not a worker it started).
    """

    def __init__(
        self,
        reactor: Any,
        options: Any,
        *,
        build: Build,
        announce: Callable[[ListenerSpec, SMTPServerFactory], str],
        factories: Sequence[SMTPServerFactory],
        security: Security,
        dns: DNSSpec,
        resolver: Any,
        queue: QueueWiring | None = None,
        kept: dict[object, object] | None = None,
        tls: Mapping[int, ReloadableTLS] | None = None,
        pool: WorkerPool | None = None,
        notifies: bool = True,
    ) -> None:
        self.reactor = reactor
        self.options = options
        self.build = build
        self.announce = announce
        self.factories = list(factories)
        self.security = security
        self.dns = dns
        self.servers = resolvedServers(dns)
        self.resolver = resolver
        self.queue = queue
        self.kept = kept if kept is not None else {}
        self.tls = dict(tls or {})
        self.pool = pool
        self.notifies = notifies
        self.reloads = 0
        self._previous: Any = None

    # -- SIGHUP ----------------------------------------------------------------------

    def install(self) -> None:
        """Reload on SIGHUP (from the main thread only, where signals can be caught)."""
        if (
            not hasattr(signal, "SIGHUP")
            or threading.current_thread() is not threading.main_thread()
        ):
            return
        self._previous = signal.signal(signal.SIGHUP, self._signalled)

    def uninstall(self) -> None:
        """Give SIGHUP back to what had it before L{install}."""
        if self._previous is not None:
            signal.signal(signal.SIGHUP, self._previous)
            self._previous = None

    def _signalled(self, signum: int, frame: object) -> None:
        # a signal handler runs between two bytecodes of whatever runs: the
        # reload waits for the reactor, as Twisted's own SIGINT handler does
        self.reactor.callFromThread(self.reload)

    # -- the reload --------------------------------------------------------------------

    def reload(self) -> bool:
        """Read and build everything again; True if the new configuration is in force."""
        if self.notifies:
            notify(reloading())
        try:
            prepared = self._prepare()
        except (ReloadRefused, SettingError, usage.UsageError, ValueError, OSError) as e:
            self._refused(oneLine(e))
            return False
        except SystemExit as e:  # a plug-in that cannot be set up: "mailframe: ..."
            self._refused(str(e.code).removeprefix("mailframe: "))
            return False
        except Exception as e:
            log.failure("mailframe: reload failed")
            self._refused(oneLine(e))
            return False
        self._commit(prepared)
        self.reloads += 1
        for spec, factory in zip(prepared.options.listeners, self.factories, strict=True):
            line = self.announce(spec, factory)
            log.info("{line}", line=line.replace("mailframe: ", "mailframe: reloaded: ", 1))
        self._forward()
        if self.notifies:
            notify("READY=1\nSTATUS=configuration reloaded")
        return True

    def _refused(self, why: str) -> None:
        log.error(
            "{line}",
            line=f"mailframe: reload refused, the configuration in force stays: {why}",
        )
        if self.notifies:
            notify("READY=1\nSTATUS=reload refused: " + why)

    def _prepare(self) -> _Prepared:
        old = self.options
        options = type(old)()
        options.parseOptions(list(old.argv))
        problem = restartNeeded(old, options)
        if problem is not None:
            raise ReloadRefused(f"{problem}: that needs a restart")
        same = options.clientLimits == old.clientLimits
        security = Security(
            self.reactor, options.clientLimits, limiter=self.security.limiter() if same else None
        )
        dns: DNSSpec = options.dns
        servers = resolvedServers(dns)
        resolver = self.resolver
        if servers != self.servers:
            resolver = makeProcessResolver(self.reactor, DNSSpec(servers))
        kept: dict[object, object] = {}
        queue = self.queue
        built = []
        restore = queue.spec if queue is not None else None
        try:
            if queue is not None:  # the locally routed domains of the new [routes]
                queue.spec = options.queue
            for spec in options.listeners:
                built.append(
                    self.build(
                        self.reactor,
                        spec,
                        security,
                        resolver,
                        queue,
                        kept=kept,
                        previous=self.kept,
                    )
                )
        finally:
            if queue is not None and restore is not None:
                queue.spec = restore
        tls = {i: security.context(spec) for i, spec in enumerate(options.listeners)
               if spec.implicitTLS}  # fmt: skip
        relay = None
        if queue is not None and (
            options.queue.relay != old.queue.relay
            or resolver is not self.resolver
            or options.listeners[0].config.hostname != old.listeners[0].config.hostname
        ):
            from mailframe.client.relay import SMTPRelay

            relay = SMTPRelay.fromConfig(
                dict(options.queue.relay), self.reactor, options.listeners[0].config.hostname,
                resolver=resolver,
            )  # fmt: skip
        return _Prepared(options, security, dns, servers, resolver, kept, built, tls, relay)

    def _commit(self, new: _Prepared) -> None:
        """Put C{new} in force: nothing here fails (everything was built)."""
        for factory, (fresh, _) in zip(self.factories, new.built, strict=True):
            factory.reconfigure(fresh)
        for index, context in new.tls.items():
            self.tls[index].current = context
        queue = self.queue
        if queue is not None:
            self._commitQueue(queue, new)
        self.options = new.options
        self.security = new.security
        self.dns, self.servers, self.resolver = new.dns, new.servers, new.resolver
        self.kept = new.kept

    def _commitQueue(self, queue: QueueWiring, new: _Prepared) -> None:
        from mailframe.queue.bounce import ReportSettings
        from mailframe.queue.wiring import routeKeyFor

        spec: QueueSpec = new.options.queue
        queue.spec = spec
        runner = queue.service.runner
        domains: set[Domain] = set()
        for listener, (factory, backend) in zip(new.options.listeners, new.built, strict=True):
            name = listener.config.listener
            queue.local[name] = backend
            if runner is not None:
                runner.backends[name] = backend
            domains.update(factory.config.localDomains)
        queue.localDomains.clear()  # the set the runner's routing reads
        queue.localDomains.update(domains)
        if runner is None:
            return
        first = new.options.listeners[0].config
        runner.retry = spec.retry
        runner.reports = ReportSettings(first.hostname, spec.bounceBodySize, spec.bounceFullSize)
        runner.logDeliveries = first.logMessages
        if new.relay is not None:
            old, queue.relay = queue.relay, new.relay
            queue.service.relay = new.relay
            isLocal = queue.localDomains.__contains__
            runner.relay = new.relay
            if queue.srs is not None:  # forwarded copies get SRS senders, as at start
                from mailframe.queue.srs import SRSRelay

                router = new.relay.router
                runner.relay = SRSRelay(
                    new.relay, queue.srs, lambda d: isLocal(d) or router.isLocal(d), self.reactor
                )
            runner.routeKey = routeKeyFor(new.relay.router, isLocal)
            if old is not None:
                old.closeIdle()  # its transfers under way finish on it

    def _forward(self) -> None:
        """Worker 0: the other workers reload too."""
        if self.pool is None:
            return
        from twisted.internet.error import ProcessExitedAlready

        for worker in list(self.pool.workers.values()):
            if worker.transport is not None:
                with contextlib.suppress(ProcessExitedAlready, OSError):
                    worker.transport.signalProcess("HUP")
