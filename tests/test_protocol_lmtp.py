"""
Tests for LMTP (RFC 2033) in the sans-IO core, both roles, in memory: the
server's L{ServerConnection} with C{lmtp=True} (LHLO, HELO and EHLO
unknown, one reply per accepted recipient after the final dot and after
BDAT LAST, duplicates included) and the client's L{ClientConnection}
with C{lmtp=True} (LHLO, the replies to the end of the data paired with
the accepted recipients).
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mailframe import reply as R
from mailframe.address import parseMailbox
from mailframe.protocol import (
    NEED_DATA,
    PAUSED,
    Bdat,
    ClientConnection,
    EndOfMessage,
    Hello,
    Limits,
    LocalProtocolError,
    RemoteProtocolError,
    ServerConnection,
    State,
)
from mailframe.protocol import _events as E
from mailframe.protocol import _state as S
from mailframe.protocol.client import ServerReply

LHLO_REPLY = R.Reply(250, None, ("lmtp.test", "PIPELINING", "ENHANCEDSTATUSCODES", "CHUNKING"))
FULL = R.Reply(452, (4, 2, 2), "Mailbox full")
GONE = R.Reply(550, (5, 1, 1), "No such user")


def answer(event: E.Event) -> R.Reply | None:
    """What a permissive LMTP server answers (None: nothing due, or per recipient)."""
    if isinstance(event, Hello):
        return LHLO_REPLY
    if isinstance(event, E.MailFrom):
        return R.SENDER_OK
    if isinstance(event, E.RcptTo):
        return GONE if event.address.localPart == "gone" else R.RECIPIENT_OK
    if isinstance(event, E.Data):
        return R.START_DATA
    if isinstance(event, E.EndOfChunk):
        return R.chunkReceived(event.size)
    if isinstance(event, E.MessageData | EndOfMessage):
        return None
    return R.OK


class LMTPServer:
    """A greeted LMTP ServerConnection that answers commands, and leaves the ends of messages."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.conn = ServerConnection(limits, lmtp=True)
        self.conn.send(R.Reply(220, None, "lmtp.test LMTP"))
        self.ends: list[EndOfMessage] = []
        self.refusals: list[R.Reply] = []

    def feed(self, data: bytes) -> bytes:
        """Feed bytes; answer until an end of message (or a refusal of one) awaits, or input ends."""
        conn = self.conn
        conn.receiveData(data)
        out = b""
        while True:
            try:
                event = conn.nextEvent()
            except RemoteProtocolError as e:
                if conn.repliesDue > 1:
                    self.refusals.append(e.reply)
                    return out
                out += conn.send(e.reply)
                continue
            if event is NEED_DATA or event is PAUSED:
                return out
            if isinstance(event, EndOfMessage):
                self.ends.append(event)
                return out
            reply = answer(event)  # type: ignore[arg-type]
            if reply is not None:
                out += conn.send(reply)

    def hello(self) -> None:
        self.feed(b"LHLO client.test\r\n")


def codes(data: bytes) -> list[str]:
    return [line[:3].decode() for line in data.split(b"\r\n") if line[3:4] == b" "]


class ServerGreetingTests(SynchronousTestCase):
    def test_lhlo(self) -> None:
        """LHLO is the greeting verb: extended, its reply lists the extensions."""
        server = LMTPServer()
        server.conn.receiveData(b"LHLO client.test\r\n")
        self.assertEqual(server.conn.nextEvent(), Hello("client.test", True))
        out = server.conn.send(LHLO_REPLY)
        self.assertEqual(out, b"250-lmtp.test\r\n250-PIPELINING\r\n250-ENHANCEDSTATUSCODES\r\n"
                              b"250 CHUNKING\r\n")  # fmt: skip
        self.assertIs(server.conn.state, State.READY)
        self.assertIn("CHUNKING", server.conn.extensions)

    def test_heloAndEhloUnknown(self) -> None:
        """HELO and EHLO get 500 5.5.1 in LMTP (RFC 2033 4.1), with the enhanced code."""
        server = LMTPServer()
        out = server.feed(b"HELO client.test\r\nEHLO client.test\r\nMAIL FROM:<a@b.example>\r\n")
        self.assertEqual(out, b"500 5.5.1 Command unrecognized\r\n" * 2
                              + b"503 5.5.1 Send HELO/EHLO first, and MAIL only once per message\r\n")  # fmt: skip
        self.assertIs(server.conn.state, State.CONNECTED)

    def test_lhloUnknownInSMTP(self) -> None:
        """An SMTP server does not know LHLO."""
        conn = ServerConnection()
        conn.send(R.greeting("mx.test"))
        conn.receiveData(b"LHLO client.test\r\n")
        with self.assertRaises(RemoteProtocolError) as caught:
            conn.nextEvent()
        self.assertEqual(caught.exception.reply, R.UNRECOGNIZED)

    def test_alwaysOffered(self) -> None:
        """PIPELINING and ENHANCEDSTATUSCODES hold even when the LHLO reply did not list them."""
        server = LMTPServer()
        server.conn.receiveData(b"LHLO client.test\r\n")
        server.conn.nextEvent()
        server.conn.send(R.Reply(250, None, "lmtp.test"))
        self.assertEqual(server.conn.extensions, {"PIPELINING", "ENHANCEDSTATUSCODES"})
        self.assertEqual(server.feed(b"RSET\r\n"), b"250 2.0.0 OK\r\n")

    def test_dialects(self) -> None:
        """The dialect table says what LMTP changes."""
        self.assertEqual(S.LMTP.hello, {"LHLO": True})
        self.assertEqual(S.LMTP.perRecipient, {EndOfMessage})
        self.assertEqual(S.SMTP.perRecipient, frozenset())
        self.assertIs(ServerConnection(lmtp=True).dialect, S.LMTP)


