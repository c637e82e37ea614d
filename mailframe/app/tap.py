"""
C{twistd mailframe}: the command-line L{Options}, L{makeService}, and the
C{mailframe} console script (L{run}).

Owns: the option names and their help, building the plug-ins and the
listening services, and turning what can only fail at start (a Maildir that
cannot be created) into a one-line C{SystemExit}.  Every setting is checked
in L{Options.postOptions} (see L{mailframe.app.config}), so that a mistake
is a usage error.  Must not: import the reactor at import time (twistd
imports this module before it installs one), or hold protocol logic.
"""

from __future__ import annotations

import os
import sys
import textwrap
from collections.abc import Sequence
from typing import Any

from twisted.application import strports
from twisted.application.service import MultiService
from twisted.logger import Logger
from twisted.python import usage
from zope.interface import Interface

from mailframe import plugins
from mailframe.app import registry
from mailframe.app.config import (
    ClientLimits,
    ConfigError,
    ListenerSpec,
    buildListeners,
    clientLimits,
    convert,
    readConfigFile,
)
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
from mailframe.queue.settings import SettingError, queueSpec

__all__ = ["MailframeService", "Options", "makeService", "plugInHelp", "run"]

log = Logger(namespace="mailframe")

_LONGDESC = """\
Run an SMTP server that delivers the mail of its local domains with a
delivery backend, after asking its recipient validators.  Plug-ins are
chosen with description strings, like endpoints: --deliver
maildir:/var/mail:layout=user.  Settings can also come from a TOML file
(--config) with the same names (lists for repeatable options) and
[[listener]] tables; command-line options override it.  Sizes take K, M or
G; times are seconds.  TLS: --tls-cert/--tls-key (STARTTLS is then offered),
--submission (587 style) and --submissions (465 style, implicit TLS)
listeners where MAIL needs AUTH; AUTH checkers are Twisted's --auth strings
(--help-auth lists them), offered only inside TLS.
"""

# Options given several times; lists in the config file.
_REPEATABLE = ("listen", "domain", "validate", "tls-cert", "tls-key", "auth", "submission",
               "submissions", "filter", "relay-network", "proxy-network")  # fmt: skip

# The queue's options with a value (mailframe.queue.settings).
_QUEUE_OPTIONS = ("spool", "relay-host", "retry-initial", "retry-max", "give-up", "delay-warning",
                  "bounce-body-size", "bounce-full-size", "queue-connections",
                  "queue-destination-connections", "spool-threads", "spool-sync")  # fmt: skip

# The kinds --help lists first, with the option that chooses them.
_OPTION_KINDS: list[tuple[Any, str]] = [
    (IDeliveryBackend, "Delivery backends (--deliver, one)"),
    (IRecipientValidator, "Recipient validators (--validate, repeatable, asked in order)"),
    (IConnectionFilter, "Connection filters (--filter, repeatable)"),
    (IHeloValidator, "HELO validators (--filter, repeatable)"),
    (ISenderValidator, "Sender validators (--filter, repeatable)"),
    (IMessageFilter, "Message filters (--filter, repeatable; run in order, authresults "
     "after the checks, dkim-sign last)"),
]  # fmt: skip


