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
opportunistic TLS.  MTA-STS, its TXT record from unbound and its policy
from a twisted.web HTTPS server with a test CA: enforce delivers to a named
MX over verified TLS and defers for an MX it does not name; testing mode
delivers and reports.  REQUIRETLS mail never leaves in clear.
"""

from __future__ import annotations

import hashlib
import smtplib
import sys
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from twisted.internet import defer, reactor, task, threads
from twisted.internet.ssl import Certificate
from twisted.trial.unittest import TestCase
from twisted.web import resource
from twisted.web.server import Site

from mailframe.address import parseMailbox
from mailframe.backends.memory import MemoryBackend
from mailframe.client import Timeouts, messageFrom
from mailframe.client.mtasts import MTASTS, fetchPolicy
from mailframe.client.relay import SMTPRelay
from mailframe.client.routing import Router
from mailframe.client.tlspolicy import OutboundTLS
from mailframe.config import ServerConfig
from mailframe.envelope import DeliveryResult, Envelope, Recipient
from mailframe.extensions import defaultExtensions
from mailframe.extensions.requiretls import RequireTLS
from mailframe.extensions.starttls import StartTLS
from mailframe.policy._dns import AsyncDNS, isAuthenticated, makeResolver
from mailframe.server import SMTPServerFactory
from mailframe.server.tls import CertificatePair, ServerTLS
from tests._certs import TestCA
from tests.interop._dnspeers import PrivateDNS, Zone
from tests.interop._mailpeers import HOST, TWISTD, Twistd, freePort, listening, scratch
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


def tlsServer(
    case: TestCase, tls: Any, domain: str | tuple[str, ...], extensions: Any = ()
) -> RunningServer:
    """mailframe's server on 127.0.0.1:0 for C{domain}(s), STARTTLS when C{tls}, in memory."""
    offered = [*defaultExtensions(1 << 20), *extensions]
    if tls is not None:
        offered.append(StartTLS(tls))
    backend = MemoryBackend()
    domains = frozenset({domain} if isinstance(domain, str) else domain)
    config = ServerConfig(hostname="mx.test", localDomains=domains)  # type: ignore[arg-type]
    factory = SMTPServerFactory(config, backend, [AcceptLocal()], extensions=offered,
                                clock=reactor)  # type: ignore[arg-type]  # fmt: skip
    port = reactor.listenTCP(0, factory, interface=HOST)  # type: ignore[attr-defined]
    server = RunningServer(factory, backend, port)
    case.addCleanup(_shutdown, server)
    return server


class _Peers(TestCase):
    """The signed zone, NSD, unbound, the policy web server and the relay of a test."""

    timeout = 120

    def setUp(self) -> defer.Deferred[None]:
        self.directory = scratch("mailframe-dane-")
        self.ca = TestCA(str(self.directory / "ca"))
        names = [f"mx-{n}.{ORIGIN}"
                 for n in ("good", "bad", "strip", "bogus", "sts", "stsother", "ststest")]  # fmt: skip
        issued = self.ca.issue("mx", *names, "mx.plain.test")
        self.tls = ServerTLS([CertificatePair(issued.fullchain, issued.privkey)])
        good = _keyHash(issued.fullchain)
        other = _keyHash(self.ca.issue("other", "elsewhere.test").fullchain)
        zones = [
            Zone(ORIGIN, [*_mx("good", good), *_mx("bad", other), *_mx("strip", good),
                          *_mx("bogus", good), *_mx("sts"), *_mx("stsother"), *_mx("ststest"),
                          *(f'_mta-sts.{n} IN TXT "v=STSv1; id=20261203T000000;"'
                            for n in ("sts", "stsother", "ststest")),
                          "big IN TXT " + " ".join(f'"{i:02d}{"x" * 240}"' for i in range(10))],
                 corrupt=[f"_25._tcp.mx-bogus.{ORIGIN}."]),
            Zone("plain.test", ["@ IN MX 10 mx", "mx IN A 127.0.0.1",
                                f"_25._tcp.mx IN TLSA 3 1 1 {other}"], signed=False),
        ]  # fmt: skip
        with open(self.ca.rootFile, "rb") as f:
            self.root = Certificate.loadPEM(f.read())
        self.web = self._policyServer()
        self.reporter = Reporter()
        self.dns = PrivateDNS(Path(self.directory), zones)
        self.addCleanup(threads.deferToThread, self.dns.stop)
        d = threads.deferToThread(self.dns.start)

        def started(_: object) -> None:
            self.resolver = makeResolver(reactor, [(HOST, self.dns.port)], hosts=None,
                                         timeout=(2, 5))  # fmt: skip

        return d.addCallback(started)

    def _policyServer(self) -> int:
        """HTTPS on 127.0.0.1 serving each mta-sts.DOMAIN's policy by the Host header."""
        names = [f"mta-sts.{n}.{ORIGIN}" for n in ("sts", "stsother", "ststest")]
        issued = self.ca.issue("web", *names)
        port = reactor.listenSSL(  # type: ignore[attr-defined]
            0, Site(_Policies()), ServerTLS([CertificatePair(issued.fullchain,
                                                                    issued.privkey)]),
            interface=HOST,
        )  # fmt: skip
        self.addCleanup(port.stopListening)
        return int(port.getHost().port)

    async def relay(
        self,
        domain: str,
        starttls: bool = True,
        env: Envelope | None = None,
        extensions: Any = (),
    ) -> tuple[DeliveryResult, Any]:
        server = tlsServer(self, self.tls if starttls else None, domain, extensions)
        router = Router(self.resolver, port=server.portNumber)
        sts = MTASTS(AsyncDNS(self.resolver, reactor).txt, reactor,
                     fetch=lambda d: fetchPolicy(reactor, d, trustRoot=self.root,
                                                 address=(HOST, self.web), timeout=10),
                     stateDirectory=str(self.directory / "state"))  # fmt: skip
        relay = SMTPRelay(router, reactor, "relay.test", trustRoot=self.root,
                          timeouts=Timeouts(greeting=10, command=10, handshake=10),
                          reporter=self.reporter,
                          tlsPolicy=OutboundTLS(reactor, self.resolver, dane=True,
                                                mtasts=sts))  # fmt: skip
        env = env or envelope(f"bob@{domain}")
        return await relay.relay(env, env.recipients, messageFrom(MESSAGE)), server


