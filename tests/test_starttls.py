"""
Tests for L{mailframe.extensions.starttls} in a real server session, in
memory: what is offered when, what is forgotten at the handshake, and the
refusals (454, 503).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import ISSLTransport
from zope.interface import alsoProvides

from mailframe.extensions.starttls import StartTLS
from tests.test_auth import CONTEXT, PEER, AuthTestCase, TLSTransport, codes, plain


class BrokenContext:
    """A context factory whose certificates cannot be loaded (any more)."""

    def getContext(self) -> Any:
        raise ValueError("cannot read /etc/ssl/mx.pem")


class StartTLSTests(AuthTestCase):
    def test_startTLS(self) -> None:
        """220, then TLS starts with the context; bytes pipelined after STARTTLS are dropped."""
        proto, t = self.connect()
        self.talk(proto, t, b"EHLO c\r\nMAIL FROM:<a@b.example>\r\n")
        out = self.talk(proto, t, b"STARTTLS\r\nRSET\r\nRCPT TO:<u@example.com>\r\n")
        self.assertEqual(out, b"220 2.0.0 Ready to start TLS\r\n")
        self.assertIs(t.tlsContext, CONTEXT)
        proto.handshakeCompleted()
        self.assertEqual(t.value(), b"220 2.0.0 Ready to start TLS\r\n")  # nothing more
        self.assertIsNone(proto.session.heloName)
        self.assertIsNone(proto.commands.envelope)
        self.assertEqual(proto.session.tls.version, "TLSv1.3")  # type: ignore[union-attr]

    def test_stateForgotten(self) -> None:
        """After the handshake RCPT without a new EHLO and MAIL is 503; EHLO again works."""
        proto, t = self.connect()
        self.talk(proto, t, b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nSTARTTLS\r\n")
        proto.handshakeCompleted()
        out = self.talk(proto, t, b"RCPT TO:<u@example.com>\r\nMAIL FROM:<a@b.example>\r\n")
        self.assertEqual([c[:3] for c in codes(out)], ["503", "503"])
        out = self.talk(proto, t, b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<u@example.com>\r\nDATA\r\nx\r\n.\r\n")  # fmt: skip
        self.assertEqual(codes(out)[-4:], ["250 2.1.0", "250 2.1.5", "354", "250 2.0.0"])
        received = self.backend.messages[0].data
        self.assertIn(b"with ESMTPS id", received)
        self.assertIn(b"(TLSv1.3 TLS_AES_256_GCM_SHA384)", received)

    def test_secondStartTLS(self) -> None:
        """STARTTLS is not offered inside TLS, and a second one is 503 5.5.1."""
        proto, t = self.connect()
        self.talk(proto, t, b"EHLO c\r\nSTARTTLS\r\n")
        proto.handshakeCompleted()
        t.tlsContext = None
        out = self.talk(proto, t, b"EHLO c\r\nSTARTTLS\r\n")
        ehlo, _refusal = out.split(b"503")
        self.assertNotIn(b"STARTTLS", ehlo)
        self.assertEqual(codes(out)[-1], "503 5.5.1")
        self.assertIsNone(t.tlsContext)

    def test_noContext(self) -> None:
        """Without a context STARTTLS is not offered (500 5.5.1); reached anyway it is 454."""
        proto, t = self.connect(self.factory(tls=None))
        out = self.talk(proto, t, b"EHLO c\r\nSTARTTLS\r\n")
        self.assertNotIn(b"STARTTLS\r\n", out.split(b"\r\n500")[0])
        self.assertEqual(codes(out)[-1], "500 5.5.1")
        reply = StartTLS(None).handleCommand(proto.commands.control, "STARTTLS", "")
        self.assertEqual((reply.code, reply.enhanced), (454, (4, 7, 0)))

    def test_contextFails(self) -> None:
        """Certificates that cannot be loaded give 454 4.7.0 and the session goes on in clear."""
        proto, t = self.connect(self.factory(tls=BrokenContext()))
        out = self.talk(proto, t, b"EHLO c\r\nSTARTTLS\r\nNOOP\r\n")
        self.assertEqual(codes(out)[-2:], ["454 4.7.0", "250 2.0.0"])
        self.assertIsNone(t.tlsContext)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_afterAuth(self) -> None:
        """STARTTLS after a plaintext AUTH is refused: 503 5.5.1."""
        proto, t = self.connect(self.factory(allowPlaintext=True))
        self.talk(proto, t, b"EHLO c\r\nAUTH PLAIN " + plain("alice", "secret") + b"\r\n")
        out = self.talk(proto, t, b"STARTTLS\r\nNOOP\r\n")
        self.assertEqual(codes(out), ["503 5.5.1", "250 2.0.0"])
        self.assertIsNone(t.tlsContext)

    def test_implicitTLS(self) -> None:
        """On a TLS transport (port 465 style) STARTTLS is not offered and AUTH is."""
        factory = self.factory()
        proto = factory.buildProtocol(None)
        t = TLSTransport(peerAddress=IPv4Address("TCP", PEER, 1))
        alsoProvides(t, ISSLTransport)
        proto.makeConnection(t)
        proto.handshakeCompleted()
        out = self.talk(proto, t, b"EHLO c\r\nSTARTTLS\r\n")
        self.assertNotIn(b"STARTTLS\r\n", out.split(b"503")[0])
        self.assertIn(b"AUTH SCRAM-SHA-256", out)
        self.assertEqual(codes(out)[-1], "503 5.5.1")
