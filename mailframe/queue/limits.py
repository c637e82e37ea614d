"""
The runner's two policies: L{RetryPolicy} (when to try again, when to give
up, when to warn) and L{Limiter} (how many deliveries at once, in all and
per destination).

Owns: their arithmetic.  Must not: touch files, time anything itself (the
runner's clock does) or deliver.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from twisted.internet import defer

__all__ = ["Limiter", "RetryPolicy"]


@dataclass(frozen=True)
class RetryPolicy:
    """
    Back-off in seconds: the first retry C{initial} after the first attempt,
    then twice as long each time, at most C{maximum} apart; recipients still
    pending C{giveUp} after arrival fail.  C{delayWarning}: after this long
    a delay warning is sent once (0: never).
    """

    initial: float = 300.0
    maximum: float = 3600.0
    giveUp: float = 5 * 86400.0
    delayWarning: float = 0.0

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.maximum:
            raise ValueError("the first retry must be positive and at most the longest interval")
        if self.giveUp <= 0 or self.delayWarning < 0:
            raise ValueError("give-up must be positive and delay-warning not negative")

    def delayAfter(self, attempts: int) -> float:
        """Seconds from the end of attempt number C{attempts} (1, 2 ...) to the next."""
        return min(self.maximum, self.initial * 2.0 ** min(max(attempts - 1, 0), 64))


class Limiter:
    """At most C{total} holders, at most C{perKey} per key; waiters served in order."""

    def __init__(self, total: int, perKey: int) -> None:
        self.total = total
        self.perKey = perKey
        self.active = 0
        self.byKey: dict[str, int] = {}
        self._waiting: deque[tuple[str, defer.Deferred[None]]] = deque()

    def _free(self, key: str) -> bool:
        return self.active < self.total and self.byKey.get(key, 0) < self.perKey

    def tryAcquire(self, key: str) -> bool:
        """Take a place now if one is free (and nobody waits for this key)."""
        if self._free(key) and all(k != key for k, _ in self._waiting):
            self._take(key)
            return True
        return False

    def acquire(self, key: str) -> defer.Deferred[None]:
        if self.tryAcquire(key):
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._waiting.append((key, d))
        return d

    def _take(self, key: str) -> None:
        self.active += 1
        self.byKey[key] = self.byKey.get(key, 0) + 1

    def release(self, key: str) -> None:
        self.active -= 1
        left = self.byKey[key] - 1
        if left:
            self.byKey[key] = left
        else:
            del self.byKey[key]
        for waiter in list(self._waiting):
            if not self._free(waiter[0]):
                if self.active >= self.total:
                    break
                continue
            self._waiting.remove(waiter)
            self._take(waiter[0])
            waiter[1].callback(None)
