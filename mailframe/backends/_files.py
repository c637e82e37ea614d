"""
Helpers shared by the file backends (maildir, mbox): turning a local part or
domain into a safe file name, the fields a final delivery adds
(C{Return-Path:}, C{Delivered-To:}), grouping recipients by destination, mapping
OS errors to SMTP replies, fsync of directories, and running the blocking
work of a delivery in the disk thread pool (L{mailframe._threads.DISK})
while holding the message (L{mailframe.message.Message.retain}), so that
its owner may close it whenever it likes: the storage stays until the
thread has finished with it.

Directories are created by L{makeDirectory}, which the spool uses too.  A
server started as root that will run as another user (twistd's C{--uid}
and C{--gid}) hands every directory (and mbox file) it creates to that user
(L{setOwner}); the directories made while starting are noted
(L{noteCreated}), so that a server that then cannot listen leaves none
behind.

Owns: the name mapping (L{safeName}) and the error-to-reply mapping
(L{replyForError}); both backends document and rely on them; the owner of
what the file backends and the spool create.  Must not: import
mailframe.server; import the global reactor; write mail itself.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorThreads
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailframe._threads import DISK, WorkerPool, deferToPool, threadPools
from mailframe.address import Address
from mailframe.envelope import DeliveryResult, Envelope, Recipient
from mailframe.message import Message, MessageClosed
from mailframe.reply import Reply

__all__ = [
    "DELIVERED",
    "LOCAL_ERROR",
    "LOCKED",
    "MAILBOX_FULL",
    "NO_SPACE",
    "Job",
    "MailboxLocked",
    "deliverInThread",
    "deliveredTo",
    "diskPool",
    "fsyncDirectory",
    "groupJobs",
    "makeDirectory",
    "noteCreated",
    "own",
    "removeCreated",
    "replyForError",
    "returnPath",
    "safeName",
    "setOwner",
]

log = Logger(namespace="mailframe.backends")

DELIVERED = Reply(250, (2, 0, 0), "Delivered")
NO_SPACE = Reply(452, (4, 3, 1), "Insufficient system storage; try again later")
MAILBOX_FULL = Reply(452, (4, 2, 2), "Mailbox full; try again later")
LOCAL_ERROR = Reply(451, (4, 3, 0), "Local error writing the mailbox; try again later")
LOCKED = Reply(451, (4, 2, 0), "Mailbox is locked; try again later")

Job = tuple[str, bytes, list[int]]
"""One copy to write: its destination, the octets before the message, and
the indexes of the recipients it serves."""


class MailboxLocked(Exception):
    """Another process held the mailbox lock for longer than the wait allows."""


_EMPTY_NAME = "%"


def _unsafe(c: str) -> bool:
    o = ord(c)
    return (
        c in "/%"
        or o < 0x20
        or 0x7F <= o <= 0x9F  # DEL and the C1 controls
        or 0xD800 <= o <= 0xDFFF  # lone surrogates cannot be file names
    )


def safeName(text: str) -> str:
    """
    One path component for C{text} (a local part or a domain), lowercased.

    C{/}, C{%}, NUL and other control characters (C0, DEL, C1) and lone
    surrogates become C{%XX} (the UTF-8 octets, uppercase hex), as does a
    leading C{.} (so C{.}, C{..} and hidden names cannot occur); the empty
    string becomes C{%}.  Everything else, non-ASCII letters included, is
    kept.  The mapping is injective: no two lowercased inputs give the same
    name, and no output is C{.}, C{..}, empty, or contains C{/}.
    """
    text = text.lower()
    if not text:
        return _EMPTY_NAME
    out = []
    for i, c in enumerate(text):
        if _unsafe(c) or (i == 0 and c == "."):
            out.append("".join(f"%{b:02X}" for b in c.encode("utf-8", "surrogatepass")))
        else:
            out.append(c)
    return "".join(out)


def _printable(address: Address) -> bytes:
    return "".join(c if c.isprintable() else "?" for c in str(address)).encode("utf-8")


def returnPath(sender: Address) -> bytes:
    """
    The C{Return-Path:} field (LF ending) a final delivery adds first (RFC
    5321 4.4): the envelope sender in angle brackets, C{<>} for the null
    path (a delivery report).
    """
    return b"Return-Path: <" + _printable(sender) + b">\n"


def deliveredTo(address: Address) -> bytes:
    """A C{Delivered-To:} header line (LF ending) naming C{address}."""
    return b"Delivered-To: " + _printable(address) + b"\n"


def groupJobs(
    envelope: Envelope,
    destination: Callable[[Recipient], str],
    prefix: Callable[[Recipient], bytes],
) -> list[Job]:
    """
    One L{Job} per distinct destination, in order of first use; the prefix
    is computed for the first recipient of each destination.
    """
    jobs: dict[str, Job] = {}
    for i, r in enumerate(envelope.recipients):
        dest = destination(r)
        job = jobs.get(dest)
        if job is None:
            jobs[dest] = (dest, prefix(r), [i])
        else:
            job[2].append(i)
    return list(jobs.values())


def replyForError(e: BaseException | None) -> Reply:
    """
    ENOSPC -> 452 4.3.1, EDQUOT -> 452 4.2.2, L{MailboxLocked} -> 451 4.2.0,
    anything else -> 451 4.3.0.
    """
    if isinstance(e, OSError):
        if e.errno == errno.ENOSPC:
            return NO_SPACE
        if e.errno == errno.EDQUOT:
            return MAILBOX_FULL
    elif isinstance(e, MailboxLocked):
        return LOCKED
    return LOCAL_ERROR


def diskPool(reactor: IReactorThreads, pool: WorkerPool | None) -> WorkerPool:
    """C{pool}, or the reactor's disk pool (L{mailframe._threads.DISK})."""
    return pool if pool is not None else threadPools(reactor).pool(DISK)


