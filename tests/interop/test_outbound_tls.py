"""
Outbound TLS against real DNS on loopback: a zone signed in the test
(ldns-signzone) served by NSD, a validating unbound with its trust anchor,
and mailframe's process resolver (L{makeResolver}) pointed at unbound; the
relay delivers to mailframe's own STARTTLS servers on 127.0.0.1 (every MX
host of the zone has the address 127.0.0.1; the router's C{port} setting
sends each test to its own server).

Shown here: unbound's AD bit reaches the router; with DANE a matching TLSA
record delivers, a mismatching one, a stripped STARTTLS or a bogus TLSA
answer defers the mail with a reason naming DANE; an unsigned zone gets
opportunistic TLS.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from twisted.internet import defer, reactor, threads
from twisted.trial.unittest import TestCase

from mailframe.backends.memory import MemoryBackend
from mailframe.client import Timeouts, messageFrom
from mailframe.client.relay import SMTPRelay
from mailframe.client.routing import Router
from mailframe.client.tlspolicy import OutboundTLS
from mailframe.config import ServerConfig
from mailframe.envelope import DeliveryResult, Envelope
from mailframe.extensions import defaultExtensions
from mailframe.extensions.starttls import StartTLS
from mailframe.policy._dns import isAuthenticated, makeResolver
from mailframe.server import SMTPServerFactory
from mailframe.server.tls import CertificatePair, ServerTLS
from tests._certs import TestCA
from tests.interop._dnspeers import PrivateDNS, Zone
from tests.interop._mailpeers import HOST, scratch
from tests.interop._support import AcceptLocal, RunningServer, _shutdown
from tests.test_relay import MESSAGE, envelope

ORIGIN = "mailframe.test"


def _keyHash(path: str) -> str:
    with open(path, "rb") as f:
        cert = x509.load_pem_x509_certificates(f.read())[0]
    spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


def _mx(name: str, tlsa: str | None = None) -> list[str]:
    """A domain C{name} whose one MX host C{mx-name} is 127.0.0.1, with a TLSA record."""
    lines = [f"{name} IN MX 10 mx-{name}", f"mx-{name} IN A 127.0.0.1"]
    if tlsa is not None:
        lines.append(f"_25._tcp.mx-{name} IN TLSA 3 1 1 {tlsa}")
    return lines


def tlsServer(case: TestCase, tls: Any, domain: str, extensions: Any = ()) -> RunningServer:
    """mailframe's server on 127.0.0.1:0 for C{domain}, STARTTLS when C{tls}, a memory backend."""
    offered = [*defaultExtensions(1 << 20), *extensions]
    if tls is not None:
        offered.append(StartTLS(tls))
    backend = MemoryBackend()
    config = ServerConfig(hostname="mx.test", localDomains=frozenset({domain}))  # type: ignore[arg-type]
    factory = SMTPServerFactory(config, backend, [AcceptLocal()], extensions=offered,
                                clock=reactor)  # type: ignore[arg-type]  # fmt: skip
    port = reactor.listenTCP(0, factory, interface=HOST)  # type: ignore[attr-defined]
    server = RunningServer(factory, backend, port)
    case.addCleanup(_shutdown, server)
    return server


