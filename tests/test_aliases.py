"""
Tests for L{mailframe.validators.aliases} (the /etc/aliases format, lists,
includes, loops, reloading), L{mailframe.validators.subaddress} and
L{mailframe.validators._watch}.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from twisted.internet.task import Clock
from twisted.logger import LogEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from mailframe.address import Domain, parseMailbox
from mailframe.envelope import Envelope, Recipient, SessionInfo
from mailframe.interfaces import IRecipientRewriter, IRecipientValidator
from mailframe.reply import SMTPError
from mailframe.validators.aliases import DISCARD, AliasMap, Name, parseAliases
from mailframe.validators.subaddress import Subaddress, checkSeparators, splitDetail

SESSION = SessionInfo("S1", "192.0.2.9", 1234, "192.0.2.1", 25, "mx.example")
ENVELOPE = Envelope("Q1", parseMailbox("sender@example.net"))


def rewrite(rewriter: Any, address: str) -> list[tuple[str, str | None]] | None:
    """What a rewriter makes of one address: (address, detail) pairs, or None."""
    result = rewriter.rewriteRecipient(SESSION, ENVELOPE, Recipient(parseMailbox(address)))
    if result is None:
        return None
    return [(str(r.address), r.detail) for r in result]


class LogCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.logged: list[LogEvent] = []
        globalLogPublisher.addObserver(self.logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.logged.append)

    def warnings(self) -> list[str]:
        out = []
        for e in self.logged:
            if e.get("log_level") is not None and e["log_level"].name == "warn":
                out.append(str(e.get("problem") or e.get("log_format")))
        return out

    def write(self, text: str, path: str | None = None) -> str:
        path = path or os.path.abspath(self.mktemp())
        Path(path).write_text(text, encoding="utf-8")
        return path


ALIASES = """\
# the usual ones
postmaster: root
root:       alice
Team:       alice, bob,
            carol@example.net
