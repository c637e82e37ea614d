"""
The C{mbox} backend: appends each message to an mbox file (mboxrd format),
locking it the way mutt and Postfix's local(8) do.

Layouts (C{layout=}):

  - C{single}: PATH is one mbox file; every message is appended once.
  - C{user}: PATH/I{local} is the mbox of each recipient.  File names are
    made as in the maildir backend (L{mailframe.backends._files.safeName}:
    lowercased, C{/ % NUL}, control characters and a leading C{.} encoded as
    C{%XX}); a name ending in C{.lock} has that dot encoded too
    (C{bob%2Elock}), so no mailbox is another mailbox's lock file.  Each copy
    starts with a C{Delivered-To:} field, as Postfix writes it.

This is the final delivery (RFC 5321 4.4): after the C{From } line each copy
starts with a C{Return-Path:} field holding the envelope sender (C{<>} for
a delivery report).

Locking: an in-process lock, then a dotlock PATH.lock (created with
C{O_CREAT|O_EXCL}; one older than 10 minutes is stale and removed), then an
exclusive C{fcntl.lockf} on the file, all waiting at most C{lockTimeout}
seconds together (451 4.2.0 after that).

Each message is: a separating newline if the file does not end with a blank
line, C{From <sender or MAILER-DAEMON> <asctime, UTC>}, the message with LF
line endings and mboxrd escaping (a line matching C{^>*From } gets one more
C{>}), and a blank line.  The file is fsync'd (and its directory, if the file
was created) before success is reported; on any error it is truncated back to
its old length.  Errors map to replies as in the maildir backend.

The appending (and the waiting for locks) runs in the disk thread pool
(L{mailframe._threads.DISK}), holding the message until the thread is done,
so that its owner closing it never cuts a copy short.

Owns: the mbox file format and its locking.  Must not: import
mailframe.server or the global reactor; do file I/O in the reactor thread
after construction.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import threading
import time
from collections.abc import Iterable, Iterator

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorThreads
from zope.interface import implementer

from mailframe._threads import WorkerPool
from mailframe.address import Address
from mailframe.backends._files import (
    MailboxLocked,
    deliveredTo,
    deliverInThread,
    diskPool,
    fsyncDirectory,
    groupJobs,
    makeDirectory,
    own,
    returnPath,
    safeName,
)
from mailframe.envelope import DeliveryResult, Envelope, Recipient
from mailframe.interfaces import IDeliveryBackend
from mailframe.message import Message, toLF

__all__ = ["LAYOUTS", "MboxBackend", "escapeFrom", "fromLine"]

LAYOUTS = ("single", "user")

LOCK_TIMEOUT = 30.0
"""Seconds to wait for the locks before giving up with 451 4.2.0."""

STALE_DOTLOCK = 600.0
"""A dotlock older than this (10 minutes) is stale and removed."""

_POLL = 0.1
_FROM_RE = re.compile(rb"^(>*From )", re.MULTILINE)
_FROM_PREFIX_RE = re.compile(rb">*(?:F(?:r(?:om?)?)?)?")
_UNSAFE_SENDER_RE = re.compile(r"[\s\x00-\x1f\x7f]")


def fromLine(sender: Address, when: float | None = None) -> bytes:
    """
    The C{From } separator line (LF ending): the sender, or MAILER-DAEMON
    for the null path (whitespace and controls in it become C{_}), and the
    time in C{asctime} format, UTC.
    """
    who = _UNSAFE_SENDER_RE.sub("_", str(sender)) if not sender.isNull else "MAILER-DAEMON"
    when = time.time() if when is None else when
    return f"From {who} {time.asctime(time.gmtime(when))}\n".encode()


def escapeFrom(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """
    mboxrd escaping of LF-terminated data, across chunk boundaries: every
    line matching C{^>*From } gets one more C{>}.
    """
    atStart = True  # the next octet begins a line
    pending = b""  # the start of a line that may still become ">*From "
    for chunk in chunks:
        if pending:
            chunk, pending = pending + chunk, b""
        out = []
        if not atStart:
            nl = chunk.find(b"\n")
            if nl < 0:
                yield chunk
                continue
            out.append(chunk[: nl + 1])
            chunk = chunk[nl + 1 :]
        last = chunk.rfind(b"\n") + 1
        out.append(_FROM_RE.sub(rb">\1", chunk[:last]))
        tail = chunk[last:]
        atStart = False
        if _FROM_RE.match(tail):
            out.append(b">" + tail)
        elif _FROM_PREFIX_RE.fullmatch(tail):
            pending, atStart = tail, True
        else:
            out.append(tail)
        yield b"".join(out)
    if pending:
        yield pending


@implementer(IDeliveryBackend)
class MboxBackend:
    """
    Appends to mbox files at C{path}.

    @param reactor: calls back from the threads; its disk pool runs the
        file I/O unless C{pool} is given.
    @param path: the mbox file (C{single}) or the directory of mbox files.
    @param layout: C{single} or C{user} (see the module docstring).
    @param lockTimeout: seconds to wait for the locks.
    @param pool: the thread pool for the file I/O (tests pass their own).
    @raise ValueError: for an unknown layout, or if PATH cannot be created.
    """

    def __init__(
        self,
        reactor: IReactorThreads,
        path: str,
        layout: str = "single",
        lockTimeout: float = LOCK_TIMEOUT,
        pool: WorkerPool | None = None,
    ) -> None:
        if layout not in LAYOUTS:
            raise ValueError(f"mbox layout must be single or user, not {layout!r}")
        self.reactor = reactor
        self.pool = pool
        self.path = os.path.abspath(path)
        self.layout = layout
        self.lockTimeout = lockTimeout
        self._locks: dict[str, threading.Lock] = {}
        self._locksLock = threading.Lock()
        try:
            if layout == "user":
                makeDirectory(self.path)
            else:
                makeDirectory(os.path.dirname(self.path))
                if os.path.isdir(self.path):
                    raise ValueError(f"mbox path {path} is a directory")
                opened, created = _openMbox(self.path)
                with opened:
                    pass
                if created:
                    own(self.path)
                    fsyncDirectory(os.path.dirname(self.path))
        except OSError as e:
            raise ValueError(f"cannot create mbox {path}: {e.strerror or e}") from None

    def mboxFor(self, recipient: Recipient) -> str:
        """The mbox file a recipient's copy goes to."""
        if self.layout == "single":
            return self.path
        name = safeName(recipient.address.localPart)
        if name.endswith(".lock"):
            name = name[:-5] + "%2Elock"
        return os.path.join(self.path, name)

    def _prefix(self, recipient: Recipient) -> bytes:
        return b"" if self.layout == "single" else deliveredTo(recipient.address)

    def deliver(self, envelope: Envelope, message: Message) -> Deferred[DeliveryResult | None]:
        """Append one copy per mbox file; fire once every copy is fsync'd."""
        head = returnPath(envelope.mailFrom)
        jobs = groupJobs(envelope, self.mboxFor, lambda r: head + self._prefix(r))
        return deliverInThread(
            self.reactor,
            diskPool(self.reactor, self.pool),
            envelope,
            message,
            jobs,
            lambda path, prefix: self.append(path, fromLine(envelope.mailFrom) + prefix, message),
            "mbox",
        )

    def _threadLock(self, path: str) -> threading.Lock:
        with self._locksLock:
            return self._locks.setdefault(path, threading.Lock())

    def append(self, path: str, head: bytes, message: Message) -> None:
        """
        Blocking: lock C{path}, append C{head} and C{message}, fsync, unlock.
        Runs in a thread.
        """
        deadline = time.monotonic() + self.lockTimeout
        lock = self._threadLock(path)
        if not lock.acquire(timeout=max(self.lockTimeout, 0.0)):  # 0: do not wait
            raise MailboxLocked(f"{path} is locked by another delivery")
        try:
            _dotlock(path + ".lock", deadline)
            try:
                opened, created = _openMbox(path)
                with opened as f:
                    _lockf(f.fileno(), deadline, path)
                    _appendLocked(f.fileno(), head, message)
                if created:
                    fsyncDirectory(os.path.dirname(path))
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(path + ".lock")
        finally:
            lock.release()


