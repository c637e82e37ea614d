"""
Tests for L{mailframe.queue.bounce}: delivery status notifications, parsed
back with the standard library's email package, field by field.
"""

from __future__ import annotations

import email
import email.message
import email.policy
from email.utils import parsedate_to_datetime
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from mailframe.queue import bounce
from mailframe.queue.entry import FAILED, PENDING, QueueEntry, RecipientState
from mailframe.reply import Reply

ORIGINAL = (
    b"Received: from client.example ([192.0.2.9])\r\n\tby mx.test (mailframe) id Q1\r\n"
    b"From: Sender <sender@example.org>\r\n"
    b"Subject: the report\r\n"
    b"\r\n" + b"".join(b"line %04d of the body\r\n" % i for i in range(2000))
)
SETTINGS = bounce.ReportSettings("mx.test", bodySize=1024, fullSize=100_000)
NOW = 1_800_000_000.0


def entry(**kwargs: Any) -> QueueEntry:
    recipients = kwargs.pop(
        "recipients",
        [
            RecipientState(
                "gone@example.net",
                {"ORCPT": "rfc822;Gone+40example.net"},
                state=FAILED,
                reply=Reply(550, (5, 1, 1), "User unknown"),
                remote="mx.example.net [192.0.2.7]",
                lastAttempt=NOW - 10,
            )
        ],
    )
    defaults: dict[str, Any] = {
        "id": "Q1",
        "sender": "sender@example.org",
        "recipients": recipients,
        "arrival": NOW - 3600,
        "size": len(ORIGINAL),
        "mailParams": {"ENVID": "QQ314159"},
        "received": {"helo": "client.example", "peer": "192.0.2.9", "protocol": "ESMTP"},
    }
    defaults.update(kwargs)
    return QueueEntry(**defaults)


def parse(data: bytes) -> email.message.Message:
    return email.message_from_bytes(data, policy=email.policy.compat32)


def report(
    e: QueueEntry,
    items: list[bounce.ReportItem] | None = None,
    original: bytes = ORIGINAL,
    settings: bounce.ReportSettings = SETTINGS,
) -> tuple[email.message.Message, bytes, dict[str, str | None]]:
    if items is None:
        items = [bounce.ReportItem(r, bounce.FAILED) for r in e.recipients]
    limit = settings.readLimit(e, any(i.action == bounce.FAILED for i in items))
    data, params = bounce.buildReport(e, items, original[:limit], settings, NOW, "R1")
    return parse(data), data, params


