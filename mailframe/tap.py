"""
C{twistd mailframe}: the command-line L{Options}, L{makeService}, and the
C{mailframe} console script (L{run}).

Owns: the option names and their help, building the plug-ins and the
listening services, and turning what can only fail at start (a Maildir that
cannot be created) into a one-line C{SystemExit}.  Every setting is checked
in L{Options.postOptions} (see L{mailframe._tapconfig}), so that a mistake
is a usage error.  Must not: import the reactor at import time (twistd
imports this module before it installs one), or hold protocol logic.
"""

from __future__ import annotations

import os
import sys
import textwrap
from typing import Any

from twisted.application import strports
from twisted.application.service import MultiService
from twisted.logger import Logger
from twisted.python import usage
from zope.interface import Interface

from mailframe import plugins
from mailframe._tapconfig import (
    ConfigError,
    ListenerSpec,
    buildListeners,
    convert,
    readConfigFile,
)
from mailframe.config import ProviderContext
from mailframe.interfaces import IDeliveryBackend, IRecipientValidator

__all__ = ["MailframeService", "Options", "makeService", "plugInHelp", "run"]

log = Logger(namespace="mailframe")

_LONGDESC = """\
Run an SMTP server that delivers the mail of its local domains with a
delivery backend, after asking its recipient validators.  Plug-ins are
chosen with description strings, like endpoints: --deliver
maildir:/var/mail:layout=user.  Settings can also come from a TOML file
(--config) with the same names (lists for repeatable options) and
[[listener]] tables; command-line options override it.  Sizes take K, M or
G; times are seconds.
"""

# The kinds --help lists first, with the option that chooses them.
_OPTION_KINDS: list[tuple[Any, str]] = [
    (IDeliveryBackend, "Delivery backends (--deliver, one)"),
    (IRecipientValidator, "Recipient validators (--validate, repeatable, asked in order)"),
]


class Options(usage.Options):
    """The options of C{twistd mailframe}; C{self.listeners} after parsing."""

    synopsis = "[options]"
    longdesc = _LONGDESC

    optParameters = [
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
    ]  # fmt: skip
    optFlags = [
        ["transcript", None, "Debugging: log every session as a readable transcript."],
    ]

    compData = usage.Completions(
        optActions={
            "config": usage.CompleteFiles("*.toml"),
            "bare-newlines": usage.CompleteList(["reject", "normalise"]),
        }
    )

    listeners: list[ListenerSpec]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["domain"] = []
        self["validate"] = []

    def opt_listen(self, endpoint: str) -> None:
        """Listen on this endpoint (repeatable) [default: tcp:2525:interface=127.0.0.1]"""
        self["listen"].append(endpoint)

    def opt_port(self, endpoint: str) -> None:
        """The same as --listen."""
        self.opt_listen(endpoint)

    def opt_domain(self, domain: str) -> None:
        """A local domain (repeatable; a,b for two) [default: localhost, the host name]"""
        self["domain"].append(domain)

    def opt_validate(self, description: str) -> None:
        """A recipient validator (repeatable: asked in order) [default: any]"""
        self["validate"].append(description)

    def postOptions(self) -> None:
        try:
            self.listeners = self._listeners()
        except ConfigError as e:
            raise usage.UsageError(str(e))

    def _listeners(self) -> list[ListenerSpec]:
        command: dict[str, Any] = {}
        for name in ("listen", "domain", "validate"):
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
        ):
            if self[name] is not None:
                command[name] = convert(name, self[name], f"--{name}")
        if self["transcript"]:
            command["transcript"] = True
        if self["config"] is not None:
            fileTop, fileListeners = readConfigFile(self["config"])
            return buildListeners(command, fileTop, fileListeners)
        return buildListeners(command)

    def getUsage(self, width: int | None = None) -> str:
        return super().getUsage(width) + "\n" + plugInHelp(width)


def plugInHelp(width: int | None = None) -> str:
    """The installed plug-ins by kind: synopsis and description of each."""
    width = width or int(os.environ.get("COLUMNS", "80"))
    found = plugins.factoriesFor(Interface)  # every kind
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

    def startService(self) -> None:
        super().startService()
        for line in self.announcements:
            log.info("{line}", line=line)


def _announce(spec: ListenerSpec, factory: Any) -> str:
    config = factory.config
    domains = ", ".join(sorted(str(d) for d in config.localDomains))
    return (
        f"mailframe: listening on {' and '.join(spec.endpoints)} as {config.hostname} "
        f"for {domains}; validate {', '.join(spec.validate)}; deliver {spec.deliver}"
    )


def _build(interface: Any, description: str, context: ProviderContext) -> Any:
    try:
        return plugins.makeProvider(interface, description, context)
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

    @raise SystemExit: with a one-line message if a plug-in cannot be built.
    """
    from twisted.internet import reactor

    from mailframe.server import SMTPServerFactory

    service = MailframeService()
    for spec in options.listeners:
        context = ProviderContext(reactor, spec.config)
        validators = [_build(IRecipientValidator, d, context) for d in spec.validate]
        backend = _build(IDeliveryBackend, spec.deliver, context)
        factory = SMTPServerFactory(spec.config, backend, validators, clock=reactor)
        for endpoint in spec.endpoints:
            try:
                strports.service(endpoint, factory).setServiceParent(service)
            except Exception as e:
                raise SystemExit(f"mailframe: bad endpoint {endpoint!r}: {_oneLine(e)}")
        service.announcements.append(_announce(spec, factory))
    return service


def _oneLine(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def run() -> None:
    """The C{mailframe} console script: C{twistd -n mailframe ARGS}, no pid file."""
    from twisted.scripts.twistd import run as twistd

    pidfile = ["--pidfile="] if os.name == "posix" else []
    sys.argv = ["twistd", "-n", *pidfile, "mailframe", *sys.argv[1:]]
    twistd()