class DANEInteropTests(TestCase):
    """DANE with NSD, unbound and mailframe's STARTTLS server."""

    timeout = 120

    def setUp(self) -> defer.Deferred[None]:
        self.directory = scratch("mailframe-dane-")
        self.ca = TestCA(str(self.directory / "ca"))
        names = [f"mx-{n}.{ORIGIN}" for n in ("good", "bad", "strip", "bogus")]
        issued = self.ca.issue("mx", *names, "mx.plain.test")
        self.tls = ServerTLS([CertificatePair(issued.fullchain, issued.privkey)])
        good = _keyHash(issued.fullchain)
        other = _keyHash(self.ca.issue("other", "elsewhere.test").fullchain)
        zones = [
            Zone(ORIGIN, [*_mx("good", good), *_mx("bad", other), *_mx("strip", good),
                          *_mx("bogus", good)], corrupt=[f"_25._tcp.mx-bogus.{ORIGIN}."]),
            Zone("plain.test", ["@ IN MX 10 mx", "mx IN A 127.0.0.1",
                                f"_25._tcp.mx IN TLSA 3 1 1 {other}"], signed=False),
        ]  # fmt: skip
        self.dns = PrivateDNS(Path(self.directory), zones)
        self.addCleanup(threads.deferToThread, self.dns.stop)
        d = threads.deferToThread(self.dns.start)

        def started(_: object) -> None:
            self.resolver = makeResolver(reactor, [(HOST, self.dns.port)], hosts=None,
                                         timeout=(2, 5))  # fmt: skip

        return d.addCallback(started)

    async def relay(
        self, domain: str, starttls: bool = True, env: Envelope | None = None
    ) -> tuple[DeliveryResult, Any]:
        server = tlsServer(self, self.tls if starttls else None, domain)
        router = Router(self.resolver, port=server.portNumber)
        relay = SMTPRelay(router, reactor, "relay.test",
                          timeouts=Timeouts(greeting=10, command=10, handshake=10),
                          tlsPolicy=OutboundTLS(reactor, self.resolver, dane=True))  # fmt: skip
        env = env or envelope(f"bob@{domain}")
        return await relay.relay(env, env.recipients, messageFrom(MESSAGE)), server

    @defer.inlineCallbacks
    def test_adBit(self) -> Any:
        """unbound's AD bit reaches mailframe's resolver: set for the signed zone only."""
        signed = yield self.resolver.lookupMailExchange(f"good.{ORIGIN}")
        self.assertTrue(isAuthenticated(signed))
        plain = yield self.resolver.lookupMailExchange("plain.test")
        self.assertFalse(isAuthenticated(plain))

    @defer.inlineCallbacks
    def test_match(self) -> Any:
        """A matching TLSA record: delivered over TLS."""
        result, server = yield defer.ensureDeferred(self.relay(f"good.{ORIGIN}"))
        self.assertEqual(result.replies[0].code, 250, result.replies[0])
        self.assertIn(b"with ESMTPS", server.messages[0].data)

    @defer.inlineCallbacks
    def test_mismatch(self) -> Any:
        """A mismatching TLSA record: deferred, 4.7.5, the reason names DANE; nothing sent."""
        result, server = yield defer.ensureDeferred(self.relay(f"bad.{ORIGIN}"))
        reply = result.replies[0]
        self.assertEqual((reply.code // 100, reply.enhanced), (4, (4, 7, 5)), reply)
        self.assertIn("DANE", str(reply))
        self.assertEqual(server.messages, [])

    @defer.inlineCallbacks
    def test_stripped(self) -> Any:
        """STARTTLS stripped from a host with TLSA records: deferred, the reason names DANE."""
        result, server = yield defer.ensureDeferred(self.relay(f"strip.{ORIGIN}", False))
        reply = result.replies[0]
        self.assertEqual((reply.code // 100, reply.enhanced), (4, (4, 7, 4)), reply)
        self.assertIn("DANE", str(reply))
        self.assertEqual(server.messages, [])

    @defer.inlineCallbacks
    def test_bogus(self) -> Any:
        """A TLSA record whose signature fails (unbound: SERVFAIL): the host is not used."""
        result, server = yield defer.ensureDeferred(self.relay(f"bogus.{ORIGIN}"))
        reply = result.replies[0]
        self.assertEqual(reply.code // 100, 4, reply)
        self.assertIn("DANE: TLSA lookup", str(reply))
        self.assertEqual(server.messages, [])

    @defer.inlineCallbacks
    def test_unsigned(self) -> Any:
        """An unsigned zone's TLSA records are not DANE: opportunistic delivery, even in clear."""
        result, server = yield defer.ensureDeferred(self.relay("plain.test", starttls=False))
        self.assertEqual(result.replies[0].code, 250, result.replies[0])
        self.assertIn(b"with ESMTP id", server.messages[0].data)
