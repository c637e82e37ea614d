"""
Tests for reloading without dropping sessions: L{SMTPServerFactory.reconfigure}
(new sessions get the new settings and plug-ins, open ones keep theirs),
L{mailframe.app.reload.Reloader} (SIGHUP re-reads the configuration, the
files of the plug-ins, certificates; a bad configuration is refused with
one log line), in memory and with twistd in a subprocess.
"""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogEvent, LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from mailframe.app import tap
from mailframe.backends.memory import MemoryBackend
from mailframe.config import ServerConfig
from mailframe.envelope import Envelope, Recipient, SessionInfo
from mailframe.interfaces import IRecipientValidator
from mailframe.server import SMTPServerFactory


@implementer(IRecipientValidator)
class Users:
    """Accepts the local parts it lists."""

    def __init__(self, *names: str) -> None:
        self.names = frozenset(names)

    def validateRecipient(
        self, session: SessionInfo, envelope: Envelope, recipient: Recipient
    ) -> Any:
        return True if recipient.address.localPart in self.names else None


def connect(factory: SMTPServerFactory, host: str = "192.0.2.1") -> tuple[Any, StringTransport]:
    proto = factory.buildProtocol(None)
    transport = StringTransport(peerAddress=IPv4Address("TCP", host, 4000))
    proto.makeConnection(transport)
    return proto, transport


def connectUntilEnd(
    case: SynchronousTestCase, factory: SMTPServerFactory
) -> tuple[Any, StringTransport]:
    """A session that ends with the test (its timers are on the real reactor)."""
    proto, transport = connect(factory)
    case.addCleanup(lambda: proto.transport is not None and proto.connectionLost(None))
    return proto, transport


def last(transport: StringTransport) -> str:
    """The last reply line written."""
    return transport.value().decode().rstrip("\r\n").rsplit("\r\n", 1)[-1]


class ReconfigureTests(SynchronousTestCase):
    """SMTPServerFactory.reconfigure: new sessions get the new context, open ones keep theirs."""

    def factory(self, clock: MemoryReactorClock, hostname: str, *users: str) -> SMTPServerFactory:
        config = ServerConfig(hostname=hostname, localDomains=frozenset({"example.com"}))
        return SMTPServerFactory(config, MemoryBackend(), [Users(*users)], clock=clock)

    def test_openSessionKeepsItsRules(self) -> None:
        """A session in a transaction finishes under the rules it began with; the next one has the new."""
        clock = MemoryReactorClock()
        server = self.factory(clock, "mx.old", "alice")
        old, oldTransport = connect(server)
        old.dataReceived(b"EHLO c\r\nMAIL FROM:<s@example.org>\r\n")
        context = server.context
        server.reconfigure(self.factory(clock, "mx.new", "bob"))
        self.assertIsNot(server.context, context)
        self.assertEqual(server.config.hostname, "mx.new")

        old.dataReceived(b"RCPT TO:<bob@example.com>\r\n")
        self.assertTrue(last(oldTransport).startswith("550 5.1.1"), last(oldTransport))
        old.dataReceived(b"RCPT TO:<alice@example.com>\r\nDATA\r\n")
        old.dataReceived(b"Subject: x\r\n\r\nhi\r\n.\r\n")
        self.assertTrue(last(oldTransport).startswith("250 2.0.0"), last(oldTransport))
        self.assertIs(old.context, context)

        new, newTransport = connect(server)
        self.assertTrue(newTransport.value().startswith(b"220 mx.new "), newTransport.value())
        new.dataReceived(b"EHLO c\r\nMAIL FROM:<s@example.org>\r\nRCPT TO:<alice@example.com>\r\n")
        self.assertTrue(last(newTransport).startswith("550 5.1.1"))
        new.dataReceived(b"RCPT TO:<bob@example.com>\r\n")
        self.assertTrue(last(newTransport).startswith("250 2.1.5"), last(newTransport))

    def test_totalsAndSessionsGoOn(self) -> None:
        """The totals, the open sessions and the IDs are the server's, across a reconfigure."""
        clock = MemoryReactorClock()
        server = self.factory(clock, "mx.old", "alice")
        old, _ = connect(server)
        old.dataReceived(b"EHLO c\r\nMAIL FROM:<s@example.org>\r\nRCPT TO:<alice@example.com>\r\n"
                         b"DATA\r\nSubject: x\r\n\r\nhi\r\n.\r\n")  # fmt: skip
        self.assertEqual(server.accepted, 1)
        ids = server.context.ids
        server.reconfigure(self.factory(clock, "mx.new", "alice"))
        self.assertEqual(server.accepted, 1)
        self.assertEqual(server.sessions, {old})
        self.assertIs(server.context.ids, ids)
        old.dataReceived(b"MAIL FROM:<s@example.org>\r\nRCPT TO:<alice@example.com>\r\n"
                         b"DATA\r\nSubject: y\r\n\r\nhi\r\n.\r\n")  # fmt: skip
        self.assertEqual((server.accepted, server.acceptedRecipients), (2, 2))
        old.connectionLost(None)
        self.assertEqual(server.sessions, set())


