"""
Interop with the standard library's smtplib: a real client over 127.0.0.1,
run in a thread, against a mailframe server in the trial reactor.
"""

from __future__ import annotations

import io
import smtplib
from collections.abc import Generator
from email.generator import BytesGenerator
from email.message import EmailMessage
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from mailframe.address import Address, Domain
from mailframe.protocol import Limits
from tests.interop._support import (
    CLIENT_TIMEOUT,
    HOST,
    RunningServer,
    inThread,
    splitReceived,
    startServer,
)

SENDER = "sender@example.org"
BODY = (
    b"From: Sender <sender@example.org>\r\n"
    b"To: user@example.com\r\n"
    b"Subject: smtplib interop\r\n"
    b"\r\n"
    b"Hello.\r\n"
    b".a line that starts with a dot\r\n"
    b".\r\n"
    b"..\r\n"
    b"\r\n"
    b"end\r\n"
)


def connect(server: RunningServer) -> smtplib.SMTP:
    return smtplib.SMTP(
        HOST, server.portNumber, local_hostname="client.test", timeout=CLIENT_TIMEOUT
    )


class SMTPLibTests(TestCase):
    """smtplib.SMTP against mailframe."""

    timeout = 60

    @defer.inlineCallbacks
    def test_ehloFeatures(self) -> Generator[Any, Any, None]:
        """EHLO: smtplib sees exactly the extensions the server advertises, with SIZE's limit."""
        server = startServer(self, limits=Limits(messageSize=123456))

        def client() -> tuple[int, bytes, dict[str, str], bool]:
            with connect(server) as s:
                code, text = s.ehlo()
                return code, text, dict(s.esmtp_features), s.does_esmtp

        code, text, features, esmtp = yield inThread(client)
        self.assertEqual(code, 250)
        self.assertTrue(esmtp)
        self.assertEqual(text.split(b"\n")[0], b"mx.test greets client.test")
        expected = {e.keyword.lower(): "" for e in server.factory.extensions}
        expected["size"] = "123456"
        self.assertEqual(features, expected)
        for keyword in ("pipelining", "8bitmime", "enhancedstatuscodes", "smtputf8", "chunking"):
            self.assertIn(keyword, features)

    @defer.inlineCallbacks
    def test_sendMessage(self) -> Generator[Any, Any, None]:
        """send_message of a plain EmailMessage delivers the flattened bytes, dots unstuffed."""
        server = startServer(self)
        msg = EmailMessage()
        msg["From"] = "Sender <sender@example.org>"
        msg["To"] = "User <user@example.com>"
        msg["Subject"] = "plain message"
        msg.set_content("Hello.\n.leading dot\n.\n..\n\nend\n")
        # what smtplib.send_message writes (before dot-stuffing): the message
        # flattened by BytesGenerator with CRLF line endings
        out = io.BytesIO()
        BytesGenerator(out).flatten(msg, linesep="\r\n")
        expected = out.getvalue()
        self.assertIn(b"\r\n.leading dot\r\n.\r\n..\r\n", expected)

        def client() -> dict[str, Any]:
            with connect(server) as s:
                return s.send_message(msg)

        refused = yield inThread(client)
        self.assertEqual(refused, {})
        self.assertEqual(server.bodies(), [expected])
        self.assertEqual(server.recipients(), ["user@example.com"])
        self.assertEqual(
            server.messages[0].envelope.mailFrom, Address("sender", Domain("example.org"))
        )
        received, _ = splitReceived(server.messages[0].data)
        self.assertIn(b"by mx.test (mailframe) with ESMTP", received)
        self.assertIn(b"from client.test ([127.0.0.1])", received)

    @defer.inlineCallbacks
    def test_sendmailSeveralRecipientsOneRefused(self) -> Generator[Any, Any, None]:
        """sendmail to three recipients, one unknown: the refused dict names it with 550 5.1.1."""
        server = startServer(self)
        rcpts = ["a@example.com", "nobody@example.com", "b@EXAMPLE.com"]

        def client() -> dict[str, tuple[int, bytes]]:
            with connect(server) as s:
                return s.sendmail(SENDER, rcpts, BODY)

        refused = yield inThread(client)
        self.assertEqual(refused, {"nobody@example.com": (550, b"5.1.1 No such user here")})
        self.assertEqual(server.bodies(), [BODY])
        self.assertEqual(server.recipients(), ["a@example.com", "b@EXAMPLE.com"])

    @defer.inlineCallbacks
    def test_smtputf8(self) -> Generator[Any, Any, None]:
        """With mail_options=["SMTPUTF8"], UTF-8 recipients (local part and IDN domain) are delivered."""
        server = startServer(self, localDomains=("example.com", "bücher.example"))
        rcpts = ["用户@example.com", "δοκιμή@bücher.example"]
        body = "Subject: ünïcödé\r\nTo: 用户@example.com\r\n\r\nGrüße\r\n".encode()

        def client() -> dict[str, Any]:
            with connect(server) as s:
                return s.sendmail(
                    "отправитель@example.org", rcpts, body, mail_options=["SMTPUTF8"]
                )

        refused = yield inThread(client)
        self.assertEqual(refused, {})
        self.assertEqual(server.bodies(), [body])
        envelope = server.messages[0].envelope
        self.assertEqual(
            [r.address for r in envelope.recipients],
            [Address("用户", Domain("example.com")), Address("δοκιμή", Domain("bücher.example"))],
        )
        self.assertEqual(envelope.mailFrom, Address("отправитель", Domain("example.org")))
        self.assertTrue(envelope.smtputf8)
        received, _ = splitReceived(server.messages[0].data)
        self.assertIn(b"with UTF8SMTP", received)

    @defer.inlineCallbacks
    def test_utf8WithoutSMTPUTF8(self) -> Generator[Any, Any, None]:
        """A UTF-8 recipient (or sender) without the SMTPUTF8 parameter is refused 553 5.6.7."""
        server = startServer(self)

        def client() -> tuple[Any, Any]:
            with connect(server) as s:
                s.ehlo()
                s.command_encoding = "utf-8"  # smtplib sends UTF-8 only with SMTPUTF8
                with self.assertRaises(smtplib.SMTPRecipientsRefused) as rcpt:
                    s.sendmail(SENDER, ["用户@example.com"], BODY)
                s.rset()  # smtplib's rset() goes back to ASCII commands
                s.command_encoding = "utf-8"
                with self.assertRaises(smtplib.SMTPSenderRefused) as mail:
                    s.sendmail("отправитель@example.org", ["user@example.com"], BODY)
                return rcpt.exception.recipients, (
                    mail.exception.smtp_code,
                    mail.exception.smtp_error,
                )

        recipients, mail = yield inThread(client)
        self.assertEqual(list(recipients), ["用户@example.com"])
        code, text = recipients["用户@example.com"]
        self.assertEqual(code, 553)
        self.assertTrue(text.startswith(b"5.6.7 "), text)
        self.assertEqual(mail[0], 553)
        self.assertTrue(mail[1].startswith(b"5.6.7 "), mail)
        self.assertEqual(server.messages, [])

    @defer.inlineCallbacks
    def test_heloFallback(self) -> Generator[Any, Any, None]:
        """After HELO (no EHLO) mail is accepted, replies carry no enhanced codes, trace says SMTP."""
        server = startServer(self)

        def client() -> list[tuple[int, bytes]]:
            with connect(server) as s:
                replies = [s.helo("client.test")]
                replies.append(s.mail(SENDER))
                replies.append(s.rcpt("user@example.com"))
                replies.append(s.data(BODY))
                refused = s.sendmail(SENDER, ["other@example.com"], BODY)
                assert refused == {}, refused
                assert not s.does_esmtp
                return replies

        replies = yield inThread(client)
        self.assertEqual(replies[0], (250, b"mx.test"))
        self.assertEqual(replies[1], (250, b"Sender OK"))
        self.assertEqual(replies[2], (250, b"Recipient OK"))
        self.assertEqual(replies[3][0], 250)
        self.assertTrue(replies[3][1].startswith(b"OK queued as "), replies[3])
        self.assertEqual(server.bodies(), [BODY, BODY])
        self.assertEqual(server.recipients(1), ["other@example.com"])
        received, _ = splitReceived(server.messages[0].data)
        self.assertIn(b"with SMTP id", received)

    @defer.inlineCallbacks
    def test_vrfy(self) -> Generator[Any, Any, None]:
        """VRFY with no address verifier configured answers 252 2.5.0."""
        server = startServer(self)

        def client() -> tuple[int, bytes]:
            with connect(server) as s:
                s.ehlo()
                return s.verify("user@example.com")

        code, text = yield inThread(client)
        self.assertEqual(code, 252)
        self.assertTrue(text.startswith(b"2.5.0 Cannot VRFY"), text)

    @defer.inlineCallbacks
    def test_oversizedAfterData(self) -> Generator[Any, Any, None]:
        """A message over the size limit, without SIZE=, is refused 552 5.3.4 after its final dot."""
        server = startServer(self, limits=Limits(messageSize=1000))
        big = BODY + (b"y" * 76 + b"\r\n") * 40

        def client() -> list[tuple[int, bytes]]:
            with connect(server) as s:
                s.ehlo()
                replies = [s.mail(SENDER), s.rcpt("user@example.com"), s.data(big)]
                # the session is still in step: the next command gets its own reply
                replies.append(s.noop())
                refused = s.sendmail(SENDER, ["user@example.com"], BODY)
                assert refused == {}, refused
                return replies

        replies = yield inThread(client)
        self.assertEqual([r[0] for r in replies[:2]], [250, 250])
        self.assertEqual(replies[2][0], 552)
        self.assertTrue(replies[2][1].startswith(b"5.3.4 "), replies[2])
        self.assertEqual(replies[3][0], 250)
        self.assertEqual(server.bodies(), [BODY])

    @defer.inlineCallbacks
    def test_declaredSizeOverLimit(self) -> Generator[Any, Any, None]:
        """sendmail declares SIZE=; over the limit it is refused 552 at MAIL, at the limit accepted."""
        server = startServer(self, limits=Limits(messageSize=1000))
        exact = BODY + b"z" * (1000 - len(BODY) - 2) + b"\r\n"
        self.assertEqual(len(exact), 1000)

        def client() -> tuple[int, bytes, dict[str, Any]]:
            with connect(server) as s:
                with self.assertRaises(smtplib.SMTPSenderRefused) as e:
                    s.sendmail(SENDER, ["user@example.com"], exact + b"!\r\n")
                s.rset()
                refused = s.sendmail(SENDER, ["user@example.com"], exact)
                return e.exception.smtp_code, e.exception.smtp_error, refused

        code, text, refused = yield inThread(client)
        self.assertEqual(code, 552)
        self.assertTrue(text.startswith(b"5.3.4 "), text)
        self.assertEqual(refused, {})
        self.assertEqual(server.bodies(), [exact])
        self.assertEqual(server.messages[0].envelope.declaredSize, 1000)
