"""
Tests for L{mailframe.protocol.server.ServerConnection}: the state machine,
the limits and the DATA/BDAT readers, all in memory.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mailframe import reply as R
from mailframe.protocol import (
    NEED_DATA,
    PAUSED,
    TRANSITIONS,
    Bdat,
    EndOfChunk,
    EndOfMessage,
    ExtensionCommand,
    Hello,
    Limits,
    LocalProtocolError,
    MailFrom,
    RcptTo,
    ServerConnection,
    State,
)
from mailframe.protocol import _events as E
from mailframe.protocol import _state as S
from tests._core import Driver


class GreetingTests(SynchronousTestCase):
    def test_pausedUntilGreeting(self) -> None:
        """Nothing is parsed before the greeting is sent, even if bytes came early."""
        conn = ServerConnection()
        conn.receiveData(b"EHLO early\r\n")
        self.assertIs(conn.nextEvent(), PAUSED)
        self.assertEqual(conn.send(R.greeting("mx")), b"220 mx ESMTP mailframe\r\n")
        self.assertEqual(conn.nextEvent(), Hello("early", True))

    def test_greetingCodes(self) -> None:
        """Only 220, 554 and 421 are greetings."""
        conn = ServerConnection()
        self.assertRaises(LocalProtocolError, conn.send, R.OK)

    def test_rejectedGreeting(self) -> None:
        """After a 554 greeting every command but QUIT gets 503 (RFC 5321 3.1)."""
        conn = ServerConnection()
        conn.send(R.Reply(554, None, "no service"))
        d = Driver.__new__(Driver)
        d.conn, d.answer, d.output, d.events, d.errors = conn, lambda e: R.OK, b"", [], []
        out = d.feed(b"EHLO x\r\nMAIL FROM:<a@b.c>\r\nNOOP\r\n")
        self.assertEqual(d.codes(out), ["503", "503", "503"])
        self.assertEqual(conn.state, State.REJECTED)
        conn.receiveData(b"QUIT\r\n")
        self.assertEqual(conn.nextEvent().verb, "QUIT")  # type: ignore[union-attr]

    def test_unsolicited421(self) -> None:
        """A 421 may be sent at any time and closes the session."""
        d = Driver()
        self.assertEqual(d.conn.send(R.TIMEOUT), b"421 Timeout exceeded, closing connection\r\n")
        self.assertEqual(d.conn.state, State.CLOSED)
        d.conn.receiveData(b"NOOP\r\n")
        self.assertIs(d.conn.nextEvent(), PAUSED)

    def test_noUnaskedReply(self) -> None:
        """Sending a reply when no command awaits one is our own error."""
        d = Driver()
        self.assertRaises(LocalProtocolError, d.conn.send, R.OK)


class SequenceTests(SynchronousTestCase):
    def test_pipelinedInOrder(self) -> None:
        """A pipelined group yields one event at a time; the next only after the reply."""
        d = Driver()
        d.ehlo()
        d.conn.receiveData(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n")
        first = d.conn.nextEvent()
        self.assertIsInstance(first, MailFrom)
        self.assertIs(d.conn.nextEvent(), PAUSED)
        self.assertIs(d.conn.nextEvent(), PAUSED)
        d.conn.send(R.SENDER_OK)
        self.assertIsInstance(d.conn.nextEvent(), RcptTo)

    def test_mailBeforeHelo(self) -> None:
        """MAIL before HELO/EHLO is 503 5.5.1."""
        d = Driver()
        out = d.feed(b"MAIL FROM:<a@b.c>\r\n")
        self.assertEqual(d.codes(out), ["503"])
        self.assertEqual(d.conn.state, State.CONNECTED)

    def test_rcptBeforeMail(self) -> None:
        """RCPT before MAIL is 503 5.5.1 (with enhanced codes after EHLO)."""
        d = Driver()
        d.ehlo()
        self.assertEqual(d.codes(d.feed(b"RCPT TO:<a@b.c>\r\n")), ["503 5.5.1"])

    def test_nestedMail(self) -> None:
        """A second MAIL in a transaction is 503."""
        d = Driver()
        d.transaction()
        self.assertEqual(d.codes(d.feed(b"MAIL FROM:<a@b.c>\r\n")), ["503 5.5.1"])
        self.assertEqual(d.conn.state, State.RCPT)

    def test_dataWithoutRecipients(self) -> None:
        """DATA without RCPT is 503; after only refused RCPTs it is 554 (RFC 2920)."""
        d = Driver()
        d.ehlo()
        d.feed(b"MAIL FROM:<a@b.c>\r\n")
        self.assertEqual(d.codes(d.feed(b"DATA\r\n")), ["503 5.5.1"])
        d.answer = lambda e: R.USER_UNKNOWN if isinstance(e, RcptTo) else R.OK
        d.feed(b"RCPT TO:<x@y.z>\r\n")
        self.assertEqual(d.codes(d.feed(b"DATA\r\n")), ["554 5.5.1"])

    def test_refusedMailKeepsState(self) -> None:
        """A refused MAIL leaves the session ready for another MAIL."""
        d = Driver(
            answer=lambda e: R.Reply(550, (5, 7, 1), "no") if isinstance(e, MailFrom) else R.OK
        )
        d.ehlo()
        d.feed(b"MAIL FROM:<a@b.c>\r\n")
        self.assertEqual(d.conn.state, State.READY)

    def test_rset(self) -> None:
        """RSET clears the transaction and the recipient count."""
        d = Driver()
        d.transaction(3)
        self.assertEqual(d.codes(d.feed(b"RSET\r\n")), ["250 2.0.0"])
        self.assertEqual(d.conn.state, State.READY)
        self.assertEqual(d.codes(d.feed(b"RCPT TO:<a@b.c>\r\n")), ["503 5.5.1"])

    def test_rsetBeforeHelo(self) -> None:
        """RSET before HELO is allowed and keeps the session un-greeted."""
        d = Driver()
        d.feed(b"RSET\r\n")
        self.assertEqual(d.conn.state, State.CONNECTED)

    def test_ehloResets(self) -> None:
        """EHLO in a transaction resets it (RFC 5321 4.1.4)."""
        d = Driver()
        d.transaction()
        d.ehlo()
        self.assertEqual(d.conn.state, State.READY)

    def test_ehloLearnsExtensions(self) -> None:
        """The core learns the extensions from the EHLO reply it sent."""
        d = Driver()
        d.ehlo()
        self.assertIn("CHUNKING", d.conn.extensions)
        self.assertIn("ENHANCEDSTATUSCODES", d.conn.extensions)
        d.feed(b"HELO x\r\n")
        self.assertEqual(d.conn.extensions, frozenset())

    def test_enhancedCodesOnlyWhenNegotiated(self) -> None:
        """Enhanced codes appear after EHLO advertised them, never on HELO/EHLO replies."""
        d = Driver()
        d.feed(b"HELO x\r\n")
        self.assertEqual(d.feed(b"NOOP\r\n"), b"250 OK\r\n")
        d.ehlo()
        self.assertEqual(d.feed(b"NOOP\r\n"), b"250 2.0.0 OK\r\n")
        self.assertNotIn(b"2.0.0", d.feed(b"EHLO again\r\n"))

    def test_quit(self) -> None:
        """QUIT's reply closes the session; nothing after it is parsed."""
        d = Driver()
        d.feed(b"QUIT\r\nNOOP\r\n")
        self.assertEqual(d.conn.state, State.CLOSED)
        self.assertEqual(len(d.events), 1)

    def test_positiveDataMustBe354(self) -> None:
        """A 250 to DATA is refused as our own error; the event stays pending."""
        d = Driver()
        d.transaction()
        d.conn.receiveData(b"DATA\r\n")
        d.conn.nextEvent()
        self.assertRaises(LocalProtocolError, d.conn.send, R.OK)
        d.conn.send(R.START_DATA)
        self.assertEqual(d.conn.state, State.DATA)

    def test_transitionTableCoversEveryCommand(self) -> None:
        """Every command event has a row in the transition table."""
        from mailframe.protocol import _events as E

        for kind in (E.Hello, E.MailFrom, E.RcptTo, E.Data, E.Rset, E.Noop, E.Quit, E.Vrfy):
            self.assertIn(kind, TRANSITIONS)