class ServerPerRecipientTests(SynchronousTestCase):
    def transaction(self, server: LMTPServer, *recipients: str, body: bytes = b"Hi\r\n") -> bytes:
        rcpts = b"".join(b"RCPT TO:<%s>\r\n" % r.encode() for r in recipients)
        return server.feed(b"MAIL FROM:<a@b.example>\r\n" + rcpts + b"DATA\r\n" + body + b".\r\n")

    def test_oneReplyPerRecipient(self) -> None:
        """After the dot, one reply per accepted RCPT in order; a refused one gets none."""
        server = LMTPServer()
        server.hello()
        out = self.transaction(server, "a@x.example", "gone@x.example", "b@x.example")
        self.assertEqual(codes(out), ["250", "250", "550", "250", "354"])
        conn = server.conn
        self.assertEqual(conn.repliesDue, 2)
        self.assertIs(conn.nextEvent(), PAUSED)
        out = conn.sendEach([R.accepted("Q1"), FULL])
        self.assertEqual(out, b"250 2.0.0 OK queued as Q1\r\n452 4.2.2 Mailbox full\r\n")
        self.assertIs(conn.state, State.READY)
        self.assertEqual(conn.repliesDue, 0)
        self.assertIs(conn.nextEvent(), NEED_DATA)

    def test_duplicates(self) -> None:
        """A recipient given twice is answered twice."""
        server = LMTPServer()
        server.hello()
        self.transaction(server, "a@x.example", "a@x.example", "a@x.example")
        self.assertEqual(server.conn.repliesDue, 3)
        out = server.conn.sendEach([R.accepted("Q1")] * 3)
        self.assertEqual(codes(out), ["250", "250", "250"])

    def test_sameReplyForAll(self) -> None:
        """send() answers the end of a message once for every recipient (the whole message)."""
        server = LMTPServer()
        server.hello()
        self.transaction(server, "a@x.example", "b@x.example")
        out = server.conn.send(R.Reply(554, (5, 7, 1), "Spam"))
        self.assertEqual(out, b"554 5.7.1 Spam\r\n" * 2)
        self.assertIs(server.conn.state, State.READY)

    def test_oneRecipient(self) -> None:
        """With one recipient the end of a message gets one reply, as in SMTP."""
        server = LMTPServer()
        server.hello()
        self.transaction(server, "a@x.example")
        self.assertEqual(server.conn.repliesDue, 1)
        self.assertEqual(
            server.conn.sendEach([R.accepted("Q1")]), b"250 2.0.0 OK queued as Q1\r\n"
        )

    def test_refusedMessage(self) -> None:
        """A message the core refuses (too big) is refused once for each recipient."""
        server = LMTPServer(Limits(messageSize=10))
        server.hello()
        self.transaction(
            server, "a@x.example", "b@x.example", "c@x.example", body=b"x" * 40 + b"\r\n"
        )
        self.assertEqual(server.refusals, [R.MESSAGE_TOO_BIG])
        self.assertEqual(server.conn.repliesDue, 3)
        out = server.conn.send(R.MESSAGE_TOO_BIG)
        self.assertEqual(codes(out), ["552", "552", "552"])
        self.assertIs(server.conn.state, State.READY)

    def test_pipelined(self) -> None:
        """Two pipelined transactions: each end is answered before the next command is read."""
        server = LMTPServer()
        server.hello()
        conn = server.conn
        data = (b"MAIL FROM:<a@b.example>\r\nRCPT TO:<a@x.example>\r\nRCPT TO:<b@x.example>\r\n"
                b"DATA\r\nOne\r\n.\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@x.example>\r\n"
                b"DATA\r\nTwo\r\n.\r\nQUIT\r\n")  # fmt: skip
        out = server.feed(data)
        self.assertEqual(codes(out), ["250", "250", "250", "354"])
        self.assertEqual(server.ends[0].data, b"One\r\n")
        out = conn.sendEach([R.accepted("Q1"), GONE])
        out += server.feed(b"")
        self.assertEqual(codes(out), ["250", "550", "250", "250", "354"])
        self.assertEqual(conn.repliesDue, 1)
        out = conn.sendEach([R.accepted("Q2")]) + server.feed(b"")
        self.assertEqual(codes(out), ["250", "250"])  # the dot, then QUIT's (answered OK here)

    def test_misuse(self) -> None:
        """sendEach needs an end of message and exactly one reply per accepted recipient."""
        server = LMTPServer()
        server.hello()
        conn = server.conn
        conn.receiveData(b"NOOP\r\n")
        conn.nextEvent()
        self.assertRaises(LocalProtocolError, conn.sendEach, [R.OK])
        conn.send(R.OK)
        self.transaction(server, "a@x.example", "b@x.example")
        self.assertRaises(LocalProtocolError, conn.sendEach, [R.accepted("Q1")])
        self.assertRaises(LocalProtocolError, conn.sendEach, [R.accepted("Q1"), R.TIMEOUT])
        self.assertRaises(LocalProtocolError, conn.sendEach, [R.accepted("Q1"), R.START_DATA])
        self.assertEqual(conn.repliesDue, 2)  # nothing was sent
        self.assertEqual(codes(conn.sendEach([FULL, FULL])), ["452", "452"])

    def test_421(self) -> None:
        """A 421 to the end of a message is sent once and closes the session."""
        server = LMTPServer()
        server.hello()
        self.transaction(server, "a@x.example", "b@x.example")
        self.assertEqual(codes(server.conn.send(R.TIMEOUT)), ["421"])
        self.assertIs(server.conn.state, State.CLOSED)


class ServerChunkingTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.server = LMTPServer()
        self.server.hello()

    def test_bdatLast(self) -> None:
        """BDAT chunks get one reply each; BDAT LAST one per accepted recipient."""
        server = self.server
        out = server.feed(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<a@x.example>\r\n"
                          b"RCPT TO:<b@x.example>\r\nBDAT 5\r\nOne\r\nBDAT 5 LAST\r\nTwo\r\n")  # fmt: skip
        self.assertEqual(codes(out), ["250", "250", "250", "250"])
        self.assertEqual(server.conn.repliesDue, 2)
        out = server.conn.sendEach([FULL, R.accepted("Q1")])
        self.assertEqual(codes(out), ["452", "250"])
        self.assertIs(server.conn.state, State.READY)

    def test_bdatLastOfAFailedMessage(self) -> None:
        """BDAT LAST after a refused chunk: refused once for each accepted recipient."""
        server = LMTPServer(Limits(messageSize=4))
        server.hello()
        out = server.feed(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<a@x.example>\r\n"
                          b"RCPT TO:<b@x.example>\r\nBDAT 6\r\nLonger")  # fmt: skip
        self.assertEqual(codes(out), ["250", "250", "250", "552"])
        out = server.feed(b"BDAT 2 LAST\r\nxx")
        self.assertEqual(server.conn.repliesDue, 2)
        self.assertEqual(server.refusals[-1].code, 503)
        out = server.conn.send(server.refusals[-1])
        self.assertEqual(codes(out), ["503", "503"])
        self.assertIs(server.conn.state, State.READY)

    def test_bdatWithoutRecipient(self) -> None:
        """BDAT LAST with no recipient accepted: one refusal (a sequence error)."""
        out = self.server.feed(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<gone@x.example>\r\n"
                               b"BDAT 2 LAST\r\nxx")  # fmt: skip
        self.assertEqual(codes(out), ["250", "550", "554"])
        self.assertEqual(self.server.conn.repliesDue, 0)


class ClientLMTPTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.conn = ClientConnection(lmtp=True)
        self.conn.receiveData(b"220 lmtp.test LMTP\r\n")
        self.conn.nextEvent()

    def replies(self, data: bytes) -> list[tuple[str, int]]:
        self.conn.receiveData(data)
        out = []
        while isinstance(event := self.conn.nextEvent(), ServerReply):
            out.append((type(event.command).__name__, event.reply.code))
        return out

    def start(self, *recipients: str) -> bytes:
        conn = self.conn
        out = conn.send(E.MailFrom(parseMailbox("a@b.example")))
        for r in recipients:
            out += conn.send(E.RcptTo(parseMailbox(r)))
        return out

    def test_lhlo(self) -> None:
        """Hello goes out as LHLO; LMTP has no HELO."""
        self.assertEqual(self.conn.send(E.Hello("client.test", True)), b"LHLO client.test\r\n")
        self.assertRaises(LocalProtocolError, self.conn.send, E.Hello("client.test", False))
        self.assertEqual(len(self.conn.awaiting), 1)
        self.replies(b"250-lmtp.test\r\n250 PIPELINING\r\n")
        self.assertTrue(self.conn.supports("PIPELINING"))

    def test_data(self) -> None:
        """The final dot gets one reply per accepted recipient, duplicates included."""
        self.conn.send(E.Hello("client.test", True))
        self.replies(b"250 lmtp.test\r\n")
        self.start("a@x.example", "gone@x.example", "a@x.example", "b@x.example")
        self.conn.send(E.Data())
        got = self.replies(b"250 ok\r\n250 ok\r\n550 no\r\n250 ok\r\n250 ok\r\n354 go\r\n")
        self.assertEqual([c for _, c in got], [250, 250, 550, 250, 250, 354])
        self.conn.send(E.MessageData(b"Hi\r\n"))
        self.conn.send(EndOfMessage(0))
        got = self.replies(b"250 saved\r\n250 saved\r\n")
        self.assertEqual(got, [("EndOfMessage", 250)] * 2)
        self.assertEqual(self.conn.awaiting, (EndOfMessage(0),))
        self.assertEqual(self.replies(b"452 full\r\n"), [("EndOfMessage", 452)])
        self.assertEqual(self.conn.awaiting, ())

    def test_pipelinedTransactions(self) -> None:
        """Replies to two pipelined transactions: each end paired with its own recipients."""
        self.conn.send(E.Hello("client.test", True))
        self.replies(b"250 lmtp.test\r\n")
        self.start("a@x.example", "b@x.example")
        self.conn.sendChunk(b"One\r\n", True)
        self.start("c@x.example")
        self.conn.sendChunk(b"Two\r\n", False)
        self.conn.sendChunk(b"", True)
        got = self.replies(b"250\r\n250\r\n250\r\n250\r\n451\r\n250\r\n250\r\n250\r\n250\r\n")
        self.assertEqual(got, [("MailFrom", 250), ("RcptTo", 250), ("RcptTo", 250),
                               ("Bdat", 250), ("Bdat", 451), ("MailFrom", 250), ("RcptTo", 250),
                               ("Bdat", 250), ("Bdat", 250)])  # fmt: skip
        self.assertEqual(self.conn.awaiting, ())

    def test_noRecipient(self) -> None:
        """No recipient accepted: the end of the data is answered once."""
        self.conn.send(E.Hello("client.test", True))
        self.replies(b"250 lmtp.test\r\n")
        self.start("gone@x.example")
        self.conn.sendChunk(b"x", True)
        got = self.replies(b"250\r\n550\r\n503\r\n")
        self.assertEqual(got[-1], ("Bdat", 503))
        self.assertEqual(self.conn.awaiting, ())

    def test_closing(self) -> None:
        """A 421 among the replies to the end closes the session."""
        self.conn.send(E.Hello("client.test", True))
        self.replies(b"250 lmtp.test\r\n")
        self.start("a@x.example", "b@x.example")
        self.conn.sendChunk(b"x", True)
        got = self.replies(b"250\r\n250\r\n250\r\n250 saved\r\n421 bye\r\n250 late\r\n")
        self.assertEqual(got[-2:], [("Bdat", 250), ("Bdat", 421)])
        self.assertEqual(self.conn.state, "CLOSED")

    def test_smtpUnchanged(self) -> None:
        """An SMTP client reads one reply to the end of the data, however many recipients."""
        conn = ClientConnection()
        conn.receiveData(b"220 mx.test\r\n")
        conn.nextEvent()
        self.assertEqual(conn.send(E.Hello("client.test", True)), b"EHLO client.test\r\n")
        conn.receiveData(b"250 mx.test\r\n")
        conn.nextEvent()
        conn.send(E.MailFrom(parseMailbox("a@b.example")))
        conn.send(E.RcptTo(parseMailbox("a@x.example")))
        conn.send(E.RcptTo(parseMailbox("b@x.example")))
        conn.sendChunk(b"x", True)
        conn.receiveData(b"250\r\n250\r\n250\r\n250 queued\r\n")
        events = [conn.nextEvent() for _ in range(4)]
        self.assertEqual(type(events[-1].command), Bdat)  # type: ignore[union-attr]
        self.assertEqual(conn.awaiting, ())