class _FD:
    """A file descriptor closed on exit."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def fileno(self) -> int:
        return self.fd

    def __enter__(self) -> _FD:
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def _openMbox(path: str) -> tuple[_FD, bool]:
    """Open for reading and appending; True if the file was created."""
    flags = os.O_RDWR | os.O_APPEND | os.O_CLOEXEC
    try:
        return _FD(os.open(path, flags)), False
    except FileNotFoundError:
        return _FD(os.open(path, flags | os.O_CREAT, 0o600)), True


def _dotlock(lockPath: str, deadline: float) -> None:
    while True:
        try:
            fd = os.open(lockPath, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except FileExistsError:
            try:
                age = time.time() - os.stat(lockPath).st_mtime
            except FileNotFoundError:
                continue
            if age > STALE_DOTLOCK:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(lockPath)
                continue
            _waitOrGiveUp(deadline, lockPath)
        else:
            try:
                os.write(fd, f"{os.getpid()}\n".encode())
            finally:
                os.close(fd)
            return


def _lockf(fd: int, deadline: float, path: str) -> None:
    while True:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.EAGAIN):
                raise
        _waitOrGiveUp(deadline, path)


def _waitOrGiveUp(deadline: float, path: str) -> None:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise MailboxLocked(f"{path} is locked")
    time.sleep(min(_POLL, remaining))


def _appendLocked(fd: int, head: bytes, message: Message) -> None:
    """Append one message at the end of the locked file C{fd}, durably."""
    oldSize = os.fstat(fd).st_size
    if oldSize == 0:
        separator = b""
    else:
        tail = os.pread(fd, 2, max(0, oldSize - 2))
        separator = b"" if tail == b"\n\n" else b"\n" if tail.endswith(b"\n") else b"\n\n"
    try:
        last = b"\n"
        _writeAll(fd, separator + head)
        for chunk in escapeFrom(toLF(message.chunks())):
            if chunk:
                _writeAll(fd, chunk)
                last = chunk[-1:]
        _writeAll(fd, b"\n" if last == b"\n" else b"\n\n")
        os.fsync(fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, oldSize)
            os.fsync(fd)
        raise


def _writeAll(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
