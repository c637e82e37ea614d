"""
Tests for L{mailframe.policy.limits}: concurrent connections in total and
per client, connection, message and recipient rates on a fake clock,
exempt networks, bounded tables, and many connections to a server in
memory.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from mailframe.backends.memory import MemoryBackend
from mailframe.config import ServerConfig
from mailframe.envelope import Recipient
from mailframe.interfaces import (
    IConnectionFilter,
    IHeloValidator,
    IMessageFilter,
    IRecipientValidator,
    ISenderValidator,
    ISessionObserver,
)
from mailframe.policy.limits import (
    CLIENT_BUSY,
    CLIENT_TOO_FAST,
    SERVER_BUSY,
    TOO_MANY_MESSAGES,
    TOO_MANY_RECIPIENTS,
    ConnectionLimits,
)
from mailframe.policy.testing import makeEnvelope, makeSession
from mailframe.reply import SMTPError
from mailframe.server import SMTPServerFactory
from tests.test_server import Listed, codes


class Sessions:
    """Numbered sessions from given hosts."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, host: str) -> Any:
        self.count += 1
        session = makeSession(host)
        session.sessionID = f"S{self.count}"
        return session


class CountingTests(SynchronousTestCase):
    """The connection filter and observer."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.session = Sessions()

    def refused(self, limits: ConnectionLimits, host: str) -> Any:
        return self.assertRaises(SMTPError, limits.acceptConnection, self.session(host)).reply

    def test_verifyObject(self) -> None:
        """ConnectionLimits provides every plug point it counts at."""
        limits = ConnectionLimits(self.clock)
        for interface in (IConnectionFilter, ISessionObserver, ISenderValidator,
                          IRecipientValidator, IMessageFilter):  # fmt: skip
            self.assertTrue(verifyObject(interface, limits))

    def test_total(self) -> None:
        """Past the total, every client gets 421 4.7.0; a closed one makes room."""
        limits = ConnectionLimits(self.clock, total=3, perClient=0)
        sessions = [self.session(f"192.0.2.{i}") for i in range(3)]
        for s in sessions:
            limits.acceptConnection(s)
        self.assertEqual(self.refused(limits, "192.0.2.9"), SERVER_BUSY)
        self.assertEqual(SERVER_BUSY.code, 421)
        limits.sessionEnded(sessions[0])
        limits.acceptConnection(self.session("192.0.2.9"))
        self.assertEqual(limits.connections, 3)

    def test_perClient(self) -> None:
        """One client may hold perClient connections; others are unaffected."""
        limits = ConnectionLimits(self.clock, perClient=2)
        first = self.session("192.0.2.1")
        limits.acceptConnection(first)
        limits.acceptConnection(self.session("192.0.2.1"))
        self.assertEqual(self.refused(limits, "192.0.2.1"), CLIENT_BUSY)
        limits.acceptConnection(self.session("192.0.2.2"))
        limits.sessionEnded(first)
        limits.acceptConnection(self.session("192.0.2.1"))
        self.assertEqual(limits.clientConnections("192.0.2.1"), 2)

    def test_ipv6CountedBy64(self) -> None:
        """IPv6 clients of one /64 count as one client."""
        limits = ConnectionLimits(self.clock, perClient=1)
        limits.acceptConnection(self.session("2001:db8::1"))
        self.assertEqual(self.refused(limits, "2001:db8::ffff"), CLIENT_BUSY)
        limits.acceptConnection(self.session("2001:db8:0:1::1"))

    def test_refusedNotCounted(self) -> None:
        """A refused connection's end does not free a place it never had."""
        limits = ConnectionLimits(self.clock, perClient=1)
        limits.acceptConnection(self.session("192.0.2.1"))
        refusedSession = self.session("192.0.2.1")
        self.assertRaises(SMTPError, limits.acceptConnection, refusedSession)
        limits.sessionEnded(refusedSession)
        self.assertEqual(limits.clientConnections("192.0.2.1"), 1)

    def test_connectionRate(self) -> None:
        """rate new connections a minute; attempts count; the window slides."""
        limits = ConnectionLimits(self.clock, perClient=0, connectionRate=3)
        for _ in range(3):
            limits.acceptConnection(self.session("192.0.2.1"))
        self.assertEqual(self.refused(limits, "192.0.2.1"), CLIENT_TOO_FAST)
        self.clock.advance(30)
        self.assertEqual(self.refused(limits, "192.0.2.1"), CLIENT_TOO_FAST)
        self.clock.advance(31)  # the first four have left the window: two attempts in it
        limits.acceptConnection(self.session("192.0.2.1"))

    def test_exempt(self) -> None:
        """Exempt networks are not limited per client, only in total."""
        limits = ConnectionLimits(self.clock, total=5, perClient=1, exempt=["127.0.0.0/8"])
        for _ in range(5):
            limits.acceptConnection(self.session("127.0.0.1"))
        self.assertEqual(self.refused(limits, "127.0.0.1"), SERVER_BUSY)
        self.assertTrue(limits.isExempt("::ffff:127.0.0.2"))
        self.assertFalse(limits.isExempt("not an address"))

    def test_boundedTable(self) -> None:
        """The rate table forgets the oldest clients past maxClients."""
        limits = ConnectionLimits(self.clock, perClient=0, connectionRate=1, maxClients=10)
        for i in range(100):
            limits.acceptConnection(self.session(f"10.0.{i // 250}.{i % 250}"))
        self.assertEqual(len(limits._connections._times), 10)

    def test_badArguments(self) -> None:
        """Negative limits and a zero window are refused."""
        self.assertRaises(ValueError, ConnectionLimits, self.clock, total=-1)
        self.assertRaises(ValueError, ConnectionLimits, self.clock, window=0)


