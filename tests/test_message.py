"""Tests for L{mailframe.message}."""

from __future__ import annotations

import os
import threading

from twisted.trial.unittest import SynchronousTestCase

from mailframe.message import Hold, Message, MessageClosed, toLF


def openDescriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def spilled(data: bytes, spill: int = 100) -> Message:
    m = Message(spillThreshold=spill)
    m.write(data)
    m.finish()
    return m


class MessageTests(SynchronousTestCase):
    def test_inMemory(self) -> None:
        """A small message stays in memory; prepended fields come first, newest on top."""
        m = Message()
        m.write(b"Subject: x\r\n\r\n")
        m.write(b"body\r\n")
        m.finish()
        m.prependHeader("Received", "from a\r\n\tby b")
        m.prependHeader("X-Top", "1")
        self.assertTrue(m.inMemory)
        self.assertEqual(
            m.getvalue(), b"X-Top: 1\r\nReceived: from a\r\n\tby b\r\nSubject: x\r\n\r\nbody\r\n"
        )
        self.assertEqual(m.size, len(m.getvalue()))
        self.assertEqual(m.bodySize, 20)
        self.assertEqual(m.open().read(), m.getvalue())

    def test_spill(self) -> None:
        """A large message moves to a temporary file and reads back the same."""
        m = Message(spillThreshold=100)
        parts = [bytes([65 + i]) * 70 + b"\r\n" for i in range(10)]
        for p in parts:
            m.write(p)
        m.finish()
        self.assertFalse(m.inMemory)
        self.assertEqual(b"".join(m.chunks(size=33)), b"".join(parts))
        self.assertEqual(m.open().read(), b"".join(parts))
        self.assertEqual(next(iter(m.chunks()))[:1], b"A")
        m.close()

    def test_headers(self) -> None:
        """headers() parses the header section only."""
        m = Message()
        m.write(b"Subject: hello\r\nFrom: a@b.c\r\n\r\nSubject: not a header\r\n")
        m.finish()
        m.prependHeader("Received", "x")
        h = m.headers()
        self.assertEqual(h["Subject"], "hello")
        self.assertEqual(h.get_all("Received"), ["x"])

    def test_badHeader(self) -> None:
        """Header injection through prependHeader is refused."""
        m = Message()
        self.assertRaises(ValueError, m.prependHeader, "X: y", "v")
        self.assertRaises(ValueError, m.prependHeader, "X", "a\r\nInjected: yes")
        self.assertRaises(ValueError, m.prependHeader, "X", "a\nb")

    def test_writeAfterFinish(self) -> None:
        """A finished message takes no more data."""
        m = Message()
        m.finish()
        self.assertRaises(RuntimeError, m.write, b"x")


