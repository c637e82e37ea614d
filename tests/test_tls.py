"""
Tests for L{mailframe.server.tls}: loading certificate chains and keys, SNI,
reloading changed files, the self-signed development certificate, and
real handshakes over loopback with the standard library's ssl client
against a test CA (chain verification, TLS 1.1 refused).
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import stat
import warnings
from typing import Any

from OpenSSL import SSL
from twisted.internet import defer, protocol, reactor, threads
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from mailframe.server import tls
from tests._certs import TestCA

TIMEOUT = 10.0


class LoadTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.ca = TestCA(self.mktemp())
        self.mx = self.ca.issue("mx", "mx.test", "localhost")

    def test_chainAndKey(self) -> None:
        """A fullchain file and its key load: names, the chain, TLS 1.2 minimum."""
        loaded = tls.loadCertificatePair(tls.CertificatePair(self.mx.fullchain, self.mx.privkey))
        self.assertEqual(loaded.names, ("mx.test", "localhost"))
        self.assertEqual(len(loaded.options.extraCertChain), 1)
        context = loaded.options.getContext()
        options = context.set_options(0)  # returns the options in force
        self.assertTrue(options & SSL.OP_CIPHER_SERVER_PREFERENCE)
        self.assertTrue(options & SSL.OP_NO_COMPRESSION)

    def test_keyInCertificateFile(self) -> None:
        """A single file with the key and the chain is enough."""
        loaded = tls.loadCertificatePair(tls.CertificatePair(self.mx.combined))
        self.assertEqual(loaded.names, ("mx.test", "localhost"))

    def test_errors(self) -> None:
        """Missing files, no PEM, no key and a key of another certificate are one-line errors."""
        other = self.ca.issue("other", "other.test")
        missing = self.mx.fullchain + ".missing"
        notPem = self.mktemp()
        with open(notPem, "w") as f:
            f.write("hello\n")
        cases = [
            (tls.CertificatePair(missing, self.mx.privkey), f"cannot read {missing}"),
            (tls.CertificatePair(notPem, self.mx.privkey), "no PEM certificate"),
            (tls.CertificatePair(self.mx.fullchain), "no PEM private key"),
            (tls.CertificatePair(self.mx.fullchain, notPem), "no PEM private key"),
            (tls.CertificatePair(self.mx.fullchain, other.privkey), "does not match"),
        ]
        for pair, words in cases:
            e = self.assertRaises(ValueError, tls.loadCertificatePair, pair)
            self.assertIn(words, str(e))
            self.assertNotIn("\n", str(e))
        self.assertRaises(ValueError, tls.ServerTLS, [])

    def test_provides(self) -> None:
        """ServerTLS provides IOpenSSLServerConnectionCreator and has getContext."""
        server = tls.ServerTLS([tls.CertificatePair(self.mx.fullchain, self.mx.privkey)])
        verifyObject(IOpenSSLServerConnectionCreator, server)
        self.assertIsInstance(server.serverConnectionForTLS(None), SSL.Connection)

    def test_expiredWarns(self) -> None:
        """An expired certificate loads, with a warning in the log."""
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        old = self.ca.issue("old", "old.test", expired=True)
        tls.ServerTLS([tls.CertificatePair(old.fullchain, old.privkey)])
        self.assertTrue(
            any(e["log_level"] == LogLevel.warn and "expired" in e["log_format"] for e in events)
        )


class ReloadTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.ca = TestCA(self.mktemp())
        self.now = 0.0
        self.first = self.ca.issue("first", "mx.test")
        self.second = self.ca.issue("second", "new.test")
        self.live = self.mktemp()
        os.makedirs(self.live)
        self.cert = os.path.join(self.live, "fullchain.pem")
        self.key = os.path.join(self.live, "privkey.pem")
        self.install(self.first)

    def install(self, issued: Any) -> None:
        shutil.copy(issued.fullchain, self.cert + ".tmp")
        shutil.copy(issued.privkey, self.key + ".tmp")
        os.replace(self.cert + ".tmp", self.cert)
        os.replace(self.key + ".tmp", self.key)

    def test_renewal(self) -> None:
        """Renewed files are loaded at the next handshake after checkInterval."""
        server = tls.ServerTLS(
            [tls.CertificatePair(self.cert, self.key)], checkInterval=60, now=lambda: self.now
        )
        before = server.getContext()
        self.install(self.second)
        self.now = 30
        self.assertIs(server.getContext(), before)
        self.now = 61
        self.assertIsNot(server.getContext(), before)
        self.assertEqual(server.names, ("new.test",))

    def test_badRenewalKeepsOld(self) -> None:
        """A half-written renewal (a key of another certificate) keeps the old context."""
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        server = tls.ServerTLS(
            [tls.CertificatePair(self.cert, self.key)], checkInterval=1, now=lambda: self.now
        )
        before = server.getContext()
        shutil.copy(self.second.fullchain, self.cert)  # the key is still the first one's
        self.now = 5
        self.assertIs(server.getContext(), before)
        self.now = 10
        server.getContext()
        errors = [e for e in events if e["log_level"] == LogLevel.error]
        self.assertEqual(len(errors), 1)  # logged once per distinct problem


class SelfSignedTests(SynchronousTestCase):
    def test_createdOnce(self) -> None:
        """The development certificate is made once, 0600, for the host name, and warned about."""
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        directory = self.mktemp()
        os.makedirs(directory)
        path = tls.selfSignedCertificate(directory, "mx.test")
        self.assertEqual(os.path.basename(path), "mailframe-selfsigned-mx.test.pem")
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        with open(path, "rb") as f:
            first = f.read()
        self.assertEqual(tls.selfSignedCertificate(directory, "mx.test"), path)
        with open(path, "rb") as f:
            self.assertEqual(f.read(), first)
        server = tls.ServerTLS([tls.CertificatePair(path)])
        self.assertEqual(server.names, ("mx.test",))
        warnings = [e for e in events if "self-signed" in e.get("log_format", "")]
        self.assertEqual(len(warnings), 2)
        self.assertTrue(all(e["log_level"] == LogLevel.warn for e in warnings))

    def test_expiredReplaced(self) -> None:
        """An expired development certificate is replaced."""
        directory = self.mktemp()
        os.makedirs(directory)
        path = tls.selfSignedCertificate(directory, "mx.test", days=0)
        with open(path, "rb") as f:
            first = f.read()
        tls.selfSignedCertificate(directory, "mx.test")
        with open(path, "rb") as f:
            self.assertNotEqual(f.read(), first)


class Echo(protocol.Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]


def handshake(port: int, context: ssl.SSLContext, name: str | None) -> tuple[Any, str, str]:
    """Connect, handshake, echo one line: (peer cert, version, echoed)."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    with raw, context.wrap_socket(raw, server_hostname=name) as s:
        s.sendall(b"ping\r\n")
        data = s.recv(100)
        return s.getpeercert(), s.version() or "", data.decode()


