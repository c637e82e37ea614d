"""
The web console of C{twistd mailframe} (C{--web}): L{webSettings} checks
the settings at parse time, L{addConsole} builds the L{ConsoleService}
with what the console shows (the capture store, the listener factories,
the queue's runner, the settings in force, redacted, and the web-auth
checkers) once the listeners and the queue are built.

Owns: turning the application's objects into the console's.  Must not:
import the reactor at import time.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from mailframe.app import converters as c
from mailframe.app.settings import SCHEMA
from mailframe.plugins import SettingError, oneLine, parseDescription

if TYPE_CHECKING:
    from mailframe.app.config import ListenerSpec
    from mailframe.app.security import Security
    from mailframe.queue.wiring import QueueWiring

__all__ = ["addConsole", "listenerSettings", "webSettings"]

_PATHS = frozenset({s.name for s in SCHEMA if s.convert is c.path} | {"tls-cert", "tls-key"})


def webSettings(top: Mapping[str, Any], workers: int = 1) -> dict[str, Any] | None:
    """
    The console's settings (C{web}, C{web-auth}, C{web-decisions}), or None
    without C{web}.  @raise SettingError: an endpoint off loopback without
    a login.
    """
    web = top.get("web")
    if web is None:
        return None
    if not top.get("web-auth"):
        from mailframe.web.api import checkWebEndpoint

        try:
            checkWebEndpoint(web, login=False)
        except ValueError as e:
            raise SettingError(f"--web: {oneLine(e)}; or set web-auth for a login") from None
    return {"web": web, "web-auth": tuple(top.get("web-auth") or ()),
            "web-decisions": top.get("web-decisions", 1000)}  # fmt: skip


def _plainRemote(description: str) -> bool:
    """Whether C{description} is a plain tcp: endpoint off loopback (passwords in clear)."""
    kind, _, options = parseDescription(description)
    if kind.lower() not in ("tcp", "tcp6"):
        return False
    interface = options.get("interface", "")
    try:
        return not ipaddress.ip_address(interface).is_loopback
    except ValueError:
        return interface != "localhost"


def consoleURL(description: str) -> str | None:
    """
    The address to open in a browser for a tcp:, tcp6: or ssl: endpoint
    with a fixed port (C{http://127.0.0.1:8025/}); None for others.
    """
    try:
        kind, args, options = parseDescription(description)
        port = int(options.get("port") or args[0])
    except (ValueError, IndexError):
        return None
    kind = kind.lower()
    if kind not in ("tcp", "tcp6", "ssl") or port == 0:
        return None
    host = options.get("interface") or ("::" if kind == "tcp6" else "0.0.0.0")
    if host in ("0.0.0.0", "::"):
        host = "localhost"
    elif ":" in host:
        host = f"[{host}]"
    return f"{'https' if kind == 'ssl' else 'http'}://{host}:{port}/"


def listenerSettings(spec: ListenerSpec) -> list[tuple[str, Any]]:
    """A listener's settings in force, by their setting names."""
    config = spec.config
    return [
        ("hostname", config.hostname),
        ("domain", sorted(str(d) for d in config.localDomains)),
        ("validate", list(spec.validate)),
        ("deliver", spec.deliver),
        ("deliver-routes", dict(spec.deliverRoutes)),
        ("max-size", config.limits.messageSize),
        ("max-recipients", config.limits.recipients),
        ("max-errors", config.maxErrors),
        ("timeout", config.commandTimeout),
        ("data-timeout", config.dataTimeout),
        ("require-auth", config.requireAuthentication),
        ("auth", list(spec.auth)),
        ("auth-plaintext", spec.authPlaintext),
        ("tls-cert", [cert for cert, _ in spec.certificates]),
        ("tls-key", [key for _, key in spec.certificates if key]),
        ("implicit-tls", spec.implicitTLS),
        ("filter", list(spec.filters)),
        ("limits", spec.limits),
        ("milter", [str(getattr(m, "address", m)) for m in spec.milters]),
        ("relay-network", [str(n) for n in config.relayNetworks]),
        ("proxy-network", list(spec.proxyNetworks)),
        ("xclient-network", list(spec.xclientNetworks)),
        ("greet-delay", config.greetDelay),
        ("enforce-sync", config.enforceSync),
        ("aliases", spec.aliases),
        ("virtual", spec.virtual),
        ("subaddress", spec.subaddress),
        ("quiet", not config.logMessages),
        ("transcript", config.transcript),
    ]


def settingsView(top: Mapping[str, Any], listeners: list[ListenerSpec]) -> dict[str, Any]:
    """The C{/api/v1/settings} answer: every top-level setting and each listener's, redacted."""
    from mailframe.web.settingsview import redactSettings

    names = [s.name for s in SCHEMA if s.name in top and s.name != "config"]
    return {
        "settings": redactSettings([(n, top[n]) for n in names], _PATHS),
        "listeners": [
            {
                "name": spec.config.listener,
                "endpoint": ", ".join(spec.endpoints),
                "endpoints": list(spec.endpoints),
                "settings": redactSettings(listenerSettings(spec), _PATHS),
            }
            for spec in listeners
        ],
    }


def addConsole(
    reactor: Any,
    options: Any,
    service: Any,
    security: Security,
    store: Any = None,
    queue: QueueWiring | None = None,
) -> None:
    """
    The console service (--web), a child of C{service} (a
    L{mailframe.app.tap.MailframeService}); nothing without --web.
    """
    web = getattr(options, "web", None)
    if web is None:
        return
    from mailframe.queue.operations import QueueOperations
    from mailframe.web.auth import WebLogin
    from mailframe.web.console import Console, ConsoleService

    description = web["web"]
    login = None
    if web["web-auth"]:
        checkers = [security.checker(d, "web-auth") for d in web["web-auth"]]
        try:
            login = WebLogin(reactor, checkers)
        except ValueError as e:
            raise SystemExit(f"mailframe: cannot set up --web-auth: {oneLine(e)}")
    runner = queue.service.runner if queue is not None else None
    top = getattr(options, "settingsInForce", {}) or {}
    console = Console(
        reactor,
        store=store,
        factories=service.factories,
        operations=QueueOperations(runner) if runner is not None else None,
        settings=settingsView(top, list(options.listeners)),
        login=login,
        hostname=options.listeners[0].config.hostname if options.listeners else "localhost",
        decisionsSize=web["web-decisions"],
    )
    try:
        child = ConsoleService(reactor, description, console)
    except Exception as e:
        raise SystemExit(f"mailframe: bad endpoint {description!r}: {oneLine(e)}")
    child.setServiceParent(service)
    service.endpoints[child] = description
    what = "with login" if login is not None else "no login"
    url = consoleURL(description)
    where = f"{url} ({description}, {what})" if url else f"{description} ({what})"
    service.announcements.append(f"mailframe: web console at {where}")
    if login is not None and _plainRemote(description):
        service.warnings.append(
            f"mailframe: the web console at {description} is plain HTTP off loopback: "
            "passwords and session cookies cross the network in clear; use an ssl: endpoint"
        )
