"""
Tests for the decision events (L{mailframe.events}) of the server
(L{mailframe.server._decisions}) and of the queue
(L{mailframe.queue._decisions}): each decision one event with its fields
and one readable line, in memory (StringTransport, a fake clock).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from mailframe import events
from mailframe import reply as R
from mailframe.backends.memory import MemoryBackend
from mailframe.config import ServerConfig
from mailframe.envelope import DeliveryResult, Envelope, Recipient, SessionInfo
from mailframe.interfaces import IConnectionFilter, IMessageFilter, IRecipientValidator
from mailframe.message import Message
from mailframe.reply import Reply, SMTPError
from mailframe.server import SMTPServerFactory, SMTPServerProtocol
from tests._transports import CountingTransport
from tests.test_queue import LATER, NO_USER, QueueCase, envelope

SESSION = (
    b"EHLO client.example\r\nMAIL FROM:<alice@sender.example>\r\n"
    b"RCPT TO:<nobody@example.com>\r\nRCPT TO:<bob@example.com>\r\n"
    b"DATA\r\nSubject: hi\r\n\r\nHello\r\n.\r\nQUIT\r\n"
)


@implementer(IRecipientValidator)
class Users:
    """Knows bob and carol; refuses anyone else with 550 5.1.1."""

    def validateRecipient(
        self, session: SessionInfo, envelope: Envelope, recipient: Recipient
    ) -> Any:
        if recipient.address.localPart in ("bob", "carol"):
            return True
        raise SMTPError(550, (5, 1, 1), f"<{recipient.address}>: no such user")


@implementer(IConnectionFilter)
class NoOne:
    """Refuses every connection."""

    def acceptConnection(self, session: SessionInfo) -> Any:
        raise SMTPError(554, (5, 7, 1), "Go away")


@implementer(IMessageFilter)
class NoSpam:
    """Refuses every message."""

    def filterMessage(self, session: SessionInfo, envelope: Envelope, message: Message) -> Any:
        raise SMTPError(550, (5, 7, 1), "Spam")


class BounceBackend(MemoryBackend):
    """Refuses carol after the data, delivers the others."""

    def deliver(self, envelope: Envelope, message: Message) -> Any:
        return DeliveryResult(
            tuple(
                Reply(452, (4, 2, 2), "Mailbox full") if r.address.localPart == "carol" else R.OK
                for r in envelope.recipients
            )
        )


class DecisionCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.clock.advance(1000)
        self.logged: list[LogEvent] = []
        globalLogPublisher.addObserver(self.logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.logged.append)

    def serve(
        self, data: bytes, config: ServerConfig | None = None, **kwargs: Any
    ) -> tuple[SMTPServerProtocol, CountingTransport]:
        config = config or ServerConfig(
            hostname="mx.test", localDomains=frozenset({"example.com"})
        )
        users = kwargs.pop("validators", None) or [Users()]
        self.factory = SMTPServerFactory(
            config, kwargs.pop("backend", MemoryBackend()), validators=users,
            clock=self.clock, **kwargs,
        )  # fmt: skip
        self.factory.context.deciderNames[id(users[0])] = "addresses:/etc/users"
        proto = self.factory.buildProtocol(None)
        transport = CountingTransport()
        proto.makeConnection(transport)
        proto.dataReceived(data)
        return proto, transport

    def decisions(self, name: str | None = None) -> list[LogEvent]:
        return [
            e for e in self.logged if events.KEY in e and (name is None or e[events.KEY] == name)
        ]


class ServerDecisionTests(DecisionCase):
    def test_refusedAndAccepted(self) -> None:
        """One refused and one accepted recipient: a line for each, with client, HELO, sender, recipient, reply, decider."""
        proto, _ = self.serve(SESSION)
        [refused] = self.decisions(events.REFUSED)
        [accepted] = self.decisions(events.ACCEPTED)
        peer = proto.session.peerHost
        self.assertEqual(
            {
                k: refused[k]
                for k in (
                    "stage",
                    "clientAddress",
                    "clientName",
                    "helo",
                    "sender",
                    "recipient",
                    "reply",
                    "code",
                    "decider",
                )
            },
            {
                "stage": "rcpt",
                "clientAddress": peer,
                "clientName": "unknown",
                "helo": "client.example",
                "sender": "alice@sender.example",
                "recipient": "nobody@example.com",
                "reply": "550 5.1.1 <nobody@example.com>: no such user",
                "code": 550,
                "decider": "addresses:/etc/users",
            },
        )
        self.assertEqual(refused["sessionID"], proto.session.sessionID)
        self.assertEqual(refused["queueID"], accepted["queueID"])
        self.assertEqual(
            formatEvent(refused),
            f"{proto.session.sessionID} {accepted['queueID']} refused rcpt from unknown[{peer}] "
            "helo=<client.example> from=<alice@sender.example> to=<nobody@example.com>: "
            "550 5.1.1 <nobody@example.com>: no such user (by addresses:/etc/users)",
        )
        self.assertEqual(accepted["recipients"], ["bob@example.com"])
        self.assertEqual(
            (accepted["sender"], accepted["helo"]), ("alice@sender.example", "client.example")
        )
        self.assertEqual(accepted["clientAddress"], peer)
        self.assertGreater(accepted["size"], 0)
        self.assertEqual(accepted["code"], 250)
        self.assertIn(accepted["queueID"], accepted["reply"])
        self.assertEqual(
            formatEvent(accepted),
            f"{proto.session.sessionID} {accepted['queueID']} accepted from=<alice@sender.example> "
            f"to=bob@example.com size={accepted['size']} client=unknown[{peer}] "
            "helo=<client.example> (250)",
        )

    def test_eventOrder(self) -> None:
        """A session's events come in order: connect, refused, accepted, disconnect."""
        proto, _ = self.serve(SESSION)
        proto.connectionLost(None)  # type: ignore[arg-type]
        self.assertEqual(
            [e[events.KEY] for e in self.decisions()],
            [events.CONNECT, events.REFUSED, events.ACCEPTED, events.DISCONNECT],
        )
        [connect] = self.decisions(events.CONNECT)
        self.assertEqual(
            (connect["listener"], connect["clientAddress"]), ("smtp", proto.session.peerHost)
        )
        self.assertEqual({e["sessionID"] for e in self.decisions()}, {proto.session.sessionID})

    def test_disconnectCounts(self) -> None:
        """The disconnect line counts each command, N/M where some failed, like Postfix's."""
        proto, _ = self.serve(SESSION)
        self.clock.advance(2.5)
        proto.connectionLost(None)  # type: ignore[arg-type]
        [gone] = self.decisions(events.DISCONNECT)
        self.assertIn(" ehlo=1 mail=1 rcpt=1/2 data=1 quit=1 commands=5/6 ", formatEvent(gone))
        self.assertEqual(gone["commands"], {"ehlo": 1, "mail": 1, "rcpt": 2, "data": 1, "quit": 1})
        self.assertEqual(gone["failed"], {"rcpt": 1})
        self.assertEqual(gone["replies"], {"connect:2": 1, "ehlo:2": 1, "mail:2": 1, "rcpt:5": 1,
                                           "rcpt:2": 1, "data:3": 1, "data:2": 1, "quit:2": 1})  # fmt: skip
        self.assertEqual(gone["bytesIn"], len(b"Subject: hi\r\n\r\nHello\r\n"))
        self.assertEqual(gone["duration"], 2.5)

    def test_protocolErrors(self) -> None:
        """A line the core refuses counts as its command's failure (or unknown) and is a refusal."""
        proto, _ = self.serve(b"EHLO c\r\nMAIL FROM:<broken\r\nFOO bar\r\nQUIT\r\n")
        proto.connectionLost(None)  # type: ignore[arg-type]
        stages = [(e["stage"], e["code"], e["decider"]) for e in self.decisions(events.REFUSED)]
        self.assertEqual(stages, [("mail", 501, "mailframe"), ("unknown", 500, "mailframe")])
        [gone] = self.decisions(events.DISCONNECT)
        self.assertEqual(gone["counts"], "ehlo=1 mail=0/1 unknown=0/1 quit=1 commands=2/4")

    def test_refusedConnection(self) -> None:
        """A connection filter's refusal: a connect line, then a refusal at stage connect naming it."""
        filter = NoOne()
        factory = SMTPServerFactory(
            ServerConfig(hostname="mx.test"), MemoryBackend(), connectionFilters=[filter],
            clock=self.clock,
        )  # fmt: skip
        factory.context.deciderNames[id(filter)] = "dnsbl:zen.example"
        proto = factory.buildProtocol(None)
        proto.makeConnection(CountingTransport())
        [connect, refused] = self.decisions()
        self.assertEqual(connect[events.KEY], events.CONNECT)
        self.assertEqual((refused["stage"], refused["code"], refused["decider"]),
                         ("connect", 554, "dnsbl:zen.example"))  # fmt: skip
        self.assertEqual(factory.context.stats.refusedConnections, 1)

    def test_messageRefused(self) -> None:
        """A filter's refusal after the data: stage data, the recipients, the size, the filter."""
        self.serve(SESSION, messageFilters=[NoSpam()])
        [_, refused] = self.decisions(events.REFUSED)
        self.assertEqual((refused["stage"], refused["decider"], refused["recipients"]),
                         ("data", "NoSpam", ["bob@example.com"]))  # fmt: skip
        self.assertGreater(refused["size"], len(b"Subject: hi\r\n\r\nHello\r\n"))  # + Received:
        self.assertIn(" refused data from ", formatEvent(refused))
        self.assertIn(" to=bob@example.com size=", formatEvent(refused))
        self.assertEqual(self.decisions(events.ACCEPTED), [])

    def test_stats(self) -> None:
        """The totals: a refused recipient counts as a refusal (of a recipient), the message as accepted."""
        self.serve(SESSION)
        stats = self.factory.context.stats
        self.assertEqual((stats.accepted, stats.acceptedRecipients), (1, 1))
        self.assertEqual((stats.refused, stats.refusedRecipients), (1, 1))
        self.assertEqual(self.factory.refused, 1)

    def test_statsMessageRefused(self) -> None:
        """A message refused after its data is one refusal; nothing accepted."""
        self.serve(SESSION, messageFilters=[NoSpam()])
        stats = self.factory.context.stats
        self.assertEqual((stats.accepted, stats.refused, stats.refusedRecipients), (0, 2, 1))

    def test_statsSequenceErrors(self) -> None:
        """A sequence error (RCPT before MAIL) is a refused line, but refuses no mail."""
        self.serve(b"EHLO c\r\nRCPT TO:<bob@example.com>\r\n")
        [refused] = self.decisions(events.REFUSED)
        self.assertEqual((refused["stage"], refused["code"]), ("rcpt", 503))
        self.assertEqual(self.factory.context.stats.refused, 0)

    def test_tooBig(self) -> None:
        """A message over the size limit: a refusal at stage data, counted as a refused message."""
        from mailframe.protocol import Limits

        config = ServerConfig(hostname="mx.test", localDomains=frozenset({"example.com"}),
                              limits=Limits(messageSize=10))  # fmt: skip
        proto, _ = self.serve(
            b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<bob@example.com>\r\n"
            b"DATA\r\n" + b"x" * 100 + b"\r\n.\r\nQUIT\r\n",
            config,
        )
        proto.connectionLost(None)  # type: ignore[arg-type]
        [refused] = self.decisions(events.REFUSED)
        self.assertEqual((refused["stage"], refused["code"]), ("data", 552))
        self.assertEqual(self.factory.context.stats.refused, 1)
        [gone] = self.decisions(events.DISCONNECT)
        self.assertEqual(gone["counts"], "ehlo=1 mail=1 rcpt=1 data=0/1 quit=1 commands=4/5")

    def test_quiet(self) -> None:
        """With logMessages off (--quiet) no decision event is logged; the totals are kept."""
        config = ServerConfig(hostname="mx.test", localDomains=frozenset({"example.com"}),
                              logMessages=False)  # fmt: skip
        proto, _ = self.serve(SESSION, config)
        proto.connectionLost(None)  # type: ignore[arg-type]
        self.assertEqual(self.decisions(), [])
        stats = self.factory.context.stats
        self.assertEqual((stats.accepted, stats.refused), (1, 1))

    def test_lmtp(self) -> None:
        """LMTP: the accepted line has each recipient's result; each refused one its own refusal."""
        config = ServerConfig(
            hostname="mx.test", localDomains=frozenset({"example.com"}), lmtp=True
        )
        self.serve(
            b"LHLO client.example\r\nMAIL FROM:<alice@sender.example>\r\n"
            b"RCPT TO:<bob@example.com>\r\nRCPT TO:<carol@example.com>\r\nDATA\r\nHi\r\n.\r\n",
            config, backend=BounceBackend(),
        )  # fmt: skip
        [accepted] = self.decisions(events.ACCEPTED)
        self.assertEqual(accepted["recipients"], ["bob@example.com"])
        self.assertEqual([(r["recipient"], r["code"]) for r in accepted["results"]],
                         [("bob@example.com", 250), ("carol@example.com", 452)])  # fmt: skip
        self.assertIn(" to=bob@example.com(250),carol@example.com(452) ", formatEvent(accepted))
        [refused] = self.decisions(events.REFUSED)
        self.assertEqual((refused["stage"], refused["recipient"], refused["code"]),
                         ("data", "carol@example.com", 452))  # fmt: skip
        self.assertEqual(refused["decider"], "BounceBackend")
        stats = self.factory.context.stats
        self.assertEqual((stats.accepted, stats.acceptedRecipients, stats.refused), (1, 1, 1))

    def test_tls(self) -> None:
        """The TLS handshake's completion is a line with the version and cipher."""
        proto, transport = self.serve(b"")
        transport.getHandle = lambda: object()  # type: ignore[attr-defined]
        proto.handshakeCompleted()
        [tls] = self.decisions(events.TLS)
        self.assertEqual((tls["tlsVersion"], tls["cipher"]), ("TLS", "unknown"))
        self.assertEqual(tls["sessionID"], proto.session.sessionID)

    def test_authenticated(self) -> None:
        """AUTH success: the user and mechanism, never a password."""
        proto, _ = self.serve(b"")
        proto.authenticated("alice", "PLAIN")
        [auth] = self.decisions(events.AUTH)
        self.assertEqual(
            (auth["user"], auth["mechanism"], auth["success"]), ("alice", "PLAIN", True)
        )
        self.assertIn(" auth ok user=alice mechanism=PLAIN ", formatEvent(auth))


