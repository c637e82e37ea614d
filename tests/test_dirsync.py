"""
Tests for mailframe.backends._dirsync: the group commit of directory
fsyncs, with real threads held at chosen points by events (no sleeps), and
the Maildir backend sharing it through a real thread pool.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import TestCase

from mailframe.backends import _dirsync
from mailframe.backends._dirsync import DirectorySyncer
from mailframe.backends.maildir import MaildirBackend
from mailframe.envelope import DeliveryResult
from tests.test_backends_maildir import makeEnvelope, makeMessage

TIMEOUT = 10.0
"""Seconds any wait or join may take before the test fails (never reached
when the code is right)."""


class ControlledFsync:
    """
    A fake directory fsync that records its calls, and holds the calls
    listed in C{hold} until the test releases them.
    """

    def __init__(self, hold: set[int] | None = None) -> None:
        self.hold = hold or set()
        self.lock = threading.Lock()
        self.calls: list[str] = []
        self.completed: list[str] = []
        self.started = {n: threading.Event() for n in self.hold}
        self.release = {n: threading.Event() for n in self.hold}
        self.errors: dict[int, OSError] = {}

    def __call__(self, path: str) -> None:
        with self.lock:
            self.calls.append(path)
            n = len(self.calls)
        if n in self.hold:
            self.started[n].set()
            if not self.release[n].wait(TIMEOUT):
                raise AssertionError(f"fsync {n} was never released")
        if n in self.errors:
            raise self.errors[n]
        with self.lock:
            self.completed.append(path)


class Arrivals:
    """Counts the callers that have joined a round; an event once there are C{n}."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.count = 0
        self.reached = threading.Event()

    def __call__(self, path: str) -> None:
        self.count += 1  # called under the syncer's lock
        if self.count >= self.n:
            self.reached.set()


class Caller:
    """A thread calling C{syncer.sync(path)}; notes what it saw when it returned."""

    def __init__(self, syncer: DirectorySyncer, path: str, fsync: ControlledFsync) -> None:
        self.syncer = syncer
        self.path = path
        self.fsync = fsync
        self.error: BaseException | None = None
        self.completedAtReturn: int | None = None
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        try:
            self.syncer.sync(self.path)
        except BaseException as e:
            self.error = e
        with self.fsync.lock:
            self.completedAtReturn = len(self.fsync.completed)

    def join(self, test: TestCase) -> None:
        self.thread.join(TIMEOUT)
        test.assertFalse(self.thread.is_alive(), "a caller did not return")


def wait(test: TestCase, event: threading.Event) -> None:
    test.assertTrue(event.wait(TIMEOUT), "timed out")


