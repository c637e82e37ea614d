"""
Tests for L{mailframe.policy.dmarc}: record discovery (the domain, then its
organizational domain), parsing, SPF and DKIM alignment (relaxed and
strict), the disposition (reject, quarantine, pct), temperror and
permerror, with records served by the in-memory resolver.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from mailframe.config import ServerConfig
from mailframe.interfaces import IMessageFilter
from mailframe.policy._dns import AsyncDNS
from mailframe.policy.dkim import inlineRunner
from mailframe.policy.dmarc import (
    QUARANTINE_HEADER,
    DMARCCheck,
    aligned,
    organizationalDomain,
    parseRecord,
)
from mailframe.policy.testing import (
    SERVFAIL,
    MemoryResolver,
    makeEnvelope,
    makeMessage,
    makeSession,
)
from mailframe.reply import SMTPError
from mailframe.results import DKIMResult, SPFResult

RECORDS: dict[Any, Any] = {
    ("_dmarc.example.org", "TXT"): ["v=DMARC1; p=reject; rua=mailto:d@example.org"],
    ("_dmarc.strict.example", "TXT"): ["v=DMARC1; p=reject; adkim=s; aspf=s"],
    ("_dmarc.quar.example", "TXT"): ["v=DMARC1; p=quarantine"],
    ("_dmarc.none.example", "TXT"): ["v=DMARC1; p=none"],
    ("_dmarc.sub.example", "TXT"): ["v=DMARC1; p=reject; sp=none"],
    ("_dmarc.half.example", "TXT"): ["v=DMARC1; p=reject; pct=50"],
    ("_dmarc.broken.example", "TXT"): ["v=DMARC1; p=bogus"],
    ("_dmarc.two.example", "TXT"): ["v=DMARC1; p=reject", "v=DMARC1; p=none"],
    ("_dmarc.other.example", "TXT"): ["v=spf1 -all", "not a dmarc record"],
    ("_dmarc.ruaonly.example", "TXT"): ["v=DMARC1; rua=mailto:x@ruaonly.example"],
    "_dmarc.temp.example": SERVFAIL,
    ("_dmarc.example.co.uk", "TXT"): ["v=DMARC1; p=reject"],
}


def spf(result: str, domain: str) -> SPFResult:
    return SPFResult(result, "mailfrom", domain, f"x@{domain}")


def dkim(result: str, domain: str) -> DKIMResult:
    return DKIMResult(result, domain, "sel", "abcdefgh")


class HelperTests(SynchronousTestCase):
    """Organizational domains, alignment and record parsing."""

    def test_organizationalDomain(self) -> None:
        """One label below the public suffix (co.uk is a suffix)."""
        self.assertEqual(organizationalDomain("mail.news.example.org"), "example.org")
        self.assertEqual(organizationalDomain("a.b.example.co.uk"), "example.co.uk")
        self.assertEqual(organizationalDomain("Example.ORG."), "example.org")

    def test_alignment(self) -> None:
        """Relaxed alignment accepts the same organizational domain; strict, the same name."""
        self.assertTrue(aligned("mail.example.org", "example.org", "r"))
        self.assertFalse(aligned("mail.example.org", "example.org", "s"))
        self.assertTrue(aligned("EXAMPLE.org", "example.org", "s"))
        self.assertFalse(aligned("example.net", "example.org", "r"))
        self.assertFalse(aligned("example.co.uk", "other.co.uk", "r"))

    def test_parseRecord(self) -> None:
        """Tags with defaults; bad records raise ValueError; p is implied by rua."""
        tags = parseRecord("v=DMARC1; p=Reject; adkim=s; pct=20")
        self.assertEqual(
            (tags["p"], tags["adkim"], tags["aspf"], tags["pct"]), ("reject", "s", "r", "20")
        )
        self.assertEqual(parseRecord("v=DMARC1; rua=mailto:a@b")["p"], "none")
        for bad in ["p=reject; v=DMARC1", "v=DMARC1; p=maybe", "v=DMARC1; p=none; pct=101",
                    "v=DMARC1; p=none; adkim=x", "v=DMARC1; p=none; sp=all", "v=DMARC1; junk"]:  # fmt: skip
            self.assertRaises(ValueError, parseRecord, bad)


class EvaluationTests(SynchronousTestCase):
    """DMARCCheck.evaluate with given SPF and DKIM results."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.check = DMARCCheck(
            AsyncDNS(MemoryResolver(RECORDS), self.clock), runner=inlineRunner, sample=lambda: 99.0
        )

    def evaluate(self, domain: str, spfResult: Any = None, dkimResults: Any = ()) -> Any:
        return self.successResultOf(self.check.evaluate(domain, spfResult, list(dkimResults)))

    def test_passBySPF(self) -> None:
        """An aligned SPF pass (relaxed: a subdomain's MAIL FROM) passes."""
        result = self.evaluate("example.org", spf("pass", "bounces.example.org"))
        self.assertEqual(
            (result.result, result.policy, result.disposition), ("pass", "reject", "none")
        )

    def test_passByDKIM(self) -> None:
        """An aligned DKIM pass passes though SPF failed."""
        result = self.evaluate(
            "example.org", spf("fail", "example.org"), [dkim("pass", "example.org")]
        )
        self.assertEqual(result.result, "pass")

    def test_unalignedPassFails(self) -> None:
        """SPF and DKIM passes for another domain do not count."""
        result = self.evaluate(
            "example.org", spf("pass", "example.net"), [dkim("pass", "example.net")]
        )
        self.assertEqual((result.result, result.disposition), ("fail", "reject"))

    def test_failedDKIMOfRightDomain(self) -> None:
        """A failed DKIM signature of the From: domain does not pass."""
        result = self.evaluate("example.org", None, [dkim("fail", "example.org")])
        self.assertEqual(result.result, "fail")

    def test_strictAlignment(self) -> None:
        """adkim=s and aspf=s refuse a subdomain's pass, accept the exact name."""
        sub = self.evaluate(
            "strict.example", spf("pass", "m.strict.example"), [dkim("pass", "m.strict.example")]
        )
        self.assertEqual(sub.result, "fail")
        exact = self.evaluate("strict.example", spf("pass", "strict.example"))
        self.assertEqual(exact.result, "pass")

    def test_organizationalRecord(self) -> None:
        """A subdomain without a record uses its organizational domain's."""
        result = self.evaluate("mail.example.org", spf("fail", "mail.example.org"))
        self.assertEqual((result.result, result.policy), ("fail", "reject"))
        uk = self.evaluate("shop.example.co.uk")
        self.assertEqual(uk.policy, "reject")

    def test_subdomainPolicy(self) -> None:
        """sp= applies to a subdomain found through the organizational record."""
        self.assertEqual(self.evaluate("a.sub.example").disposition, "none")
        self.assertEqual(self.evaluate("sub.example").disposition, "reject")

    def test_pct(self) -> None:
        """Outside pct the policy is applied one step weaker."""
        self.assertEqual(self.evaluate("half.example").disposition, "quarantine")
        self.check.sample = lambda: 10.0
        self.assertEqual(self.evaluate("half.example").disposition, "reject")

    def test_noRecord(self) -> None:
        """No record, no DMARC record among TXT, or two records: none."""
        for domain in ("nothing.example", "other.example", "two.example"):
            self.assertEqual(self.evaluate(domain).result, "none", domain)

    def test_temperror(self) -> None:
        """SERVFAIL on the record is a temperror."""
        self.assertEqual(self.evaluate("temp.example").result, "temperror")

    def test_permerror(self) -> None:
        """A broken record is a permerror; one with rua but no p is p=none."""
        self.assertEqual(self.evaluate("broken.example").result, "permerror")
        self.assertEqual(self.evaluate("ruaonly.example").policy, "none")