class QueueDecisionTests(QueueCase):
    def decisions(self, name: str) -> list[LogEvent]:
        return [e for e in self.logged if e.get(events.KEY) == name]

    def test_queuedAndSent(self) -> None:
        """A message queued then relayed: queue.queued, then queue.sent with the relay and delays."""
        entryID = self.send(envelope("s@example.com", "a@remote.example"))
        [queued] = self.decisions(events.QUEUE_QUEUED)
        self.assertEqual((queued["queueID"], queued["sender"], queued["recipients"]),
                         (entryID, "s@example.com", ["a@remote.example"]))  # fmt: skip
        [sent] = self.decisions(events.QUEUE_SENT)
        self.assertEqual((sent["queueID"], sent["recipient"], sent["kind"], sent["dsn"]),
                         (entryID, "a@remote.example", "relay", "2.0.0"))  # fmt: skip
        self.assertEqual(sent["relay"], "mx.remote [192.0.2.7]")
        self.assertEqual(sent["delays"], {"queued": 0.0, "transfer": 0.0})
        self.assertIn(
            f"{entryID} to=<a@remote.example> relayed via mx.remote [192.0.2.7] ",
            formatEvent(sent),
        )

    def test_sentTLS(self) -> None:
        """queue.sent names the TLS version the relay's session used (None in clear)."""
        relay = self.relay.relay

        def overTLS(*args: Any) -> Any:
            return relay(*args).addCallback(lambda r: replace(r, tls="TLSv1.3"))

        self.relay.relay = overTLS  # type: ignore[method-assign]
        self.send(envelope("s@example.com", "a@remote.example"))
        self.relay.relay = relay  # type: ignore[method-assign]
        self.send(envelope("s@example.com", "b@remote.example"))
        sent = self.decisions(events.QUEUE_SENT)
        self.assertEqual([(e["recipient"], e["tls"]) for e in sent],
                         [("a@remote.example", "TLSv1.3"), ("b@remote.example", None)])  # fmt: skip

    def test_deferred(self) -> None:
        """A 4xx: queue.deferred with the reply and the next attempt's time."""
        self.relay.answer = lambda a: LATER
        self.send(envelope("s@example.com", "a@remote.example"))
        [deferred] = self.decisions(events.QUEUE_DEFERRED)
        self.assertEqual(deferred["reply"], "451 4.4.1 Try again later")
        self.assertEqual(deferred["nextAttempt"], self.clock.seconds() + 300)
        self.assertIn(
            " deferred via mx.remote [192.0.2.7] attempts=1 next in 300s ", formatEvent(deferred)
        )

    def test_bounced(self) -> None:
        """A 5xx: queue.bounced, with its DSN status."""
        self.relay.answer = lambda a: NO_USER
        self.send(envelope("s@example.com", "a@remote.example"))
        [bounced] = self.decisions(events.QUEUE_BOUNCED)
        self.assertEqual((bounced["recipient"], bounced["code"], bounced["dsn"]),
                         ("a@remote.example", 550, "5.1.1"))  # fmt: skip

    def test_expired(self) -> None:
        """Still 4xx when the queue gives up: queue.expired."""
        from mailframe.queue import RetryPolicy

        self.start(retry=RetryPolicy(initial=300, maximum=300, giveUp=300))
        self.relay.answer = lambda a: LATER
        self.send(envelope("s@example.com", "a@remote.example"))
        self.clock.advance(300)
        [expired] = self.decisions(events.QUEUE_EXPIRED)
        self.assertEqual((expired["recipient"], expired["attempts"]), ("a@remote.example", 2))

    def test_heldReleasedDeleted(self) -> None:
        """An operator's hold, release and delete are one event each."""
        self.relay.hold = True
        entryID = self.send(envelope("s@example.com", "a@remote.example"))
        self.relay.hold = False
        self.runner.delete(entryID)
        self.relay.answer = lambda a: LATER
        other = self.send(envelope("s@example.com", "b@remote.example"))
        self.successResultOf(self.runner.hold(other))
        self.successResultOf(self.runner.release(other))
        names = [(e[events.KEY], e["queueID"]) for e in self.logged if e.get(events.KEY) in (
            events.QUEUE_HELD, events.QUEUE_RELEASED, events.QUEUE_DELETED)]  # fmt: skip
        self.assertEqual(names, [(events.QUEUE_DELETED, entryID), (events.QUEUE_HELD, other),
                                 (events.QUEUE_RELEASED, other)])  # fmt: skip

    def test_quiet(self) -> None:
        """Without logDeliveries the queue logs no per-message events."""
        self.start(logDeliveries=False)
        self.send(envelope("s@example.com", "a@remote.example"))
        self.assertEqual(
            self.decisions(events.QUEUE_QUEUED) + self.decisions(events.QUEUE_SENT), []
        )