def options(*args: str) -> tap.Options:
    parsed = tap.Options()
    parsed.parseOptions(list(args))
    return parsed


def errors(events: Sequence[LogEvent]) -> list[str]:
    """The error lines logged."""
    return [e["line"] for e in events if e.get("log_level") == LogLevel.error and "line" in e]


class ReloaderTests(SynchronousTestCase):
    """Reloader: everything is built again; a configuration that cannot be used is refused."""

    def setUp(self) -> None:
        self.directory = Path(self.mktemp()).absolute()
        self.directory.mkdir()
        self.users = self.directory / "users"
        self.users.write_text("alice@example.com\n")
        self.config = self.directory / "mailframe.toml"
        self.write()
        self.events: list[LogEvent] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def write(self, extra: str = "", listen: str = "tcp:0:interface=127.0.0.1") -> None:
        self.config.write_text(
            f'listen = ["{listen}"]\nhostname = "mx.test"\ndomain = ["example.com"]\n'
            f'deliver = "memory"\nvalidate = ["addresses:{self.users}"]\ngreet-delay = "0"\n'
            f"{extra}"
        )

    def start(self, *args: str) -> tap.MailframeService:
        service = tap.makeService(options("--config", str(self.config), *args))
        assert service.reloader is not None
        self.reloader = service.reloader
        self.factory = service.factories[0]
        return service

    def test_newAddressFile(self) -> None:
        """A new address file: new sessions use it, an open session keeps the old one to its end."""
        self.start()
        old, oldTransport = connectUntilEnd(self, self.factory)
        old.dataReceived(b"EHLO c\r\n")  # enforce-sync: EHLO waits for its reply
        old.dataReceived(b"MAIL FROM:<s@example.org>\r\n")
        self.users.write_text("alice@example.com\nbob@example.com\n")
        self.assertTrue(self.reloader.reload())
        new, newTransport = connectUntilEnd(self, self.factory)
        new.dataReceived(b"EHLO c\r\n")
        new.dataReceived(b"MAIL FROM:<s@example.org>\r\nRCPT TO:<bob@example.com>\r\n")
        self.assertTrue(last(newTransport).startswith("250 2.1.5"), last(newTransport))
        old.dataReceived(b"RCPT TO:<bob@example.com>\r\n")
        self.assertTrue(last(oldTransport).startswith("550 5.1.1"), last(oldTransport))
        old.dataReceived(b"RCPT TO:<alice@example.com>\r\nDATA\r\n")
        old.dataReceived(b"Subject: x\r\n\r\nhi\r\n.\r\n")
        self.assertTrue(last(oldTransport).startswith("250 2.0.0"), last(oldTransport))
        lines = [e["line"] for e in self.events if "reloaded" in e.get("line", "")]
        self.assertEqual(len(lines), 1)
        self.assertTrue(
            lines[0].startswith("mailframe: reloaded: listening on tcp:0:interface=127.0.0.1 as "
                                "mx.test"), lines)  # fmt: skip
        self.assertEqual(self.reloader.reloads, 1)

    def test_badConfigurationRefused(self) -> None:
        """A configuration that does not parse, or a plug-in that cannot be set up: one line, nothing changes."""
        self.start()
        context = self.factory.context
        self.config.write_text('listen = ["tcp:0"]\nflavour = "mint"\n')
        self.assertFalse(self.reloader.reload())
        self.write()  # the file again, then an address file gone
        self.users.unlink()
        self.assertFalse(self.reloader.reload())
        [first, second] = errors(self.events)
        self.assertTrue(first.startswith("mailframe: reload refused, the configuration in force "
                                         "stays: "), first)  # fmt: skip
        self.assertIn("unknown key 'flavour'", first)
        self.assertIn(str(self.users), second)
        self.assertNotIn("\n", first + second)
        self.assertIs(self.factory.context, context)
        self.assertEqual(self.reloader.reloads, 0)

    def test_restartNeeded(self) -> None:
        """Changing what only a restart can (the endpoints) is refused, saying so."""
        self.start()
        self.write(listen="tcp:0:interface=127.0.0.2")
        self.assertFalse(self.reloader.reload())
        [line] = errors(self.events)
        self.assertIn("the endpoints of smtp changed (tcp:0:interface=127.0.0.1 -> "
                      "tcp:0:interface=127.0.0.2): that needs a restart", line)  # fmt: skip

    def test_whatOutlivesAReload(self) -> None:
        """The connection limits (with their counts) stay when unchanged; new ones when changed."""
        from mailframe.policy.limits import ConnectionLimits

        self.start()
        [limits] = [f for f in self.factory.connectionFilters if isinstance(f, ConnectionLimits)]
        session, _ = connect(self.factory)
        self.assertEqual(limits.connections, 1)
        self.assertTrue(self.reloader.reload())
        self.assertIn(limits, self.factory.connectionFilters)
        self.assertEqual(limits.connections, 1)
        self.write('limits = "client=5"\n')
        self.assertTrue(self.reloader.reload())
        [fresh] = [f for f in self.factory.connectionFilters if isinstance(f, ConnectionLimits)]
        self.assertIsNot(fresh, limits)
        self.assertEqual(fresh.perClient, 5)
        session.connectionLost(None)  # counted by the limits it started with
        self.assertEqual(limits.connections, 0)

    def test_dns(self) -> None:
        """The DNS cache stays while the servers do; other servers get a new resolver."""
        self.write('dns-server = ["127.0.0.1:5353"]\n')
        self.start()
        resolver = self.reloader.resolver
        self.assertTrue(self.reloader.reload())
        self.assertIs(self.reloader.resolver, resolver)
        self.write('dns-server = ["127.0.0.1:5354"]\n')
        self.assertTrue(self.reloader.reload())
        self.assertIsNot(self.reloader.resolver, resolver)

    def test_certificates(self) -> None:
        """An implicit-TLS listener's ports get the certificates read again."""
        from tests._certs import TestCA

        ca = TestCA(str(self.directory / "ca"))
        issued = ca.issue("mx", "mx.test")
        service = self.start("--auth", "memory:a:b", "--submissions", "tcp:0:interface=127.0.0.1",
                             "--tls-cert", issued.fullchain, "--tls-key", issued.privkey)  # fmt: skip
        [holder] = self.reloader.tls.values()
        before = holder.current
        self.assertTrue(self.reloader.reload())
        self.assertIsNot(holder.current, before)
        self.assertEqual(len(service.factories), 2)

    def test_queue(self) -> None:
        """The relay's smarthost and the local backend of a listener follow the new configuration."""
        spool = self.directory / "spool"
        self.write(f'spool = "{spool}"\nrelay-host = "tcp:192.0.2.1:25"\n')
        self.start()
        queue = self.reloader.queue
        assert queue is not None and queue.service.runner is not None
        runner = queue.service.runner
        relay = runner.relay
        local = runner.backends["smtp"]
        self.write(f'spool = "{spool}"\nrelay-host = "tcp:192.0.2.2:25"\n')
        self.assertTrue(self.reloader.reload())
        self.assertIsNot(runner.relay, relay)
        self.assertEqual(str(runner.relay.router.smarthost), "192.0.2.2:25")  # type: ignore[union-attr]
        self.assertIsNot(runner.backends["smtp"], local)
        self.write(f'spool = "{spool}-other"\n')
        self.assertFalse(self.reloader.reload())
        self.assertIn("spool changed", errors(self.events)[0])

    def test_signal(self) -> None:
        """SIGHUP, once installed, asks the reactor to reload; uninstall gives SIGHUP back."""
        self.start()
        asked: list[object] = []
        self.reloader.reactor = type("R", (), {"callFromThread": lambda _, f: asked.append(f)})()
        previous = signal.getsignal(signal.SIGHUP)
        self.reloader.install()
        try:
            os.kill(os.getpid(), signal.SIGHUP)
        finally:
            self.reloader.uninstall()
        self.assertEqual(asked, [self.reloader.reload])
        self.assertEqual(signal.getsignal(signal.SIGHUP), previous)

    def test_systemdNotified(self) -> None:
        """Under systemd a reload is RELOADING=1 then READY=1."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(sock.close)
        path = f"/tmp/mfr-{os.getpid()}-{id(self)}"
        sock.bind(path)
        self.addCleanup(os.unlink, path)
        sock.settimeout(5)
        self.patch(os, "environ", {**os.environ, "NOTIFY_SOCKET": path})
        self.start()
        self.assertTrue(self.reloader.reload())
        self.assertTrue(sock.recv(1024).startswith(b"RELOADING=1\nMONOTONIC_USEC="))
        self.assertEqual(sock.recv(1024), b"READY=1\nSTATUS=configuration reloaded")
