"""Tests for L{mailframe._deferreds}: plain values and settled Deferreds on one path."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from mailframe._deferreds import always, settled, then


class SettledTests(SynchronousTestCase):
    def test_firedValue(self) -> None:
        """A Deferred that fired with a value becomes the value, and still has it."""
        d = defer.succeed(7)
        self.assertEqual(settled(d), 7)
        self.assertEqual(self.successResultOf(d), 7)

    def test_notSettled(self) -> None:
        """Unfired, failed or paused Deferreds are returned as they are; a failure is kept."""
        waiting: defer.Deferred[Any] = defer.Deferred()
        self.assertIs(settled(waiting), waiting)
        failed = defer.fail(ValueError("x"))
        self.assertIs(settled(failed), failed)
        self.failureResultOf(failed, ValueError)
        paused = defer.succeed(1)
        paused.pause()
        self.assertIs(settled(paused), paused)
        paused.unpause()
        self.assertEqual(self.successResultOf(paused), 1)

    def test_plainValues(self) -> None:
        """Anything that is not a Deferred passes through."""
        self.assertIsNone(settled(None))
        self.assertEqual(settled("x"), "x")


class ThenAlwaysTests(SynchronousTestCase):
    def test_then(self) -> None:
        """then() calls at once for values, later for Deferreds, not on failure."""
        self.assertEqual(then(2, lambda v, k: v * k, 3), 6)
        d: defer.Deferred[int] = defer.Deferred()
        out = then(d, lambda v: v + 1)
        d.callback(1)
        self.assertEqual(self.successResultOf(out), 2)

    def test_always(self) -> None:
        """always() sees failures too."""
        seen: list[Any] = []
        always(defer.fail(ValueError("x")), seen.append)
        self.assertEqual(len(seen), 1)
        seen[0].trap(ValueError)
