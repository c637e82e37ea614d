"""
Recovery of a spool at start, after a clean stop or a crash: L{recover}.

What it finds and what it does (why each case means what it says is the
durability argument of L{mailframe.queue.spool}):

  - C{tmp/*}: half-written files of commits that never finished: removed.
  - C{queue/ID.msg} without C{queue/ID.json}: a message never acknowledged
    (its commit did not finish) or a finished one whose removal did not:
    removed.
  - C{queue/ID.json} without C{queue/ID.msg}: never acknowledged: removed.
  - both, and the envelope parses, names C{ID} and gives the data's size:
    a queued message, returned.
  - both, but the envelope does not parse or the size is wrong: this
    sequence cannot produce it: moved to C{corrupt/}, never deleted.
  - C{free/*}: recycled files, taken back into the pool.

Owns: that decision table.  Must not: import twisted (it runs in a spool
thread and returns notes for the reactor thread to log).
"""

from __future__ import annotations

import contextlib
import os
import shutil

from mailframe.backends._files import makeDirectory
from mailframe.queue._files import DATA, ENVELOPE, FilePool, SpoolError, unlinkQuietly
from mailframe.queue.entry import EntryError, QueueEntry

__all__ = ["recover"]


def recover(path: str, free: FilePool, corrupt: str) -> tuple[list[QueueEntry], list[str]]:
    """
    Blocking: create the spool C{path} (C{tmp/}, C{queue/}, C{free/}) if
    missing, clean up, and read the queued entries.

    @return: the entries, oldest first, and notes (one line each) to log.
    @raise SpoolError: if the directory cannot be created or written.
    """
    tmp = os.path.join(path, "tmp")
    queue = os.path.join(path, "queue")
    notes: list[str] = []
    try:
        for directory in (path, tmp, queue, free.directory):
            makeDirectory(directory)
        free.load()
    except OSError as e:
        raise SpoolError(f"cannot create spool {path}: {e.strerror or e}") from None
    if not os.access(queue, os.W_OK | os.X_OK):
        raise SpoolError(f"spool {path} is not writable")
    for name in os.listdir(tmp):
        unlinkQuietly(os.path.join(tmp, name))
    names = set(os.listdir(queue))
    entries: list[QueueEntry] = []
    for name in sorted(names):
        stem, suffix = os.path.splitext(name)
        if suffix == DATA and stem + ENVELOPE not in names:
            unlinkQuietly(os.path.join(queue, name))
            notes.append(f"removed {name}: a message never acknowledged, or finished")
        elif suffix == ENVELOPE:
            if stem + DATA not in names:
                unlinkQuietly(os.path.join(queue, name))
                notes.append(f"removed {name}: an envelope never acknowledged (no data)")
                continue
            entry = _readEntry(queue, stem, corrupt, notes)
            if entry is not None:
                entries.append(entry)
    entries.sort(key=lambda e: (e.arrival, e.id))
    return entries, notes


def _readEntry(queue: str, stem: str, corrupt: str, notes: list[str]) -> QueueEntry | None:
    envelopePath = os.path.join(queue, stem + ENVELOPE)
    dataPath = os.path.join(queue, stem + DATA)
    try:
        with open(envelopePath, "rb") as f:
            entry = QueueEntry.fromBytes(f.read())
        if entry.id != stem:
            raise EntryError(f"the envelope names {entry.id!r}")
        size = os.path.getsize(dataPath)
        if size != entry.size:
            raise EntryError(f"the data has {size} octets, the envelope says {entry.size}")
    except (OSError, EntryError) as e:
        makeDirectory(corrupt)
        for source in (envelopePath, dataPath):
            with contextlib.suppress(OSError):
                shutil.move(source, os.path.join(corrupt, os.path.basename(source)))
        notes.append(f"moved {stem} to corrupt/: {e}")
        return None
    return entry
