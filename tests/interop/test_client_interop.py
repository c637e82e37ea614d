"""
Interop of the outbound client over 127.0.0.1 with servers someone else
wrote: aiosmtpd (its Controller in a thread), Postfix's smtp-sink (a child
process on a free port, with and without PIPELINING and ESMTP, refusing or
hanging up as its options make it), mailframe's own server in-process
(BDAT, STARTTLS with a verified certificate, AUTH), and next hops that
refuse EHLO and HELO: Dovecot's LMTP server (standalone, one child per
connection) and a scripted refuser.  Every test is bounded in time;
servers are stopped or killed at the end.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.internet.ssl import Certificate
from twisted.protocols.basic import LineReceiver
from twisted.trial.unittest import SkipTest, TestCase

from mailframe.address import parseMailbox
from mailframe.client import ClientOptions, Credentials, messageFrom, sendMessage
from mailframe.client.relay import SMTPRelay
from mailframe.client.routing import Destination, Router
from mailframe.envelope import DeliveryResult, Envelope, Recipient
from mailframe.reply import Reply
from tests._certs import TestCA
from tests.interop._mailpeers import heldBy
from tests.interop._support import HOST, splitReceived, startServer
from tests.interop.test_tls_auth import startSecureServer

MESSAGE = b"From: alice@a.example\r\nSubject: interop\r\n\r\n.a line with a dot\r\nHello.\r\n"
SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
TIMEOUT = 20
_REQUIRED = bool(os.environ.get("MAILFRAME_REQUIRE_INTEROP"))
"""CI sets MAILFRAME_REQUIRE_INTEROP=1: a missing smtp-sink or aiosmtpd then fails, not skips."""


def envelope(*recipients: str, sender: str = "alice@a.example", **params: Any) -> Envelope:
    return Envelope("Q1", parseMailbox(sender), params,
                    [Recipient(parseMailbox(r)) for r in recipients])  # fmt: skip


def freePort() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]  # type: ignore[no-any-return]


def send(port: int, env: Envelope, message: bytes = MESSAGE, **options: Any) -> Any:
    options.setdefault("heloName", "client.test")
    options.setdefault("tls", "none")
    options.setdefault("transcript", True)
    return sendMessage(f"tcp:{HOST}:{port}:timeout=5", env, message, ClientOptions(**options),
                       reactor=reactor, name="peer")  # fmt: skip


def codes(result: DeliveryResult) -> list[int]:
    return [r.code for r in result.replies]


# -- aiosmtpd -------------------------------------------------------------------------


class Recorder:
    """An aiosmtpd handler: records messages, refuses nobody@, may add PIPELINING."""

    def __init__(self, pipelining: bool = False) -> None:
        self.pipelining = pipelining
        self.messages: list[tuple[str, list[str], bytes, list[str]]] = []

    async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str,
                          responses: list[str]) -> list[str]:  # fmt: skip
        session.host_name = hostname
        if self.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          options: list[str]) -> str:  # fmt: skip
        if address.startswith("nobody@"):
            return "550 5.1.1 No such user"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        content = envelope.original_content or envelope.content
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), content,
                              list(envelope.mail_options)))  # fmt: skip
        return "250 2.0.0 OK"


class AiosmtpdTests(TestCase):
    """The client against aiosmtpd."""

    timeout = TIMEOUT

    def start(self, handler: Recorder, **params: Any) -> int:
        try:
            from aiosmtpd.controller import Controller
        except ImportError:
            if _REQUIRED:
                raise
            raise SkipTest("aiosmtpd is not installed (pip install .[test])") from None
        port = freePort()
        controller = Controller(handler, hostname=HOST, port=port, ready_timeout=10, **params)
        controller.start()
        self.addCleanup(controller.stop)
        return port

    @defer.inlineCallbacks
    def test_plainMessage(self) -> Any:
        """A message is delivered as sent (dot-stuffing undone by the server)."""
        handler = Recorder()
        port = self.start(handler)
        result = yield send(port, envelope("bob@b.example"))
        self.assertEqual(codes(result), [250])
        [(sender, rcpts, content, _)] = handler.messages
        self.assertEqual((sender, rcpts, content), ("alice@a.example", ["bob@b.example"], MESSAGE))

    @defer.inlineCallbacks
    def test_pipeliningAndRefusal(self) -> Any:
        """A pipelined session with a refused recipient: one reply each, the rest delivered."""
        handler = Recorder(pipelining=True)
        port = self.start(handler)
        result = yield send(port, envelope("bob@b.example", "nobody@b.example", "carol@b.example"))
        self.assertEqual(codes(result), [250, 550, 250])
        self.assertEqual(result.replies[1].enhanced, (5, 1, 1))
        self.assertEqual(handler.messages[0][1], ["bob@b.example", "carol@b.example"])

    @defer.inlineCallbacks
    def test_smtputf8(self) -> Any:
        """A UTF-8 address goes with SMTPUTF8 where offered, and fails 553 5.6.7 where not."""
        handler = Recorder()
        port = self.start(handler, enable_SMTPUTF8=True)
        result = yield send(port, envelope("δοκιμή@παράδειγμα.example", sender="ålice@a.example"))
        self.assertEqual(codes(result), [250])
        self.assertIn("SMTPUTF8", handler.messages[0][3])
        self.assertEqual(handler.messages[0][1], ["δοκιμή@παράδειγμα.example"])
        plain = Recorder()
        port = self.start(plain, enable_SMTPUTF8=False)
        result = yield send(port, envelope("δοκιμή@b.example", "bob@b.example"))
        self.assertEqual(codes(result), [553, 250])
        self.assertEqual(plain.messages[0][1], ["bob@b.example"])

    @defer.inlineCallbacks
    def test_eightBit(self) -> Any:
        """An 8-bit message goes with BODY=8BITMIME."""
        handler = Recorder()
        port = self.start(handler)
        message = "Subject: café\r\n\r\nnaïve\r\n".encode()
        result = yield send(port, envelope("bob@b.example"), message)
        self.assertEqual(codes(result), [250])
        self.assertIn("BODY=8BITMIME", handler.messages[0][3])
        self.assertEqual(handler.messages[0][2], message)


# -- Postfix smtp-sink ------------------------------------------------------------------


class SmtpSinkTests(TestCase):
    """The client against Postfix's smtp-sink, made to behave in several ways."""

    timeout = TIMEOUT

    def start(self, *options: str) -> tuple[int, str]:
        if not os.path.exists(SMTP_SINK) and not _REQUIRED:
            raise SkipTest("Postfix smtp-sink is not installed (Debian package postfix)")
        port = freePort()
        dump = tempfile.mkdtemp(prefix="mailframe-sink-")  # /tmp: nobody can reach it
        self.addCleanup(shutil.rmtree, dump, True)
        os.chmod(dump, 0o777)  # smtp-sink writes as nobody
        argv = [SMTP_SINK, *options, "-d", os.path.join(dump, "%M."), f"{HOST}:{port}", "10"]
        if os.geteuid() == 0:
            argv[1:1] = ["-u", "nobody"]
        self.sinkErr = os.path.abspath(self.mktemp())
        with open(self.sinkErr, "wb") as err:
            process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err)
        self.addCleanup(_stop, process)
        # this smtp-sink holds the port, not another test's server on a reused one
        deadline = time.monotonic() + 10
        while not heldBy(process.pid, port):
            if process.poll() is not None:
                raise AssertionError(f"smtp-sink exited: {self.sinkErrors()!r}")
            if time.monotonic() > deadline:
                raise AssertionError(f"smtp-sink did not listen: {self.sinkErrors()!r}")
            time.sleep(0.02)  # before the reactor runs this test's work
        return port, dump

    def sinkErrors(self) -> bytes:
        with open(self.sinkErr, "rb") as f:
            return f.read()

    def dumps(self, directory: str) -> list[bytes]:
        out = []
        for path in sorted(glob.glob(os.path.join(directory, "*"))):
            with open(path, "rb") as f:
                out.append(f.read())
        return out

    @defer.inlineCallbacks
    def waitForDump(self, directory: str, count: int = 1) -> Any:
        for _ in range(200):
            found = self.dumps(directory)
            if len(found) >= count and all(d.endswith(b"\n\n") for d in found):
                return found
            yield task.deferLater(reactor, 0.02, lambda: None)  # type: ignore[arg-type]
        return self.dumps(directory)

    @defer.inlineCallbacks
    def test_pipeliningAndDSN(self) -> Any:
        """Default smtp-sink (ESMTP, PIPELINING, DSN): DSN parameters are passed on."""
        port, dump = self.start()
        env = envelope("bob@b.example", RET="HDRS", ENVID="Q1")
        env.recipients[0] = Recipient(env.recipients[0].address, {"NOTIFY": "SUCCESS,FAILURE"})
        result = yield send(port, env)
        self.assertEqual(codes(result), [250])
        [data] = yield self.waitForDump(dump)
        self.assertIn(b"X-Client-Proto: ESMTP\n", data)
        self.assertIn(b"X-Mail-Args: <alice@a.example> RET=HDRS ENVID=Q1\n", data)
        self.assertIn(b"X-Rcpt-Args: <bob@b.example> NOTIFY=SUCCESS,FAILURE", data)
        self.assertIn(b"\n.a line with a dot\nHello.\n", data)

    @defer.inlineCallbacks
    def test_noPipeliningNoDSN(self) -> Any:
        """-p -N: one command at a time, and the DSN parameters dropped."""
        port, dump = self.start("-p", "-N")
        env = envelope("bob@b.example", "carol@b.example", RET="FULL")
        result = yield send(port, env)
        self.assertEqual(codes(result), [250, 250])
        [data] = yield self.waitForDump(dump)
        self.assertNotIn(b"RET=", data)

    @defer.inlineCallbacks
    def test_noESMTP(self) -> Any:
        """-e: EHLO is refused, the client says HELO and sends plain SMTP."""
        port, dump = self.start("-e")
        result = yield send(port, envelope("bob@b.example"), "Subject: é\r\n\r\nx\r\n".encode())
        self.assertEqual(codes(result), [250], self.sinkErrors())
        [data] = yield self.waitForDump(dump)
        self.assertIn(b"X-Client-Proto: SMTP\n", data)
        self.assertIn(b"X-Mail-Args: <alice@a.example>\n", data)

    @defer.inlineCallbacks
    def test_rcptRefused(self) -> Any:
        """-f RCPT / -r RCPT: every recipient gets the hard / soft refusal; nothing sent."""
        for option, code in (("-f", 500), ("-r", 450)):
            port, dump = self.start(option, "RCPT")
            result = yield send(port, envelope("bob@b.example", "carol@b.example"))
            self.assertEqual(codes(result), [code, code])
            self.assertNotIn(b"interop", b"".join(self.dumps(dump)))  # no data was sent

    @defer.inlineCallbacks
    def test_421AfterMail(self) -> Any:
        """-Q MAIL: a 421 after MAIL fails the attempt with a 4xx for every recipient."""
        port, _ = self.start("-Q", "MAIL")
        result = yield send(port, envelope("bob@b.example"))
        self.assertEqual(codes(result), [421])

    @defer.inlineCallbacks
    def test_hangUpAfterData(self) -> Any:
        """-q DATA: the server hangs up; the recipients get 421 4.4.2 (try again later)."""
        port, _ = self.start("-q", "DATA")
        result = yield send(port, envelope("bob@b.example"))
        self.assertEqual((result.replies[0].code, result.replies[0].enhanced), (421, (4, 4, 2)))

    @defer.inlineCallbacks
    def test_relayReuse(self) -> Any:
        """The relay sends two messages over one smtp-sink connection (RSET between)."""
        port, dump = self.start()
        router = Router(routes={"b.example": {"host": HOST, "port": port, "tls": "none"}})
        relay = SMTPRelay(router, reactor, "relay.test", keepAlive=5)
        self.addCleanup(relay.closeIdle)
        connects: list[Any] = []
        tcp = relay.endpointFor
        relay.endpointFor = lambda d: connects.append(d) or tcp(d)
        for rcpt in ("bob@b.example", "carol@b.example"):
            env = envelope(rcpt)
            result = yield relay.relay(env, env.recipients, messageFrom(MESSAGE))
            self.assertEqual(codes(result), [250])
            self.assertEqual(result.remote, (f"[{HOST}]",))
        found = yield self.waitForDump(dump, 2)
        self.assertEqual(len(found), 2)
        self.assertEqual(len(connects), 1)


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.kill()
    process.wait(5)


