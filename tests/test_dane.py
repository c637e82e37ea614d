"""
Tests for DANE (L{mailframe.client.dane}, and its use by the relay through
L{mailframe.client.tlspolicy}): TLSA parsing and usability, DANE-EE and
DANE-TA matching against certificates made in the test, the TLSA lookup's
outcomes from an in-memory resolver whose answers carry the AD bit, the
router's DNSSEC marks, and deliveries to mailframe's own STARTTLS server on
127.0.0.1: a match delivers, a mismatch or a stripped STARTTLS defers with
a reason naming DANE.
"""

from __future__ import annotations

import datetime
import hashlib
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from twisted.internet import defer, reactor, task
from twisted.names import common, dns
from twisted.names import error as dnserror
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mailframe.client import Timeouts, messageFrom
from mailframe.client.dane import (
    TLSA,
    DANECheck,
    lookupTLSA,
    parseTLSA,
    tlsaName,
)
from mailframe.client.relay import SMTPRelay
from mailframe.client.routing import Router
from mailframe.client.tlspolicy import OutboundTLS
from mailframe.envelope import DeliveryResult
from mailframe.policy._dns import Sections, isAuthenticated
from mailframe.server.tls import CertificatePair, ServerTLS
from tests._certs import TestCA
from tests.interop._support import HOST
from tests.test_relay import MESSAGE, envelope, tlsServer


def _chain(path: str) -> list[x509.Certificate]:
    with open(path, "rb") as f:
        return x509.load_pem_x509_certificates(f.read())


def spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def tlsa(usage: int, selector: int, matching: int, cert: x509.Certificate) -> TLSA:
    blob = cert.public_bytes(Encoding.DER) if selector == 0 else spki(cert)
    if matching == 1:
        blob = hashlib.sha256(blob).digest()
    elif matching == 2:
        blob = hashlib.sha512(blob).digest()
    return TLSA(usage, selector, matching, blob)


def rdata(record: TLSA) -> bytes:
    return bytes([record.usage, record.selector, record.matching]) + record.data


class SignedZone(common.ResolverBase):
    """
    In-memory answers as a validating resolver gives them: C{records} maps
    (name, type) to payloads; names in C{insecure} come without the AD bit;
    (name, type) in C{failing} get SERVFAIL.
    """

    def __init__(
        self,
        records: dict[tuple[str, int], list[Any]],
        insecure: set[str] = frozenset(),  # type: ignore[assignment]
        failing: set[tuple[str, int]] = frozenset(),  # type: ignore[assignment]
    ) -> None:
        common.ResolverBase.__init__(self)
        self.records = records
        self.insecure = insecure
        self.failing = failing
        self.asked: list[tuple[str, int]] = []

    def _lookup(self, name: Any, cls: int, type: int, timeout: Any = None) -> Any:
        text = (name.decode() if isinstance(name, bytes) else str(name)).rstrip(".").lower()
        self.asked.append((text, type))
        if (text, type) in self.failing:
            return defer.fail(dnserror.DNSServerError(text))
        secure = text not in self.insecure
        payloads = self.records.get((text, type))
        if payloads is None:
            if any(n == text for n, _ in self.records):
                return defer.succeed(Sections(([], [], []), secure))
            return defer.fail(dnserror.DNSNameError(text))
        rrs = [dns.RRHeader(text.encode(), type, payload=p, ttl=60) for p in payloads]
        return defer.succeed(Sections((rrs, [], []), secure))


def zone(tlsaRecords: list[TLSA] | None, **kw: Any) -> SignedZone:
    records: dict[tuple[str, int], list[Any]] = {
        ("example.com", dns.MX): [dns.Record_MX(10, b"mx.test")],
        ("mx.test", dns.A): [dns.Record_A(HOST)],
    }
    if tlsaRecords is not None:
        records[(tlsaName("mx.test"), 52)] = [dns.UnknownRecord(rdata(r)) for r in tlsaRecords]
    return SignedZone(records, **kw)