quoted:     "dave", <erin@example.org>
alice:      \\alice, alice@example.org
nobody:     /dev/null
a:          b
b:          c, a
c:          carol
self:       self
"""


class ParseTests(LogCase):
    def test_entries(self) -> None:
        """Names, lists over continuation lines, quoted and bracketed targets, /dev/null."""
        table = parseAliases(ALIASES.encode(), "/etc/aliases")
        self.assertEqual(len(table), 10)
        team = table.entries["team"]
        self.assertEqual(team.name, "Team")
        self.assertEqual(team.where, "/etc/aliases:4")
        self.assertEqual(
            team.targets, (Name("alice"), Name("bob"), parseMailbox("carol@example.net"))
        )
        self.assertEqual(
            table.entries["quoted"].targets, (Name("dave"), parseMailbox("erin@example.org"))
        )
        self.assertEqual(table.entries["alice"].targets[0], Name("alice", final=True))
        self.assertEqual(table.entries["nobody"].targets, (DISCARD,))

    def test_loopWarned(self) -> None:
        """A loop among names is a warning at load; a name listing itself is not."""
        table = parseAliases(ALIASES.encode(), "/etc/aliases")
        self.assertEqual(
            [w for w in table.warnings if "loop" in w],
            ["alias loop: a -> b -> a (mail to them is refused)"],
        )

    def test_duplicate(self) -> None:
        """A name defined twice: the first is used, with a warning."""
        table = parseAliases(b"x: a\nX: b\n", "f")
        self.assertEqual(table.entries["x"].targets, (Name("a"),))
        self.assertIn("f:2: X is defined again (the first, at f:1, is used)", table.warnings)

    def test_errors(self) -> None:
        """Bad lines name the file and line; at most five are shown."""
        cases = {
            b"x a\n": "f:1: expected 'name: target, ...'",
            b"x@example.com: a\n": "an alias name is a local part",
            b"x: |/usr/bin/vacation\n": "program targets",
            b"x: /var/mail/x\n": "file targets",
            b"x: a@@b\n": "not an address",
            b"x:\n": "x has no targets",
            b'x: "a\n': "unbalanced quotes",
            b"  x: a\n": "continuation line with no entry",
            b"x: a\n\n  b\n": "continuation line with no entry",
            b"x: \xff\n": "not UTF-8",
            b"x: :include:\n": "needs a file name",
        }
        for data, message in cases.items():
            with self.assertRaises(ValueError) as caught:
                parseAliases(data, "f")
            self.assertIn(message, str(caught.exception), data)
        with self.assertRaises(ValueError) as caught:
            parseAliases(b"".join(b"x%d a\n" % i for i in range(9)), "f")
        self.assertIn("and 4 more", str(caught.exception))

    def test_remoteTargetsNeedTheQueue(self) -> None:
        """Without forwarding, a target of another domain does not load."""
        local = {"example.com"}.__contains__

        def isLocal(d: Domain) -> bool:
            return local(d.key)

        data = b"x: a, b@example.com, c@remote.example\n"
        with self.assertRaises(ValueError) as caught:
            parseAliases(data, "f", forwarding=False, isLocal=isLocal)
        self.assertIn("c@remote.example is not in a local domain: forwarding needs the queue",
                      str(caught.exception))  # fmt: skip
        self.assertEqual(len(parseAliases(data, "f", forwarding=True, isLocal=isLocal)), 1)

    def test_include(self) -> None:
        """:include: reads targets from a file (commas, lines, comments), relative or absolute."""
        directory = self.mktemp()
        os.makedirs(directory)
        self.write("# members\nalice, bob\n\ncarol@example.net\n:include:more\n",
                   os.path.join(directory, "list"))  # fmt: skip
        self.write("dave\n", os.path.join(directory, "more"))
        aliases = self.write("list: :include:list, erin\n", os.path.join(directory, "aliases"))
        table = parseAliases(Path(aliases).read_bytes(), aliases)
        self.assertEqual(
            table.entries["list"].targets,
            (Name("alice"), Name("bob"), parseMailbox("carol@example.net"), Name("dave"),
             Name("erin")),
        )  # fmt: skip

    def test_includeProblems(self) -> None:
        """An include of itself is an error; a missing include fails the load."""
        directory = self.mktemp()
        os.makedirs(directory)
        self.write(":include:loop\n", os.path.join(directory, "loop"))
        aliases = self.write("x: :include:loop\n", os.path.join(directory, "aliases"))
        with self.assertRaises(ValueError) as caught:
            parseAliases(Path(aliases).read_bytes(), aliases)
        self.assertIn("includes itself", str(caught.exception))
        with self.assertRaises(OSError):
            parseAliases(b"x: :include:/nonexistent/list\n", aliases)


class ExpandTests(LogCase):
    def setUp(self) -> None:
        super().setUp()
        self.clock = Clock()
        self.aliases = AliasMap(self.clock, self.write(ALIASES), "+")

    def test_interfaces(self) -> None:
        """An AliasMap is a recipient rewriter, and a validator with no opinion."""
        self.assertTrue(verifyObject(IRecipientRewriter, self.aliases))
        self.assertTrue(verifyObject(IRecipientValidator, self.aliases))
        self.assertIsNone(
            self.aliases.validateRecipient(
                SESSION, ENVELOPE, Recipient(parseMailbox("team@example.com"))
            )
        )

    def test_notAnAlias(self) -> None:
        """An address that is no alias is left alone."""
        self.assertIsNone(rewrite(self.aliases, "zed@example.com"))

    def test_list(self) -> None:
        """A list: local names at the recipient's domain, recursively; addresses as they are."""
        self.assertEqual(
            rewrite(self.aliases, "TEAM@example.com"),
            [("alice@example.com", None), ("alice@example.org", None), ("bob@example.com", None),
             ("carol@example.net", None)],
        )  # fmt: skip

    def test_chain(self) -> None:
        """postmaster -> root -> alice -> (\\alice, alice@example.org)."""
        self.assertEqual(
            rewrite(self.aliases, "postmaster@example.org"),
            [("alice@example.org", None), ("alice@example.org", None)],
        )

    def test_self(self) -> None:
        """A name that lists itself is delivered to its own mailbox."""
        self.assertEqual(rewrite(self.aliases, "self@example.com"), [("self@example.com", None)])

    def test_loop(self) -> None:
        """A loop through other names is refused with 554 5.4.6, and logged."""
        with self.assertRaises(SMTPError) as caught:
            rewrite(self.aliases, "a@example.com")
        self.assertEqual((caught.exception.reply.code, caught.exception.reply.enhanced),
                         (554, (5, 4, 6)))  # fmt: skip
        self.assertTrue(any("loop" in str(e.get("log_format")) for e in self.logged))

    def test_discard(self) -> None:
        """/dev/null: accepted, delivered nowhere."""
        self.assertEqual(rewrite(self.aliases, "nobody@example.com"), [])

    def test_subaddress(self) -> None:
        """team+news is team, with the detail kept on the local targets."""
        self.assertEqual(
            rewrite(self.aliases, "team+news@example.com"),
            [("alice@example.com", "news"), ("alice@example.org", None),
             ("bob@example.com", "news"), ("carol@example.net", None)],
        )  # fmt: skip

    def test_wholeNameFirst(self) -> None:
        """A name with the separator in it is found whole before it is split."""
        aliases = AliasMap(self.clock, self.write("x+y: special\nx: plain\n"), "+")
        self.assertEqual(rewrite(aliases, "x+y@example.com"), [("special@example.com", None)])
        self.assertEqual(rewrite(aliases, "x+z@example.com"), [("plain@example.com", "z")])

    def test_ownerRequest(self) -> None:
        """With - as a separator, owner-team and team-request are names of their own."""
        aliases = AliasMap(self.clock, self.write("team: a\nowner-team: o\nteam-request: r\n"),
                           "-")  # fmt: skip
        self.assertEqual(rewrite(aliases, "owner-team@example.com"), [("o@example.com", None)])
        self.assertEqual(rewrite(aliases, "team-request@example.com"), [("r@example.com", None)])
        self.assertEqual(rewrite(aliases, "team-x@example.com"), [("a@example.com", "x")])

    def test_emptyInclude(self) -> None:
        """An alias that comes to nobody (an empty include) is refused with 550 5.1.1."""
        empty = self.write("# nobody yet\n")
        aliases = AliasMap(self.clock, self.write(f"list: :include:{empty}\n"))
        with self.assertRaises(SMTPError) as caught:
            rewrite(aliases, "list@example.com")
        self.assertEqual(caught.exception.reply.enhanced, (5, 1, 1))

    def test_badFile(self) -> None:
        """A file that does not load is a ValueError naming it."""
        with self.assertRaises(ValueError) as caught:
            AliasMap(self.clock, "/nonexistent/aliases")
        self.assertIn("/nonexistent/aliases", str(caught.exception))
        with self.assertRaises(ValueError):
            AliasMap(self.clock, self.write("x: |prog\n"))