class ProxiedDecisionTests(DecisionCase):
    def test_proxiedClient(self) -> None:
        """Behind a PROXY header the lines name the client it gives, and connect says proxied."""
        from twisted.internet.address import IPv4Address
        from twisted.internet.testing import StringTransport

        from mailframe.server.proxy import ProxyHeaderFactory

        smtp = SMTPServerFactory(
            ServerConfig(hostname="mx.test", localDomains=frozenset({"example.com"})),
            MemoryBackend(), validators=[Users()], clock=self.clock,
        )  # fmt: skip
        proto = ProxyHeaderFactory(smtp, ["127.0.0.0/8"], self.clock).buildProtocol(None)
        proto.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 5555)))
        proto.dataReceived(b"PROXY TCP4 203.0.113.9 192.0.2.1 40000 25\r\n" + SESSION)
        [connect] = self.decisions(events.CONNECT)
        self.assertEqual((connect["clientAddress"], connect["proxied"]), ("203.0.113.9", True))
        [refused] = self.decisions(events.REFUSED)
        self.assertEqual(refused["clientAddress"], "203.0.113.9")

    def test_notProxied(self) -> None:
        """Without a PROXY header, connect says not proxied."""
        self.serve(SESSION)
        [connect] = self.decisions(events.CONNECT)
        self.assertIs(connect["proxied"], False)