class RateTests(SynchronousTestCase):
    """Messages and recipients per client per minute."""

    def setUp(self) -> None:
        self.clock = Clock()

    def test_asksAt(self) -> None:
        """
        Where the limits have work: connections always; MAIL with a message
        or recipient rate; RCPT and DATA with a recipient rate; nowhere else.
        """
        points = [IConnectionFilter, ISessionObserver, ISenderValidator]
        points += [IRecipientValidator, IMessageFilter, IHeloValidator]
        cases = [
            ({}, [True, True, False, False, False, False]),
            ({"connectionRate": 5}, [True, True, False, False, False, False]),
            ({"messageRate": 5}, [True, True, True, False, False, False]),
            ({"recipientRate": 5}, [True, True, True, True, True, False]),
        ]
        for rates, expected in cases:
            limits = ConnectionLimits(self.clock, **rates)
            self.assertEqual([limits.asksAt(p) for p in points], expected, rates)

    def test_messages(self) -> None:
        """The MAIL after messageRate in a minute gets 421 4.7.0."""
        limits = ConnectionLimits(self.clock, messageRate=2)
        session = makeSession("192.0.2.1")
        limits.validateSender(session, makeEnvelope())
        limits.validateSender(session, makeEnvelope())
        e = self.assertRaises(SMTPError, limits.validateSender, session, makeEnvelope())
        self.assertEqual(e.reply, TOO_MANY_MESSAGES)
        limits.validateSender(makeSession("192.0.2.2"), makeEnvelope())
        self.clock.advance(61)
        limits.validateSender(session, makeEnvelope())

    def test_recipientsAtRcpt(self) -> None:
        """Local recipients past the rate are refused at RCPT; the validator has no opinion."""
        limits = ConnectionLimits(self.clock, recipientRate=3)
        session, envelope = makeSession("192.0.2.1"), makeEnvelope()
        for i in range(3):
            recipient = Recipient(makeEnvelope(f"u{i}@example.com").mailFrom)
            self.assertIsNone(limits.validateRecipient(session, envelope, recipient))
        recipient = Recipient(makeEnvelope("u9@example.com").mailFrom)
        e = self.assertRaises(SMTPError, limits.validateRecipient, session, envelope, recipient)
        self.assertEqual(e.reply, TOO_MANY_RECIPIENTS)
        e = self.assertRaises(SMTPError, limits.validateSender, session, makeEnvelope())
        self.assertEqual(e.reply, TOO_MANY_RECIPIENTS)

    def test_relayedRecipientsCountedAfterData(self) -> None:
        """Recipients no validator saw count at the end of data; the next MAIL is refused."""
        limits = ConnectionLimits(self.clock, recipientRate=3)
        session = makeSession("192.0.2.1", authenticated="u")
        envelope = makeEnvelope("a@example.org", *[f"r{i}@far.example" for i in range(3)])
        limits.validateSender(session, envelope)
        limits.filterMessage(session, envelope, None)
        e = self.assertRaises(SMTPError, limits.validateSender, session, makeEnvelope())
        self.assertEqual(e.reply, TOO_MANY_RECIPIENTS)


