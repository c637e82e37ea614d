"""
C{twistd mailframe}: the command-line L{Options}, L{makeService}, and the
C{mailframe} console script (L{run}).

Owns: building the options and their help from the table of settings
(L{mailframe.app.settings}), building each listener's plug-ins
(L{buildListener}: at start, at a reload, for the simulator) and the
listening services, and turning what can only fail at start (a Maildir that
cannot be created, a port in use) into a one-line C{SystemExit}.  Every
setting is checked in L{Options.postOptions} (see L{mailframe.app.config}),
so that a mistake is a usage error: one line under twistd, not twistd's
printing of the whole C{--help} first.  Must not: import the reactor at
import time (twistd imports this module before it installs one), or hold
protocol logic.
"""

from __future__ import annotations

import os
import platform
import sys
import textwrap
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from twisted.application import strports
from twisted.application.service import IService, MultiService, Service
from twisted.logger import Logger
from twisted.python import usage
from zope.interface import Interface
from zope.interface.interface import InterfaceClass

from mailframe import plugins
from mailframe.app import registry
from mailframe.app.capturemode import captureStore, capturing
from mailframe.app.config import (
    ClientLimits,
    ListenerSpec,
    buildListeners,
    clientLimits,
    queueSpec,
    readConfigFile,
)
from mailframe.app.listener import buildListener
from mailframe.app.privileges import runAs
from mailframe.app.reload import ReloadableTLS, Reloader
from mailframe.app.resolver import DNSSpec, dnsSpec, makeProcessResolver
from mailframe.app.security import Security
from mailframe.app.settings import (
    COMMAND,
    DEFAULTS,
    FILE,
    FLAG,
    LIST,
    SCHEMA,
    VALUE,
    Setting,
    convert,
)
from mailframe.app.systemd import notify
from mailframe.backends._files import noteCreated, own, removeCreated, setOwner
from mailframe.interfaces import (
    IConnectionFilter,
    IDeliveryBackend,
    IHeloValidator,
    IMessageFilter,
    IRecipientValidator,
    ISenderValidator,
)
from mailframe.plugins import Option, PlugInFactory, SettingError, oneLine, redact

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

_LONGDESC = """\
Run an SMTP server that delivers the mail of its local domains with a
delivery backend, after asking its recipient validators.  Plug-ins are
chosen with description strings, like endpoints: --deliver
maildir:/var/mail:layout=user.  Settings can also come from a TOML file
(--config) with the same names (lists for repeatable options) and
[[listener]] tables; command-line options override it.  Sizes take K, M or
G; durations are seconds, or a number with s, m, h, d (90s, 5m, 1h, 5d).
TLS: --tls-cert/--tls-key (STARTTLS is then offered), --submission (587
style) and --submissions (465 style, implicit TLS) listeners where MAIL
needs AUTH; AUTH checkers are Twisted's --auth strings (--help-auth lists
them), offered only inside TLS.
"""

# The kinds --help lists first, with the option that chooses them.
_OPTION_KINDS: list[tuple[InterfaceClass, str]] = [
    (IDeliveryBackend, "Delivery backends (--deliver, one)"),
    (IRecipientValidator, "Recipient validators (--validate, repeatable, asked in order)"),
    (IConnectionFilter, "Connection filters (--filter, repeatable)"),
    (IHeloValidator, "HELO validators (--filter, repeatable)"),
    (ISenderValidator, "Sender validators (--filter, repeatable)"),
    (IMessageFilter, "Message filters (--filter, repeatable; run in order, authresults "
     "after the checks, dkim-sign last)"),
]  # fmt: skip


def _help(option: Option) -> str:
    """A setting's or option's help as --help shows it, with its default."""
    repeatable = " Repeatable." if isinstance(option, Setting) and option.form == LIST else ""
    return f"{option.help}{repeatable} [default: {option.defaultText}]"


def _appender(setting: Setting, alias: str | None = None) -> Callable[[Options, str], None]:
    """The opt_ method of a repeatable setting (or of its C{alias}): it adds each value."""

    def opt(self: Options, value: str) -> None:
        self[setting.name].append(value)

    opt.__doc__ = f"The same as --{setting.name}." if alias else _help(setting)
    return opt


