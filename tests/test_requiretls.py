"""
Tests for REQUIRETLS (RFC 8689): the extension (advertised under TLS only,
the MAIL parameter kept in the envelope and in the queue entry), what a
message asks (L{requirementOf}: REQUIRETLS, or C{TLS-Required: No}), and
the relay to mailframe's own servers on 127.0.0.1: such mail goes only over
verified TLS to a server offering REQUIRETLS, passing it on, else its
recipients fail with 550 5.7.10; C{TLS-Required: No} lets mail past DANE
and MTA-STS failures.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.ssl import Certificate
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.names import dns
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from mailframe.address import parseMailbox
from mailframe.backends.memory import MemoryBackend
from mailframe.client import Timeouts, messageFrom
from mailframe.client.mtasts import MTASTS
from mailframe.client.relay import SMTPRelay
from mailframe.client.routing import Router
from mailframe.client.tlspolicy import OutboundTLS, requirementOf
from mailframe.config import ServerConfig
from mailframe.envelope import DeliveryResult, Envelope, Recipient, SessionInfo, TLSInfo
from mailframe.extensions import defaultExtensions
from mailframe.extensions.requiretls import RequireTLS, requiresTLS
from mailframe.interfaces import IExtension
from mailframe.queue.entry import QueueEntry
from mailframe.reply import SMTPError
from mailframe.server import SMTPServerFactory
from mailframe.server.tls import CertificatePair, ServerTLS
from mailframe.validators.basic import AnyRecipient
from tests._certs import TestCA
from tests.interop._support import HOST
from tests.interop.test_outbound_tls import tlsServer
from tests.test_dane import SignedZone, _chain, tlsa
from tests.test_relay import MESSAGE

PLAIN = SessionInfo("s1", "192.0.2.1", 1025, HOST, 25, "mx.test")
SECURE = SessionInfo("s2", "192.0.2.1", 1025, HOST, 25, "mx.test", tls=TLSInfo("TLSv1.3", "X"))


def requiring(*recipients: str, params: dict[str, str | None] | None = None) -> Envelope:
    return Envelope("Q1", parseMailbox("alice@a.example"),
                    {"REQUIRETLS": None} if params is None else params,
                    [Recipient(parseMailbox(r)) for r in recipients])  # fmt: skip


class ExtensionTests(SynchronousTestCase):
    def test_interface(self) -> None:
        """RequireTLS provides IExtension."""
        self.assertTrue(verifyObject(IExtension, RequireTLS()))

    def test_advertisedUnderTLS(self) -> None:
        """EHLO lists REQUIRETLS only in a session under TLS."""
        self.assertIsNone(RequireTLS().ehloParameters(PLAIN))
        self.assertEqual(RequireTLS().ehloParameters(SECURE), "")

    def test_parameter(self) -> None:
        """The parameter takes no value, and is refused outside TLS with 5.7.10."""
        ext, env = RequireTLS(), requiring("b@example.com", params={})
        ext.mailParameter(SECURE, env, "REQUIRETLS", None)
        self.assertRaises(SMTPError, ext.mailParameter, SECURE, env, "REQUIRETLS", "yes")
        with self.assertRaises(SMTPError) as e:
            ext.mailParameter(PLAIN, env, "REQUIRETLS", None)
        self.assertEqual(e.exception.reply.enhanced, (5, 7, 10))

    def test_notInClearSession(self) -> None:
        """Through the server without TLS: not advertised, and MAIL with it is refused."""
        factory = SMTPServerFactory(
            ServerConfig(hostname="mx.test", localDomains=frozenset({"example.com"})),  # type: ignore[arg-type]
            MemoryBackend(), [AnyRecipient()],
            extensions=[*defaultExtensions(1 << 20), RequireTLS()], clock=MemoryReactorClock(),
        )  # fmt: skip
        proto = factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        proto.dataReceived(b"EHLO c.test\r\n")
        self.assertNotIn(b"REQUIRETLS", transport.value())
        transport.clear()
        proto.dataReceived(b"MAIL FROM:<a@b.test> REQUIRETLS\r\n")
        self.assertTrue(transport.value().startswith(b"555"), transport.value())

    def test_queueKeepsIt(self) -> None:
        """The queue entry keeps REQUIRETLS with the message."""
        entry = QueueEntry.fromEnvelope("Q1", requiring("b@example.com"), 0.0, 10)
        again = QueueEntry.fromJSON(entry.toJSON())
        self.assertTrue(requiresTLS(again.envelopeFor(again.pending)))


class BounceTests(SynchronousTestCase):
    def test_headersOnly(self) -> None:
        """A failure report about REQUIRETLS mail returns only its header section, even for RET=FULL."""
        from tests.test_bounce import ORIGINAL, entry, report

        _, data, _ = report(entry(mailParams={"REQUIRETLS": None, "RET": "FULL"}))
        self.assertIn(b"text/rfc822-headers", data)
        self.assertNotIn(ORIGINAL.split(b"\r\n\r\n", 1)[1], data)


class RequirementTests(SynchronousTestCase):
    def test_requiretls(self) -> None:
        """REQUIRETLS on MAIL: required (and the header is not read)."""
        found = requirementOf(requiring("b@example.com"), messageFrom(b"TLS-Required: No\r\n\r\n"))
        self.assertEqual((found.required, found.optional), (True, False))

    def test_tlsRequiredNo(self) -> None:
        """TLS-Required: No without REQUIRETLS: optional."""
        env = requiring("b@example.com", params={})
        found = requirementOf(env, messageFrom(b"Subject: x\r\nTLS-Required:  no \r\n\r\nb\r\n"))
        self.assertEqual((found.required, found.optional), (False, True))

    def test_none(self) -> None:
        """Neither: no requirement; a field in the body does not count."""
        env = requiring("b@example.com", params={})
        found = requirementOf(env, messageFrom(b"Subject: x\r\n\r\nTLS-Required: No\r\n"))
        self.assertEqual((found.required, found.optional), (False, False))


def _zone(secure: bool, records: Any = None) -> SignedZone:
    zone = {("example.com", dns.MX): [dns.Record_MX(10, b"mx.test")],
            ("mx.test", dns.A): [dns.Record_A(HOST)]}  # fmt: skip
    if records:
        zone[("_25._tcp.mx.test", 52)] = records
    return SignedZone(zone, insecure=set() if secure else {"example.com", "mx.test"})


class RelayTests(TestCase):
    """REQUIRETLS mail relayed to mailframe's servers on 127.0.0.1 (certificates for mx.test)."""

    timeout = 30

    def setUp(self) -> None:
        self.ca = TestCA(self.mktemp())
        issued = self.ca.issue("mx", "mx.test")
        self.chain = _chain(issued.fullchain)
        self.tls = ServerTLS([CertificatePair(issued.fullchain, issued.privkey)])
        with open(self.ca.rootFile, "rb") as f:
            self.root = Certificate.loadPEM(f.read())

    def server(self, starttls: bool = True, requiretls: bool = True) -> Any:
        extensions = [RequireTLS()] if requiretls else []
        return tlsServer(self, self.tls if starttls else None, "example.com", extensions)

    async def send(
        self, srv: Any, env: Envelope, resolver: Any = None, message: bytes = MESSAGE, **kw: Any
    ) -> DeliveryResult:
        resolver = resolver if resolver is not None else _zone(True)
        router = kw.pop("router", None) or Router(resolver, port=srv.portNumber)
        relay = SMTPRelay(router, reactor, "relay.test", trustRoot=self.root,
                          timeouts=Timeouts(greeting=10, command=10, handshake=10),
                          tlsPolicy=OutboundTLS(reactor, resolver, **kw))  # fmt: skip
        return await relay.relay(env, env.recipients, messageFrom(message))

    def assertBounced(self, result: DeliveryResult, srv: Any) -> None:
        reply = result.replies[0]
        self.assertEqual((reply.code, reply.enhanced), (550, (5, 7, 10)), reply)
        self.assertIn("REQUIRETLS", str(reply))
        self.assertEqual(srv.messages, [])

    @defer.inlineCallbacks
    def test_signedMXVerified(self) -> Any:
        """DNSSEC-signed MX, a verified certificate, REQUIRETLS offered: delivered, passed on."""
        srv = self.server()
        result = yield defer.ensureDeferred(self.send(srv, requiring("bob@example.com")))
        self.assertEqual(result.replies[0].code, 250, result.replies[0])
        self.assertIn("REQUIRETLS", srv.messages[0].envelope.mailParams)
        self.assertIn(b"with ESMTPS", srv.messages[0].data)

    @defer.inlineCallbacks
    def test_notOffered(self) -> Any:
        """The next server lacks REQUIRETLS: 550 5.7.10, nothing sent."""
        srv = self.server(requiretls=False)
        result = yield defer.ensureDeferred(self.send(srv, requiring("bob@example.com")))
        self.assertBounced(result, srv)

    @defer.inlineCallbacks
    def test_noSTARTTLS(self) -> Any:
        """No STARTTLS: never in clear; 550 5.7.10."""
        srv = self.server(starttls=False)
        result = yield defer.ensureDeferred(self.send(srv, requiring("bob@example.com")))
        self.assertBounced(result, srv)

    @defer.inlineCallbacks
    def test_unsignedMX(self) -> Any:
        """MX records neither signed nor named by MTA-STS: 550 5.7.10, nothing sent."""
        srv = self.server()
        result = yield defer.ensureDeferred(
            self.send(srv, requiring("bob@example.com"), _zone(False))
        )
        self.assertBounced(result, srv)

    @defer.inlineCallbacks
    def test_unsignedMXWithSTS(self) -> Any:
        """Unsigned MX named by an MTA-STS policy (even testing mode): delivered, verified."""
        srv = self.server()
        policy = "version: STSv1\nmode: testing\nmx: mx.test\nmax_age: 600\n"
        sts = MTASTS(lambda n: defer.succeed([b"v=STSv1; id=1"]), reactor,
                     fetch=lambda d: defer.succeed(policy))  # fmt: skip
        result = yield defer.ensureDeferred(
            self.send(srv, requiring("bob@example.com"), _zone(False), mtasts=sts)
        )
        self.assertEqual(result.replies[0].code, 250, result.replies[0])

    @defer.inlineCallbacks
    def test_badCertificate(self) -> Any:
        """A certificate from an unknown CA: 550 5.7.10."""
        other = TestCA(self.mktemp()).issue("mx", "mx.test")
        self.tls = ServerTLS([CertificatePair(other.fullchain, other.privkey)])
        srv = self.server()
        result = yield defer.ensureDeferred(self.send(srv, requiring("bob@example.com")))
        self.assertBounced(result, srv)

    @defer.inlineCallbacks
    def test_routeNotVerified(self) -> Any:
        """A configured route without the verify policy: 550 5.7.10."""
        srv = self.server()
        router = Router(routes={"example.com": {"host": HOST, "port": srv.portNumber}})
        result = yield defer.ensureDeferred(
            self.send(srv, requiring("bob@example.com"), router=router)
        )
        self.assertBounced(result, srv)

    @defer.inlineCallbacks
    def test_routeVerified(self) -> Any:
        """A configured route with verify: delivered."""
        srv = self.server()
        router = Router(routes={"example.com": {"host": HOST, "port": srv.portNumber,
                                                "tls": "verify", "tls-hostname": "mx.test"}})  # fmt: skip
        result = yield defer.ensureDeferred(
            self.send(srv, requiring("bob@example.com"), router=router)
        )
        self.assertEqual(result.replies[0].code, 250, result.replies[0])

    @defer.inlineCallbacks
    def test_unreachableIsTemporary(self) -> Any:
        """No server listening: a 4xx (tried again later), not a bounce."""
        srv = self.server()
        port = srv.portNumber
        yield srv.port.stopListening()
        router = Router(_zone(True), port=port)
        result = yield defer.ensureDeferred(
            self.send(srv, requiring("bob@example.com"), router=router)
        )
        self.assertEqual(result.replies[0].code // 100, 4, result.replies[0])

    @defer.inlineCallbacks
    def test_tlsRequiredNoPastDANE(self) -> Any:
        """TLS-Required: No: a DANE mismatch does not stop the message (opportunistic TLS)."""
        srv = self.server()
        other = _chain(self.ca.issue("other", "mx.test").fullchain)[0]
        resolver = _zone(True, [dns.UnknownRecord(b"\x03\x01\x01" + tlsa(3, 1, 1, other).data)])
        env = requiring("bob@example.com", params={})
        message = b"TLS-Required: No\r\n" + MESSAGE
        result = yield defer.ensureDeferred(self.send(srv, env, resolver, message, dane=True))
        self.assertEqual(result.replies[0].code, 250, result.replies[0])
        without = yield defer.ensureDeferred(self.send(srv, env, resolver, MESSAGE, dane=True))
        self.assertIn("DANE", str(without.replies[0]))
