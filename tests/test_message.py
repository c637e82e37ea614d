"""Tests for L{mailframe.message}."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mailframe.message import Message, toLF


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
