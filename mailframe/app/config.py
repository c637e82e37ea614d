"""
The settings of C{twistd mailframe}: their names, types and defaults, the
TOML config file, and merging the file with the command line into one
L{ListenerSpec} per listener.

A setting has the same name on the command line (C{--max-size}) and in the
file (C{max-size = "50M"}); repeatable options are lists in the file.  A
C{[[listener]]} table takes C{listen} (required), C{name}, and any other
setting, which it otherwise inherits from the top level.  Command-line
options replace the file's top-level values.  C{submission} and
C{submissions} endpoints (top level only) add listeners named so, where
MAIL needs AUTH; C{submissions} ones speak TLS from the first byte.

Owns: checking every setting, so that a mistake is a one-line
L{ConfigError} before anything starts.  Must not: import the reactor, build
providers or touch the file system except to read the config file (that is
L{mailframe.app.tap.makeService}'s job).
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from mailframe import plugins
from mailframe.address import Domain
from mailframe.app import registry
from mailframe.config import ServerConfig, defaultHostname
from mailframe.interfaces import IConnectionFilter, IDeliveryBackend, IRecipientValidator
from mailframe.protocol import Limits
from mailframe.queue.settings import (
    QUEUE_DEFAULTS,
    QUEUE_SETTINGS,
    QUEUE_TOP_LEVEL,
    SettingError,
    parseSize,
)

__all__ = [
    "DEFAULTS",
    "SETTINGS",
    "TOP_LEVEL_ONLY",
    "ClientLimits",
    "ConfigError",
    "ListenerSpec",
    "buildListeners",
    "checkEndpoint",
    "clientLimits",
    "convert",
    "parseSize",
    "readConfigFile",
]


class ConfigError(ValueError):
    """A bad setting or config file; the message is one line."""


@dataclass(frozen=True)
class ListenerSpec:
    """
    One listener: its endpoints, its settings and its plug-in descriptions.

    C{certificates} are (certificate file, key file or None) pairs, the
    first the default and the others chosen by SNI; C{selfSigned} asks for
    the development certificate when there are none.  C{implicitTLS}: the
    endpoints speak TLS from the first byte (else STARTTLS is offered when
    there is a certificate).  C{auth}: strcred descriptions of the checkers.
    """

    endpoints: tuple[str, ...]
    config: ServerConfig
    validate: tuple[str, ...]
    deliver: str
    certificates: tuple[tuple[str, str | None], ...] = ()
    selfSigned: bool = False
    implicitTLS: bool = False
    auth: tuple[str, ...] = ()
    authPlaintext: bool = False
    authFailures: int = 3
    authFailureDelay: float = 1.0
    filters: tuple[str, ...] = ()
    limits: str | None = None
    proxyNetworks: tuple[str, ...] = ()

    @property
    def hasTLS(self) -> bool:
        return bool(self.certificates) or self.selfSigned


@dataclass(frozen=True)
class ClientLimits:
    """Failed AUTH attempts per client, shared by every listener of the service."""

    failures: int = 10
    window: float = 600.0
    block: float = 900.0


# -- converters: a command-line string or a TOML value -> the setting ---------


def _count(minimum: int) -> Callable[[Any], int]:
    def convert(value: Any) -> int:
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"expected a whole number, not {value!r}")
        if value < minimum:
            raise ConfigError(f"must be at least {minimum}, not {value}")
        return value

    return convert


def _seconds(value: Any) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ConfigError(f"expected a number of seconds, not {value!r}")
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ConfigError(f"expected a number of seconds, not {value!r}")
    if not value > 0 or value == float("inf"):
        raise ConfigError(f"must be a positive number of seconds, not {value!r}")
    return float(value)


def _string(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"expected a non-empty string, not {value!r}")
    return value


def _strings(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise ConfigError(f"expected a list of strings, not {value!r}")
    return tuple(_string(v) for v in value)


def checkEndpoint(description: str) -> str:
    """Check a server endpoint string by parsing it; nothing listens."""
    from twisted.internet.endpoints import serverFromString
    from twisted.internet.testing import MemoryReactor

    try:
        serverFromString(MemoryReactor(), description)
    except Exception as e:
        raise ConfigError(f"bad endpoint {description!r}: {_oneLine(e)}")
    return description


def _listen(value: Any) -> tuple[str, ...]:
    return tuple(checkEndpoint(d) for d in _strings(value))


def _hostname(value: Any) -> str:
    name = _string(value)
    try:
        Domain.parse(name)
    except ValueError:
        raise ConfigError(f"not a host name: {name!r}")
    return name


def _domains(value: Any) -> tuple[str, ...]:
    names = [n.strip() for v in _strings(value) for n in v.split(",") if n.strip()]
    for name in names:
        try:
            Domain.parse(name)
        except ValueError as e:
            raise ConfigError(str(e))
    return tuple(names)


def _validate(value: Any) -> tuple[str, ...]:
    descriptions = _strings(value)
    for d in descriptions:
        _plugIn(IRecipientValidator, d)
    return descriptions


def _deliver(value: Any) -> str:
    return _plugIn(IDeliveryBackend, _string(value))


def _plugIn(interface: Any, description: str) -> str:
    try:
        registry.checkDescription(interface, description)
    except plugins.PlugInError as e:
        raise ConfigError(str(e))
    return description


def _filters(value: Any) -> tuple[str, ...]:
    descriptions = _strings(value)
    for d in descriptions:
        try:
            registry.checkFilter(d)
        except plugins.PlugInError as e:
            raise ConfigError(str(e))
    return descriptions


def _limits(value: Any) -> str | None:
    """The options of the connection limits (C{client=20:rate=30}), or C{off}."""
    if value is False or (isinstance(value, str) and value.strip().lower() in ("off", "no")):
        return None
    if not isinstance(value, str):
        raise ConfigError(f"expected options such as client=20:rate=30, or off; not {value!r}")
    value = value.strip()
    _plugIn(IConnectionFilter, f"limits:{value}" if value else "limits")
    return value


def _cidrs(value: Any) -> tuple[str, ...]:
    """Networks in CIDR notation (a list, or one string with commas)."""
    from ipaddress import ip_network

    out = []
    for item in _strings(value):
        for text in item.split(","):
            try:
                out.append(str(ip_network(text.strip(), strict=False)))
            except ValueError:
                raise ConfigError(f"not a network: {text.strip()!r} (e.g. 192.0.2.0/24)")
    return tuple(out)


def _yesNo(value: Any) -> bool:
    if isinstance(value, str) and value.strip().lower() in ("yes", "no", "true", "false"):
        return value.strip().lower() in ("yes", "true")
    return _boolean(value)


def _bareNewlines(value: Any) -> str:
    choice = {"reject": "reject", "normalise": "normalise", "normalize": "normalise"}.get(value)
    if choice is None:
        raise ConfigError(f"expected reject or normalise, not {value!r}")
    return choice


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"expected true or false, not {value!r}")
    return value


def _delay(value: Any) -> float:
    if value in (0, "0", 0.0):
        return 0.0
    return _seconds(value)


def _authTypes(value: Any) -> tuple[str, ...]:
    """strcred descriptions whose auth type exists; nothing is built (no file read)."""
    from twisted.cred import strcred

    descriptions = _strings(value)
    for d in descriptions:
        authType = d.split(":", 1)[0]
        try:
            strcred.findCheckerFactory(authType)
        except strcred.InvalidAuthType:
            known = ", ".join(sorted(f.authType for f in strcred.findCheckerFactories()))
            raise ConfigError(f"unknown auth type {authType!r} (known: {known})")
    return descriptions


#: Every setting: its name (the long option) and its converter.
SETTINGS: Mapping[str, Callable[[Any], Any]] = {
    "listen": _listen,
    "hostname": _hostname,
    "domain": _domains,
    "validate": _validate,
    "deliver": _deliver,
    "max-size": parseSize,
    "max-recipients": _count(1),
    "max-errors": _count(1),
    "timeout": _seconds,
    "data-timeout": _seconds,
    "bare-newlines": _bareNewlines,
    "transcript": _boolean,
    "quiet": _boolean,
    "tls-cert": _strings,
    "tls-key": _strings,
    "tls": _boolean,
    "implicit-tls": _boolean,
    "auth": _authTypes,
    "auth-plaintext": _boolean,
    "require-auth": _boolean,
    "auth-failures": _count(1),
    "auth-failure-delay": _delay,
    "auth-client-failures": _count(1),
    "auth-client-window": _seconds,
    "auth-client-block": _seconds,
    "submission": _listen,
    "submissions": _listen,
    "filter": _filters,
    "limits": _limits,
    "enforce-sync": _yesNo,
    "greet-delay": _delay,
    "error-delay": _delay,
    "soft-errors": _count(0),
    "proxy-network": _cidrs,
    **QUEUE_SETTINGS,  # spool, relay-host, relay-network, routes, retry ... (mailframe.queue)
}

#: Settings of the whole service, refused in [[listener]] tables.
TOP_LEVEL_ONLY = frozenset(
    {
        "submission",
        "submissions",
        "auth-client-failures",
        "auth-client-window",
        "auth-client-block",
    }
    | QUEUE_TOP_LEVEL
)

#: The pregreet wait of a listener where MAIL needs no AUTH (port 25 style);
#: submission listeners wait 0 (their clients are people's mail programs).
#: Only a client's first connection waits: one that passed is remembered.
DEFAULT_GREET_DELAY = 1.0

#: The defaults, already converted.  C{hostname} None means this host's name,
#: C{domain} empty means localhost and the host name.
DEFAULTS: Mapping[str, Any] = {
    "listen": ("tcp:2525:interface=127.0.0.1",),
    "hostname": None,
    "domain": (),
    "validate": ("any",),
    "deliver": "maildir:./Maildir",
    "max-size": 35 << 20,
    "max-recipients": 1000,
    "max-errors": 20,
    "timeout": 300.0,
    "data-timeout": 300.0,
    "bare-newlines": "reject",
    "transcript": False,
    "quiet": False,
    "tls-cert": (),
    "tls-key": (),
    "tls": False,
    "implicit-tls": False,
    "auth": (),
    "auth-plaintext": False,
    "require-auth": False,
    "auth-failures": 3,
    "auth-failure-delay": 1.0,
    "auth-client-failures": 10,
    "auth-client-window": 600.0,
    "auth-client-block": 900.0,
    "submission": (),
    "submissions": (),
    "filter": (),
    "limits": "",  # on, with the built-in values (1000 in all, 50 per client)
    "enforce-sync": True,
    "greet-delay": None,  # 1 s on listeners without AUTH required, 0 on submission
    "error-delay": 0.0,
    "soft-errors": 3,
    "proxy-network": (),  # haproxy: endpoints then trust 127.0.0.0/8 and ::1 only
    **QUEUE_DEFAULTS,
}


def convert(name: str, value: Any, label: str | None = None) -> Any:
    """Convert and check one setting; a L{ConfigError} names it (or C{label})."""
    try:
        return SETTINGS[name](value)
    except (ConfigError, SettingError) as e:
        raise ConfigError(f"{label or name}: {e}")


# -- the config file ---------------------------------------------------------------


def readConfigFile(path: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """
    Read and check a TOML config file.

    @return: the top-level settings and one dict of settings per
        C{[[listener]]} table, all converted.
    @raise ConfigError: naming the file and the key.
    """
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}")
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: bad TOML: {_oneLine(e)}")
    tables = data.pop("listener", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ConfigError(f"{path}: 'listener' must be [[listener]] tables")
    top = _section(path, data, "")
    listeners = []
    for i, table in enumerate(tables, 1):
        where = f"[[listener]] {i}: "
        if "listen" not in table:
            raise ConfigError(f"{path}: {where}needs 'listen'")
        name = table.pop("name", "smtp")
        if not isinstance(name, str) or not name or any(c.isspace() for c in name):
            raise ConfigError(f"{path}: {where}name: expected a word, not {name!r}")
        settings = _section(path, table, where)
        settings["name"] = name
        listeners.append(settings)
    return top, listeners


def _section(path: str, data: dict[str, Any], where: str) -> dict[str, Any]:
    settings = {}
    for key, value in data.items():
        if key not in SETTINGS:
            known = ", ".join([*SETTINGS, "listener" if not where else "name"])
            raise ConfigError(f"{path}: {where}unknown key {key!r} (known: {known})")
        if where and key in TOP_LEVEL_ONLY:
            raise ConfigError(f"{path}: {where}{key!r} is a setting of the top level only")
        try:
            settings[key] = convert(key, value)
        except ConfigError as e:
            raise ConfigError(f"{path}: {where}{e}")
    return settings


# -- merging -------------------------------------------------------------------------


def buildListeners(
    command: Mapping[str, Any],
    fileTop: Mapping[str, Any] | None = None,
    fileListeners: list[dict[str, Any]] | None = None,
) -> list[ListenerSpec]:
    """
    One L{ListenerSpec} per listener from converted settings: the command
    line's replace the file's top-level ones, which a C{[[listener]]} table's
    replace in turn.  Without C{listen} at the top level but with listener
    tables or submission endpoints, only those listen.
    """
    top = {**DEFAULTS, **(fileTop or {}), **command}
    hostname: list[str] = []  # computed once, when needed

    def spec(settings: Mapping[str, Any], name: str) -> ListenerSpec:
        if settings["hostname"] is None and not hostname:
            hostname.append(defaultHostname())
        try:
            limits = Limits(
                messageSize=settings["max-size"],
                recipients=settings["max-recipients"],
                normaliseBareLineEndings=settings["bare-newlines"] == "normalise",
            )
            config = ServerConfig(
                hostname=settings["hostname"] or hostname[0],
                localDomains=frozenset(Domain(d) for d in settings["domain"]),
                limits=limits,
                listener=name,
                requireAuthentication=settings["require-auth"],
                commandTimeout=settings["timeout"],
                dataTimeout=settings["data-timeout"],
                maxErrors=settings["max-errors"],
                transcript=settings["transcript"],
                logMessages=not settings["quiet"],
                enforceSync=settings["enforce-sync"],
                greetDelay=(
                    settings["greet-delay"]
                    if settings["greet-delay"] is not None
                    else (0.0 if settings["require-auth"] else DEFAULT_GREET_DELAY)
                ),
                errorDelay=settings["error-delay"],
                softErrors=settings["soft-errors"],
                relayNetworks=settings["relay-network"],
            )
        except ValueError as e:
            raise ConfigError(_oneLine(e))
        listener = ListenerSpec(
            tuple(settings["listen"]),
            config,
            tuple(settings["validate"]),
            settings["deliver"],
            certificates=_pairs(settings["tls-cert"], settings["tls-key"]),
            selfSigned=settings["tls"],
            implicitTLS=settings["implicit-tls"],
            auth=tuple(settings["auth"]),
            authPlaintext=settings["auth-plaintext"],
            authFailures=settings["auth-failures"],
            authFailureDelay=settings["auth-failure-delay"],
            filters=tuple(settings["filter"]),
            limits=settings["limits"],
            proxyNetworks=tuple(settings["proxy-network"]),
        )
        _checkListener(listener)
        return listener

    listeners = []
    submissions = [
        (name, endpoints) for name in ("submission", "submissions") if (endpoints := top[name])
    ]
    if "listen" in command or "listen" in (fileTop or {}) or not (fileListeners or submissions):
        listeners.append(spec(top, "smtp"))
    for name, endpoints in submissions:
        settings = {**top, "listen": endpoints, "require-auth": True}
        if name == "submissions":
            settings["implicit-tls"] = True
        listeners.append(spec(settings, name))
    for table in fileListeners or []:
        listeners.append(spec({**top, **table}, table.get("name", "smtp")))
    return listeners


def _pairs(certs: tuple[str, ...], keys: tuple[str, ...]) -> tuple[tuple[str, str | None], ...]:
    if keys and len(keys) != len(certs):
        raise ConfigError(
            "give one tls-key per tls-cert, in the same order "
            "(or none, if each certificate file holds its key)"
        )
    return tuple(zip(certs, keys or (None,) * len(certs), strict=True))


def _checkListener(spec: ListenerSpec) -> None:
    name = spec.config.listener
    if spec.implicitTLS and not spec.hasTLS:
        raise ConfigError(f"the {name} listener speaks TLS: give tls-cert and tls-key, or tls")
    if spec.config.requireAuthentication:
        if not spec.auth:
            raise ConfigError(
                f"the {name} listener requires AUTH: give auth (e.g. memory:USER:PASS)"
            )
        if not spec.hasTLS and not spec.authPlaintext:
            raise ConfigError(
                f"the {name} listener requires AUTH, offered only inside TLS: give tls-cert "
                "and tls-key (or tls), or auth-plaintext for tests"
            )


def clientLimits(
    command: Mapping[str, Any], fileTop: Mapping[str, Any] | None = None
) -> ClientLimits:
    """The per-client AUTH failure limits of the service."""
    top = {**DEFAULTS, **(fileTop or {}), **command}
    return ClientLimits(
        top["auth-client-failures"], top["auth-client-window"], top["auth-client-block"]
    )


def _oneLine(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