class HandshakeTests(TestCase):
    """A TLS server in the trial reactor; stdlib ssl clients in threads."""

    timeout = 60

    def setUp(self) -> None:
        self.ca = TestCA(self.mktemp())
        mx = self.ca.issue("mx", "mx.test", "localhost")
        other = self.ca.issue("other", "other.test")
        wild = self.ca.issue("wild", "*.wild.test")
        self.server = tls.ServerTLS(
            [tls.CertificatePair(p.fullchain, p.privkey) for p in (mx, other, wild)]
        )
        factory = tls.implicitTLS(self.server, protocol.Factory.forProtocol(Echo))
        self.port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(self.port.stopListening)

    def client(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.ca.rootFile)
        return context

    def connect(self, context: ssl.SSLContext, name: str | None) -> defer.Deferred[Any]:
        d = threads.deferToThread(handshake, self.port.getHost().port, context, name)
        return d.addTimeout(TIMEOUT * 2, reactor)  # type: ignore[arg-type]

    def subject(self, cert: Any) -> str:
        return dict(x[0] for x in cert["subject"])["commonName"]  # type: ignore[no-any-return]

    @defer.inlineCallbacks
    def test_verifiedChain(self) -> Any:
        """A client that trusts only the root verifies the chain the server sends."""
        cert, version, echoed = yield self.connect(self.client(), "mx.test")
        self.assertEqual(self.subject(cert), "mx.test")
        self.assertIn(version, ("TLSv1.2", "TLSv1.3"))
        self.assertEqual(echoed, "ping\r\n")

    @defer.inlineCallbacks
    def test_sni(self) -> Any:
        """SNI picks the certificate: exact names, then a wildcard; else the first."""
        cert, _, _ = yield self.connect(self.client(), "other.test")
        self.assertEqual(self.subject(cert), "other.test")
        cert, _, _ = yield self.connect(self.client(), "a.wild.test")
        self.assertEqual(self.subject(cert), "*.wild.test")
        loose = self.client()
        loose.check_hostname = False
        cert, _, _ = yield self.connect(loose, "unknown.test")
        self.assertEqual(self.subject(cert), "mx.test")

    @defer.inlineCallbacks
    def test_wrongName(self) -> Any:
        """A client checking a name no certificate has refuses the handshake."""
        with self.assertRaises(ssl.SSLCertVerificationError):
            yield self.connect(self.client(), "nosuch.example")

    @defer.inlineCallbacks
    def test_untrusted(self) -> Any:
        """A client that does not trust the test root refuses the server."""
        context = ssl.create_default_context(cafile=TestCA(self.mktemp()).rootFile)
        with self.assertRaises(ssl.SSLCertVerificationError):
            yield self.connect(context, "mx.test")

    @defer.inlineCallbacks
    def test_tls12(self) -> Any:
        """A TLS 1.2 client is served."""
        context = self.client()
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        _, version, _ = yield self.connect(context, "mx.test")
        self.assertEqual(version, "TLSv1.2")

    @defer.inlineCallbacks
    def test_tls11Refused(self) -> Any:
        """A client that speaks at most TLS 1.1 gets the server's protocol_version alert."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                context.minimum_version = ssl.TLSVersion.TLSv1
                context.maximum_version = ssl.TLSVersion.TLSv1_1
            context.set_ciphers("ALL:@SECLEVEL=0")
        except (ValueError, ssl.SSLError) as e:
            raise self.skipTest(f"this OpenSSL cannot even offer TLS 1.1: {e}")
        try:
            yield self.connect(context, "mx.test")
        except ssl.SSLError as e:
            self.assertIn("PROTOCOL_VERSION", str(e))  # the server's alert
        else:
            self.fail("a TLS 1.1 handshake succeeded")
