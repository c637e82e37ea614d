"""
C{twistd mailframe}: L{makeService} (the service of the parsed
L{Options}, which L{mailframe.app.options} makes), and the C{mailframe}
console script (L{run}).

Owns: building each listener's plug-ins (L{buildListener}: at start, at a
reload, for the simulator), the queue, and the listening services, and
turning what can only fail at start (a Maildir that cannot be created, a
port in use) into a one-line C{SystemExit}.  Must not: import the reactor
at import time (twistd imports this module before it installs one), or
hold protocol logic.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from twisted.application import strports
from twisted.application.service import IService, MultiService, Service
from twisted.logger import Logger

from mailframe.app.capturemode import captureStore
from mailframe.app.config import ClientLimits, ListenerSpec
from mailframe.app.listener import buildListener
from mailframe.app.options import Options, plugInHelp, versionText
from mailframe.app.privileges import runAs
from mailframe.app.reload import ReloadableTLS, Reloader
from mailframe.app.resolver import DNSSpec, makeProcessResolver
from mailframe.app.security import Security
from mailframe.app.systemd import notify
from mailframe.backends._files import noteCreated, own, removeCreated, setOwner
from mailframe.plugins import oneLine, redact

if TYPE_CHECKING:
    from twisted.internet.interfaces import IProtocolFactory

    from mailframe.interfaces import TLSContextFactory
    from mailframe.queue.wiring import QueueWiring
    from mailframe.server import SMTPServerFactory
    from mailframe.validators.srs import SRS


__all__ = [
    "MailframeService",
    "Options",
    "buildListener",
    "makeService",
    "plugInHelp",
    "run",
    "versionText",
]

log = Logger(namespace="mailframe")


class MailframeService(MultiService):
    """
    The listeners of C{twistd mailframe}: says what each does when it
    starts, tells systemd it is ready (and stopping), reloads on SIGHUP
    (C{reloader}, L{mailframe.app.reload}).  A port that cannot be listened
    on is one line (a C{SystemExit}), and the directories made at start
    (C{created}) go if they are still empty.
    """

    def __init__(self) -> None:
        super().__init__()
        self.announcements: list[str] = []
        self.warnings: list[str] = []
        self.factories: list[SMTPServerFactory] = []
        self.endpoints: dict[IService, str] = {}  # each listening service's endpoint string
        self.created: list[str] = []
        self.reloader: Reloader | None = None
        self.notifies = True  # not a worker that worker 0 started
        self.lockFile: str | None = None  # the spool's, given to the user twistd runs as
        self.logFormat = "text"
        self.twistdOptions: Any = None  # twistd's own options (--logfile ...), under twistd
        self.logObserver: Any = None

    def setServiceParent(self, parent: Any) -> None:
        """
        Under twistd C{parent} is the application: mailframe's log observer
        (log-format, buffered: L{mailframe.app.logformat}) becomes the one
        twistd starts with, in place of its own.
        """
        if self.twistdOptions is not None and hasattr(parent, "setComponent"):
            from twisted.internet import reactor

            from mailframe.app.logformat import installFor

            self.logObserver = installFor(parent, self.logFormat, self.twistdOptions, reactor)
        super().setServiceParent(parent)

    def _start(self, child: IService, start: Callable[[], object]) -> None:
        try:
            start()
        except Exception as e:
            endpoint = self.endpoints.get(child)
            if endpoint is None:
                raise
            removeCreated(self.created)
            raise SystemExit(f"mailframe: cannot listen on {endpoint}: {_listenError(e)}")

    def privilegedStartService(self) -> None:
        # the ports first: one in use stops the start before the queue takes its lock
        Service.privilegedStartService(self)
        children = sorted(self, key=lambda child: child not in self.endpoints)
        for child in children:
            self._start(child, child.privilegedStartService)
        if self.lockFile is not None and os.path.exists(self.lockFile):
            own(self.lockFile)  # taken as root; mailframe-queue runs as the user

    def startService(self) -> None:
        Service.startService(self)
        for child in self:  # the queue first: it is up before a session can use it
            self._start(child, child.startService)
        for line in self.announcements:
            log.info("{line}", line=line)
        for line in self.warnings:
            log.warn("{line}", line=line)
        if self.reloader is not None:
            self.reloader.install()
        if self.notifies:
            notify(f"READY=1\nSTATUS=serving {len(self.factories)} listener(s)")

    def stopService(self) -> Any:
        if self.notifies:
            notify("STOPPING=1")
        if self.reloader is not None:
            self.reloader.uninstall()
        for factory in dict.fromkeys(self.factories):
            stats = factory.context.stats
            log.info(
                "{line}",
                line=f"mailframe: {factory.config.listener} stopping: {factory.accepted} "
                f"messages ({factory.acceptedRecipients} recipients) accepted, "
                f"{factory.refused} refused ({stats.refusedRecipients} recipients, "
                f"{stats.refusedConnections} connections) since start",
            )
        return super().stopService()


def _listenError(e: Exception) -> str:
    """Why a port could not be listened on, in a few words: C{Address already in use}."""
    from twisted.internet.error import CannotListenError

    reason: object = e.socketError if isinstance(e, CannotListenError) else e
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return oneLine(reason if isinstance(reason, BaseException) else e)


def _announce(spec: ListenerSpec, factory: SMTPServerFactory) -> str:
    config = factory.config
    domains = ", ".join(sorted(str(d) for d in config.localDomains))
    line = (
        f"mailframe: listening on {' and '.join(spec.endpoints)} as {config.hostname} "
        f"for {domains}; validate {', '.join(spec.validate)}; deliver {redact(spec.deliver)}"
    )
    if config.lmtp:
        line = line.replace(": listening on ", ": LMTP (RFC 2033) on ", 1)
    if any(e.lower().startswith("haproxy:") for e in spec.endpoints):
        from mailframe.server.proxy import DEFAULT_TRUSTED

        line += f"; PROXY header from {', '.join(spec.proxyNetworks or DEFAULT_TRUSTED)}"
    if spec.hasTLS:
        line += "; TLS from the first byte" if spec.implicitTLS else "; STARTTLS"
    auth: Any = next((e for e in factory.extensions if e.keyword == "AUTH"), None)  # an Auth
    if auth is not None:
        line += f"; AUTH {' '.join(auth.mechanisms)}"
        if spec.authPlaintext:
            line += " (also without TLS)"
    if config.requireAuthentication:
        line += "; MAIL needs AUTH"
    if spec.milters:
        line += f"; milters {', '.join(m.name for m in spec.milters)}"
    return line


def makeService(options: Options) -> MailframeService:
    """
    A L{MailframeService} with a strports service per endpoint of each
    listener; each listener has its own L{SMTPServerFactory} and plug-ins.

    @raise SystemExit: with a one-line message if a plug-in, a certificate
        or an AUTH checker cannot be set up.
    """
    from twisted.internet import reactor

    service = MailframeService()
    service.logFormat = getattr(options, "logFormat", "text")
    service.twistdOptions = getattr(options, "parent", None)
    owner = runAs(options)  # twistd's --uid/--gid, as root: what is made at start is theirs
    setOwner(*(owner or (None, None)))
    security = Security(reactor, getattr(options, "clientLimits", ClientLimits()))
    dns = getattr(options, "dns", DNSSpec())
    resolver = makeProcessResolver(reactor, dns)  # one per process, for every check and MX
    if dns.servers:
        service.announcements.append(f"mailframe: DNS from {dns.describe()}, cached")
    kept: dict[object, object] = {}
    tlsOf: dict[int, ReloadableTLS] = {}
    with noteCreated() as service.created:
        queue = _queue(reactor, options, service)
        _srs(queue, options)
        capture = captureStore(reactor, options, service)
        for index, spec in enumerate(options.listeners):
            factory, _ = buildListener(reactor, spec, security, resolver, queue, notes=service,
                                       kept=kept, backend=capture)  # fmt: skip
            if queue is not None:
                queue.addLocalDomains(factory.config.localDomains)
            tls = None
            if spec.implicitTLS:  # a reload gives its ports the new certificates
                tls = tlsOf[index] = ReloadableTLS(security.context(spec))
            for endpoint in spec.endpoints:
                try:
                    child = _endpointService(
                        reactor,
                        endpoint,
                        factory,
                        tls,
                        shared=getattr(options, "workers", 1) > 1,
                        proxies=spec.proxyNetworks,
                    )
                except Exception as e:
                    raise SystemExit(f"mailframe: bad endpoint {endpoint!r}: {oneLine(e)}")
                child.setServiceParent(service)
                service.endpoints[child] = endpoint
            service.announcements.append(_announce(spec, factory))
            service.factories.append(factory)
            if spec.auth and not spec.hasTLS and not spec.authPlaintext:
                service.warnings.append(
                    f"mailframe: --auth is never offered on {spec.config.listener}: AUTH needs "
                    "TLS (--tls-cert and --tls-key, or --tls), or --auth-plaintext for tests"
                )
            if spec.auth and spec.authPlaintext:
                service.warnings.append(
                    f"mailframe: AUTH is offered without TLS on {spec.config.listener} "
                    "(--auth-plaintext): passwords cross the network in clear; use it for "
                    "tests on localhost only"
                )
        if queue is not None:
            _finishQueue(queue, options, service, resolver)
            from mailframe.queue.control import LOCK

            if queue.control is not None:  # a file spool (PostgreSQL has no lock file)
                service.lockFile = os.path.join(queue.control.path, LOCK)
        if getattr(options, "metrics", None) is not None:
            _metrics(reactor, options, service, queue)
        from mailframe.app.webconsole import addConsole

        addConsole(reactor, options, service, security, capture, queue)
    workers = getattr(options, "workers", 1)
    pool = None
    if workers > 1 and options["worker"] is None:  # worker 0 starts the others
        from mailframe.app.workers import WorkerPool, workerArgv

        pool = WorkerPool(reactor, workers, workerArgv(options.argv))
        pool.setServiceParent(service)
    service.notifies = options.get("worker") is None
    build = buildListener if capture is None else partial(buildListener, backend=capture)
    service.reloader = Reloader(
        reactor, options, build=build, announce=_announce, factories=service.factories,
        security=security, dns=dns, resolver=resolver, queue=queue, kept=kept, tls=tlsOf,
        pool=pool, notifies=service.notifies,
    )  # fmt: skip
    return service


def _metrics(
    reactor: Any, options: Options, service: MailframeService, queue: QueueWiring | None
) -> None:
    """The metrics service (--metrics): every listener's plug-ins timed, the queue read."""
    from mailframe.app.metrics import Metrics, MetricsService

    description = options.metrics
    assert description is not None
    metrics = Metrics()
    for factory in service.factories:
        metrics.timePlugins(factory)
    if queue is not None and queue.service.runner is not None:
        metrics.watchQueue(queue.service.runner, reactor)
    worker = int(options["worker"] or 0) if getattr(options, "workers", 1) > 1 else None
    try:
        child = MetricsService(reactor, description, metrics, worker)
    except Exception as e:
        raise SystemExit(f"mailframe: bad endpoint {description!r}: {oneLine(e)}")
    child.setServiceParent(service)
    service.endpoints[child] = description
    where = f"{description} (port + {worker})" if worker else description
    service.announcements.append(f"mailframe: Prometheus metrics at {where}, path /metrics")


