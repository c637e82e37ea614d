"""
The PROXY protocol (HAProxy's v1 and v2): the sans-IO header reader, and
L{ProxyHeaderFactory} in front of an SMTP server in memory: no reply before
the header, the header's client address used by every decision (relay
networks, the Received field, the log), untrusted proxies and late or bad
headers dropped; and C{twistd mailframe --listen haproxy:...} over loopback.
"""

from __future__ import annotations

import socket
import ssl
import struct
from collections.abc import Generator
from ipaddress import ip_address
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mailframe.app import tap
from mailframe.backends.memory import MemoryBackend
from mailframe.config import ServerConfig
from mailframe.protocol.proxy import (
    V2_SIGNATURE,
    ProxyHeader,
    ProxyHeaderError,
    ProxyHeaderReader,
)
from mailframe.server import SMTPServerFactory
from mailframe.server.proxy import ProxyHeaderFactory, splitProxyEndpoint
from tests.interop._support import inThread
from tests.test_server import Listed, codes

V1 = b"PROXY TCP4 203.0.113.9 192.0.2.1 40000 25\r\n"


def v2(
    source: str = "203.0.113.9",
    destination: str = "192.0.2.1",
    ports: tuple[int, int] = (40000, 25),
    command: int = 1,
    tlvs: bytes = b"",
) -> bytes:
    src, dst = ip_address(source), ip_address(destination)
    family = 0x11 if src.version == 4 else 0x21
    body = src.packed + dst.packed + struct.pack("!HH", *ports) + tlvs
    return V2_SIGNATURE + bytes([0x20 | command, family]) + struct.pack("!H", len(body)) + body


def read(*pieces: bytes) -> tuple[ProxyHeader, bytes] | None:
    reader = ProxyHeaderReader()
    result = None
    for piece in pieces:
        result = reader.feed(piece)
    return result


