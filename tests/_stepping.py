"""
A thread pool the test drives one step at a time, for the tests of message
ownership (tests/test_ownership.py): each job runs in a real thread that
stops at every checkpoint (before each chunk a message reader returns,
each C{open}, C{fsync}, C{link} and C{rename}) until the test lets it
go on, so that the test can act (close the message, drop the connection)
between any two steps of a backend's thread work.  Results come back
through L{SteppingReactor.callFromThread}, run when the test says.

Owns: nothing of mailframe.  Must not: let a thread run unobserved (every
wait has a deadline).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from mailframe import message as messageModule

__all__ = ["Stepper", "SteppingPool", "SteppingReactor", "installCheckpoints"]

WAIT = 30.0
"""Seconds the test waits for a job to reach its next checkpoint."""

_local = threading.local()


def checkpoint() -> None:
    """In a stepped thread: stop here until the test lets the job go on."""
    stepper = getattr(_local, "stepper", None)
    if stepper is not None:
        stepper._pause()


def installCheckpoints(case: SynchronousTestCase) -> None:
    """
    Make the functions a backend's thread work calls checkpoints (for this
    test).  C{fsync} becomes only a checkpoint: what is tested is what a
    file holds, not when the disk has it, and fsyncs would make the tests slow.
    """
    for name in ("open", "fsync", "link", "rename"):
        real = getattr(os, name) if name != "fsync" else _noFsync

        def stepped(*args: Any, _real: Any = real, **kwargs: Any) -> Any:
            checkpoint()
            return _real(*args, **kwargs)

        case.patch(os, name, stepped)
    realNext = messageModule._Reader.__next__

    def nextChunk(self: Any) -> bytes:
        checkpoint()
        return realNext(self)

    case.patch(messageModule._Reader, "__next__", nextChunk)


def _noFsync(fd: int) -> None:
    os.fstat(fd)  # a closed descriptor still fails


class Stepper:
    """One job in its own thread, run to its next checkpoint by L{step}."""

    def __init__(self, f: Callable[[], Any], onResult: Callable[[bool, Any], object]) -> None:
        self._f = f
        self._onResult = onResult
        self._reached = threading.Lock()  # released by the job: it stopped, or ended
        self._go = threading.Lock()  # released by the test: go on
        self._reached.acquire()
        self._go.acquire()
        self.done = False
        self.steps = 0
        self.thread = threading.Thread(target=self._run, name="stepped", daemon=True)

    def _run(self) -> None:
        _local.stepper = self
        try:
            checkpoint()  # a pool may start a job late: the first step is before any work
            result: tuple[bool, Any] = (True, self._f())
        except BaseException:
            result = (False, Failure())
        _local.stepper = None
        self._onResult(*result)
        self.done = True
        self._reached.release()

    def _pause(self) -> None:
        self._reached.release()
        if not self._go.acquire(timeout=WAIT):
            raise AssertionError("the test never let the job go on")

    def _wait(self) -> None:
        if not self._reached.acquire(timeout=WAIT):
            raise AssertionError("a stepped job did not reach its next checkpoint")

    def start(self) -> None:
        """Run the job to its first checkpoint."""
        self.thread.start()
        self._wait()

    def step(self) -> bool:
        """Run the job to its next checkpoint; False once it has finished."""
        if self.done:
            return False
        self.steps += 1
        self._go.release()
        self._wait()
        return not self.done

    def finish(self) -> None:
        while self.step():
            pass
        self.thread.join(WAIT)


class SteppingPool:
    """A thread pool whose jobs wait to be stepped (see L{Stepper})."""

    def __init__(self) -> None:
        self.jobs: list[Stepper] = []

    def callInThreadWithCallback(
        self, onResult: Callable[[bool, Any], object] | None, f: Callable[..., Any], *a: Any,
        **kw: Any,
    ) -> None:  # fmt: skip
        job = Stepper(lambda: f(*a, **kw), onResult or (lambda ok, result: None))
        self.jobs.append(job)
        job.start()

    def finishAll(self, reactor: SteppingReactor) -> None:
        """Run every job (and those they start) to its end, with the reactor's calls."""
        while True:
            pending = [j for j in self.jobs if not j.done]
            if not pending:
                reactor.runPending()
                if not any(not j.done for j in self.jobs):
                    return
                continue
            for job in pending:
                job.finish()
            reactor.runPending()


class SteppingReactor:
    """callFromThread keeps the call until L{runPending}, in the test's thread."""

    def __init__(self) -> None:
        self._calls: list[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]] = []
        self._lock = threading.Lock()

    def callFromThread(self, f: Callable[..., Any], *a: Any, **kw: Any) -> None:
        with self._lock:
            self._calls.append((f, a, kw))

    def runPending(self) -> int:
        ran = 0
        while True:
            with self._lock:
                calls, self._calls = self._calls, []
            if not calls:
                return ran
            for f, a, kw in calls:
                f(*a, **kw)
                ran += 1
