"""
The settings of a milter: where it listens (L{MilterAddress}, Postfix's
syntax) and how mailframe treats it (L{MilterSettings}: time limits,
default action, listeners), and reading them from the command line or a
TOML table (L{parseMilters}).

Owns: checking a milter's settings.  Must not: import the reactor, or
connect anywhere.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mailframe.plugins import Duration, SettingError

if TYPE_CHECKING:
    from twisted.internet.interfaces import IStreamClientEndpoint

__all__ = ["DEFAULT_ACTIONS", "TABLE_KEYS", "MilterAddress", "MilterSettings", "parseMilters"]

DEFAULT_ACTIONS = ("accept", "tempfail")

_INET_RE = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:\[\]]+)):(?P<port>\d{1,5})\Z")


@dataclass(frozen=True)
class MilterAddress:
    """
    Where a milter listens, in Postfix's syntax: C{inet:HOST:PORT} (an IPv6
    address in brackets, C{inet:[::1]:8891}), C{unix:PATH} or C{local:PATH}.
    """

    text: str
    kind: str
    host: str = ""
    port: int = 0
    path: str = ""

    @classmethod
    def parse(cls, text: str) -> MilterAddress:
        """@raise ValueError: one line saying what is wrong."""
        kind, colon, rest = text.strip().partition(":")
        if not colon or not rest:
            raise ValueError(f"expected inet:HOST:PORT or unix:PATH, not {text!r}")
        kind = kind.lower()
        if kind in ("unix", "local"):
            return cls(text, "unix", path=rest)
        if kind == "inet":
            m = _INET_RE.match(rest)
            if m is None or not 0 < int(m.group("port")) < 65536:
                raise ValueError(f"expected inet:HOST:PORT (inet:[::1]:PORT), not {text!r}")
            return cls(text, "inet", m.group("v6") or m.group("host"), int(m.group("port")))
        raise ValueError(f"unknown milter transport {kind!r} (inet or unix) in {text!r}")

    def endpoint(self, reactor: Any, timeout: float) -> IStreamClientEndpoint:
        """A client endpoint that gives up connecting after C{timeout} seconds."""
        from twisted.internet.endpoints import (
            HostnameEndpoint,
            TCP4ClientEndpoint,
            TCP6ClientEndpoint,
            UNIXClientEndpoint,
        )

        if self.kind == "unix":
            return UNIXClientEndpoint(reactor, self.path, timeout=timeout)
        if ":" in self.host:
            return TCP6ClientEndpoint(reactor, self.host, self.port, timeout=timeout)
        if self.host.replace(".", "").isdigit():
            return TCP4ClientEndpoint(reactor, self.host, self.port, timeout=timeout)
        return HostnameEndpoint(reactor, self.host, self.port, timeout=timeout)

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class MilterSettings:
    """
    One milter: where it listens, its time limits (seconds: to connect, for
    each answer to a command, for each answer about the message's content
    and its end), what to do when it fails (C{defaultAction}), and the
    listeners it applies to (empty: all).
    """

    address: MilterAddress
    connectTimeout: float = 10.0
    commandTimeout: float = 30.0
    eomTimeout: float = 180.0
    defaultAction: str = "tempfail"
    listeners: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.defaultAction not in DEFAULT_ACTIONS:
            raise ValueError(
                f"default-action must be accept or tempfail, not {self.defaultAction!r}"
            )
        if min(self.connectTimeout, self.commandTimeout, self.eomTimeout) <= 0:
            raise ValueError("a milter's time limits must be positive")

    @property
    def name(self) -> str:
        return str(self.address)

    def appliesTo(self, listener: str) -> bool:
        return not self.listeners or listener in self.listeners


_DURATION = Duration(maximum=3600.0)

#: The keys of a milter's table in the config file, and their attribute.
TABLE_KEYS = {
    "address": "address",
    "connect-timeout": "connectTimeout",
    "command-timeout": "commandTimeout",
    "eom-timeout": "eomTimeout",
    "default-action": "defaultAction",
    "listeners": "listeners",
}


def _one(item: object) -> MilterSettings:
    if isinstance(item, str):
        return MilterSettings(MilterAddress.parse(item))
    if not isinstance(item, Mapping):
        raise SettingError(f"expected inet:HOST:PORT, unix:PATH or a table, not {item!r}")
    unknown = sorted(set(item) - set(TABLE_KEYS))
    if unknown:
        raise SettingError(
            f"unknown milter settings {', '.join(unknown)} (known: {', '.join(TABLE_KEYS)})"
        )
    if not isinstance(item.get("address"), str):
        raise SettingError('a milter\'s table needs address = "inet:HOST:PORT" or "unix:PATH"')
    values: dict[str, Any] = {"address": MilterAddress.parse(item["address"])}
    for key in ("connect-timeout", "command-timeout", "eom-timeout"):
        if key in item:
            try:
                values[TABLE_KEYS[key]] = _DURATION(item[key])
            except SettingError as e:
                raise SettingError(f"{key}: {e}") from None
    if "default-action" in item:
        values["defaultAction"] = item["default-action"]
    if "listeners" in item:
        listeners = item["listeners"]
        if isinstance(listeners, str):
            listeners = [listeners]
        if not isinstance(listeners, list) or not all(isinstance(n, str) for n in listeners):
            raise SettingError(f"listeners: expected listener names, not {listeners!r}")
        values["listeners"] = tuple(listeners)
    return MilterSettings(**values)


def parseMilters(value: object) -> tuple[MilterSettings, ...]:
    """
    Milters from the command line (C{inet:HOST:PORT} strings) or the config
    file (a list of such strings and tables).

    @raise SettingError: one line.
    """
    items = value if isinstance(value, list | tuple) else [value]
    try:
        return tuple(_one(item) for item in items)
    except SettingError:
        raise
    except ValueError as e:
        raise SettingError(str(e).splitlines()[0]) from None