class CommandTests(SynchronousTestCase):
    def test_unknown(self) -> None:
        """An unknown verb is 500 5.5.1; an RFC 821 leftover is 502."""
        d = Driver()
        d.ehlo()
        self.assertEqual(d.codes(d.feed(b"FOO bar\r\nTURN\r\n")), ["500 5.5.1", "502 5.5.1"])

    def test_extensionVerb(self) -> None:
        """Verbs registered by extensions become ExtensionCommand events."""
        d = Driver(extensionVerbs=frozenset({"XYZZY"}))
        d.ehlo()
        d.feed(b"xyzzy plugh\r\n")
        self.assertEqual(d.events[-1], ExtensionCommand("XYZZY", "plugh"))

    def test_lineTooLong(self) -> None:
        """A command line over 512 octets is 500 5.5.6 and the session goes on."""
        d = Driver()
        d.ehlo()
        out = d.feed(b"NOOP " + b"x" * 600 + b"\r\nNOOP\r\n")
        self.assertEqual(d.codes(out), ["500 5.5.6", "250 2.0.0"])

    def test_lineTooLongAcrossReads(self) -> None:
        """An overlong line arriving in pieces is discarded whole, not parsed from the middle."""
        d = Driver()
        d.ehlo()
        self.assertEqual(d.feed(b"NOOP " + b"x" * 700), b"")
        out = d.feed(b"x" * 100 + b" QUIT\r\nNOOP\r\n")
        self.assertEqual(d.codes(out), ["500 5.5.6", "250 2.0.0"])
        self.assertNotEqual(d.conn.state, State.CLOSED)

    def test_limitIncludesExtensions(self) -> None:
        """A larger commandLine limit admits longer lines."""
        d = Driver(Limits(commandLine=1024))
        d.ehlo()
        self.assertEqual(d.codes(d.feed(b"NOOP " + b"x" * 700 + b"\r\n")), ["250 2.0.0"])

    def test_bareLFCommands(self) -> None:
        """A command ended by a bare LF is accepted (only DATA is strict)."""
        d = Driver()
        d.feed(b"EHLO x\nNOOP\n")
        self.assertEqual(d.codes(d.output)[-1], "250 2.0.0")

    def test_nul(self) -> None:
        """A NUL in a command is 500."""
        d = Driver()
        d.ehlo()
        self.assertEqual(d.codes(d.feed(b"NOOP \x00\r\n")), ["500 5.5.2"])

    def test_noArguments(self) -> None:
        """DATA, RSET and QUIT with arguments are 501."""
        d = Driver()
        d.ehlo()
        self.assertEqual(
            d.codes(d.feed(b"RSET now\r\nQUIT please\r\n")), ["501 5.5.4", "501 5.5.4"]
        )


