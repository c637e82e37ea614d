"""
The command line of C{twistd mailframe}: L{Options}, made from the table
of settings (L{mailframe.app.settings}), with the help of the settings only
a config file gives (L{fileOnlyHelp}), of the installed plug-ins
(L{plugInHelp}), and C{--version} (L{versionText}).  L{mailframe.app.tap}
builds the service from the parsed options.

Owns: the options, their parsing and checks (every setting is checked in
L{Options.postOptions}, see L{mailframe.app.config}, so that a mistake is a
usage error: one line under twistd, not twistd's printing of the whole
C{--help} first), and the help texts.  Must not: import the reactor at
import time (twistd imports this module before it installs one), or build
services.
"""

from __future__ import annotations

import os
import platform
import sys
import textwrap
from collections.abc import Callable, Sequence
from typing import Any

from twisted.python import usage
from zope.interface import Interface
from zope.interface.interface import InterfaceClass

from mailframe import plugins
from mailframe.app import registry
from mailframe.app.capturemode import capturing
from mailframe.app.config import (
    ClientLimits,
    ListenerSpec,
    buildListeners,
    clientLimits,
    queueSpec,
    readConfigFile,
)
from mailframe.app.resolver import DNSSpec, dnsSpec
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
from mailframe.interfaces import (
    IConnectionFilter,
    IDeliveryBackend,
    IHeloValidator,
    IMessageFilter,
    IRecipientValidator,
    ISenderValidator,
)
from mailframe.plugins import Option, PlugInFactory, SettingError, oneLine

__all__ = ["Options", "fileOnlyHelp", "plugInHelp", "versionText"]

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