class TLSARecordTests(SynchronousTestCase):
    def setUp(self) -> None:
        ca = TestCA(self.mktemp())
        self.chain = _chain(ca.issue("mx", "mx.test").fullchain)
        self.other = _chain(ca.issue("other", "other.test").fullchain)

    def test_parse(self) -> None:
        """The wire form gives usage, selector, matching type and data."""
        self.assertEqual(parseTLSA(b"\x03\x01\x01" + b"x" * 32), TLSA(3, 1, 1, b"x" * 32))
        self.assertIsNone(parseTLSA(b"\x03\x01\x01"))

    def test_usable(self) -> None:
        """Only DANE-TA/DANE-EE, selectors 0/1, matching 0/1/2 with the right length are usable."""
        self.assertTrue(TLSA(3, 1, 1, b"x" * 32).usable)
        self.assertTrue(TLSA(2, 0, 2, b"x" * 64).usable)
        self.assertTrue(TLSA(3, 0, 0, b"der").usable)
        self.assertFalse(TLSA(1, 1, 1, b"x" * 32).usable)  # PKIX-EE: not for SMTP
        self.assertFalse(TLSA(0, 1, 1, b"x" * 32).usable)
        self.assertFalse(TLSA(3, 2, 1, b"x" * 32).usable)
        self.assertFalse(TLSA(3, 1, 3, b"x" * 32).usable)
        self.assertFalse(TLSA(3, 1, 1, b"x" * 31).usable)

    def test_eeMatches(self) -> None:
        """DANE-EE matches the server's certificate or key, by each matching type."""
        leaf = self.chain[0]
        for selector in (0, 1):
            for matching in (0, 1, 2):
                check = DANECheck([tlsa(3, selector, matching, leaf)], ["mx.test"])
                self.assertIsNone(check.verify(self.chain), (selector, matching))
                self.assertIsNotNone(check.verify(self.other), (selector, matching))

    def test_eeIgnoresNames(self) -> None:
        """DANE-EE checks neither the name nor (RFC 7672 3.1.1) the dates."""
        check = DANECheck([tlsa(3, 1, 1, self.other[0])], ["mx.test"])
        self.assertIsNone(check.verify(self.other))

    def test_taMatches(self) -> None:
        """DANE-TA: the intermediate sent by the server signs its certificate, which names the host."""
        record = tlsa(2, 1, 1, self.chain[1])
        self.assertIsNone(DANECheck([record], ["mx.test"]).verify(self.chain))
        why = DANECheck([record], ["elsewhere.test"]).verify(self.chain)
        self.assertIn("does not name", why or "")

    def test_taRecipientDomain(self) -> None:
        """DANE-TA accepts a certificate naming the recipient domain too."""
        record = tlsa(2, 0, 1, self.other[1])
        self.assertIsNone(DANECheck([record], ["mx.test", "other.test"]).verify(self.other))

    def test_taNotInChain(self) -> None:
        """DANE-TA: an anchor the chain does not hold matches nothing."""
        ca = TestCA(self.mktemp())
        record = tlsa(2, 1, 1, ca.intermediate)
        why = DANECheck([record], ["mx.test"]).verify(self.chain)
        self.assertEqual(why, "no certificate of the server's chain matches a TLSA record")

    def test_taExpired(self) -> None:
        """DANE-TA checks the server certificate's dates."""
        ca = TestCA(self.mktemp())
        chain = _chain(ca.issue("old", "mx.test", expired=True).fullchain)
        why = DANECheck([tlsa(2, 1, 1, ca.intermediate)], ["mx.test"]).verify(chain)
        self.assertIn("validity", why or "")
        clock = task.Clock()
        clock.advance((chain[0].not_valid_after_utc - datetime.timedelta(hours=1)).timestamp())
        check = DANECheck([tlsa(2, 1, 1, ca.intermediate)], ["mx.test"], clock)
        self.assertIsNone(check.verify(chain))

    def test_noChain(self) -> None:
        """No certificate at all never matches."""
        self.assertIsNotNone(DANECheck([tlsa(3, 1, 1, self.chain[0])], ["mx.test"]).verify([]))


class LookupTests(SynchronousTestCase):
    def lookup(self, resolver: Any) -> Any:
        return self.successResultOf(
            defer.ensureDeferred(lookupTLSA(resolver, "mx.test", task.Clock()))
        )

    def test_usable(self) -> None:
        """Signed records with a usable one: usable."""
        found = self.lookup(zone([TLSA(3, 1, 1, b"x" * 32), TLSA(1, 1, 1, b"y" * 32)]))
        self.assertEqual(found.state, "usable")
        self.assertEqual(found.usableRecords, (TLSA(3, 1, 1, b"x" * 32),))

    def test_unusable(self) -> None:
        """Signed records, none usable: unusable (TLS without authentication)."""
        self.assertEqual(self.lookup(zone([TLSA(1, 1, 1, b"x" * 32)])).state, "unusable")

    def test_insecure(self) -> None:
        """Records without the AD bit are no DANE."""
        found = self.lookup(zone([TLSA(3, 1, 1, b"x" * 32)], insecure={tlsaName("mx.test")}))
        self.assertEqual(found.state, "none")

    def test_noRecords(self) -> None:
        """No such name, or no TLSA record: none."""
        self.assertEqual(self.lookup(zone(None)).state, "none")

    def test_servfail(self) -> None:
        """SERVFAIL (bogus, to a validating resolver): failed."""
        found = self.lookup(zone(None, failing={(tlsaName("mx.test"), 52)}))
        self.assertEqual(found.state, "failed")
        self.assertIn("SERVFAIL", found.reason)

    def test_timeout(self) -> None:
        """No answer in time: failed."""
        clock = task.Clock()

        class Silent(common.ResolverBase):
            def _lookup(self, *a: Any) -> Any:
                return defer.Deferred()

        d = defer.ensureDeferred(lookupTLSA(Silent(), "mx.test", clock, timeout=5))
        clock.advance(5)
        self.assertEqual(self.successResultOf(d).state, "failed")