class OwnershipTests(SynchronousTestCase):
    """retain, release and close: closed by its last user, never under a reader."""

    DATA = b"Subject: x\r\n\r\n" + b"".join(b"line %04d\r\n" % i for i in range(500))

    def both(self) -> list[Message]:
        """The same message in memory and spilled to a temporary file."""
        return [spilled(self.DATA, 1 << 20), spilled(self.DATA)]

    def test_closeFrees(self) -> None:
        """close() with no holder frees the storage: no new reader, a clear error."""
        for m in self.both():
            m.close()
            self.assertTrue(m.closing)
            self.assertTrue(m.closed)
            self.assertRaises(MessageClosed, m.chunks)
            self.assertRaises(MessageClosed, m.getvalue)
            self.assertRaises(MessageClosed, m.open)
            self.assertRaises(MessageClosed, m.retain)
            self.assertRaises(RuntimeError, m.write, b"x")
            self.assertEqual(m.size, len(self.DATA))
            m.close()  # again: harmless

    def test_closeWhileHeld(self) -> None:
        """Closed while held, it stays whole until the last hold is released."""
        for m in self.both():
            first, second = m.retain(), m.retain()
            m.close()
            self.assertTrue(m.closing)
            self.assertFalse(m.closed)
            self.assertEqual(m.getvalue(), self.DATA)
            first.release()
            first.release()  # twice: counted once
            self.assertFalse(m.closed)
            self.assertEqual(b"".join(m.chunks(size=7)), self.DATA)
            second.release()
            self.assertTrue(first.released and second.released)
            self.assertTrue(m.closed)

    def test_releaseBeforeClose(self) -> None:
        """Released before the owner closes it, the message stays open for its owner."""
        m = spilled(self.DATA)
        m.retain().release()
        self.assertFalse(m.closed)
        self.assertEqual(m.getvalue(), self.DATA)
        m.close()
        self.assertTrue(m.closed)

    def test_holdHelpers(self) -> None:
        """A Hold is a context manager, and passThrough releases and returns its argument."""
        m = spilled(self.DATA)
        with m.retain() as hold:
            self.assertIsInstance(hold, Hold)
            m.close()
            self.assertFalse(m.closed)
        self.assertTrue(m.closed)
        m = spilled(self.DATA)
        hold = m.retain()
        m.close()
        self.assertEqual(hold.passThrough("result"), "result")
        self.assertTrue(m.closed)

    def test_readerOutlivesClose(self) -> None:
        """
        A reader made before the storage is freed reads this message whole,
        even when new files take the freed descriptor numbers.
        """
        for m in self.both():
            reader = m.chunks(size=64)
            first = next(reader)
            chain = m.open()
            m.close()
            self.assertTrue(m.closed)
            others = [spilled(b"X" * 1000) for _ in range(5)]
            self.assertEqual(first + b"".join(reader), self.DATA)
            self.assertEqual(chain.read(), self.DATA)
            for other in others:
                other.close()

    def test_readerInAnotherThread(self) -> None:
        """A thread reading while held, the owner closing meanwhile: the thread reads it whole."""
        m = spilled(self.DATA * 20)
        hold = m.retain()
        started, closed = threading.Event(), threading.Event()
        out: list[bytes] = []

        def read() -> None:
            reader = m.chunks(size=512)
            parts = [next(reader)]
            started.set()
            closed.wait(10)
            parts.extend(reader)
            out.append(b"".join(parts))

        thread = threading.Thread(target=read)
        thread.start()
        started.wait(10)
        m.close()
        closed.set()
        thread.join(10)
        hold.release()
        self.assertEqual(out, [self.DATA * 20])
        self.assertTrue(m.closed)

    def test_readersCloseTheirDescriptors(self) -> None:
        """A reader's descriptor is closed at its end, on close(), and by headers()."""
        m = spilled(self.DATA)
        before = openDescriptors()
        reader = m.chunks()
        self.assertEqual(openDescriptors(), before + 1)
        b"".join(reader)
        self.assertEqual(openDescriptors(), before)
        reader = m.chunks()
        next(reader)
        reader.close()  # type: ignore[attr-defined]
        self.assertEqual(openDescriptors(), before)
        m.headers()
        f = m.open()
        f.read(10)
        f.close()
        self.assertEqual(openDescriptors(), before)
        m.close()
        self.assertEqual(openDescriptors(), before - 1)  # the temporary file


class ToLFTests(SynchronousTestCase):
    def test_acrossChunks(self) -> None:
        """CRLF split over two chunks becomes one LF; bare CRs stay."""
        self.assertEqual(
            b"".join(toLF(iter([b"a\r", b"\nb\r\n", b"c\rd", b"\r"]))), b"a\nb\nc\rd\r"
        )


class RemoveHeaderFieldsTests(SynchronousTestCase):
    def message(self, body: bytes, spill: int = 1 << 20) -> Message:
        m = Message(spillThreshold=spill)
        for i in range(0, len(body), 7):
            m.write(body[i : i + 7])
        m.finish()
        m.prependHeader("Received", "by us")
        return m

    def test_removes(self) -> None:
        """Matching fields (folded ones whole) go; others, ours and the body stay."""
        body = (
            b"Authentication-Results: mx.example; spf=pass\r\n\tsmtp.mailfrom=a@b\r\n"
            b"Subject: hi\r\n"
            b"Authentication-Results: other.example; dkim=pass\r\n"
            b"\r\nAuthentication-Results: mx.example; in the body\r\n"
        )
        for spill in (1 << 20, 10):
            m = self.message(body, spill)
            n = m.removeHeaderFields(
                lambda name, value: (
                    name.lower() == "authentication-results" and value.startswith("mx.example")
                )
            )
            self.assertEqual(n, 1)
            expected = (
                b"Received: by us\r\nSubject: hi\r\n"
                b"Authentication-Results: other.example; dkim=pass\r\n"
                b"\r\nAuthentication-Results: mx.example; in the body\r\n"
            )
            self.assertEqual(m.getvalue(), expected)
            self.assertEqual(m.size, len(expected))
            self.assertEqual(m.open().read(), expected)

    def test_nothingToRemove(self) -> None:
        """Without a match the message is untouched."""
        m = self.message(b"Subject: x\r\n\r\nbody\r\n")
        self.assertEqual(m.removeHeaderFields(lambda n, v: False), 0)
        self.assertEqual(m.getvalue(), b"Received: by us\r\nSubject: x\r\n\r\nbody\r\n")

    def test_noHeader(self) -> None:
        """A message that starts with its body has no fields to remove."""
        m = self.message(b"\r\nbody\r\n")
        self.assertEqual(m.removeHeaderFields(lambda n, v: True), 0)

    def test_beforeFinish(self) -> None:
        """Fields are removed from a complete message only."""
        m = Message()
        self.assertRaises(RuntimeError, m.removeHeaderFields, lambda n, v: True)
