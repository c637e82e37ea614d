"""
L{Spool}: the durable queue on disk, one envelope file and one data file
per message, with group commit.

Layout of the spool directory::

    tmp/              files being written; whatever is here at start is removed
    queue/ID.msg      the message as received (CRLF), the Received: field first
    queue/ID.json     its envelope (L{mailframe.queue.entry.QueueEntry}, JSON)
    corrupt/          envelopes that could not be read, and their data, kept for
                      a person to look at (never delivered, never deleted)

Adding a message (L{Spool.add}), in this order:

  1. In a spool thread (one job per message, many in parallel): write the
     data to C{tmp/ID.msg}, C{fsync} it; write the envelope to
     C{tmp/ID.json}, C{fsync} it.
  2. The message joins the next commit batch.  One commit runs at a time;
     messages that become ready while one runs wait for the next, so they
     share its work.  In a spool thread: for each message of the batch,
     rename C{tmp/ID.msg} to C{queue/ID.msg}, then C{tmp/ID.json} to
     C{queue/ID.json}; then C{fsync} the C{queue/} directory once.
  3. Only then does the Deferred of each message of the batch fire, and the
     server answer 250.

Why nothing that got a 250 is lost, step by step:

  - The 250 goes out after step 3, so after both files' contents were
    fsync'd (step 1) and after their names in C{queue/} were fsync'd (the
    directory fsync of step 2 comes after both renames).  A crash after
    the 250, of the process or of the machine, finds both files complete
    under their final names.
  - A crash before step 3 loses only messages that got no 250 (the client
    still has them and tries again).  What it may leave: files in
    C{tmp/} (removed at start); or, for a batch whose directory fsync had
    not finished, one of a message's two names without the other.  An
    envelope without its data file, or a data file without its envelope,
    was never acknowledged, because the acknowledgement needs both: it is
    removed at start.  A message with both names is complete (each file was
    fsync'd before it was renamed) and is delivered, although its client
    may send it again: a duplicate, never a loss.
  - A committed envelope is only ever replaced whole: the new version is
    written to C{tmp/}, fsync'd and renamed over the old one, so a crash
    leaves the old or the new, both valid.  Replacing it without a
    directory fsync is safe for the same reason: either version is correct,
    the older one merely repeats a delivery.
  - A finished message loses its envelope first, then its data; a data file
    whose envelope is gone is an orphan and is removed at start.  Removal is
    not fsync'd: after a machine crash a finished message may come back and
    be delivered again (at least once, at worst twice).
  - The data file's size is recorded in the envelope and checked at start;
    an envelope that does not parse, or whose data has the wrong size,
    cannot come from this sequence: it is moved to C{corrupt/} and logged.

Group commit: the directory fsync and the renames, the part that must be
serialised, are done once per batch; the file fsyncs run in parallel in a
dedicated, bounded thread pool, where the file system's journal merges the
flushes of concurrent fsyncs.  Under load each 250 costs two file fsyncs,
about 1/N of a directory fsync, and no fsync waits behind another message's
fsync.

Owns: the files, their order of operations, and recovery at start.  Must
not: decide what to deliver (the runner does), block the reactor thread
(every file operation runs in the spool's own thread pool), or use the
reactor's shared thread pool.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from mailframe.backends._files import fsyncDirectory, makeDirectory
from mailframe.message import Message
from mailframe.queue.entry import EntryError, QueueEntry

__all__ = ["Spool", "SpoolError", "Worker", "threadWorker"]

log = Logger(namespace="mailframe.queue")

T = TypeVar("T")
Worker = Callable[[Callable[[], Any]], "defer.Deferred[Any]"]
"""Runs a blocking function away from the reactor thread; a Deferred of its result."""

DATA = ".msg"
ENVELOPE = ".json"
_READ_SIZE = 1 << 16


class SpoolError(Exception):
    """The spool directory cannot be used."""


def threadWorker(reactor: Any, pool: ThreadPool) -> Worker:
    """A L{Worker} running functions in C{pool} (results delivered in the reactor)."""

    def run(f: Callable[[], Any]) -> defer.Deferred[Any]:
        return deferToThreadPool(reactor, pool, f)

    return run


@dataclass(eq=False)
class _Pending:
    """A message on its way into the spool."""

    entry: QueueEntry
    data: bytes | Message
    deferred: defer.Deferred[None] | None = None
    written: bool = False
    cancelled: bool = False
    renamed: list[str] = field(default_factory=list)


class Spool:
    """
    The spool directory C{path} (created, mode 0700, if missing).

    @param reactor: the reactor (its threads run nothing of ours unless
        C{worker} is given; a pool of C{threads} threads is made instead).
    @param threads: the most spool threads (file writes run in parallel).
    @param worker: a L{Worker} to use instead of the spool's own pool
        (tests pass one that runs functions at once, or when told).
    @param committed: called in the reactor thread with each entry (and its
        data when it was given as bytes) once it is durable; the runner's
        C{enqueue}.
    """

    def __init__(
        self,
        path: str,
        reactor: Any,
        threads: int = 16,
        worker: Worker | None = None,
        committed: Callable[[QueueEntry, bytes | None], None] | None = None,
    ) -> None:
        self.path = os.path.abspath(path)
        self.reactor = reactor
        self.tmp = os.path.join(self.path, "tmp")
        self.queue = os.path.join(self.path, "queue")
        self.corrupt = os.path.join(self.path, "corrupt")
        self.committed = committed
        self._pool: ThreadPool | None = None
        if worker is None:
            self._pool = ThreadPool(minthreads=0, maxthreads=threads, name="mailframe-spool")
            worker = threadWorker(reactor, self._pool)
        self._worker = worker
        self._ready: list[_Pending] = []
        self._early: list[_Pending] = []
        self._recoveredAll = False
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
        d = self._worker(self._recover)
        return d.addCallback(self._recovered)

    def stop(self) -> None:
        """Stop the thread pool (waits for running file operations)."""
        if self._pool is not None and self._pool.started:
            self._pool.stop()

    def _recovered(self, result: tuple[list[QueueEntry], list[str]]) -> list[QueueEntry]:
        entries, notes = result
        for note in notes:
            log.warn("spool {path}: {note}", path=self.path, note=note)
        self._ids.update(e.id for e in entries)
        self._recoveredAll = True
        early, self._early = self._early, []
        for pending in early:
            if not pending.cancelled:
                self._write(pending)
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
        before its commit leaves nothing behind.  Messages added before
        L{start} has cleaned up wait for it.
        """
        self._ids.add(entry.id)
        pending = _Pending(entry, data)

        def cancel(_: defer.Deferred[None]) -> None:
            pending.cancelled = True

        pending.deferred = defer.Deferred(cancel)
        if self._recoveredAll:
            self._write(pending)
        else:
            self._early.append(pending)
        return pending.deferred

    def _write(self, pending: _Pending) -> None:
        self._worker(lambda: self._writeFiles(pending)).addCallbacks(
            self._written, self._failed, callbackArgs=(pending,), errbackArgs=(pending,)
        )

    def _writeFiles(self, pending: _Pending) -> None:
        """Blocking: step 1, the two files in tmp/, each fsync'd."""
        entry = pending.entry
        data = pending.data
        chunks: Iterable[bytes] = (data,) if isinstance(data, bytes) else data.chunks()
        dataPath = os.path.join(self.tmp, entry.id + DATA)
        try:
            size = _writeDurably(dataPath, chunks)
            entry.size = size
            _writeDurably(os.path.join(self.tmp, entry.id + ENVELOPE), (entry.toBytes(),))
        except BaseException:
            _unlinkQuietly(dataPath)
            _unlinkQuietly(os.path.join(self.tmp, entry.id + ENVELOPE))
            raise

    def _written(self, _: object, pending: _Pending) -> None:
        pending.written = True
        self._ready.append(pending)
        if not self._committing:
            self._commit()

    def _failed(self, reason: Failure, pending: _Pending) -> None:
        self._ids.discard(pending.entry.id)
        log.error(
            "{id} cannot be written to the spool: {error}",
            id=pending.entry.id,
            error=_oneLine(reason),
        )
        if pending.deferred is not None and not pending.cancelled:
            pending.deferred.errback(reason)

    def _commit(self) -> None:
        batch, self._ready = self._ready, []
        self._committing = True
        self.batches += 1
        self._worker(lambda: self._commitBatch(batch)).addBoth(self._committed, batch)

    def _commitBatch(self, batch: list[_Pending]) -> None:
        """Blocking: step 2, the renames and one directory fsync."""
        for pending in batch:
            entryID = pending.entry.id
            tmpData = os.path.join(self.tmp, entryID + DATA)
            tmpEnvelope = os.path.join(self.tmp, entryID + ENVELOPE)
            if pending.cancelled:
                _unlinkQuietly(tmpData)
                _unlinkQuietly(tmpEnvelope)
                continue
            for tmpPath, suffix in ((tmpData, DATA), (tmpEnvelope, ENVELOPE)):
                target = os.path.join(self.queue, entryID + suffix)
                os.rename(tmpPath, target)
                pending.renamed.append(target)
        fsyncDirectory(self.queue)

    def _committed(self, result: object, batch: list[_Pending]) -> None:
        self._committing = False
        failed = isinstance(result, Failure)
        if failed:
            log.error("spool commit failed: {error}", error=_oneLine(result))
            paths = [p for pending in batch for p in pending.renamed]
            names = [
                os.path.join(self.tmp, p.entry.id + s) for p in batch for s in (DATA, ENVELOPE)
            ]
            self._worker(lambda: _unlinkAll(paths + names))
        for pending in batch:
            d = pending.deferred
            if failed or pending.cancelled:
                self._ids.discard(pending.entry.id)
                if failed and d is not None and not pending.cancelled:
                    d.errback(result)  # type: ignore[arg-type]
                continue
            if self.committed is not None:
                data = pending.data if isinstance(pending.data, bytes) else None
                try:
                    self.committed(pending.entry, data)
                except Exception:
                    log.failure("{id}: queueing a committed message failed", id=pending.entry.id)
            if d is not None:
                d.callback(None)
        if self._ready:
            self._commit()

    # -- changing and removing ---------------------------------------------------------

    def update(self, entry: QueueEntry) -> defer.Deferred[None]:
        """Replace the envelope of C{entry} (written, fsync'd, renamed over the old)."""
        tmpPath = os.path.join(self.tmp, f"{entry.id}{ENVELOPE}.{next(self._counter)}")
        data = entry.toBytes()
        target = os.path.join(self.queue, entry.id + ENVELOPE)

        def replace() -> None:
            try:
                _writeDurably(tmpPath, (data,))
                os.rename(tmpPath, target)
            except BaseException:
                _unlinkQuietly(tmpPath)
                raise

        return self._worker(replace)

    def remove(self, entryID: str) -> None:
        """Remove a finished entry: its envelope, then its data (batched, not fsync'd)."""
        self._ids.discard(entryID)
        self._removals.append(entryID)
        if not self._removing:
            self._removeBatch()

    def _removeBatch(self) -> None:
        batch, self._removals = self._removals, []
        self._removing = True

        def work() -> None:
            for entryID in batch:
                _unlinkQuietly(os.path.join(self.queue, entryID + ENVELOPE))
                _unlinkQuietly(os.path.join(self.queue, entryID + DATA))

        def done(result: object) -> None:
            self._removing = False
            if isinstance(result, Failure):
                log.failure("removing finished messages failed", result)
            if self._removals:
                self._removeBatch()

        self._worker(work).addBoth(done)

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

    # -- recovery ---------------------------------------------------------------------------

    def _recover(self) -> tuple[list[QueueEntry], list[str]]:
        """Blocking: create the directories, clean up, read the entries."""
        notes: list[str] = []
        try:
            for path in (self.path, self.tmp, self.queue):
                makeDirectory(path)
        except OSError as e:
            raise SpoolError(f"cannot create spool {self.path}: {e.strerror or e}") from None
        if not os.access(self.queue, os.W_OK | os.X_OK):
            raise SpoolError(f"spool {self.path} is not writable")
        for name in os.listdir(self.tmp):
            _unlinkQuietly(os.path.join(self.tmp, name))
        names = set(os.listdir(self.queue))
        entries: list[QueueEntry] = []
        for name in sorted(names):
            stem, suffix = os.path.splitext(name)
            if suffix == DATA and stem + ENVELOPE not in names:
                _unlinkQuietly(os.path.join(self.queue, name))
                notes.append(f"removed {name}: a message never acknowledged, or finished")
            elif suffix == ENVELOPE:
                if stem + DATA not in names:
                    _unlinkQuietly(os.path.join(self.queue, name))
                    notes.append(f"removed {name}: an envelope never acknowledged (no data)")
                    continue
                entry = self._readEntry(stem, notes)
                if entry is not None:
                    entries.append(entry)
        entries.sort(key=lambda e: (e.arrival, e.id))
        return entries, notes

    def _readEntry(self, stem: str, notes: list[str]) -> QueueEntry | None:
        envelopePath = os.path.join(self.queue, stem + ENVELOPE)
        dataPath = os.path.join(self.queue, stem + DATA)
        try:
            with open(envelopePath, "rb") as f:
                entry = QueueEntry.fromBytes(f.read())
            if entry.id != stem:
                raise EntryError(f"the envelope names {entry.id!r}")
            size = os.path.getsize(dataPath)
            if size != entry.size:
                raise EntryError(f"the data has {size} octets, the envelope says {entry.size}")
        except (OSError, EntryError) as e:
            makeDirectory(self.corrupt)
            for path in (envelopePath, dataPath):
                with contextlib.suppress(OSError):
                    shutil.move(path, os.path.join(self.corrupt, os.path.basename(path)))
            notes.append(f"moved {stem} to corrupt/: {e}")
            return None
        return entry


def _writeDurably(path: str, chunks: Iterable[bytes]) -> int:
    """Write a new file (mode 0600), fsync it; return its size."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
    size = 0
    try:
        for chunk in chunks:
            view = memoryview(chunk)
            while view:
                n = os.write(fd, view)
                view = view[n:]
                size += n
        os.fsync(fd)
    finally:
        os.close(fd)
    return size


def _unlinkAll(paths: Iterable[str]) -> None:
    for path in paths:
        _unlinkQuietly(path)


def _unlinkQuietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def _oneLine(reason: Any) -> str:
    value = getattr(reason, "value", reason)
    return " ".join(f"{type(value).__name__}: {value}".split())[:300]