class ReaderTests(SynchronousTestCase):
    def test_v1(self) -> None:
        """A v1 line gives both addresses and the bytes after it."""
        self.assertEqual(
            read(V1 + b"EHLO x\r\n"),
            (ProxyHeader(1, ("203.0.113.9", 40000), ("192.0.2.1", 25)), b"EHLO x\r\n"),
        )

    def test_v1IPv6AndUnknown(self) -> None:
        """TCP6 addresses are read; UNKNOWN has none."""
        header, _ = read(b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n")  # type: ignore[misc]
        self.assertEqual(header.source, ("2001:db8::1", 1))
        self.assertEqual(read(b"PROXY UNKNOWN whatever\r\n"), (ProxyHeader(1, None, None), b""))

    def test_v1Refused(self) -> None:
        """Bad v1 headers raise: wrong family, bad port, not PROXY, too long."""
        for bad in (
            b"PROXY TCP4 2001:db8::1 192.0.2.1 1 2\r\n",
            b"PROXY TCP4 203.0.113.9 192.0.2.1 1 65536\r\n",
            b"PROXY TCP4 203.0.113.9 192.0.2.1 01 2\r\n",
            b"PROXY TCP4 203.0.113.9 192.0.2.1 1\r\n",
            b"EHLO client.example\r\n",
            b"PROXY " + b"x" * 200,
        ):
            self.assertRaises(ProxyHeaderError, read, bad)

    def test_v2(self) -> None:
        """v2 over IPv4 and IPv6, with TLVs skipped."""
        header, rest = read(v2(tlvs=b"\x04\x00\x01x") + b"EHLO")  # type: ignore[misc]
        self.assertEqual(header, ProxyHeader(2, ("203.0.113.9", 40000), ("192.0.2.1", 25)))
        self.assertEqual(rest, b"EHLO")
        header, _ = read(v2("2001:db8::9", "2001:db8::1"))  # type: ignore[misc]
        self.assertEqual(header.source, ("2001:db8::9", 40000))

    def test_v2Local(self) -> None:
        """A v2 LOCAL command (the proxy's health check) carries no client."""
        self.assertEqual(read(v2(command=0)), (ProxyHeader(2, None, None), b""))

    def test_v2Refused(self) -> None:
        """A bad signature, version or command raises."""
        self.assertRaises(ProxyHeaderError, read, b"\r\n\r\nX")
        good = v2()
        self.assertRaises(ProxyHeaderError, read, good[:12] + b"\x11" + good[13:])
        self.assertRaises(ProxyHeaderError, read, good[:12] + b"\x2f" + good[13:])

    @given(st.sampled_from([V1, v2(), v2("2001:db8::9", "2001:db8::1")]), st.data())
    def test_anyCutting(self, header: bytes, data: st.DataObject) -> None:
        """However the bytes are cut, the same header and the same rest come out."""
        stream = header + b"EHLO x\r\n"
        cuts = sorted(data.draw(st.sets(st.integers(1, len(stream) - 1), max_size=8)))
        pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
        reader = ProxyHeaderReader()
        found = None
        rest = b""
        for piece in pieces:
            if found is None:
                found = reader.feed(piece)
                if found is not None:
                    rest = found[1]
            else:
                rest += piece
        self.assertEqual((found[0] if found else None, rest), (read(stream)[0], b"EHLO x\r\n"))  # type: ignore[index]


class WrapperTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.backend = MemoryBackend()

    def connect(self, proxy: str = "127.0.0.1", **settings: Any) -> tuple[Any, StringTransport]:
        config = ServerConfig(
            hostname="mx.test", localDomains=frozenset({"example.com"}), **settings
        )
        smtp = SMTPServerFactory(config, self.backend, [Listed("user")], clock=self.clock)
        self.smtp = smtp
        factory = ProxyHeaderFactory(smtp, ["127.0.0.0/8"], self.clock, timeout=10.0)
        proto = factory.buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", proxy, 5555))
        proto.makeConnection(transport)
        return proto, transport

    def test_noReplyBeforeHeader(self) -> None:
        """Nothing is sent until the header is read; then the greeting."""
        proto, t = self.connect()
        proto.dataReceived(V1[:10])
        self.assertEqual(t.value(), b"")
        self.assertEqual(self.smtp.sessions, set())
        proto.dataReceived(V1[10:])
        self.assertEqual(codes(t.value()), ["220"])
        (session,) = self.smtp.sessions
        self.assertEqual(
            (session.session.peerHost, session.session.peerPort), ("203.0.113.9", 40000)
        )
        self.assertEqual(session.session.localHost, "192.0.2.1")

    def test_headerAddressDecidesRelay(self) -> None:
        """The relay decision uses the client's address, not the proxy's."""
        proto, t = self.connect(relayNetworks=("127.0.0.0/8",))
        proto.dataReceived(V1 + b"EHLO c\r\nMAIL FROM:<a@b.example>\r\n")
        t.clear()
        proto.dataReceived(b"RCPT TO:<victim@remote.example>\r\n")
        self.assertEqual(codes(t.value()), ["550 5.7.1"])

        proto, t = self.connect(relayNetworks=("203.0.113.0/24",))
        proto.dataReceived(V1 + b"EHLO c\r\nMAIL FROM:<a@b.example>\r\n")
        t.clear()
        proto.dataReceived(b"RCPT TO:<friend@remote.example>\r\n")
        self.assertEqual(codes(t.value()), ["250 2.1.5"])

    def test_receivedNamesTheClient(self) -> None:
        """The Received field names the client from the header."""
        proto, _ = self.connect()
        proto.dataReceived(
            v2() + b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<user@example.com>\r\n"
            b"DATA\r\nSubject: x\r\n\r\nhi\r\n.\r\n"
        )
        received = self.backend.messages[0].data.split(b"\r\n\r\n")[0]
        self.assertIn(b"[203.0.113.9]", received)
        self.assertNotIn(b"127.0.0.1", received)

    def test_untrustedDropped(self) -> None:
        """A connection from an address that is not a trusted proxy is dropped unread."""
        proto, t = self.connect(proxy="198.51.100.7")
        self.assertTrue(t.disconnected)
        proto.dataReceived(V1)
        self.assertEqual(t.value(), b"")
        self.assertEqual(self.smtp.sessions, set())

    def test_badHeaderDropped(self) -> None:
        """A client talking SMTP where the header should be is dropped, unanswered."""
        proto, t = self.connect()
        proto.dataReceived(b"EHLO client.example\r\n")
        self.assertTrue(t.disconnected)
        self.assertEqual(t.value(), b"")

    def test_lateHeaderDropped(self) -> None:
        """No header within the time limit: dropped."""
        proto, t = self.connect()
        self.clock.advance(10.0)
        self.assertTrue(t.disconnected)
        proto.connectionLost(None)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_localCommandUsesProxyAddress(self) -> None:
        """A v2 LOCAL header (a health check) is the proxy's own connection."""
        proto, _ = self.connect()
        proto.dataReceived(v2(command=0))
        (session,) = self.smtp.sessions
        self.assertEqual(session.session.peerHost, "127.0.0.1")

    def test_split(self) -> None:
        """haproxy:INNER is recognised, anything else passes through."""
        self.assertEqual(splitProxyEndpoint("haproxy:tcp:25"), (True, "tcp:25"))
        self.assertEqual(splitProxyEndpoint("tcp:25"), (False, "tcp:25"))


class TwistdProxyTests(TestCase):
    """twistd mailframe --listen haproxy:...: what the issue tried from outside."""

    timeout = 60

    @defer.inlineCallbacks
    def test_relayDecidedByTheHeader(self) -> Generator[Any, Any, None]:
        """A relay network naming the proxy does not let a proxied stranger relay."""
        options = tap.Options()
        options.parseOptions([
            "--listen", "haproxy:tcp:0:interface=127.0.0.1", "--hostname", "mx.test",
            "--deliver", "memory", "--relay-network", "127.0.0.1/32",
            "--greet-delay", "0", "--spool", self.mktemp(), "--quiet",
        ])  # fmt: skip
        service = tap.makeService(options)
        service.startService()
        self.addCleanup(service.stopService)
        listening = next(s for s in service if hasattr(s, "_waitingForPort"))
        port = listening._waitingForPort.result.getHost().port  # listenTCP is synchronous

        def talk(header: bytes) -> list[bytes]:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                f = sock.makefile("rb")
                sock.sendall(header)
                out = [f.readline()]
                for line in (b"EHLO c\r\n", b"MAIL FROM:<a@b.example>\r\n",
                             b"RCPT TO:<victim@remote.example>\r\n", b"QUIT\r\n"):  # fmt: skip
                    sock.sendall(line)
                    reply = f.readline()
                    while reply[3:4] == b"-":
                        reply = f.readline()
                    out.append(reply[:3])
                return out

        stranger = yield inThread(talk, V1)
        self.assertEqual(stranger[1:], [b"250", b"250", b"550", b"221"])
        friend = yield inThread(talk, v2("127.0.0.1", "127.0.0.1"))
        self.assertEqual(friend[1:], [b"250", b"250", b"250", b"221"])


class ProxiedTLSTests(TestCase):
    """TLS behind the PROXY header, over loopback: STARTTLS and implicit TLS."""

    timeout = 60

    def start(self, implicit: bool) -> tuple[int, MemoryBackend, Any]:
        from mailframe.extensions import defaultExtensions
        from mailframe.extensions.starttls import StartTLS
        from mailframe.server.tls import CertificatePair, ServerTLS, implicitTLS
        from tests._certs import TestCA

        ca = TestCA(self.mktemp())
        issued = ca.issue("server", "mx.test")
        tls = ServerTLS([CertificatePair(issued.fullchain, issued.privkey)])
        backend = MemoryBackend()
        extensions = [*defaultExtensions(1 << 20)] + ([] if implicit else [StartTLS(tls)])
        config = ServerConfig(hostname="mx.test", localDomains=frozenset({"example.com"}))  # type: ignore[arg-type]
        smtp = SMTPServerFactory(
            config,
            backend,
            [Listed("user")],
            extensions=extensions,
            clock=reactor,  # type: ignore[arg-type]
        )
        inner: Any = implicitTLS(tls, smtp) if implicit else smtp
        port = reactor.listenTCP(  # type: ignore[attr-defined]
            0, ProxyHeaderFactory(inner, ["127.0.0.0/8"], reactor), interface="127.0.0.1"
        )
        self.addCleanup(port.stopListening)
        context = ssl.create_default_context(cafile=ca.rootFile)
        return port.getHost().port, backend, context

    def send(self, port: int, context: Any, implicit: bool) -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            raw.sendall(V1)
            sock: Any = raw
            if implicit:
                sock = context.wrap_socket(raw, server_hostname="mx.test")
            f = sock.makefile("rb")

            def command(line: bytes) -> bytes:
                if line:
                    sock.sendall(line)
                reply = f.readline()
                while reply[3:4] == b"-":
                    reply = f.readline()
                return reply[:3]

            assert command(b"") == b"220"
            if not implicit:
                assert command(b"EHLO c\r\n") == b"250"
                assert command(b"STARTTLS\r\n") == b"220"
                sock = context.wrap_socket(raw, server_hostname="mx.test")
                f = sock.makefile("rb")
            for line, code in [
                (b"EHLO c\r\n", b"250"),
                (b"MAIL FROM:<a@b.example>\r\n", b"250"),
                (b"RCPT TO:<user@example.com>\r\n", b"250"),
                (b"DATA\r\n", b"354"),
                (b"Subject: x\r\n\r\nhi\r\n.\r\n", b"250"),
                (b"QUIT\r\n", b"221"),
            ]:
                assert command(line) == code, (line, code)

    @defer.inlineCallbacks
    def test_startTLSAndImplicit(self) -> Generator[Any, Any, None]:
        """The session learns of the handshake and names the header's client, under TLS."""
        for implicit in (False, True):
            port, backend, context = self.start(implicit)
            yield inThread(self.send, port, context, implicit)
            received = backend.messages[0].data.split(b"\r\n\r\n")[0]
            self.assertIn(b"[203.0.113.9]", received)
            self.assertIn(b"with ESMTPS", received)