class FailureReportTests(SynchronousTestCase):
    """A report of failed recipients."""

    def test_structure(self) -> None:
        """multipart/report from MAILER-DAEMON to the sender, three parts, CRLF only."""
        msg, data, params = report(entry())
        self.assertEqual(msg.get_content_type(), "multipart/report")
        self.assertEqual(msg.get_param("report-type"), "delivery-status")
        self.assertEqual(msg["From"], "Mail Delivery System <MAILER-DAEMON@mx.test>")
        self.assertEqual(msg["To"], "<sender@example.org>")
        self.assertEqual(msg["Subject"], "Undelivered Mail Returned to Sender")
        self.assertEqual(msg["Auto-Submitted"], "auto-replied")
        self.assertEqual(msg["Message-ID"], "<R1@mx.test>")
        self.assertEqual(parsedate_to_datetime(msg["Date"]).timestamp(), NOW)
        types = [p.get_content_type() for p in msg.get_payload()]  # type: ignore[union-attr]
        self.assertEqual(types, ["text/plain", "message/delivery-status", "message/rfc822"])
        self.assertNotIn(b"\n", data.replace(b"\r\n", b""))
        self.assertEqual(params, {})
        self.assertTrue(msg.defects == [] and all(not p.defects for p in msg.walk()))

    def test_explanation(self) -> None:
        """The text part names the recipient and what the remote server said."""
        msg, _, _ = report(entry())
        text = msg.get_payload()[0].get_payload(decode=True).decode()  # type: ignore[index]
        self.assertIn("This is the mail system at host mx.test.", text)
        self.assertIn("could not be delivered", text)
        self.assertIn(
            "<gone@example.net>: failed: host mx.example.net [192.0.2.7] said: "
            "550 5.1.1 User unknown",
            text,
        )

    def test_statusFields(self) -> None:
        """Every RFC 3464 field, per message and per recipient."""
        e = entry()
        e.recipients.append(
            RecipientState(
                "slow@example.com",
                state=FAILED,
                reply=Reply(451, None, "busy"),
                lastAttempt=NOW - 5,
            )
        )
        msg, _, _ = report(e)
        status = msg.get_payload()[1].get_payload()  # type: ignore[index]
        perMessage, first, second = status
        self.assertEqual(perMessage["Reporting-MTA"], "dns; mx.test")
        self.assertEqual(perMessage["Original-Envelope-Id"], "QQ314159")
        self.assertEqual(perMessage["Received-From-MTA"], "dns; client.example ([192.0.2.9])")
        self.assertEqual(parsedate_to_datetime(perMessage["Arrival-Date"]).timestamp(), NOW - 3600)
        self.assertEqual(first["Final-Recipient"], "rfc822; gone@example.net")
        self.assertEqual(first["Original-Recipient"], "rfc822; Gone@example.net")
        self.assertEqual(first["Action"], "failed")
        self.assertEqual(first["Status"], "5.1.1")
        self.assertEqual(first["Remote-MTA"], "dns; mx.example.net")
        self.assertEqual(first["Diagnostic-Code"], "smtp; 550 5.1.1 User unknown")
        self.assertEqual(parsedate_to_datetime(first["Last-Attempt-Date"]).timestamp(), NOW - 10)
        self.assertEqual(second["Final-Recipient"], "rfc822; slow@example.com")
        self.assertEqual(second["Status"], "4.0.0")
        self.assertIsNone(second["Original-Recipient"])
        self.assertIsNone(second["Remote-MTA"])

    def test_firstPartOfBody(self) -> None:
        """By default: the headers and the first bodySize octets of the body, cut at a line end."""
        msg, _, _ = report(entry())
        returned = msg.get_payload()[2].get_payload()[0]  # type: ignore[index]
        self.assertEqual(returned["Subject"], "the report")
        body = returned.get_payload()
        self.assertTrue(body.startswith("line 0000 of the body\r\n"))
        self.assertLessEqual(len(body.encode()), 1024 + 2)
        self.assertTrue(body.endswith("of the body\r\n"))
        self.assertNotIn("line 1999", body)
        text = msg.get_payload()[0].get_payload()  # type: ignore[index]
        self.assertIn("first", text)

    def test_retFull(self) -> None:
        """RET=FULL returns the whole message when it is at most fullSize."""
        msg, data, _ = report(entry(mailParams={"RET": "FULL"}))
        self.assertIn(ORIGINAL, data)
        self.assertEqual(msg.get_payload()[2].get_content_type(), "message/rfc822")  # type: ignore[index]

    def test_retFullTooLarge(self) -> None:
        """RET=FULL for a message over fullSize falls back to the first part."""
        small = bounce.ReportSettings("mx.test", bodySize=512, fullSize=1000)
        msg, data, _ = report(entry(mailParams={"RET": "FULL"}), settings=small)
        self.assertNotIn(ORIGINAL, data)
        returned = msg.get_payload()[2].get_payload()[0]  # type: ignore[index]
        self.assertLessEqual(len(returned.get_payload()), 512)

    def test_retHeaders(self) -> None:
        """RET=HDRS returns only the header section, as text/rfc822-headers."""
        msg, data, _ = report(entry(mailParams={"RET": "HDRS"}))
        part = msg.get_payload()[2]  # type: ignore[index]
        self.assertEqual(part.get_content_type(), "text/rfc822-headers")
        self.assertIn("Subject: the report", part.get_payload())
        self.assertNotIn(b"of the body", data)

    def test_smallMessageWhole(self) -> None:
        """A message shorter than bodySize comes back whole."""
        small = b"Subject: s\r\n\r\nshort body\r\n"
        msg, data, _ = report(entry(size=len(small)), original=small)
        self.assertIn(small, data)
        self.assertIn("The message is attached.", msg.get_payload()[0].get_payload())  # type: ignore[index]

    def test_eightBit(self) -> None:
        """8-bit text in the returned part: 8bit transfer encoding and BODY=8BITMIME."""
        original = "Subject: café\r\n\r\nnaïve\r\n".encode()
        msg, _, params = report(entry(size=len(original)), original=original)
        self.assertEqual(params, {"BODY": "8BITMIME"})
        self.assertEqual(msg.get_payload()[2]["Content-Transfer-Encoding"], "8bit")  # type: ignore[index]

    def test_internationalised(self) -> None:
        """SMTPUTF8 mail gets RFC 6533 types, utf-8 address types, and SMTPUTF8 to send it."""
        e = entry(
            sender="jörg@bücher.example",
            mailParams={"SMTPUTF8": None},
            recipients=[
                RecipientState(
                    "zoë@example.net", state=FAILED, reply=Reply(550, (5, 1, 1), "unknown")
                )
            ],
        )
        msg, data, params = report(e)
        types = [p.get_content_type() for p in msg.get_payload()]  # type: ignore[union-attr]
        self.assertEqual(types, ["text/plain", "message/global-delivery-status", "message/global"])
        self.assertIn("SMTPUTF8", params)
        self.assertIn("Final-Recipient: utf-8; zoë@example.net\r\n".encode(), data)
        self.assertIn(b"To: <j\xc3\xb6rg@b\xc3\xbccher.example>\r\n", data)

    def test_longDiagnosticFolded(self) -> None:
        """A long Diagnostic-Code is folded, and unfolds to the whole reply."""
        long = "word " * 60
        e = entry(
            recipients=[
                RecipientState(
                    "a@example.net", state=FAILED, reply=Reply(550, (5, 7, 1), long.strip())
                )
            ]
        )
        msg, data, _ = report(e)
        self.assertTrue(all(len(line) <= 998 for line in data.split(b"\r\n")))
        first = msg.get_payload()[1].get_payload()[1]  # type: ignore[index]
        unfolded = " ".join(first["Diagnostic-Code"].split())
        self.assertEqual(unfolded, "smtp; 550 5.7.1 " + long.strip())


