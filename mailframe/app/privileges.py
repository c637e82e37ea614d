"""
Binding port 25 as root and running as an unprivileged user.  twistd does
the switch: it calls every service's C{privilegedStartService} as root (the
listening ports are bound there), then changes to C{--uid} and C{--gid},
then starts the services.  But C{makeService} runs before, as root: the
Maildir, an mbox file and the spool that mailframe creates at start would
be root's, and the server could not write them.  L{runAs} reads the user
and group twistd will switch to, and C{makeService} hands what it creates
to them (L{mailframe.backends._files.setOwner}); the spool's lock file,
made when the queue takes it (as root), too.

With systemd the unit can instead run the whole process as the user
(C{User=}) and let a socket unit bind port 25 (C{systemd:} endpoints): see
docs/operations.rst.

Owns: L{runAs}.  Must not: switch users itself (twistd does), or import the
reactor.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Mapping
from typing import Any

__all__ = ["runAs"]


def runAs(options: Any) -> tuple[int | None, int | None] | None:
    """
    The (uid, gid) twistd switches to after binding the ports (C{--uid},
    C{--gid}; the gid of the uid's user when only C{--uid} is given), when
    this process runs as root under twistd; else None (nothing to hand over).
    C{options} are C{twistd mailframe}'s: twistd's own are their C{parent}.
    """
    parent: Mapping[str, Any] | None = getattr(options, "parent", None)
    if parent is None or os.geteuid() != 0:
        return None
    uid, gid = parent.get("uid"), parent.get("gid")
    if uid is None and gid is None:
        return None
    if uid is not None and gid is None:
        gid = pwd.getpwuid(uid).pw_gid
    return uid, gid
