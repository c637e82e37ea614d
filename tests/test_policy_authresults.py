"""
Tests for L{mailframe.policy.authresults}: the Authentication-Results field
(RFC 8601) and its content, forged fields naming us removed, others kept,
the order of filters, and a whole inbound session with spf, dkim-verify,
dmarc and authresults against the in-memory resolver.
"""

from __future__ import annotations

import email
from typing import Any

import authres
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from mailframe.backends.memory import MemoryBackend
from mailframe.config import ServerConfig
from mailframe.interfaces import IMessageFilter
from mailframe.policy._dns import AsyncDNS
from mailframe.policy.authresults import AuthenticationResults, authservID, orderFilters
from mailframe.policy.dkim import DKIMSigner, DKIMVerifier, inlineRunner
from mailframe.policy.dmarc import DMARCCheck
from mailframe.policy.spf import SPFCheck
from mailframe.policy.testing import MemoryResolver, makeEnvelope, makeMessage, makeSession
from mailframe.results import (
    DKIMResult,
    DMARCResult,
    IPRevResult,
    SPFResult,
)
from mailframe.server import SMTPServerFactory
from tests.test_policy_dkim import RSA_PEM, RSA_PUBLIC
from tests.test_server import CountingTransport, Listed, codes

BODY = b"From: alice@example.org\r\nSubject: hi\r\n\r\nhello\r\n"


def field(message: Any) -> str:
    """The value of the first Authentication-Results field, unfolded."""
    parsed = email.message_from_bytes(message.getvalue())
    return " ".join(str(parsed["Authentication-Results"]).split())


class ContentTests(SynchronousTestCase):
    """What the field says."""

    def setUp(self) -> None:
        self.ar = AuthenticationResults("mx.example.com")

    def test_verifyObject(self) -> None:
        """AuthenticationResults provides IMessageFilter."""
        self.assertTrue(verifyObject(IMessageFilter, self.ar))

    def test_none(self) -> None:
        """With no result recorded the field says none."""
        message = makeMessage(BODY)
        self.ar.filterMessage(makeSession(), makeEnvelope(), message)
        self.assertTrue(
            message.getvalue().startswith(b"Authentication-Results: mx.example.com; none\r\n")
        )

    def test_allResults(self) -> None:
        """iprev, auth, spf, dkim (each signature) and dmarc, in that order."""
        session = makeSession(authenticated="alice")
        session.iprev = IPRevResult("pass", "192.0.2.1", ("mail.example.org",))
        envelope = makeEnvelope("a@example.org")
        envelope.spf = SPFResult("pass", "mailfrom", "example.org", "a@example.org")
        envelope.dkim = (
            DKIMResult("pass", "example.org", "s1", "abcdefgh", "rsa-sha256"),
            DKIMResult("fail", "example.net", "s2", "12345678", reason="body hash mismatch"),
        )
        envelope.dmarc = DMARCResult("pass", "example.org", "reject", "none")
        message = makeMessage(BODY)
        self.ar.filterMessage(session, envelope, message)
        value = field(message)
        self.assertEqual(
            value,
            "mx.example.com; iprev=pass policy.iprev=192.0.2.1 (mail.example.org); "
            "auth=pass smtp.auth=alice; spf=pass smtp.mailfrom=a@example.org; "
            "dkim=pass header.d=example.org header.s=s1 header.b=abcdefgh; "
            'dkim=fail reason="body hash mismatch" header.d=example.net header.s=s2 '
            "header.b=12345678; dmarc=pass header.from=example.org policy.dmarc=none",
        )
        parsed = authres.AuthenticationResultsHeader.parse_value(value)
        self.assertEqual(parsed.authserv_id, "mx.example.com")
        self.assertEqual(
            [r.method for r in parsed.results], ["iprev", "auth", "spf", "dkim", "dkim", "dmarc"]
        )

    def test_foldedPerClause(self) -> None:
        """Each clause starts a new folded line, so the field stays short."""
        envelope = makeEnvelope()
        envelope.spf = SPFResult("fail", "helo", "h.example", "h.example")
        envelope.dkim = ()
        message = makeMessage(BODY)
        self.ar.filterMessage(makeSession(), envelope, message)
        head = message.getvalue().split(b"\r\nFrom:")[0]
        self.assertEqual(
            head,
            b"Authentication-Results: mx.example.com;\r\n\tspf=fail smtp.helo=h.example;\r\n\tdkim=none",
        )

    def test_dmarcFailComment(self) -> None:
        """A DMARC failure names the policy and the disposition."""
        envelope = makeEnvelope()
        envelope.dmarc = DMARCResult("fail", "example.org", "quarantine", "quarantine")
        self.assertIn(
            "dmarc=fail (p=quarantine dis=quarantine) header.from=example.org",
            " ".join(self.ar.value(makeSession(), envelope).split()),
        )

    def test_hostileValuesQuoted(self) -> None:
        """Values from the network cannot break the field's syntax."""
        envelope = makeEnvelope()
        envelope.dkim = (DKIMResult("fail", 'evil"; spf=pass', "s", reason='x"(y'),)
        value = self.ar.value(makeSession(), envelope)
        parsed = authres.AuthenticationResultsHeader.parse_value(" ".join(value.split()))
        self.assertEqual([r.method for r in parsed.results], ["dkim"])

    def test_authservIDDefaultsToHostname(self) -> None:
        """Without an id the server's host name is the authserv-id."""
        config = ServerConfig(hostname="MX.Example.COM")
        self.assertEqual(AuthenticationResults(config=config).authservID, "mx.example.com")
        self.assertRaises(ValueError, AuthenticationResults, "two words")
        self.assertRaises(ValueError, AuthenticationResults)