class DirectorySyncerTests(TestCase):
    """One fsync per round; a caller is released only by an fsync begun after it came."""

    def start(
        self, fsync: ControlledFsync, joined: Callable[[str], object] | None = None
    ) -> DirectorySyncer:
        syncer = DirectorySyncer(fsync=fsync, joined=joined)

        def releaseAll() -> None:  # a failing test leaves no thread blocked
            for event in fsync.release.values():
                event.set()

        self.addCleanup(releaseAll)
        return syncer

    def leaderThenOthers(
        self, fsync: ControlledFsync, n: int
    ) -> tuple[DirectorySyncer, Caller, list[Caller]]:
        """
        A caller whose fsync (the first) is held, then C{n} callers that
        arrive while it runs; returns once the C{n} wait, unreleased.
        """
        arrivals = Arrivals(n + 1)
        syncer = self.start(fsync, arrivals)
        leader = Caller(syncer, "/d", fsync)
        wait(self, fsync.started[1])
        others = [Caller(syncer, "/d", fsync) for _ in range(n)]
        wait(self, arrivals.reached)
        return syncer, leader, others

    def test_singleCaller(self) -> None:
        """One caller alone: one fsync of its directory, then it returns; no state is kept."""
        fsync = ControlledFsync()
        syncer = self.start(fsync)
        syncer.sync("/d")
        self.assertEqual(fsync.calls, ["/d"])
        syncer.sync("/d")
        self.assertEqual(fsync.calls, ["/d", "/d"])
        self.assertEqual(syncer.active(), 0)

    def test_defaultFsync(self) -> None:
        """By default the directory is really fsync'd (L{fsyncDirectory}): os.fsync on it."""
        path = self.mktemp()
        os.mkdir(path)
        synced: list[bool] = []
        real = os.fsync

        def fsync(fd: int) -> None:
            synced.append(os.path.samefile(f"/proc/self/fd/{fd}", path))
            real(fd)

        self.patch(os, "fsync", fsync)
        DirectorySyncer().sync(path)
        self.assertEqual(synced, [True])

    def test_sharedSingleton(self) -> None:
        """Maildir backends share the module's syncer unless given their own."""
        a = MaildirBackend(None, self.mktemp())  # type: ignore[arg-type]
        b = MaildirBackend(None, self.mktemp())  # type: ignore[arg-type]
        self.assertIs(a.syncer, _dirsync.directorySyncer)
        self.assertIs(b.syncer, _dirsync.directorySyncer)
        mine = DirectorySyncer()
        self.assertIs(MaildirBackend(None, self.mktemp(), syncer=mine).syncer, mine)  # type: ignore[arg-type]

    def test_latecomersShareOneMoreFsync(self) -> None:
        """
        While the first fsync runs, N more callers arrive: it does not release
        them; exactly one more fsync does, and releases them all.
        """
        n = 10
        fsync = ControlledFsync(hold={1, 2})
        syncer, leader, others = self.leaderThenOthers(fsync, n)  # all N wait in the next round
        fsync.release[1].set()
        leader.join(self)
        self.assertIsNone(leader.error)
        self.assertEqual(leader.completedAtReturn, 1)
        wait(self, fsync.started[2])  # the second fsync begins: nobody of the N has returned
        self.assertEqual([c.completedAtReturn for c in others], [None] * n)
        fsync.release[2].set()
        for c in others:
            c.join(self)
        self.assertEqual(fsync.calls, ["/d", "/d"])
        self.assertEqual([c.error for c in others], [None] * n)
        self.assertEqual([c.completedAtReturn for c in others], [2] * n)
        self.assertEqual(syncer.active(), 0)

    def test_errorReachesEveryCallerOfItsRound(self) -> None:
        """
        A failed fsync raises OSError (its errno) in every caller it was to
        release; a later call fsyncs again and succeeds.
        """
        n = 5
        fsync = ControlledFsync(hold={1, 2})
        fsync.errors[2] = OSError(errno.EIO, "I/O error")
        syncer, leader, others = self.leaderThenOthers(fsync, n)
        fsync.release[1].set()
        leader.join(self)
        self.assertIsNone(leader.error)
        wait(self, fsync.started[2])
        fsync.release[2].set()
        for c in others:
            c.join(self)
        self.assertEqual(len(fsync.calls), 2)
        for c in others:
            self.assertIsInstance(c.error, OSError)
            assert isinstance(c.error, OSError)
            self.assertEqual(c.error.errno, errno.EIO)
        self.assertEqual(len({id(c.error) for c in others}), n)  # each its own exception
        syncer.sync("/d")
        self.assertEqual(len(fsync.calls), 3)
        self.assertEqual(syncer.active(), 0)

    def test_errorStaysInItsRound(self) -> None:
        """The failure of a running fsync does not reach the callers that came during it."""
        n = 3
        fsync = ControlledFsync(hold={1})
        fsync.errors[1] = OSError(errno.ENOSPC, "No space left on device")
        _, leader, others = self.leaderThenOthers(fsync, n)
        fsync.release[1].set()
        leader.join(self)
        for c in others:
            c.join(self)
        self.assertIsInstance(leader.error, OSError)
        assert isinstance(leader.error, OSError)
        self.assertEqual(leader.error.errno, errno.ENOSPC)
        self.assertEqual([c.error for c in others], [None] * n)
        self.assertEqual(len(fsync.calls), 2)

    def test_otherExceptionBecomesOSError(self) -> None:
        """An fsync failing with something other than OSError still fails its callers with one."""

        def fsync(path: str) -> None:
            raise RuntimeError("boom")

        syncer = DirectorySyncer(fsync=fsync)
        e = self.assertRaises(OSError, syncer.sync, "/d")
        self.assertEqual(e.errno, errno.EIO)
        self.assertEqual(syncer.active(), 0)

    def test_directoriesDoNotShare(self) -> None:
        """Two directories: their fsyncs run at the same time, one each."""
        fsync = ControlledFsync(hold={1, 2})
        syncer = self.start(fsync)
        a = Caller(syncer, "/a", fsync)
        wait(self, fsync.started[1])
        b = Caller(syncer, "/b", fsync)
        wait(self, fsync.started[2])  # /b's fsync began while /a's is still running
        self.assertEqual(syncer.active(), 2)
        fsync.release[2].set()
        b.join(self)
        self.assertEqual(b.completedAtReturn, 1)
        self.assertIsNone(b.error)
        fsync.release[1].set()
        a.join(self)
        self.assertIsNone(a.error)
        self.assertEqual(sorted(fsync.calls), ["/a", "/b"])
        self.assertEqual(syncer.active(), 0)


class MaildirSharingTests(TestCase):
    """The Maildir backend, through a real thread pool, shares its fsyncs of new/."""

    def test_concurrentDeliveries(self) -> Deferred[None]:
        """
        20 messages delivered at once through 8 threads: each in new/, and
        at most one directory fsync per message.
        """
        from twisted.internet import reactor

        count = 20
        synced: list[str] = []
        lock = threading.Lock()
        real = _dirsync.fsyncDirectory

        def fsync(path: str) -> None:
            with lock:
                synced.append(path)
            real(path)

        syncer = DirectorySyncer(fsync=fsync)
        pool = ThreadPool(minthreads=8, maxthreads=8, name="test-dirsync")
        pool.start()
        self.addCleanup(pool.stop)
        root = self.mktemp()
        backend = MaildirBackend(reactor, root, pool=pool, syncer=syncer)  # type: ignore[arg-type]
        ds = [
            backend.deliver(makeEnvelope("a@example.com", f"r{i}@example.com"), makeMessage())
            for i in range(count)
        ]

        def check(results: list[DeliveryResult | None]) -> None:
            self.assertEqual(results, [None] * count)
            self.assertEqual(len(os.listdir(os.path.join(root, "new"))), count)
            self.assertEqual(os.listdir(os.path.join(root, "tmp")), [])
            self.assertLessEqual(len(synced), count)
            self.assertGreaterEqual(len(synced), 1)
            self.assertEqual(set(synced), {os.path.join(os.path.abspath(root), "new")})
            self.assertEqual(syncer.active(), 0)

        d: Deferred[None] = defer.gatherResults(ds).addCallback(check)
        return d
