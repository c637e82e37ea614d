"""
Interop with swaks (the Swiss Army Knife for SMTP, a Perl client) run as a
child process against a mailframe server in the trial reactor.
"""

from __future__ import annotations

import os
import time
from collections.abc import Generator
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from tests.interop._support import SWAKS, AcceptLocal, RunningServer, runSwaks, startServer

SENDER = "sender@example.org"
# a message with the lines dot-stuffing must get right; no final newline:
# swaks adds the CRLF before its final dot
DATA = (
    b"From: sender@example.org\r\n"
    b"To: user@example.com\r\n"
    b"Subject: swaks interop\r\n"
    b"\r\n"
    b".one leading dot\r\n"
    b"..two leading dots\r\n"
    b".\r\n"
    b"\r\n"
    b"MAIL FROM:<not-a-command@example.org>\r\n"
    b"last line"
)
DELIVERED = DATA + b"\r\n"


def sentData(transcript: str) -> bytes:
    """
    The message data swaks says it sent (its ' -> ' lines after the 354 up to
    the final dot), dot-unstuffed and with CRLF line endings: what the server
    must deliver.
    """
    lines = transcript.replace("\r\n", "\n").split("\n")
    start = next(i for i, line in enumerate(lines) if line.startswith("<-  354"))
    out = []
    for line in lines[start + 1 :]:
        if not line.startswith(" -> "):
            continue
        text = line[4:]
        if text == ".":
            break
        out.append(text[1:] if text.startswith(".") else text)
    return "".join(f"{line}\r\n" for line in out).encode("utf-8")


def serverReplies(transcript: str) -> list[str]:
    """The replies swaks printed ('<-  ' and '<** ' lines), in order."""
    lines = transcript.replace("\r\n", "\n").split("\n")
    return [line[4:] for line in lines if line[:4] in ("<-  ", "<** ")]


class SwaksTests(TestCase):
    """swaks against mailframe."""

    timeout = 60
    # CI sets MAILFRAME_REQUIRE_INTEROP=1 so that a missing swaks fails loudly
    if not os.path.exists(SWAKS) and not os.environ.get("MAILFRAME_REQUIRE_INTEROP"):
        skip = "swaks is not installed (Debian package swaks)"

    def swaks(self, server: RunningServer, *args: str) -> defer.Deferred[tuple[bytes, bytes, int]]:
        home = self.mktemp()
        os.makedirs(home)
        return runSwaks(server, "--from", SENDER, "--helo", "client.test", *args, home=home)

    def dataFile(self) -> str:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(DATA)
        return path

    @defer.inlineCallbacks
    def test_plain(self) -> Generator[Any, Any, None]:
        """swaks --to user@example.com with its default message: delivered as swaks sent it."""
        server = startServer(self)
        out, err, code = yield self.swaks(server, "--to", "user@example.com")
        transcript = out.decode("utf-8")
        self.assertEqual(code, 0, (transcript, err))
        self.assertIn("250 2.0.0 OK queued as ", transcript)
        self.assertEqual(server.recipients(), ["user@example.com"])
        body = server.bodies()[0]
        self.assertEqual(body, sentData(transcript))
        self.assertIn(b"\r\nSubject: test ", body)
        self.assertIn(b"\r\n\r\nThis is a test mailing\r\n", body)
        self.assertEqual(len(server.messages), 1)

    @defer.inlineCallbacks
    def test_pipeline(self) -> Generator[Any, Any, None]:
        """swaks --pipeline with a message full of dot lines: delivered byte for byte."""
        server = startServer(self)
        out, err, code = yield self.swaks(
            server, "--to", "user@example.com", "--pipeline", "--data", "@" + self.dataFile()
        )
        transcript = out.decode("utf-8")
        self.assertEqual(code, 0, (transcript, err))
        self.assertIn("250-PIPELINING", transcript)
        self.assertEqual(server.bodies(), [DELIVERED])
        self.assertEqual(sentData(transcript), DELIVERED)
        self.assertEqual(server.recipients(), ["user@example.com"])

    @defer.inlineCallbacks
    def test_relayDenied(self) -> Generator[Any, Any, None]:
        """A recipient outside the local domains gets 550 5.7.1 and nothing is delivered."""
        validator = AcceptLocal()
        server = startServer(self, [validator])
        out, _err, code = yield self.swaks(server, "--to", "user@example.net")
        transcript = out.decode("utf-8")
        self.assertNotEqual(code, 0, transcript)
        self.assertIn("<** 550 5.7.1 Relaying denied", transcript)
        self.assertEqual(server.messages, [])
        self.assertEqual(validator.seen, [])  # relaying is refused before any validator

    @defer.inlineCallbacks
    def test_pipelineSlowValidator(self) -> Generator[Any, Any, None]:
        """With a validator answering after 1 s, swaks --pipeline gets ordered replies and delivers."""
        validator = AcceptLocal(delay=1.0)
        server = startServer(self, [validator])
        start = time.monotonic()
        out, err, code = yield self.swaks(
            server,
            "--to",
            "user@example.com,nobody@example.com,second@example.com",
            "--pipeline",
            "--data",
            "@" + self.dataFile(),
        )
        elapsed = time.monotonic() - start
        transcript = out.decode("utf-8")
        self.assertEqual(code, 0, (transcript, err))
        replies = serverReplies(transcript)
        data = replies.index("354 End data with <CR><LF>.<CR><LF>")
        self.assertEqual(
            replies[data - 4 : data],
            [
                "250 2.1.0 Sender OK",
                "250 2.1.5 Recipient OK",
                "550 5.1.1 No such user here",
                "250 2.1.5 Recipient OK",
            ],
        )
        self.assertTrue(replies[data + 1].startswith("250 2.0.0 OK queued as "), replies)
        self.assertEqual(server.bodies(), [DELIVERED])
        self.assertEqual(server.recipients(), ["user@example.com", "second@example.com"])
        self.assertEqual(
            validator.seen, ["user@example.com", "nobody@example.com", "second@example.com"]
        )
        # one validation at a time: three seconds at least, and bounded
        self.assertGreaterEqual(elapsed, 3.0)
        self.assertLess(elapsed, 20.0)
