"""
Tests for MTA-STS (L{mailframe.client.mtasts}) and its use by the relay:
the TXT record and policy syntax, MX patterns, the cache (on disk, by id
and max_age, refreshed before expiry) on a fake clock, the fetch with treq
from a twisted.web HTTPS server on 127.0.0.1 with a test CA (verified, no
redirects, size and type checked), and deliveries in enforce and testing
mode to mailframe's own STARTTLS server.
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.names import dns
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web import resource, server
from twisted.web.util import Redirect

from mailframe.client import Timeouts, messageFrom
from mailframe.client.mtasts import (
    ENFORCE,
    MAX_POLICY_SIZE,
    MTASTS,
    PolicyError,
    STSPolicy,
    fetchPolicy,
    fetchResolved,
    mxMatches,
    parsePolicy,
    parseRecord,
    policyURL,
)
from mailframe.client.relay import SMTPRelay
from mailframe.client.routing import Router
from mailframe.client.tlspolicy import OutboundTLS
from mailframe.envelope import DeliveryResult
from mailframe.server.tls import CertificatePair, ServerTLS
from tests._certs import TestCA
from tests.interop._support import HOST
from tests.test_dane import SignedZone
from tests.test_relay import MESSAGE, envelope, tlsServer

POLICY = (
    "version: STSv1\r\nmode: enforce\r\nmx: mx.test\r\nmx: *.backup.test\r\nmax_age: 86400\r\n"
)


class SyntaxTests(SynchronousTestCase):
    def test_record(self) -> None:
        """The id of the one v=STSv1 record; other TXT records are ignored."""
        self.assertEqual(parseRecord([b"v=STSv1; id=20240101T00;", b"other"]), "20240101T00")
        self.assertEqual(parseRecord([b"v=STSv1;id=abc; ext=1"]), "abc")
        self.assertIsNone(parseRecord([b"v=spf1 -all"]))
        self.assertIsNone(parseRecord([b"v=STSv1; id=a", b"v=STSv1; id=b"]))

    def test_badRecord(self) -> None:
        """A malformed STSv1 record is an error."""
        self.assertRaises(PolicyError, parseRecord, [b"v=STSv1; id=not-alnum!"])
        self.assertRaises(PolicyError, parseRecord, [b"v=STSv1;"])
        self.assertRaises(PolicyError, parseRecord, [b"v=STSv1; id=" + b"a" * 33])

    def test_policy(self) -> None:
        """Mode, mx lines and max_age; CRLF or LF; unknown keys ignored."""
        policy = parsePolicy(POLICY + "future: x\n", "Example.COM", "id1", 100.0)
        self.assertEqual(policy.mode, ENFORCE)
        self.assertEqual(policy.mx, ("mx.test", "*.backup.test"))
        self.assertEqual(
            (policy.maxAge, policy.expires, policy.domain), (86400, 86500.0, "example.com")
        )

    def test_badPolicy(self) -> None:
        """A missing version, bad mode, bad max_age or no mx is an error."""
        for text in (
            "mode: enforce\nmx: a.test\nmax_age: 1\n",
            "version: STSv1\nmode: strict\nmx: a.test\nmax_age: 1\n",
            "version: STSv1\nmode: enforce\nmx: a.test\nmax_age: soon\n",
            "version: STSv1\nmode: enforce\nmax_age: 1\n",
            "version: STSv1\nmode: enforce\nmx: a..test\nmax_age: 1\n",
            "garbage",
        ):
            self.assertRaises(PolicyError, parsePolicy, text, "d.test", "1", 0.0)

    def test_noneNeedsNoMX(self) -> None:
        """Mode none needs no mx line."""
        self.assertEqual(parsePolicy("version: STSv1\nmode: none\nmax_age: 60", "d", "1", 0).mode,
                         "none")  # fmt: skip

    def test_maxAgeCapped(self) -> None:
        """max_age is at most a year."""
        policy = parsePolicy("version: STSv1\nmode: none\nmax_age: 9999999999", "d", "1", 0)
        self.assertEqual(policy.maxAge, 31557600)

    def test_mx(self) -> None:
        """A wildcard matches exactly one more label; case and a final dot do not matter."""
        self.assertTrue(mxMatches("mx.test", "MX.test."))
        self.assertTrue(mxMatches("*.backup.test", "a.backup.test"))
        self.assertFalse(mxMatches("*.backup.test", "a.b.backup.test"))
        self.assertFalse(mxMatches("*.backup.test", "backup.test"))
        self.assertFalse(mxMatches("mx.test", "mx2.test"))

    def test_url(self) -> None:
        """The policy's address."""
        self.assertEqual(policyURL("Example.com."),
                         "https://mta-sts.example.com/.well-known/mta-sts.txt")  # fmt: skip