class ResolverBitsTests(SynchronousTestCase):
    def test_queryBits(self) -> None:
        """Every query of the process's resolver asks with AD (RFC 6840) and EDNS0's DO."""
        from mailframe.policy._dns import _dnssecBytes

        message = dns.Message(7, recDes=1)
        message.queries = [dns.Query(b"example.com", dns.MX)]
        sent = dns._EDNSMessage()
        sent.fromStr(_dnssecBytes(message))
        self.assertTrue(sent.authenticData)
        self.assertTrue(sent.dnssecOK)
        self.assertEqual(sent.maxSize, 1232)

    def test_answerKeepsAD(self) -> None:
        """The answer's AD bit stays with the sections the resolver gives."""
        from mailframe.policy._dns import DNSSECClient

        client = DNSSECClient(servers=[("127.0.0.1", 53)], reactor=task.Clock())
        for bit in (0, 1):
            message = dns.Message(1, answer=1, auth=0)
            message.authenticData = bit
            message.answers = [dns.RRHeader(b"a.test", dns.A, payload=dns.Record_A("192.0.2.1"))]
            result = client.filterAnswers(message)
            self.assertEqual(isAuthenticated(result), bool(bit))
            self.assertEqual(result[0], message.answers)

    def test_nameErrorAD(self) -> None:
        """A "no such name" failure carries its message's AD bit."""
        message = dns.Message(1, rCode=dns.ENAME)
        message.authenticData = 1
        self.assertTrue(isAuthenticated(dnserror.DNSNameError(message)))


class RouterTests(SynchronousTestCase):
    def destinations(self, resolver: Any) -> Any:
        return self.successResultOf(Router(resolver).destinations("example.com"))

    def test_secure(self) -> None:
        """MX and address answers with AD: the destination is DNSSEC-secure."""
        (d,) = self.destinations(zone(None))
        self.assertTrue(d.dnssec)
        self.assertEqual(d.policyDomain, "example.com")

    def test_insecureMX(self) -> None:
        """An MX answer without AD: not secure."""
        (d,) = self.destinations(zone(None, insecure={"example.com"}))
        self.assertFalse(d.dnssec)

    def test_insecureAddress(self) -> None:
        """An address answer without AD: not secure."""
        (d,) = self.destinations(zone(None, insecure={"mx.test"}))
        self.assertFalse(d.dnssec)

    def test_plainTuples(self) -> None:
        """Answers from a resolver that knows nothing of AD are insecure."""
        self.assertFalse(isAuthenticated(([], [], [])))

    def test_routesNotMX(self) -> None:
        """A configured route has no policy domain: DANE and MTA-STS do not apply."""
        router = Router(zone(None), routes={"example.com": "192.0.2.1:25"})
        (d,) = self.successResultOf(router.destinations("example.com"))
        self.assertIsNone(d.policyDomain)


