"""
Merging C{twistd mailframe}'s settings: the TOML config file is read and
checked against the table of settings (L{mailframe.app.settings}), then
merged with the command line into one L{ListenerSpec} per listener, the
service's L{ClientLimits} and the queue's L{QueueSpec}.

A C{[[listener]]} table takes C{listen} (required), C{name}, and any other
setting that is not of the top level only, which it otherwise inherits from
the top level.  Command-line options replace the file's top-level values.
C{submission} and C{submissions} endpoints (top level only) add listeners
named so, where MAIL needs AUTH; C{submissions} ones speak TLS from the
first byte.  C{lmtp} endpoints add a listener named lmtp that speaks LMTP
(so does a C{[[listener]]} named lmtp), never on port 25.  The queue is
on when C{spool}, C{relay-host}, C{routes} or C{relay} is set, or a
listener has C{relay-network}s (relayed mail needs somewhere to wait).

Owns: settings that must fit together, so that a mistake is a one-line
L{SettingError} before anything starts.  Must not: import the reactor,
build providers or touch the file system except to read the config file
(that is L{mailframe.app.tap.makeService}'s job).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mailframe.address import Domain
from mailframe.app.converters import HOPS, ROUTING_KEYS, checkRouting, relayKey
from mailframe.app.settings import (
    COMMAND,
    DEFAULT_GREET_DELAY,
    DEFAULTS,
    SCHEMA,
    SETTINGS,
    TOP_LEVEL_ONLY,
)
from mailframe.config import ServerConfig, defaultHostname
from mailframe.plugins import SettingError, oneLine

if TYPE_CHECKING:
    from ipaddress import IPv4Network, IPv6Network
from mailframe.protocol import Limits
from mailframe.queue.limits import RetryPolicy
from mailframe.queue.location import PostgresLocation, parseSpool
from mailframe.queue.settings import DEFAULT_SPOOL, QueueSpec

__all__ = [
    "ClientLimits",
    "ListenerSpec",
    "SettingError",
    "buildListeners",
    "clientLimits",
    "queueSpec",
    "readConfigFile",
]


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
    xclientNetworks: tuple[str, ...] = ()
    milters: tuple[Any, ...] = ()  # MilterSettings, in order
    aliases: str | None = None
    virtual: str | None = None
    subaddress: str = ""
    deliverRoutes: Mapping[str, str] = field(default_factory=dict)

    @property
    def hasTLS(self) -> bool:
        return bool(self.certificates) or self.selfSigned


@dataclass(frozen=True)
class ClientLimits:
    """Failed AUTH attempts per client, shared by every listener of the service."""

    failures: int = 10
    window: float = 600.0
    block: float = 900.0


# -- the config file ---------------------------------------------------------------


def readConfigFile(path: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """
    Read and check a TOML config file.

    @return: the top-level settings and one dict of settings per
        C{[[listener]]} table, all converted.
    @raise SettingError: naming the file and the key.
    """
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise SettingError(f"cannot read config file {path}: {e.strerror or e}")
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise SettingError(f"{path}: bad TOML: {oneLine(e)}")
    tables = data.pop("listener", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise SettingError(f"{path}: 'listener' must be [[listener]] tables")
    top = _section(path, data, "")
    listeners = []
    for i, table in enumerate(tables, 1):
        where = f"[[listener]] {i}: "
        if "listen" not in table:
            raise SettingError(f"{path}: {where}needs 'listen'")
        name = table.pop("name", "smtp")
        if not isinstance(name, str) or not name or any(c.isspace() for c in name):
            raise SettingError(f"{path}: {where}name: expected a word, not {name!r}")
        settings = _section(path, table, where)
        settings["name"] = name
        listeners.append(settings)
    return top, listeners


#: The settings a config file may set (all but those of the command line only).
_FILE_KEYS = [s.name for s in SCHEMA if s.form != COMMAND]


def _section(path: str, data: dict[str, Any], where: str) -> dict[str, Any]:
    settings = {}
    for key, value in data.items():
        if key not in _FILE_KEYS:
            known = ", ".join([*_FILE_KEYS, "listener" if not where else "name"])
            raise SettingError(f"{path}: {where}unknown key {key!r} (known: {known})")
        if where and key in TOP_LEVEL_ONLY:
            raise SettingError(f"{path}: {where}{key!r} is a setting of the top level only")
        try:
            settings[key] = SETTINGS[key].parse(value)
        except SettingError as e:
            raise SettingError(f"{path}: {where}{e}") from None
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
                lmtp=name == "lmtp",
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
                    else (
                        0.0 if settings["require-auth"] or name == "lmtp" else DEFAULT_GREET_DELAY
                    )
                ),
                errorDelay=settings["error-delay"],
                softErrors=settings["soft-errors"],
                relayNetworks=settings["relay-network"],
            )
        except ValueError as e:
            raise SettingError(oneLine(e)) from None
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
            xclientNetworks=tuple(settings["xclient-network"]),
            milters=tuple(m for m in settings["milter"] if m.appliesTo(name)),
            aliases=settings["aliases"],
            virtual=settings["virtual"],
            subaddress=settings["subaddress"],
            deliverRoutes=settings["deliver-routes"],
        )
        _checkListener(listener)
        return listener

    listeners = []
    submissions = [
        (name, endpoints) for name in ("submission", "submissions") if (endpoints := top[name])
    ]
    others = fileListeners or submissions or top["lmtp"]
    if "listen" in command or "listen" in (fileTop or {}) or not others:
        listeners.append(spec(top, "smtp"))
    if top["lmtp"]:
        listeners.append(spec({**top, "listen": top["lmtp"]}, "lmtp"))
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
        raise SettingError(
            "give one tls-key per tls-cert, in the same order "
            "(or none, if each certificate file holds its key)"
        )
    return tuple(zip(certs, keys or (None,) * len(certs), strict=True))


def _checkListener(spec: ListenerSpec) -> None:
    name = spec.config.listener
    if spec.config.lmtp:
        _notPort25(spec.endpoints)
    if spec.implicitTLS and not spec.hasTLS:
        raise SettingError(f"the {name} listener speaks TLS: give tls-cert and tls-key, or tls")
    if spec.config.requireAuthentication:
        if not spec.auth:
            raise SettingError(
                f"the {name} listener requires AUTH: give auth (e.g. memory:USER:PASS)"
            )
        if not spec.hasTLS and not spec.authPlaintext:
            raise SettingError(
                f"the {name} listener requires AUTH, offered only inside TLS: give tls-cert "
                "and tls-key (or tls), or auth-plaintext for tests"
            )


def _notPort25(endpoints: Sequence[str]) -> None:
    """RFC 2033 5: LMTP is never offered on the SMTP port."""
    from mailframe.app.endpoints import tcpListenAddress

    for endpoint in endpoints:
        plain = endpoint[8:] if endpoint.lower().startswith("haproxy:") else endpoint
        try:
            port = tcpListenAddress(plain).port
        except Exception:
            continue  # not tcp (unix, systemd ...), or checked when it listens
        if port == 25:
            raise SettingError(
                f"the lmtp listener may not use port 25 ({endpoint}): LMTP must never be "
                "offered on the SMTP port (RFC 2033 5)"
            )


def clientLimits(
    command: Mapping[str, Any], fileTop: Mapping[str, Any] | None = None
) -> ClientLimits:
    """The per-client AUTH failure limits of the service."""
    top = {**DEFAULTS, **(fileTop or {}), **command}
    return ClientLimits(
        top["auth-client-failures"], top["auth-client-window"], top["auth-client-block"]
    )


def _outboundTLS(relay: dict[str, Any], top: Mapping[str, Any], given: Mapping[str, Any]) -> None:
    """The outbound TLS settings (dane, mta-sts ...) into the relay's table, over its own."""
    for name in ("dane", "mta-sts", "mta-sts-skip", "tls-state", "tlsrpt-org", "tlsrpt-sender"):
        if name in given:
            for key in [k for k in relay if relayKey(k) == relayKey(name)]:
                del relay[key]
            relay[name] = top[name]
    if not any(relayKey(k) == "tlsstate" for k in relay):
        spool = parseSpool(top["spool"] or DEFAULT_SPOOL)
        if isinstance(spool, str):
            relay["tls-state"] = os.path.join(os.path.abspath(spool), "tls-state")
    if (relay.get("tlsrpt-org") is None) != (relay.get("tlsrpt-sender") is None):
        raise SettingError("give tlsrpt-org and tlsrpt-sender together")


