"""
The queue's settings of C{twistd mailframe} (C{spool}, C{relay-host},
C{relay-network}, C{routes}, the retry and report settings ...): their
converters, defaults, and L{queueSpec}, which decides whether the queue is
on and gathers them into a L{QueueSpec}.

The queue is on when C{spool}, C{relay-host}, C{routes} or C{relay} is
set, or a listener has C{relay-network}s (relayed mail needs somewhere to wait);
its directory is then C{spool}, by default C{./spool}.  Without it the
server delivers everything with its C{deliver} backend, as before.

Owns: checking these settings, so that a mistake is a one-line error
before anything starts.  Must not: import the reactor, build anything or
touch the file system.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import ip_network
from typing import Any

from mailframe.queue.limits import RetryPolicy

__all__ = [
    "QUEUE_DEFAULTS",
    "QUEUE_SETTINGS",
    "QUEUE_TOP_LEVEL",
    "QueueSpec",
    "SettingError",
    "parseDuration",
    "queueSpec",
]

DEFAULT_SPOOL = "./spool"


class SettingError(ValueError):
    """A bad queue setting; the message is one line."""


_DURATION_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*\Z", re.IGNORECASE)
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parseDuration(value: Any, allowZero: bool = False) -> float:
    """Seconds from a number or a string such as C{"300"}, C{"5m"}, C{"1.5h"}, C{"5d"}."""
    if isinstance(value, bool):
        raise SettingError(f"expected a duration (300, 5m, 1h, 5d), not {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION_RE.match(value)):
        seconds = float(m.group(1)) * _UNITS[m.group(2).lower()]
    elif isinstance(value, str) and allowZero and value.strip().lower() in ("off", "no"):
        seconds = 0.0
    else:
        raise SettingError(f"expected a duration (300, 5m, 1h, 5d), not {value!r}")
    if (
        seconds != seconds
        or seconds == float("inf")
        or seconds < 0
        or (seconds == 0 and not allowZero)
    ):
        raise SettingError(f"must be a positive duration, not {value!r}")
    return seconds


def _durationOrOff(value: Any) -> float:
    return parseDuration(value, allowZero=True)


_SIZE_RE = re.compile(r"\s*(\d+)\s*([KMG]?)(?:I?B)?\s*\Z", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parseSize(value: Any) -> int:
    """Octets from an int or a string such as C{"35M"} (K, M, G are powers of 1024)."""
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    elif isinstance(value, str) and (m := _SIZE_RE.match(value)):
        size = int(m.group(1)) * _SIZE_UNITS[m.group(2).upper()]
    else:
        raise SettingError(f"bad size {value!r} (octets, or a number with K, M or G)")
    if size < 0:
        raise SettingError(f"bad size {value!r}: may not be negative")
    return size


_size = parseSize


def _count(value: Any) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise SettingError(f"expected a whole number of at least 1, not {value!r}")
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise SettingError(f"expected a non-empty string, not {value!r}")
    return value


def _path(value: Any) -> str:
    return _text(value).strip()


def _nextHop(value: Any) -> str:
    from mailframe.client.routing import parseNextHop

    text = _text(value)
    try:
        parseNextHop(text)
    except ValueError as e:
        raise SettingError(f"bad relay host {text!r}: {e}") from None
    return text


def _networks(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise SettingError(f"expected a list of networks (CIDR), not {value!r}")
    out = []
    for item in value:
        for text in _text(item).split(","):
            text = text.strip()
            try:
                out.append(str(ip_network(text, strict=False)))
            except ValueError:
                raise SettingError(f"not a network: {text!r} (e.g. 192.0.2.0/24)") from None
    return tuple(out)


def _tlsPolicy(value: Any) -> str:
    from mailframe.client import checkTLSPolicy

    try:
        return checkTLSPolicy(_text(value))
    except ValueError as e:
        raise SettingError(str(e)) from None


def _syncMode(value: Any) -> str:
    from mailframe.queue.spool import SYNC_MODES, syncfsAvailable

    text = _text(value).strip().lower()
    if text not in SYNC_MODES:
        raise SettingError(f"expected {' or '.join(SYNC_MODES)}, not {value!r}")
    if text == "syncfs" and not syncfsAvailable():
        raise SettingError("syncfs needs Linux's syncfs(2)")
    return text


def _routes(value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise SettingError("expected a table of domain = route ('local', a host, or a table)")
    _checkRouting({"routes": dict(value)})
    return dict(value)


_ROUTING_KEYS = frozenset({"tls", "smarthosttls", "routetls", "addressorder", "maxhosts", "port"})
_HOPS = frozenset({"smarthost", "routes"})
_OWN_KEYS = ("connecttimeout", "maxattempts", "keepalive", "maxmessages", "cafile", "pipelining",
             "chunking", "transcript", "timeouts")  # fmt: skip
_RELAY_KEYS = _ROUTING_KEYS | set(_OWN_KEYS) | {"smarthost", "routes"}


def _key(name: str) -> str:
    return name.strip().lower().replace("-", "").replace("_", "")


def _relayTable(value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise SettingError("expected a table of relay settings")
    unknown = sorted(k for k in value if _key(k) not in _RELAY_KEYS)
    if unknown:
        raise SettingError(f"unknown relay settings: {', '.join(unknown)}")
    _checkRouting({k: v for k, v in value.items() if _key(k) in _ROUTING_KEYS | _HOPS})
    for name in ("connecttimeout", "keepalive"):
        for k, v in value.items():
            if _key(k) == name and (isinstance(v, bool) or not isinstance(v, int | float)):
                raise SettingError(f"{k}: expected a number of seconds, not {v!r}")
    return dict(value)


def _checkRouting(data: Mapping[str, Any]) -> None:
    from mailframe.client.routing import Router

    try:
        Router.fromConfig(data)
    except (ValueError, TypeError) as e:
        raise SettingError(" ".join(str(e).split()) or type(e).__name__) from None


#: The queue's settings and their converters (merged into _tapconfig.SETTINGS).
QUEUE_SETTINGS: Mapping[str, Callable[[Any], Any]] = {
    "spool": _path,
    "spool-threads": _count,
    "spool-sync": _syncMode,
    "relay-host": _nextHop,
    "relay-tls": _tlsPolicy,
    "relay-user": _text,
    "relay-password": _text,
    "relay-network": _networks,
    "routes": _routes,
    "relay": _relayTable,
    "retry-initial": parseDuration,
    "retry-max": parseDuration,
    "give-up": parseDuration,
    "delay-warning": _durationOrOff,
    "bounce-body-size": _size,
    "bounce-full-size": _size,
    "queue-connections": _count,
    "queue-destination-connections": _count,
}

#: Settings of the whole service (C{relay-network} is a listener's).
QUEUE_TOP_LEVEL = frozenset(set(QUEUE_SETTINGS) - {"relay-network"})

QUEUE_DEFAULTS: Mapping[str, Any] = {
    "spool": None,
    "spool-threads": 8,
    "spool-sync": "fsync",
    "relay-host": None,
    "relay-tls": None,
    "relay-user": None,
    "relay-password": None,
    "relay-network": (),
    "routes": {},
    "relay": {},
    "retry-initial": 300.0,
    "retry-max": 3600.0,
    "give-up": 5 * 86400.0,
    "delay-warning": 0.0,
    "bounce-body-size": 16 << 10,
    "bounce-full-size": 1 << 20,
    "queue-connections": 20,
    "queue-destination-connections": 5,
}


@dataclass(frozen=True)
class QueueSpec:
    """
    The queue of C{twistd mailframe}: its directory, retry policy, report
    sizes, connection limits, and the relay's configuration (the data
    L{mailframe.client.relay.SMTPRelay.fromConfig} takes: C{smarthost}, C{routes}
    and the C{[relay]} table).
    """

    spool: str = DEFAULT_SPOOL
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    bounceBodySize: int = 16 << 10
    bounceFullSize: int = 1 << 20
    connections: int = 20
    destinationConnections: int = 5
    threads: int = 8
    sync: str = "fsync"
    relay: Mapping[str, Any] = field(default_factory=dict)

    @property
    def relayHost(self) -> str | None:
        smarthost = self.relay.get("smarthost")
        return smarthost.get("host") if isinstance(smarthost, Mapping) else None

    @property
    def localRoutes(self) -> tuple[str, ...]:
        """The domains (not C{.domain} patterns) that C{routes} sends to the local backend."""
        routes = self.relay.get("routes") or {}
        return tuple(
            d
            for d, r in routes.items()
            if isinstance(r, str) and r.strip().lower() == "local" and not d.startswith(".")
        )


def queueSpec(
    command: Mapping[str, Any],
    fileTop: Mapping[str, Any] | None,
    relayNetworks: Sequence[Any] = (),
) -> QueueSpec | None:
    """
    The L{QueueSpec}, or None when the queue is off (see the module
    docstring).  C{command} and C{fileTop} are converted settings, the
    command line's replacing the file's; C{relayNetworks}: those of every
    listener.

    @raise SettingError: for settings that do not fit together.
    """
    given = {**(fileTop or {}), **command}
    top = {**QUEUE_DEFAULTS, **given}
    for name in ("relay-user", "relay-password", "relay-tls"):
        if top[name] is not None and top["relay-host"] is None:
            raise SettingError(f"{name} needs relay-host")
    if (top["relay-user"] is None) != (top["relay-password"] is None):
        raise SettingError("give relay-user and relay-password together")
    if not ({"spool", "relay-host", "routes", "relay"} & set(given)) and not relayNetworks:
        return None
    try:
        retry = RetryPolicy(
            initial=top["retry-initial"],
            maximum=top["retry-max"],
            giveUp=top["give-up"],
            delayWarning=top["delay-warning"],
        )
    except ValueError:
        raise SettingError(
            "retry-initial must be at most retry-max (defaults 5m and 1h)"
        ) from None
    relay: dict[str, Any] = {
        _key(k) if _key(k) in _HOPS else k: v for k, v in top["relay"].items()
    }
    if top["relay-host"] is not None:
        smarthost: dict[str, Any] = {"host": top["relay-host"]}
        if top["relay-tls"] is not None:
            smarthost["tls"] = top["relay-tls"]
        if top["relay-user"] is not None:
            smarthost["username"] = top["relay-user"]
            smarthost["password"] = top["relay-password"]
        relay["smarthost"] = smarthost
    if top["routes"]:  # [routes] adds to (and overrides) [relay.routes]
        relay["routes"] = {**(relay.get("routes") or {}), **top["routes"]}
    _checkRouting({k: v for k, v in relay.items() if _key(k) in _ROUTING_KEYS | _HOPS})
    return QueueSpec(
        spool=top["spool"] or DEFAULT_SPOOL,
        retry=retry,
        bounceBodySize=top["bounce-body-size"],
        bounceFullSize=top["bounce-full-size"],
        connections=top["queue-connections"],
        destinationConnections=top["queue-destination-connections"],
        threads=top["spool-threads"],
        sync=top["spool-sync"],
        relay=relay,
    )