class Options(usage.Options):
    """The options of C{twistd mailframe}; C{self.listeners} after parsing."""

    synopsis = "[options]"
    longdesc = _LONGDESC

    optParameters = [
        ["workers", None, None, "Processes serving the same tcp: listening ports "
         "(SO_REUSEPORT), to use every core. [default: 1]"],
        ["worker", None, None, "Internal: the index of a worker process started by "
         "--workers."],
        ["hostname", None, None, "The name in the greeting and Received fields. "
         "[default: this host's fully qualified name]"],
        ["deliver", None, None, "The delivery backend, a description. "
         "[default: maildir:./Maildir]"],
        ["max-size", None, None, "The largest message accepted, in octets (K, M, G). "
         "0 is no limit. [default: 35M]"],
        ["max-recipients", None, None, "The most recipients of a message. [default: 1000]"],
        ["max-errors", None, None, "Error replies that end a session (the count "
         "restarts after each message). [default: 20]"],
        ["timeout", None, None, "Seconds to wait for a command. [default: 300]"],
        ["data-timeout", None, None, "Seconds to wait for message data. [default: 300]"],
        ["bare-newlines", None, None, "A bare CR or LF in message data: 'reject' it "
         "with 5xx or 'normalise' it to CRLF. [default: reject]"],
        ["config", None, None, "Read settings from this TOML file."],
        ["auth-failures", None, None, "Failed AUTH attempts in a session before 421 and "
         "close. [default: 3]"],
        ["auth-failure-delay", None, None, "Seconds before a failed AUTH is answered. "
         "[default: 1]"],
        ["auth-client-failures", None, None, "Failed AUTH attempts of one client (IPv6: "
         "its /64) within --auth-client-window that block it. [default: 10]"],
        ["auth-client-window", None, None, "Seconds over which a client's failures are "
         "counted. [default: 600]"],
        ["auth-client-block", None, None, "Seconds a blocked client is refused (421 at "
         "connect). [default: 900]"],
        ["limits", None, None, "Connection limits of each listener, as options of the "
         "limits filter (total=1000:client=50:rate=0:messages=0:recipients=0:exempt=NETS), "
         "or 'off'; an empty string is the defaults (total=1000, client=50, the relay "
         "networks exempt). [default: off]"],
        ["enforce-sync", None, None, "yes: a client that talks before the greeting or sends "
         "commands ahead without PIPELINING gets 554 5.5.0 and is dropped. [default: yes]"],
        ["greet-delay", None, None, "Seconds to wait before greeting a client's first "
         "connection, so that early talkers show themselves. [default: 1; 0 on "
         "submission listeners]"],
        ["error-delay", None, None, "Tarpit: after --soft-errors errors, each error reply "
         "waits this many seconds more than the last. [default: 0, off]"],
        ["soft-errors", None, None, "Errors in a session before --error-delay applies. "
         "[default: 3]"],
        ["spool", None, None, "Queue accepted mail in this directory and deliver it from "
         "there: local domains with --deliver, others relayed, with retries and bounces. "
         "[default: ./spool, when a relay setting turns the queue on; else no queue]"],
        ["relay-host", None, None, "Relay all mail for other domains through this host "
         "(a smarthost: tcp:HOST:PORT, HOST:PORT, [ADDRESS]:PORT or mx:DOMAIN); "
         "credentials and TLS policy in the config file. [default: the MX hosts]"],
        ["retry-initial", None, None, "First retry after a temporary failure (seconds, or "
         "5m, 1h, 2d). [default: 5m]"],
        ["retry-max", None, None, "Longest time between retries (back-off doubles). "
         "[default: 1h]"],
        ["give-up", None, None, "Bounce what is still undelivered this long after arrival. "
         "[default: 5d]"],
        ["delay-warning", None, None, "Tell the sender once when a message is still "
         "undelivered this long after arrival; 0 for never. [default: 0]"],
        ["bounce-body-size", None, None, "Octets of the body returned in a bounce "
         "(K, M, G). [default: 16K]"],
        ["bounce-full-size", None, None, "The largest message returned whole when the "
         "sender asked with RET=FULL. [default: 1M]"],
        ["queue-connections", None, None, "Relay deliveries at once, in total. "
         "[default: 20]"],
        ["queue-destination-connections", None, None, "Relay deliveries at once to one "
         "destination. [default: 5]"],
        ["spool-threads", None, None, "Spool files fsync'd in parallel. [default: 8]"],
        ["spool-sync", None, None, "How the spool makes a commit durable: fsync (each "
         "file) or syncfs (one syncfs(2) of its file system; Linux). [default: fsync]"],
    ]  # fmt: skip
    optFlags = [
        ["transcript", None, "Debugging: log every session as a readable transcript."],
        ["quiet", None, "No log line per message (start-up, warnings and errors are "
         "still logged)."],
        ["tls", None, "Offer TLS with a self-signed certificate for the host name, made "
         "once in the working directory, when no --tls-cert is given (development)."],
        ["auth-plaintext", None, "Offer AUTH without TLS too: passwords in clear (tests "
         "on localhost only; logged as a warning)."],
        ["require-auth", None, "MAIL needs AUTH on the --listen endpoints too."],
        ["implicit-tls", None, "The --listen endpoints speak TLS from the first byte."],
    ]  # fmt: skip

    compData = usage.Completions(
        optActions={
            "config": usage.CompleteFiles("*.toml"),
            "bare-newlines": usage.CompleteList(["reject", "normalise"]),
        }
    )

    listeners: list[ListenerSpec]
    clientLimits: ClientLimits

    def __init__(self) -> None:
        super().__init__()
        for name in _REPEATABLE:
            self[name] = []

    def opt_listen(self, endpoint: str) -> None:
        """Listen on this endpoint (repeatable) [default: tcp:2525:interface=127.0.0.1]"""
        self["listen"].append(endpoint)

    def opt_port(self, endpoint: str) -> None:
        """The same as --listen."""
        self.opt_listen(endpoint)

    def opt_domain(self, domain: str) -> None:
        """A local domain (repeatable; a,b for two) [default: localhost, the host name]"""
        self["domain"].append(domain)

    def opt_relay_network(self, network: str) -> None:
        """Clients in this network (CIDR; repeatable) may relay, as authenticated ones may"""
        self["relay-network"].append(network)

    def opt_proxy_network(self, network: str) -> None:
        """A proxy (CIDR; repeatable) whose PROXY header a haproxy: endpoint believes [default: 127.0.0.0/8, ::1]"""  # noqa: E501
        self["proxy-network"].append(network)

    def opt_validate(self, description: str) -> None:
        """A recipient validator (repeatable: asked in order) [default: any]"""
        self["validate"].append(description)

    def opt_filter(self, description: str) -> None:
        """A security check or other filter: limits, dnsbl, helo, spf, dkim-verify, dmarc, authresults, dkim-sign (repeatable)"""  # noqa: E501
        self["filter"].append(description)

    def opt_tls_cert(self, path: str) -> None:
        """A certificate file, PEM, with its chain (certbot's fullchain.pem); repeat for SNI"""
        self["tls-cert"].append(path)

    def opt_tls_key(self, path: str) -> None:
        """The private key of each --tls-cert, in order (certbot's privkey.pem)"""
        self["tls-key"].append(path)

    def opt_auth(self, description: str) -> None:
        """An AUTH checker, a strcred string: memory:USER:PASS, file:PATH, unix, mailframe:PATH (repeatable: asked in order)"""  # noqa: E501
        self["auth"].append(description)

    def opt_submission(self, endpoint: str) -> None:
        """A submission listener, 587 style: STARTTLS, MAIL needs AUTH (repeatable)"""
        self["submission"].append(endpoint)

    def opt_submissions(self, endpoint: str) -> None:
        """A submission listener with implicit TLS, 465 style: MAIL needs AUTH (repeatable)"""
        self["submissions"].append(endpoint)

    def opt_help_auth(self) -> None:
        """List the --auth checker types installed, and exit"""
        from twisted.cred import strcred

        print("Usage: --auth TYPE[:ARGUMENTS]")
        for factory in sorted(strcred.findCheckerFactories(), key=lambda f: f.authType):
            print(f"  {factory.authType:<12} {factory.argStringFormat}")
        raise SystemExit(0)

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        # kept to start more workers with the very same options
        self.argv = list(sys.argv[1:] if options is None else options)
        super().parseOptions(options)

    def postOptions(self) -> None:
        try:
            self.listeners = self._listeners()
            self.workers = self._workers()
        except ConfigError as e:
            raise usage.UsageError(str(e))

    def _workers(self) -> int:
        count = 1
        if self["workers"] is not None:
            value = self["workers"].strip()
            if not value.isdigit() or not 1 <= int(value) <= 64:
                raise ConfigError(f"--workers: expected 1 to 64, not {self['workers']!r}")
            count = int(value)
        if self["worker"] is not None and not self["worker"].strip().isdigit():
            raise ConfigError(f"--worker: expected a number, not {self['worker']!r}")
        if count > 1:
            from twisted.internet.testing import MemoryReactor

            from mailframe.app.workers import reusePortEndpoint
            from mailframe.server.proxy import splitProxyEndpoint

            for spec in self.listeners:
                for endpoint in spec.endpoints:
                    try:
                        reusePortEndpoint(MemoryReactor(), splitProxyEndpoint(endpoint)[1])
                    except ValueError as e:
                        raise ConfigError(str(e))
        return count

    def _listeners(self) -> list[ListenerSpec]:
        command: dict[str, Any] = {}
        for name in _REPEATABLE:
            if self[name]:
                command[name] = convert(name, self[name], f"--{name}")
        for name in (
            "hostname",
            "deliver",
            "max-size",
            "max-recipients",
            "max-errors",
            "timeout",
            "data-timeout",
            "bare-newlines",
            "auth-failures",
            "auth-failure-delay",
            "auth-client-failures",
            "auth-client-window",
            "auth-client-block",
            "limits",
            "enforce-sync",
            "greet-delay",
            "error-delay",
            "soft-errors",
            *_QUEUE_OPTIONS,
        ):
            if self[name] is not None:
                command[name] = convert(name, self[name], f"--{name}")
        for name in (
            "transcript",
            "quiet",
            "tls",
            "auth-plaintext",
            "require-auth",
            "implicit-tls",
        ):
            if self[name]:
                command[name] = True
        fileTop: dict[str, Any] | None = None
        fileListeners = None
        if self["config"] is not None:
            fileTop, fileListeners = readConfigFile(self["config"])
        self.clientLimits = clientLimits(command, fileTop)
        listeners = buildListeners(command, fileTop, fileListeners)
        networks = [n for spec in listeners for n in spec.config.relayNetworks]
        try:
            self.queue = queueSpec(command, fileTop, networks)
        except SettingError as e:
            raise ConfigError(str(e))
        return listeners

    def getUsage(self, width: int | None = None) -> str:
        return super().getUsage(width) + "\n" + plugInHelp(width)