def connect(factory: SMTPServerFactory, host: str, port: int) -> tuple[Any, StringTransport]:
    proto = factory.buildProtocol(None)
    transport = StringTransport(peerAddress=IPv4Address("TCP", host, port))
    proto.makeConnection(transport)
    return proto, transport


class ServerTests(SynchronousTestCase):
    """ConnectionLimits in a server, with many connections in memory."""

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.limits = ConnectionLimits(self.clock, total=100, perClient=10, messageRate=5)
        config = ServerConfig(hostname="mx.test", localDomains=frozenset({"example.com"}))
        self.factory = SMTPServerFactory(
            config,
            MemoryBackend(),
            [self.limits, Listed("user")],
            senderValidators=[self.limits],
            connectionFilters=[self.limits],
            clock=self.clock,
        )

    def test_askedOnlyWhereALimitIsOn(self) -> None:
        """
        Given at every plug point, the limits are in the chains where a limit
        is on (asksAt), and out of the others; they still count connections.
        """
        # setUp's: a message rate, no recipient rate
        self.assertEqual(self.factory.senderValidators, (self.limits,))
        self.assertNotIn(self.limits, self.factory.validators)
        config = ServerConfig(hostname="mx.test", localDomains=frozenset({"example.com"}))
        limits = ConnectionLimits(self.clock, total=100, perClient=1)  # no rate at all
        factory = SMTPServerFactory(
            config,
            MemoryBackend(),
            [limits, Listed("user")],
            senderValidators=[limits],
            connectionFilters=[limits],
            messageFilters=[limits],
            clock=self.clock,
        )
        self.assertEqual((factory.connectionFilters, factory.senderValidators), ((limits,), ()))
        self.assertEqual((len(factory.validators), factory.messageFilters), (1, ()))
        self.assertIn(limits, factory.observers)
        proto, transport = connect(factory, "192.0.2.1", 1000)
        self.assertEqual(limits.connections, 1)
        _, second = connect(factory, "192.0.2.1", 1001)
        self.assertEqual(codes(second.value()), ["421 4.7.0"])  # perClient=1 still holds
        transport.clear()
        proto.dataReceived(
            b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<user@example.com>\r\nDATA\r\n"
        )
        proto.dataReceived(b"Subject: s\r\n\r\nhi\r\n.\r\n")
        self.assertEqual(
            codes(transport.value())[-4:], ["250 2.1.0", "250 2.1.5", "354", "250 2.0.0"]
        )
        proto.connectionLost(None)
        self.assertEqual(limits.connections, 0)

    def test_manyConnections(self) -> None:
        """Of 150 connections from 20 clients, 10 each are served, then the total bites."""
        greeted, refused = [], []
        sessions = []
        for i in range(150):
            proto, transport = connect(self.factory, f"192.0.2.{i % 20}", 1000 + i)
            sessions.append((proto, transport))
            (greeted if transport.value().startswith(b"220") else refused).append(transport)
        self.assertEqual(len(greeted), 100)
        self.assertEqual(self.limits.connections, 100)
        for transport in refused:
            # not a greeting: the service closing the channel, with its enhanced code
            self.assertEqual(codes(transport.value()), ["421 4.7.0"])
            self.assertIn(b"Too many connections", transport.value())
            self.assertTrue(transport.disconnecting)
        for proto, _ in sessions:
            proto.connectionLost(None)
        self.assertEqual(self.limits.connections, 0)
        self.assertEqual(self.limits._perClient, {})

    def test_messageRateInSession(self) -> None:
        """The sixth MAIL in a minute gets 421 4.7.0 and the connection closes."""
        proto, transport = connect(self.factory, "192.0.2.1", 1000)
        transport.clear()
        proto.dataReceived(b"EHLO c\r\n" + b"MAIL FROM:<a@b.example>\r\nRSET\r\n" * 6)
        self.assertEqual(codes(transport.value())[-3:], ["250 2.1.0", "250 2.0.0", "421 4.7.0"])
        self.assertTrue(transport.disconnecting)
