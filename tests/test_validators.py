"""Tests for mailframe.validators.basic and mailframe.validators.addresses."""

from __future__ import annotations

import os
from typing import Any, cast

from twisted.internet.task import Clock
from twisted.logger import ILogObserver, Logger
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from mailframe.address import parseMailbox
from mailframe.envelope import Envelope, Recipient, SessionInfo
from mailframe.interfaces import ILocalDomains, IRecipientValidator
from mailframe.reply import Reply
from mailframe.validators import addresses
from mailframe.validators.addresses import AddressListValidator, parseAddressList
from mailframe.validators.basic import AnyRecipient, DomainsValidator

SESSION = SessionInfo("S1", "192.0.2.9", 1234, "192.0.2.1", 25, "mx.example")


def ask(validator: Any, address: str) -> Reply | None:
    """Ask a validator about one recipient."""
    envelope = Envelope("Q1", parseMailbox("sender@example.net"))
    result: Reply | None = validator.validateRecipient(
        SESSION, envelope, Recipient(parseMailbox(address))
    )
    return result


class AnyRecipientTests(TestCase):
    """AnyRecipient accepts everyone."""

    def test_interface(self) -> None:
        """AnyRecipient provides IRecipientValidator."""
        self.assertTrue(verifyObject(IRecipientValidator, AnyRecipient()))

    def test_accepts(self) -> None:
        """Any recipient gets a positive reply."""
        for address in ("a@example.com", "whoever@elsewhere.example", '"x y"@[192.0.2.1]'):
            reply = ask(AnyRecipient(), address)
            assert reply is not None
            self.assertTrue(reply.isPositive)


class DomainsValidatorTests(TestCase):
    """DomainsValidator accepts the addresses of its domains."""

    def test_interfaces(self) -> None:
        """DomainsValidator provides IRecipientValidator and ILocalDomains."""
        v = DomainsValidator(["example.com"])
        self.assertTrue(verifyObject(IRecipientValidator, v))
        self.assertTrue(verifyObject(ILocalDomains, v))

    def test_domains(self) -> None:
        """The domains attribute lists the names given, duplicates and trailing dots removed."""
        v = DomainsValidator(["example.com", "example.org.", "EXAMPLE.com"])
        self.assertEqual(v.domains, ("example.com", "example.org"))

    def test_acceptsCaseInsensitively(self) -> None:
        """Any local part of a listed domain is accepted, whatever the case."""
        v = DomainsValidator(["Example.COM"])
        for address in ("a@example.com", "B@EXAMPLE.COM", "c@Example.Com"):
            reply = ask(v, address)
            assert reply is not None
            self.assertEqual(reply.code, 250)

    def test_idna(self) -> None:
        """A U-label domain matches its A-label form and the other way round."""
        self.assertIsNotNone(ask(DomainsValidator(["bücher.example"]), "x@xn--bcher-kva.example"))
        self.assertIsNotNone(ask(DomainsValidator(["xn--bcher-kva.example"]), "x@BÜCHER.example"))

    def test_noOpinion(self) -> None:
        """Other domains, subdomains included, get None (no opinion)."""
        v = DomainsValidator(["example.com"])
        self.assertIsNone(ask(v, "a@example.org"))
        self.assertIsNone(ask(v, "a@sub.example.com"))

    def test_badDomains(self) -> None:
        """A name that is not a domain, or no names at all, is a ValueError."""
        e = self.assertRaises(ValueError, DomainsValidator, ["exa mple.com"])
        self.assertIn("exa mple.com", str(e))
        self.assertRaises(ValueError, DomainsValidator, [])


class AddressListTestsMixin:
    """A list file, a fake clock and recorded log events."""

    mktemp: Any
    patch: Any

    def setUp(self) -> None:
        self.path = self.mktemp()
        self.clock = Clock()
        self.events: list[dict[str, Any]] = []
        self.patch(addresses, "log", Logger(observer=cast(ILogObserver, self.events.append)))
        self.mtime = 1_000_000_000

    def writeList(self, data: bytes) -> None:
        """Write the list, giving it a new modification time."""
        with open(self.path, "wb") as f:
            f.write(data)
        self.mtime += 10
        os.utime(self.path, (self.mtime, self.mtime))

    def warnings(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["log_level"].name == "warn"]