class ReloadTests(LogCase):
    def test_reloadedOnChange(self) -> None:
        """A changed file is read again, at most once a second."""
        clock = Clock()
        path = self.write("x: a\n")
        aliases = AliasMap(clock, path)
        self.write("x: b\n", path)
        os.utime(path, ns=(1, 1))
        self.assertEqual(rewrite(aliases, "x@example.com"), [("a@example.com", None)])
        clock.advance(1)
        self.assertEqual(rewrite(aliases, "x@example.com"), [("b@example.com", None)])

    def test_includeChanged(self) -> None:
        """A change to an include file reloads too."""
        clock = Clock()
        members = self.write("a\n")
        aliases = AliasMap(clock, self.write(f"list: :include:{members}\n"))
        self.write("a, c\n", members)
        clock.advance(1)
        self.assertEqual(rewrite(aliases, "list@example.com"),
                         [("a@example.com", None), ("c@example.com", None)])  # fmt: skip
        self.assertIn(members, aliases.watched.files)

    def test_badChangeKeepsTheLastGood(self) -> None:
        """A change that does not parse, or a file gone, keeps the last good table; warned once."""
        clock = Clock()
        path = self.write("x: a\n")
        aliases = AliasMap(clock, path)
        self.write("x: |prog\n", path)
        for _ in range(3):
            clock.advance(1)
            self.assertEqual(rewrite(aliases, "x@example.com"), [("a@example.com", None)])
        self.assertEqual(len(self.warnings()), 1)
        os.unlink(path)
        clock.advance(1)
        self.assertEqual(rewrite(aliases, "x@example.com"), [("a@example.com", None)])
        self.assertEqual(len(self.warnings()), 2)
        self.write("x: c\n", path)
        clock.advance(1)
        self.assertEqual(rewrite(aliases, "x@example.com"), [("c@example.com", None)])


