"""
XCLIENT (Postfix's extension): the core starting a session over, the
extension's syntax and who may use it, and the server in memory: the named
client's address decides relaying, and names it in the Received field;
strangers are refused; and swaks's XCLIENT options against a server on
loopback.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mailframe.app import tap
from mailframe.backends.memory import MemoryBackend
from mailframe.config import ServerConfig
from mailframe.envelope import SessionInfo
from mailframe.extensions import defaultExtensions
from mailframe.extensions.xclient import XClient
from mailframe.protocol import LocalProtocolError, ServerConnection
from mailframe.protocol._state import State
from mailframe.reply import Reply
from mailframe.results import IPRevResult
from mailframe.server import SMTPServerFactory
from tests.interop._support import SWAKS, runSwaks
from tests.test_server import Listed, codes


class CoreRestartTests(SynchronousTestCase):
    """ServerConnection.restart: HELO forgotten, the client greets again."""

    def greeted(self) -> ServerConnection:
        from mailframe import reply as R

        conn = ServerConnection()
        conn.send(R.Reply(220, None, "mx ESMTP"))
        conn.receiveData(b"EHLO c\r\n")
        conn.nextEvent()
        conn.send(R.Reply(250, None, ("mx", "PIPELINING")))
        return conn

    def test_restart(self) -> None:
        conn = self.greeted()
        self.assertEqual(conn.state, State.READY)
        conn.restart()
        self.assertEqual(
            (conn.state, conn.heloName, conn.extended), (State.CONNECTED, None, False)
        )
        self.assertNotIn("PIPELINING", conn.extensions)

    def test_restartRejected(self) -> None:
        conn = self.greeted()
        conn.restart(rejected=True)
        self.assertEqual(conn.state, State.REJECTED)

    def test_notInTransaction(self) -> None:
        from mailframe import reply as R

        conn = self.greeted()
        conn.receiveData(b"MAIL FROM:<a@b.c>\r\n")
        conn.nextEvent()
        self.assertRaises(LocalProtocolError, conn.restart)  # a reply is due
        conn.send(R.Reply(250, (2, 1, 0), "OK"))
        self.assertRaises(LocalProtocolError, conn.restart)  # in a transaction


class ParseTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.ext = XClient(["127.0.0.0/8"])
        self.session = SessionInfo("s1", "127.0.0.1", 4000, "127.0.0.1", 25, "mx.test")

    def parse(self, text: str) -> Any:
        return self.ext.parse(text, self.session)

    def test_attributes(self) -> None:
        facts = self.parse(
            "NAME=mail.example.org ADDR=192.0.2.7 PORT=40123 HELO=mail.example.org "
            "LOGIN=ann PROTO=ESMTP DESTADDR=IPV6:2001:db8::25 DESTPORT=25"
        )
        self.assertEqual(
            facts,
            {
                "host": "192.0.2.7",
                "port": 40123,
                "iprev": IPRevResult("pass", "192.0.2.7", ("mail.example.org",)),
                "heloName": "mail.example.org",
                "login": "ann",
                "localHost": "2001:db8::25",
                "localPort": 25,
            },
        )

    def test_specialValues(self) -> None:
        """[UNAVAILABLE] and [TEMPUNAVAIL]: no name, a temporary failure, nothing set."""
        self.assertEqual(
            self.parse("NAME=[UNAVAILABLE] ADDR=10.0.0.1")["iprev"],
            IPRevResult("fail", "10.0.0.1"),
        )
        self.assertEqual(self.parse("NAME=[TEMPUNAVAIL]")["iprev"].result, "temperror")
        self.assertEqual(self.parse("ADDR=[UNAVAILABLE] LOGIN=[UNAVAILABLE]"), {})

    def test_xtext(self) -> None:
        self.assertEqual(self.parse("HELO=a+2Bb.example")["heloName"], "a+b.example")

    def test_refused(self) -> None:
        for text in ("", "NAME", "FOO=bar", "ADDR=999.1.1.1", "ADDR=2001:db8::1",
                     "ADDR=IPV6:10.0.0.1", "PORT=65536", "PORT=-1", "NAME=bad_name!",
                     "NAME=10.0.0.1x..", "NAME=10.0.0.1", "PROTO=HTTP", "HELO=a+20b", "HELO=+ZZ",
                     "LOGIN=" + "x" * 256):  # fmt: skip
            reply = self.parse(text)
            self.assertIsInstance(reply, Reply, text)
            self.assertEqual((reply.code, reply.enhanced), (501, (5, 5, 4)), text)


class ServerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.backend = MemoryBackend()

    def connect(
        self, peer: str = "127.0.0.1", relay: tuple[str, ...] = ("127.0.0.0/8",)
    ) -> tuple[Any, StringTransport]:
        config = ServerConfig(
            hostname="mx.test", localDomains=frozenset({"example.com"}), relayNetworks=relay
        )
        factory = SMTPServerFactory(
            config,
            self.backend,
            [Listed("user")],
            extensions=[*defaultExtensions(1000), XClient(["127.0.0.0/8"])],
            clock=self.clock,
        )
        proto = factory.buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", peer, 5555))
        proto.makeConnection(transport)
        transport.clear()
        return proto, transport

    def test_offeredToTheFrontEndOnly(self) -> None:
        proto, t = self.connect()
        proto.dataReceived(b"EHLO front\r\n")
        self.assertIn(b"XCLIENT NAME ADDR PORT PROTO HELO LOGIN DESTADDR DESTPORT", t.value())
        proto, t = self.connect(peer="198.51.100.1")
        proto.dataReceived(b"EHLO stranger\r\n")
        self.assertNotIn(b"XCLIENT", t.value())
        t.clear()
        proto.dataReceived(b"XCLIENT ADDR=127.0.0.1\r\n")
        self.assertEqual(codes(t.value()), ["550 5.7.0"])
        self.assertEqual(proto.session.peerHost, "198.51.100.1")

    def test_namedClientDecidesRelay(self) -> None:
        """The front end may relay; the client it names may not; the greeting starts over."""
        proto, t = self.connect()
        proto.dataReceived(b"EHLO front\r\nXCLIENT ADDR=203.0.113.9 NAME=client.example\r\n")
        self.assertEqual(codes(t.value())[-1], "220")
        self.assertIn(b"220 mx.test", t.value())
        t.clear()
        proto.dataReceived(b"MAIL FROM:<a@b.example>\r\n")
        self.assertEqual(codes(t.value()), ["503"])  # EHLO again first (none offered now)
        t.clear()
        proto.dataReceived(b"EHLO client.example\r\nMAIL FROM:<a@b.example>\r\n")
        self.assertIn(b"XCLIENT", t.value())  # still offered: the front end is trusted
        t.clear()
        proto.dataReceived(b"RCPT TO:<victim@remote.example>\r\nRCPT TO:<user@example.com>\r\n")
        self.assertEqual(codes(t.value()), ["550 5.7.1", "250 2.1.5"])
        t.clear()
        proto.dataReceived(b"DATA\r\nSubject: x\r\n\r\nhi\r\n.\r\n")
        self.assertEqual(codes(t.value()), ["354", "250 2.0.0"])
        received = self.backend.messages[0].data.split(b"\r\n\r\n")[0]
        self.assertIn(b"from client.example ([203.0.113.9])", received)
        self.assertNotIn(b"127.0.0.1", received)
        snapshot = self.backend.messages[0].envelope.session
        self.assertEqual((snapshot.peerHost, snapshot.peerName), ("203.0.113.9", "client.example"))
        # a second XCLIENT is judged by the front end's address, not the named client's
        t.clear()
        proto.dataReceived(b"EHLO again\r\nXCLIENT ADDR=127.0.0.2\r\n")
        self.assertIn(b"XCLIENT", t.value())
        self.assertEqual(codes(t.value())[-1], "220")
        self.assertEqual(
            (proto.session.peerHost, proto.session.frontEnd), ("127.0.0.2", "127.0.0.1")
        )

    def test_notInTransaction(self) -> None:
        proto, t = self.connect()
        proto.dataReceived(b"EHLO front\r\nMAIL FROM:<a@b.example>\r\n")
        t.clear()
        proto.dataReceived(b"XCLIENT ADDR=203.0.113.9\r\n")
        self.assertEqual(codes(t.value()), ["503 5.5.1"])
        self.assertEqual(proto.session.peerHost, "127.0.0.1")

    def test_beforeEHLO(self) -> None:
        """Not offered yet: a front end is told to send EHLO, a stranger refused."""
        proto, t = self.connect()
        proto.dataReceived(b"XCLIENT ADDR=203.0.113.9\r\n")
        self.assertEqual(codes(t.value()), ["503"])  # no EHLO: no enhanced codes yet

    def test_login(self) -> None:
        """LOGIN marks the session authenticated as the front end's user (may relay)."""
        proto, t = self.connect(relay=())
        proto.dataReceived(b"EHLO front\r\nXCLIENT ADDR=203.0.113.9 LOGIN=ann\r\n")
        self.assertEqual(proto.session.authenticated, "ann")
        t.clear()
        proto.dataReceived(
            b"EHLO c\r\nMAIL FROM:<ann@example.com>\r\nRCPT TO:<friend@remote.example>\r\n"
        )
        self.assertEqual(codes(t.value())[-1], "250 2.1.5")

    def test_badSyntax(self) -> None:
        proto, t = self.connect()
        proto.dataReceived(b"EHLO front\r\n")
        t.clear()
        proto.dataReceived(b"XCLIENT FOO=bar\r\nXCLIENT\r\n")
        self.assertEqual(codes(t.value()), ["501 5.5.4", "501 5.5.4"])
        self.assertIsNone(proto.session.frontEnd)


