"""
What the queue of C{twistd mailframe} is given: L{QueueSpec}, its
directory, retry policy, report sizes, connection limits and the relay's
configuration, as values.

Reading and checking the settings they come from (C{spool}, C{relay-host},
C{retry-initial} ...) is the application's: L{mailframe.app.settings} has
them in its table and L{mailframe.app.config.queueSpec} makes the
L{QueueSpec}.

Must not: import C{mailframe.app}, the reactor, or touch the file system.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mailframe.queue.limits import RetryPolicy
from mailframe.queue.location import PostgresLocation, parseSpool

__all__ = ["DEFAULT_SPOOL", "QueueSpec"]

#: The queue's directory when the queue is on and no C{spool} is given.
DEFAULT_SPOOL = "./spool"


@dataclass(frozen=True)
class QueueSpec:
    """
    The queue of C{twistd mailframe}: its directory (or PostgreSQL URL:
    C{passwordFile}, C{nodeName} and C{lease} are for that), retry policy, report
    sizes, connection limits, and the relay's configuration (the data
    L{mailframe.client.relay.SMTPRelay.fromConfig} takes: C{smarthost}, C{routes}
    and the C{[relay]} table).  C{srsSecret}: the file of SRS secrets, and
    C{srsDomain} the domain of SRS addresses (None: the host name), for
    the senders of forwarded copies (L{mailframe.queue.srs}).
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
    srsSecret: str | None = None
    srsDomain: str | None = None
    passwordFile: str | None = None
    nodeName: str | None = None
    lease: float = 60.0

    @property
    def location(self) -> str | PostgresLocation:
        """The spool's directory, or the PostgreSQL store's location (L{parseSpool})."""
        return parseSpool(self.spool)

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
