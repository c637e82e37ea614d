"""
The one contract of plug-in chains (L{mailframe.server.chains.Chain}): how a
plug-in accepts, refuses, has no opinion and replaces the positive reply,
the same whether it answers at once or with a Deferred; which plug-in
decided; failures and time-outs answered 451 and logged by name; and no
Deferred made for plug-ins that answer at once.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from mailframe import reply as R
from mailframe.reply import Reply, SMTPError
from mailframe.server.chains import Chain

CUSTOM = Reply(250, (2, 1, 0), "Sender fine by me")
NO = Reply(550, (5, 7, 1), "No")


class Verdict:
    decider: Any = None


class Plug:
    """Answers with C{answer} (a value, an exception to raise, or a Deferred maker)."""

    def __init__(self, answer: Any, deferred: bool = False) -> None:
        self.answer = answer
        self.deferred = deferred
        self.asked = 0

    def check(self, *args: Any) -> Any:
        self.asked += 1
        if isinstance(self.answer, BaseException):
            if self.deferred:
                return defer.fail(self.answer)
            raise self.answer
        if self.deferred:
            return defer.succeed(self.answer)
        return self.answer

    def __repr__(self) -> str:
        return f"<Plug {self.answer!r}>"


def run(chain: Chain) -> tuple[Any, Any]:
    verdict = Verdict()
    result = chain.run(verdict, "arg")
    if isinstance(result, defer.Deferred):
        results: list[Any] = []
        result.addBoth(results.append)
        result = results[0]
    return result, verdict.decider


class EveryOneMustAcceptTests(SynchronousTestCase):
    """Connection filters, HELO and sender validators, message filters."""

    def chain(self, *plugs: Plug) -> Chain:
        return Chain("mail", plugs, "check")

    def test_acceptIsNone(self) -> None:
        """Everyone returns None: None (the stage's default reply), nobody decided."""
        for deferred in (False, True):
            a, b = Plug(None, deferred), Plug(None, deferred)
            self.assertEqual(run(self.chain(a, b)), (None, None))
            self.assertEqual((a.asked, b.asked), (1, 1))

    def test_positiveReplyReplaces(self) -> None:
        """A positive reply replaces the default; the chain still asks the rest."""
        for deferred in (False, True):
            a, b = Plug(CUSTOM, deferred), Plug(None, deferred)
            self.assertEqual(run(self.chain(a, b)), (CUSTOM, a))
            self.assertEqual(b.asked, 1)

    def test_refuseByRaisingOrReturning(self) -> None:
        """SMTPError or a returned 4xx/5xx refuses; later plug-ins are not asked."""
        for answer in (SMTPError(NO), NO):
            for deferred in (False, True):
                a, b = Plug(answer, deferred), Plug(None, deferred)
                self.assertEqual(run(self.chain(a, b)), (NO, a))
                self.assertEqual(b.asked, 0)

    def test_trueIsNotAReply(self) -> None:
        """True from a plug-in of an every-one stage is only acceptance."""
        self.assertEqual(run(self.chain(Plug(True), Plug(None))), (None, None))

    def test_failureIs451(self) -> None:
        """A plug-in that fails is logged by name, and the stage answers 451 4.3.0."""
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        for deferred in (False, True):
            bad = Plug(ZeroDivisionError("boom"), deferred)
            self.assertEqual(run(self.chain(Plug(None), bad)), (R.LOCAL_ERROR, bad))
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 2)
        self.assertTrue(any(e.get("provider") is bad for e in events))

    def test_cancelledIsNamed(self) -> None:
        """A plug-in whose Deferred is cancelled (the time limit) is named in the log."""
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)

        class Slow:
            def check(self, *args: Any) -> Any:
                return defer.Deferred()

        slow = Slow()
        verdict = Verdict()
        d = Chain("data", [slow], "check").run(verdict, "x")
        d.cancel()
        self.assertEqual(self.successResultOf(d), R.LOCAL_ERROR)
        self.assertIs(verdict.decider, slow)
        self.assertTrue(any("did not answer in time" in e.get("log_format", "") for e in events))

    def test_synchronousCostsNoDeferred(self) -> None:
        """Plug-ins that answer at once give a plain value, never a Deferred."""
        result = Chain("mail", [Plug(None), Plug(CUSTOM)], "check").run(Verdict(), "x")
        self.assertIs(result, CUSTOM)


class FirstDecidesTests(SynchronousTestCase):
    """Recipient validators and address verifiers."""

    def chain(self, *plugs: Plug) -> Chain:
        return Chain(
            "rcpt", plugs, "check", firstDecides=True, accepted=R.RECIPIENT_OK,
            undecided=R.USER_UNKNOWN,
        )  # fmt: skip

    def test_noOpinionAsksTheNext(self) -> None:
        """None is no opinion: the next one is asked; nobody deciding is the undecided reply."""
        for deferred in (False, True):
            a, b = Plug(None, deferred), Plug(None, deferred)
            self.assertEqual(run(self.chain(a, b)), (R.USER_UNKNOWN, None))
            self.assertEqual((a.asked, b.asked), (1, 1))

    def test_firstAcceptDecides(self) -> None:
        """The first positive reply (or True) accepts; later ones are not asked."""
        for answer, expected in ((CUSTOM, CUSTOM), (True, R.RECIPIENT_OK)):
            for deferred in (False, True):
                a, b, c = Plug(None, deferred), Plug(answer, deferred), Plug(NO, deferred)
                self.assertEqual(run(self.chain(a, b, c)), (expected, b))
                self.assertEqual(c.asked, 0)

    def test_firstRefusalDecides(self) -> None:
        """A refusal decides too."""
        a, b = Plug(SMTPError(NO)), Plug(CUSTOM)
        self.assertEqual(run(self.chain(a, b)), (NO, a))
        self.assertEqual(b.asked, 0)