class TwistdSwaksTests(TestCase):
    """swaks --xclient-* against twistd mailframe --xclient-network, over loopback."""

    timeout = 60
    if not os.path.exists(SWAKS) and not os.environ.get("MAILFRAME_REQUIRE_INTEROP"):
        skip = "swaks is not installed (Debian package swaks)"

    @defer.inlineCallbacks
    def test_swaks(self) -> Generator[Any, Any, None]:
        options = tap.Options()
        options.parseOptions([
            "--listen", "tcp:0:interface=127.0.0.1", "--hostname", "mx.test",
            "--domain", "example.com", "--deliver", "memory", "--greet-delay", "0",
            "--relay-network", "127.0.0.0/8", "--xclient-network", "127.0.0.1/32",
            "--spool", self.mktemp(), "--quiet",
        ])  # fmt: skip
        service = tap.makeService(options)
        service.startService()
        self.addCleanup(service.stopService)
        listening = next(s for s in service if hasattr(s, "_waitingForPort"))
        port = listening._waitingForPort.result.getHost().port

        class Server:
            address = f"127.0.0.1:{port}"

        home = self.mktemp()
        os.makedirs(home)

        def swaks(*args: str) -> defer.Deferred[tuple[bytes, bytes, int]]:
            return runSwaks(Server, "--from", "a@b.example", "--helo", "front.test",  # type: ignore[arg-type]
                            *args, home=home)  # fmt: skip

        out, _, code = yield swaks("--to", "victim@remote.example",
                                     "--xclient-addr", "203.0.113.9",
                                     "--xclient-name", "client.example")  # fmt: skip
        text = out.decode()
        self.assertIn("-> XCLIENT ADDR=203.0.113.9 NAME=client.example", text)
        self.assertIn("<-  220 mx.test", text)
        self.assertIn("<** 550 5.7.1", text)  # the named client may not relay
        self.assertNotEqual(code, 0)
        out, _, code = yield swaks("--to", "victim@remote.example")
        self.assertEqual(code, 0, out.decode())  # the front end itself may
        out, _, code = yield swaks("--to", "user@example.com", "--xclient-addr", "999.1.1.1")
        self.assertIn("<** 501 5.5.4 Bad XCLIENT ADDR value", out.decode())
