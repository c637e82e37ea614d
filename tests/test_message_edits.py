"""
Editing a L{mailframe.message.Message} (what milters need): the header
section as fields, rewritten whole; the body read on its own and replaced
through storage of its own, with the ownership rules kept.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from mailframe.message import Message, MessageClosed

HEAD = b"From: a@example.org\r\nSubject: hello\r\n\tthere\r\nTo: b@example.com\r\n"
BODY = b"line one\r\nline two\r\n"


def message(data: bytes = HEAD + b"\r\n" + BODY, spill: int = 1 << 20) -> Message:
    m = Message(spillThreshold=spill)
    m.write(data)
    m.finish()
    m.prependTrace(b"Received: from x\r\n\tby y\r\n")
    return m


def openDescriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


class HeaderFieldTests(SynchronousTestCase):
    def test_fields(self) -> None:
        """headerFields: the prepended fields, then the received ones, continuation lines kept."""
        for spill in (1 << 20, 10):
            m = message(spill=spill)
            self.assertEqual(
                m.headerFields(),
                [
                    b"Received: from x\r\n\tby y\r\n",
                    b"From: a@example.org\r\n",
                    b"Subject: hello\r\n\tthere\r\n",
                    b"To: b@example.com\r\n",
                ],
            )
            self.assertEqual(m.traceField, b"Received: from x\r\n\tby y\r\n")

    def test_replace(self) -> None:
        """replaceHeaderFields rewrites the header section only; the body is the same."""
        for spill in (1 << 20, 10):
            m = message(spill=spill)
            fields = m.headerFields()
            fields[2] = b"Subject: changed\r\n"
            fields.insert(1, b"X-Added: 1\r\n")
            del fields[-1]
            m.replaceHeaderFields(fields)
            expected = (
                b"Received: from x\r\n\tby y\r\nX-Added: 1\r\nFrom: a@example.org\r\n"
                b"Subject: changed\r\n\r\n" + BODY
            )
            self.assertEqual(m.getvalue(), expected)
            self.assertEqual(m.size, len(expected))
            self.assertEqual(m.headerFields(), fields)
            m.prependHeader("X-Top", "1")
            self.assertTrue(m.getvalue().startswith(b"X-Top: 1\r\nReceived: "))

    def test_traceStaysPrepended(self) -> None:
        """After a rewrite the trace field still counts as prepended (removeHeaderFields keeps it)."""
        m = message()
        m.replaceHeaderFields(m.headerFields())
        removed = m.removeHeaderFields(lambda name, value: name == "Received")
        self.assertEqual(removed, 0)

    def test_badField(self) -> None:
        """A field with a bare LF or no colon is refused, and nothing changes."""
        m = message()
        before = m.getvalue()
        for bad in (b"X: a\nb\r\n", b"no colon\r\n", b"X: a\r\nnot folded\r\n", b"X: a"):
            self.assertRaises(ValueError, m.replaceHeaderFields, [bad])
        self.assertEqual(m.getvalue(), before)


class BodyTests(SynchronousTestCase):
    def test_bodyChunks(self) -> None:
        """bodyChunks reads what follows the blank line, in memory or on disk."""
        for spill in (1 << 20, 10):
            self.assertEqual(b"".join(message(spill=spill).bodyChunks(7)), BODY)
        self.assertEqual(b"".join(message(b"\r\nonly body\r\n").bodyChunks()), b"only body\r\n")
        self.assertEqual(b"".join(message(b"X: 1\r\n").bodyChunks()), b"")

    def test_replaceBody(self) -> None:
        """A replacement becomes the body; the header section and its edits stay."""
        for spill in (1 << 20, 10):
            m = message(spill=spill)
            fields = m.headerFields()
            m.replaceHeaderFields([*fields, b"X-New: 1\r\n"])
            replacement = m.bodyReplacement()
            replacement.write(b"new ")
            replacement.write(b"body\r\n")
            self.assertEqual(replacement.size, 10)
            self.assertEqual(b"".join(m.bodyChunks()), BODY)  # not yet
            m.replaceBody(replacement)
            value = m.getvalue()
            self.assertTrue(value.endswith(b"X-New: 1\r\n\r\nnew body\r\n"), value)
            self.assertEqual(m.size, len(value))
            self.assertEqual(b"".join(m.bodyChunks()), b"new body\r\n")

    def test_largeReplacementOnDisk(self) -> None:
        """A large replacement spills to its own file; readers made before read the old body."""
        m = message()
        before = m.chunks()
        replacement = m.bodyReplacement()
        piece = b"x" * 1000 + b"\r\n"
        for _ in range(3000):
            replacement.write(piece)
        m.replaceBody(replacement)
        self.assertFalse(m.inMemory)
        self.assertEqual(b"".join(before), message().getvalue())
        self.assertEqual(b"".join(m.bodyChunks()), piece * 3000)
        m.close()
        self.assertTrue(m.closed)

    def test_discard(self) -> None:
        """A discarded replacement changes nothing and leaves no descriptor open."""
        m = message(spill=10)
        count = openDescriptors()
        replacement = m.bodyReplacement()
        replacement.write(b"y" * 100)
        replacement.discard()
        replacement.discard()
        self.assertEqual(openDescriptors(), count)
        self.assertEqual(b"".join(m.bodyChunks()), BODY)
        self.assertRaises(RuntimeError, m.replaceBody, replacement)

    def test_closedMessage(self) -> None:
        """A message its owner closed cannot get a new body."""
        m = message()
        hold = m.retain()
        replacement = m.bodyReplacement()
        m.close()
        self.assertRaises(MessageClosed, m.replaceBody, replacement)
        replacement.discard()
        hold.release()
        self.assertTrue(m.closed)
