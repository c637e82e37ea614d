"""
Tests for L{mailframe.protocol.client.ClientConnection}, the sans-IO client
core on its own: reply syntax and bounds, multi-line replies, enhanced
status codes, matching replies to pipelined commands, STARTTLS discard,
dot-stuffing and the bare CR/LF refusal, BDAT framing; and properties
(hypothesis): replies round-trip through any TCP chunking, no byte stream
raises anything but RemoteProtocolError, dot-stuffing round-trips through
the server core.
"""

from __future__ import annotations

import string

from hypothesis import assume, given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mailframe import reply as R
from mailframe.address import parseMailbox
from mailframe.protocol import (
    NEED_DATA,
    PAUSED,
    Data,
    EndOfMessage,
    ExtensionCommand,
    Hello,
    LocalProtocolError,
    MailFrom,
    MessageData,
    Noop,
    Quit,
    RcptTo,
    RemoteProtocolError,
    StartTLS,
)
from mailframe.protocol import _clientstate as CS
from mailframe.protocol import _events as E
from mailframe.protocol._events import Bdat, ContinuationLine
from mailframe.protocol.client import (
    GREETING,
    ClientConnection,
    ClientLimits,
    ClientState,
    ServerReply,
    formatParameters,
)
from tests.test_properties import PROFILE, cut, opened, readMessage


def greeted(**kwargs: object) -> ClientConnection:
    """A connection that has read a 220 greeting."""
    conn = ClientConnection(ClientLimits(**kwargs))  # type: ignore[arg-type]
    conn.receiveData(b"220 mx.test ESMTP\r\n")
    event = conn.nextEvent()
    assert isinstance(event, ServerReply) and event.command is GREETING
    return conn


def events(conn: ClientConnection) -> list[ServerReply]:
    out = []
    while True:
        event = conn.nextEvent()
        if not isinstance(event, ServerReply):
            return out
        out.append(event)


class ReplyTests(SynchronousTestCase):
    def test_greeting(self) -> None:
        """The first reply answers the connection (GREETING); then commands may be sent."""
        conn = ClientConnection()
        self.assertRaises(LocalProtocolError, conn.send, Hello("c", True))
        self.assertIs(conn.nextEvent(), NEED_DATA)
        conn.receiveData(b"220 mx.test")
        self.assertIs(conn.nextEvent(), NEED_DATA)
        conn.receiveData(b" ESMTP\r\n")
        event = conn.nextEvent()
        assert isinstance(event, ServerReply)
        self.assertIs(event.command, GREETING)
        self.assertEqual((event.reply.code, event.reply.text), (220, "mx.test ESMTP"))
        self.assertEqual(conn.state, ClientState.CONNECTED)

    def test_multiLine(self) -> None:
        """A multi-line reply comes as one event with its lines."""
        conn = greeted()
        conn.send(Hello("c", True))
        conn.receiveData(b"250-mx.test\r\n250-PIPELINING\r\n250-SIZE 1000\r\n")
        self.assertIs(conn.nextEvent(), NEED_DATA)
        conn.receiveData(b"250 8BITMIME\r\n")
        [event] = events(conn)
        self.assertEqual(event.reply.lines, ("mx.test", "PIPELINING", "SIZE 1000", "8BITMIME"))
        self.assertEqual(dict(conn.extensions), {"PIPELINING": "", "SIZE": "1000", "8BITMIME": ""})
        self.assertTrue(conn.supports("size"))

    def test_heloForgetsExtensions(self) -> None:
        """A HELO reply leaves no capabilities."""
        conn = greeted()
        conn.send(Hello("c", True))
        conn.receiveData(b"250-mx\r\n250 PIPELINING\r\n")
        events(conn)
        conn.send(Hello("c", False))
        conn.receiveData(b"250 mx\r\n")
        events(conn)
        self.assertEqual(dict(conn.extensions), {})
        self.assertFalse(conn.extended)

    def test_enhancedCode(self) -> None:
        """An RFC 2034 code is split off every line; one of another class stays text."""
        conn = greeted()
        conn.send(Rcpt("a@b.example"))
        conn.send(Rcpt("c@b.example"))
        conn.receiveData(b"550-5.1.1 No such\r\n550 5.1.1 user\r\n450 5.1.1 odd\r\n")
        first, second = events(conn)
        self.assertEqual(first.reply.enhanced, (5, 1, 1))
        self.assertEqual(first.reply.lines, ("No such", "user"))
        self.assertIsNone(second.reply.enhanced)
        self.assertEqual(second.reply.text, "5.1.1 odd")

    def test_bareCodeAndLF(self) -> None:
        """C{250} alone is a reply; a bare LF ends a line."""
        conn = greeted()
        conn.send(Quit())
        conn.receiveData(b"221\n")
        [event] = events(conn)
        self.assertEqual((event.reply.code, event.reply.text), (221, ""))
        self.assertEqual(conn.state, ClientState.CLOSED)

    def test_pipelinedReplies(self) -> None:
        """Replies to a pipelined group arrive together and pair with the commands in order."""
        conn = greeted()
        sent = [
            MailFrom(parseMailbox("a@b.example")),
            Rcpt("x@c.example"),
            Rcpt("y@c.example"),
            Data(),
        ]
        out = b"".join(conn.send(e) for e in sent)
        self.assertEqual(
            out,
            b"MAIL FROM:<a@b.example>\r\nRCPT TO:<x@c.example>\r\n"
            b"RCPT TO:<y@c.example>\r\nDATA\r\n",
        )
        self.assertEqual(conn.awaiting, tuple(sent))
        conn.receiveData(b"250 ok\r\n250 ok\r\n550 no\r\n354 go\r\n")
        got = events(conn)
        self.assertEqual([e.command for e in got], sent)
        self.assertEqual([e.reply.code for e in got], [250, 250, 550, 354])
        self.assertEqual(conn.state, ClientState.DATA)
        self.assertEqual(conn.awaiting, ())

    def test_unsolicited421(self) -> None:
        """A 421 nobody asked for is an event answering nothing, and closes."""
        conn = greeted()
        conn.receiveData(b"421 4.4.2 bye\r\n")
        [event] = events(conn)
        self.assertIsNone(event.command)
        self.assertEqual(conn.state, ClientState.CLOSED)
        self.assertIs(conn.nextEvent(), PAUSED)

    def test_421ClosesWithPending(self) -> None:
        """A 421 to a command closes even with replies still awaited."""
        conn = greeted()
        conn.send(Rcpt("x@c.example"))
        conn.send(Rcpt("y@c.example"))
        conn.receiveData(b"421 closing\r\n250 ignored\r\n")
        [event] = events(conn)
        self.assertEqual(event.reply.code, 421)
        self.assertEqual(conn.state, ClientState.CLOSED)