class DeliveryTests(TestCase):
    """DANE against mailframe's own server on 127.0.0.1, the zone in memory."""

    timeout = 30

    def setUp(self) -> None:
        self.ca = TestCA(self.mktemp())
        issued = self.ca.issue("server", "mx.test")
        self.chain = _chain(issued.fullchain)
        self.tls = ServerTLS([CertificatePair(issued.fullchain, issued.privkey)])
        self.logged: list[str] = []

    async def relay(
        self, resolver: Any, starttls: bool = True, dane: bool = True
    ) -> tuple[DeliveryResult, Any]:
        server = tlsServer(self, self.tls if starttls else None)
        router = Router(resolver, port=server.portNumber)
        relay = SMTPRelay(router, reactor, "relay.test",
                          timeouts=Timeouts(greeting=10, command=10, handshake=10),
                          tlsPolicy=OutboundTLS(reactor, resolver, dane=dane))  # fmt: skip
        env = envelope("bob@example.com")
        return await relay.relay(env, env.recipients, messageFrom(MESSAGE)), server

    @defer.inlineCallbacks
    def test_match(self) -> Any:
        """A TLSA record matching the server's key: delivered over TLS."""
        result, server = yield defer.ensureDeferred(
            self.relay(zone([tlsa(3, 1, 1, self.chain[0])]))
        )
        self.assertEqual(result.replies[0].code, 250)
        self.assertIn(b"with ESMTPS", server.messages[0].data)

    @defer.inlineCallbacks
    def test_events(self) -> Any:
        """The decisions are outbound.tls events: required by DANE, then failed (a mismatch)."""
        from twisted.logger import globalLogPublisher

        from mailframe import events

        seen: list[dict[str, Any]] = []

        def observe(event: dict[str, Any]) -> None:
            if event.get(events.KEY) == events.OUTBOUND_TLS:
                seen.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        other = _chain(self.ca.issue("other", "mx.test").fullchain)[0]
        yield defer.ensureDeferred(self.relay(zone([tlsa(3, 1, 1, other)])))
        fields = [(e["mechanism"], e["decision"], e["result"], e["domain"]) for e in seen]
        self.assertEqual(fields, [("DANE", "required", None, "example.com"),
                                  ("DANE", "failed", "validation-failure", "example.com")])  # fmt: skip
        self.assertEqual(seen[0]["queueID"], "Q1")

    @defer.inlineCallbacks
    def test_matchTA(self) -> Any:
        """A DANE-TA record for the intermediate: delivered."""
        result, _ = yield defer.ensureDeferred(self.relay(zone([tlsa(2, 0, 2, self.chain[1])])))
        self.assertEqual(result.replies[0].code, 250)

    @defer.inlineCallbacks
    def test_mismatch(self) -> Any:
        """A TLSA record for another key: deferred with 4.7.5 naming DANE, nothing delivered."""
        other = _chain(self.ca.issue("other", "mx.test").fullchain)[0]
        result, server = yield defer.ensureDeferred(self.relay(zone([tlsa(3, 1, 1, other)])))
        reply = result.replies[0]
        self.assertEqual((reply.code // 100, reply.enhanced), (4, (4, 7, 5)))
        self.assertIn("DANE", reply.text)
        self.assertEqual(server.messages, [])

    @defer.inlineCallbacks
    def test_stripped(self) -> Any:
        """TLSA records and no STARTTLS (stripped): deferred with 4.7.4 naming DANE."""
        result, server = yield defer.ensureDeferred(
            self.relay(zone([tlsa(3, 1, 1, self.chain[0])]), starttls=False)
        )
        reply = result.replies[0]
        self.assertEqual((reply.code // 100, reply.enhanced), (4, (4, 7, 4)))
        self.assertIn("DANE", reply.text)
        self.assertEqual(server.messages, [])

    @defer.inlineCallbacks
    def test_unusableNeedsTLS(self) -> Any:
        """Only unusable records: TLS is still mandatory (no STARTTLS: deferred)."""
        records = [TLSA(1, 1, 1, b"x" * 32)]
        result, server = yield defer.ensureDeferred(self.relay(zone(records), starttls=False))
        self.assertIn("DANE", result.replies[0].text)
        result, server = yield defer.ensureDeferred(self.relay(zone(records)))
        self.assertEqual(result.replies[0].code, 250)
        self.assertIn(b"with ESMTPS", server.messages[0].data)

    @defer.inlineCallbacks
    def test_insecureMX(self) -> Any:
        """MX records without AD: no TLSA lookup, opportunistic delivery."""
        other = _chain(self.ca.issue("other", "mx.test").fullchain)[0]
        resolver = zone([tlsa(3, 1, 1, other)], insecure={"example.com"})
        result, _ = yield defer.ensureDeferred(self.relay(resolver, starttls=False))
        self.assertEqual(result.replies[0].code, 250)
        self.assertNotIn((tlsaName("mx.test"), 52), resolver.asked)

    @defer.inlineCallbacks
    def test_lookupFailed(self) -> Any:
        """A TLSA lookup that fails (bogus): the host is not used; 4.7.5 naming DANE."""
        resolver = zone(None, failing={(tlsaName("mx.test"), 52)})
        result, server = yield defer.ensureDeferred(self.relay(resolver))
        reply = result.replies[0]
        self.assertEqual(reply.enhanced, (4, 7, 5))
        self.assertIn("DANE: TLSA lookup", reply.text)
        self.assertEqual(server.messages, [])

    @defer.inlineCallbacks
    def test_daneOff(self) -> Any:
        """DANE off: a mismatching record changes nothing."""
        other = _chain(self.ca.issue("other", "mx.test").fullchain)[0]
        result, _ = yield defer.ensureDeferred(
            self.relay(zone([tlsa(3, 1, 1, other)]), dane=False)
        )
        self.assertEqual(result.replies[0].code, 250)
