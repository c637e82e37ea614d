"""
Tests for L{mailframe.interfaces.IQueueStore}: the file spool provides it,
and the queue runner reaches its store only through it.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from mailframe.interfaces import IQueueStore
from mailframe.queue.entry import QueueEntry, RecipientState
from mailframe.queue.spool import Spool


class FileSpoolStoreTests(SynchronousTestCase):
    """The file spool is an L{IQueueStore}."""

    def test_interface(self) -> None:
        """Spool provides IQueueStore (verifyObject)."""
        spool = Spool(self.mktemp(), None, worker=defer.execute)  # type: ignore[arg-type]
        self.assertTrue(verifyObject(IQueueStore, spool))

    def test_addReport(self) -> None:
        """A report is added as any entry: durable when its Deferred fires."""
        spool = Spool(self.mktemp(), None, worker=defer.execute)  # type: ignore[arg-type]
        spool.start()
        report = QueueEntry("P1R1", "", [RecipientState("a@example.org")], 1.0, report=True)
        self.successResultOf(spool.addReport("P1", report, b"Subject: report\r\n\r\nx\r\n"))
        again = Spool(spool.path, None, worker=defer.execute)  # type: ignore[arg-type]
        entries = self.successResultOf(again.start())
        self.assertEqual([e.id for e in entries], ["P1R1"])