def Rcpt(address: str) -> RcptTo:
    return RcptTo(parseMailbox(address))


class MalformedTests(SynchronousTestCase):
    def assertProtocolError(self, conn: ClientConnection, data: bytes) -> None:
        conn.receiveData(data)
        e = self.assertRaises(RemoteProtocolError, conn.nextEvent)
        self.assertEqual((e.reply.code, e.reply.enhanced), (451, (4, 5, 0)))
        self.assertEqual(conn.state, ClientState.CLOSED)
        self.assertIs(conn.nextEvent(), PAUSED)

    def test_garbage(self) -> None:
        """A line without a reply code ends the session with 451 4.5.0."""
        for line in (b"hello\r\n", b"25 x\r\n", b"150 x\r\n", b"650 x\r\n", b"250x\r\n"):
            conn = greeted()
            conn.send(Quit())
            self.assertProtocolError(conn, line)

    def test_controlCharacters(self) -> None:
        """A bare CR or NUL inside a reply line is malformed."""
        for line in (b"250 a\rb\r\n", b"250 a\x00\r\n"):
            conn = greeted()
            conn.send(Quit())
            self.assertProtocolError(conn, line)

    def test_lineTooLong(self) -> None:
        """A reply line of 513 octets is refused; 512 (with CRLF) is read."""
        conn = greeted()
        conn.send(Quit())
        conn.receiveData(b"221 " + b"x" * 506 + b"\r\n")
        [event] = events(conn)
        self.assertEqual(len(event.reply.text), 506)
        conn = greeted()
        conn.send(Quit())
        self.assertProtocolError(conn, b"221 " + b"x" * 507 + b"\r\n")

    def test_longPartialLine(self) -> None:
        """Over 512 octets without a line end is refused at once, not buffered."""
        conn = greeted()
        conn.send(Quit())
        self.assertProtocolError(conn, b"250-" + b"x" * 600)

    def test_tooManyLines(self) -> None:
        """A reply of more lines than the limit is refused."""
        conn = greeted(replyLines=3)
        conn.send(Hello("c", True))
        self.assertProtocolError(conn, b"250-a\r\n250-b\r\n250-c\r\n250 d\r\n")

    def test_mixedCodes(self) -> None:
        """The lines of one reply must share their code."""
        conn = greeted()
        conn.send(Hello("c", True))
        self.assertProtocolError(conn, b"250-a\r\n251 b\r\n")

    def test_unsolicited(self) -> None:
        """A reply other than 421 that answers nothing is a protocol error."""
        conn = greeted()
        self.assertProtocolError(conn, b"250 surprise\r\n")

    def test_limits(self) -> None:
        """The limits cannot go below RFC 5321's 512 octets."""
        self.assertRaises(ValueError, ClientLimits, replyLine=100)
        self.assertRaises(ValueError, ClientLimits, replyLines=0)