def plugInHelp(width: int | None = None) -> str:
    """The installed plug-ins by kind: synopsis and description of each."""
    width = width or int(os.environ.get("COLUMNS", "80"))
    found = registry.factoriesFor(Interface)  # every kind
    kinds: list[tuple[Any, str]] = list(_OPTION_KINDS)
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
            lines.extend(
                textwrap.wrap(
                    str(factory.description),
                    width=max(width, 40),
                    initial_indent=" " * 8,
                    subsequent_indent=" " * 8,
                )
            )
    return "\n".join(lines) + "\n"


class MailframeService(MultiService):
    """The listeners of C{twistd mailframe}; says what each does when it starts."""

    def __init__(self) -> None:
        super().__init__()
        self.announcements: list[str] = []
        self.warnings: list[str] = []
        self.factories: list[Any] = []

    def startService(self) -> None:
        super().startService()
        for line in self.announcements:
            log.info("{line}", line=line)
        for line in self.warnings:
            log.warn("{line}", line=line)

    def stopService(self) -> Any:
        for factory in dict.fromkeys(self.factories):
            log.info(
                "{line}",
                line=f"mailframe: {factory.config.listener} stopping: {factory.accepted} "
                f"messages ({factory.acceptedRecipients} recipients) accepted, "
                f"{factory.refused} refused since start",
            )
        return super().stopService()


