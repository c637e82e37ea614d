"""
Tests for L{mailframe.policy.spf}: SPF evaluated by pyspf over records the
in-memory resolver serves, every result and the policy per result, and
the check in a server session.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from mailframe.backends.memory import MemoryBackend
from mailframe.config import ServerConfig
from mailframe.interfaces import ISenderValidator
from mailframe.policy._dns import AsyncDNS
from mailframe.policy.spf import MAX_PASSES, SPFCheck, checkSPF, spfReply
from mailframe.policy.testing import (
    NEVER,
    SERVFAIL,
    MemoryResolver,
    makeEnvelope,
    makeSession,
)
from mailframe.reply import SMTPError
from mailframe.results import SPFResult
from mailframe.server import SMTPServerFactory
from tests.test_server import CountingTransport, Listed, codes

RECORDS: dict[Any, Any] = {
    ("pass.example", "TXT"): ["v=spf1 ip4:192.0.2.0/24 -all", "unrelated text"],
    ("fail.example", "TXT"): ["v=spf1 ip4:198.51.100.0/24 -all"],
    ("soft.example", "TXT"): ["v=spf1 ip4:198.51.100.0/24 ~all"],
    ("neutral.example", "TXT"): ["v=spf1 ?all"],
    ("none.example", "A"): ["192.0.2.99"],
    ("perm.example", "TXT"): ["v=spf1 bogus:mechanism -all"],
    ("twice.example", "TXT"): ["v=spf1 -all", "v=spf1 +all"],
    ("temp.example", "TXT"): ["v=spf1 include:broken.example -all"],
    "broken.example": SERVFAIL,
    "slow.example": NEVER,
    ("inc.example", "TXT"): ["v=spf1 include:pass.example mx a:host.inc.example -all"],
    ("inc.example", "MX"): [(10, "mx.inc.example")],
    ("mx.inc.example", "A"): ["203.0.113.7"],
    ("host.inc.example", "A"): ["203.0.113.9"],
    ("exp.example", "TXT"): ["v=spf1 -all exp=why.exp.example"],
    ("why.exp.example", "TXT"): ["%{i} may not send for %{d}"],
    ("redirect.example", "TXT"): ["v=spf1 redirect=pass.example"],
    ("helo.example.net", "TXT"): ["v=spf1 a -all"],
    ("helo.example.net", "A"): ["192.0.2.1"],
    ("alias.example", "CNAME"): ["pass.example"],
    ("ptr.example", "TXT"): ["v=spf1 ptr -all"],
    ("lan.example", "TXT"): ["v=spf1 ip4:192.168.1.0/24 -all"],
    ("1.2.0.192.in-addr.arpa", "PTR"): ["host.ptr.example"],
    ("host.ptr.example", "A"): ["192.0.2.1"],
}


class EvaluationTests(SynchronousTestCase):
    """checkSPF: every RFC 7208 result from records in memory."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.resolver = MemoryResolver(RECORDS)
        self.dns = AsyncDNS(self.resolver, self.clock, timeout=5)

    def check(self, ip: str, sender: str, helo: str = "client.example.org") -> tuple[str, str]:
        d = checkSPF(self.dns, ip, sender, helo, "mx.example.com")
        self.clock.advance(6)  # lets a lookup that never answers time out
        return self.successResultOf(d)

    def test_pass(self) -> None:
        """An address in an ip4: range passes."""
        self.assertEqual(self.check("192.0.2.1", "a@pass.example")[0], "pass")

    def test_fail(self) -> None:
        """-all fails a client outside the record."""
        self.assertEqual(self.check("192.0.2.1", "a@fail.example")[0], "fail")

    def test_softfail(self) -> None:
        """~all softfails."""
        self.assertEqual(self.check("192.0.2.1", "a@soft.example")[0], "softfail")

    def test_neutral(self) -> None:
        """?all is neutral."""
        self.assertEqual(self.check("192.0.2.1", "a@neutral.example")[0], "neutral")

    def test_none(self) -> None:
        """A domain without an SPF record, or without any record, is none."""
        self.assertEqual(self.check("192.0.2.1", "a@none.example")[0], "none")
        self.assertEqual(self.check("192.0.2.1", "a@nxdomain.example")[0], "none")

    def test_permerror(self) -> None:
        """An unknown mechanism, or two SPF records, is a permerror."""
        self.assertEqual(self.check("192.0.2.1", "a@perm.example")[0], "permerror")
        self.assertEqual(self.check("192.0.2.1", "a@twice.example")[0], "permerror")

    def test_temperrorServfail(self) -> None:
        """SERVFAIL on an included domain is a temperror."""
        result, text = self.check("192.0.2.1", "a@temp.example")
        self.assertEqual(result, "temperror")
        self.assertIn("SERVFAIL", text)

    def test_temperrorTimeout(self) -> None:
        """A record lookup that never answers times out into a temperror."""
        self.assertEqual(self.check("192.0.2.1", "a@slow.example")[0], "temperror")

    def test_includeMxA(self) -> None:
        """include:, mx and a: are followed through several lookups."""
        self.assertEqual(self.check("192.0.2.77", "a@inc.example")[0], "pass")
        self.assertEqual(self.check("203.0.113.7", "a@inc.example")[0], "pass")
        self.assertEqual(self.check("203.0.113.9", "a@inc.example")[0], "pass")
        self.assertEqual(self.check("203.0.113.10", "a@inc.example")[0], "fail")

    def test_redirectAndCNAME(self) -> None:
        """redirect= and a CNAME to a record both reach it."""
        self.assertEqual(self.check("192.0.2.1", "a@redirect.example")[0], "pass")
        self.assertEqual(self.check("192.0.2.1", "a@alias.example")[0], "pass")

    def test_explanation(self) -> None:
        """exp= is fetched (though pyspf swallows its lookup) and expanded."""
        result, text = self.check("192.0.2.1", "a@exp.example")
        self.assertEqual((result, text), ("fail", "192.0.2.1 may not send for exp.example"))

    def test_ptr(self) -> None:
        """The ptr mechanism (whose lookups pyspf wraps in a bare except) works."""
        self.assertEqual(self.check("192.0.2.1", "a@ptr.example")[0], "pass")
        self.assertEqual(self.check("192.0.2.2", "a@ptr.example")[0], "fail")

    def test_nullSenderUsesHelo(self) -> None:
        """With the null sender the HELO identity is checked (RFC 7208 2.3)."""
        self.assertEqual(self.check("192.0.2.1", "", "helo.example.net")[0], "pass")
        self.assertEqual(self.check("192.0.2.2", "", "helo.example.net")[0], "fail")

    def test_ipv6Client(self) -> None:
        """An IPv6 client outside an ip4-only record fails."""
        self.assertEqual(self.check("2001:db8::1", "a@fail.example")[0], "fail")

    def test_lookupLoopBounded(self) -> None:
        """An include chain deeper than the limits ends in permerror, not a hang."""
        resolver = MemoryResolver()
        for i in range(40):
            resolver.add(f"d{i}.example", "TXT", f"v=spf1 include:d{i + 1}.example -all")
        dns = AsyncDNS(resolver, self.clock, timeout=5)
        result = self.successResultOf(checkSPF(dns, "192.0.2.1", "a@d0.example", "h.example"))
        self.assertEqual(result[0], "permerror")
        self.assertLess(len(resolver.queries), MAX_PASSES)

    def test_pyspfUntouchedOutside(self) -> None:
        """Outside an evaluation pyspf's own DNSLookup is the one used."""
        import spf

        from mailframe.policy import spf as ours

        self.assertIs(spf.DNSLookup, ours._lookup)
        calls: list[Any] = []
        self.patch(ours, "_pyspfLookup", lambda *a: calls.append(a) or [])
        self.assertEqual(spf.DNSLookup("x.example", "TXT"), [])
        self.assertEqual(calls, [("x.example", "TXT", True, None)])


