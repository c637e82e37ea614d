"""
A message filter's quarantine with the queue on (a milter's SMFIR_QUARANTINE):
the spool holds the message, nothing is attempted, and releasing it
(C{mailframe-queue release}) delivers it.
"""

from __future__ import annotations

from tests.test_queue import QueueCase, envelope


class QuarantineTests(QueueCase):
    def test_heldUntilReleased(self) -> None:
        """A quarantined message is queued held; once released it is delivered."""
        env = envelope("s@example.com", "u@example.com")
        env.quarantine = "milter inet:127.0.0.1:8891: looks odd"
        entryID = self.send(env)
        self.assertTrue(self.runner.entries[entryID].held)
        self.clock.advance(86400)
        self.assertEqual(self.local.messages, [])
        self.successResultOf(self.runner.release(entryID))
        self.clock.advance(1)
        self.assertEqual(len(self.local.messages), 1)

    def test_notQuarantined(self) -> None:
        """Without a quarantine the message goes at once."""
        self.send(envelope("s@example.com", "u@example.com"))
        self.clock.advance(1)
        self.assertEqual(len(self.local.messages), 1)
