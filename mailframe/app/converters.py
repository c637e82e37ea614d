"""
The converters of C{twistd mailframe}'s settings that need the application
(endpoints, host names, plug-in descriptions, AUTH checkers, the relay's
next hops and tables); the plain ones (durations, sizes, counts, yes/no,
networks) are shared with the plug-ins, in L{mailframe.plugins}.

Each takes a command-line string or a TOML value and returns the setting's
value, or raises L{SettingError} with a one-line message that does not name
the setting (L{mailframe.app.settings.Setting.parse} does).

Must not: import the reactor or a provider module at import time, build
anything, or touch the file system (except what Twisted's endpoint parsers
read, such as an C{ssl:} endpoint's certificate).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from zope.interface.interface import InterfaceClass

from mailframe.address import Domain
from mailframe.app import registry
from mailframe.app.endpoints import checkServerEndpoint
from mailframe.interfaces import IConnectionFilter, IDeliveryBackend, IRecipientValidator
from mailframe.plugins import Duration, SettingError, oneLine

__all__ = [
    "HOPS",
    "ROUTING_KEYS",
    "Boolean",
    "authTypes",
    "bareNewlines",
    "checkRouting",
    "deliver",
    "domains",
    "endpoints",
    "filters",
    "hostname",
    "limits",
    "milters",
    "nextHop",
    "path",
    "relayKey",
    "relayTable",
    "routes",
    "string",
    "strings",
    "syncMode",
    "tlsPolicy",
    "validate",
]


class Boolean:
    """A TOML true or false (on the command line, a flag)."""

    metavar = ""

    def __call__(self, value: object) -> bool:
        if not isinstance(value, bool):
            raise SettingError(f"expected true or false, not {value!r}")
        return value

    def format(self, value: object) -> str:
        return "on" if value else "off"


def string(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise SettingError(f"expected a non-empty string, not {value!r}")
    return value


def path(value: object) -> str:
    return string(value).strip()


def spool(value: object) -> str:
    """A spool directory, or a URL of a known scheme (postgresql://...): one line if not."""
    from mailframe.queue.location import LocationError, parseSpool

    text = path(value)
    try:
        parseSpool(text)
    except LocationError as e:
        raise SettingError(str(e)) from None
    return text


def strings(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple) or not value:
        raise SettingError(f"expected a list of strings, not {value!r}")
    return tuple(string(v) for v in value)


def endpoints(value: object) -> tuple[str, ...]:
    """Server endpoint strings, each parsed (nothing listens)."""
    out = []
    for description in strings(value):
        try:
            checkServerEndpoint(description)
        except Exception as e:
            raise SettingError(f"bad endpoint {description!r}: {oneLine(e)}") from None
        out.append(description)
    return tuple(out)


def hostname(value: object) -> str:
    name = string(value)
    try:
        Domain.parse(name)
    except ValueError:
        raise SettingError(f"not a host name: {name!r}") from None
    return name


def domains(value: object) -> tuple[str, ...]:
    names = [n.strip() for v in strings(value) for n in v.split(",") if n.strip()]
    for name in names:
        try:
            Domain.parse(name)
        except ValueError as e:
            raise SettingError(oneLine(e)) from None
    return tuple(names)


def _plugIn(interface: InterfaceClass, description: str) -> str:
    registry.checkDescription(interface, description)  # PlugInError is a SettingError
    return description


def validate(value: object) -> tuple[str, ...]:
    """Recipient validator descriptions, each checked."""
    return tuple(_plugIn(IRecipientValidator, d) for d in strings(value))


def deliver(value: object) -> str:
    """A delivery backend description, checked."""
    return _plugIn(IDeliveryBackend, string(value))


def deliverRoutes(value: object) -> dict[str, str]:
    """A table of domain (or C{.domain}) = delivery backend description, each checked."""
    if not isinstance(value, Mapping):
        raise SettingError("expected a table of domain = delivery backend ('pipe:...' ...)")
    out: dict[str, str] = {}
    for name, description in value.items():
        try:
            Domain.parse(str(name).strip().removeprefix(".").rstrip("."))
        except ValueError:
            raise SettingError(f"not a domain: {name!r}") from None
        try:
            out[str(name).strip()] = deliver(description)
        except SettingError as e:
            raise SettingError(f"{name}: {e}") from None
    return out


def filters(value: object) -> tuple[str, ...]:
    """--filter descriptions, each checked."""
    descriptions = strings(value)
    for d in descriptions:
        registry.checkFilter(d)
    return descriptions


def milters(value: object) -> tuple[Any, ...]:
    """Milters: C{inet:HOST:PORT} / C{unix:PATH} strings, or tables (the config file)."""
    from mailframe.milter.settings import parseMilters

    return parseMilters(value)


def limits(value: object) -> str | None:
    """The options of the connection limits (C{client=20:rate=30}), "" for theirs, or C{off}."""
    if value is False or (isinstance(value, str) and value.strip().lower() in ("off", "no")):
        return None
    if not isinstance(value, str):
        raise SettingError(f"expected options such as client=20:rate=30, or off; not {value!r}")
    value = value.strip()
    _plugIn(IConnectionFilter, f"limits:{value}" if value else "limits")
    return value


def bareNewlines(value: Any) -> str:
    choice = {"reject": "reject", "normalise": "normalise", "normalize": "normalise"}.get(value)
    if choice is None:
        raise SettingError(f"expected reject or normalise, not {value!r}")
    return choice


def authTypes(value: object) -> tuple[str, ...]:
    """strcred descriptions whose auth type exists; nothing is built (no file read)."""
    from twisted.cred import strcred

    descriptions = strings(value)
    for d in descriptions:
        authType = d.split(":", 1)[0]
        try:
            strcred.findCheckerFactory(authType)
        except strcred.InvalidAuthType:
            known = ", ".join(sorted(f.authType for f in strcred.findCheckerFactories()))
            raise SettingError(f"unknown auth type {authType!r} (known: {known})") from None
    return descriptions


# -- the queue and the relay ----------------------------------------------------------


def nextHop(value: object) -> str:
    from mailframe.client.routing import parseNextHop

    text = string(value)
    try:
        parseNextHop(text)
    except ValueError as e:
        raise SettingError(f"bad relay host {text!r}: {oneLine(e)}") from None
    return text


def tlsPolicy(value: object) -> str:
    from mailframe.client import checkTLSPolicy

    try:
        return str(checkTLSPolicy(string(value)))
    except ValueError as e:
        raise SettingError(oneLine(e)) from None


def syncMode(value: object) -> str:
    from mailframe.queue.spool import SYNC_MODES, syncfsAvailable

    text = string(value).strip().lower()
    if text not in SYNC_MODES:
        raise SettingError(f"expected {' or '.join(SYNC_MODES)}, not {value!r}")
    if text == "syncfs" and not syncfsAvailable():
        raise SettingError("syncfs needs Linux's syncfs(2)")
    return text


def relayKey(name: str) -> str:
    """A relay table's key as the relay compares it: C{Connect_Timeout} is connecttimeout."""
    return name.strip().lower().replace("-", "").replace("_", "")


#: The keys of the relay's table that the router reads, and its two hop tables.
ROUTING_KEYS = frozenset({"tls", "smarthosttls", "routetls", "addressorder", "maxhosts", "port"})
HOPS = frozenset({"smarthost", "routes"})
_OWN_KEYS = frozenset({"connecttimeout", "maxattempts", "keepalive", "maxmessages", "cafile",
                       "pipelining", "chunking", "transcript", "timeouts",
                       # outbound TLS (mailframe.client.tlsconfig)
                       "dane", "mtasts", "mtastsskip", "tlsstate", "tlsrptorg",
                       "tlsrptsender"})  # fmt: skip
_RELAY_KEYS = ROUTING_KEYS | _OWN_KEYS | HOPS
_SECONDS = Duration()
_SECONDS_OR_ZERO = Duration(zero=True)


def checkRouting(data: Mapping[str, Any]) -> None:
    """Check routing data the way the relay's router will read it."""
    from mailframe.client.routing import Router

    try:
        Router.fromConfig(data)
    except (ValueError, TypeError) as e:
        raise SettingError(" ".join(str(e).split()) or type(e).__name__) from None


def routes(value: object) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise SettingError("expected a table of domain = route ('local', a host, or a table)")
    checkRouting({"routes": dict(value)})
    return dict(value)


def _seconds(key: str, value: object, zero: bool = False) -> float:
    try:
        return (_SECONDS_OR_ZERO if zero else _SECONDS)(value)
    except SettingError as e:
        raise SettingError(f"{key}: {e}") from None


def relayTable(value: object) -> dict[str, Any]:
    """
    The C{[relay]} table: its keys checked, its durations (C{connect-timeout},
    C{keep-alive}, the C{timeouts} table) made seconds.
    """
    if not isinstance(value, Mapping):
        raise SettingError("expected a table of relay settings")
    unknown = sorted(k for k in value if relayKey(k) not in _RELAY_KEYS)
    if unknown:
        raise SettingError(f"unknown relay settings: {', '.join(unknown)}")
    checkRouting({k: v for k, v in value.items() if relayKey(k) in ROUTING_KEYS | HOPS})
    table = dict(value)
    for key, item in value.items():
        if relayKey(key) in ("connecttimeout", "keepalive"):
            table[key] = _seconds(key, item, zero=relayKey(key) == "keepalive")
        elif relayKey(key) == "timeouts":
            if not isinstance(item, Mapping):
                raise SettingError(f"{key}: expected a table of timeouts, not {item!r}")
            table[key] = {name: _seconds(f"{key}: {name}", t) for name, t in item.items()}
    return table
