"""Tests for L{mailframe.reply}."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mailframe import reply as R
from mailframe.reply import Reply, SMTPError, clientText


class ReplyTests(SynchronousTestCase):
    def test_singleLine(self) -> None:
        """A one-line reply with and without its enhanced code."""
        r = Reply(550, (5, 7, 1), "Relaying denied")
        self.assertEqual(r.toBytes(), b"550 5.7.1 Relaying denied\r\n")
        self.assertEqual(r.toBytes(False), b"550 Relaying denied\r\n")

    def test_multiLine(self) -> None:
        """Every line of a multi-line reply carries the code and the enhanced code."""
        r = Reply(214, (2, 0, 0), ("one", "two"))
        self.assertEqual(r.toBytes(), b"214-2.0.0 one\r\n214 2.0.0 two\r\n")
        self.assertEqual(r.lines, ("one", "two"))

    def test_emptyText(self) -> None:
        """A reply without text is the code alone."""
        self.assertEqual(Reply(250).toBytes(), b"250\r\n")
        self.assertEqual(Reply(250, None, ("a", "")).toBytes(), b"250-a\r\n250\r\n")

    def test_empty334(self) -> None:
        """An empty 334 challenge keeps its space (RFC 4954 4)."""
        self.assertEqual(Reply(334, None, "").toBytes(), b"334 \r\n")

    def test_validation(self) -> None:
        """Bad codes, mismatched enhanced codes and CR/LF in text are refused."""
        self.assertRaises(ValueError, Reply, 199)
        self.assertRaises(ValueError, Reply, 600)
        self.assertRaises(ValueError, Reply, 550, (4, 0, 0))
        self.assertRaises(ValueError, Reply, 354, (3, 0, 0))
        self.assertRaises(ValueError, Reply, 250, None, "a\r\n250 injected")
        self.assertRaises(ValueError, Reply, 250, None, ("a\nb",))

    def test_classes(self) -> None:
        """isPositive, isTransient and isPermanent."""
        self.assertTrue(R.START_DATA.isPositive)
        self.assertTrue(R.LOCAL_ERROR.isTransient)
        self.assertTrue(R.USER_UNKNOWN.isPermanent)

    def test_utf8Text(self) -> None:
        """Reply text is encoded as UTF-8."""
        self.assertEqual(Reply(250, None, "ü").toBytes(), "250 ü\r\n".encode())

    def test_equality(self) -> None:
        """Replies are values."""
        self.assertEqual(Reply(250, (2, 0, 0), "OK"), R.OK)
        self.assertEqual(hash(Reply(250, (2, 0, 0), "OK")), hash(R.OK))

    def test_withText(self) -> None:
        """withText keeps the codes."""
        self.assertEqual(R.BAD_SEQUENCE.withText("x"), Reply(503, (5, 5, 1), "x"))

    def test_lineAtMost512(self) -> None:
        """No line on the wire is over 512 octets with its CRLF: longer text is cut with '...'."""
        for text in ["x" * 509, "x" * 600, "\u00fc" * 400]:
            for r in (Reply(250, None, text), Reply(550, (5, 1, 1), text)):
                for enhanced in (True, False):
                    data = r.toBytes(enhanced)
                    self.assertLessEqual(len(data), 512, (text[:3], enhanced))
                    self.assertTrue(data.endswith(b"\r\n"))
                    data.decode("utf-8")  # never a character cut in half
        self.assertEqual(Reply(250, None, "x" * 506).toBytes(), b"250 " + b"x" * 506 + b"\r\n")
        self.assertEqual(Reply(250, None, "x" * 507).toBytes(), b"250 " + b"x" * 503 + b"...\r\n")

    def test_challengeNotCut(self) -> None:
        """A 334 challenge is never cut: a shortened challenge would fail the mechanism."""
        challenge = "QUFB" * 200
        self.assertEqual(Reply(334, None, challenge).toBytes(), f"334 {challenge}\r\n".encode())

    def test_multiLineEachAtMost512(self) -> None:
        """Each line of a multi-line reply is cut on its own; the others and the order stay."""
        r = Reply(250, None, ("mx greets " + "n" * 1000, "PIPELINING", "\u00fc" * 300, "SIZE 10"))
        lines = r.toBytes().split(b"\r\n")
        self.assertEqual(lines[-1], b"")
        self.assertEqual([len(x) <= 510 for x in lines[:-1]], [True] * 4)
        self.assertTrue(lines[2].decode("utf-8").endswith("\u00fc..."))
        self.assertEqual(lines[1], b"250-PIPELINING")
        self.assertEqual(lines[3], b"250 SIZE 10")
        self.assertTrue(lines[0].startswith(b"250-mx greets nnn") and lines[0].endswith(b"..."))
        self.assertEqual(r.lines[0], "mx greets " + "n" * 1000)  # the value keeps its text


class ClientTextTests(SynchronousTestCase):
    def test_plain(self) -> None:
        """Printable ASCII within the bound is returned as it is."""
        for text in ["client.example", "[192.0.2.1]", "a b ~!", ""]:
            self.assertIs(clientText(text), text)

    def test_escapes(self) -> None:
        """Controls, DEL, backslash and non-ASCII are escaped, leaving printable ASCII."""
        self.assertEqual(clientText("\x1b[31mred"), "\\x1b[31mred")
        self.assertEqual(clientText("b\u00fccher\x7f"), "b\\xfccher\\x7f")
        self.assertEqual(clientText("\u017fTART \U0001f600"), "\\u017fTART \\U0001f600")
        self.assertEqual(clientText("a\\b\tc"), "a\\\\b\\tc")

    def test_truncated(self) -> None:
        """Text over the bound is cut to it, ending with '...', never inside an escape."""
        self.assertEqual(clientText("x" * 101), "x" * 97 + "...")
        self.assertEqual(clientText("x" * 100), "x" * 100)
        self.assertEqual(clientText("abcdefgh", 6), "abc...")
        self.assertEqual(clientText("ab\x1bcdef", 8), "ab...")
        self.assertEqual(clientText("ab\x1b", 8), "ab\\x1b")
        for n in range(3, 40):
            for text in ["\u00fc" * 50, "a\x00" * 50, "\U0001f600" * 20, "x" * 50]:
                out = clientText(text, n)
                self.assertLessEqual(len(out), n)
                self.assertTrue(out.isascii() and out.isprintable(), out)


class SMTPErrorTests(SynchronousTestCase):
    def test_forms(self) -> None:
        """SMTPError takes a Reply or its parts, and refuses positive codes."""
        self.assertEqual(SMTPError(R.USER_UNKNOWN).reply, R.USER_UNKNOWN)
        self.assertEqual(SMTPError(550, (5, 1, 1), "No such user here").reply, R.USER_UNKNOWN)
        self.assertRaises(ValueError, SMTPError, 250)
        self.assertIn("550 5.1.1", str(SMTPError(R.USER_UNKNOWN)))