class PolicyTests(SynchronousTestCase):
    """SPFCheck: what each result does at MAIL FROM."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.dns = AsyncDNS(MemoryResolver(RECORDS), self.clock, timeout=5)
        self.config = ServerConfig(hostname="mx.example.com", relayNetworks=("10.0.0.0/8",))

    def validate(self, check: SPFCheck, sender: str, ip: str = "192.0.2.1") -> Any:
        envelope = makeEnvelope(sender)
        d = check.validateSender(makeSession(ip), envelope)
        self.clock.advance(6)
        return d, envelope

    def test_verifyObject(self) -> None:
        """SPFCheck provides ISenderValidator."""
        self.assertTrue(verifyObject(ISenderValidator, SPFCheck(self.dns)))

    def test_defaultPolicy(self) -> None:
        """By default fail is 550 5.7.23, temperror 451 4.4.3, the rest accepted."""
        check = SPFCheck(self.dns, self.config)
        for sender, expected in [
            ("a@pass.example", None),
            ("a@soft.example", None),
            ("a@neutral.example", None),
            ("a@none.example", None),
            ("a@perm.example", None),
            ("a@fail.example", (550, (5, 7, 23))),
            ("a@temp.example", (451, (4, 4, 3))),
        ]:
            d, envelope = self.validate(check, sender)
            if expected is None:
                self.assertIsNone(self.successResultOf(d), sender)
            else:
                reply = self.failureResultOf(d, SMTPError).value.reply
                self.assertEqual((reply.code, reply.enhanced), expected, sender)
            self.assertIsInstance(envelope.spf, SPFResult)

    def test_recorded(self) -> None:
        """The result, scope, domain and identity are recorded for later checks."""
        check = SPFCheck(self.dns, self.config)
        _d, envelope = self.validate(check, "a@pass.example")
        result = envelope.spf
        self.assertEqual(
            (result.result, result.scope, result.domain, result.identity),
            ("pass", "mailfrom", "pass.example", "a@pass.example"),
        )

    def test_policyOptions(self) -> None:
        """softfail=reject, permerror=reject and temperror=accept change the replies."""
        check = SPFCheck(
            self.dns,
            self.config,
            {"softfail": "reject", "permerror": "reject", "temperror": "accept"},
        )
        d, _ = self.validate(check, "a@soft.example")
        self.assertEqual(self.failureResultOf(d, SMTPError).value.reply.enhanced, (5, 7, 23))
        d, _ = self.validate(check, "a@perm.example")
        self.assertEqual(self.failureResultOf(d, SMTPError).value.reply.enhanced, (5, 7, 24))
        d, _ = self.validate(check, "a@temp.example")
        self.assertIsNone(self.successResultOf(d))

    def test_deferFail(self) -> None:
        """fail=defer answers 451 4.7.24 instead of refusing for good."""
        check = SPFCheck(self.dns, self.config, {"fail": "defer"})
        d, _ = self.validate(check, "a@fail.example")
        reply = self.failureResultOf(d, SMTPError).value.reply
        self.assertEqual((reply.code, reply.enhanced), (451, (4, 7, 24)))

    def test_badPolicy(self) -> None:
        """Unknown results and actions are refused when the check is made."""
        self.assertRaises(ValueError, SPFCheck, self.dns, None, {"hardfail": "reject"})
        self.assertRaises(ValueError, SPFCheck, self.dns, None, {"fail": "bounce"})

    def test_trustedSkipped(self) -> None:
        """Authenticated and relay-network clients are not checked."""
        check = SPFCheck(self.dns, self.config)
        self.assertIsNone(
            check.validateSender(makeSession("10.1.2.3"), makeEnvelope("a@fail.example"))
        )
        session = makeSession(authenticated="alice")
        self.assertIsNone(check.validateSender(session, makeEnvelope("a@fail.example")))

    def test_addressLiteralSender(self) -> None:
        """A sender at an address literal has no domain to check: none."""
        check = SPFCheck(self.dns, self.config)
        d, envelope = self.validate(check, "a@[192.0.2.1]")
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(envelope.spf.result, "none")

    def test_replyTextIsSafe(self) -> None:
        """An explanation from DNS cannot put control characters in a reply."""
        reply = spfReply("fail", "reject", "x.example", "bad\x00text\x7f")
        assert reply is not None
        self.assertNotIn("\x00", str(reply))


class SessionTests(SynchronousTestCase):
    """The SPF check in a server session."""

    def test_failRefusedAtMail(self) -> None:
        """A client not allowed by the sender's record gets 550 5.7.23 at MAIL FROM."""
        # StringTransport's peer is 192.168.1.1
        clock = Clock()
        dns = AsyncDNS(MemoryResolver(RECORDS), clock, timeout=5)
        config = ServerConfig(hostname="mx.example.com", localDomains=frozenset({"example.com"}))
        factory = SMTPServerFactory(
            config,
            MemoryBackend(),
            [Listed("user")],
            senderValidators=[SPFCheck(dns, config)],
            clock=clock,
        )
        proto = factory.buildProtocol(None)
        transport = CountingTransport()
        proto.makeConnection(transport)
        transport.clear()
        proto.dataReceived(
            b"EHLO client.example.org\r\nMAIL FROM:<a@fail.example>\r\n"
            b"MAIL FROM:<a@lan.example>\r\nRCPT TO:<user@example.com>\r\n"
        )
        self.assertEqual(codes(transport.value()), ["250", "550 5.7.23", "250 2.1.0", "250 2.1.5"])