HEADERS = b"From: Alice <alice@%s>\r\nTo: bob@example.com\r\nSubject: hi\r\n\r\nbody\r\n"


class FilterTests(SynchronousTestCase):
    """DMARCCheck as a message filter: enforcement and what it records."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.resolver = MemoryResolver(RECORDS)
        self.dns = AsyncDNS(self.resolver, self.clock)

    def apply(self, domain: str, spfResult: Any = None, dkimResults: Any = (), **kw: Any) -> Any:
        check = DMARCCheck(self.dns, runner=inlineRunner, sample=lambda: 0.0, **kw)
        envelope = makeEnvelope(f"a@{domain}", "bob@example.com")
        if spfResult is not None:
            envelope.spf = spfResult
        envelope.dkim = tuple(dkimResults)
        message = makeMessage(HEADERS % domain.encode())
        d = check.filterMessage(makeSession(), envelope, message)
        return d, envelope, message

    def test_verifyObject(self) -> None:
        """DMARCCheck provides IMessageFilter."""
        self.assertTrue(verifyObject(IMessageFilter, DMARCCheck(self.dns)))

    def test_rejectEnforced(self) -> None:
        """p=reject is refused with 550 5.7.1 naming the domain."""
        d, envelope, _ = self.apply("example.org", spf("fail", "example.org"))
        reply = self.failureResultOf(d, SMTPError).value.reply
        self.assertEqual((reply.code, reply.enhanced), (550, (5, 7, 1)))
        self.assertIn("example.org", str(reply))
        self.assertEqual(envelope.dmarc.disposition, "reject")

    def test_rejectAsQuarantine(self) -> None:
        """reject=False quarantines what p=reject would refuse."""
        d, envelope, message = self.apply("example.org", reject=False)
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(envelope.dmarc.disposition, "quarantine")
        self.assertIn(
            QUARANTINE_HEADER.encode() + b": DMARC policy of example.org", message.getvalue()
        )

    def test_quarantineHeader(self) -> None:
        """p=quarantine adds the quarantine header; quarantine=False only records."""
        d, _, message = self.apply("quar.example")
        self.assertIsNone(self.successResultOf(d))
        self.assertTrue(message.getvalue().startswith(QUARANTINE_HEADER.encode()))
        d, envelope, message = self.apply("quar.example", quarantine=False)
        self.assertNotIn(QUARANTINE_HEADER.encode(), message.getvalue())
        self.assertEqual(
            (envelope.dmarc.result, envelope.dmarc.disposition),
            ("fail", "none"),
        )

    def test_passAccepted(self) -> None:
        """An aligned pass is accepted untouched."""
        d, envelope, message = self.apply("example.org", dkimResults=[dkim("pass", "example.org")])
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(envelope.dmarc.result, "pass")
        self.assertEqual(message.getvalue(), HEADERS % b"example.org")

    def test_temperrorAcceptedOrDeferred(self) -> None:
        """A temperror is accepted by default, 451 4.7.1 with deferTemporary."""
        d, envelope, _ = self.apply("temp.example")
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(envelope.dmarc.result, "temperror")
        d, _, _ = self.apply("temp.example", deferTemporary=True)
        reply = self.failureResultOf(d, SMTPError).value.reply
        self.assertEqual((reply.code, reply.enhanced), (451, (4, 7, 1)))

    def test_permerrorRecordedNotEnforced(self) -> None:
        """A broken record is recorded as permerror and the message accepted."""
        d, envelope, _ = self.apply("broken.example")
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(envelope.dmarc.result, "permerror")

    def test_computesSPFAndDKIMItself(self) -> None:
        """Without spf and dkim-verify before it, it runs both itself."""
        self.resolver.add("example.org", "TXT", "v=spf1 ip4:192.0.2.0/24 -all")
        check = DMARCCheck(self.dns, runner=inlineRunner)
        envelope = makeEnvelope("a@example.org", "bob@example.com")
        message = makeMessage(HEADERS % b"example.org")
        self.assertIsNone(
            self.successResultOf(check.filterMessage(makeSession(), envelope, message))
        )
        self.assertEqual(envelope.spf.result, "pass")
        self.assertEqual(envelope.dkim, ())
        self.assertEqual(envelope.dmarc.result, "pass")

    def test_noFrom(self) -> None:
        """A message without a single From: domain is a permerror, not enforced."""
        check = DMARCCheck(self.dns, runner=inlineRunner)
        envelope = makeEnvelope()
        message = makeMessage(b"Subject: no from\r\n\r\nx\r\n")
        self.assertIsNone(check.filterMessage(makeSession(), envelope, message))
        self.assertEqual(envelope.dmarc.result, "permerror")

    def test_trustedSkipped(self) -> None:
        """Relay-network clients are not judged."""
        config = ServerConfig(hostname="mx.example.com", relayNetworks=("192.0.2.0/24",))
        check = DMARCCheck(self.dns, config, runner=inlineRunner)
        envelope = makeEnvelope()
        message = makeMessage(HEADERS % b"example.org")
        self.assertIsNone(check.filterMessage(makeSession("192.0.2.9"), envelope, message))
        self.assertIsNone(envelope.dmarc)