class AddressRuleTests(SynchronousTestCase):
    def test_utf8NeedsSMTPUTF8(self) -> None:
        """A UTF-8 address without the SMTPUTF8 parameter is 553 5.6.7."""
        d = Driver()
        d.ehlo()
        out = d.feed("MAIL FROM:<jöe@example.org>\r\n".encode())
        self.assertEqual(d.codes(out), ["553 5.6.7"])
        d.feed(b"MAIL FROM:<a@example.org>\r\n")
        out = d.feed("RCPT TO:<ü@bücher.example>\r\n".encode())
        self.assertEqual(d.codes(out), ["553 5.6.7"])

    def test_utf8WithSMTPUTF8(self) -> None:
        """With SMTPUTF8 on MAIL, UTF-8 addresses are accepted."""
        d = Driver()
        d.ehlo()
        d.feed("MAIL FROM:<jöe@example.org> SMTPUTF8\r\n".encode())
        d.feed("RCPT TO:<ü@bücher.example>\r\n".encode())
        self.assertEqual(d.conn.state, State.RCPT)

    def test_smtputf8NotAdvertised(self) -> None:
        """SMTPUTF8 only counts when it was advertised."""
        d = Driver()
        d.feed(b"HELO x\r\n")
        out = d.feed("MAIL FROM:<jöe@example.org> SMTPUTF8\r\n".encode())
        self.assertEqual(d.codes(out), ["553"])

    def test_tooManyRecipients(self) -> None:
        """Past the limit, RCPT gets 452 4.5.3 and the earlier ones are kept."""
        d = Driver(Limits(recipients=3))
        d.transaction(3)
        out = d.feed(b"RCPT TO:<x@example.com>\r\nDATA\r\n")
        self.assertEqual(d.codes(out), ["452 4.5.3", "354"])

    def test_refusedRecipientsDoNotCount(self) -> None:
        """Only accepted recipients count toward the limit."""
        d = Driver(
            Limits(recipients=2),
            answer=lambda e: (
                R.USER_UNKNOWN
                if isinstance(e, RcptTo) and e.address.localPart == "no"
                else Driver.__init__.__defaults__[1](e)
            ),  # type: ignore[index]
        )
        d.ehlo()
        d.feed(b"MAIL FROM:<a@b.c>\r\n")
        out = d.feed(
            b"RCPT TO:<no@b.c>\r\nRCPT TO:<no@b.c>\r\nRCPT TO:<y@b.c>\r\nRCPT TO:<z@b.c>\r\n"
        )
        self.assertEqual(d.codes(out), ["550 5.1.1", "550 5.1.1", "250 2.1.5", "250 2.1.5"])


class DataTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.d = Driver(Limits(messageSize=10_000))
        self.d.transaction()
        self.d.feed(b"DATA\r\n")

    def test_simple(self) -> None:
        """The body is delivered unstuffed, and the reply comes after the dot."""
        out = self.d.feed(b"Subject: x\r\n\r\n..leading dot\r\n.\r\n")
        self.assertEqual(self.d.body(), b"Subject: x\r\n\r\n.leading dot\r\n")
        self.assertEqual(self.d.codes(out), ["250 2.0.0"])
        self.assertIsInstance(self.d.events[-1], EndOfMessage)
        self.assertEqual(self.d.events[-1].size, len(self.d.body()))  # type: ignore[attr-defined]

    def test_empty(self) -> None:
        """An empty message is just the dot."""
        self.d.feed(b".\r\n")
        self.assertEqual(self.d.body(), b"")
        self.assertEqual(self.d.conn.state, State.READY)

    def test_byteByByte(self) -> None:
        """The terminator is found whatever the cut."""
        for b in b"a\r\n.b\r\n\r\n.\r\nNOOP\r\n":
            self.d.feed(bytes([b]))
        self.assertEqual(self.d.body(), b"a\r\nb\r\n\r\n")
        self.assertEqual(self.d.codes(self.d.output)[-2:], ["250 2.0.0", "250 2.0.0"])

    def test_bareLFDotIsNotTheEnd(self) -> None:
        """LF.LF and CR.CR do not end DATA; the message is refused after the real end."""
        out = self.d.feed(b"a\n.\nMAIL FROM:<evil@x.y>\r\nRCPT TO:<v@x.y>\r\n.\r\nNOOP\r\n")
        self.assertEqual(self.d.codes(out), ["550 5.5.2", "250 2.0.0"])
        self.assertFalse([e for e in self.d.events if isinstance(e, MailFrom)][1:])

    def test_bareCRDotIsNotTheEnd(self) -> None:
        """CR.CR inside data is data, then refused."""
        out = self.d.feed(b"a\r.\rNOOP\r\n.\r\n")
        self.assertEqual(self.d.codes(out), ["550 5.5.2"])

    def test_mixedTerminatorsAreNotTheEnd(self) -> None:
        """CRLF.LF and LF.CRLF are not the end either."""
        out = self.d.feed(b"a\r\n.\nb\n.\r\nc\r\n.\r\n")
        self.assertEqual(self.d.codes(out), ["550 5.5.2"])
        self.assertEqual(self.d.conn.state, State.READY)

    def test_normalise(self) -> None:
        """With normalisation on, bare line endings become CRLF instead."""
        d = Driver(Limits(normaliseBareLineEndings=True))
        d.transaction()
        d.feed(b"DATA\r\n")
        out = d.feed(b"a\nb\rc\r\n.\r\n")
        self.assertEqual(d.codes(out), ["250 2.0.0"])
        self.assertEqual(d.body(), b"a\r\nb\r\nc\r\n")

    def test_overlongLine(self) -> None:
        """A line over 1000 octets never ends DATA early: one error after the dot."""
        out = self.d.feed(b"ok\r\n" + b"x" * 2000 + b"\r\nQUIT\r\n.\r\nNOOP\r\n")
        self.assertEqual(self.d.codes(out), ["550 5.6.0", "250 2.0.0"])
        self.assertNotEqual(self.d.conn.state, State.CLOSED)

    def test_overlongLineInPieces(self) -> None:
        """An overlong line arriving in pieces is discarded, with bounded buffering."""
        self.d.feed(b"x" * 900)
        for _ in range(10):
            self.d.feed(b"y" * 900)
            self.assertLess(self.d.conn.buffered, 1001)
        out = self.d.feed(b"\r\nQUIT\r\n.\r\n")
        self.assertEqual(self.d.codes(out), ["550 5.6.0"])

    def test_longLineInLargePiece(self) -> None:
        """In a large piece (probed in blocks, not split) a long line is still found."""
        d = Driver(Limits(messageSize=10_000_000))
        d.transaction()
        d.feed(b"DATA\r\n")
        lines = b"y" * 78 + b"\r\n"
        for long in (999, 1500, 5000):
            for where in (0, 300, 599):
                d.feed(lines * where + b"x" * long + b"\r\n" + lines * (600 - where))
                out = d.feed(b".\r\n")
                self.assertEqual(d.codes(out), ["550 5.6.0"], (long, where))
                d.feed(b"MAIL FROM:<a@b.c>\r\nRCPT TO:<r@example.com>\r\nDATA\r\n")
        d.feed(lines * 300 + b"x" * 998 + b"\r\n" + lines * 300)
        self.assertEqual(d.codes(d.feed(b".\r\n")), ["250 2.0.0"])

    def test_lineAtLimit(self) -> None:
        """A line of exactly 1000 octets with its CRLF is fine."""
        out = self.d.feed(b"x" * 998 + b"\r\n.\r\n")
        self.assertEqual(self.d.codes(out), ["250 2.0.0"])

    def test_stuffedDotNotCounted(self) -> None:
        """The dot added for transparency does not count toward the 1000 octets."""
        out = self.d.feed(b".." + b"x" * 997 + b"\r\n.\r\n")
        self.assertEqual(self.d.codes(out), ["250 2.0.0"])
        self.assertEqual(self.d.body(), b"." + b"x" * 997 + b"\r\n")

    def test_lineOverLimitByOne(self) -> None:
        """A line of 1001 octets with its CRLF is refused."""
        out = self.d.feed(b"x" * 999 + b"\r\n.\r\n")
        self.assertEqual(self.d.codes(out), ["550 5.6.0"])

    def test_tooBig(self) -> None:
        """A message over the size limit is read to its end, then 552 5.3.4."""
        line = b"y" * 98 + b"\r\n"
        out = self.d.feed(line * 200 + b".\r\nNOOP\r\n")
        self.assertEqual(self.d.codes(out), ["552 5.3.4", "250 2.0.0"])
        self.assertLessEqual(len(self.d.body()), 10_000)

    def test_dataAfterError(self) -> None:
        """After a refused message the session takes a new transaction."""
        self.d.feed(b"a\nb\r\n.\r\n")
        self.d.feed(b"MAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\nok\r\n.\r\n")
        self.assertEqual(self.d.codes(self.d.output)[-1], "250 2.0.0")


class BdatTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.d = Driver(Limits(messageSize=1000))
        self.d.transaction()

    def test_chunks(self) -> None:
        """Chunks are delivered verbatim; commands inside them are not run."""
        out = self.d.feed(b"BDAT 12\r\nMAIL FROM:\r\nBDAT 5 LAST\r\n.\r\n\r\n")
        self.assertEqual(self.d.codes(out), ["250 2.0.0", "250 2.0.0"])
        self.assertEqual(self.d.body(), b"MAIL FROM:\r\n.\r\n\r\n")
        ends = [e for e in self.d.events if isinstance(e, (EndOfChunk, EndOfMessage))]
        self.assertEqual(ends, [EndOfChunk(12, b"MAIL FROM:\r\n"), EndOfMessage(17, b".\r\n\r\n")])

    def test_zeroLast(self) -> None:
        """BDAT 0 LAST ends the message."""
        self.d.feed(b"BDAT 3\r\nabcBDAT 0 LAST\r\n")
        self.assertEqual(self.d.body(), b"abc")
        self.assertEqual(self.d.conn.state, State.READY)

    def test_splitAnywhere(self) -> None:
        """A chunk split into single bytes arrives whole."""
        for b in b"BDAT 4 LAST\r\nab\r\nNOOP\r\n":
            self.d.feed(bytes([b]))
        self.assertEqual(self.d.body(), b"ab\r\n")
        self.assertEqual(self.d.codes(self.d.output)[-2:], ["250 2.0.0", "250 2.0.0"])

    def test_notAdvertised(self) -> None:
        """Without CHUNKING in the EHLO reply, BDAT is an unknown command."""
        d = Driver()
        d.feed(b"HELO x\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\n")
        self.assertEqual(d.codes(d.feed(b"BDAT 3 LAST\r\n")), ["500"])

    def test_badSequenceConsumesChunk(self) -> None:
        """A BDAT out of sequence still consumes its octets, then gets 503."""
        d = Driver()
        d.ehlo()
        out = d.feed(b"BDAT 10 LAST\r\nNOOP\r\nNOOPNOOP\r\n")
        self.assertEqual(d.codes(out), ["503 5.5.1", "250 2.0.0"])

    def test_tooBigDeclared(self) -> None:
        """A chunk bigger than the limit is consumed and refused with 552."""
        out = self.d.feed(b"BDAT 2000 LAST\r\n" + b"x" * 2000 + b"NOOP\r\n")
        self.assertEqual(self.d.codes(out), ["552 5.3.4", "250 2.0.0"])
        self.assertEqual(self.d.body(), b"")

    def test_failedChunkRefusesRest(self) -> None:
        """After a failed non-last chunk, later chunks get 503 until RSET."""
        out = self.d.feed(b"BDAT 2000\r\n" + b"x" * 2000 + b"BDAT 1 LAST\r\nyRSET\r\n")
        self.assertEqual(self.d.codes(out), ["552 5.3.4", "503 5.5.1", "250 2.0.0"])
        self.assertEqual(self.d.conn.state, State.READY)

    def test_bareLF(self) -> None:
        """Bare LF in BDAT data (not BINARYMIME) is refused after the last chunk."""
        out = self.d.feed(b"BDAT 3 LAST\r\na\nb")
        self.assertEqual(self.d.codes(out), ["550 5.5.2"])

    def test_crlfAcrossChunks(self) -> None:
        """A CRLF split between two chunks is not a bare CR."""
        out = self.d.feed(b"BDAT 2\r\na\rBDAT 2 LAST\r\n\nb")
        self.assertEqual(self.d.codes(out), ["250 2.0.0", "250 2.0.0"])
        self.assertEqual(self.d.body(), b"a\r\nb")

    def test_trailingCR(self) -> None:
        """A CR at the very end of the message is bare."""
        out = self.d.feed(b"BDAT 2 LAST\r\na\r")
        self.assertEqual(self.d.codes(out), ["550 5.5.2"])

    def normalising(self, *pieces: bytes) -> tuple[bytes, list[str]]:
        """Feed C{pieces} to a normalising session in a transaction: the body and the codes."""
        d = Driver(Limits(normaliseBareLineEndings=True))
        d.transaction()
        out = b"".join(d.feed(piece) for piece in pieces)
        return d.body(), d.codes(out)

    def test_normaliseCutAtCR(self) -> None:
        """Normalising, a chunk cut right after a CR keeps the LF that follows it."""
        wire = b"BDAT 8 LAST\r\na\r\nb\nc\r\n"
        expected = (b"a\r\nb\r\nc\r\n", ["250 2.0.0"])
        self.assertEqual(self.normalising(wire), expected)
        self.assertEqual(self.normalising(wire[:15], wire[15:]), expected)
        self.assertEqual(self.normalising(*[bytes([c]) for c in wire]), expected)

    def test_normaliseCRLFAcrossChunks(self) -> None:
        """Normalising, a CRLF split between two chunks is one CRLF."""
        body, codes = self.normalising(b"BDAT 2\r\na\r", b"BDAT 6 LAST\r\n\nb\nc\r\n")
        self.assertEqual((body, codes), (b"a\r\nb\r\nc\r\n", ["250 2.0.0", "250 2.0.0"]))

    def test_normaliseBareCRAtCut(self) -> None:
        """Normalising, a bare CR at the end of a read or a chunk becomes CRLF, whatever the cut."""
        wire = b"BDAT 2 LAST\r\n\ra"
        self.assertEqual(self.normalising(wire), (b"\r\na", ["250 2.0.0"]))
        self.assertEqual(self.normalising(*[bytes([c]) for c in wire]), (b"\r\na", ["250 2.0.0"]))
        body, codes = self.normalising(b"BDAT 1\r\n\rBDAT 1 LAST\r\na")
        self.assertEqual((body, codes), (b"\r\na", ["250 2.0.0", "250 2.0.0"]))

    def test_normaliseTrailingCR(self) -> None:
        """Normalising, a CR at the very end of the message is a bare CR: it becomes CRLF."""
        self.assertEqual(self.normalising(b"BDAT 2 LAST\r\na\r"), (b"a\r\n", ["250 2.0.0"]))
        body, codes = self.normalising(b"BDAT 2\r\na\rBDAT 0 LAST\r\n")
        self.assertEqual((body, codes), (b"a\r\n", ["250 2.0.0", "250 2.0.0"]))

    def test_trailingCRBeforeZeroLast(self) -> None:
        """Refusing bare line endings, a CR that ends the data before BDAT 0 LAST is bare."""
        out = self.d.feed(b"BDAT 2\r\na\rBDAT 0 LAST\r\n")
        self.assertEqual(self.d.codes(out), ["250 2.0.0", "550 5.5.2"])

    def test_binaryMIME(self) -> None:
        """With BODY=BINARYMIME any octets pass, and DATA is refused."""
        d = Driver()
        d.ehlo()
        d.feed(b"MAIL FROM:<a@b.c> BODY=BINARYMIME\r\nRCPT TO:<d@e.f>\r\n")
        self.assertEqual(d.codes(d.feed(b"DATA\r\n")), ["503 5.5.1"])
        out = d.feed(b"BDAT 4 LAST\r\n\n\r\x00\xff")
        self.assertEqual(d.codes(out), ["250 2.0.0"])
        self.assertEqual(d.body(), b"\n\r\x00\xff")

    def test_bodyValueIsASCII(self) -> None:
        """BODY=binarymime is BINARYMIME; a BODY value that is not ASCII (dotless i) is refused."""
        d = Driver()
        d.ehlo()
        d.feed(b"MAIL FROM:<a@b.c> BODY=binarymime\r\nRCPT TO:<d@e.f>\r\n")
        self.assertEqual(d.codes(d.feed(b"DATA\r\n")), ["503 5.5.1"])
        d.feed(b"RSET\r\n")
        out = d.feed("MAIL FROM:<a@b.c> BODY=BINARYM\u0131ME\r\n".encode())
        self.assertEqual(d.codes(out), ["501 5.5.4"])
        self.assertEqual(d.conn.state, State.READY)

    def test_noDataAfterBdat(self) -> None:
        """DATA in the middle of a chunked message is 503."""
        out = self.d.feed(b"BDAT 1\r\nxDATA\r\n")
        self.assertEqual(self.d.codes(out), ["250 2.0.0", "503 5.5.1"])

    def test_noBdatEvent(self) -> None:
        """A chunk that arrives whole comes as one EndOfMessage carrying its data."""
        self.d.feed(b"BDAT 1 LAST\r\nx")
        self.assertEqual(self.d.events[-1], EndOfMessage(1, b"x"))
        self.assertFalse([e for e in self.d.events if isinstance(e, Bdat)])

    def test_badSyntax(self) -> None:
        """BDAT without a size, or with junk, is 501."""
        self.assertEqual(
            self.d.codes(self.d.feed(b"BDAT\r\nBDAT x\r\nBDAT 1 FIRST\r\n")),
            ["501 5.5.4"] * 3,
        )