class TLSTests(SynchronousTestCase):
    def test_discardAfter220(self) -> None:
        """Bytes that came with the 220 to STARTTLS are never read as replies."""
        conn = greeted()
        conn.send(Hello("c", True))
        conn.receiveData(b"250-mx\r\n250 STARTTLS\r\n")
        events(conn)
        self.assertEqual(conn.send(StartTLS()), b"STARTTLS\r\n")
        conn.receiveData(b"220 go ahead\r\n250-injected\r\n250 AUTH PLAIN\r\n")
        [event] = events(conn)
        self.assertEqual(event.reply.code, 220)
        self.assertEqual(conn.state, ClientState.TLS)
        self.assertIs(conn.nextEvent(), PAUSED)
        self.assertRaises(LocalProtocolError, conn.send, Hello("c", True))
        conn.startTLS()
        self.assertEqual(conn.buffered, 0)
        self.assertEqual(dict(conn.extensions), {})
        self.assertTrue(conn.tlsActive)
        conn.send(Hello("c", True))
        self.assertIs(conn.nextEvent(), NEED_DATA)
        conn.receiveData(b"250-mx\r\n250 AUTH LOGIN\r\n")
        [event] = events(conn)
        self.assertEqual(event.reply.lines, ("mx", "AUTH LOGIN"))

    def test_startTLSOnlyAfter220(self) -> None:
        """startTLS() without a 220 to STARTTLS is our mistake."""
        conn = greeted()
        self.assertRaises(LocalProtocolError, conn.startTLS)


class DataTests(SynchronousTestCase):
    def inData(self) -> ClientConnection:
        conn = greeted()
        conn.send(Data())
        conn.receiveData(b"354 go\r\n")
        events(conn)
        return conn

    def test_dotStuffing(self) -> None:
        """Leading periods are doubled, across pieces; the final dot follows CRLF."""
        conn = self.inData()
        out = conn.send(MessageData(b".a\r\nb\r\n"))
        out += conn.send(MessageData(b".c\r"))
        out += conn.send(MessageData(b"\n.d"))
        out += conn.send(EndOfMessage(0))
        self.assertEqual(out, b"..a\r\nb\r\n..c\r\n..d\r\n.\r\n")
        self.assertEqual(conn.state, ClientState.READY)
        self.assertEqual(len(conn.awaiting), 1)

    def test_endAfterCRLF(self) -> None:
        """Data ending with CRLF gets just the dot; an empty message too."""
        conn = self.inData()
        self.assertEqual(conn.send(MessageData(b"x\r\n")) + conn.send(EndOfMessage(0)),
                         b"x\r\n.\r\n")  # fmt: skip
        conn = self.inData()
        self.assertEqual(conn.send(EndOfMessage(0)), b".\r\n")

    def test_bareLineEndings(self) -> None:
        """A bare LF or CR is never sent inside DATA (SMTP smuggling)."""
        for pieces in ([b"a\nb\r\n"], [b"a\rb\r\n"], [b"a\r", b"b\r\n"], [b"\r\n.\n"]):
            conn = self.inData()
            with self.assertRaises(LocalProtocolError):
                for piece in pieces:
                    conn.send(MessageData(piece))
        conn = self.inData()
        conn.send(MessageData(b"a\r"))
        self.assertRaises(LocalProtocolError, conn.send, EndOfMessage(0))

    def test_onlyDataIn354(self) -> None:
        """After a 354 only message data may be sent; before it, none."""
        conn = greeted()
        self.assertRaises(LocalProtocolError, conn.send, MessageData(b"x"))
        conn = self.inData()
        self.assertRaises(LocalProtocolError, conn.send, Quit())

    def test_bdat(self) -> None:
        """BDAT sends the size, LAST on the last chunk, and the octets as they are."""
        conn = greeted()
        self.assertEqual(conn.sendChunk(b".a\nb", False), b"BDAT 4\r\n.a\nb")
        self.assertEqual(conn.sendChunk(b"", True), b"BDAT 0 LAST\r\n")
        self.assertEqual(conn.awaiting, (Bdat(4, False), Bdat(0, True)))


