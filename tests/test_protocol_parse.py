"""
Tests for L{mailframe.protocol._parse}: command lines, paths, parameters,
xtext.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mailframe.address import Address, Domain
from mailframe.protocol import _events as E
from mailframe.protocol._parse import (
    _LINE_CACHE_SIZE,
    CommandSyntaxError,
    LineParser,
    decodeXtext,
    encodeXtext,
    lineParserFor,
    parseCommand,
    parseParameters,
    parsersFor,
)


def code(line: bytes) -> str:
    """The reply code (and enhanced code) a bad line gets."""
    try:
        parseCommand(line)
    except CommandSyntaxError as e:
        return f"{e.reply.code} " + ".".join(map(str, e.reply.enhanced or ()))
    raise AssertionError(f"{line!r} parsed")


class PathTests(SynchronousTestCase):
    def test_mail(self) -> None:
        """MAIL FROM with a mailbox and parameters."""
        ev = parseCommand(b"MAIL FROM:<joe@Example.COM> SIZE=100 BODY=8BITMIME")
        self.assertEqual(
            ev,
            E.MailFrom(Address("joe", Domain("example.com")), {"SIZE": "100", "BODY": "8BITMIME"}),
        )

    def test_caseAndSpace(self) -> None:
        """Verbs are case-insensitive; a space after the colon is tolerated."""
        ev = parseCommand(b"mail from: <a@b.c>")
        self.assertIsInstance(ev, E.MailFrom)

    def test_nullSender(self) -> None:
        """<> is the null reverse-path."""
        ev = parseCommand(b"MAIL FROM:<>")
        self.assertTrue(ev.address.isNull)  # type: ignore[attr-defined]

    def test_nullRecipient(self) -> None:
        """RCPT TO:<> is a syntax error."""
        self.assertEqual(code(b"RCPT TO:<>"), "501 5.1.3")

    def test_postmaster(self) -> None:
        """RCPT TO:<Postmaster> without a domain is allowed (RFC 5321 4.5.1)."""
        ev = parseCommand(b"RCPT TO:<Postmaster>")
        self.assertEqual(ev.address, Address("Postmaster", None))  # type: ignore[attr-defined]
        self.assertEqual(code(b"RCPT TO:<joe>"), "501 5.1.3")

    def test_sourceRoute(self) -> None:
        """A source route is removed; the mailbox after it is kept (RFC 5321 3.6.1)."""
        ev = parseCommand(b"RCPT TO:<@relay.example,@other.example:user@final.example>")
        self.assertEqual(str(ev.address), "user@final.example")  # type: ignore[attr-defined]
        self.assertEqual(code(b"RCPT TO:<@relay.example user@final.example>"), "501 5.1.3")

    def test_quotedLocalPart(self) -> None:
        """Quoted local parts may hold spaces, '>' and escaped quotes."""
        ev = parseCommand(b'RCPT TO:<"a b>\\"c"@example.com> NOTIFY=NEVER')
        self.assertEqual(ev.address.localPart, 'a b>"c')  # type: ignore[attr-defined]
        self.assertEqual(ev.params, {"NOTIFY": "NEVER"})  # type: ignore[attr-defined]

    def test_addressLiteral(self) -> None:
        """IPv4 and IPv6 address literals; a bad one is refused."""
        ev = parseCommand(b"RCPT TO:<a@[IPv6:2001:db8::1]>")
        self.assertTrue(ev.address.domain.isLiteral)  # type: ignore[attr-defined]
        self.assertEqual(code(b"RCPT TO:<a@[300.1.1.1]>"), "501 5.1.3")

    def test_utf8(self) -> None:
        """UTF-8 addresses parse (the SMTPUTF8 rule is the state machine's)."""
        ev = parseCommand("RCPT TO:<用户@例子.广告>".encode())
        self.assertTrue(ev.address.isUTF8)  # type: ignore[attr-defined]

    def test_badUTF8(self) -> None:
        """Invalid UTF-8 is 500 5.5.2."""
        self.assertEqual(code(b"RCPT TO:<\xff@b.c>"), "500 5.5.2")

    def test_missingBrackets(self) -> None:
        """A path without angle brackets is 501 5.5.2."""
        self.assertEqual(code(b"MAIL FROM:a@b.c"), "501 5.5.2")
        self.assertEqual(code(b"MAIL TO:<a@b.c>"), "501 5.5.2")
        self.assertEqual(code(b"MAIL FROM:<a@b.c>junk"), "501 5.5.2")

    def test_badMailbox(self) -> None:
        """Bad sender syntax is 5.1.7, bad recipient syntax 5.1.3."""
        self.assertEqual(code(b"MAIL FROM:<a..b@c.d>"), "501 5.1.7")
        self.assertEqual(code(b"RCPT TO:<a@b..c>"), "501 5.1.3")
        self.assertEqual(code(b"RCPT TO:<a@@b.c>"), "501 5.1.3")

    def test_lengths(self) -> None:
        """Local part over 64, domain over 255, path over 256 octets are refused."""
        self.assertEqual(code(b"RCPT TO:<" + b"a" * 65 + b"@b.c>"), "501 5.1.3")
        long_domain = b".".join([b"d" * 60] * 5)
        self.assertEqual(code(b"RCPT TO:<a@" + long_domain + b">"), "501 5.1.3")
        self.assertIsInstance(parseCommand(b"RCPT TO:<" + b"a" * 64 + b"@b.c>"), E.RcptTo)


class ParameterTests(SynchronousTestCase):
    def test_keywords(self) -> None:
        """Keys are uppercased; bare keywords have None."""
        self.assertEqual(
            parseParameters("smtputf8 body=8BITMIME"), {"SMTPUTF8": None, "BODY": "8BITMIME"}
        )

    def test_bad(self) -> None:
        """A bad keyword, an empty value, a value with '=' or a duplicate is 501."""
        for text in ["-X=1", "X=", "X=a=b", "X=1 x=2", "X=\x01"]:
            self.assertRaises(CommandSyntaxError, parseParameters, text)

    def test_utf8Value(self) -> None:
        """RFC 6531 allows UTF-8 in values."""
        self.assertEqual(parseParameters("ORCPT=rfc822;ü@x"), {"ORCPT": "rfc822;ü@x"})


class CommandTests(SynchronousTestCase):
    def test_simple(self) -> None:
        """Commands without arguments and their events."""
        self.assertIsInstance(parseCommand(b"DATA"), E.Data)
        self.assertIsInstance(parseCommand(b"rset"), E.Rset)
        self.assertEqual(parseCommand(b"NOOP hello"), E.Noop("hello"))
        self.assertEqual(parseCommand(b"HELP MAIL"), E.Help("MAIL"))
        self.assertEqual(parseCommand(b"VRFY joe"), E.Vrfy("joe"))
        self.assertEqual(parseCommand(b"EHLO [192.0.2.1]"), E.Hello("[192.0.2.1]", True))

    def test_helo(self) -> None:
        """HELO needs exactly one name."""
        self.assertEqual(code(b"HELO"), "501 5.5.4")
        self.assertEqual(code(b"EHLO a b"), "501 5.5.4")

    def test_heloControlCharacters(self) -> None:
        """A name with a control character is no domain: 501, never into Received or the log."""
        for line in (b"EHLO a\x01b", b"EHLO mx\x1b[31m.example", b"HELO \x7fdel"):
            self.assertEqual(code(line), "501 5.5.4", line)
        self.assertEqual(
            parseCommand("EHLO bücher.example".encode()), E.Hello("bücher.example", True)
        )

    def test_bdat(self) -> None:
        """BDAT size [LAST]."""
        self.assertEqual(parseCommand(b"BDAT 0 last"), E.Bdat(0, True))
        self.assertEqual(parseCommand(b"BDAT 100"), E.Bdat(100, False))
        self.assertEqual(code(b"BDAT -1"), "501 5.5.4")
        self.assertEqual(code(b"BDAT 99999999999999999999"), "552 5.3.4")

    def test_vrfyNeedsArgument(self) -> None:
        """VRFY and EXPN need an argument."""
        self.assertEqual(code(b"VRFY"), "501 5.5.4")
        self.assertEqual(code(b"EXPN "), "501 5.5.4")


class ASCIIKeywordTests(SynchronousTestCase):
    """Verbs and keywords are ASCII: no Unicode case mapping makes one match."""

    def test_nonASCIIVerbs(self) -> None:
        """A verb whose Unicode uppercase is a known verb (long s, dotless i, st ligature) is 500 5.5.1."""
        for line in [
            "\u017fTARTTLS",
            "\ufb06ARTTLS",
            "MA\u0131L FROM:<a@b.c>",
            "R\u017fET",
            "RCPT TO:<a@b.c>".replace("R", "\u0280"),
            "\u017fTARTTLS extra",
        ]:
            self.assertEqual(code(line.encode("utf-8")), "500 5.5.1", line)
        with self.assertRaises(CommandSyntaxError) as e:
            parseCommand("X\u017fOO".encode(), frozenset({"XSOO"}))
        self.assertEqual(e.exception.reply.code, 500)

    def test_nonASCIILast(self) -> None:
        """BDAT's LAST spelt with a long s or an st ligature is a syntax error, not the last chunk."""
        for word in ["LA\u017fT", "LA\ufb06", "la\u017ft"]:
            self.assertEqual(code(f"BDAT 3 {word}".encode()), "501 5.5.4", word)
        self.assertEqual(parseCommand(b"BDAT 3 LaSt"), E.Bdat(3, True))

    def test_nonASCIIPrefix(self) -> None:
        """FROM: and TO: match in any ASCII case only."""
        self.assertIsInstance(parseCommand(b"MAIL fRoM:<a@b.c>"), E.MailFrom)
        self.assertIsInstance(parseCommand(b"RCPT tO:<a@b.c>"), E.RcptTo)
        for line in ["MAIL \ufb00ROM:<a@b.c>", "RCPT T\u00d6:<a@b.c>"]:
            self.assertEqual(code(line.encode()), "501 5.5.2", line)

    def test_nonASCIIParameterKeyword(self) -> None:
        """A parameter keyword with a non-ASCII letter is a syntax error, not its ASCII twin."""
        for text in ["SMTPUTF\u017f", "BODY=8BITMIME \u017fIZE=10", "\u0131=1"]:
            self.assertRaises(CommandSyntaxError, parseParameters, text)

    def test_postmasterIsASCII(self) -> None:
        """Only an ASCII postmaster (any case) is the bare <Postmaster> recipient."""
        self.assertEqual(
            parseCommand(b"RCPT TO:<PostMaster>").address, Address("PostMaster", None)
        )  # type: ignore[attr-defined]
        self.assertEqual(code("RCPT TO:<po\u017ftmaster>".encode()), "501 5.1.3")


class XtextTests(SynchronousTestCase):
    def test_roundTrip(self) -> None:
        """xtext encodes '+', '=', spaces and non-ASCII, and decodes back."""
        for text in ["rfc822;a+b=c@d", "plain", "ü x"]:
            self.assertEqual(decodeXtext(encodeXtext(text)), text)
        self.assertEqual(encodeXtext("a+b"), "a+2Bb")

    def test_bad(self) -> None:
        """A '+' not followed by two uppercase hex digits is an error."""
        self.assertRaises(ValueError, decodeXtext, "a+2b")
        self.assertRaises(ValueError, decodeXtext, "a+")


class LineParserTests(SynchronousTestCase):
    """L{LineParser}: parseCommand, remembering the lines that parse the same for everyone."""

    def setUp(self) -> None:
        self.parse = LineParser(parsersFor({"HELO": False, "EHLO": True}), frozenset({"AUTH"}))

    def test_sameAsParseCommand(self) -> None:
        """Each line gives what parseCommand gives, the first time and the next."""
        lines = [
            b"EHLO client.example",
            b"HELO client.example",
            b"MAIL FROM:<a@example.com> SIZE=100",
            b"RCPT TO:<b@example.com>",
            b"DATA",
            b"QUIT",
            b"RSET",
            b"NOOP hello",
            b"AUTH PLAIN AGFAYg==",
            b"VRFY postmaster",
        ]
        for line in lines:
            expected = parseCommand(line, frozenset({"AUTH"}))
            self.assertEqual(self.parse(line), expected)
            self.assertEqual(self.parse(line), expected)

    def test_remembers(self) -> None:
        """MAIL, RCPT, EHLO, DATA, QUIT and RSET lines are parsed once: the same event again."""
        for line in (b"MAIL FROM:<a@example.com>", b"RCPT TO:<b@example.com>", b"EHLO x", b"DATA"):
            self.assertIs(self.parse(line), self.parse(line))
        self.assertEqual(len(self.parse._events), 4)

    def test_neverAnExtensionsLine(self) -> None:
        """An extension's line (AUTH carries credentials), NOOP, VRFY and HELP are not kept."""
        for line in (b"AUTH PLAIN AGFAYg==", b"NOOP x", b"VRFY a", b"HELP", b"BDAT 10 LAST"):
            self.parse(line)
        self.assertEqual(self.parse._events, {})

    def test_errorsNotKept(self) -> None:
        """A refused line raises every time and is not kept."""
        for _ in range(2):
            with self.assertRaises(CommandSyntaxError):
                self.parse(b"MAIL FROM:<a@@b>")
            with self.assertRaises(CommandSyntaxError):
                self.parse(b"EHLO two words")
        self.assertEqual(self.parse._events, {})

    def test_bounded(self) -> None:
        """At most _LINE_CACHE_SIZE lines are kept."""
        for i in range(_LINE_CACHE_SIZE + 10):
            self.parse(b"RCPT TO:<user%d@example.com>" % i)
        self.assertLessEqual(len(self.parse._events), _LINE_CACHE_SIZE)

    def test_sharedPerTable(self) -> None:
        """lineParserFor gives one parser per verb table and extension verbs."""
        smtp = parsersFor({"HELO": False, "EHLO": True})
        lmtp = parsersFor({"LHLO": True})
        self.assertIs(lineParserFor(smtp, frozenset()), lineParserFor(smtp, frozenset()))
        self.assertIsNot(lineParserFor(smtp, frozenset()), lineParserFor(lmtp, frozenset()))
        self.assertIsNot(
            lineParserFor(smtp, frozenset()), lineParserFor(smtp, frozenset({"XYZZY"}))
        )
        with self.assertRaises(CommandSyntaxError):
            lineParserFor(lmtp, frozenset())(b"EHLO x")  # EHLO is unknown in LMTP

    def test_helloWhitespace(self) -> None:
        """A HELO name with any whitespace inside (a tab, U+00A0 ...) is refused."""
        for name in ("a\tb", "a\u00a0b", "a\u2003b", "a b"):
            with self.assertRaises(CommandSyntaxError):
                parseCommand(f"EHLO {name}".encode())
        self.assertEqual(parseCommand(b"EHLO  a.example  "), E.Hello("a.example", True))