class Options(usage.Options):
    """
    The options of C{twistd mailframe}, made from the table of settings;
    C{self.listeners}, C{self.clientLimits}, C{self.queue}, C{self.dns}
    and C{self.workers} after parsing.
    """

    synopsis = "[options]"
    longdesc = _LONGDESC

    optParameters = [[s.name, None, None, _help(s)] for s in SCHEMA if s.form in (VALUE, COMMAND)]
    optFlags = [[s.name, None, _help(s)] for s in SCHEMA if s.form == FLAG]

    compData = usage.Completions(
        optActions={
            "config": usage.CompleteFiles("*.toml"),
            **{
                s.name: usage.CompleteList(s.placeholder.split("|"))
                for s in SCHEMA
                if "|" in s.placeholder and s.form == VALUE
            },
        }
    )

    listeners: list[ListenerSpec]
    clientLimits: ClientLimits
    dns: DNSSpec = DNSSpec()
    logFormat: str = "text"  # log-format: text or json (mailframe.app.logformat)
    metrics: str | None = None  # the metrics endpoint
    capture: dict[str, Any] | None = None  # capture mode: its settings (mailframe.web)
    web: dict[str, Any] | None = None  # the web console: its settings (app/webconsole.py)
    settingsInForce: dict[str, Any] | None = None  # the top-level settings, merged

    def __init__(self) -> None:
        super().__init__()
        for setting in SCHEMA:
            if setting.form == LIST:
                self[setting.name] = []

    def opt_help_auth(self) -> None:
        """List the --auth checker types installed, and exit"""
        from twisted.cred import strcred

        print("Usage: --auth TYPE[:ARGUMENTS]")
        for factory in sorted(strcred.findCheckerFactories(), key=lambda f: f.authType):
            print(f"  {factory.authType:<12} {factory.argStringFormat}")
        raise SystemExit(0)

    def opt_version(self) -> None:
        """Print mailframe's version (and Twisted's and Python's), and exit"""
        print(versionText())
        raise SystemExit(0)

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        # kept to start more workers (and to reload) with the very same options
        self.argv = list(sys.argv[1:] if options is None else options)
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            if getattr(self, "parent", None) is None:
                raise  # parsed by code (a reload, the simulator, tests): theirs to report
            # under twistd, which would print the whole --help before the error
            raise SystemExit(f"mailframe: {e}") from None

    def postOptions(self) -> None:
        try:
            self.listeners = self._listeners()
            self.workers = self._workers()
        except SettingError as e:
            raise usage.UsageError(str(e))

    def _workers(self) -> int:
        count = 1
        if self["workers"] is not None:
            count = convert("workers", self["workers"], "--workers")
        if self["worker"] is not None:
            convert("worker", self["worker"], "--worker")
        if count > 1 and getattr(self, "capture", None) is not None:
            raise SettingError("capture keeps its messages in one process: leave out workers")
        if count > 1 and getattr(self, "web", None) is not None:
            raise SettingError("the web console shows one process: leave out workers")
        if count > 1 and self.metrics is not None:
            from mailframe.app._metricsweb import workerEndpoint

            try:
                workerEndpoint(None, self.metrics, 0)
            except ValueError as e:
                raise SettingError(f"metrics with workers: {oneLine(e)}")
        if count > 1:
            from mailframe.app.workers import reusePortEndpoint
            from mailframe.server.proxy import splitProxyEndpoint

            for spec in self.listeners:
                for endpoint in spec.endpoints:
                    try:
                        reusePortEndpoint(splitProxyEndpoint(endpoint)[1])
                    except ValueError as e:
                        raise SettingError(str(e))
        return int(count)

    def _command(self) -> dict[str, Any]:
        """The settings given on the command line, converted."""
        command: dict[str, Any] = {}
        for setting in SCHEMA:
            name, value = setting.name, self.get(setting.name)
            if setting.form == FLAG and value:
                command[name] = True
            elif (setting.form == LIST and value) or (setting.form == VALUE and value is not None):
                command[name] = setting.parse(value, f"--{name}")
        return command

    def _listeners(self) -> list[ListenerSpec]:
        command = self._command()
        fileTop: dict[str, Any] | None = None
        fileListeners = None
        if self["config"] is not None:
            fileTop, fileListeners = readConfigFile(self["config"])
        self.clientLimits = clientLimits(command, fileTop)
        self.dns = dnsSpec(command, fileTop)
        self.logFormat = {**(fileTop or {}), **command}.get("log-format") or "text"
        self.metrics = {**(fileTop or {}), **command}.get("metrics")
        listeners = buildListeners(command, fileTop, fileListeners)
        networks = [n for spec in listeners for n in spec.config.relayNetworks]
        self.queue = queueSpec(command, fileTop, networks)
        top = {**DEFAULTS, **(fileTop or {}), **command}
        self.settingsInForce = top
        from mailframe.app.webconsole import webSettings

        self.web = webSettings(top)
        self.capture = None
        if top["capture"]:
            if self.queue is not None:
                raise SettingError(
                    "capture never relays: leave out spool, relay-host, routes, relay and "
                    "relay-network"
                )
            names = ("capture-limit", "capture-mailbox", "capture-store", "capture-max-bytes")
            self.capture = {k: top[k] for k in names}
            listeners = [capturing(spec) for spec in listeners]
        return listeners

    def getUsage(self, width: int | None = None) -> str:
        return super().getUsage(width) + "\n" + fileOnlyHelp(width) + "\n" + plugInHelp(width)