def _srs(queue: QueueWiring | None, options: Any) -> SRS | None:
    """The SRS of forwarded copies (srs-secret), given to the queue's relay too."""
    if queue is None or queue.spec.srsSecret is None:
        return None
    from mailframe.validators.srs import SRS, readSecrets

    domain = queue.spec.srsDomain or options.listeners[0].config.hostname
    try:
        queue.srs = SRS(readSecrets(queue.spec.srsSecret), domain)
    except ValueError as e:
        raise SystemExit(f"mailframe: {oneLine(e)}")
    return queue.srs


def _queue(reactor: Any, options: Options, service: MailframeService) -> QueueWiring | None:
    """The queue's wiring, its service the first child (it starts before the listeners)."""
    spec = getattr(options, "queue", None)
    if spec is None:
        return None
    from mailframe.queue.wiring import QueueWiring

    worker = options["worker"]
    try:
        queue = QueueWiring(
            reactor, spec, int(worker) if worker else 0, getattr(options, "workers", 1)
        )
    except OSError as e:
        raise SystemExit(f"mailframe: cannot create the spool {spec.spool}: {e.strerror or e}")
    queue.service.setServiceParent(service)
    return queue


def _finishQueue(
    queue: QueueWiring, options: Options, service: MailframeService, resolver: Any = None
) -> None:
    """Build the relay and the runner once every listener's local backend is known."""
    first = options.listeners[0].config
    try:
        queue.finish(first.hostname, logDeliveries=first.logMessages, resolver=resolver)
    except (OSError, ValueError) as e:
        raise SystemExit(f"mailframe: cannot set up the relay: {oneLine(e)}")
    service.announcements.append(queue.describe())


