"""
Tests for L{mailframe.queue.adopt}: the spools of workers that no longer
run are adopted at start by the remaining ones, and the queue tools see
every spool.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet import defer, task
from twisted.trial.unittest import SynchronousTestCase

from mailframe.app import queuetool
from mailframe.queue.adopt import adoptSpool, adoptStranded, strandedSpools
from mailframe.queue.control import lockSpool
from mailframe.queue.entry import QueueEntry, RecipientState
from mailframe.queue.spool import Spool


def syncWorker(f: Callable[[], Any]) -> defer.Deferred[Any]:
    return defer.execute(f)


def queueMessages(path: str, ids: list[str]) -> None:
    """A spool at C{path} holding one message per id (committed as a server does)."""
    spool = Spool(path, None, worker=syncWorker)  # type: ignore[arg-type]
    spool.start()
    for entryID in ids:
        entry = QueueEntry(entryID, "a@example.org", [RecipientState("b@example.com")], 1.0)
        spool.add(entry, f"Subject: {entryID}\r\n\r\nbody\r\n".encode())


def started(path: str, **kwargs: Any) -> list[QueueEntry]:
    spool = Spool(path, None, worker=syncWorker, **kwargs)  # type: ignore[arg-type]
    return spool.start().result  # type: ignore[return-value]


class StrandedSpoolsTests(SynchronousTestCase):
    """Which spools each worker adopts."""

    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        for name in ("worker-0", "worker-1", "worker-2", "worker-3", "worker-4"):
            os.makedirs(os.path.join(self.root, name, "queue"))
        os.makedirs(os.path.join(self.root, "queue"))

    def names(self, worker: int, workers: int) -> list[str]:
        return [os.path.relpath(p, self.root) for p in strandedSpools(self.root, worker, workers)]

    def test_oneProcess(self) -> None:
        """Without workers, the process adopts every worker-K."""
        self.assertEqual(
            self.names(0, 1), ["worker-0", "worker-1", "worker-2", "worker-3", "worker-4"]
        )

    def test_shares(self) -> None:
        """With N workers, worker K adopts worker-J (J >= N, J % N == K); worker 0 the top."""
        self.assertEqual(self.names(0, 2), [".", "worker-2", "worker-4"])
        self.assertEqual(self.names(1, 2), ["worker-3"])
        self.assertEqual(self.names(0, 5), ["."])
        self.assertEqual(self.names(3, 5), [])


class AdoptTests(SynchronousTestCase):
    """Moving a stranded spool's messages."""

    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        os.makedirs(self.root)

    def test_lowerWorkers(self) -> None:
        """From 3 workers to 2: worker 0 adopts worker-2's mail, and the spool goes."""
        queueMessages(os.path.join(self.root, "worker-2"), ["A1", "A2"])
        queueMessages(os.path.join(self.root, "worker-0"), ["B1"])
        target = os.path.join(self.root, "worker-0")
        entries = started(
            target, adopt=lambda: adoptStranded(self.root, target, 0, 2)
        )  # fmt: skip
        self.assertEqual(sorted(e.id for e in entries), ["A1", "A2", "B1"])
        self.assertFalse(os.path.exists(os.path.join(self.root, "worker-2")))
        data = Path(target, "queue", "A2.msg").read_bytes()
        self.assertIn(b"Subject: A2", data)

    def test_dropWorkers(self) -> None:
        """From workers to one process: the top spool adopts every worker-K."""
        queueMessages(os.path.join(self.root, "worker-0"), ["A1"])
        queueMessages(os.path.join(self.root, "worker-1"), ["B1"])
        entries = started(self.root, adopt=lambda: adoptStranded(self.root, self.root, 0, 1))
        self.assertEqual(sorted(e.id for e in entries), ["A1", "B1"])

    def test_idTaken(self) -> None:
        """A message whose id the target has already gets a variant, its envelope rewritten."""
        queueMessages(os.path.join(self.root, "worker-1"), ["X"])
        queueMessages(self.root, ["X"])
        notes = adoptStranded(self.root, self.root, 0, 1)
        self.assertTrue(any("is X-a1 here" in n for n in notes), notes)
        entries = started(self.root)
        self.assertEqual(sorted(e.id for e in entries), ["X", "X-a1"])

    def test_busy(self) -> None:
        """A spool whose lock another process holds is left alone."""
        source = os.path.join(self.root, "worker-1")
        queueMessages(source, ["A1"])
        fd = lockSpool(source, "server")
        self.addCleanup(os.close, fd)
        notes = adoptSpool(source, self.root)
        self.assertIn("not adopting", notes[0])
        self.assertTrue(os.path.exists(os.path.join(source, "queue", "A1.json")))

    def test_crashedAdoption(self) -> None:
        """An adoption cut short after linking is finished once, not duplicated."""
        source = os.path.join(self.root, "worker-1")
        queueMessages(source, ["A1"])
        os.makedirs(os.path.join(self.root, "queue"))
        for suffix in (".msg", ".json"):
            os.link(
                os.path.join(source, "queue", "A1" + suffix),
                os.path.join(self.root, "queue", "A1" + suffix),
            )
        adoptStranded(self.root, self.root, 0, 1)
        self.assertEqual(
            sorted(os.listdir(os.path.join(self.root, "queue"))), ["A1.json", "A1.msg"]
        )
        self.assertFalse(os.path.exists(source))

    def test_corruptKept(self) -> None:
        """A stranded spool with files in corrupt/ is emptied but kept for a person."""
        source = os.path.join(self.root, "worker-1")
        queueMessages(source, ["A1"])
        os.makedirs(os.path.join(source, "corrupt"))
        Path(source, "corrupt", "Z.json").write_text("{")
        notes = adoptStranded(self.root, self.root, 0, 1)
        self.assertTrue(any("kept" in n for n in notes), notes)
        self.assertEqual(os.listdir(os.path.join(source, "queue")), [])


class ToolSeesStrandedTests(SynchronousTestCase):
    """mailframe-queue lists the messages of a stranded worker spool."""

    def test_list(self) -> None:
        """A worker-K no process runs is listed, read from its files."""
        root = os.path.abspath(self.mktemp())
        queueMessages(os.path.join(root, "worker-0"), ["A1"])
        queueMessages(os.path.join(root, "worker-7"), ["S1"])
        out, err = io.StringIO(), io.StringIO()
        clock = task.Clock()
        d = defer.ensureDeferred(
            queuetool.run(
                clock, queuetool.parser().parse_args(["--spool", root, "list"]), out, err
            )
        )
        self.assertEqual(self.successResultOf(d), 0, err.getvalue())
        self.assertIn("A1", out.getvalue())
        self.assertIn("S1", out.getvalue())
