"""
L{QueueWiring}: puts together the queue of C{twistd mailframe} from a
L{QueueSpec}: the spool, a L{SpoolBackend} in front of each listener's
local backend, the L{mailframe.client.relay.SMTPRelay} (smarthost, per-domain
routes, MX), the runner, and the L{QueueService} that starts and stops
them (with the spool's lock and control socket: L{mailframe.queue.control}).
Embedding code can do the same by hand (see docs/queue.rst).

Route keys (L{routeKeyFor}): a domain routed C{local} goes to the local
backend; a domain with its own route goes there, even when it is a local
domain (a gateway); other local domains go to the local backend; the rest
to the smarthost, or to their MX hosts.

Owns: the wiring.  Must not: import the reactor at import time; parse
settings (L{mailframe.queue.settings} does).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from mailframe.address import Address, Domain
from mailframe.backends._files import makeDirectory
from mailframe.config import ServerConfig
from mailframe.interfaces import IDeliveryBackend, IExtension, IMessageFilter, IQueueStore
from mailframe.queue.adopt import adoptStranded
from mailframe.queue.backend import QueueService, SpoolBackend
from mailframe.queue.bounce import ReportSettings
from mailframe.queue.control import ControlledQueueService, QueueControl
from mailframe.queue.location import PostgresLocation
from mailframe.queue.runner import LOCAL, QueueRunner
from mailframe.queue.settings import QueueSpec
from mailframe.queue.spool import Spool

if TYPE_CHECKING:
    from mailframe.client.relay import SMTPRelay
    from mailframe.client.routing import Router
    from mailframe.interfaces import IRelay
    from mailframe.validators.srs import SRS

__all__ = ["QueueWiring", "routeKeyFor"]


def _postgresStore(
    reactor: Any, spec: QueueSpec, location: PostgresLocation, worker: int, workers: int
) -> IQueueStore:
    """
    The PostgreSQL store of this process, as the node C{node-name} (the
    host name by default; C{-wK} added for worker K of several).

    @raise OSError: the password file cannot be read.
    """
    from mailframe.queue.pgstore import PostgresStore, defaultNodeName

    if spec.passwordFile is not None:
        with open(spec.passwordFile, encoding="utf-8") as f:
            location = location.withPassword(f.readline().rstrip("\r\n"))
    node = spec.nodeName
    if node is None:
        node = defaultNodeName(worker, workers)
    elif workers > 1:
        node = f"{node}-w{worker}"
    return PostgresStore(location, reactor, node, lease=spec.lease)


def routeKeyFor(router: Router, isLocal: Callable[[Domain], bool]) -> Callable[[Address], str]:
    """The runner's C{routeKey} from a L{mailframe.client.routing.Router} and the local domains."""

    def routeKey(address: Address) -> str:
        domain = address.domain
        if domain is None:
            return LOCAL
        route = router.routeFor(domain)
        if route == LOCAL:
            return LOCAL
        if (route is None or route is router.smarthost) and isLocal(domain):
            return LOCAL
        return str(router.routeKey(domain))

    return routeKey