class Fetcher:
    """A fake fetch: answers C{text} (or raises C{error}) and counts calls."""

    def __init__(self, text: str = POLICY) -> None:
        self.text = text
        self.error: Exception | None = None
        self.calls = 0
        self.pending: defer.Deferred[str] | None = None

    def __call__(self, domain: str) -> Any:
        self.calls += 1
        if self.pending is not None:
            return self.pending
        if self.error is not None:
            return defer.fail(self.error)
        return defer.succeed(self.text)


class CacheTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(1_000_000)
        self.records: list[bytes] = [b"v=STSv1; id=one"]
        self.fetch = Fetcher()
        self.state = self.mktemp()

    def make(self, **kw: Any) -> MTASTS:
        return MTASTS(lambda name: defer.succeed(list(self.records)), self.clock,
                      fetch=self.fetch, stateDirectory=self.state, **kw)  # fmt: skip

    def policy(self, sts: MTASTS, domain: str = "example.com") -> Any:
        return self.successResultOf(sts.policyFor(domain))

    def test_fetchedOnce(self) -> None:
        """A policy is fetched once and used while the record's id stays."""
        sts = self.make()
        self.assertEqual(self.policy(sts).policy.mode, ENFORCE)
        self.policy(sts)
        self.assertEqual(self.fetch.calls, 1)

    def test_onDisk(self) -> None:
        """The policy survives a restart: a new MTASTS reads it from the state directory."""
        self.policy(self.make())
        path = os.path.join(self.state, "mta-sts", "example.com.json")
        with open(path) as f:
            self.assertEqual(json.load(f)["id"], "one")
        self.fetch.error = PolicyError("down")
        self.assertEqual(self.policy(self.make()).policy.id, "one")
        self.assertEqual(self.fetch.calls, 1)

    def test_newID(self) -> None:
        """A new id in the record: fetched again."""
        sts = self.make()
        self.policy(sts)
        self.records = [b"v=STSv1; id=two"]
        self.fetch.text = POLICY.replace("enforce", "testing")
        found = self.policy(sts)
        self.assertEqual((found.policy.id, found.policy.mode), ("two", "testing"))

    def test_fetchFailsKeepsCached(self) -> None:
        """A failed fetch for a new id leaves the unexpired cached policy in force."""
        sts = self.make()
        self.policy(sts)
        self.records = [b"v=STSv1; id=two"]
        self.fetch.error = PolicyError("https://... answered HTTP 500")
        found = self.policy(sts)
        self.assertEqual(found.policy.id, "one")
        self.assertIn("HTTP 500", found.error)

    def test_noRecordKeepsCached(self) -> None:
        """The record gone: the cached policy stays until its max_age ends."""
        sts = self.make()
        self.policy(sts)
        self.records = []
        self.assertEqual(self.policy(sts).policy.id, "one")
        self.clock.advance(86400)
        self.assertIsNone(self.policy(sts).policy)

    def test_refreshBeforeExpiry(self) -> None:
        """Used within refreshBefore of its end, the policy is fetched again (and extended)."""
        sts = self.make(refreshBefore=3600)
        self.policy(sts)
        self.clock.advance(86400 - 1800)
        self.assertEqual(self.policy(sts).policy.fetched, 1_000_000)
        self.assertEqual(self.fetch.calls, 2)
        self.assertEqual(self.policy(sts).policy.fetched, 1_000_000 + 86400 - 1800)

    def test_fetchErrorNoCache(self) -> None:
        """Nothing cached and the fetch fails: no policy, and the error to report."""
        self.fetch.error = PolicyError("fetching failed")
        found = self.policy(self.make())
        self.assertIsNone(found.policy)
        self.assertEqual(found.errorType, "sts-policy-fetch-error")

    def test_invalid(self) -> None:
        """A policy that does not parse: no policy, sts-policy-invalid."""
        self.fetch.text = "nonsense"
        found = self.policy(self.make())
        self.assertEqual((found.policy, found.errorType), (None, "sts-policy-invalid"))

    def test_oneFetchAtATime(self) -> None:
        """Deliveries waiting for the same domain share one fetch."""
        self.fetch.pending = defer.Deferred()
        sts = self.make()
        first, second = sts.policyFor("example.com"), sts.policyFor("example.com")
        self.fetch.pending.callback(POLICY)
        self.assertEqual(self.successResultOf(first), self.successResultOf(second))
        self.assertEqual(self.fetch.calls, 1)

    def test_skip(self) -> None:
        """A domain (or subdomain of one) in skip has no policy; nothing is looked up."""
        sts = self.make(skip=["Example.com"])
        self.assertIsNone(self.policy(sts).policy)
        self.assertIsNone(self.policy(sts, "sub.example.com").policy)
        self.assertEqual(self.fetch.calls, 0)

    def test_dnsFailure(self) -> None:
        """A failed TXT lookup keeps the cached policy."""
        sts = self.make()
        self.policy(sts)
        sts.txt = lambda name: defer.fail(OSError("no DNS"))
        self.assertEqual(self.policy(sts).policy.id, "one")

    def test_badCacheFile(self) -> None:
        """A damaged cache file is ignored."""
        os.makedirs(os.path.join(self.state, "mta-sts"))
        with open(os.path.join(self.state, "mta-sts", "example.com.json"), "w") as f:
            f.write("{")
        self.assertEqual(self.policy(self.make()).policy.id, "one")

    def test_json(self) -> None:
        """A policy round-trips through its JSON form."""
        policy = STSPolicy("d.test", ENFORCE, ("a.test",), 60, "x", 5.0)
        self.assertEqual(STSPolicy.fromJSON(policy.toJSON()), policy)


