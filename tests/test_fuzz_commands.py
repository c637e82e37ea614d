"""
Fuzzing the command parser and the core's refusals with hypothesis: only
ASCII verbs and keywords match (no Unicode case mapping turns a long s into
an S), and every reply the core sends is at most 512 octets a line (RFC 5321
4.5.3.1.5) and printable ASCII, whatever the client sent.
"""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import TestCase

from mailframe import reply as R
from mailframe.protocol import (
    NEED_DATA,
    PAUSED,
    Bdat,
    Command,
    ExtensionCommand,
    Limits,
    MailFrom,
    RcptTo,
    RemoteProtocolError,
    ServerConnection,
)
from mailframe.protocol._parse import _PARSERS, CommandSyntaxError, parseCommand
from tests.test_properties import EXTENSION_VERBS, PROFILE, commandLines, respond

VERBS = frozenset(_PARSERS) | EXTENSION_VERBS

# Characters outside ASCII whose Unicode upper case is ASCII (or that look it)
_CONFUSABLE = {
    "S": ["\u017f"],  # long s
    "I": ["\u0131"],  # dotless i
    "K": ["\u212a"],  # Kelvin sign (its lower case is k)
    "ST": ["\ufb05", "\ufb06"],
    "SS": ["\u00df"],
    "FF": ["\ufb00"],
    "FI": ["\ufb01"],
    "FL": ["\ufb02"],
}


@st.composite
def lookalike(draw: st.DrawFn, word: str) -> str:
    """C{word} with letters in any ASCII case, some swapped for their Unicode lookalikes."""
    out = []
    i = 0
    while i < len(word):
        for n in (2, 1):
            chunk = word[i : i + n].upper()
            if len(chunk) == n and chunk in _CONFUSABLE and draw(st.booleans()):
                out.append(draw(st.sampled_from(_CONFUSABLE[chunk])))
                i += n
                break
        else:
            c = word[i]
            out.append(draw(st.sampled_from([c.upper(), c.lower()])))
            i += 1
    return "".join(out)


_verbs = st.sampled_from(sorted(VERBS)).flatmap(lookalike)
_keywords = st.sampled_from(["FROM:", "TO:", "LAST", "SIZE", "BODY", "SMTPUTF8"]).flatmap(
    lookalike
)
_text = st.text(
    st.one_of(
        st.characters(max_codepoint=0x7F, exclude_characters="\r\n"),
        st.sampled_from(sorted({c for v in _CONFUSABLE.values() for c in v})),
        st.characters(exclude_characters="\r\n", exclude_categories=["Cs"]),
    ),
    max_size=30,
)
lines = st.one_of(
    st.builds(
        lambda verb, keyword, rest: f"{verb} {keyword}{rest}".encode(),
        _verbs,
        _keywords,
        st.sampled_from(["<a@b.c>", "<>", " 3", "3 ", "=1", ""]),
    ),
    st.builds(lambda verb, arg: f"{verb} {arg}".encode(), _verbs, _text),
    st.builds(lambda n, word: f"BDAT {n} {word}".encode(), st.integers(0, 99), _keywords),
    st.builds(
        lambda verb, rest: f"{verb}<a@b.c> {rest}".encode(),
        st.sampled_from(["MAIL FROM:", "RCPT TO:"]),
        st.lists(st.builds("{}={}".format, _keywords, _text), max_size=3).map(" ".join),
    ),
    commandLines,
)


def assertWireSafe(test: TestCase, wire: bytes) -> None:
    """Every line of C{wire} ends with CRLF, is at most 512 octets with it, and is printable ASCII."""
    test.assertTrue(wire.endswith(b"\r\n"), wire)
    for line in wire[:-2].split(b"\r\n"):
        test.assertLessEqual(len(line) + 2, 512, line)
        test.assertTrue(all(0x20 <= b <= 0x7E for b in line), line)


class ParserFuzz(TestCase):
    """What the parser accepts as a verb or a keyword."""

    @settings(PROFILE, max_examples=max(PROFILE.max_examples, 500))
    @given(lines)
    @example("\u017fTARTTLS".encode())
    @example("MA\u0131L FROM:<a@b.c>".encode())
    @example("R\u017fET".encode())
    @example("BDAT 3 LA\u017fT".encode())
    @example("MAIL FROM:<a@b.c> BODY=8BITMIME \u017fIZE=3".encode())
    def test_onlyASCIIMatches(self, line: bytes) -> None:
        """An event only for an ASCII verb (ASCII case aside); LAST, FROM:, TO: and keys only in ASCII."""
        try:
            event = parseCommand(line, EXTENSION_VERBS)
        except CommandSyntaxError as e:
            assertWireSafe(self, e.reply.toBytes())
            return
        verb, _, arg = line.partition(b" ")
        self.assertTrue(verb.isascii(), line)
        self.assertIn(verb.upper().decode(), VERBS, line)
        if isinstance(event, (Command, Bdat)):
            self.assertEqual(verb.upper().decode(), event.verb, line)
        if isinstance(event, ExtensionCommand):
            self.assertIn(event.name, EXTENSION_VERBS)
        if isinstance(event, Bdat) and event.last:
            self.assertEqual(arg.split()[1].upper(), b"LAST", line)
        if isinstance(event, (MailFrom, RcptTo)):
            prefix = b"FROM:" if isinstance(event, MailFrom) else b"TO:"
            self.assertEqual(arg[: len(prefix)].upper(), prefix, line)
            for key in event.params:
                self.assertTrue(key.isascii() and key == key.upper(), key)
                self.assertIn(key.encode(), arg.upper(), line)


_longLines = st.one_of(
    lines,
    st.builds(
        lambda verb, n, c: verb + b" " + c * n,
        st.sampled_from([b"EHLO", b"HELO", b"NOOP", b"VRFY", b"XFOO", b"\xc5\xbfTARTTLS", b"X"]),
        st.integers(400, 3000),
        st.sampled_from([b"a", b"\x1b", "\u00fc".encode(), b"\x7f"]),
    ),
    st.builds(
        lambda prefix, n: prefix + b" X" * n,
        st.sampled_from([b"MAIL FROM:<a@b.c>", b"RCPT TO:<a@b.c>"]),
        st.integers(100, 1500),
    ),
)


class CoreReplyFuzz(TestCase):
    """Whatever a client sends, the core's refusals are short, printable ASCII lines."""

    @settings(PROFILE)
    @given(st.lists(_longLines, max_size=12), st.sampled_from([512, 4096]))
    def test_refusalsAreWireSafe(self, sent: list[bytes], commandLine: int) -> None:
        """Every RemoteProtocolError reply encodes to lines of at most 512 octets of printable ASCII."""
        conn = ServerConnection(Limits(commandLine=commandLine), EXTENSION_VERBS)
        conn.send(R.greeting("mx.test"))
        conn.receiveData(b"".join(line + b"\r\n" for line in [b"EHLO client.test", *sent]))
        for _ in range(10_000):
            try:
                event = conn.nextEvent()
            except RemoteProtocolError as e:
                assertWireSafe(self, conn.send(e.reply))
                continue
            if event is NEED_DATA or event is PAUSED:
                return
            respond(conn, event)
        self.fail("the session never stopped")