class QueueWiring:
    """
    The queue of one process.  With several C{--workers}, each has its own
    spool, C{SPOOL/worker-N}: a spool is never shared between processes.
    At start each adopts its share of the spools no process runs
    (L{mailframe.queue.adopt}).

    @raise OSError: if the spool directory cannot be created.
    """

    def __init__(self, reactor: Any, spec: QueueSpec, worker: int = 0, workers: int = 1) -> None:
        self.reactor = reactor
        self.spec = spec
        self.worker = worker if workers > 1 else None
        self.spool: IQueueStore
        self.control: QueueControl | None = None
        location = spec.location
        if isinstance(location, PostgresLocation):
            self.spool = _postgresStore(reactor, spec, location, worker, workers)
            self.service: QueueService = QueueService(None)
        else:
            root = path = os.path.abspath(location)
            if workers > 1:
                path = os.path.join(path, f"worker-{worker}")
            for directory in (path, os.path.join(path, "tmp"), os.path.join(path, "queue")):
                makeDirectory(directory)
            adopt = functools.partial(adoptStranded, root, path, worker, workers)
            self.spool = Spool(path, reactor, threads=spec.threads, sync=spec.sync, adopt=adopt)
            self.control = QueueControl(reactor, path)
            self.service = ControlledQueueService(None, self.control)
        self.local: dict[str, IDeliveryBackend] = {}
        self.localDomains: set[Domain] = set()
        self.relay: SMTPRelay | None = None
        self.srs: SRS | None = None  # set before finish: forwarded copies get SRS senders

    def configFor(self, config: ServerConfig) -> ServerConfig:
        """A listener's settings with the domains that C{routes} makes local."""
        extra = {Domain(d) for d in self.spec.localRoutes}
        if not extra:
            return config
        return replace(config, localDomains=frozenset(config.localDomains | extra))

    def backendFor(self, config: ServerConfig, local: IDeliveryBackend) -> SpoolBackend:
        """The backend a listener's server gets; C{local} delivers its local mail."""
        self.local.setdefault(config.listener, local)
        return SpoolBackend(self.spool, self.reactor, config.listener, config.spillThreshold)

    def listener(
        self,
        config: ServerConfig,
        local: IDeliveryBackend,
        extensions: list[IExtension],
        messageFilters: list[IMessageFilter],
    ) -> tuple[ServerConfig, SpoolBackend, list[IMessageFilter]]:
        """
        What a listener's server gets with the queue on: its settings (with
        the locally routed domains), the L{SpoolBackend} in front of its
        C{local} backend, and its message filters.  Adds DSN and REQUIRETLS
        (offered under TLS only; the relay honours it) to C{extensions}.
        """
        from mailframe.extensions.dsn import DSN
        from mailframe.extensions.requiretls import RequireTLS

        config = self.configFor(config)
        backend = self.backendFor(config, local)
        if not any(getattr(e, "keyword", None) == "DSN" for e in extensions):
            extensions.append(DSN())
        if not any(getattr(e, "keyword", None) == "REQUIRETLS" for e in extensions):
            extensions.append(RequireTLS())
        return config, backend, list(messageFilters)

    def addLocalDomains(self, domains: Iterable[Domain]) -> None:
        """Domains a server treats as local (its settings' and its validators')."""
        self.localDomains.update(domains)

    def finish(
        self, hostname: str, logDeliveries: bool = True, resolver: Any = None
    ) -> QueueService:
        """
        Build the relay and the runner; the relay's MX routing asks
        C{resolver} (the process's, shared with the checks; None: the system's).

        @raise ValueError: one line, for relay settings that cannot be used.
        """
        from mailframe.client.relay import SMTPRelay

        spec = self.spec
        relayConfig = dict(spec.relay)
        if self.worker is not None and relayConfig.get("tls-state"):  # one per worker
            state = os.path.join(str(relayConfig["tls-state"]), f"worker-{self.worker}")
            relayConfig["tls-state"] = state
        self.relay = SMTPRelay.fromConfig(relayConfig, self.reactor, hostname, resolver=resolver)
        domains = self.localDomains
        relay: IRelay = self.relay
        if self.srs is not None:
            from mailframe.queue.srs import SRSRelay

            router = self.relay.router
            relay = SRSRelay(
                self.relay, self.srs, lambda d: d in domains or router.isLocal(d), self.reactor
            )
        runner = QueueRunner(
            self.reactor,
            self.spool,
            self.local,
            relay,
            routeKeyFor(self.relay.router, lambda d: d in domains),
            ReportSettings(hostname, spec.bounceBodySize, spec.bounceFullSize),
            retry=spec.retry,
            maxConnections=spec.connections,
            maxPerDestination=spec.destinationConnections,
            logDeliveries=logDeliveries,
        )
        attach = getattr(self.spool, "attach", None)
        if attach is not None:  # a store shared by nodes hands the runner what it claims
            attach(runner)
        self.service.runner = runner
        self.service.relay = self.relay
        return self.service

    def describe(self) -> str:
        """One line for the start-up log."""
        spec = self.spec
        via = f"via {spec.relayHost}" if spec.relayHost else "to the MX hosts"
        srs = f"; forwarded copies get SRS senders at {self.srs.domain}" if self.srs else ""
        where = self.spool.path
        node = getattr(self.spool, "node", None)
        if node is not None:
            where += f" as node {node}"
        tls = getattr(getattr(self.relay, "tlsPolicy", None), "description", None)
        return (
            f"mailframe: queue in {where}; other domains {via}; retry after "
            f"{spec.retry.initial:g} s, at most {spec.retry.maximum:g} s apart, "
            f"give up after {spec.retry.giveUp:g} s{srs}" + (f"; {tls}" if tls else "")
        )
