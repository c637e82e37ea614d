"""Tests for L{mailframe.validators.virtual}: Postfix virtual(5) style maps."""

from __future__ import annotations

import os
from pathlib import Path

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from mailframe.address import Domain, parseMailbox
from mailframe.interfaces import ILocalDomains, IRecipientRewriter, IRecipientValidator
from mailframe.reply import SMTPError
from mailframe.validators.virtual import VirtualMap, parseVirtual
from tests.test_aliases import rewrite

VIRTUAL = """\
# a virtual alias domain, and its entries
virtual.example          anything
info@virtual.example     alice@example.com, bob@example.net
postmaster@virtual.example  postmaster
sales@virtual.example    info@virtual.example carol@example.com
@catch.example           catchall@example.com
joe@example.com          joe@example.com,
                         joe@archive.example
loop1@virtual.example    loop2@virtual.example
loop2@virtual.example    loop1@virtual.example
"""


class VirtualCase(SynchronousTestCase):
    def load(self, text: str, **kwargs: object) -> VirtualMap:
        path = os.path.abspath(self.mktemp())
        Path(path).write_text(text)
        return VirtualMap(Clock(), path, "mx.example", **kwargs)  # type: ignore[arg-type]


class ParseTests(SynchronousTestCase):
    def test_entries(self) -> None:
        """Addresses, catch-alls and declared domains; bare names at the origin."""
        table = parseVirtual(VIRTUAL.encode(), "v", "mx.example")
        self.assertEqual(table.domains, ("virtual.example",))
        self.assertEqual(
            table.addresses[("postmaster", "virtual.example")].targets,
            (parseMailbox("postmaster@mx.example"),),
        )
        self.assertEqual(table.catchAll["catch.example"].where, "v:6")
        self.assertEqual(len(table.addresses[("joe", "example.com")].targets), 2)
        self.assertEqual(table.warnings, ())

    def test_postmasterWarning(self) -> None:
        """A virtual alias domain without postmaster is warned about."""
        table = parseVirtual(b"v.example x\na@v.example b@example.com\n", "v", "mx.example")
        self.assertEqual(len(table.warnings), 1)
        self.assertIn("no postmaster entry", table.warnings[0])

    def test_errors(self) -> None:
        """Bad lines name the file and line."""
        for data, message in {
            b"user target@example.com\n": "a key is user@domain, @domain or a domain",
            b"a@example.com\n": "has no targets",
            b"a@example.com b@@c\n": "not an address",
            b"@bad..example x@example.com\n": "not an address or @domain",
            b" a@example.com b@example.com\n": "continuation line",
        }.items():
            with self.assertRaises(ValueError) as caught:
                parseVirtual(data, "v", "mx.example")
            self.assertIn(message, str(caught.exception))

    def test_forwarding(self) -> None:
        """Without forwarding, targets outside the local and virtual domains do not load."""

        def isLocal(d: Domain) -> bool:
            return d.key == "example.com"

        data = b"v.example x\na@v.example b@example.com, c@v.example\nd@example.com e@r.example\n"
        with self.assertRaises(ValueError) as caught:
            parseVirtual(data, "v", "mx.example", forwarding=False, isLocal=isLocal)
        self.assertIn("e@r.example is not in a local domain", str(caught.exception))


class RewriteTests(VirtualCase):
    def setUp(self) -> None:
        self.virtual = self.load(VIRTUAL, separators="+")

    def test_interfaces(self) -> None:
        """A rewriter, a validator with no opinion, and the local domains it declares."""
        self.assertTrue(verifyObject(IRecipientRewriter, self.virtual))
        self.assertTrue(verifyObject(IRecipientValidator, self.virtual))
        self.assertTrue(verifyObject(ILocalDomains, self.virtual))
        self.assertEqual(self.virtual.domains, ("virtual.example",))

    def test_address(self) -> None:
        """An entry's targets, looked up again (recursively)."""
        self.assertEqual(
            rewrite(self.virtual, "sales@virtual.example"),
            [("alice@example.com", None), ("bob@example.net", None),
             ("carol@example.com", None)],
        )  # fmt: skip

    def test_unmatched(self) -> None:
        """Unmatched: left alone, except in a virtual alias domain (550 5.1.1)."""
        self.assertIsNone(rewrite(self.virtual, "nobody@example.com"))
        with self.assertRaises(SMTPError) as caught:
            rewrite(self.virtual, "nobody@virtual.example")
        self.assertEqual(caught.exception.reply.enhanced, (5, 1, 1))
        self.assertIn("virtual alias table", caught.exception.reply.text)

    def test_catchAll(self) -> None:
        """@domain takes every address of the domain without an entry of its own."""
        self.assertEqual(rewrite(self.virtual, "x@catch.example"),
                         [("catchall@example.com", None)])  # fmt: skip

    def test_self(self) -> None:
        """An address an entry lists for itself is final (a copy kept)."""
        self.assertEqual(rewrite(self.virtual, "joe@example.com"),
                         [("joe@example.com", None), ("joe@archive.example", None)])  # fmt: skip

    def test_loop(self) -> None:
        """An address reached again is a loop: 554 5.4.6."""
        with self.assertRaises(SMTPError) as caught:
            rewrite(self.virtual, "loop1@virtual.example")
        self.assertEqual(caught.exception.reply.enhanced, (5, 4, 6))

    def test_extension(self) -> None:
        """user+ext: whole first, then user@domain and @domain, the extension added to targets."""
        virtual = self.load("a+x@example.com special@example.com\na@example.com b@example.com, "
                            "c+y@example.com\n@catch.example all@example.com\n",
                            separators="+")  # fmt: skip
        self.assertEqual(rewrite(virtual, "a+x@example.com"), [("special@example.com", None)])
        self.assertEqual(rewrite(virtual, "a+z@example.com"),
                         [("b+z@example.com", None), ("c+y@example.com", None)])  # fmt: skip
        self.assertEqual(rewrite(virtual, "q+z@catch.example"), [("all+z@example.com", None)])

    def test_noSeparators(self) -> None:
        """Without separators, user+ext is an address of its own."""
        virtual = self.load("a@example.com b@example.com\n")
        self.assertIsNone(rewrite(virtual, "a+z@example.com"))
