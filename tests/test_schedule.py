"""Tests for L{mailframe.queue._schedule.Schedule}: the runner's timers and attempts under way."""

from __future__ import annotations

from twisted.internet import task
from twisted.trial.unittest import SynchronousTestCase

from mailframe.queue._schedule import Schedule
from mailframe.queue.entry import QueueEntry


def entry(entryID: str) -> QueueEntry:
    return QueueEntry(id=entryID, sender="<>", recipients=[], arrival=0.0)


class ScheduleTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.fired: list[str] = []
        self.schedule = Schedule(self.clock, self.fired.append)

    def test_timers(self) -> None:
        """A timer fires once at its time; a new one replaces the old; cancel removes it."""
        self.schedule.at(entry("A"), 10.0)
        self.schedule.at(entry("A"), 20.0)
        self.assertEqual(self.schedule.scheduledAt("A"), 20.0)
        self.clock.advance(15)
        self.assertEqual(self.fired, [])
        self.clock.advance(5)
        self.assertEqual(self.fired, ["A"])
        self.assertIsNone(self.schedule.scheduledAt("A"))
        self.schedule.at(entry("B"), 5.0)
        self.schedule.cancel("B")
        self.clock.advance(100)
        self.assertEqual(self.fired, ["A"])

    def test_pastIsNow(self) -> None:
        """A time already past fires on the next turn."""
        self.clock.advance(100)
        self.schedule.at(entry("A"), 1.0)
        self.clock.advance(0)
        self.assertEqual(self.fired, ["A"])

    def test_attempts(self) -> None:
        """One attempt at a time; a deletion during one is reported when it ends."""
        self.assertTrue(self.schedule.begin("A"))
        self.assertFalse(self.schedule.begin("A"))
        self.assertTrue(self.schedule.underWay("A"))
        self.assertFalse(self.schedule.idle())
        self.assertFalse(self.schedule.forget("A"))  # files wait for the attempt
        self.assertTrue(self.schedule.end("A"))  # deleted meanwhile
        self.assertTrue(self.schedule.idle())
        self.assertTrue(self.schedule.forget("B"))  # nothing under way: at once
        self.assertFalse(self.schedule.end("B"))