class CommandTests(SynchronousTestCase):
    def test_parameters(self) -> None:
        """MAIL and RCPT carry their ESMTP parameters, bare keywords without '='."""
        conn = greeted()
        mail = MailFrom(parseMailbox("a@b.example"), {"SIZE": "10", "SMTPUTF8": None})
        self.assertEqual(conn.send(mail), b"MAIL FROM:<a@b.example> SIZE=10 SMTPUTF8\r\n")
        self.assertEqual(formatParameters({"NOTIFY": "NEVER"}), "NOTIFY=NEVER")

    def test_utf8(self) -> None:
        """UTF-8 addresses are sent as UTF-8."""
        conn = greeted()
        self.assertEqual(conn.send(Rcpt("δοκιμή@παράδειγμα.example")),
                         "RCPT TO:<δοκιμή@παράδειγμα.example>\r\n".encode())  # fmt: skip

    def test_nullSender(self) -> None:
        """The null reverse-path is C{<>}."""
        from mailframe.address import Address

        conn = greeted()
        self.assertEqual(conn.send(MailFrom(Address.null())), b"MAIL FROM:<>\r\n")

    def test_authAndContinuation(self) -> None:
        """AUTH is an extension command; a continuation line is sent raw; CR/LF refused."""
        conn = greeted()
        self.assertEqual(conn.send(ExtensionCommand("AUTH", "LOGIN")), b"AUTH LOGIN\r\n")
        self.assertEqual(conn.send(ContinuationLine(b"dXNlcg==")), b"dXNlcg==\r\n")
        self.assertRaises(ValueError, conn.send, ContinuationLine(b"a\r\nQUIT"))
        self.assertRaises(ValueError, conn.send, Hello("a\r\nQUIT", True))

    def test_notACommand(self) -> None:
        """Only commands are sent outside DATA."""
        conn = greeted()
        self.assertRaises(LocalProtocolError, conn.send, EndOfMessage(0))

    def test_close(self) -> None:
        """After close() nothing is read."""
        conn = greeted()
        conn.close()
        conn.receiveData(b"250 x\r\n")
        self.assertIs(conn.nextEvent(), PAUSED)


class TableTests(SynchronousTestCase):
    """The client core does what the tables of L{mailframe.protocol._clientstate} say."""

    def at(self, state: str) -> ClientConnection:
        """A connection brought to C{state} over the wire."""
        conn = ClientConnection()
        if state == ClientState.GREETING:
            return conn
        conn.receiveData(b"220 mx\r\n")
        events(conn)
        if state == ClientState.CONNECTED:
            return conn
        if state == ClientState.CLOSED:
            conn.close()
            return conn
        conn.send(Hello("c", True))
        conn.receiveData(b"250-mx\r\n250 STARTTLS\r\n")
        events(conn)
        if state == ClientState.READY:
            return conn
        command, reply = (StartTLS(), b"220 go\r\n") if state == "TLS" else (Data(), b"354 go\r\n")
        conn.send(command)
        conn.receiveData(reply)
        events(conn)
        return conn

    def test_states(self) -> None:
        """Each state is reachable as the table says."""
        for state in CS.CLIENT_STATES:
            self.assertEqual(self.at(state).state, state)

    def test_sends(self) -> None:
        """In each state exactly what SENDS lists may be sent, and it leads where SENDS says."""
        samples = {
            Hello: Hello("c", True),
            MailFrom: MailFrom(parseMailbox("a@b.example")),
            Data: Data(),
            Quit: Quit(),
            Noop: Noop(),
            StartTLS: StartTLS(),
            ExtensionCommand: ExtensionCommand("AUTH", "LOGIN"),
            MessageData: MessageData(b"x\r\n"),
            EndOfMessage: EndOfMessage(0),
        }
        for state in CS.CLIENT_STATES:
            sends = CS.SENDS.get(state, {})
            for kind, event in samples.items():
                conn = self.at(state)
                self.assertEqual(conn.canSend(kind), kind in sends, (state, kind))
                if kind in sends:
                    conn.send(event)
                    self.assertEqual(conn.state, sends[kind] or state, (state, kind))
                else:
                    self.assertRaises(LocalProtocolError, conn.send, event)
            conn = self.at(state)
            if Bdat in sends:
                conn.sendChunk(b"x", True)
            else:
                self.assertRaises(LocalProtocolError, conn.sendChunk, b"x", True)
            self.assertRaises(LocalProtocolError, self.at(state).send, Bdat(1, True))

    def test_replies(self) -> None:
        """Each reply rule moves the state; other codes leave it, a 421 always closes."""
        for kind, rules in CS.REPLIES.items():
            for code in (220, 250, 354, 421, 550):
                conn = self.at(ClientState.CONNECTED)
                if kind is not E.Greeting:
                    conn.send({Hello: Hello("c", True), StartTLS: StartTLS(), Data: Data(),
                               Quit: Quit()}[kind])  # fmt: skip
                else:
                    conn = ClientConnection()
                before = conn.state
                conn.receiveData(b"%d x\r\n" % code)
                events(conn)
                if code == CS.CLOSING:
                    want = ClientState.CLOSED
                else:
                    want = rules.get(code) or rules.get(CS.ANY) or before
                self.assertEqual(conn.state, want, (kind, code))

    def test_handshake(self) -> None:
        """startTLS() goes from TLS to CONNECTED: EHLO must come again."""
        conn = self.at(ClientState.TLS)
        conn.startTLS()
        self.assertEqual(conn.state, CS.HANDSHAKE[1])
        self.assertEqual(conn.state, ClientState.CONNECTED)

    def test_pausedStates(self) -> None:
        """Nothing is read in the states of PAUSED_IN."""
        for state in CS.PAUSED_IN:
            conn = self.at(state)
            conn.receiveData(b"250 x\r\n")
            self.assertIs(conn.nextEvent(), PAUSED)


