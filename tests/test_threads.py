"""
Tests for L{mailframe._threads}: the named, bounded thread pools (disk,
password hashing, DKIM), their life with the reactor, L{deferToPool} and
its C{whenDone}, and that a saturated pool does not delay another's work.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, reactor
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mailframe import _threads
from mailframe._threads import (
    DEFAULT_SIZES,
    DISK,
    DKIM,
    HASHING,
    ThreadPools,
    deferToPool,
    threadPools,
)

WAIT = 10.0


class FakeReactor:
    """Records the system event triggers; callFromThread runs at once."""

    def __init__(self) -> None:
        self.triggers: list[tuple[str, str, Callable[[], Any]]] = []
        self.removed: list[object] = []

    def addSystemEventTrigger(self, phase: str, event: str, f: Callable[[], Any]) -> object:
        self.triggers.append((phase, event, f))
        return len(self.triggers)

    def removeSystemEventTrigger(self, trigger: object) -> None:
        self.removed.append(trigger)

    def callFromThread(self, f: Callable[..., Any], *a: Any, **kw: Any) -> None:
        f(*a, **kw)


class HeldPool:
    """A pool whose jobs run when the test says (in the test's thread)."""

    def __init__(self) -> None:
        self.jobs: list[tuple[Callable[[bool, Any], object], Callable[[], Any]]] = []

    def callInThreadWithCallback(
        self, onResult: Callable[[bool, Any], object], f: Callable[..., Any], *a: Any, **kw: Any
    ) -> None:
        self.jobs.append((onResult, lambda: f(*a, **kw)))

    def runNext(self) -> None:
        onResult, f = self.jobs.pop(0)
        try:
            result = f()
        except BaseException:
            onResult(False, Failure())
        else:
            onResult(True, result)


class DeferToPoolTests(SynchronousTestCase):
    def test_result(self) -> None:
        """The function's result fires the Deferred; whenDone is called first."""
        pool, calls = HeldPool(), []
        d = deferToPool(
            FakeReactor(), pool, lambda: calls.append("f") or 7, lambda: calls.append("done")
        )
        d.addCallback(lambda r: calls.append(r))
        self.assertEqual(calls, [])
        pool.runNext()
        self.assertEqual(calls, ["f", "done", 7])

    def test_failure(self) -> None:
        """An exception fails the Deferred, after whenDone."""
        pool, calls = HeldPool(), []
        d = deferToPool(FakeReactor(), pool, lambda: 1 // 0, lambda: calls.append("done"))
        pool.runNext()
        self.failureResultOf(d, ZeroDivisionError)
        self.assertEqual(calls, ["done"])

    def test_cancelledWaitsForTheWork(self) -> None:
        """Cancelling fires CancelledError at once, but whenDone waits until the work has run."""
        pool, calls = HeldPool(), []
        d = deferToPool(
            FakeReactor(), pool, lambda: calls.append("f"), lambda: calls.append("done")
        )
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(calls, [])
        pool.runNext()
        self.assertEqual(calls, ["f", "done"])


class ThreadPoolsTests(SynchronousTestCase):
    def test_namedBoundedStartedOnFirstUse(self) -> None:
        """Each name has its own started pool, bounded by its size; one shutdown trigger."""
        fake = FakeReactor()
        pools = ThreadPools(fake, {HASHING: 1})
        self.addCleanup(pools.stop)
        self.assertEqual(fake.triggers, [])
        disk, hashing, dkim = pools.pool(DISK), pools.pool(HASHING), pools.pool(DKIM)
        self.assertEqual(len({id(disk), id(hashing), id(dkim)}), 3)
        self.assertIs(pools.pool(DISK), disk)
        self.assertEqual(
            (disk.max, hashing.max, dkim.max), (DEFAULT_SIZES[DISK], 1, DEFAULT_SIZES[DKIM])
        )
        self.assertTrue(disk.started and hashing.started and dkim.started)
        self.assertEqual(disk.name, "mailframe-disk")
        self.assertEqual([(p, e) for p, e, _ in fake.triggers], [("during", "shutdown")])
        self.assertEqual(pools.size("other"), _threads.OTHER_SIZE)

    def test_stopAtShutdown(self) -> None:
        """The shutdown trigger stops every pool (and a later use starts a new one)."""
        fake = FakeReactor()
        pools = ThreadPools(fake)
        disk = pools.pool(DISK)
        [(_, _, stop)] = fake.triggers
        stop()
        self.assertFalse(disk.started)
        again = pools.pool(DISK)
        self.addCleanup(pools.stop)
        self.assertIsNot(again, disk)

    def test_setSize(self) -> None:
        """A size can change while the pool runs; below one thread is refused."""
        pools = ThreadPools(FakeReactor())
        self.addCleanup(pools.stop)
        pool = pools.pool(DISK)
        pools.setSize(DISK, 3)
        self.assertEqual(pool.max, 3)
        self.assertRaises(ValueError, pools.setSize, HASHING, 0)
        self.assertRaises(ValueError, ThreadPools, FakeReactor(), {DKIM: -1})

    def test_onePerReactor(self) -> None:
        """threadPools gives each reactor one ThreadPools."""
        a, b = FakeReactor(), FakeReactor()
        self.assertIs(threadPools(a), threadPools(a))
        self.assertIsNot(threadPools(a), threadPools(b))

    def test_daemonThreads(self) -> None:
        """The pools' threads do not keep a process alive that did not shut its reactor down."""
        pools = ThreadPools(FakeReactor())
        self.addCleanup(pools.stop)
        seen: list[threading.Thread] = []
        done = threading.Event()
        pools.pool(DKIM).callInThread(
            lambda: (seen.append(threading.current_thread()), done.set())
        )
        self.assertTrue(done.wait(WAIT))
        self.assertTrue(seen[0].daemon)
        self.assertIn("mailframe-dkim", seen[0].name)


class StarvationTests(TestCase):
    """With the real reactor: one pool full of work does not delay another's."""

    def test_saturatedHashingDoesNotDelayDisk(self) -> Any:
        """Every hashing thread busy and more hashing queued: a disk job still runs at once."""
        pools = ThreadPools(reactor, {HASHING: 2, DISK: 2})
        self.addCleanup(pools.stop)
        release = threading.Event()
        self.addCleanup(release.set)
        running = threading.Semaphore(0)

        def hash() -> str:
            running.release()
            release.wait(WAIT)
            return "hashed"

        hashing = [pools.run(HASHING, hash) for _ in range(6)]
        for _ in range(2):
            self.assertTrue(running.acquire(timeout=WAIT))  # both hashing threads are busy

        def checkDisk(name: str) -> Any:
            self.assertIn("mailframe-disk", name)
            self.assertFalse(any(d.called for d in hashing))  # still all waiting
            release.set()
            return defer.gatherResults(hashing)

        d = pools.run(DISK, lambda: threading.current_thread().name)
        d.addCallback(checkDisk)
        d.addCallback(self.assertEqual, ["hashed"] * 6)
        return d.addTimeout(WAIT, reactor)

    def test_passwordsAndDKIMUseTheirPools(self) -> Any:
        """Password verification runs in the hashing pool; DKIM's threadRunner in the DKIM pool."""
        from mailframe.auth import passwords
        from mailframe.policy.dkim import threadRunner

        name = lambda: threading.current_thread().name  # noqa: E731
        d1 = passwords._deferToThread(name)
        d2 = threadRunner(reactor)(name)
        d = defer.gatherResults([d1, d2])

        def check(names: list[str]) -> None:
            self.assertIn("mailframe-hashing", names[0])
            self.assertIn("mailframe-dkim", names[1])

        return d.addCallback(check).addTimeout(WAIT, reactor)