class DANEInteropTests(_Peers):
    """DANE, MTA-STS and REQUIRETLS with NSD, unbound and mailframe's STARTTLS server."""

    @defer.inlineCallbacks
    def test_adBit(self) -> Any:
        """unbound's AD bit reaches mailframe's resolver: set for the signed zone only."""
        signed = yield self.resolver.lookupMailExchange(f"good.{ORIGIN}")
        self.assertTrue(isAuthenticated(signed))
        plain = yield self.resolver.lookupMailExchange("plain.test")
        self.assertFalse(isAuthenticated(plain))

    @defer.inlineCallbacks
    def test_truncatedOverTCP(self) -> Any:
        """An answer too large for UDP (1232 octets) comes again over TCP, AD bit kept."""
        from mailframe.policy import _dns

        overTCP: list[object] = []
        original = _dns._DNSSECStream.writeMessage

        def counted(protocol: Any, message: Any) -> None:
            overTCP.append(message)
            original(protocol, message)

        self.patch(_dns._DNSSECStream, "writeMessage", counted)
        result = yield self.resolver.lookupText(f"big.{ORIGIN}")
        self.assertEqual(len(overTCP), 1)
        self.assertTrue(isAuthenticated(result))
        [record] = [rr for rr in result[0] if rr.type == 16]
        self.assertEqual(len(record.payload.data), 10)

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

    @defer.inlineCallbacks
    def test_stsEnforce(self) -> Any:
        """MTA-STS enforce, the MX named, its certificate valid: delivered over TLS."""
        result, server = yield defer.ensureDeferred(self.relay(f"sts.{ORIGIN}"))
        self.assertEqual(result.replies[0].code, 250, result.replies[0])
        self.assertIn(b"with ESMTPS", server.messages[0].data)
        self.assertEqual(self.reporter.results, [("sts", f"sts.{ORIGIN}", None)])
        kept = self.directory / "state" / "mta-sts" / f"sts.{ORIGIN}.json"
        self.assertTrue(kept.exists())

    @defer.inlineCallbacks
    def test_stsEnforceOtherMX(self) -> Any:
        """MTA-STS enforce, an MX the policy does not name: deferred naming MTA-STS."""
        result, server = yield defer.ensureDeferred(self.relay(f"stsother.{ORIGIN}"))
        reply = result.replies[0]
        self.assertEqual((reply.code // 100, reply.enhanced), (4, (4, 7, 5)), reply)
        self.assertIn("MTA-STS", str(reply))
        self.assertEqual(server.messages, [])

    @defer.inlineCallbacks
    def test_stsTesting(self) -> Any:
        """MTA-STS testing, an MX not named: delivered, and the failure reported."""
        result, _ = yield defer.ensureDeferred(self.relay(f"ststest.{ORIGIN}", False))
        self.assertEqual(result.replies[0].code, 250, result.replies[0])
        self.assertEqual(self.reporter.results,
                         [("sts", f"ststest.{ORIGIN}", "validation-failure")])  # fmt: skip

    @defer.inlineCallbacks
    def test_requireTLSWithDANE(self) -> Any:
        """REQUIRETLS to a DANE host offering REQUIRETLS: delivered, REQUIRETLS passed on."""
        env = requiring(f"bob@good.{ORIGIN}")
        result, server = yield defer.ensureDeferred(
            self.relay(f"good.{ORIGIN}", env=env, extensions=[RequireTLS()])
        )
        self.assertEqual(result.replies[0].code, 250, result.replies[0])
        self.assertIn("REQUIRETLS", server.messages[0].envelope.mailParams)

    @defer.inlineCallbacks
    def test_requireTLSNeverInClear(self) -> Any:
        """REQUIRETLS mail to a host without STARTTLS, or an unsigned domain: 550 5.7.10."""
        for domain, starttls in ((f"strip.{ORIGIN}", False), ("plain.test", False),
                                 ("plain.test", True)):  # fmt: skip
            env = requiring(f"bob@{domain}")
            result, server = yield defer.ensureDeferred(
                self.relay(domain, starttls, env=env, extensions=[RequireTLS()])
            )
            reply = result.replies[0]
            self.assertEqual((reply.code, reply.enhanced), (550, (5, 7, 10)), (domain, reply))
            self.assertEqual(server.messages, [])


class _Policies(resource.Resource):
    """The policy of mta-sts.NAME.mailframe.test, by the request's Host."""

    isLeaf = True
    MX = {"sts": "mx-sts", "stsother": "mx-elsewhere", "ststest": "mx-elsewhere"}

    def render_GET(self, request: Any) -> bytes:
        host = (request.getHeader(b"host") or b"").decode().split(":")[0]
        name = host.removeprefix("mta-sts.").split(".")[0]
        mode = "testing" if name == "ststest" else "enforce"
        request.setHeader(b"content-type", b"text/plain")
        return (
            f"version: STSv1\r\nmode: {mode}\r\nmx: {self.MX.get(name, 'none')}.{ORIGIN}\r\n"
            "max_age: 86400\r\n"
        ).encode()


class Reporter:
    def __init__(self) -> None:
        self.results: list[tuple[str, str | None, str | None]] = []

    def record(self, plan: Any, result: str | None, **kw: Any) -> None:
        self.results.append((plan.policyType, plan.policyDomain, result))


def requiring(recipient: str) -> Envelope:
    return Envelope("Q1", parseMailbox("alice@a.example"), {"REQUIRETLS": None},
                    [Recipient(parseMailbox(recipient))])  # fmt: skip


class TwistdTests(_Peers):
    """
    The same zone and resolver behind C{twistd -n mailframe} with a spool:
    its process resolver (dns-server) is unbound, DANE is on by itself
    (auto: the resolver is on loopback), the relay's port setting sends MX
    delivery to the test's server.
    """

    def setUp(self) -> defer.Deferred[None]:
        if not TWISTD.exists():
            self.skipTest(f"no twistd next to {sys.executable}")
        d = super().setUp()
        return d.addCallback(lambda _: self._startTwistd())

    def _startTwistd(self) -> defer.Deferred[None]:
        self.server = tlsServer(self, self.tls, (f"good.{ORIGIN}", f"bad.{ORIGIN}"))
        config = self.directory / "mailframe.toml"
        config.write_text(f'[relay]\nport = {self.server.portNumber}\n'
                          f'ca-file = "{self.ca.rootFile}"\n')  # fmt: skip
        self.port = freePort()
        self.twistd = Twistd(
            self.directory, "--config", str(config), "--listen",
            f"tcp:{self.port}:interface={HOST}", "--hostname", "relay.test",
            "--domain", "local.test", "--relay-network", "127.0.0.0/8",
            "--spool", str(self.directory / "spool"), "--retry-initial", "1h",
            "--dns-server", self.dns.server,
        )  # fmt: skip
        self.addCleanup(threads.deferToThread, self.twistd.stop)
        return threads.deferToThread(self.twistd.start, lambda: listening(self.port))

    def send(self, recipient: str) -> defer.Deferred[Any]:
        def run() -> Any:
            with smtplib.SMTP(HOST, self.port, timeout=15) as client:
                return client.sendmail("alice@local.test", [recipient],
                                       b"Subject: DANE\r\n\r\nHello.\r\n")  # fmt: skip

        return threads.deferToThread(run)

    @defer.inlineCallbacks
    def until(self, condition: Any, what: str) -> Any:
        for _ in range(600):  # 60 s at most
            if condition():
                return
            yield task.deferLater(reactor, 0.1, lambda: None)  # type: ignore[arg-type]
        raise AssertionError(f"timed out waiting for {what}:\n{self.twistd.text()[-3000:]}")

    @defer.inlineCallbacks
    def test_twistd(self) -> Any:
        """A matching TLSA record delivers; a mismatching one defers, logged naming DANE."""
        yield self.send(f"bob@good.{ORIGIN}")
        yield self.until(lambda: len(self.server.messages) == 1, "the delivery")
        self.assertIn(b"with ESMTPS", self.server.messages[0].data)
        yield self.send(f"bob@bad.{ORIGIN}")
        yield self.until(lambda: "DANE: the server's certificate" in self.twistd.text(),
                         "the DANE refusal")  # fmt: skip
        self.assertEqual(len(self.server.messages), 1)
        self.assertIn("; outbound TLS: DANE on", self.twistd.text())
