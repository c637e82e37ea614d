"""
Stranded spools: with C{--workers N} each worker K keeps C{SPOOL/worker-K};
after N is lowered (or C{--workers} dropped, or first given) some spool
has no process.  L{adoptStranded} runs at start, in the spool's thread,
before recovery: each worker takes over its share of the spools nobody
runs, so that their mail is delivered.

Whose share: with one process (no C{--workers}) it adopts every
C{worker-K}; with N workers, worker K adopts C{worker-J} for each
C{J >= N} with C{J % N == K}, and worker 0 also the top spool's own
C{queue/} (left from a run without workers).

How one message moves, safe against a crash at any step:

  1. take the source spool's lock (L{mailframe.queue.control.lockSpool}):
     a process still running on it (or C{mailframe-queue} working on its
     files) keeps it, and the spool is left alone;
  2. hard-link its data, then its envelope, into our C{queue/} (an id we
     already have gets a variant, C{ID-aN}, and an envelope rewritten to
     name it); C{fsync} our C{queue/};
  3. only then unlink the source's envelope, then its data; C{fsync} the
     source's C{queue/}.

A crash before 3 leaves the message whole in the source (adopted again
at the next start: a name that is already the same file is not linked
twice) and perhaps whole in ours too (then delivered twice at worst,
never lost); one name of the two in ours is removed by recovery (never
acknowledged there).  The source's lock, C{tmp/} and C{free/} go with
the emptied directory; a source with files in C{corrupt/} is kept for a
person to look at.

Owns: that decision and those file operations.  Must not: import
twisted at import time, or log (it runs in a spool thread and returns
notes for the reactor thread to log).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil

from mailframe.backends._files import fsyncDirectory
from mailframe.queue._files import DATA, ENVELOPE, SpoolError, unlinkQuietly, writeDurably
from mailframe.queue.entry import EntryError, QueueEntry

__all__ = ["adoptSpool", "adoptStranded", "strandedSpools"]

_WORKER = re.compile(r"worker-(\d+)\Z")


def strandedSpools(root: str, worker: int, workers: int) -> list[str]:
    """The spools under C{root} that the worker C{worker} of C{workers} adopts."""
    try:
        names = os.listdir(root)
    except OSError:
        return []
    found: list[tuple[int, str]] = []
    for name in names:
        m = _WORKER.match(name)
        if m is None or not os.path.isdir(os.path.join(root, name, "queue")):
            continue
        index = int(m.group(1))
        if workers <= 1 or (index >= workers and index % workers == worker):
            found.append((index, os.path.join(root, name)))
    spools = [path for _, path in sorted(found)]
    if workers > 1 and worker == 0 and os.path.isdir(os.path.join(root, "queue")):
        spools.insert(0, root)
    return spools


def adoptStranded(root: str, target: str, worker: int, workers: int) -> list[str]:
    """
    Blocking: adopt into the spool C{target} the stranded spools of
    C{root} that are this worker's share.  @return: notes to log.
    """
    notes: list[str] = []
    for source in strandedSpools(root, worker, workers):
        if os.path.abspath(source) == os.path.abspath(target):
            continue
        try:
            notes += adoptSpool(source, target, removeAfter=source != root)
        except (OSError, SpoolError) as e:
            notes.append(f"cannot adopt the stranded spool {source}: {e}")
    return notes


def adoptSpool(source: str, target: str, removeAfter: bool = True) -> list[str]:
    """
    Blocking: move every queued message of the spool C{source} into
    C{target} (whose lock the caller holds), as the module docstring says.

    @raise SpoolBusy: another process holds the source's lock.
    """
    from mailframe.queue.control import SpoolBusy, lockSpool

    try:
        lockFD = lockSpool(source, "adopting")
    except SpoolBusy as e:
        return [f"not adopting {source}: {e}"]
    try:
        moved, notes = _move(source, target)
        if moved:
            notes.append(f"adopted {moved} message(s) from the stranded spool {source}")
        if removeAfter:
            _removeEmpty(source, notes)
        else:
            with contextlib.suppress(OSError):
                os.rmdir(os.path.join(source, "queue"))
    finally:
        os.close(lockFD)
    return notes


def _move(source: str, target: str) -> tuple[int, list[str]]:
    sourceQueue = os.path.join(source, "queue")
    targetQueue = os.path.join(target, "queue")
    targetTmp = os.path.join(target, "tmp")
    os.makedirs(targetQueue, 0o700, exist_ok=True)
    os.makedirs(targetTmp, 0o700, exist_ok=True)
    notes: list[str] = []
    names = set(os.listdir(sourceQueue))
    linked: list[str] = []
    taken = set(os.listdir(targetQueue))
    for name in sorted(names):
        stem, suffix = os.path.splitext(name)
        if suffix != ENVELOPE or stem + DATA not in names:
            continue  # half a message: never acknowledged, the source's recovery's business
        sourceData = os.path.join(sourceQueue, stem + DATA)
        sourceEnvelope = os.path.join(sourceQueue, name)
        try:
            with open(sourceEnvelope, "rb") as f:
                entry = QueueEntry.fromBytes(f.read())
        except (OSError, EntryError) as e:
            notes.append(f"left {name} in {source}: {e}")
            continue
        newID = _targetID(entry.id, sourceData, targetQueue, taken)
        taken.update((newID + DATA, newID + ENVELOPE))
        targetData = os.path.join(targetQueue, newID + DATA)
        _link(sourceData, targetData)
        targetEnvelope = os.path.join(targetQueue, newID + ENVELOPE)
        if newID == entry.id:
            _link(sourceEnvelope, targetEnvelope)
        else:
            entry.id = newID
            tmp = os.path.join(targetTmp, newID + ENVELOPE)
            writeDurably(tmp, (entry.toBytes(),))
            os.rename(tmp, targetEnvelope)
            notes.append(f"{stem} of {source} is {newID} here (the id was taken)")
        linked.append(stem)
    if not linked:
        return 0, notes
    fsyncDirectory(targetQueue)
    for stem in linked:  # durable here: now the source lets go, envelope first
        unlinkQuietly(os.path.join(sourceQueue, stem + ENVELOPE))
        unlinkQuietly(os.path.join(sourceQueue, stem + DATA))
    fsyncDirectory(sourceQueue)
    return len(linked), notes


def _targetID(entryID: str, sourceData: str, targetQueue: str, taken: set[str]) -> str:
    """The id in the target: the same, unless another message has it there."""
    candidate, n = entryID, 0
    while candidate + DATA in taken or candidate + ENVELOPE in taken:
        existing = os.path.join(targetQueue, candidate + DATA)
        with contextlib.suppress(OSError):
            if os.path.samefile(existing, sourceData):  # linked by an adoption that crashed
                os.unlink(existing)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(targetQueue, candidate + ENVELOPE))
                return candidate
        n += 1
        candidate = f"{entryID}-a{n}"
    return candidate


def _link(source: str, target: str) -> None:
    """A hard link, or a durable copy across file systems."""
    try:
        os.link(source, target)
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
            raise
        with open(source, "rb") as f:
            data = f.read()
        writeDurably(target, (data,))


def _removeEmpty(source: str, notes: list[str]) -> None:
    """Remove the emptied spool C{source}, unless it still holds something to look at."""
    corrupt = os.path.join(source, "corrupt")
    with contextlib.suppress(FileNotFoundError):
        if os.listdir(corrupt):
            notes.append(f"kept {source}: its corrupt/ has files for a person to look at")
            return
    if os.listdir(os.path.join(source, "queue")):
        return
    shutil.rmtree(source, ignore_errors=True)
