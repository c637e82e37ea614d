"""
L{Spool}: the durable queue on disk, one envelope file and one data file
per message, with group commit.

Layout of the spool directory::

    tmp/              files being written; whatever is here at start is removed
    queue/ID.msg      the message as received (CRLF), the Received: field first
    queue/ID.json     its envelope (L{mailframe.queue.entry.QueueEntry}, JSON)
    free/             files of finished messages, recycled for new ones (see
                      L{mailframe.queue._files}); nothing in them matters
    corrupt/          envelopes that could not be read, and their data, kept for
                      a person to look at (never delivered, never deleted)

Adding messages (L{Spool.add}) is a commit of a batch: every message
that came in while the previous commit ran, or the one message that came in
when none was running.  In one spool thread, in this order:

  1. For each message, write the data and the envelope, each into a
     recycled file of C{free/} (overwritten from the start, truncated) or a
     new one (C{tmp/ID.msg}, C{tmp/ID.json}).
  2. Make every file written in step 1 durable: C{fsync} each (the fsyncs
     run in parallel threads, so the file system's journal merges their
     flushes), or, in the C{syncfs} mode, one C{syncfs(2)} of the spool's
     file system.
  3. For each message, rename its data file to C{queue/ID.msg}, then its
     envelope file to C{queue/ID.json}.
  4. C{fsync} the C{queue/} directory, once for the whole batch.
  5. Only then, in the reactor thread, does the Deferred of each message
     fire, and the server answer 250.

Why nothing that got a 250 is lost, step by step:

  - The 250 goes out after step 5, so after both files' contents were on
    disk (step 2) and after their names in C{queue/} were (the directory
    fsync of step 4 comes after every rename of step 3).  A crash after
    the 250, of the process or of the machine, finds both files complete
    under their final names.
  - A crash before step 5 loses only messages that got no 250 (the client
    still has them and tries again).  What it may leave: files in
    C{tmp/} (removed at start) and half-rewritten files in C{free/} (which
    only ever hold garbage); or, for a batch whose directory fsync had
    not finished, one of a message's two names without the other.  An
    envelope without its data file, or a data file without its envelope,
    was never acknowledged, because the acknowledgement needs both: it is
    removed at start.  A message with both names is complete (its files
    were durable before they were renamed) and is delivered, although its
    client may send it again: a duplicate, never a loss.
  - A committed envelope is only ever replaced whole: the new version is
    written to C{tmp/}, fsync'd and renamed over the old one, so a crash
    leaves the old or the new, both valid.  Replacing it without a
    directory fsync is safe for the same reason: either version is correct,
    the older one merely repeats a delivery.
  - A finished message loses its envelope first, then its data (both are
    renamed into C{free/}, to be rewritten whole for a later message); a
    data file whose envelope is gone is an orphan and is removed at start.
    Removal is not fsync'd: after a machine crash a finished message may
    come back and be delivered again (at least once, at worst twice).
  - The data file's size is recorded in the envelope and checked at start;
    an envelope that does not parse, or whose data has the wrong size,
    cannot come from this sequence: it is moved to C{corrupt/} and logged.

Group commit: the fixed costs of a commit (a thread hop each way, the
journal commits of step 2, the directory fsync of step 4) are paid once per
batch, and a batch is everything that arrived while the previous one was
being committed: the more sessions deliver at once, the more messages share
each commit, with no timer and no added wait when the spool is idle.
C{syncfs} makes step 2 one system call however large the batch, but it
also writes out whatever else is pending on that file system: use it when
the spool has a file system (or at least a disk) of its own.

A message given as a L{Message} (not as bytes) is held
(L{Message.retain}) from L{Spool.add} until the commit that writes it has
finished in its thread, so its owner may close it at any time: a client
that drops the connection right after the final dot leaves the message
queued whole, or not at all.

Owns: the files, their order of operations, and recovery at start.  Must
not: decide what to deliver (the runner does), block the reactor thread
(every file operation runs in the spool's own thread pool), or use the
reactor's shared thread pool.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol, TypeVar

from twisted.internet import defer
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from mailframe.backends._files import fsyncDirectory
from mailframe.interfaces import IQueueStore
from mailframe.message import Hold, Message, MessageClosed
from mailframe.queue._files import (
    DATA,
    ENVELOPE,
    FilePool,
    SpoolError,
    fsyncResult,
    syncfs,
    syncfsAvailable,
    unlinkAll,
    unlinkQuietly,
    writeDurably,
    writeFile,
)
from mailframe.queue._recovery import recover
from mailframe.queue.entry import QueueEntry

__all__ = ["SYNC_MODES", "Spool", "SpoolError", "Worker", "syncfsAvailable", "threadWorker"]

log = Logger(namespace="mailframe.queue")

T = TypeVar("T")


class Worker(Protocol):
    """Runs a blocking function away from the reactor thread; a Deferred of its result."""

    def __call__(self, f: Callable[[], T], /) -> defer.Deferred[T]: ...


SYNC_MODES = ("fsync", "syncfs")
_READ_SIZE = 1 << 16


def threadWorker(reactor: IReactorFromThreads, pool: ThreadPool) -> Worker:
    """A L{Worker} running functions in C{pool} (results delivered in the reactor)."""

    def run(f: Callable[[], T]) -> defer.Deferred[T]:
        return deferToThreadPool(reactor, pool, f)

    return run


@dataclass(eq=False)
class _Pending:
    """A message on its way into the spool."""

    entry: QueueEntry
    data: bytes | Message
    hold: Hold | None = None
    deferred: defer.Deferred[None] | None = None
    cancelled: bool = False


@implementer(IQueueStore)
class Spool:
    """
    The spool directory C{path} (created, mode 0700, if missing).

    @param reactor: the reactor (its thread pool runs nothing of ours: the
        spool has its own, of at most 4 threads, unless C{worker} is given).

    @param threads: how many fsyncs of one commit run in parallel.

    @param worker: a L{Worker} to use instead of the spool's own pool
        (tests pass one that runs functions at once, or when told).

    @param committed: called in the reactor thread with each entry (and its
        data when it was given as bytes) once it is durable; the runner's
        C{enqueue}.

    @param sync: C{"fsync"} (each file, in parallel) or C{"syncfs"} (one
        syncfs(2) of the spool's file system per commit; Linux only).

    @param adopt: run in the spool's thread at start, before recovery:
        moves stranded spools' messages in (L{mailframe.queue.adopt});
        returns notes to log.
    """

    def __init__(
        self,
        path: str,
        reactor: IReactorFromThreads,
        threads: int = 8,
        worker: Worker | None = None,
        committed: Callable[[QueueEntry, bytes | None], None] | None = None,
        sync: str = "fsync",
        adopt: Callable[[], list[str]] | None = None,
    ) -> None:
        if sync not in SYNC_MODES:
            raise ValueError(f"sync must be {' or '.join(SYNC_MODES)}, not {sync!r}")
        if sync == "syncfs" and not syncfsAvailable():
            raise ValueError("sync=syncfs needs Linux's syncfs(2)")
        self.sync = sync
        self._fsyncThreads = threads
        self._fsyncPool: ThreadPoolExecutor | None = None
        self.path = os.path.abspath(path)
        self.reactor = reactor
        self.tmp = os.path.join(self.path, "tmp")
        self.queue = os.path.join(self.path, "queue")
        self.corrupt = os.path.join(self.path, "corrupt")
        self.free = FilePool(os.path.join(self.path, "free"))
        self._committedListener = committed
        self._adopt = adopt
        self._pool: ThreadPool | None = None
        if worker is None:
            self._pool = ThreadPool(minthreads=0, maxthreads=4, name="mailframe-spool")
            worker = threadWorker(reactor, self._pool)
        self._worker = worker
        self._incoming: list[_Pending] = []
        self._early: list[_Pending] = []
        self._recoveredAll = False
        self._startFailure: Failure | None = None
        self._committing = False
        self._removals: list[str] = []
        self._removing = False
        self._ids: set[str] = set()
        self._counter = itertools.count(1)
        self.batches = 0
        """How many commits ran (a commit covers every message ready at its start)."""

    # -- life -------------------------------------------------------------------

    def start(self) -> defer.Deferred[list[QueueEntry]]:
        """
        Start the thread pool, create the directories, clean up after a
        crash (see the module docstring) and read every queued entry.

        @return: a Deferred of the entries, oldest first; it fails with
            L{SpoolError} if the directory cannot be used.
        """
        if self._pool is not None and not self._pool.started:
            self._pool.start()
        self._startFailure = None
        adopt = self._adopt

        def work() -> tuple[list[QueueEntry], list[str]]:
            notes = adopt() if adopt is not None else []
            entries, more = recover(self.path, self.free, self.corrupt)
            return entries, notes + more

        d = self._worker(work if adopt is not None else self._recover)
        return d.addCallbacks(self._recovered, self._notStarted)

    def _recover(self) -> tuple[list[QueueEntry], list[str]]:
        return recover(self.path, self.free, self.corrupt)

    def stop(self) -> None:
        """Stop the thread pools (waits for running file operations)."""
        if self._pool is not None and self._pool.started:
            self._pool.stop()
        if self._fsyncPool is not None:
            self._fsyncPool.shutdown()
            self._fsyncPool = None

    def _notStarted(self, reason: Failure) -> Failure:
        """Recovery failed: the messages waiting for it, and those to come, fail."""
        self._startFailure = reason
        early, self._early = self._early, []
        for pending in early:
            self._fail(pending, reason)
        return reason

    def _fail(self, pending: _Pending, reason: Failure) -> None:
        self._ids.discard(pending.entry.id)
        if pending.hold is not None:
            pending.hold.release()
        if pending.deferred is not None and not pending.cancelled:
            pending.deferred.errback(reason)

    def _recovered(self, result: tuple[list[QueueEntry], list[str]]) -> list[QueueEntry]:
        entries, notes = result
        for note in notes:
            log.warn("spool {path}: {note}", path=self.path, note=note)
        self._ids.update(e.id for e in entries)
        self._recoveredAll = True
        early, self._early = self._early, []
        self._incoming.extend(early)
        self._commit()
        return entries

    # -- ids ----------------------------------------------------------------------

    def newID(self, preferred: str) -> str:
        """C{preferred} (the server's queue id) if no entry has it, else a variant."""
        candidate = preferred
        while candidate in self._ids:
            candidate = f"{preferred}-{next(self._counter)}"
        self._ids.add(candidate)
        return candidate

    def __contains__(self, entryID: str) -> bool:
        return entryID in self._ids

    # -- adding: group commit -------------------------------------------------------

    def add(self, entry: QueueEntry, data: bytes | Message) -> defer.Deferred[None]:
        """
        Make C{entry} and its message durable.  C{entry.id} must come from
        L{newID}.  The Deferred fires None once both files are in
        C{queue/} and fsync'd, or fails with the C{OSError}.  Cancelling it
        before its commit starts leaves nothing behind; once the commit has
        started, the message is queued (and delivered) all the same.
        Messages added before L{start} has cleaned up wait for it; if it
        failed, they fail with its error.  A L{Message} is held until its
        commit is over (see the module docstring).
        """
        self._ids.add(entry.id)
        pending = _Pending(entry, data)

        def cancel(_: defer.Deferred[None]) -> None:
            pending.cancelled = True

        pending.deferred = defer.Deferred(cancel)
        if isinstance(data, Message):
            try:
                pending.hold = data.retain()
            except MessageClosed:
                self._fail(pending, Failure())
                return pending.deferred
        if self._startFailure is not None:
            self._fail(pending, self._startFailure)
        elif self._recoveredAll:
            self._incoming.append(pending)
            self._commit()
        else:
            self._early.append(pending)
        return pending.deferred

    def addReport(self, parentID: str, report: QueueEntry, data: bytes) -> defer.Deferred[None]:
        """
        L{add} the report about C{parentID}: durable before the runner
        records the outcome it reports (a crash in between repeats the
        report, never loses it).
        """
        return self.add(report, data)

    def _commit(self) -> None:
        """Start a commit of everything that came in, unless one is running."""
        if self._committing:
            return
        batch = []
        for pending in self._incoming:
            if pending.cancelled:
                self._ids.discard(pending.entry.id)
                if pending.hold is not None:
                    pending.hold.release()
            else:
                batch.append(pending)
        self._incoming = []
        if not batch:
            return
        self._committing = True
        self.batches += 1
        removals, self._removals = self._removals, []

        def work() -> list[BaseException | None]:
            try:
                return self._commitBatch(batch)
            finally:
                self._unlinkEntries(removals)

        self._worker(work).addBoth(self._committed, batch)

    def _commitBatch(self, batch: list[_Pending]) -> list[BaseException | None]:
        """
        Blocking: the whole commit of a batch, steps 1 to 4 of the module
        docstring.  Returns an error (or None) per message.
        """
        errors: list[BaseException | None] = [None] * len(batch)
        written: list[list[str]] = [[] for _ in batch]  # per message: data, envelope
        files: list[tuple[int, int, str]] = []  # (message index, fd, path)
        try:
            for i, pending in enumerate(batch):
                try:
                    for fd, path in self._writeFiles(pending):
                        files.append((i, fd, path))
                        written[i].append(path)
                except Exception as e:
                    errors[i] = e
            for i, error in self._makeDurable(files):
                errors[i] = errors[i] or error
        finally:
            for _, fd, _ in files:
                os.close(fd)
        renamed: list[str] = []
        for i, pending in enumerate(batch):
            if errors[i] is not None:
                unlinkAll(written[i])
                continue
            try:
                for path, suffix in zip(written[i], (DATA, ENVELOPE), strict=True):
                    target = os.path.join(self.queue, pending.entry.id + suffix)
                    os.rename(path, target)
                    renamed.append(target)
            except Exception as e:
                errors[i] = e
                unlinkAll(written[i])
        try:
            fsyncDirectory(self.queue)
        except Exception as e:
            unlinkAll(renamed)
            return [error or e for error in errors]
        return errors

    def _writeFiles(self, pending: _Pending) -> list[tuple[int, str]]:
        """
        Blocking: the message's data and envelope written, not yet synced,
        each into a recycled file from C{free/} or a new one in C{tmp/}.

        @return: the open fds and paths, data first.
        """
        entry = pending.entry
        data = pending.data
        chunks: Iterable[bytes] = (data,) if isinstance(data, bytes) else data.chunks()
        opened: list[tuple[int, str]] = []
        try:
            fd, entry.size, path = writeFile(
                os.path.join(self.tmp, entry.id + DATA), chunks, self.free
            )
            opened.append((fd, path))
            envelope = (entry.toBytes(),)
            fd, _, path = writeFile(
                os.path.join(self.tmp, entry.id + ENVELOPE), envelope, self.free
            )
            opened.append((fd, path))
        except BaseException:
            for fd, path in opened:
                os.close(fd)
                unlinkQuietly(path)
            raise
        return opened

    def _makeDurable(self, files: list[tuple[int, int, str]]) -> list[tuple[int, BaseException]]:
        """Blocking: the written files' contents on disk; the messages that failed."""
        if not files:
            return []
        if self.sync == "syncfs":
            try:
                syncfs(files[0][1])
            except OSError as e:
                return [(i, e) for i, _, _ in files]
            return []
        if len(files) == 1 or self._fsyncThreads <= 1:
            results = [fsyncResult(fd) for _, fd, _ in files]
        else:
            if self._fsyncPool is None:
                self._fsyncPool = ThreadPoolExecutor(self._fsyncThreads, "mailframe-fsync")
            results = list(self._fsyncPool.map(fsyncResult, [fd for _, fd, _ in files]))
        return [(i, e) for (i, _, _), e in zip(files, results, strict=True) if e is not None]

    def setCommitListener(
        self, listener: Callable[[QueueEntry, bytes | None], None] | None
    ) -> None:
        """
        Call C{listener(entry, data)} in the reactor thread with each entry
        once it is durable (C{data}: its bytes, if kept in memory); the queue
        runner listens so.  One listener: a new one replaces the last.
        """
        self._committedListener = listener

    def _committed(
        self, result: list[BaseException | None] | Failure, batch: list[_Pending]
    ) -> None:
        self._committing = False
        if isinstance(result, Failure):  # a bug: nothing is known to be durable
            log.failure("spool commit failed", result)
            errors: list[BaseException | None] = [result.value] * len(batch)
        else:
            errors = result
        for pending, error in zip(batch, errors, strict=True):
            if pending.hold is not None:  # the commit's thread is done with the message
                pending.hold.release()
                pending.hold = None
            d = pending.deferred
            if error is not None:
                self._ids.discard(pending.entry.id)
                log.error(
                    "{id} cannot be written to the spool: {error}",
                    id=pending.entry.id,
                    error=_oneLine(error),
                )
                if d is not None and not pending.cancelled:
                    d.errback(Failure(error))
                continue
            if (
                self._committedListener is not None
            ):  # durable: delivered even if its client gave up
                data = pending.data if isinstance(pending.data, bytes) else None
                try:
                    self._committedListener(pending.entry, data)
                except Exception:
                    log.failure("{id}: queueing a committed message failed", id=pending.entry.id)
            if d is not None and not pending.cancelled:
                d.callback(None)
        self._commit()
        if self._removals and not self._committing and not self._removing:
            self._removeBatch()

    # -- changing and removing ---------------------------------------------------------

    def update(self, entry: QueueEntry) -> defer.Deferred[None]:
        """Replace the envelope of C{entry} (written, fsync'd, renamed over the old)."""
        tmpPath = os.path.join(self.tmp, f"{entry.id}{ENVELOPE}.{next(self._counter)}")
        data = entry.toBytes()
        target = os.path.join(self.queue, entry.id + ENVELOPE)

        def replace() -> None:
            try:
                writeDurably(tmpPath, (data,))
                os.rename(tmpPath, target)
            except BaseException:
                unlinkQuietly(tmpPath)
                raise

        return self._worker(replace)

    def remove(self, entryID: str) -> None:
        """
        Remove a finished entry: its envelope, then its data (not fsync'd).
        Removals wait for the next commit, whose thread job does them after
        its own work, or get a job of their own when no commit is running.
        """
        self._ids.discard(entryID)
        self._removals.append(entryID)
        if not self._committing and not self._removing:
            self._removeBatch()

    def _removeBatch(self) -> None:
        batch, self._removals = self._removals, []
        self._removing = True

        def done(result: object) -> None:
            self._removing = False
            if isinstance(result, Failure):
                log.failure("removing finished messages failed", result)
            if self._removals and not self._committing:
                self._removeBatch()

        self._worker(lambda: self._unlinkEntries(batch)).addBoth(done)

    def _unlinkEntries(self, entryIDs: list[str]) -> None:
        """Blocking: remove finished entries, envelope first (their files are recycled)."""
        for entryID in entryIDs:
            self.free.give(os.path.join(self.queue, entryID + ENVELOPE))
            self.free.give(os.path.join(self.queue, entryID + DATA))

    # -- reading --------------------------------------------------------------------------

    def dataPath(self, entryID: str) -> str:
        return os.path.join(self.queue, entryID + DATA)

    def readMessage(
        self, entryID: str, spillThreshold: int = 1 << 20, tempDir: str | None = None
    ) -> defer.Deferred[Message]:
        """The queued message as a L{Message} (large ones in a temporary file)."""

        def read() -> Message:
            message = Message(spillThreshold, tempDir)
            try:
                with open(self.dataPath(entryID), "rb") as f:
                    while chunk := f.read(_READ_SIZE):
                        message.write(chunk)
            except BaseException:
                message.close()
                raise
            message.finish()
            return message

        return self._worker(read)

    def readHead(self, entryID: str, limit: int) -> defer.Deferred[tuple[bytes, bool]]:
        """The first C{limit} octets of the message, and whether that is all of it."""

        def read() -> tuple[bytes, bool]:
            with open(self.dataPath(entryID), "rb") as f:
                data = f.read(limit + 1)
            return data[:limit], len(data) <= limit

        return self._worker(read)


def _oneLine(reason: object) -> str:
    value = getattr(reason, "value", reason)
    return " ".join(f"{type(value).__name__}: {value}".split())[:300]