def _announce(spec: ListenerSpec, factory: Any) -> str:
    config = factory.config
    domains = ", ".join(sorted(str(d) for d in config.localDomains))
    line = (
        f"mailframe: listening on {' and '.join(spec.endpoints)} as {config.hostname} "
        f"for {domains}; validate {', '.join(spec.validate)}; deliver {spec.deliver}"
    )
    if any(e.lower().startswith("haproxy:") for e in spec.endpoints):
        from mailframe.server.proxy import DEFAULT_TRUSTED

        line += f"; PROXY header from {', '.join(spec.proxyNetworks or DEFAULT_TRUSTED)}"
    if spec.hasTLS:
        line += "; TLS from the first byte" if spec.implicitTLS else "; STARTTLS"
    auth = next((e for e in factory.extensions if e.keyword == "AUTH"), None)
    if auth is not None:
        line += f"; AUTH {' '.join(auth.mechanisms)}"
        if spec.authPlaintext:
            line += " (also without TLS)"
    if config.requireAuthentication:
        line += "; MAIL needs AUTH"
    return line


def _build(interface: Any, description: str, context: ProviderContext) -> Any:
    try:
        return registry.makeProvider(interface, description, context)
    except plugins.PlugInError as e:
        raise SystemExit(f"mailframe: {e}")
    except (OSError, ValueError) as e:
        raise SystemExit(
            f"mailframe: cannot set up {plugins.kindName(interface)} {description!r}: "
            f"{_oneLine(e)}"
        )


