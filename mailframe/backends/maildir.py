"""
The C{maildir} backend: delivers each message into Maildirs, the way
Dovecot, mutt and Postfix's local(8) expect them.

Layouts (C{layout=}):

  - C{single}: PATH is one catch-all Maildir; every message is one file,
    whatever its recipients.
  - C{user}: PATH/I{local}/ is the Maildir of each recipient.
  - C{domain}: PATH/I{domain}/I{local}/.

This is the final delivery (RFC 5321 4.4): each copy starts with a
C{Return-Path:} field holding the envelope sender (C{<>} for a delivery
report).  In C{user} and C{domain} layouts a C{Delivered-To:} field naming
the recipient follows (the first one, when several recipients map to the
same Maildir: they share one file).

Directory names.  The local part is lowercased, the domain is its
comparison key (lowercase, IDNA A-labels; address literals as written,
lowercased).  Then L{mailframe.backends._files.safeName} encodes, as C{%XX}
of their UTF-8 octets, C{/}, C{%}, NUL, the other control characters, and a
leading C{.}; the empty name (the local part C{""}) becomes C{%}.  So
C{../x} is C{%2E.%2Fx}, C{.hidden} is C{%2Ehidden}, C{a/b} is C{a%2Fb} and
C{Bob} is C{bob}.  No recipient can name a path outside PATH, and no two
lowercased local parts share a Maildir by accident.

The recipe: write the message (LF line endings) to tmp/I{name}, fsync it,
link it to new/I{name},S=I{size} (rename where the file system cannot link),
fsync new/, and only then report success.  The fsync of new/ is shared by
the deliveries running at the same time (group commit,
L{mailframe.backends._dirsync}): one fsync releases every delivery linked
into new/ before it began, and each success still waits for an fsync of
new/ that began after its file was linked there.  I{name} is
C{<sec>.M<usec>P<pid>Q<n>.<host>}, unique per the Maildir specification and
Dovecot's convention.  tmp/, new/ and cur/ are created with mode 0700 when
missing (at construction for C{single}).  Errors: ENOSPC -> 452 4.3.1,
EDQUOT -> 452 4.2.2, anything else -> 451 4.3.0; the tmp file is removed.

The writing runs in the disk thread pool (L{mailframe._threads.DISK}),
holding the message until the thread is done: its owner may close it (a
client that drops the connection after the final dot) and the file is
still written whole, or not at all.

Owns: the Maildir file protocol.  Must not: import mailframe.server or the
global reactor; do file I/O in the reactor thread after construction.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import socket
import time

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorThreads
from zope.interface import implementer

from mailframe._threads import WorkerPool
from mailframe.backends._dirsync import DirectorySyncer, directorySyncer
from mailframe.backends._files import (
    deliveredTo,
    deliverInThread,
    diskPool,
    groupJobs,
    makeDirectory,
    returnPath,
    safeName,
)
from mailframe.envelope import DeliveryResult, Envelope, Recipient
from mailframe.interfaces import IDeliveryBackend
from mailframe.message import Message, toLF

__all__ = ["LAYOUTS", "MaildirBackend"]

LAYOUTS = ("single", "user", "domain")

_SUBDIRECTORIES = ("tmp", "new", "cur")
_counter = itertools.count(1)
_LINK_UNSUPPORTED = frozenset(
    {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK, errno.EXDEV}
)


def _hostName() -> str:
    return socket.gethostname().replace("/", "\\057").replace(":", "\\072") or "localhost"


def createMaildir(path: str) -> None:
    """Create the Maildir C{path} (and tmp/, new/, cur/), mode 0700."""
    makeDirectory(path)
    for sub in _SUBDIRECTORIES:
        makeDirectory(os.path.join(path, sub))


@implementer(IDeliveryBackend)
class MaildirBackend:
    """
    Delivers into Maildirs under C{path}.

    @param reactor: calls back from the threads; its disk pool runs the
        file I/O unless C{pool} is given.
    @param path: the Maildir (C{single}) or the directory of Maildirs.
    @param layout: C{single}, C{user} or C{domain} (see the module docstring).
    @param pool: the thread pool for the file I/O (tests pass their own).
    @param syncer: fsyncs new/ (default: the process's shared
        L{directorySyncer}; tests pass their own).
    @raise ValueError: for an unknown layout, or if PATH cannot be created.
    """

    def __init__(
        self,
        reactor: IReactorThreads,
        path: str,
        layout: str = "single",
        pool: WorkerPool | None = None,
        syncer: DirectorySyncer | None = None,
    ) -> None:
        if layout not in LAYOUTS:
            raise ValueError(f"maildir layout must be single, user or domain, not {layout!r}")
        self.reactor = reactor
        self.pool = pool
        self.syncer = directorySyncer if syncer is None else syncer
        self.path = os.path.abspath(path)
        self.layout = layout
        self._host = _hostName()
        try:
            if layout == "single":
                createMaildir(self.path)
            else:
                makeDirectory(self.path)
        except OSError as e:
            raise ValueError(f"cannot create maildir {path}: {e.strerror or e}") from None

    def maildirFor(self, recipient: Recipient) -> str:
        """The Maildir a recipient's copy goes to."""
        if self.layout == "single":
            return self.path
        address = recipient.address
        local = safeName(address.localPart)
        if self.layout == "user":
            return os.path.join(self.path, local)
        domain = safeName(address.domain.key if address.domain is not None else "")
        return os.path.join(self.path, domain, local)

    def _prefix(self, recipient: Recipient) -> bytes:
        return b"" if self.layout == "single" else deliveredTo(recipient.address)

    def deliver(self, envelope: Envelope, message: Message) -> Deferred[DeliveryResult | None]:
        """Write one file per Maildir; fire once every copy is fsync'd."""
        head = returnPath(envelope.mailFrom)
        jobs = groupJobs(envelope, self.maildirFor, lambda r: head + self._prefix(r))
        return deliverInThread(
            self.reactor,
            diskPool(self.reactor, self.pool),
            envelope,
            message,
            jobs,
            lambda folder, prefix: self.deliverFile(folder, prefix, message),
            "maildir",
        )

    def uniqueName(self) -> str:
        """A new base name: C{<sec>.M<usec>P<pid>Q<n>.<host>}."""
        sec, usec = divmod(time.time_ns() // 1000, 1_000_000)
        return f"{sec}.M{usec}P{os.getpid()}Q{next(_counter)}.{self._host}"

    def deliverFile(self, folder: str, prefix: bytes, message: Message) -> str:
        """
        Blocking: write C{prefix} and C{message} into the Maildir C{folder},
        durably.  Return the path of the file in new/.  Runs in a thread.
        """
        name = self.uniqueName()
        tmpPath = os.path.join(folder, "tmp", name)
        try:
            f = open(tmpPath, "xb", opener=_opener)  # noqa: SIM115 - closed below
        except FileNotFoundError:
            createMaildir(folder)
            f = open(tmpPath, "xb", opener=_opener)  # noqa: SIM115
        newPath = None
        try:
            with f:
                size = len(prefix)
                f.write(prefix)
                for chunk in toLF(message.chunks()):
                    size += len(chunk)
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            newDir = os.path.join(folder, "new")
            target = os.path.join(newDir, f"{name},S={size}")
            _moveToNew(tmpPath, target)
            newPath = target
            self.syncer.sync(newDir)
        except BaseException:
            _removeQuietly(tmpPath)
            if newPath is not None:
                _removeQuietly(newPath)
            raise
        return target


def _opener(path: str, flags: int) -> int:
    return os.open(path, flags, 0o600)


def _moveToNew(tmpPath: str, newPath: str) -> None:
    try:
        os.link(tmpPath, newPath)
    except OSError as e:
        if e.errno not in _LINK_UNSUPPORTED:
            raise
        os.rename(tmpPath, newPath)
    else:
        try:
            os.unlink(tmpPath)
        except BaseException:
            _removeQuietly(newPath)
            raise


def _removeQuietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
