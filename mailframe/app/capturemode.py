"""
Capture mode's part of C{twistd mailframe} (C{--capture}): each listener
opened to every client and domain (L{capturing}), and the store every
listener delivers to (L{captureStore}), in memory or in a SQLite file
closed when the service stops (L{ClosedOnStop}).  The web console that
shows it is L{mailframe.app.webconsole}.

Owns: turning the capture settings into a store.  Must not: import the
reactor at import time (C{mailframe.app.tap} imports this module).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.application.service import Service

from mailframe.app.config import ListenerSpec
from mailframe.backends._files import own
from mailframe.plugins import Size, oneLine

if TYPE_CHECKING:
    from mailframe.web.capture import CaptureStore

__all__ = ["ClosedOnStop", "captureStore", "capturing"]


def capturing(spec: ListenerSpec) -> ListenerSpec:
    """C{spec} in capture mode: every client may send to every domain (see L{captureStore})."""
    from dataclasses import replace
    from ipaddress import ip_network

    everywhere = (ip_network("0.0.0.0/0"), ip_network("::/0"))
    # No pregreet wait: the clients are the developer's own applications.
    config = replace(spec.config, relayNetworks=everywhere, greetDelay=0.0)
    return replace(spec, deliver="capture", config=config)


def captureStore(reactor: Any, options: Any, service: Any) -> CaptureStore | None:
    """
    Capture mode (--capture): the store every listener delivers to (the web
    console shows it: L{mailframe.app.webconsole}); None if off.  Relaying is
    open to every client
    (L{capturing}) and there is no queue, so each recipient, whatever its
    domain, reaches the store and nothing leaves.  With C{capture-store
    sqlite:PATH} the store keeps its messages in that file, opened here and
    closed when the service stops; a file it cannot use is one line (a
    C{SystemExit} naming it).
    """
    settings = getattr(options, "capture", None)
    if settings is None:
        return None
    from mailframe.web.capture import DEFAULT_MAX_BYTES, CaptureStore
    from mailframe.web.capturedb import CaptureDatabase, CaptureDatabaseError, parseStore

    path = parseStore(settings.get("capture-store", "memory"))
    maxBytes = settings.get("capture-max-bytes", DEFAULT_MAX_BYTES)
    database = None
    try:
        if path is not None:
            database = CaptureDatabase(path)
        store = CaptureStore(reactor, settings["capture-limit"], settings["capture-mailbox"],
                             maxBytes=maxBytes, database=database)  # fmt: skip
    except CaptureDatabaseError as e:
        if database is not None:
            database.close()
        raise SystemExit(f"mailframe: {oneLine(e)}") from None
    octets = f"{Size().format(maxBytes)} octets" if maxBytes else "no limit of octets"
    if database is None:
        where = f"in memory (at most {store.limit} messages and {octets}"
    else:
        where = (
            f"in {database.path} ({len(store)} from before, at most {store.limit} "
            f"messages; {octets} in memory"
        )
        for made in (database.path, database.path + "-wal", database.path + "-shm"):
            if os.path.exists(made):
                own(made)  # as root with twistd's --uid: the user's to write
        ClosedOnStop(database.close).setServiceParent(service)
    service.announcements.append(
        f"mailframe: CAPTURE MODE: mail for every domain is accepted and kept {where}, "
        f"mailboxes by {store.mailbox}); nothing is relayed"
    )
    return store


class ClosedOnStop(Service):
    """Calls C{close} when the service stops (capture mode's SQLite file)."""

    def __init__(self, close: Callable[[], object]) -> None:
        self._close = close

    def stopService(self) -> None:
        Service.stopService(self)
        self._close()