def makeService(options: Options) -> MailframeService:
    """
    A L{MailframeService} with a strports service per endpoint of each
    listener; each listener has its own L{SMTPServerFactory} and plug-ins.

    @raise SystemExit: with a one-line message if a plug-in, a certificate
        or an AUTH checker cannot be set up.
    """
    from twisted.internet import reactor

    from mailframe.server import SMTPServerFactory

    service = MailframeService()
    security = Security(reactor, getattr(options, "clientLimits", ClientLimits()))
    queue = _queue(reactor, options, service)
    for spec in options.listeners:
        context = ProviderContext(reactor, spec.config)
        validators = [_build(IRecipientValidator, d, context) for d in spec.validate]
        backend = _build(IDeliveryBackend, spec.deliver, context)
        extensions, filters, tls = security.forListener(spec)
        checks = _checks(spec, context)
        config, messageFilters = spec.config, checks[IMessageFilter]
        if queue is not None:  # the queue takes the mail; the backend delivers local mail
            config, backend, messageFilters = queue.listener(
                config, backend, extensions, messageFilters
            )
        factory = SMTPServerFactory(
            config,
            backend,
            [*checks[IRecipientValidator], *validators],
            senderValidators=checks[ISenderValidator],
            connectionFilters=[*filters, *checks[IConnectionFilter]],
            messageFilters=messageFilters,
            extensions=extensions,
            clock=reactor,
            heloValidators=checks[IHeloValidator],
        )
        if queue is not None:
            queue.addLocalDomains(factory.config.localDomains)
        for endpoint in spec.endpoints:
            try:
                child = _endpointService(
                    reactor,
                    endpoint,
                    factory,
                    tls if spec.implicitTLS else None,
                    shared=getattr(options, "workers", 1) > 1,
                    proxies=spec.proxyNetworks,
                )
            except Exception as e:
                raise SystemExit(f"mailframe: bad endpoint {endpoint!r}: {_oneLine(e)}")
            child.setServiceParent(service)
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
                "(--auth-plaintext): passwords cross the network in clear; use it for tests "
                "on localhost only"
            )
    if queue is not None:
        _finishQueue(queue, options, service)
    workers = getattr(options, "workers", 1)
    if workers > 1 and options["worker"] is None:  # worker 0 starts the others
        from mailframe.app.workers import WorkerPool, workerArgv

        WorkerPool(reactor, workers, workerArgv(options.argv)).setServiceParent(service)
    return service


def _queue(reactor: Any, options: Options, service: MailframeService) -> Any:
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


def _finishQueue(queue: Any, options: Options, service: MailframeService) -> None:
    """Build the relay and the runner once every listener's local backend is known."""
    first = options.listeners[0].config
    try:
        queue.finish(first.hostname, logDeliveries=first.logMessages)
    except (OSError, ValueError) as e:
        raise SystemExit(f"mailframe: cannot set up the relay: {_oneLine(e)}")
    service.announcements.append(queue.describe())


def _checks(spec: ListenerSpec, context: ProviderContext) -> dict[Any, list[Any]]:
    """
    The providers of a listener's --filter descriptions (and its connection
    limits), by plug point: each is used at every plug point it provides.
    Message filters run in the order given, except that authresults comes
    after the checks it reports on and dkim-sign last.
    """
    from mailframe.policy.authresults import orderFilters

    built = []
    if spec.limits is not None:
        limits = f"limits:{spec.limits}" if spec.limits else "limits"
        built.append(_build(IConnectionFilter, limits, context))
    for description in spec.filters:
        try:
            built.append(registry.makeFilter(description, context))
        except plugins.PlugInError as e:
            raise SystemExit(f"mailframe: {e}")
        except (OSError, ValueError) as e:
            raise SystemExit(f"mailframe: cannot set up filter {description!r}: {_oneLine(e)}")
    kinds = (IConnectionFilter, IHeloValidator, ISenderValidator, IRecipientValidator)
    checks: dict[Any, list[Any]] = {k: [p for p in built if k.providedBy(p)] for k in kinds}
    checks[IMessageFilter] = orderFilters(p for p in built if IMessageFilter.providedBy(p))
    return checks


def _endpointService(
    reactor: Any,
    description: str,
    factory: Any,
    tls: Any,
    shared: bool = False,
    proxies: Sequence[str] = (),
) -> Any:
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


def _oneLine(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def run() -> None:
    """The C{mailframe} console script: C{twistd -n mailframe ARGS}, no pid file."""
    from twisted.scripts.twistd import run as twistd

    pidfile = ["--pidfile="] if os.name == "posix" else []
    sys.argv = ["twistd", "-n", *pidfile, "mailframe", *sys.argv[1:]]
    twistd()