class AddressListParsingTests(AddressListTestsMixin, TestCase):
    """The file format and the comparison."""

    def test_interface(self) -> None:
        """AddressListValidator provides IRecipientValidator."""
        self.writeList(b"a@example.com\n")
        self.assertTrue(
            verifyObject(IRecipientValidator, AddressListValidator(self.clock, self.path))
        )

    def test_format(self) -> None:
        """Blank lines and # comments (whole-line or trailing) are ignored."""
        self.writeList(
            b"# staff\n\n  alice@example.com  \r\n"
            b"bob@example.com   # Bob\n"
            b'"odd # one"@example.com\n'
            b"#not@example.com\n"
        )
        v = AddressListValidator(self.clock, self.path)
        self.assertEqual(len(v), 3)
        self.assertIsNotNone(ask(v, "alice@example.com"))
        self.assertIsNotNone(ask(v, "bob@example.com"))
        self.assertIsNotNone(ask(v, '"odd # one"@example.com'))
        self.assertIsNone(ask(v, "not@example.com"))

    def test_comparison(self) -> None:
        """Local parts compare case-insensitively, domains by their IDNA key."""
        self.writeList(b"Alice@Example.com\nj\xc3\xb6rg@b\xc3\xbccher.example\n")
        v = AddressListValidator(self.clock, self.path)
        reply = ask(v, "ALICE@example.COM")
        assert reply is not None
        self.assertEqual(reply.code, 250)
        self.assertIsNotNone(ask(v, "JÖRG@xn--bcher-kva.example"))
        self.assertIsNone(ask(v, "alice@example.org"))
        self.assertIsNone(ask(v, "alicia@example.com"))

    def test_badLines(self) -> None:
        """Bad lines are reported with their line numbers in one ValueError."""
        self.writeList(
            b"ok@example.com\n\nnot an address\nok2@example.com\n@example.com\n\xff@x\n"
        )
        e = self.assertRaises(ValueError, AddressListValidator, self.clock, self.path)
        message = str(e)
        self.assertIn(self.path, message)
        self.assertIn("line 3", message)
        self.assertIn("line 5", message)
        self.assertIn("line 6: not UTF-8", message)
        self.assertNotIn("line 4", message)

    def test_manyBadLines(self) -> None:
        """Only the first five bad lines are spelled out."""
        e = self.assertRaises(ValueError, parseAddressList, b"x\n" * 8, "f")
        self.assertIn("line 5", str(e))
        self.assertNotIn("line 6", str(e))
        self.assertIn("and 3 more", str(e))

    def test_missingFile(self) -> None:
        """A missing file at construction is a one-line ValueError naming it."""
        e = self.assertRaises(ValueError, AddressListValidator, self.clock, self.path)
        self.assertIn(self.path, str(e))
        self.assertNotIn("\n", str(e))


class AddressListReloadTests(AddressListTestsMixin, TestCase):
    """Re-reading the file when it changes, timed by the clock."""

    def setUp(self) -> None:
        super().setUp()
        self.writeList(b"old@example.com\n")
        self.validator = AddressListValidator(self.clock, self.path)

    def test_rereadAfterASecond(self) -> None:
        """A changed file is used after one second of the clock, not before."""
        self.writeList(b"new@example.com\n")
        self.clock.advance(0.5)
        self.assertIsNotNone(ask(self.validator, "old@example.com"))
        self.assertIsNone(ask(self.validator, "new@example.com"))
        self.clock.advance(0.5)
        self.assertIsNotNone(ask(self.validator, "new@example.com"))
        self.assertIsNone(ask(self.validator, "old@example.com"))

    def test_statAtMostOncePerSecond(self) -> None:
        """Many checks within a second stat the file once; an unchanged file is not read."""
        stats: list[str] = []
        realSignature = addresses._signature

        def signature(path: str) -> Any:
            stats.append(path)
            return realSignature(path)

        self.patch(addresses, "_signature", signature)
        reads: list[bytes] = []
        realParse = addresses.parseAddressList

        def parse(data: bytes, name: str) -> Any:
            reads.append(data)
            return realParse(data, name)

        self.patch(addresses, "parseAddressList", parse)
        for _ in range(12):
            self.clock.advance(0.25)
            ask(self.validator, "old@example.com")
            ask(self.validator, "nobody@example.com")
        self.assertEqual(len(stats), 3)
        self.assertEqual(reads, [])

    def test_disappears(self) -> None:
        """If the file goes away the last good list stays and one warning is logged."""
        os.unlink(self.path)
        for _ in range(3):
            self.clock.advance(1)
            self.assertIsNotNone(ask(self.validator, "old@example.com"))
        [warning] = self.warnings()
        self.assertIn(self.path, warning["problem"])

    def test_becomesUnparsable(self) -> None:
        """If the file no longer parses the last good list stays; fixed, it is read again."""
        self.writeList(b"new@example.com\nbroken\n")
        for _ in range(3):
            self.clock.advance(1)
            self.assertIsNotNone(ask(self.validator, "old@example.com"))
            self.assertIsNone(ask(self.validator, "new@example.com"))
        [warning] = self.warnings()
        self.assertIn("line 2", warning["problem"])
        self.writeList(b"new@example.com\n")
        self.clock.advance(1)
        self.assertIsNotNone(ask(self.validator, "new@example.com"))
        self.assertIsNone(ask(self.validator, "old@example.com"))

    def test_reappears(self) -> None:
        """A file that comes back after going away is read again."""
        os.unlink(self.path)
        self.clock.advance(1)
        ask(self.validator, "old@example.com")
        self.writeList(b"back@example.com\n")
        self.clock.advance(1)
        self.assertIsNotNone(ask(self.validator, "back@example.com"))
