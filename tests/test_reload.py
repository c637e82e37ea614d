"""
Tests for reloading without dropping sessions: L{SMTPServerFactory.reconfigure}
(new sessions get the new settings and plug-ins, open ones keep theirs),
L{mailframe.app.reload.Reloader} (SIGHUP re-reads the configuration, the
files of the plug-ins, certificates; a bad configuration is refused with
one log line), in memory and with twistd in a subprocess.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

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
        old.dataReceived(b"RCPT TO:<alice@example.com>\r\nDATA\r\nSubject: x\r\n\r\nhi\r\n.\r\n")
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
