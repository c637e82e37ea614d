"""
Named, bounded thread pools, one per kind of blocking work, so that one
kind cannot starve another: a burst of argon2 verifications (64 MiB and
much CPU each) or of DKIM signatures never delays the fsync of a Maildir
delivery, and a mailbox waiting for its lock never delays a login.

  - L{DISK}: the file backends (maildir, mbox), 8 threads;
  - L{HASHING}: password verification (L{mailframe.auth.passwords}),
    2 threads (at most 128 MiB of argon2 memory at once);
  - L{DKIM}: DKIM and DMARC cryptography (L{mailframe.policy.dkim}), 4 threads.

The spool keeps a pool of its own (L{mailframe.queue.spool}): the 250 of a
server with a queue waits for it, so nothing else may fill it.

L{threadPools} gives the L{ThreadPools} of a reactor (one set per
reactor).  A pool starts on first use and stops when the reactor shuts
down (a C{during shutdown} trigger, like the reactor's own pool), after
the work already running ends.  Its threads are daemon threads, so a
process that exits without shutting its reactor down does not hang on
them: a job cut short that way was never acknowledged (every backend
answers only once its work is durable).

L{deferToPool} runs a function in a pool and, unlike
C{deferToThreadPool}, can call C{whenDone} in the reactor thread once the
function has really returned, even if the Deferred was cancelled before:
that is where a delivery releases the L{mailframe.message.Hold} on the
message its thread reads.

Owns: the pools, their sizes and their life.  Must not: import the global
reactor; know what runs in them.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar

from twisted.internet import defer
from twisted.internet.interfaces import IReactorFromThreads
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

__all__ = [
    "DEFAULT_SIZES",
    "DISK",
    "DKIM",
    "HASHING",
    "ThreadPools",
    "WorkerPool",
    "deferToPool",
    "threadPools",
]

log = Logger(namespace="mailframe.threads")

T = TypeVar("T")

DISK = "disk"
HASHING = "hashing"
DKIM = "dkim"

DEFAULT_SIZES: Mapping[str, int] = {DISK: 8, HASHING: 2, DKIM: 4}
"""Threads per pool; a name not listed gets L{OTHER_SIZE}."""

OTHER_SIZE = 4


class WorkerPool(Protocol):
    """What L{deferToPool} needs of a pool (a C{ThreadPool}, or a test's fake)."""

    def callInThreadWithCallback(
        self,
        onResult: Callable[[bool, Any], object] | None,
        func: Callable[..., Any],
        *args: Any,
        **kw: Any,
    ) -> None: ...


def _daemonThread(*args: Any, **kwargs: Any) -> threading.Thread:
    return threading.Thread(*args, daemon=True, **kwargs)


class _DaemonThreadPool(ThreadPool):
    threadFactory = staticmethod(_daemonThread)  # type: ignore[assignment]


def deferToPool(
    reactor: IReactorFromThreads,
    pool: WorkerPool,
    f: Callable[[], T],
    whenDone: Callable[[], object] | None = None,
) -> defer.Deferred[T]:
    """
    Run C{f()} in C{pool}; a Deferred of its result, fired in the reactor
    thread.  C{whenDone}, if given, is called in the reactor thread once
    C{f} has returned or raised, before the Deferred fires, and also when
    the Deferred was cancelled meanwhile (cancelling does not stop C{f}).
    """
    d: defer.Deferred[T] = defer.Deferred()

    def finish(ok: bool, result: Any) -> None:
        if whenDone is not None:
            try:
                whenDone()
            except Exception:
                log.failure("after a job in a thread")
        if ok:
            d.callback(result)
        else:
            d.errback(result if isinstance(result, Failure) else Failure(result))

    def onResult(ok: bool, result: Any) -> None:
        reactor.callFromThread(finish, ok, result)

    pool.callInThreadWithCallback(onResult, f)
    return d


class ThreadPools:
    """
    The named pools of one reactor (see the module docstring).

    @param sizes: threads per name, instead of L{DEFAULT_SIZES}.
    """

    def __init__(self, reactor: Any, sizes: Mapping[str, int] | None = None) -> None:
        self.reactor = reactor
        self.sizes = dict(DEFAULT_SIZES)
        self._pools: dict[str, ThreadPool] = {}
        self._trigger: object = None
        for name, size in (sizes or {}).items():
            self.setSize(name, size)

    def size(self, name: str) -> int:
        return self.sizes.get(name, OTHER_SIZE)

    def setSize(self, name: str, size: int) -> None:
        """Bound the pool C{name} to C{size} threads (now, if it is running)."""
        if size < 1:
            raise ValueError(f"the {name} thread pool needs at least one thread, not {size}")
        self.sizes[name] = size
        pool = self._pools.get(name)
        if pool is not None:
            pool.adjustPoolsize(0, size)

    def pool(self, name: str) -> ThreadPool:
        """The pool C{name}, started (on first use) and stopped at reactor shutdown."""
        pool = self._pools.get(name)
        if pool is None:
            if self._trigger is None:
                self._trigger = self.reactor.addSystemEventTrigger("during", "shutdown", self.stop)
            pool = self._pools[name] = _DaemonThreadPool(0, self.size(name), f"mailframe-{name}")
            pool.start()
        return pool

    def run(self, name: str, f: Callable[..., T], *args: Any) -> defer.Deferred[T]:
        """C{f(*args)} in the pool C{name}; a Deferred of its result."""
        return deferToPool(self.reactor, self.pool(name), lambda: f(*args))

    def stop(self) -> None:
        """Stop every pool, after the work running in it (called at reactor shutdown)."""
        pools, self._pools = self._pools, {}
        trigger, self._trigger = self._trigger, None
        if trigger is not None:
            with contextlib.suppress(ValueError, KeyError):  # it is running now
                self.reactor.removeSystemEventTrigger(trigger)
        for pool in pools.values():
            pool.stop()


_registry: weakref.WeakKeyDictionary[object, ThreadPools] = weakref.WeakKeyDictionary()


def threadPools(reactor: Any) -> ThreadPools:
    """The L{ThreadPools} of C{reactor} (made on first use)."""
    pools = _registry.get(reactor)
    if pools is None:
        pools = _registry[reactor] = ThreadPools(reactor)
    return pools
