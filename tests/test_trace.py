"""Tests for L{mailframe.trace}."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mailframe.address import parseMailbox
from mailframe.envelope import Envelope, Recipient, SessionInfo, TLSInfo
from mailframe.trace import protocolName, receivedHeader


def session(**kw: object) -> SessionInfo:
    s = SessionInfo(
        "S1", "192.0.2.1", 4000, "127.0.0.1", 25, "mx.example", heloName="client.example"
    )
    for k, v in kw.items():
        setattr(s, k, v)
    return s


class ProtocolNameTests(SynchronousTestCase):
    def test_names(self) -> None:
        """RFC 3848 and RFC 6531 with-clause keywords."""
        env = Envelope("Q", parseMailbox("a@b.c"))
        utf8 = Envelope("Q", parseMailbox("a@b.c"), {"SMTPUTF8": None})
        tls = TLSInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384")
        self.assertEqual(protocolName(session(), env), "SMTP")
        self.assertEqual(protocolName(session(esmtp=True), env), "ESMTP")
        self.assertEqual(protocolName(session(esmtp=True, tls=tls), env), "ESMTPS")
        self.assertEqual(protocolName(session(esmtp=True, authenticated="joe"), env), "ESMTPA")
        self.assertEqual(
            protocolName(session(esmtp=True, tls=tls, authenticated="joe"), env), "ESMTPSA"
        )
        self.assertEqual(protocolName(session(esmtp=True, tls=tls), utf8), "UTF8SMTPS")
        self.assertEqual(protocolName(session(esmtp=True), env, lmtp=True), "LMTP")


class ReceivedTests(SynchronousTestCase):
    def test_oneRecipient(self) -> None:
        """With one recipient the field names it; the date is RFC 5322 in UTC."""
        env = Envelope(
            "Q42", parseMailbox("a@b.c"), recipients=[Recipient(parseMailbox("u@example.com"))]
        )
        text = receivedHeader(session(esmtp=True), env, 0)
        self.assertEqual(
            text,
            "from client.example ([192.0.2.1])\r\n\tby mx.example (mailframe) with ESMTP id Q42\r\n"
            "\tfor <u@example.com>; Thu, 01 Jan 1970 00:00:00 +0000",
        )

    def test_manyRecipients(self) -> None:
        """With several recipients none is named (privacy)."""
        env = Envelope(
            "Q", parseMailbox("a@b.c"), recipients=[Recipient(parseMailbox("u@x.y"))] * 2
        )
        text = receivedHeader(session(tls=TLSInfo("TLSv1.3", "AES")), env, 0)
        self.assertNotIn("for <", text)
        self.assertIn("(TLSv1.3 AES);", text)

    def test_heloSanitised(self) -> None:
        """Comment-breaking characters in the HELO name are replaced."""
        env = Envelope("Q", parseMailbox("a@b.c"))
        text = receivedHeader(session(heloName="x(y)\\z"), env, 0)
        self.assertTrue(text.startswith("from x_y__z ([192.0.2.1])"))
