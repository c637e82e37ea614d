"""
The protocol rules, seen from a plain socket: BDAT framing, the end of DATA,
line and size limits, recipient and error limits, and pipelined replies.
The client runs in a thread and writes exactly the bytes each test names.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Generator
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from mailframe.protocol import Limits
from tests.interop._support import AcceptLocal, RawClient, inThread, startServer

ENVELOPE = b"MAIL FROM:<sender@example.org>\r\nRCPT TO:<user@example.com>\r\n"
MESSAGE = b"From: sender@example.org\r\nSubject: raw\r\n\r\nHello.\r\n"

# the SMTP smuggling forms: an end of data made with a bare CR or LF
SMUGGLING_ENDINGS = [
    b"\n.\n",
    b"\n.\r\n",
    b"\r\n.\n",
    b"\r.\r\n",
    b"\r\n.\r",
    b"\r.\r",
    b"\n.\r",
]


def codes(replies: list[tuple[int, str]]) -> list[int]:
    return [code for code, _ in replies]


def transaction(client: RawClient, body: bytes = MESSAGE) -> list[tuple[int, str]]:
    """A whole MAIL/RCPT/DATA transaction in one write; its four replies."""
    client.send(ENVELOPE + b"DATA\r\n" + body + b".\r\n")
    return client.replies(4)


class BDATTests(TestCase):
    """CHUNKING (RFC 3030) over a socket."""

    timeout = 60

    @defer.inlineCallbacks
    def test_severalChunks(self) -> Generator[Any, Any, None]:
        """Three BDAT chunks, the last with LAST, split inside a CRLF: delivered concatenated."""
        server = startServer(self)
        chunks = [MESSAGE[:10], MESSAGE[10:] + b"line one\r", b"\nline two\r\nend\r\n"]

        def client() -> list[tuple[int, str]]:
            with RawClient(server) as c:
                self.assertIn("CHUNKING", c.greetAndEhlo())
                c.send(ENVELOPE)
                replies = c.replies(2)
                for i, chunk in enumerate(chunks):
                    last = b" LAST" if i == len(chunks) - 1 else b""
                    c.send(b"BDAT %d%s\r\n" % (len(chunk), last) + chunk)
                    replies += c.replies(1)
                replies.append(c.command(b"QUIT"))
                return replies

        replies = yield inThread(client)
        self.assertEqual(replies[2], (250, f"2.0.0 {len(chunks[0])} octets received"))
        self.assertEqual(replies[3], (250, f"2.0.0 {len(chunks[1])} octets received"))
        self.assertEqual(replies[4][0], 250)
        self.assertTrue(replies[4][1].startswith("2.0.0 OK queued as "), replies)
        self.assertEqual(replies[5][0], 221)
        self.assertEqual(server.bodies(), [b"".join(chunks)])

    @defer.inlineCallbacks
    def test_zeroLast(self) -> Generator[Any, Any, None]:
        """Chunks pipelined in one write, ended by BDAT 0 LAST: one message, every reply in order."""
        server = startServer(self)
        first, second = MESSAGE[:20], MESSAGE[20:]

        def client() -> list[tuple[int, str]]:
            with RawClient(server) as c:
                c.greetAndEhlo()
                c.send(
                    ENVELOPE
                    + b"BDAT %d\r\n" % len(first)
                    + first
                    + b"BDAT %d\r\n" % len(second)
                    + second
                    + b"BDAT 0 LAST\r\nQUIT\r\n"
                )
                replies = c.replies(6)
                assert c.atEOF()
                return replies

        replies = yield inThread(client)
        self.assertEqual(codes(replies), [250, 250, 250, 250, 250, 221])
        self.assertTrue(replies[4][1].startswith("2.0.0 OK queued as "), replies)
        self.assertEqual(server.bodies(), [MESSAGE])

    @defer.inlineCallbacks
    def test_chunkContentIsNeverACommand(self) -> Generator[Any, Any, None]:
        """A chunk holding CRLF.CRLF and MAIL/RCPT/DATA lines is delivered verbatim, never run."""
        validator = AcceptLocal()
        server = startServer(self, [validator])
        chunk = (
            MESSAGE
            + b".\r\n"
            + b"\r\n.\r\n"
            + b"MAIL FROM:<evil@example.org>\r\n"
            + b"RCPT TO:<victim@example.com>\r\n"
            + b"DATA\r\n"
            + b"smuggled\r\n.\r\n"
            + b"QUIT\r\n"
        )

        def client() -> list[tuple[int, str]]:
            with RawClient(server) as c:
                c.greetAndEhlo()
                c.send(ENVELOPE + b"BDAT %d LAST\r\n" % len(chunk) + chunk + b"NOOP\r\n")
                replies = c.replies(4)
                replies.append(c.command(b"QUIT"))
                return replies

        replies = yield inThread(client)
        self.assertEqual(codes(replies), [250, 250, 250, 250, 221])
        self.assertTrue(replies[2][1].startswith("2.0.0 OK queued as "), replies)
        self.assertEqual(server.bodies(), [chunk])
        self.assertEqual(server.recipients(), ["user@example.com"])
        self.assertEqual(validator.seen, ["user@example.com"])


class DataRulesTests(TestCase):
    """The rules the protocol never breaks inside DATA, from a socket."""

    timeout = 60

    @defer.inlineCallbacks
    def test_bareLineEndingSmuggling(self) -> Generator[Any, Any, None]:
        """An end of data made with a bare CR or LF ends nothing: 550 5.5.2 after the real end, no second message."""
        validator = AcceptLocal()
        server = startServer(self, [validator])
        smuggled = (
            b"MAIL FROM:<evil@example.org>\r\n"
            b"RCPT TO:<victim@example.com>\r\n"
            b"DATA\r\n"
            b"Subject: smuggled\r\n\r\nsmuggled\r\n"
        )

        def client() -> list[list[tuple[int, str]]]:
            results = []
            for ending in SMUGGLING_ENDINGS:
                with RawClient(server) as c:
                    c.greetAndEhlo()
                    c.send(
                        ENVELOPE
                        + b"DATA\r\n"
                        + MESSAGE
                        + b"a"
                        + ending
                        + smuggled
                        + b".\r\n"
                        + b"QUIT\r\n"
                    )
                    replies = c.replies(5)
                    assert c.atEOF(), ending
                    results.append(replies)
            return results

        results = yield inThread(client)
        for ending, replies in zip(SMUGGLING_ENDINGS, results, strict=True):
            self.assertEqual(
                replies[2:],
                [
                    (354, "End data with <CR><LF>.<CR><LF>"),
                    (550, "5.5.2 Message contains a bare CR or LF; lines must end with CRLF"),
                    (221, "2.0.0 mx.test closing connection"),
                ],
                ending,
            )
        self.assertEqual(server.messages, [])
        self.assertEqual(validator.seen, ["user@example.com"] * len(SMUGGLING_ENDINGS))

    @defer.inlineCallbacks
    def test_afterBareLineEndingSessionWorks(self) -> Generator[Any, Any, None]:
        """After the 550 5.5.2 the session goes on: the next transaction is delivered as sent."""
        server = startServer(self)

        def client() -> list[tuple[int, str]]:
            with RawClient(server) as c:
                c.greetAndEhlo()
                replies = transaction(c, b"a\n.\nMAIL FROM:<x@example.org>\r\n")
                replies += transaction(c)
                return replies

        replies = yield inThread(client)
        self.assertEqual(codes(replies), [250, 250, 354, 550, 250, 250, 354, 250])
        self.assertEqual(replies[3][1][:6], "5.5.2 ")
        self.assertEqual(server.bodies(), [MESSAGE])

    def overlongLine(self, pieces: int) -> defer.Deferred[None]:
        server = startServer(self)
        line = b"x" * 2000 + b"\r\n"
        inside = b"NOOP\r\nMAIL FROM:<x@example.org>\r\nRCPT TO:<v@example.com>\r\nDATA\r\n"

        def client() -> list[tuple[int, str]]:
            with RawClient(server) as c:
                c.greetAndEhlo()
                c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                c.send(ENVELOPE + b"DATA\r\n" + MESSAGE)
                replies = c.replies(3)
                size = len(line) // pieces + 1
                for i in range(0, len(line), size):
                    c.send(line[i : i + size])
                c.send(inside + b"after\r\n.\r\n")
                replies += c.replies(1)
                replies += transaction(c)
                replies.append(c.command(b"NOOP"))
                return replies

        def check(replies: list[tuple[int, str]]) -> None:
            # had the server left DATA mode, NOOP/MAIL/RCPT/DATA inside the
            # message would have been answered before the 550
            self.assertEqual(codes(replies), [250, 250, 354, 550, 250, 250, 354, 250, 250])
            self.assertEqual(replies[3][1][:6], "5.6.0 ")
            self.assertEqual(server.bodies(), [MESSAGE])

        return inThread(client).addCallback(check)

    def test_overlongDataLine(self) -> defer.Deferred[None]:
        """A 2000-octet line in DATA (one write): one 550 5.6.0 after the final dot, then commands work."""
        return self.overlongLine(1)

    def test_overlongDataLineInPieces(self) -> defer.Deferred[None]:
        """The same with the long line written in 7 pieces: still one 550 5.6.0 after the final dot."""
        return self.overlongLine(7)

    @defer.inlineCallbacks
    def test_longestDataLine(self) -> Generator[Any, Any, None]:
        """A 998-octet line (1000 with CRLF) is delivered; 999 octets are refused 550 5.6.0."""
        server = startServer(self)
        good = MESSAGE + b"y" * 998 + b"\r\n"
        bad = MESSAGE + b"y" * 999 + b"\r\n"

        def client() -> list[tuple[int, str]]:
            with RawClient(server) as c:
                c.greetAndEhlo()
                return transaction(c, good) + transaction(c, bad)

        replies = yield inThread(client)
        self.assertEqual(codes(replies), [250, 250, 354, 250, 250, 250, 354, 550])
        self.assertEqual(replies[7][1][:6], "5.6.0 ")
        self.assertEqual(server.bodies(), [good])

    @defer.inlineCallbacks
    def test_longestDataLineWithLeadingDot(self) -> Generator[Any, Any, None]:
        """A 998-octet line starting with '.' is delivered: the stuffed dot does not count (RFC 5321 4.5.3.1.6)."""
        server = startServer(self)
        body = MESSAGE + b"." + b"y" * 997 + b"\r\n"

        def client() -> list[tuple[int, str]]:
            with RawClient(server) as c:
                c.greetAndEhlo()
                # on the wire the line is 999 octets plus CRLF: ".." + 997
                return transaction(c, MESSAGE + b".." + b"y" * 997 + b"\r\n")

        replies = yield inThread(client)
        self.assertEqual(codes(replies), [250, 250, 354, 250], replies)
        self.assertEqual(server.bodies(), [body])

    @defer.inlineCallbacks
    def test_oversizedMessage(self) -> Generator[Any, Any, None]:
        """A message over the size limit gets 552 5.3.4 after its final dot; lines after the limit are not run."""
        server = startServer(self, limits=Limits(messageSize=2000))
        big = (
            MESSAGE + (b"z" * 98 + b"\r\n") * 30 + b"NOOP\r\nRSET\r\n" + (b"z" * 98 + b"\r\n") * 5
        )

        def client() -> list[tuple[int, str]]:
            with RawClient(server) as c:
                c.greetAndEhlo()
                replies = transaction(c, big)
                replies += transaction(c)
                return replies

        replies = yield inThread(client)
        self.assertEqual(codes(replies), [250, 250, 354, 552, 250, 250, 354, 250])
        self.assertEqual(replies[3][1][:6], "5.3.4 ")
        self.assertEqual(server.bodies(), [MESSAGE])


class CommandRulesTests(TestCase):
    """Command-line limits, recipient and error limits, and pipelining."""

    timeout = 60

    @defer.inlineCallbacks
    def test_overlongCommandLine(self) -> Generator[Any, Any, None]:
        """A 600-octet command line gets 500 5.5.6; the command pipelined after it is answered."""
        server = startServer(self)

        def client() -> list[tuple[int, str]]:
            with RawClient(server) as c:
                c.greetAndEhlo()
                noop = b"NOOP " + b"x" * (600 - 7) + b"\r\n"
                mail = b"MAIL FROM:<" + b"a" * 40 + b"@" + b"b" * (600 - 59) + b".org>\r\n"
                assert len(noop) == 600 and len(mail) == 600, (len(noop), len(mail))
                c.send(noop + b"NOOP\r\n" + mail)
                replies = c.replies(3)
                replies += transaction(c)
                return replies

        replies = yield inThread(client)
        self.assertEqual(replies[0], (500, "5.5.6 Line too long"))
        self.assertEqual(replies[1], (250, "2.0.0 OK"))
        self.assertEqual(replies[2], (500, "5.5.6 Line too long"))
        self.assertEqual(codes(replies[3:]), [250, 250, 354, 250])
        self.assertEqual(server.bodies(), [MESSAGE])

    @defer.inlineCallbacks
    def test_recipientLimit(self) -> Generator[Any, Any, None]:
        """With the default limit, the 1001st RCPT gets 452 4.5.3; the first 1000 get the message."""
        server = startServer(self)
        limit = Limits().recipients
        self.assertEqual(limit, 1000)
        rcpts = [f"u{i}@example.com" for i in range(limit + 1)]

        def client() -> list[tuple[int, str]]:
            with RawClient(server) as c:
                c.greetAndEhlo()
                c.send(
                    b"MAIL FROM:<sender@example.org>\r\n"
                    + b"".join(b"RCPT TO:<%s>\r\n" % r.encode() for r in rcpts)
                    + b"DATA\r\n"
                    + MESSAGE
                    + b".\r\n"
                )
                return c.replies(limit + 4)

        replies = yield inThread(client)
        self.assertEqual(codes(replies[: limit + 1]), [250] * (limit + 1))
        self.assertEqual(replies[limit + 1], (452, "4.5.3 Too many recipients"))
        self.assertEqual(codes(replies[limit + 2 :]), [354, 250])
        self.assertEqual(server.bodies(), [MESSAGE])
        self.assertEqual(server.recipients(), rcpts[:limit])

    @defer.inlineCallbacks
    def test_lowerRecipientLimit(self) -> Generator[Any, Any, None]:
        """Limits(recipients=3): the 4th and 5th RCPT get 452 4.5.3, the first 3 are kept."""
        server = startServer(self, limits=Limits(recipients=3))

        def client() -> list[tuple[int, str]]:
            with RawClient(server) as c:
                c.greetAndEhlo()
                c.send(
                    b"MAIL FROM:<sender@example.org>\r\n"
                    + b"".join(b"RCPT TO:<r%d@example.com>\r\n" % i for i in range(5))
                    + b"DATA\r\n"
                    + MESSAGE
                    + b".\r\n"
                )
                return c.replies(8)

        replies = yield inThread(client)
        self.assertEqual(codes(replies), [250, 250, 250, 250, 452, 452, 354, 250])
        self.assertEqual(
            server.recipients(), ["r0@example.com", "r1@example.com", "r2@example.com"]
        )

    @defer.inlineCallbacks
    def test_tooManyErrors(self) -> Generator[Any, Any, None]:
        """The 20th error (the default) is answered with 421 4.7.0 alone, and the connection closes."""
        server = startServer(self)
        self.assertEqual(server.factory.config.maxErrors, 20)

        def client() -> tuple[list[tuple[int, str]], bool]:
            with RawClient(server) as c:
                c.greetAndEhlo()
                c.send(b"".join(b"BOGUS%d\r\n" % i for i in range(25)) + b"NOOP\r\n")
                replies = c.replies(20)
                return replies, c.atEOF()

        replies, eof = yield inThread(client)
        self.assertEqual(replies[:19], [(500, "5.5.1 Command unrecognized")] * 19)
        self.assertEqual(replies[19], (421, "4.7.0 Too many errors, closing connection"))
        self.assertTrue(eof)

    @defer.inlineCallbacks
    def test_pipelinedGroupOneBurst(self) -> Generator[Any, Any, None]:
        """MAIL/RCPT/RCPT/DATA in one write, 1 s validator: the four replies, in order, in one write."""
        validator = AcceptLocal(delay=1.0)
        server = startServer(self, [validator], recordWrites=True)
        group = (
            b"MAIL FROM:<sender@example.org>\r\n"
            b"RCPT TO:<user@example.com>\r\n"
            b"RCPT TO:<nobody@example.com>\r\n"
            b"DATA\r\n"
        )

        def client() -> tuple[list[tuple[int, str]], int, float, list[tuple[int, str]]]:
            with RawClient(server) as c:
                c.greetAndEhlo()
                reads = len(c.recvSizes)
                start = time.monotonic()
                c.send(group)
                replies = c.replies(4)
                elapsed = time.monotonic() - start
                burst = len(c.recvSizes) - reads
                c.send(MESSAGE + b".\r\nQUIT\r\n")
                return replies, burst, elapsed, c.replies(2)

        replies, burst, elapsed, end = yield inThread(client)
        self.assertEqual(
            replies,
            [
                (250, "2.1.0 Sender OK"),
                (250, "2.1.5 Recipient OK"),
                (550, "5.1.1 No such user here"),
                (354, "End data with <CR><LF>.<CR><LF>"),
            ],
        )
        # How "one burst" is checked.  Authoritative: the server's transport
        # saw exactly one write() holding the four replies (the greeting and
        # the EHLO reply before it; the replies to the pipelined end of data
        # and QUIT after it, themselves one write).
        # Confirmation from the client: one recv() returned all four.  Over
        # loopback one write of this size is one segment, so one recv gets it
        # whole; a server that flushed each reply when it was ready would have
        # sent the 250 to MAIL at once, and the first recv would have returned
        # that alone, about 2 s before the rest.
        (conn,) = server.connections
        groupWrites = [w for w in conn.writes if b"Sender OK" in w]
        self.assertEqual(len(groupWrites), 1)
        self.assertTrue(groupWrites[0].startswith(b"250 2.1.0 Sender OK\r\n"), groupWrites)
        self.assertTrue(groupWrites[0].endswith(b"354 End data with <CR><LF>.<CR><LF>\r\n"))
        self.assertEqual(groupWrites[0].count(b"\r\n"), 4)
        self.assertEqual(len(conn.writes), 4, conn.writes)
        self.assertEqual(burst, 1)
        # the validator answered twice, one after the other; bounded
        self.assertGreaterEqual(elapsed, 2.0)
        self.assertLess(elapsed, 15.0)
        self.assertEqual(codes(end), [250, 221])
        self.assertEqual(server.bodies(), [MESSAGE])
        self.assertEqual(server.recipients(), ["user@example.com"])