class SubaddressTests(SynchronousTestCase):
    def test_split(self) -> None:
        """The first separator splits; nothing before it, or none, is no subaddress."""
        self.assertEqual(splitDetail("bob+lists", "+"), ("bob", "lists"))
        self.assertEqual(splitDetail("bob+a+b", "+"), ("bob", "a+b"))
        self.assertEqual(splitDetail("bob-a+b", "+-"), ("bob", "a+b"))
        self.assertEqual(splitDetail("bob+", "+"), ("bob", ""))
        self.assertIsNone(splitDetail("+bob", "+"))
        self.assertIsNone(splitDetail("bob", "+"))
        self.assertIsNone(splitDetail("bob+x", ""))
        self.assertIsNone(splitDetail("owner-list", "-"))
        self.assertIsNone(splitDetail("list-request", "+-"))

    def test_separators(self) -> None:
        """Separators are printable characters other than @, quotes, backslash and dot."""
        self.assertEqual(checkSeparators("+-"), "+-")
        for bad in ("", "@", ".", " ", '"', "\\", "+\t"):
            self.assertRaises(ValueError, checkSeparators, bad)

    def test_rewriter(self) -> None:
        """user+tag becomes user with detail tag; others are left alone."""
        s = Subaddress("+")
        self.assertTrue(verifyObject(IRecipientRewriter, s))
        self.assertEqual(rewrite(s, "bob+x@example.com"), [("bob@example.com", "x")])
        self.assertIsNone(rewrite(s, "bob@example.com"))


class FactoryTests(LogCase):
    def context(self, forwarding: bool = False) -> Any:
        from mailframe.config import ProviderContext, ServerConfig

        config = ServerConfig(hostname="mx.example", localDomains=frozenset({"example.com"}))
        return ProviderContext(Clock(), config, forwarding=forwarding)

    def test_builds(self) -> None:
        """aliases:PATH, virtual:PATH and subaddress build their rewriters, separators given."""
        from mailframe.app import registry
        from mailframe.validators.virtual import VirtualMap

        aliases = registry.makeProvider(
            IRecipientValidator, f"aliases:{self.write('x: y')}:separators=+", self.context()
        )
        self.assertIsInstance(aliases, AliasMap)
        self.assertEqual(rewrite(aliases, "x+t@example.com"), [("y@example.com", "t")])
        virtual = registry.makeProvider(
            IRecipientValidator, f"virtual:{self.write('a@v.example b')}", self.context(True)
        )
        assert isinstance(virtual, VirtualMap)
        self.assertEqual(rewrite(virtual, "a@v.example"), [("b@mx.example", None)])
        sub = registry.makeProvider(IRecipientValidator, "subaddress:separators=-", self.context())
        self.assertEqual(rewrite(sub, "a-b@example.com"), [("a@example.com", "b")])

    def test_forwarding(self) -> None:
        """Remote targets load only when the context says the queue forwards."""
        from mailframe.app import registry
        from mailframe.plugins import PlugInError

        path = self.write("x: y@remote.example")
        with self.assertRaises(PlugInError) as caught:
            registry.makeProvider(IRecipientValidator, f"aliases:{path}", self.context())
        self.assertIn("forwarding needs the queue", str(caught.exception))
        registry.makeProvider(IRecipientValidator, f"aliases:{path}", self.context(True))

    def test_checks(self) -> None:
        """A missing file, bad separators or arguments are refused before anything is built."""
        from mailframe.app import registry
        from mailframe.plugins import PlugInError

        for description in ("aliases:/nonexistent", "virtual:", "subaddress:separators=@",
                            "subaddress:x", "subaddress:separators=none"):  # fmt: skip
            self.assertRaises(PlugInError, registry.checkDescription, IRecipientValidator,
                              description)  # fmt: skip
