"""Tests for L{mailframe.validators.srs}: the SRS0/SRS1 forms, verifying and reversing."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from pathlib import Path

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from mailframe.address import Address, parseMailbox
from mailframe.interfaces import ILocalDomains, IRecipientRewriter
from mailframe.reply import SMTPError
from mailframe.validators.srs import SRS, SRSError, SRSReverser, isSRS, readSecrets
from tests.test_aliases import rewrite

SECRET = b"a secret of at least sixteen octets"
DAY = 86400.0
NOW = 20000 * DAY + 3600  # day 20000: 20000 % 1024 = 544 = 17 * 32 + 0 -> "RA"


def srs(*secrets: bytes) -> SRS:
    return SRS(secrets or (SECRET,), "fwd.example")


class FormTests(SynchronousTestCase):
    def test_timestamp(self) -> None:
        """The day modulo 1024 in two base32 characters."""
        self.assertEqual(SRS.timestamp(NOW), "RA")
        self.assertEqual(SRS.timestamp(0), "AA")
        self.assertEqual(SRS.timestamp(1023 * DAY), "77")

    def test_srs0(self) -> None:
        """SRS0=HASH=TT=domain=local@srs-domain, the hash a base64 HMAC-SHA1 of the fields."""
        forwarded = srs().forward(parseMailbox("Alice@Example.org"), NOW)
        assert forwarded is not None
        mac = hmac.new(SECRET, b"raexample.orgalice", hashlib.sha1).digest()
        expected = f"SRS0={base64.b64encode(mac).decode()[:4]}=RA=Example.org=Alice"
        self.assertEqual(str(forwarded), f"{expected}@fwd.example")

    def test_roundTrip(self) -> None:
        """Reversing gives the sender back, whatever the case of the address."""
        s = srs()
        sender = parseMailbox("alice.smith+x@example.org")
        forwarded = s.forward(sender, NOW)
        assert forwarded is not None
        self.assertEqual(s.reverse(forwarded, NOW), sender)
        lowered = Address(forwarded.localPart.lower(), forwarded.domain)
        self.assertEqual(str(s.reverse(lowered, NOW)).lower(), str(sender))

    def test_srs1(self) -> None:
        """An SRS0 sender becomes SRS1 naming the first forwarder; SRS1 stays SRS1."""
        first = SRS((b"the first forwarder's own secret",), "first.example")
        srs0 = first.forward(parseMailbox("alice@example.org"), NOW)
        assert srs0 is not None
        s = srs()
        srs1 = s.forward(srs0, NOW)
        assert srs1 is not None
        self.assertTrue(srs1.localPart.startswith("SRS1="))
        self.assertIn("=first.example==", srs1.localPart)
        self.assertEqual(s.reverse(srs1, NOW), srs0)
        self.assertEqual(first.reverse(srs0, NOW), parseMailbox("alice@example.org"))
        third = SRS((b"a third forwarder with a secret",), "third.example")
        again = third.forward(srs1, NOW)
        assert again is not None
        self.assertTrue(again.localPart.startswith("SRS1="))
        self.assertIn("=first.example==", again.localPart)
        self.assertEqual(third.reverse(again, NOW), srs0)

    def test_separators(self) -> None:
        """SRS0+ and SRS0- are read as SRS0=."""
        s = srs()
        forwarded = s.forward(parseMailbox("alice@example.org"), NOW)
        assert forwarded is not None
        for sep in "+-":
            other = Address("SRS0" + sep + forwarded.localPart[5:], forwarded.domain)
            self.assertEqual(s.reverse(other, NOW), parseMailbox("alice@example.org"))

    def test_forged(self) -> None:
        """A hash made with another secret, or changed, is refused (550 5.1.1)."""
        forged = SRS((b"somebody else's secret key",), "fwd.example").forward(
            parseMailbox("alice@example.org"), NOW
        )
        assert forged is not None
        with self.assertRaises(SRSError) as caught:
            srs().reverse(forged, NOW)
        self.assertEqual(caught.exception.reply.enhanced, (5, 1, 1))
        good = srs().forward(parseMailbox("alice@example.org"), NOW)
        assert good is not None
        tampered = Address(good.localPart.replace("alice", "bob"), good.domain)
        self.assertRaises(SRSError, srs().reverse, tampered, NOW)

    def test_expired(self) -> None:
        """An address older than maxAge days is refused (550 5.7.1); the day count wraps."""
        s = srs()
        forwarded = s.forward(parseMailbox("alice@example.org"), NOW)
        assert forwarded is not None
        s.reverse(forwarded, NOW + 21 * DAY)
        with self.assertRaises(SRSError) as caught:
            s.reverse(forwarded, NOW + 22 * DAY)
        self.assertEqual(caught.exception.reply.enhanced, (5, 7, 1))
        late = s.forward(parseMailbox("alice@example.org"), 1023 * DAY)
        assert late is not None
        s.reverse(late, 1025 * DAY)  # day 1 after day 1023: two days, not expired

    def test_rotation(self) -> None:
        """The first secret signs; every secret verifies."""
        old = srs(b"the old secret, still valid").forward(parseMailbox("a@example.org"), NOW)
        assert old is not None
        both = srs(SECRET, b"the old secret, still valid")
        self.assertEqual(both.reverse(old, NOW), parseMailbox("a@example.org"))
        new = both.forward(parseMailbox("a@example.org"), NOW)
        self.assertEqual(new, srs().forward(parseMailbox("a@example.org"), NOW))

    def test_malformed(self) -> None:
        """Addresses in no SRS form, or broken ones, are refused."""
        s = srs()
        for local in ("alice", "SRS0=abcd", "SRS0=ab=RA=x", "SRS1=abcd=host", "SRS0==RA=x=y"):
            self.assertRaises(SRSError, s.reverse, Address(local, s.domain), NOW)

    def test_notRewritten(self) -> None:
        """The null sender, and a sender whose SRS form would pass 64 octets, are not rewritten."""
        s = srs()
        self.assertIsNone(s.forward(Address.null(), NOW))
        self.assertIsNone(s.forward(parseMailbox("a" * 40 + "@example.org"), NOW))

    def test_isSRS(self) -> None:
        """isSRS tells the forms apart from ordinary local parts."""
        self.assertTrue(isSRS("SRS0=x=y"))
        self.assertTrue(isSRS("srs1+x"))
        self.assertFalse(isSRS("SRS0"))
        self.assertFalse(isSRS("srs0x=y"))
        self.assertFalse(isSRS("alice"))


class SecretsTests(SynchronousTestCase):
    def write(self, data: bytes) -> str:
        path = os.path.abspath(self.mktemp())
        Path(path).write_bytes(data)
        return path

    def test_read(self) -> None:
        """One secret a line, the first first; comments and blank lines ignored."""
        path = self.write(b"# rotate yearly\n\nthe new secret of 2026\nthe old secret of 2025\n")
        self.assertEqual(readSecrets(path), [b"the new secret of 2026", b"the old secret of 2025"])

    def test_errors(self) -> None:
        """A missing file, an empty one, or a short secret is a one-line ValueError."""
        self.assertRaises(ValueError, readSecrets, "/nonexistent/srs")
        self.assertRaises(ValueError, readSecrets, self.write(b"# none\n"))
        with self.assertRaises(ValueError) as caught:
            readSecrets(self.write(b"short\n"))
        self.assertIn("shorter than 16", str(caught.exception))


class ReverserTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.srs = srs()
        self.reverser = SRSReverser(self.srs, self.clock)

    def test_interfaces(self) -> None:
        """A rewriter that makes the SRS domain local."""
        self.assertTrue(verifyObject(IRecipientRewriter, self.reverser))
        self.assertTrue(verifyObject(ILocalDomains, self.reverser))
        self.assertEqual(self.reverser.domains, ("fwd.example",))

    def test_bounce(self) -> None:
        """An SRS address of ours stands for the original sender."""
        forwarded = self.srs.forward(parseMailbox("alice@example.org"), NOW)
        self.assertEqual(rewrite(self.reverser, str(forwarded)), [("alice@example.org", None)])

    def test_forged(self) -> None:
        """A forged one is refused with its reply."""
        with self.assertRaises(SMTPError) as caught:
            rewrite(self.reverser, "SRS0=abcd=RA=example.org=alice@fwd.example")
        self.assertEqual(caught.exception.reply.code, 550)

    def test_others(self) -> None:
        """Other domains and other local parts are left alone, unless the SRS domain is dedicated."""
        self.assertIsNone(rewrite(self.reverser, "SRS0=abcd=RA=x=y@example.com"))
        self.assertIsNone(rewrite(self.reverser, "alice@fwd.example"))
        dedicated = SRSReverser(self.srs, self.clock, dedicated=True)
        self.assertRaises(SMTPError, rewrite, dedicated, "alice@fwd.example")
        self.assertIsNone(rewrite(dedicated, "postmaster@fwd.example"))
