"""
The C{memory} backend: keeps every delivered message in a list.  For tests,
for embedding (read C{backend.messages}), and as the null sink of the
benchmarks (C{memory:keep=no} counts and drops).

It reads the message inside C{deliver} itself, so it needs no hold on it
(L{mailframe.message.Message.retain}): its owner may close it as soon as
C{deliver} has returned.

Owns: nothing durable; it says so in its name.  Must not: import
mailframe.server.
"""

from __future__ import annotations

from dataclasses import dataclass

from zope.interface import implementer

from mailframe.envelope import DeliveryResult, Envelope
from mailframe.interfaces import IDeliveryBackend
from mailframe.message import Message

__all__ = ["MemoryBackend", "StoredMessage"]


@dataclass(frozen=True)
class StoredMessage:
    """One delivered message: its envelope and its bytes (CRLF line endings)."""

    envelope: Envelope
    data: bytes


@implementer(IDeliveryBackend)
class MemoryBackend:
    """Delivers into C{self.messages}; with C{keep=False} only counts."""

    def __init__(self, keep: bool = True) -> None:
        self.keep = keep
        self.messages: list[StoredMessage] = []
        self.count = 0

    def deliver(self, envelope: Envelope, message: Message) -> DeliveryResult | None:
        """None (every recipient delivered), at once: nothing to wait for, no Deferred."""
        self.count += 1
        if self.keep:
            self.messages.append(StoredMessage(envelope, message.getvalue()))
        return None
