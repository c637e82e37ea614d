"""
Tests for L{mailframe.backends.routed} and the C{deliver-routes} setting:
per-domain delivery backends (a pipe program for a list domain) in front
of a listener's own.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from mailframe.address import Domain, parseMailbox
from mailframe.app import route, tap
from mailframe.backends.memory import MemoryBackend
from mailframe.backends.routed import RoutedDelivery
from mailframe.envelope import DeliveryResult, Envelope, Recipient
from mailframe.interfaces import IDeliveryBackend
from mailframe.message import Message
from mailframe.plugins import SettingError
from mailframe.reply import Reply, SMTPError


def envelope(*addresses: str) -> Envelope:
    return Envelope(
        "Q1", parseMailbox("s@sender.example"), {}, [Recipient(parseMailbox(a)) for a in addresses]
    )


def message() -> Message:
    m = Message()
    m.write(b"Subject: x\r\n\r\nx\r\n")
    m.finish()
    return m


@implementer(IDeliveryBackend)
class Coded:
    """Answers each recipient with a code from its local part (b... 550, else 250), or fails."""

    def __init__(self, later: bool = False, broken: Exception | None = None) -> None:
        self.later = later
        self.broken = broken
        self.seen: list[list[str]] = []
        self.pending: list[defer.Deferred[Any]] = []

    def deliver(self, envelope: Envelope, message: Message) -> Any:
        self.seen.append([str(r.address) for r in envelope.recipients])
        if self.broken is not None:
            raise self.broken
        result = DeliveryResult(
            tuple(Reply(550 if r.address.localPart.startswith("b") else 250, None, "x")
                  for r in envelope.recipients),
            tuple(f"host-{r.address.localPart}" for r in envelope.recipients),
        )  # fmt: skip
        if self.later:
            d: defer.Deferred[Any] = defer.Deferred()
            self.pending.append(d)
            return d.addCallback(lambda _: result)
        return result


class RoutedDeliveryTests(SynchronousTestCase):
    def test_interface(self) -> None:
        """A RoutedDelivery is a delivery backend."""
        self.assertTrue(verifyObject(IDeliveryBackend, RoutedDelivery(MemoryBackend(), {})))

    def test_byDomain(self) -> None:
        """Each recipient to its domain's backend (.parent for subdomains); replies in order."""
        default, lists, sub = MemoryBackend(), Coded(), Coded()
        routed = RoutedDelivery(default, {"Lists.Example.com": lists, ".sub.example": sub})
        self.assertIs(routed.backendFor(Domain("lists.example.com")), lists)
        self.assertIs(routed.backendFor(Domain("a.b.sub.example")), sub)
        self.assertIs(routed.backendFor(Domain("sub.example")), default)
        result = routed.deliver(
            envelope("a@example.com", "bob@lists.example.com", "c@x.sub.example",
                     "d@lists.example.com"), message()
        )  # fmt: skip
        self.assertEqual([r.code for r in result.replies], [250, 550, 250, 250])
        self.assertEqual(result.remote, (None, "host-bob", "host-c", "host-d"))
        self.assertEqual(lists.seen, [["bob@lists.example.com", "d@lists.example.com"]])
        self.assertEqual([str(r.address) for r in default.messages[0].envelope.recipients],
                         ["a@example.com"])  # fmt: skip

    def test_oneBackend(self) -> None:
        """All recipients of one backend: the envelope goes to it as it is."""
        lists = Coded()
        routed = RoutedDelivery(MemoryBackend(), {"lists.example.com": lists})
        env = envelope("a@lists.example.com")
        routed.deliver(env, message())
        self.assertEqual(lists.seen, [["a@lists.example.com"]])
        self.assertIsNone(routed.deliver(envelope("a@example.com"), message()))

    def test_deferred(self) -> None:
        """A backend answering later: the whole answer waits for it."""
        lists = Coded(later=True)
        routed = RoutedDelivery(MemoryBackend(), {"lists.example.com": lists})
        d = routed.deliver(envelope("a@example.com", "x@lists.example.com"), message())
        self.assertNoResult(d)
        lists.pending[0].callback(None)
        self.assertEqual([r.code for r in self.successResultOf(d).replies], [250, 250])

    def test_failure(self) -> None:
        """A backend that fails answers its own recipients (SMTPError's reply, or 451)."""
        full = Coded(broken=SMTPError(Reply(452, (4, 3, 1), "Disk full")))
        broken = Coded(broken=RuntimeError("boom"))
        routed = RoutedDelivery(MemoryBackend(), {"a.example": full, "b.example": broken})
        result = routed.deliver(envelope("x@example.com", "y@a.example", "z@b.example"), message())
        self.assertEqual([r.code for r in result.replies], [250, 452, 451])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class SettingTests(TestCase):
    def write(self, text: str) -> str:
        path = os.path.abspath(self.mktemp())
        Path(path).write_text(text)
        return path

    def test_parsed(self) -> None:
        """deliver-routes is a table of domain = backend description, checked."""
        path = self.write('[deliver-routes]\n"lists.example.com" = "memory"\n')
        options = tap.Options()
        options.parseOptions(["--config", path])
        self.assertEqual(options.listeners[0].deliverRoutes, {"lists.example.com": "memory"})
        for bad, message in (('"x y" = "memory"', "not a domain"),
                             ('"a.example" = "nosuch:x"', "unknown delivery backend")):  # fmt: skip
            options = tap.Options()
            with self.assertRaises((SettingError, Exception)) as caught:
                options.parseOptions(["--config", self.write(f"[deliver-routes]\n{bad}\n")])
            self.assertIn(message, str(caught.exception))

    def test_makeService(self) -> None:
        """makeService puts the routes in front of deliver, and makes their domains local."""
        path = self.write('[deliver-routes]\n"lists.example.com" = "memory"\n')
        options = tap.Options()
        options.parseOptions(["--config", path, "--deliver", "memory", "--listen",
                              "tcp:0:interface=127.0.0.1", "--domain", "example.com"])  # fmt: skip
        service = tap.makeService(options)
        factory = service.factories[0]
        self.assertIsInstance(factory.backend, RoutedDelivery)
        self.assertIn(Domain("lists.example.com"), factory.config.localDomains)
        self.assertTrue(any("delivers lists.example.com with memory" in a
                            for a in service.announcements))  # fmt: skip

    def test_route(self) -> None:
        """mailframe route names the route's backend."""
        path = self.write('[deliver-routes]\n"lists.example.com" = "memory:keep=no"\n')
        options = route.RouteOptions()
        options.parseOptions(["--config", path, "--deliver", "memory", "--domain", "example.com",
                              "x@lists.example.com", "y@example.com"])  # fmt: skip
        out = io.StringIO()
        status = self.successResultOf(route.explain(reactor, options, out))
        self.assertEqual(status, 0)
        self.assertIn("x@lists.example.com\n  accepted (by AnyRecipient)\n"
                      "    delivered by memory:keep=no (no queue)", out.getvalue())  # fmt: skip
        self.assertIn("y@example.com\n  accepted (by AnyRecipient)\n"
                      "    delivered by memory (no queue)", out.getvalue())  # fmt: skip
