"""Tests for L{mailframe.address}."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mailframe.address import Address, AddressError, Domain, parseMailbox


class DomainTests(SynchronousTestCase):
    def test_caseInsensitive(self) -> None:
        """Domains compare and hash case-insensitively, trailing dot ignored."""
        self.assertEqual(Domain("Example.COM"), Domain("example.com."))
        self.assertEqual(hash(Domain("Example.COM")), hash(Domain("example.com")))
        self.assertEqual(Domain("example.com"), "EXAMPLE.com")

    def test_idna(self) -> None:
        """A U-label domain equals its A-label form."""
        self.assertEqual(Domain("bücher.example"), Domain("xn--bcher-kva.example"))
        self.assertEqual(Domain("bücher.example").ascii, "xn--bcher-kva.example")
        self.assertEqual(Domain("xn--bcher-kva.example").unicode, "bücher.example")

    def test_literal(self) -> None:
        """Address literals are recognised and validated."""
        self.assertTrue(Domain.parse("[192.0.2.1]").isLiteral)
        self.assertTrue(Domain.parse("[IPv6:::1]").isLiteral)
        self.assertRaises(AddressError, Domain.parse, "[192.0.2]")
        self.assertRaises(AddressError, Domain.parse, "[IPv6:zz]")

    def test_parse(self) -> None:
        """Bad domains are refused, long ones with their own reason."""
        self.assertRaises(AddressError, Domain.parse, "-a.example")
        self.assertRaises(AddressError, Domain.parse, "a..example")
        e = self.assertRaises(AddressError, Domain.parse, "a" * 256)
        self.assertEqual(e.part, "domain-length")


class AddressTests(SynchronousTestCase):
    def test_parse(self) -> None:
        """A plain mailbox."""
        a = parseMailbox("user.name+tag@example.com")
        self.assertEqual((a.localPart, a.domain), ("user.name+tag", Domain("example.com")))
        self.assertEqual(str(a), "user.name+tag@example.com")
        self.assertEqual(a.toPath(), "<user.name+tag@example.com>")

    def test_quoted(self) -> None:
        """Quoted local parts are unquoted, and quoted again by str()."""
        a = parseMailbox('"john \\"j\\" doe"@example.com')
        self.assertEqual(a.localPart, 'john "j" doe')
        self.assertEqual(str(a), '"john \\"j\\" doe"@example.com')
        self.assertEqual(parseMailbox('"simple"@example.com'), parseMailbox("simple@example.com"))

    def test_null(self) -> None:
        """The null path."""
        self.assertTrue(Address.null().isNull)
        self.assertEqual(Address.null().toPath(), "<>")
        self.assertFalse(parseMailbox("a@b.c").isNull)

    def test_postmaster(self) -> None:
        """Postmaster is recognised case-insensitively."""
        self.assertTrue(parseMailbox("PostMaster@example.com").isPostmaster)

    def test_utf8(self) -> None:
        """RFC 6531 local parts and domains."""
        a = parseMailbox("θσερ@παράδειγμα.δοκιμή")
        self.assertTrue(a.isUTF8)
        self.assertFalse(parseMailbox("a@b.c").isUTF8)

    def test_lengthLimits(self) -> None:
        """64 octets of local part, counted in UTF-8."""
        parseMailbox("a" * 64 + "@b.c")
        e = self.assertRaises(AddressError, parseMailbox, "ü" * 33 + "@b.c")
        self.assertEqual(e.part, "local-part-length")

    def test_bad(self) -> None:
        """Malformed mailboxes are refused."""
        for text in [
            "\udc80@b.c",
            "",
            "a",
            "@b.c",
            "a@",
            "a b@c.d",
            ".a@b.c",
            "a.@b.c",
            "a@b@c.d",
            "a@b_c.d",
        ]:
            self.assertRaises(AddressError, parseMailbox, text)