# -- mailframe's own server -----------------------------------------------------------------


class MailframeTests(TestCase):
    """The client against mailframe's own server in-process."""

    timeout = TIMEOUT

    @defer.inlineCallbacks
    def test_bdat(self) -> Any:
        """CHUNKING offered: BDAT in several chunks, the message arrives intact."""
        server = startServer(self)
        message = MESSAGE + b"x" * 5000 + b"\r\n"
        result = yield send(
            server.portNumber, envelope("bob@example.com"), message, chunkSize=1024
        )
        self.assertEqual(codes(result), [250])
        self.assertEqual(server.bodies(), [message])

    @defer.inlineCallbacks
    def test_binaryMIME(self) -> Any:
        """A BINARYMIME message with bare LF and NUL goes by BDAT and arrives as sent."""
        server = startServer(self)
        message = b"Subject: bin\r\n\r\n\x00\x01\n\r.\r\n"
        result = yield send(
            server.portNumber, envelope("bob@example.com", BODY="BINARYMIME"), message
        )
        self.assertEqual(codes(result), [250])
        self.assertEqual(server.bodies(), [message])

    @defer.inlineCallbacks
    def test_dataWithoutChunking(self) -> Any:
        """chunking=False: DATA, dot-stuffed, arrives intact; refused recipients stay refused."""
        server = startServer(self)
        result = yield send(server.portNumber, envelope("bob@example.com", "nobody@example.com"),
                            chunking=False)  # fmt: skip
        self.assertEqual(codes(result), [250, 550])
        self.assertEqual(server.bodies(), [MESSAGE])

    @defer.inlineCallbacks
    def test_relayHostOnLoopback(self) -> Any:
        """The issue's --relay-host tcp:127.0.0.1:PORT: a plain server on loopback takes the mail."""
        server = startServer(self)
        relay = SMTPRelay.fromConfig({"smarthost": f"tcp:{HOST}:{server.portNumber}"}, reactor,
                                     "relay.test")  # fmt: skip
        env = envelope("bob@example.com", "nobody@example.com")
        result = yield relay.relay(env, env.recipients, messageFrom(MESSAGE))
        self.assertEqual(codes(result), [250, 550])
        self.assertEqual(result.remote, (f"[{HOST}]",) * 2)
        self.assertEqual(server.bodies(), [MESSAGE])

    @defer.inlineCallbacks
    def test_starttlsAndAuth(self) -> Any:
        """A smarthost with STARTTLS (verified) and AUTH PLAIN: ESMTPSA."""
        ca = TestCA(self.mktemp())
        server = startSecureServer(self, ca)
        with open(ca.rootFile, "rb") as f:
            trustRoot = Certificate.loadPEM(f.read())
        relay = SMTPRelay.fromConfig(
            {"smarthost": {"host": HOST, "port": server.portNumber, "tls-hostname": "mx.test",
                           "username": "alice", "password": "secret"}},
            reactor, "relay.test", trustRoot=trustRoot,
        )  # fmt: skip
        env = envelope("bob@far.example")
        result = yield relay.relay(env, env.recipients, messageFrom(MESSAGE))
        self.assertEqual(codes(result), [250])
        received, body = splitReceived(server.messages[0].data)
        self.assertIn(b"with ESMTPSA", received)
        self.assertEqual(body, MESSAGE)

    @defer.inlineCallbacks
    def test_implicitTLS(self) -> Any:
        """A smarthost on implicit TLS (tls:HOST:PORT, RFC 8314) with AUTH: verified, ESMTPSA."""
        ca = TestCA(self.mktemp())
        server = startSecureServer(self, ca, implicit=True)
        with open(ca.rootFile, "rb") as f:
            trustRoot = Certificate.loadPEM(f.read())
        relay = SMTPRelay.fromConfig(
            {"smarthost": {"host": f"tls:{HOST}:{server.portNumber}", "tls-hostname": "mx.test",
                           "username": "alice", "password": "secret", "tls": "verify"}},
            reactor, "relay.test", trustRoot=trustRoot,
        )  # fmt: skip
        env = envelope("bob@far.example")
        result = yield relay.relay(env, env.recipients, messageFrom(MESSAGE))
        self.assertEqual(codes(result), [250])
        self.assertIn(b"with ESMTPSA", server.messages[0].data)
        relay = SMTPRelay.fromConfig(
            {"smarthost": {"host": f"tls:{HOST}:{server.portNumber}", "tls-hostname": "other.test",
                           "username": "alice", "password": "secret", "tls": "verify"}},
            reactor, "relay.test", trustRoot=trustRoot,
        )  # fmt: skip
        result = yield relay.relay(env, env.recipients, messageFrom(MESSAGE))
        self.assertEqual(result.replies[0].enhanced, (4, 7, 5))
        self.assertEqual(len(server.messages), 1)

    @defer.inlineCallbacks
    def test_authRefused(self) -> Any:
        """Wrong credentials: 4xx (a configuration problem: the queue retries), nothing sent."""
        ca = TestCA(self.mktemp())
        server = startSecureServer(self, ca)
        result = yield send(server.portNumber, envelope("bob@far.example"), tls="require",
                            credentials=Credentials("alice", "wrong"))  # fmt: skip
        self.assertEqual(result.replies[0].code // 100, 4)
        self.assertEqual(server.messages, [])


# -- a next hop that refuses EHLO and HELO (an LMTP server) ----------------------------------

DOVECOT_LMTP = "/usr/lib/dovecot/lmtp"
UNKNOWN = Reply(500, (5, 5, 1), "Unknown command")


class Peers:
    """The server side's open connections (and child processes), to wait for at cleanup."""

    def __init__(self) -> None:
        self.open = 0
        self.lines: list[list[bytes]] = []

    @defer.inlineCallbacks
    def drained(self) -> Any:
        deadline = time.monotonic() + 5
        while self.open and time.monotonic() < deadline:
            yield task.deferLater(reactor, 0.01, lambda: None)  # type: ignore[arg-type]


class Refuser(LineReceiver):
    """Greets, then answers 500 5.5.1 to every line but QUIT, as an LMTP server answers EHLO."""

    delimiter = b"\r\n"

    def __init__(self, peers: Peers) -> None:
        self.peers = peers
        self.lines: list[bytes] = []

    def connectionMade(self) -> None:
        self.peers.open += 1
        self.peers.lines.append(self.lines)
        self.sendLine(b"220 lmtp.test LMTP ready")

    def lineReceived(self, line: bytes) -> None:
        self.lines.append(line)
        if line.upper() == b"QUIT":
            self.sendLine(b"221 2.0.0 Bye")
            self.transport.loseConnection()  # type: ignore[union-attr]
        else:
            self.sendLine(b"500 5.5.1 Unknown command")

    def connectionLost(self, reason: Any = None) -> None:
        self.peers.open -= 1


class _Child(ProcessProtocol):
    def __init__(self, peer: Protocol, peers: Peers) -> None:
        self.peer, self.peers = peer, peers

    def outReceived(self, data: bytes) -> None:
        self.peer.transport.write(data)  # type: ignore[union-attr]

    def processEnded(self, reason: Any) -> None:
        self.peer.transport.loseConnection()  # type: ignore[union-attr]
        self.peers.open -= 1


class ChildBridge(Protocol):
    """One connection bridged to a child's stdin and stdout (Dovecot's lmtp standalone)."""

    def __init__(self, peers: Peers, argv: list[str]) -> None:
        self.peers, self.argv = peers, argv
        self.child: Any = None

    def connectionMade(self) -> None:
        self.peers.open += 2  # the connection and the child
        self.child = reactor.spawnProcess(  # type: ignore[attr-defined]
            _Child(self, self.peers), self.argv[0], self.argv, env={}
        )

    def dataReceived(self, data: bytes) -> None:
        self.child.write(data)

    def connectionLost(self, reason: Any = None) -> None:
        self.peers.open -= 1
        if self.child.pid is not None:
            self.child.closeStdin()


class RefusingPeerTests(TestCase):
    """
    Issue 9: a next hop that answers EHLO and HELO with 500 (an LMTP server) gets
    its own reply reported, and the message fails for good once every host refused.
    """

    timeout = TIMEOUT

    def listen(self, build: Callable[[Peers], Protocol]) -> tuple[int, Peers]:
        peers = Peers()
        port = reactor.listenTCP(0, Factory.forProtocol(lambda: build(peers)), interface=HOST)  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        self.addCleanup(peers.drained)  # runs first: the sessions end, then the listener
        return port.getHost().port, peers

    @defer.inlineCallbacks
    def test_sendMessage(self) -> Any:
        """sendMessage to the refusing peer: its own 500 5.5.1 for every recipient; QUIT sent."""
        port, peers = self.listen(Refuser)
        result = yield send(port, envelope("bob@b.example", "carol@b.example"))
        self.assertEqual(result.replies, (UNKNOWN, UNKNOWN))
        yield peers.drained()
        self.assertEqual(peers.lines, [[b"EHLO client.test", b"HELO client.test", b"QUIT"]])

    @defer.inlineCallbacks
    def test_relayTriesEachHostThenFails(self) -> Any:
        """The relay tries both hosts, then fails with the last one's real 500 (no retry code)."""
        port1, peers1 = self.listen(Refuser)
        port2, peers2 = self.listen(Refuser)

        class TwoHosts(Router):
            async def destinations(self, domain: Any) -> Any:
                return [Destination("lmtp1", HOST, port1, tls="none"),
                        Destination("lmtp2", HOST, port2, tls="none")]  # fmt: skip

        relay = SMTPRelay(TwoHosts(), reactor, "relay.test")
        env = envelope("bob@b.example")
        result = yield relay.relay(env, env.recipients, messageFrom(MESSAGE))
        self.assertEqual(result.replies, (UNKNOWN,))
        self.assertEqual(result.remote, (f"lmtp2 [{HOST}]",))
        yield peers1.drained()
        yield peers2.drained()
        self.assertEqual([len(p.lines) for p in (peers1, peers2)], [1, 1])

    @defer.inlineCallbacks
    def test_dovecotLMTP(self) -> Any:
        """Dovecot's LMTP server as the next hop (the issue's case): its own 500 5.5.1, not a 4xx."""
        if not os.path.exists(DOVECOT_LMTP):
            if _REQUIRED:
                raise AssertionError(f"{DOVECOT_LMTP} is missing (Debian package dovecot-lmtpd)")
            raise SkipTest("Dovecot's LMTP server is not installed (Debian package dovecot-lmtpd)")
        home = os.path.abspath(self.mktemp())
        os.makedirs(home)
        conf = os.path.join(home, "dovecot.conf")
        with open(conf, "w") as f:
            f.write(f"base_dir = {home}/run\nlog_path = /dev/stderr\nssl = no\n")
        port, _ = self.listen(lambda peers: ChildBridge(peers, [DOVECOT_LMTP, "-c", conf]))
        result = yield send(port, envelope("bob@b.example"))
        self.assertEqual(result.replies, (UNKNOWN,))