# -- properties (hypothesis) -------------------------------------------------------

_LINE = (
    st.text(string.ascii_letters + string.digits + " .,-", min_size=1, max_size=60)
    .map(str.strip)
    .filter(bool)
)
_CODE = st.sampled_from([220, 221, 235, 250, 251, 334, 354, 421, 450, 451, 452, 500, 550, 554])


@st.composite
def replies(draw: st.DrawFn) -> R.Reply:
    code = draw(_CODE)
    enhanced = None
    if code // 100 != 3 and draw(st.booleans()):
        enhanced = (code // 100, draw(st.integers(0, 999)), draw(st.integers(0, 999)))
    lines = tuple(draw(st.lists(_LINE, min_size=1, max_size=5)))
    if enhanced is None:  # text that merely looks like a code would be read as one
        assume(not any(line[:1].isdigit() for line in lines))
    return R.Reply(code, enhanced, lines)


class ClientPropertyTests(TestCase):
    @PROFILE
    @given(st.lists(replies(), min_size=1, max_size=6), st.lists(st.integers(0, 2000)))
    def test_repliesRoundTrip(self, sent: list[R.Reply], cuts: list[int]) -> None:
        """Replies written by mailframe read back the same, however TCP cuts them."""
        conn = greeted()
        for _ in sent:
            conn.send(Noop())
        wire = b"".join(r.toBytes() for r in sent)
        got: list[ServerReply] = []
        for piece in cut(wire, cuts):
            conn.receiveData(piece)
            got.extend(events(conn))
            if conn.state == ClientState.CLOSED:
                break
        self.assertEqual([(e.reply.code, e.reply.enhanced, e.reply.lines) for e in got],
                         [(r.code, r.enhanced, r.lines) for r in sent][: len(got)])  # fmt: skip
        closedAt = next((i for i, r in enumerate(sent) if r.code == 421), None)
        self.assertEqual(len(got), len(sent) if closedAt is None else closedAt + 1)

    @PROFILE
    @given(st.binary(max_size=3000), st.lists(st.integers(0, 3000)))
    def test_anyBytes(self, wire: bytes, cuts: list[int]) -> None:
        """No byte stream makes the client core raise anything but RemoteProtocolError."""
        conn = greeted()
        for _ in range(5):
            conn.send(Noop())
        for piece in cut(wire, cuts):
            conn.receiveData(piece)
            try:
                events(conn)
            except RemoteProtocolError as e:
                self.assertEqual(e.reply.code, 451)
                return

    @PROFILE
    @given(st.lists(st.sampled_from([b"a", b".", b"..", b"\r\n", b"x\r\n.", b" "]), max_size=40),
           st.lists(st.integers(0, 200)))  # fmt: skip
    def test_dotStuffingRoundTrip(self, parts: list[bytes], cuts: list[int]) -> None:
        """Message data dot-stuffed by the client, in any pieces, reads back the same in a server."""
        data = b"".join(parts)
        conn = greeted()
        conn.send(Data())
        conn.receiveData(b"354 go\r\n")
        events(conn)
        wire = b"".join(conn.send(MessageData(p)) for p in cut(data, cuts))
        wire += conn.send(EndOfMessage(0))
        server = opened()
        pieces, _ = readMessage(server, iter([wire]))
        expected = data if not data or data.endswith(b"\r\n") else data + b"\r\n"
        self.assertEqual(b"".join(pieces), expected)