def _endpointService(
    reactor: Any,
    description: str,
    factory: IProtocolFactory,
    tls: TLSContextFactory | None,
    shared: bool = False,
    proxies: Sequence[str] = (),
) -> IService:
    """
    The listening service of one endpoint; with C{tls}, TLS from the first
    byte; C{shared}, a SO_REUSEPORT socket the other workers bind too.  A
    C{haproxy:} endpoint reads a PROXY header from one of C{proxies} (by
    default this machine) before the session starts (see
    L{mailframe.server.proxy}), not with Twisted's own wrapper.
    """
    from mailframe.server.proxy import DEFAULT_TRUSTED, ProxyHeaderFactory, splitProxyEndpoint
    from mailframe.server.tls import implicitTLS

    listening = implicitTLS(tls, factory) if tls is not None else factory
    proxied, description = splitProxyEndpoint(description)
    if proxied:
        listening = ProxyHeaderFactory(listening, proxies or DEFAULT_TRUSTED, reactor)
    if shared:
        from mailframe.app.workers import ReusePortService

        return ReusePortService(reactor, description, listening)
    return strports.service(description, listening, reactor=reactor)


def run() -> None:
    """The C{mailframe} console script: C{twistd -n mailframe ARGS}, no pid file."""
    from twisted.scripts.twistd import run as twistd

    pidfile = ["--pidfile="] if os.name == "posix" else []
    sys.argv = ["twistd", "-n", *pidfile, "mailframe", *sys.argv[1:]]
    twistd()