def queueSpec(
    command: Mapping[str, Any],
    fileTop: Mapping[str, Any] | None,
    relayNetworks: Sequence[IPv4Network | IPv6Network] = (),
) -> QueueSpec | None:
    """
    The L{QueueSpec}, or None when the queue is off (see the module
    docstring).  C{command} and C{fileTop} are converted settings, the
    command line's replacing the file's; C{relayNetworks}: those of every
    listener.

    @raise SettingError: for settings that do not fit together.
    """
    given = {**(fileTop or {}), **command}
    top = {**DEFAULTS, **given}
    for name in ("relay-user", "relay-password", "relay-tls"):
        if top[name] is not None and top["relay-host"] is None:
            raise SettingError(f"{name} needs relay-host")
    if (top["relay-user"] is None) != (top["relay-password"] is None):
        raise SettingError("give relay-user and relay-password together")
    if not ({"spool", "relay-host", "routes", "relay"} & set(given)) and not relayNetworks:
        for name in ("srs-secret", "srs-domain"):
            if top[name] is not None:
                raise SettingError(f"{name} needs the queue (spool): forwarding goes through it")
        return None
    if top["srs-domain"] is not None and top["srs-secret"] is None:
        raise SettingError("srs-domain needs srs-secret")
    if not isinstance(parseSpool(top["spool"] or DEFAULT_SPOOL), PostgresLocation):
        for name in ("spool-password-file", "node-name"):
            if top[name] is not None:
                raise SettingError(f"{name} needs a postgresql:// spool")
    try:
        retry = RetryPolicy(
            initial=top["retry-initial"],
            maximum=top["retry-max"],
            giveUp=top["give-up"],
            delayWarning=top["delay-warning"],
        )
    except ValueError:
        initial, maximum = SETTINGS["retry-initial"], SETTINGS["retry-max"]
        raise SettingError(
            f"retry-initial must be at most retry-max (defaults {initial.defaultText} "
            f"and {maximum.defaultText})"
        ) from None
    relay: dict[str, Any] = {
        relayKey(k) if relayKey(k) in HOPS else k: v for k, v in top["relay"].items()
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
    _outboundTLS(relay, top, given)
    checkRouting({k: v for k, v in relay.items() if relayKey(k) in ROUTING_KEYS | HOPS})
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
        srsSecret=top["srs-secret"],
        srsDomain=top["srs-domain"],
        passwordFile=top["spool-password-file"],
        nodeName=top["node-name"],
        lease=top["queue-lease"],
    )