for _setting in SCHEMA:
    if _setting.form == LIST:
        setattr(Options, "opt_" + _setting.name.replace("-", "_"), _appender(_setting))
        for _alias in _setting.aliases:
            setattr(Options, "opt_" + _alias.replace("-", "_"), _appender(_setting, _alias))


def _wrap(text: str, width: int, indent: int, hanging: int = 0) -> list[str]:
    return textwrap.wrap(
        text,
        width=max(width, 40),
        initial_indent=" " * indent,
        subsequent_indent=" " * (indent + hanging),
        break_on_hyphens=False,
    )


def fileOnlyHelp(width: int | None = None) -> str:
    """The settings only a config file can give (tables, and the relay's secrets)."""
    width = width or int(os.environ.get("COLUMNS", "80"))
    lines = ["Settings of the config file only (--config):"]
    for setting in SCHEMA:
        if setting.form == FILE:
            lines.extend(_wrap(f"{setting.name}: {_help(setting)}", width, 2, 4))
    return "\n".join(lines) + "\n"


def plugInHelp(width: int | None = None) -> str:
    """The installed plug-ins by kind: synopsis and description of each."""
    width = width or int(os.environ.get("COLUMNS", "80"))
    found = registry.factoriesFor(Interface)  # every kind
    kinds: list[tuple[InterfaceClass, str]] = list(_OPTION_KINDS)
    for factory in found:
        if not any(factory.provides is kind for kind, _ in kinds):
            name = plugins.kindName(factory.provides)
            kinds.append((factory.provides, f"{name[0].upper()}{name[1:]}s (no option yet)"))
    lines = ["Installed plug-ins:"]
    for kind, title in kinds:
        members = [f for f in found if f.provides is kind]
        if not members:
            continue
        lines.append(f"  {title}:")
        for factory in members:
            lines.append(f"    {factory.synopsis}")
            lines.extend(_wrap(str(factory.description), width, 8))
            if isinstance(factory, PlugInFactory):
                for option in factory.options:
                    text = f"{option.name}={option.placeholder}: {_help(option)}"
                    lines.extend(_wrap(text, width, 10, 2))
    return "\n".join(lines) + "\n"


def versionText() -> str:
    """What C{--version} prints: mailframe's version, and Twisted's and Python's."""
    import twisted
    from mailframe import __version__

    return (
        f"mailframe {__version__} (Twisted {twisted.__version__}, "
        f"Python {platform.python_version()})"
    )


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
