"""
Tests for the greylisting example of docs/security.rst
(C{docs/examples/greylist.py}), loaded from its file as a third party's
plug-in would be: the triplet, the delay, the expiry, the SQLite state kept
across restarts, and its IPlugInFactory.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Generator
from pathlib import Path
from types import ModuleType
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from mailframe.config import ProviderContext, ServerConfig
from mailframe.envelope import Recipient
from mailframe.interfaces import IPlugInFactory, IRecipientValidator, ISenderValidator
from mailframe.policy.testing import makeEnvelope, makeSession
from mailframe.reply import SMTPError

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "greylist.py"


def loadExample() -> ModuleType:
    spec = importlib.util.spec_from_file_location("greylist_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


greylist = loadExample()


class GreylistTests(TestCase):
    """The example plug-in against a real SQLite file and a fake clock."""

    timeout = 30

    def setUp(self) -> None:
        self.clock = Clock()
        self.path = self.mktemp()
        self.grey = self.make()

    def make(self) -> Any:
        grey = greylist.Greylist(self.clock, self.path, delay=300, expiry=3600, lifetime=86400)
        self.addCleanup(grey.close)
        return grey

    def ask(self, grey: Any, host: str = "192.0.2.1", sender: str = "a@example.org",
            rcpt: str = "bob@example.com", user: str | None = None) -> defer.Deferred[Any]:  # fmt: skip
        session, envelope = makeSession(host, authenticated=user), makeEnvelope(sender)
        grey.validateSender(session, envelope)
        recipient = Recipient(makeEnvelope(rcpt).mailFrom)
        d = defer.maybeDeferred(grey.validateRecipient, session, envelope, recipient)
        return d.addCallbacks(
            lambda r: ("pass", r), lambda f: ("refused", f.trap(SMTPError) and f.value.reply)
        )

    def test_verifyObject(self) -> None:
        """Greylist provides both validators; its factory is an IPlugInFactory."""
        self.assertTrue(verifyObject(ISenderValidator, self.grey))
        self.assertTrue(verifyObject(IRecipientValidator, self.grey))
        self.assertTrue(verifyObject(IPlugInFactory, greylist.greylistFactory))

    @defer.inlineCallbacks
    def test_delayThenPass(self) -> Generator[Any, Any, None]:
        """First try and early retries get 450 4.7.1; a retry after the delay passes, then always."""
        outcome, reply = yield self.ask(self.grey)
        self.assertEqual((outcome, reply.code, reply.enhanced), ("refused", 450, (4, 7, 1)))
        self.assertIn("300 seconds", str(reply))
        self.clock.advance(120)
        outcome, reply = yield self.ask(self.grey, host="192.0.2.200")  # same /24
        self.assertIn("180 seconds", str(reply))
        self.clock.advance(200)
        self.assertEqual((yield self.ask(self.grey)), ("pass", None))
        self.clock.advance(80000)
        self.assertEqual((yield self.ask(self.grey)), ("pass", None))

    @defer.inlineCallbacks
    def test_tripletsAreSeparate(self) -> Generator[Any, Any, None]:
        """Another recipient, sender or network is a new triplet."""
        yield self.ask(self.grey)
        self.clock.advance(400)
        self.assertEqual((yield self.ask(self.grey))[0], "pass")
        for kw in (
            {"rcpt": "carol@example.com"},
            {"sender": "b@example.org"},
            {"host": "198.51.100.1"},
        ):
            self.assertEqual((yield self.ask(self.grey, **kw))[0], "refused", kw)

    @defer.inlineCallbacks
    def test_expiry(self) -> Generator[Any, Any, None]:
        """A retry after expiry starts over."""
        yield self.ask(self.grey)
        self.clock.advance(4000)
        self.assertEqual((yield self.ask(self.grey))[0], "refused")
        self.clock.advance(301)
        self.assertEqual((yield self.ask(self.grey))[0], "pass")

    @defer.inlineCallbacks
    def test_authenticatedSkipped(self) -> Generator[Any, Any, None]:
        """An authenticated session is never greylisted."""
        self.assertEqual((yield self.ask(self.grey, user="alice")), ("pass", None))

    @defer.inlineCallbacks
    def test_stateSurvivesRestart(self) -> Generator[Any, Any, None]:
        """The SQLite file keeps the triplets across instances; cleanup forgets old ones."""
        yield self.ask(self.grey)
        self.clock.advance(400)
        yield self.ask(self.grey)
        other = self.make()
        self.assertEqual((yield self.ask(other)), ("pass", None))
        self.clock.advance(90000)
        yield other.cleanup()
        self.assertEqual((yield self.ask(other))[0], "refused")

    def test_factory(self) -> None:
        """greylist:PATH:delay=60 builds one; bad times are refused."""
        context = ProviderContext(MemoryReactorClock(), ServerConfig(hostname="mx.example"))
        grey = greylist.greylistFactory.makeProvider(context, self.mktemp(), delay="60")
        self.addCleanup(grey.close)
        self.assertEqual(grey.delay, 60.0)
        for bad in ({"delay": "x"}, {"delay": "0"}, {"delay": "500", "expiry": "100"}):
            self.assertRaises(
                ValueError, greylist.greylistFactory.makeProvider, context, "p", **bad
            )
