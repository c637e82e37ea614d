"""Tests for mailframe.backends.memory: the in-memory backend."""

from __future__ import annotations

from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from mailframe.backends.memory import MemoryBackend, StoredMessage
from mailframe.interfaces import IDeliveryBackend
from tests.test_backends_maildir import MESSAGE, makeEnvelope, makeMessage


class MemoryBackendTests(TestCase):
    """MemoryBackend keeps or counts what it is given."""

    def test_interface(self) -> None:
        """MemoryBackend provides IDeliveryBackend."""
        self.assertTrue(verifyObject(IDeliveryBackend, MemoryBackend()))

    def test_keeps(self) -> None:
        """Each delivery is stored with its envelope and CRLF bytes, and fires None."""
        backend = MemoryBackend()
        envelope = makeEnvelope("a@example.com", "b@example.com")
        self.assertIsNone(backend.deliver(envelope, makeMessage()))
        self.assertEqual(backend.messages, [StoredMessage(envelope, MESSAGE)])
        self.assertEqual(backend.count, 1)

    def test_spilledMessage(self) -> None:
        """A message held in a temporary file is stored whole."""
        backend = MemoryBackend()
        body = b"x" * 5000 + b"\r\n"
        backend.deliver(makeEnvelope("a@example.com", "b@example.com"), makeMessage(body, 100))
        self.assertEqual(backend.messages[0].data, body)

    def test_countOnly(self) -> None:
        """With keep=False messages are counted, not kept."""
        backend = MemoryBackend(keep=False)
        envelope = makeEnvelope("", "b@example.com")
        for _ in range(3):
            self.assertIsNone(backend.deliver(envelope, makeMessage()))
        self.assertEqual((backend.count, backend.messages), (3, []))