class _Policy(resource.Resource):
    isLeaf = True

    def __init__(self, body: bytes, kind: bytes = b"text/plain", code: int = 200) -> None:
        super().__init__()
        self.body, self.kind, self.code = body, kind, code

    def render_GET(self, request: Any) -> bytes:
        request.setResponseCode(self.code)
        request.setHeader(b"content-type", self.kind)
        return self.body


class FetchTests(TestCase):
    """fetchPolicy against twisted.web over HTTPS on 127.0.0.1, a test CA."""

    timeout = 30

    def setUp(self) -> None:
        from twisted.internet.ssl import Certificate

        self.ca = TestCA(self.mktemp())
        issued = self.ca.issue("web", "mta-sts.example.com")
        self.tls = ServerTLS([CertificatePair(issued.fullchain, issued.privkey)])
        with open(self.ca.rootFile, "rb") as f:
            self.root = Certificate.loadPEM(f.read())

    def serve(self, leaf: resource.Resource, tls: Any = None) -> int:
        root = resource.Resource()
        wellKnown = resource.Resource()
        root.putChild(b".well-known", wellKnown)
        wellKnown.putChild(b"mta-sts.txt", leaf)
        port = reactor.listenSSL(0, server.Site(root), tls or self.tls, interface=HOST)  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        return int(port.getHost().port)

    def fetch(self, port: int, domain: str = "example.com", **kw: Any) -> Any:
        return defer.ensureDeferred(fetchPolicy(reactor, domain, trustRoot=self.root,
                                                address=(HOST, port), timeout=10, **kw))  # fmt: skip

    @defer.inlineCallbacks
    def test_fetched(self) -> Any:
        """A 200 text/plain policy from a server with a valid certificate."""
        text = yield self.fetch(self.serve(_Policy(POLICY.encode())))
        self.assertEqual(text, POLICY)

    @defer.inlineCallbacks
    def test_resolved(self) -> Any:
        """fetchResolved connects to the addresses the resolver gives for mta-sts.DOMAIN."""
        port = self.serve(_Policy(POLICY.encode()))
        asked: list[str] = []

        def addresses(name: str) -> Any:
            asked.append(name)
            return defer.succeed(["127.0.0.2", HOST] if name.startswith("mta-sts.") else [])

        text = yield defer.ensureDeferred(fetchResolved(reactor, "Example.com", addresses,
                                                        self.root, 10, port))  # fmt: skip
        self.assertEqual((text, asked), (POLICY, ["mta-sts.example.com"]))
        with self.assertRaises(PolicyError) as e:
            yield defer.ensureDeferred(
                fetchResolved(reactor, "example.com", lambda n: defer.succeed([]), self.root)
            )
        self.assertIn("has no address", str(e.exception))

    @defer.inlineCallbacks
    def test_wrongName(self) -> Any:
        """The certificate must name mta-sts.DOMAIN."""
        port = self.serve(_Policy(POLICY.encode()))
        with self.assertRaises(PolicyError):
            yield self.fetch(port, "other.example")

    @defer.inlineCallbacks
    def test_untrusted(self) -> Any:
        """A certificate from an unknown CA is refused."""
        other = TestCA(self.mktemp()).issue("web", "mta-sts.example.com")
        port = self.serve(_Policy(POLICY.encode()),
                          ServerTLS([CertificatePair(other.fullchain, other.privkey)]))  # fmt: skip
        with self.assertRaises(PolicyError):
            yield self.fetch(port)

    @defer.inlineCallbacks
    def test_noRedirect(self) -> Any:
        """A redirect is not followed."""
        port = self.serve(Redirect(b"https://mta-sts.example.com/elsewhere"))
        with self.assertRaises(PolicyError) as e:
            yield self.fetch(port)
        self.assertIn("HTTP 302", str(e.exception))

    @defer.inlineCallbacks
    def test_tooLarge(self) -> Any:
        """A body over 64 KiB is refused."""
        port = self.serve(_Policy(POLICY.encode() + b"#" * MAX_POLICY_SIZE))
        with self.assertRaises(PolicyError) as e:
            yield self.fetch(port)
        self.assertIn("larger", str(e.exception))

    @defer.inlineCallbacks
    def test_notText(self) -> Any:
        """A body that is not text/plain is refused."""
        port = self.serve(_Policy(POLICY.encode(), b"text/html"))
        with self.assertRaises(PolicyError):
            yield self.fetch(port)

    @defer.inlineCallbacks
    def test_notFound(self) -> Any:
        """A 404 is no policy."""
        port = self.serve(_Policy(b"no", code=404))
        with self.assertRaises(PolicyError) as e:
            yield self.fetch(port)
        self.assertIn("404", str(e.exception))