def deliverInThread(
    reactor: IReactorThreads,
    pool: WorkerPool,
    envelope: Envelope,
    message: Message,
    jobs: Sequence[Job],
    write: Callable[[str, bytes], object],
    kind: str,
) -> Deferred[DeliveryResult | None]:
    """
    Run C{write(destination, prefix)} for each job, in order, in C{pool};
    fire None if all succeeded, else the L{DeliveryResult}.  Failures are
    logged here, in the reactor thread.

    The message is held (L{Message.retain}) from now until the thread has
    finished, whatever happens meanwhile: its owner closing it, or the
    Deferred being cancelled (which does not stop the writes: it fires
    C{CancelledError} at once, and the files are still written).
    """
    try:
        hold = message.retain()
    except MessageClosed:
        log.error("{queue} {kind}: the message was closed before delivery", queue=envelope.queueID,
                  kind=kind)  # fmt: skip
        return defer.succeed(DeliveryResult.allDelivered(envelope, LOCAL_ERROR))

    def work() -> list[Failure | None]:
        outcomes: list[Failure | None] = []
        for dest, prefix, _ in jobs:
            try:
                write(dest, prefix)
            except Exception:
                outcomes.append(Failure())
            else:
                outcomes.append(None)
        return outcomes

    def done(outcomes: list[Failure | None]) -> DeliveryResult | None:
        replies = [DELIVERED] * len(envelope.recipients)
        for (dest, _, indexes), failure in zip(jobs, outcomes, strict=True):
            if failure is None:
                continue
            reply = replyForError(failure.value)
            for i in indexes:
                replies[i] = reply
            _logFailure(envelope, kind, dest, failure, reply)
        result = DeliveryResult(tuple(replies))
        return None if result.delivered else result

    def unexpected(failure: Failure) -> Any:
        if failure.check(defer.CancelledError):  # a queue runner's timeout: its to report
            return failure
        log.failure("{queue} {kind} delivery failed", failure, queue=envelope.queueID, kind=kind)
        return DeliveryResult.allDelivered(envelope, LOCAL_ERROR)

    d = deferToPool(reactor, pool, work, whenDone=hold.release)
    return d.addCallback(done).addErrback(unexpected)


def _logFailure(envelope: Envelope, kind: str, dest: str, failure: Failure, reply: Reply) -> None:
    if isinstance(failure.value, OSError | MailboxLocked):
        log.error(
            "{queue} {kind} delivery to {dest} failed ({code}): {error}",
            queue=envelope.queueID,
            kind=kind,
            dest=dest,
            code=reply.code,
            error=str(failure.value),
        )
    else:
        log.failure(
            "{queue} {kind} delivery to {dest} failed ({code})",
            failure,
            queue=envelope.queueID,
            kind=kind,
            dest=dest,
            code=reply.code,
        )


def fsyncDirectory(path: str) -> None:
    """fsync a directory, making the entries created in it durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_owner: tuple[int, int] | None = None
_noted: list[list[str]] = []


def setOwner(uid: int | None, gid: int | None) -> None:
    """
    Hand what the file backends and the spool create from now on (directories,
    an mbox file made at start) to C{uid} and C{gid} (None: unchanged; both
    None: stop).  For a server that starts as root to bind its ports and
    then runs as C{uid}: the Maildir and the spool it makes at start must be
    that user's.  Only root can give files away; for anyone else this does
    nothing.
    """
    global _owner
    if uid is None and gid is None:
        _owner = None
    else:
        _owner = (-1 if uid is None else uid, -1 if gid is None else gid)


def own(path: str) -> None:
    """Give C{path}, just created, to the owner of L{setOwner} (if any, and if we are root)."""
    if _owner is not None and os.geteuid() == 0:
        os.chown(path, *_owner)


@contextlib.contextmanager
def noteCreated() -> Iterator[list[str]]:
    """Within: every directory L{makeDirectory} creates is added to the list given."""
    created: list[str] = []
    _noted.append(created)
    try:
        yield created
    finally:
        _noted.remove(created)


def removeCreated(created: Sequence[str]) -> None:
    """Remove the directories of C{created} (L{noteCreated}) that are still empty, last first."""
    for path in reversed(created):
        with contextlib.suppress(OSError):
            os.rmdir(path)


def makeDirectory(path: str, mode: int = 0o700) -> bool:
    """
    Create C{path} and any missing parents with C{mode}, fsync'ing the parent
    of each directory created, each given to the owner of L{setOwner}.
    Return True if anything was created.
    """
    if os.path.isdir(path):
        return False
    parent = os.path.dirname(os.path.abspath(path))
    makeDirectory(parent, mode)
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        if not os.path.isdir(path):
            raise
        return False
    for noted in _noted:
        noted.append(os.path.abspath(path))
    own(path)
    fsyncDirectory(parent)
    return True
