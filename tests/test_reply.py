"""Tests for L{mailframe.reply}."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mailframe import reply as R
from mailframe.reply import Reply, SMTPError


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


class SMTPErrorTests(SynchronousTestCase):
    def test_forms(self) -> None:
        """SMTPError takes a Reply or its parts, and refuses positive codes."""
        self.assertEqual(SMTPError(R.USER_UNKNOWN).reply, R.USER_UNKNOWN)
        self.assertEqual(SMTPError(550, (5, 1, 1), "No such user here").reply, R.USER_UNKNOWN)
        self.assertRaises(ValueError, SMTPError, 250)
        self.assertIn("550 5.1.1", str(SMTPError(R.USER_UNKNOWN)))