class OtherReportTests(SynchronousTestCase):
    """Delay warnings and success notices."""

    def test_delayed(self) -> None:
        """A delay warning: Action delayed, Will-Retry-Until, only the headers returned."""
        r = RecipientState(
            "slow@example.net",
            state=PENDING,
            reply=Reply(451, (4, 4, 1), "later"),
            lastAttempt=NOW,
        )
        e = entry(recipients=[r])
        msg, data, _ = report(e, [bounce.ReportItem(r, bounce.DELAYED, NOW + 86400)])
        self.assertEqual(msg["Subject"], "Delayed Mail (still being retried)")
        fields = msg.get_payload()[1].get_payload()[1]  # type: ignore[index]
        self.assertEqual(fields["Action"], "delayed")
        self.assertEqual(fields["Status"], "4.4.1")
        self.assertEqual(
            parsedate_to_datetime(fields["Will-Retry-Until"]).timestamp(), NOW + 86400
        )
        self.assertEqual(msg.get_payload()[2].get_content_type(), "text/rfc822-headers")  # type: ignore[index]
        self.assertNotIn(b"of the body", data)

    def test_success(self) -> None:
        """Success notices: delivered (local) and relayed, status 2.0.0."""
        a = RecipientState(
            "a@example.com", {"NOTIFY": "SUCCESS"}, state="delivered", reply=Reply(250, None, "ok")
        )
        b = RecipientState(
            "b@example.net",
            {"NOTIFY": "SUCCESS"},
            state="relayed",
            reply=Reply(250, (2, 0, 0), "queued"),
            remote="mx.example.net",
        )
        msg, _, _ = report(
            entry(recipients=[a, b]),
            [bounce.ReportItem(a, bounce.DELIVERED), bounce.ReportItem(b, bounce.RELAYED)],
        )
        self.assertEqual(msg["Subject"], "Successful Mail Delivery Report")
        _, first, second = msg.get_payload()[1].get_payload()  # type: ignore[index,misc]
        self.assertEqual((first["Action"], first["Status"]), ("delivered", "2.0.0"))
        self.assertEqual((second["Action"], second["Status"]), ("relayed", "2.0.0"))
        self.assertEqual(second["Remote-MTA"], "dns; mx.example.net")


class WantsNoticeTests(SynchronousTestCase):
    """NOTIFY decides which reports a recipient gets."""

    def test_default(self) -> None:
        """Without NOTIFY: failures and delays, no success notices."""
        r = RecipientState("a@x.example")
        self.assertTrue(bounce.wantsNotice(r, bounce.FAILED))
        self.assertTrue(bounce.wantsNotice(r, bounce.DELAYED))
        self.assertFalse(bounce.wantsNotice(r, bounce.DELIVERED))

    def test_notify(self) -> None:
        """NOTIFY=NEVER: nothing; NOTIFY=SUCCESS: only successes (delivered or relayed)."""
        never = RecipientState("a@x.example", {"NOTIFY": "NEVER"})
        success = RecipientState("a@x.example", {"NOTIFY": "SUCCESS"})
        for action in (bounce.FAILED, bounce.DELAYED, bounce.DELIVERED):
            self.assertFalse(bounce.wantsNotice(never, action))
        self.assertTrue(bounce.wantsNotice(success, bounce.RELAYED))
        self.assertFalse(bounce.wantsNotice(success, bounce.FAILED))

    def test_statusOf(self) -> None:
        """The enhanced code when the reply has one, else one from the class."""
        self.assertEqual(bounce.statusOf(Reply(550, (5, 2, 2), "full"), bounce.FAILED), "5.2.2")
        self.assertEqual(bounce.statusOf(Reply(554, None, "no"), bounce.FAILED), "5.0.0")
        self.assertEqual(bounce.statusOf(None, bounce.DELIVERED), "2.0.0")