class StartTLSTests(SynchronousTestCase):
    def setUp(self) -> None:
        from tests._core import EHLO_REPLY

        ehlo = R.Reply(250, None, (*EHLO_REPLY.lines, "STARTTLS"))
        self.d = Driver(
            answer=lambda e: (
                ehlo
                if isinstance(e, Hello) and e.extended
                else R.Reply(220, (2, 0, 0), "Ready to start TLS")
                if e.verb == "STARTTLS"  # type: ignore[attr-defined]
                else Driver.__init__.__defaults__[1](e)
            )  # type: ignore[index]
        )

    def test_injectionIgnored(self) -> None:
        """Commands pipelined after STARTTLS are never read, then discarded at the handshake."""
        out = self.d.feed(
            b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nSTARTTLS\r\nRSET\r\nMAIL FROM:<x@y.z>\r\n"
        )
        self.assertTrue(out.endswith(b"220 2.0.0 Ready to start TLS\r\n"))
        self.assertEqual(self.d.conn.state, State.TLS)
        self.assertIs(self.d.conn.nextEvent(), PAUSED)
        self.d.conn.startTLS()
        self.assertEqual(self.d.conn.buffered, 0)
        self.assertIs(self.d.conn.nextEvent(), NEED_DATA)
        self.assertEqual(self.d.events[-1].verb, "STARTTLS")  # type: ignore[attr-defined]

    def test_stateForgotten(self) -> None:
        """After the handshake HELO, extensions and the transaction are gone."""
        self.d.feed(b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nSTARTTLS\r\n")
        self.d.conn.startTLS()
        self.assertIsNone(self.d.conn.heloName)
        self.assertEqual(self.d.conn.extensions, frozenset())
        self.assertEqual(self.d.conn.state, State.CONNECTED)
        out = self.d.feed(b"RCPT TO:<a@b.c>\r\nMAIL FROM:<a@b.c>\r\n")
        self.assertEqual(self.d.codes(out), ["503", "503"])

    def test_secondStartTLS(self) -> None:
        """STARTTLS inside TLS is 503."""
        self.d.feed(b"EHLO c\r\nSTARTTLS\r\n")
        self.d.conn.startTLS()
        self.d.answer = Driver.__init__.__defaults__[1]  # type: ignore[index]
        out = self.d.feed(b"EHLO c\r\nSTARTTLS\r\n")
        self.assertEqual(self.d.codes(out)[-1], "503 5.5.1")

    def test_notAdvertised(self) -> None:
        """STARTTLS that was not advertised is an unknown command."""
        d = Driver()
        d.ehlo()
        self.assertEqual(d.codes(d.feed(b"STARTTLS\r\n")), ["500 5.5.1"])

    def test_refusedStartTLS(self) -> None:
        """A 454 to STARTTLS leaves the session as it was."""
        self.d.answer = lambda e: (
            R.Reply(454, (4, 7, 0), "TLS not available") if e.verb == "STARTTLS" else R.OK
        )  # type: ignore[attr-defined]
        self.d.conn.receiveData(b"EHLO c\r\n")
        ev = self.d.conn.nextEvent()
        from tests._core import EHLO_REPLY

        self.d.conn.send(R.Reply(250, None, (*EHLO_REPLY.lines, "STARTTLS")))
        self.assertIsInstance(ev, Hello)
        out = self.d.feed(b"STARTTLS\r\nNOOP\r\n")
        self.assertEqual(self.d.codes(out), ["454 4.7.0", "250 2.0.0"])

    def test_startTLSOnlyAfter220(self) -> None:
        """Calling startTLS() without a 220 to STARTTLS is our own error."""
        self.assertRaises(LocalProtocolError, self.d.conn.startTLS)

    def test_startTLSArguments(self) -> None:
        """STARTTLS takes no argument."""
        out = self.d.feed(b"EHLO c\r\nSTARTTLS now\r\n")
        self.assertEqual(self.d.codes(out)[-1], "501 5.5.4")


class ContinuationTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.d = Driver(extensionVerbs=frozenset({"AUTH"}))
        self.d.ehlo()

    def test_exchange(self) -> None:
        """After a 334 the next line is raw data, answered like a command."""
        from mailframe.protocol import ContinuationLine

        self.d.conn.receiveData(b"AUTH LOGIN\r\nam9l\r\nMAIL FROM:<a@b.c>\r\nNOOP\r\n")
        self.assertEqual(self.d.conn.nextEvent(), ExtensionCommand("AUTH", "LOGIN"))
        self.d.conn.send(R.Reply(334, None, "VXNlcm5hbWU6"))
        self.assertEqual(self.d.conn.nextEvent(), ContinuationLine(b"am9l"))
        self.d.conn.send(R.Reply(334, None, "UGFzc3dvcmQ6"))
        self.assertEqual(self.d.conn.nextEvent(), ContinuationLine(b"MAIL FROM:<a@b.c>"))
        self.d.conn.send(R.Reply(535, (5, 7, 8), "Authentication credentials invalid"))
        self.assertEqual(self.d.conn.nextEvent().verb, "NOOP")  # type: ignore[union-attr]

    def test_tooLong(self) -> None:
        """A response over 12288 octets is 500 5.5.6 and the session goes on."""
        self.d.conn.receiveData(b"AUTH PLAIN\r\n")
        self.d.conn.nextEvent()
        self.d.conn.send(R.Reply(334, None, ""))
        out = self.d.feed(b"A" * 13000 + b"\r\nNOOP\r\n")
        self.assertEqual(self.d.codes(out), ["500 5.5.6", "250 2.0.0"])

    def test_334OnlyForExtensions(self) -> None:
        """A 334 is not a valid reply to an ordinary command."""
        self.d.conn.receiveData(b"NOOP\r\n")
        self.d.conn.nextEvent()
        self.assertRaises(LocalProtocolError, self.d.conn.send, R.Reply(334, None, ""))


def _session(state: str, **opts: bool) -> tuple[ServerConnection, Driver]:
    """
    A session brought to C{state} over the wire, with the facts C{opts} asks
    for: C{starttls} and C{chunking} offered, C{binary} (MAIL with
    BODY=BINARYMIME), C{refused} (a RCPT refused), C{failed} (a chunk refused);
    C{tls} is set by the caller.
    """
    from tests._core import EHLO_REPLY

    offered = [line for line in EHLO_REPLY.lines if line != "CHUNKING" or opts.get("chunking")]
    if opts.get("starttls"):
        offered.append("STARTTLS")
    ehlo = R.Reply(250, None, tuple(offered))

    def answer(e: object) -> R.Reply | None:
        if isinstance(e, Hello):
            return ehlo
        if isinstance(e, RcptTo) and opts.get("refused"):
            return R.USER_UNKNOWN
        if isinstance(e, EndOfChunk) and opts.get("failed"):
            return R.Reply(554, (5, 6, 0), "No")
        if isinstance(e, E.StartTLS):
            return R.Reply(220, None, "Go ahead")
        return defaultAnswer(e)  # type: ignore[arg-type]

    from tests._core import defaultAnswer

    d = Driver(answer=answer, extensionVerbs=frozenset({"XYZZY"}))
    if state == "REJECTED":
        d.conn = ServerConnection(extensionVerbs=frozenset({"XYZZY"}))
        d.conn.send(R.Reply(554, None, "no service"))
        return d.conn, d
    if state == "CONNECTED":
        return d.conn, d
    d.ehlo()
    if state == "READY":
        return d.conn, d
    d.feed(b"MAIL FROM:<a@b.c>%s\r\n" % (b" BODY=BINARYMIME" if opts.get("binary") else b""))
    if state == "MAIL":
        if opts.get("refused"):
            d.feed(b"RCPT TO:<x@y.z>\r\n")
        return d.conn, d
    answer_, d.answer = d.answer, defaultAnswer  # one accepted recipient
    d.feed(b"RCPT TO:<d@e.f>\r\n")
    d.answer = answer_
    if state == "RCPT":
        return d.conn, d
    assert state == "CHUNKING"
    d.feed(b"BDAT 3\r\nabc")
    return d.conn, d


_LINES = {
    E.Hello: b"EHLO x\r\n",
    E.MailFrom: b"MAIL FROM:<m@n.o>\r\n",
    E.RcptTo: b"RCPT TO:<p@q.r>\r\n",
    E.Data: b"DATA\r\n",
    E.Bdat: b"BDAT 2 LAST\r\nxy",
    E.Rset: b"RSET\r\n",
    E.Noop: b"NOOP\r\n",
    E.Help: b"HELP\r\n",
    E.Vrfy: b"VRFY x\r\n",
    E.Expn: b"EXPN x\r\n",
    E.StartTLS: b"STARTTLS\r\n",
    E.ExtensionCommand: b"XYZZY\r\n",
    E.Quit: b"QUIT\r\n",
}


class TableTests(SynchronousTestCase):
    """The core does what the tables of L{mailframe.protocol._state} say, and nothing else."""

    def expected(self, conn: ServerConnection, kind: type) -> R.Reply | None:
        """The table's answer to C{kind} now: a refusal, or None (admitted)."""
        for guard in S.GUARDS.get(kind, ()):
            if conn.state in guard.states and guard.fact in conn.facts:
                return guard.reply
        row = TRANSITIONS[kind]
        if conn.state in row.allowed:
            return None
        return S.REFUSALS.get(conn.state, row.refusal)

    def test_everyCommandInEveryState(self) -> None:
        """Each command, in each state, with each fact that a guard names: the table's answer."""
        states = ("REJECTED", "CONNECTED", "READY", "MAIL", "RCPT", "CHUNKING")
        facts = ("starttls", "chunking", "binary", "refused", "failed", "tls")
        checked = set()
        for state in states:
            for mask in range(1 << len(facts)):
                opts = {f: bool(mask & (1 << i)) for i, f in enumerate(facts)}
                if state == "CHUNKING" and not opts["chunking"]:
                    continue
                if opts["refused"] and state == "RCPT":
                    continue  # no recipient would be accepted
                for kind, line in _LINES.items():
                    conn, d = _session(state, **opts)
                    conn.tlsActive = opts["tls"]
                    self.assertEqual(conn.state.name, state, opts)
                    want = self.expected(conn, kind)
                    before = len(d.events)
                    out = d.feed(line)
                    checked.add((state, kind, want))
                    if want is None:
                        admitted = EndOfMessage if kind is E.Bdat else kind
                        self.assertIsInstance(d.events[before], admitted, (state, kind, opts))
                    else:
                        enhanced = "ENHANCEDSTATUSCODES" in conn.extensions
                        first = want.toBytes(enhanced).split(b"\r\n")[0]
                        self.assertEqual(out.split(b"\r\n")[0], first, (state, kind, opts))
        guardReplies = {g.reply for gs in S.GUARDS.values() for g in gs}
        self.assertLessEqual(guardReplies, {want for _, _, want in checked})

    def test_greetingTable(self) -> None:
        """The greeting's code picks the next state from GREETING_REPLIES; no other code greets."""
        for code, state in S.GREETING_REPLIES.items():
            conn = ServerConnection()
            conn.send(R.Reply(code, None, "x"))
            self.assertIs(conn.state, state)
        for code in (250, 421 + 1, 500):
            self.assertRaises(LocalProtocolError, ServerConnection().send, R.Reply(code, None, ""))

    def test_positiveReplies(self) -> None:
        """A positive reply must be one of its row's; a 354 to NOOP is our own error."""
        d = Driver()
        d.ehlo()
        d.conn.receiveData(b"NOOP\r\n")
        d.conn.nextEvent()
        self.assertNotIn(354, TRANSITIONS[E.Noop].replies)
        self.assertRaises(LocalProtocolError, d.conn.send, R.START_DATA)

    def test_factsForgottenWithTransaction(self) -> None:
        """RSET forgets the transaction's facts, but not what EHLO offered."""
        conn, d = _session("MAIL", refused=True, binary=True)
        self.assertLessEqual({S.RCPT_REFUSED, S.BINARY_BODY, S.NO_STARTTLS}, conn.facts)
        d.feed(b"RSET\r\n")
        self.assertFalse(conn.facts & S.TRANSACTION_FACTS)
        self.assertIn(S.NO_STARTTLS, conn.facts)

    def test_refusedChunkFact(self) -> None:
        """A refused chunk makes CHUNK_FAILED hold: the next BDAT gets the guard's 503."""
        conn, d = _session("CHUNKING", chunking=True, failed=True)
        self.assertIn(S.CHUNK_FAILED, conn.facts)
        out = d.feed(b"BDAT 1\r\nz")
        self.assertIn(b"This message failed; send RSET", out)

    def test_startTLSWhileActive(self) -> None:
        """With TLS active, STARTTLS is 503 even if an EHLO reply offers it again."""
        conn, d = _session("READY", starttls=True)
        conn.tlsActive = True
        self.assertIn(b"503 5.5.1 TLS is already active", d.feed(b"STARTTLS\r\n"))
        conn.tlsActive = False
        self.assertNotIn(S.TLS_ACTIVE, conn.facts)

    def test_lastChunkRefusedInChunking(self) -> None:
        """A refused BDAT LAST in CHUNKING ends the message (LAST_CHUNK_REFUSED); elsewhere not."""
        self.assertEqual(dict(S.LAST_CHUNK_REFUSED), {State.CHUNKING: S.CLEAR})
        conn, d = _session("CHUNKING", chunking=True, failed=True)
        d.feed(b"BDAT 1 LAST\r\nz")
        self.assertIs(conn.state, State.READY)
        conn, d = _session("MAIL", chunking=True, refused=True)
        d.feed(b"BDAT 1 LAST\r\nz")
        self.assertIs(conn.state, State.MAIL)

    def test_coreRefusalIsNegativeEnd(self) -> None:
        """A chunk the core refuses (too big) takes EndOfChunk's negative transition and fact."""
        d = Driver(Limits(messageSize=10))
        d.ehlo()
        d.feed(b"MAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\n")
        out = d.feed(b"BDAT 20\r\n" + b"x" * 20)
        self.assertEqual(d.codes(out), ["552 5.3.4"])
        self.assertIs(d.conn.state, TRANSITIONS[E.EndOfChunk].negative)
        self.assertIn(S.CHUNK_FAILED, d.conn.facts)

    def test_admissionPrecomputed(self) -> None:
        """ADMISSION has a cell for every command and state; None only where simply allowed."""
        for kind, row in TRANSITIONS.items():
            for state in State:
                cell = S.ADMISSION[kind][state]
                if cell is None:
                    self.assertIn(state, row.allowed)
                    self.assertFalse([g for g in S.GUARDS.get(kind, ()) if state in g.states])