class ForgedTests(SynchronousTestCase):
    """Received fields that claim our authserv-id go; others stay."""

    def test_removed(self) -> None:
        """Fields naming us (any case, comments, unparsable) are removed."""
        data = (
            b"Authentication-Results: mx.example.com; spf=pass smtp.mailfrom=x@example.org\r\n"
            b"Authentication-Results: (forged) MX.EXAMPLE.COM 1; dkim=pass\r\n"
            b"Authentication-Results: mx.example.com; this does not parse ===\r\n"
            b"Authentication-Results: other.example; spf=fail smtp.mailfrom=x@example.org\r\n"
            b"Authentication-Results: mx.example.com.evil; dkim=pass\r\n" + BODY
        )
        message = makeMessage(data)
        AuthenticationResults("mx.example.com").filterMessage(
            makeSession(), makeEnvelope(), message
        )
        lines = message.getvalue().split(b"\r\n")
        fields = [line for line in lines if line.startswith(b"Authentication-Results")]
        self.assertEqual(
            fields,
            [
                b"Authentication-Results: mx.example.com; none",
                b"Authentication-Results: other.example; spf=fail smtp.mailfrom=x@example.org",
                b"Authentication-Results: mx.example.com.evil; dkim=pass",
            ],
        )

    def test_authservID(self) -> None:
        """The authserv-id is read with authres, or by hand when it cannot parse."""
        self.assertEqual(authservID("mx.example.com; none"), "mx.example.com")
        self.assertEqual(
            authservID("(c) Mx.Example.Com 1; spf=pass smtp.mailfrom=a"), "mx.example.com"
        )
        self.assertEqual(authservID("(a (nested) comment) mx.example.com; ???"), "mx.example.com")
        self.assertIsNone(authservID("   "))


class OrderTests(SynchronousTestCase):
    """orderFilters: authresults after the checks, dkim-sign last."""

    def test_order(self) -> None:
        """Given in any order, the checks keep theirs; authresults then signers follow."""
        dns = AsyncDNS(MemoryResolver(), Clock())
        ar = AuthenticationResults("mx.example.com")
        signer = DKIMSigner("example.org", "s", RSA_PEM, runner=inlineRunner)
        dmarc = DMARCCheck(dns, runner=inlineRunner)
        verifier = DKIMVerifier(dns, inlineRunner)
        self.assertEqual(
            orderFilters([signer, ar, dmarc, verifier]), [dmarc, verifier, ar, signer]
        )


class InboundSessionTests(SynchronousTestCase):
    """A whole inbound message through spf, dkim-verify, dmarc and authresults."""

    def test_authenticationResults(self) -> None:
        """Inbound mail carries spf, dkim and dmarc results; the forged field is gone."""
        import dkim

        clock = Clock()
        resolver = MemoryResolver(
            {
                ("example.org", "TXT"): ["v=spf1 ip4:192.168.1.0/24 -all"],
                ("_dmarc.example.org", "TXT"): ["v=DMARC1; p=reject"],
                ("s1._domainkey.example.org", "TXT"): [f"v=DKIM1; k=rsa; p={RSA_PUBLIC}"],
            }
        )
        dns = AsyncDNS(resolver, clock)
        config = ServerConfig(hostname="mx.example.com", localDomains=frozenset({"example.com"}))
        factory = SMTPServerFactory(
            config,
            MemoryBackend(),
            [Listed("bob")],
            senderValidators=[SPFCheck(dns, config)],
            messageFilters=orderFilters(
                [
                    AuthenticationResults(config=config),
                    DKIMVerifier(dns, inlineRunner, config),
                    DMARCCheck(dns, config, inlineRunner),
                ]
            ),
            clock=clock,
        )
        content = (
            b"From: Alice <alice@example.org>\r\nTo: bob@example.com\r\nSubject: hi\r\n\r\nhi\r\n"
        )
        signed = dkim.sign(content, b"s1", b"example.org", RSA_PEM) + content
        forged = (
            b"Authentication-Results: mx.example.com; dmarc=pass header.from=paypal.example\r\n"
        )
        proto = factory.buildProtocol(None)
        transport = CountingTransport()
        proto.makeConnection(transport)
        transport.clear()
        proto.dataReceived(
            b"EHLO client.example.org\r\nMAIL FROM:<alice@example.org>\r\n"
            b"RCPT TO:<bob@example.com>\r\nDATA\r\n"
        )
        proto.dataReceived(forged + signed + b".\r\n")
        self.assertEqual(codes(transport.value())[-1], "250 2.0.0")
        [stored] = factory.backend.messages
        delivered = stored.data
        value = " ".join(
            str(email.message_from_bytes(delivered)["Authentication-Results"]).split()
        )
        self.assertIn("spf=pass smtp.mailfrom=alice@example.org", value)
        self.assertIn("dkim=pass header.d=example.org header.s=s1", value)
        self.assertIn("dmarc=pass header.from=example.org", value)
        self.assertNotIn(b"paypal", delivered)