def _zone(secure: bool = False) -> SignedZone:
    return SignedZone(
        {("example.com", dns.MX): [dns.Record_MX(10, b"mx.test")],
         ("mx.test", dns.A): [dns.Record_A(HOST)]},
        insecure=set() if secure else {"example.com", "mx.test"},
    )  # fmt: skip


class Reporter:
    def __init__(self) -> None:
        self.results: list[tuple[str, str | None, str | None]] = []

    def record(self, plan: Any, result: str | None, **kw: Any) -> None:
        self.results.append((plan.policyType, plan.policyDomain, result))


class DeliveryTests(TestCase):
    """MTA-STS against mailframe's STARTTLS server on 127.0.0.1 (its certificate names mx.test)."""

    timeout = 30

    def setUp(self) -> None:
        from twisted.internet.ssl import Certificate

        self.ca = TestCA(self.mktemp())
        issued = self.ca.issue("mx", "mx.test")
        self.tls = ServerTLS([CertificatePair(issued.fullchain, issued.privkey)])
        with open(self.ca.rootFile, "rb") as f:
            self.root = Certificate.loadPEM(f.read())
        self.reporter = Reporter()

    async def relay(
        self, policy: str, starttls: bool = True, tls: Any = None
    ) -> tuple[DeliveryResult, Any]:
        srv = tlsServer(self, (tls or self.tls) if starttls else None)
        resolver = _zone()
        sts = MTASTS(lambda name: defer.succeed([b"v=STSv1; id=1"]), reactor,
                     fetch=lambda d: defer.succeed(policy))  # fmt: skip
        relay = SMTPRelay(Router(resolver, port=srv.portNumber), reactor, "relay.test",
                          trustRoot=self.root, reporter=self.reporter,
                          timeouts=Timeouts(greeting=10, command=10, handshake=10),
                          tlsPolicy=OutboundTLS(reactor, resolver, mtasts=sts))  # fmt: skip
        env = envelope("bob@example.com")
        return await relay.relay(env, env.recipients, messageFrom(MESSAGE)), srv

    @defer.inlineCallbacks
    def test_enforceMatching(self) -> Any:
        """enforce, the MX named, its certificate valid: delivered over TLS."""
        result, srv = yield defer.ensureDeferred(self.relay(POLICY))
        self.assertEqual(result.replies[0].code, 250, result.replies[0])
        self.assertIn(b"with ESMTPS", srv.messages[0].data)
        self.assertEqual(self.reporter.results, [("sts", "example.com", None)])

    @defer.inlineCallbacks
    def test_enforceOtherMX(self) -> Any:
        """enforce, the MX not in the policy: deferred, the reason names MTA-STS; nothing sent."""
        result, srv = yield defer.ensureDeferred(
            self.relay(POLICY.replace("mx: mx.test", "mx: other.test"))
        )
        reply = result.replies[0]
        self.assertEqual((reply.code // 100, reply.enhanced), (4, (4, 7, 5)), reply)
        self.assertIn("MTA-STS: mx.test is not an MX host", str(reply))
        self.assertEqual(srv.messages, [])
        self.assertEqual(self.reporter.results, [("sts", "example.com", "validation-failure")])

    @defer.inlineCallbacks
    def test_enforceBadCertificate(self) -> Any:
        """enforce, a certificate from another CA: deferred with 4.7.5 naming MTA-STS."""
        other = TestCA(self.mktemp()).issue("mx", "mx.test")
        tls = ServerTLS([CertificatePair(other.fullchain, other.privkey)])
        result, srv = yield defer.ensureDeferred(self.relay(POLICY, tls=tls))
        reply = result.replies[0]
        self.assertEqual(reply.enhanced, (4, 7, 5), reply)
        self.assertIn("MTA-STS", str(reply))
        self.assertEqual(srv.messages, [])
        self.assertEqual(
            self.reporter.results, [("sts", "example.com", "certificate-not-trusted")]
        )

    @defer.inlineCallbacks
    def test_enforceNoSTARTTLS(self) -> Any:
        """enforce, STARTTLS stripped: deferred with 4.7.4 naming MTA-STS."""
        result, _ = yield defer.ensureDeferred(self.relay(POLICY, starttls=False))
        reply = result.replies[0]
        self.assertEqual(reply.enhanced, (4, 7, 4), reply)
        self.assertIn("MTA-STS", str(reply))
        self.assertEqual(self.reporter.results, [("sts", "example.com", "starttls-not-supported")])

    @defer.inlineCallbacks
    def test_testingDelivers(self) -> Any:
        """testing, the MX not in the policy and no STARTTLS: delivered, the failure reported."""
        policy = POLICY.replace("enforce", "testing").replace("mx: mx.test", "mx: other.test")
        result, _ = yield defer.ensureDeferred(self.relay(policy, starttls=False))
        self.assertEqual(result.replies[0].code, 250)
        self.assertEqual(self.reporter.results, [("sts", "example.com", "validation-failure")])

    @defer.inlineCallbacks
    def test_testingNoTLS(self) -> Any:
        """testing, the MX named but without STARTTLS: delivered, starttls-not-supported reported."""
        policy = POLICY.replace("enforce", "testing")
        result, _ = yield defer.ensureDeferred(self.relay(policy, starttls=False))
        self.assertEqual(result.replies[0].code, 250)
        self.assertEqual(self.reporter.results, [("sts", "example.com", "starttls-not-supported")])

    @defer.inlineCallbacks
    def test_testingBadCertificate(self) -> Any:
        """testing, the MX named, a certificate from another CA: delivered, the failure reported."""
        other = TestCA(self.mktemp()).issue("mx", "mx.test")
        tls = ServerTLS([CertificatePair(other.fullchain, other.privkey)])
        policy = POLICY.replace("enforce", "testing")
        result, srv = yield defer.ensureDeferred(self.relay(policy, tls=tls))
        self.assertEqual(result.replies[0].code, 250)
        self.assertIn(b"with ESMTPS", srv.messages[0].data)
        self.assertEqual(
            self.reporter.results, [("sts", "example.com", "certificate-not-trusted")]
        )

    @defer.inlineCallbacks
    def test_testingGood(self) -> Any:
        """testing, the MX named, its certificate valid: delivered, a success reported."""
        result, _ = yield defer.ensureDeferred(self.relay(POLICY.replace("enforce", "testing")))
        self.assertEqual(result.replies[0].code, 250)
        self.assertEqual(self.reporter.results, [("sts", "example.com", None)])


class ProbeTests(SynchronousTestCase):
    """PKIXProbe: what testing mode reports of a certificate chain."""

    def test_verdicts(self) -> None:
        """Valid; another name; an unknown CA; expired."""
        from twisted.internet.ssl import Certificate

        from mailframe.client.pkix import PKIXProbe
        from tests.test_dane import _chain

        ca = TestCA(self.mktemp())
        with open(ca.rootFile, "rb") as f:
            root = Certificate.loadPEM(f.read())
        chain = _chain(ca.issue("a", "mx.test").fullchain)
        self.assertIsNone(PKIXProbe("mx.test", root).verify(chain))
        self.assertEqual(PKIXProbe("other.test", root).verify(chain), "certificate-host-mismatch")
        with open(TestCA(self.mktemp()).rootFile, "rb") as f:
            stranger = Certificate.loadPEM(f.read())
        self.assertEqual(PKIXProbe("mx.test", stranger).verify(chain), "certificate-not-trusted")
        old = _chain(ca.issue("b", "mx.test", expired=True).fullchain)
        self.assertEqual(PKIXProbe("mx.test", root).verify(old), "certificate-expired")
        self.assertEqual(PKIXProbe("mx.test", root).verify([]), "certificate-not-trusted")
