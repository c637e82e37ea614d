"""
Tests for L{mailframe.server.expansion}: recipient rewriters as a pipeline
at RCPT time, the validators judging their targets, and the delivery
backend given the targets (one reply per RCPT back).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from mailframe.address import Address, parseMailbox
from mailframe.backends.memory import MemoryBackend
from mailframe.config import ServerConfig
from mailframe.envelope import DeliveryResult, Envelope, Recipient, SessionInfo
from mailframe.extensions import defaultExtensions
from mailframe.extensions.dsn import DSN, decodeOrcpt
from mailframe.interfaces import IDeliveryBackend, IRecipientRewriter, IRecipientValidator
from mailframe.message import Message
from mailframe.reply import RECIPIENT_OK, Reply, SMTPError
from mailframe.server import SMTPServerFactory
from mailframe.server.expansion import MAX_TARGETS, ExpandedDelivery, orcptFor
from tests._transports import CountingTransport

LOOP = Reply(554, (5, 4, 6), "Alias loop")


@implementer(IRecipientValidator, IRecipientRewriter)
class Table:
    """A rewriter from a dict: local part -> target addresses (a Deferred when C{later})."""

    def __init__(self, table: dict[str, list[str]], later: bool = False) -> None:
        self.table = table
        self.later = later
        self.pending: list[defer.Deferred[Any]] = []
        self.asked: list[str] = []

    def validateRecipient(self, session: Any, envelope: Any, recipient: Any) -> None:
        return None

    def rewriteRecipient(
        self, session: SessionInfo, envelope: Envelope, recipient: Recipient
    ) -> Any:
        self.asked.append(str(recipient.address))
        local = recipient.address.localPart
        if local == "loop":
            raise SMTPError(LOOP)
        if local == "broken":
            raise RuntimeError("boom")
        targets = self.table.get(local)
        result = None if targets is None else [Recipient(parseMailbox(t)) for t in targets]
        if self.later:
            d: defer.Deferred[Any] = defer.Deferred()
            self.pending.append(d)
            return d.addCallback(lambda _: result)
        return result


@implementer(IRecipientValidator, IRecipientRewriter)
class Strip:
    """Takes C{+tag} off a local part, as subaddressing does."""

    def validateRecipient(self, session: Any, envelope: Any, recipient: Any) -> None:
        return None

    def rewriteRecipient(self, session: Any, envelope: Any, recipient: Recipient) -> Any:
        user, plus, tag = recipient.address.localPart.partition("+")
        if not plus:
            return None
        return [Recipient(Address(user, recipient.address.domain), detail=tag)]


@implementer(IRecipientValidator)
class Listed:
    """Accepts the listed local parts; no opinion on the others."""

    def __init__(self, *names: str) -> None:
        self.names = names
        self.asked: list[str] = []

    def validateRecipient(self, session: Any, envelope: Any, recipient: Recipient) -> Any:
        self.asked.append(str(recipient.address))
        return RECIPIENT_OK if recipient.address.localPart in self.names else None


class ServerCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.backend = MemoryBackend()

    def connect(self, validators: list[Any], **kwargs: Any) -> Any:
        config = ServerConfig(
            hostname="mx.test",
            localDomains=frozenset({"example.com", "example.org"}),
            logMessages=False,
        )
        self.factory = SMTPServerFactory(
            config,
            kwargs.pop("backend", self.backend),
            validators=validators,
            clock=self.clock,
            extensions=[*defaultExtensions(1 << 20), DSN()],
            **kwargs,
        )
        proto = self.factory.buildProtocol(None)
        self.transport = CountingTransport()
        proto.makeConnection(self.transport)
        self.proto = proto
        self.talk(b"EHLO client.test\r\nMAIL FROM:<s@sender.test>\r\n")
        return proto

    def talk(self, data: bytes) -> list[str]:
        self.transport.clear()
        self.proto.dataReceived(data)
        return [
            line.decode()
            for line in self.transport.value().split(b"\r\n")
            if line and line[3:4] == b" "
        ]

    def rcpt(self, address: str, params: str = "") -> str:
        [line] = self.talk(f"RCPT TO:<{address}>{params}\r\n".encode())
        return line

    def data(self) -> str:
        return self.talk(b"DATA\r\nSubject: hi\r\n\r\nHello\r\n.\r\n")[-1]


class RewritingTests(ServerCase):
    def test_noRewritersNoWrapper(self) -> None:
        """A server without rewriters keeps its backend as it is."""
        self.connect([Listed("a")])
        self.assertIs(self.factory.backend, self.backend)
        self.assertEqual(self.factory.context.rewriters, ())

    def test_wrapped(self) -> None:
        """With a rewriter the backend is wrapped, and the wrapper is a backend."""
        self.connect([Table({}), Listed("a")])
        backend = self.factory.backend
        self.assertIsInstance(backend, ExpandedDelivery)
        self.assertTrue(verifyObject(IDeliveryBackend, backend))

    def test_unchanged(self) -> None:
        """A recipient no rewriter changes is judged as it is, and delivered as it is."""
        table = Table({"list": ["a@example.com"]})
        self.connect([table, Listed("a")])
        self.assertTrue(self.rcpt("a@example.com").startswith("250"))
        self.assertTrue(self.rcpt("b@example.com").startswith("550 5.1.1"))
        self.assertTrue(self.data().startswith("250"))
        [stored] = self.backend.messages
        [r] = stored.envelope.recipients
        self.assertEqual((str(r.address), r.targets, r.original), ("a@example.com", None, None))

    def test_expanded(self) -> None:
        """An alias is accepted for its targets; the backend gets the targets, with original and ORCPT."""
        table = Table({"list": ["a@example.com", "b@example.org"]})
        validator = Listed("a", "b")
        self.connect([table, validator])
        self.assertTrue(self.rcpt("list@example.com", " NOTIFY=FAILURE").startswith("250"))
        self.assertEqual(validator.asked, ["a@example.com", "b@example.org"])
        self.assertTrue(self.data().startswith("250"))
        [stored] = self.backend.messages
        targets = stored.envelope.recipients
        self.assertEqual([str(t.address) for t in targets], ["a@example.com", "b@example.org"])
        for t in targets:
            self.assertEqual(t.original, parseMailbox("list@example.com"))
            self.assertEqual(t.params["NOTIFY"], "FAILURE")
            self.assertEqual(decodeOrcpt(t.params["ORCPT"]), ("rfc822", "list@example.com"))

    def test_clientOrcptKept(self) -> None:
        """An ORCPT the client gave stays on the targets."""
        self.connect([Table({"list": ["a@example.com"]}), Listed("a")])
        self.rcpt("list@example.com", " ORCPT=rfc822;first@example.net")
        self.data()
        [t] = self.backend.messages[0].envelope.recipients
        self.assertEqual(t.params["ORCPT"], "rfc822;first@example.net")

    def test_targetRefused(self) -> None:
        """A local target the validators refuse refuses the RCPT with their reply."""
        self.connect([Table({"list": ["a@example.com", "nobody@example.com"]}), Listed("a")])
        self.assertTrue(self.rcpt("list@example.com").startswith("550 5.1.1"))

    def test_remoteTargetsNotValidated(self) -> None:
        """Targets of other domains are forwarded: not judged, not rewritten again."""
        table = Table({"fwd": ["x@remote.test"]})
        validator = Listed("a")
        self.connect([table, Strip(), validator])
        self.assertTrue(self.rcpt("fwd@example.com").startswith("250"))
        self.assertEqual(validator.asked, [])
        self.assertEqual(table.asked, ["fwd@example.com"])

    def test_pipeline(self) -> None:
        """Each rewriter is given what the one before produced; the detail is kept."""
        self.connect([Strip(), Table({"list": ["a+x@example.com", "b@example.com"]}), Strip(),
                      Listed("a", "b")])  # fmt: skip
        self.assertTrue(self.rcpt("list+news@example.com").startswith("250"))
        self.data()
        targets = self.backend.messages[0].envelope.recipients
        self.assertEqual(
            [(str(t.address), t.detail) for t in targets],
            [("a@example.com", "x"), ("b@example.com", None)],
        )

    def test_subaddressOnly(self) -> None:
        """user+tag becomes user with its detail; the validators judge user."""
        validator = Listed("a")
        self.connect([Strip(), validator])
        self.assertTrue(self.rcpt("a+tag@example.com").startswith("250"))
        self.assertEqual(validator.asked, ["a@example.com"])
        self.data()
        [t] = self.backend.messages[0].envelope.recipients
        self.assertEqual((str(t.address), t.detail, str(t.original)),
                         ("a@example.com", "tag", "a+tag@example.com"))  # fmt: skip

    def test_refused(self) -> None:
        """A rewriter's SMTPError is the reply to RCPT; nothing is recorded."""
        self.connect([Table({}), Listed("loop")])
        self.assertEqual(self.rcpt("loop@example.com"), "554 5.4.6 Alias loop")
        self.assertTrue(self.talk(b"DATA\r\n")[0].startswith("554"))

    def test_failed(self) -> None:
        """A rewriter that raises gets 451 4.3.0, and is logged."""
        self.connect([Table({}), Listed("broken")])
        self.assertTrue(self.rcpt("broken@example.com").startswith("451 4.3.0"))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_asynchronous(self) -> None:
        """A rewriter may answer with a Deferred; the reply waits for it."""
        table = Table({"list": ["a@example.com"]}, later=True)
        self.connect([table, Listed("a")])
        self.assertEqual(self.talk(b"RCPT TO:<list@example.com>\r\n"), [])
        table.pending.pop().callback(None)
        self.assertTrue(self.transport.value().startswith(b"250"))

    def test_discarded(self) -> None:
        """An empty expansion accepts the RCPT; nothing is delivered for it."""
        self.connect([Table({"devnull": []}), Listed("a")])
        self.assertTrue(self.rcpt("devnull@example.com").startswith("250"))
        self.assertTrue(self.data().startswith("250"))
        self.assertEqual(self.backend.messages, [])

    def test_duplicates(self) -> None:
        """A target that two RCPTs stand for is delivered once."""
        self.connect([Table({"list": ["a@example.com", "A@example.com", "b@example.com"]}),
                      Listed("a", "b")])  # fmt: skip
        self.rcpt("a@example.com")
        self.rcpt("list@example.com")
        self.assertTrue(self.data().startswith("250"))
        targets = self.backend.messages[0].envelope.recipients
        self.assertEqual([str(t.address) for t in targets], ["a@example.com", "b@example.com"])

    def test_tooMany(self) -> None:
        """An expansion beyond MAX_TARGETS is refused."""
        many = [f"u{i}@example.com" for i in range(MAX_TARGETS + 1)]
        self.connect([Table({"big": many}), Listed("a")])
        self.assertTrue(self.rcpt("big@example.com").startswith("550 5.5.3"))

    def test_postmasterRewritten(self) -> None:
        """postmaster may be an alias; unaliased it is accepted as always."""
        self.connect([Table({"postmaster": ["a@example.com"]}), Listed("a")])
        self.assertTrue(self.rcpt("postmaster@example.com").startswith("250"))
        self.data()
        [t] = self.backend.messages[0].envelope.recipients
        self.assertEqual(str(t.address), "a@example.com")
        self.connect([Table({}), Listed()])
        self.assertTrue(self.rcpt("postmaster@example.com").startswith("250"))

    def test_relayedNotRewritten(self) -> None:
        """Recipients of other domains (relayed) are never given to the rewriters."""
        table = Table({"x": ["a@example.com"]})
        self.connect([table, Listed("a")])
        self.assertTrue(self.rcpt("x@remote.test").startswith("550 5.7.1"))
        self.assertEqual(table.asked, [])


