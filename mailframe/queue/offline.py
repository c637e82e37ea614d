"""
L{OfflineSpool}: a spool's files read and changed by C{mailframe-queue}
when no server runs on it.

Safe because of the order of operations of L{mailframe.queue.spool}:

  - reading needs no lock: an envelope is only ever replaced whole (by a
    rename), so a reader sees the old version or the new one; an envelope
    without its data file is not a queued message (skipped, as recovery
    would remove it);
  - every change needs the spool's lock (L{mailframe.queue.control}), which
    a server holds from before it reads the spool until it stops: so no
    running server owns the message being changed, and none starts until
    the change is done;
  - an envelope is changed the way the spool changes it: a new file in
    C{tmp/}, fsync'd, renamed over the old one; C{queue/} is fsync'd after
    (a hold or a deletion survives a machine crash);
  - a message is deleted envelope first, then data (a crash in between
    leaves a data file without envelope, which recovery removes).

Owns: those file operations.  Must not: import twisted; touch a spool
without its lock (L{OfflineSpool} refuses to).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mailframe.backends._files import fsyncDirectory
from mailframe.queue._files import DATA, ENVELOPE, SpoolError, unlinkQuietly, writeDurably
from mailframe.queue.control import HEAD_LIMIT, describeEntry
from mailframe.queue.entry import EntryError, QueueEntry

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

__all__ = ["OfflineSpool"]


class OfflineSpool:
    """
    The files of the spool C{path}.  C{lockFD} is the spool's lock, held
    (changes raise L{SpoolError} without it); C{clock} gives the time;
    C{warn} gets one line about each envelope that cannot be read.
    """

    def __init__(
        self, path: str, lockFD: int | None, clock: IReactorTime, warn: Callable[[str], None]
    ) -> None:
        self.path = path
        self.queue = os.path.join(path, "queue")
        self.lockFD = lockFD
        self.clock = clock
        self.warn = warn

    def _envelope(self, entryID: str) -> str:
        return os.path.join(self.queue, entryID + ENVELOPE)

    def _locked(self) -> None:
        if self.lockFD is None:
            raise SpoolError(f"{self.path}: changing the files needs the spool's lock")

    def read(self, entryID: str) -> QueueEntry | None:
        """
        The entry, or None if it has no envelope or no data (gone, or never
        acknowledged).  @raise SpoolError: an envelope that cannot be read.
        """
        if not os.path.exists(os.path.join(self.queue, entryID + DATA)):
            return None
        try:
            with open(self._envelope(entryID), "rb") as f:
                entry = QueueEntry.fromBytes(f.read())
        except FileNotFoundError:
            return None
        except (OSError, EntryError) as e:
            raise SpoolError(f"{entryID}: unreadable envelope: {e}") from None
        if entry.id != entryID:
            raise SpoolError(f"{entryID}: the envelope names {entry.id!r}")
        return entry

    def entries(self) -> list[QueueEntry]:
        """Every queued entry, oldest first (those that cannot be read: warned about)."""
        entries = []
        for name in sorted(os.listdir(self.queue)):
            stem, suffix = os.path.splitext(name)
            if suffix != ENVELOPE:
                continue
            try:
                entry = self.read(stem)
            except SpoolError as e:  # a server moves it to corrupt/ when it starts
                self.warn(f"{self.path}: {e}")
                continue
            if entry is not None:
                entries.append(entry)
        return sorted(entries, key=lambda e: (e.arrival, e.id))

    def write(self, entry: QueueEntry) -> None:
        """Replace the envelope: a new file in tmp/, fsync'd, renamed over it; queue/ fsync'd."""
        self._locked()
        tmpPath = os.path.join(self.path, "tmp", f"{entry.id}{ENVELOPE}.queuetool-{os.getpid()}")
        unlinkQuietly(tmpPath)
        try:
            writeDurably(tmpPath, (entry.toBytes(),))
            os.rename(tmpPath, self._envelope(entry.id))
        except BaseException:
            unlinkQuietly(tmpPath)
            raise
        fsyncDirectory(self.queue)

    # -- what the commands do (the same names as the control client's) -----------------

    def list(self) -> tuple[list[dict[str, Any]], float]:
        """L{describeEntry} of each entry, oldest first, and the time."""
        return [describeEntry(e, self.path) for e in self.entries()], self.clock.seconds()

    def show(self, entryID: str) -> tuple[dict[str, Any], bytes, float] | None:
        """The entry described, its first L{HEAD_LIMIT} octets, the time; None if unknown."""
        entry = self.read(entryID)
        if entry is None:
            return None
        try:
            with open(os.path.join(self.queue, entryID + DATA), "rb") as f:
                head = f.read(HEAD_LIMIT)
        except OSError:
            head = b""
        return describeEntry(entry, self.path), head, self.clock.seconds()

    def flush(self) -> int:
        """Make every entry not held due now (a server tries it once it starts); how many."""
        self._locked()
        now = self.clock.seconds()
        count = 0
        for entry in self.entries():
            if entry.held:
                continue
            count += 1
            if entry.nextAttempt > now:
                entry.nextAttempt = now
                self.write(entry)
        return count

    def delete(self, entryID: str) -> bool:
        """Remove the envelope, then the data, durably; False if there is no such entry."""
        self._locked()
        try:
            os.unlink(self._envelope(entryID))
        except FileNotFoundError:
            return False
        unlinkQuietly(os.path.join(self.queue, entryID + DATA))
        fsyncDirectory(self.queue)
        return True

    def deleteAll(self) -> int:
        """Delete every entry; how many."""
        return sum(self.delete(entry.id) for entry in self.entries())

    def hold(self, entryID: str, held: bool) -> bool | None:
        """Hold or release; False if it was so already, None if there is no such entry."""
        self._locked()
        entry = self.read(entryID)
        if entry is None:
            return None
        if entry.held == held:
            return False
        entry.held = held
        self.write(entry)
        return True

    def close(self) -> None:
        """Let go of the lock."""
        if self.lockFD is not None:
            os.close(self.lockFD)
            self.lockFD = None