@implementer(IDeliveryBackend)
class Answering:
    """A backend answering each recipient from a dict of local part -> code."""

    def __init__(self, codes: dict[str, int]) -> None:
        self.codes = codes
        self.envelopes: list[Envelope] = []

    def deliver(self, envelope: Envelope, message: Message) -> DeliveryResult:
        self.envelopes.append(envelope)
        replies = tuple(
            Reply(self.codes.get(r.address.localPart, 250), None, r.address.localPart)
            for r in envelope.recipients
        )
        return DeliveryResult(replies, tuple(f"host-{r.address.localPart}" for r in
                                             envelope.recipients), queueID="Q9")  # fmt: skip


def target(address: str) -> Recipient:
    return Recipient(parseMailbox(address), original=parseMailbox("list@example.com"))


class ExpandedDeliveryTests(SynchronousTestCase):
    def deliver(self, backend: Any, *recipients: Recipient) -> Any:
        envelope = Envelope("Q1", parseMailbox("s@sender.test"), {}, list(recipients))
        m = Message()
        m.finish()
        return ExpandedDelivery(backend).deliver(envelope, m)

    def test_passThrough(self) -> None:
        """Without targets the envelope is given as it is."""
        backend = Answering({})
        r = Recipient(parseMailbox("a@example.com"))
        result = self.deliver(backend, r)
        self.assertEqual(backend.envelopes[0].recipients, [r])
        self.assertEqual(len(result.replies), 1)

    def test_perRecipient(self) -> None:
        """Each RCPT is answered for its targets: a 4xx before a 5xx before success."""
        backend = Answering({"b": 550, "c": 451, "d": 552})
        plain = Recipient(parseMailbox("a@example.com"))
        lst = Recipient(parseMailbox("list@example.com"),
                        targets=(target("a@example.com"), target("b@example.com"),
                                 target("c@example.com")))  # fmt: skip
        other = Recipient(parseMailbox("o@example.com"),
                          targets=(target("b@example.com"), target("d@example.com")))  # fmt: skip
        result = self.deliver(backend, plain, lst, other)
        self.assertEqual(
            [str(r.address) for r in backend.envelopes[0].recipients],
            ["a@example.com", "b@example.com", "c@example.com", "d@example.com"],
        )
        self.assertEqual([r.code for r in result.replies], [250, 451, 550])
        self.assertEqual(result.remote, ("host-a", "host-c", "host-b"))
        self.assertEqual(result.queueID, "Q9")

    def test_noneMeansAll(self) -> None:
        """A backend answering None (all delivered) stays None; discarded ones get 250."""
        lst = Recipient(parseMailbox("list@example.com"), targets=(target("a@example.com"),))
        self.assertIsNone(self.deliver(MemoryBackend(), lst))
        gone = Recipient(parseMailbox("devnull@example.com"), targets=())
        result = self.deliver(MemoryBackend(), lst, gone)
        self.assertEqual([r.code for r in result.replies], [250, 250])
        backend = MemoryBackend()
        result = self.deliver(backend, gone)
        self.assertEqual(backend.messages, [])
        self.assertEqual([r.code for r in result.replies], [250])

    def test_deferred(self) -> None:
        """A backend's Deferred answer is regrouped when it fires."""
        d: defer.Deferred[DeliveryResult | None] = defer.Deferred()

        @implementer(IDeliveryBackend)
        class Later:
            def deliver(self, envelope: Envelope, message: Message) -> Any:
                return d

        lst = Recipient(parseMailbox("list@example.com"),
                        targets=(target("a@example.com"), target("b@example.com")))  # fmt: skip
        result = self.deliver(Later(), lst)
        d.callback(DeliveryResult((Reply(250, None, "ok"), Reply(452, None, "full"))))
        self.assertEqual([r.code for r in self.successResultOf(result).replies], [452])

    def test_wrongCount(self) -> None:
        """A backend answering the wrong number of replies: 451 for every RCPT, logged."""

        @implementer(IDeliveryBackend)
        class Wrong:
            def deliver(self, envelope: Envelope, message: Message) -> Any:
                return DeliveryResult((Reply(250, None, "ok"),))

        lst = Recipient(parseMailbox("list@example.com"),
                        targets=(target("a@example.com"), target("b@example.com")))  # fmt: skip
        result = self.deliver(Wrong(), lst)
        self.assertEqual([r.code for r in result.replies], [451])


class OrcptTests(SynchronousTestCase):
    def test_ascii(self) -> None:
        """An ASCII address is rfc822 xtext."""
        self.assertEqual(orcptFor(parseMailbox("a+b=c@example.com")),
                         "rfc822;a+2Bb+3Dc@example.com")  # fmt: skip

    def test_utf8(self) -> None:
        """A UTF-8 address is utf-8 type with \\x{} escapes, and decodes back."""
        value = orcptFor(parseMailbox("jörg+x@bücher.example"))
        self.assertTrue(value.isascii())
        self.assertEqual(decodeOrcpt(value), ("utf-8", "jörg+x@bücher.example"))
