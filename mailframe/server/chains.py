"""
L{Chain}: the one helper that runs every plug-in chain of a session
(connection filters, HELO validators, sender validators, recipient
validators, message filters, address verifiers) by the one contract written
in L{mailframe.interfaces} ("Plug-in chains"):

  - accept: return None (or, where the stage's default reply can be
    replaced, a positive L{Reply}: the last one given replaces the default;
    where the first answer decides, a positive reply, or True, accepts);
  - refuse: raise L{SMTPError} (or return the 4xx/5xx L{Reply});
  - no opinion (recipient validators and address verifiers only): None;
    the next plug-in is asked, and if none decides, the stage's
    C{undecided} reply is the answer.

Any of these may come as a Deferred.  A plug-in that answers synchronously
costs no Deferred and no callback: the chain walks on in a plain loop.  A
plug-in that fails (an exception other than L{SMTPError}) is logged with
its traceback and the stage answers 451 4.3.0; one whose Deferred is
cancelled (the server's time limit) is logged by name.

The plug-in that decided is recorded on the C{verdict} object passed to
L{Chain.run} (its C{decider} attribute), for log lines.

A L{PluginTimer} (L{Chain.setTimer}; the Prometheus metrics set one) is
told how long each plug-in took to answer, a Deferred's until it fired.
It costs nothing when none is set: the timer wraps the calls of the chain
once, when it is set, and the loop that asks them is the same either way.
When one is set, each answer costs two clock readings and one call of the
recorder the timer gave for that plug-in.

Owns: the contract's semantics.  Must not: know the stages' meaning beyond
their replies, or import the session's modules.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from time import perf_counter
from typing import TYPE_CHECKING, Protocol

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailframe import reply as R
from mailframe._deferreds import settled
from mailframe.reply import Reply, SMTPError

if TYPE_CHECKING:
    from typing import TypeAlias

    #: What a chain answers: None (everyone accepted, nothing replaced), the
    #: deciding L{Reply}, or a Deferred of either.
    Outcome: TypeAlias = "Reply | defer.Deferred[Reply | None] | None"

__all__ = ["Chain", "PluginTimer", "Verdict"]

log = Logger(namespace="mailframe.server")

_Deferred = defer.Deferred


class Verdict(Protocol):
    """Where a chain records the plug-in that decided (None: nobody in particular)."""

    decider: object


class PluginTimer(Protocol):
    """
    Asked once per plug-in of a chain, when the timer is set, with C{stage}
    (the chain's word) and the plug-in: returns the recorder then told the
    seconds from each call to its answer (a Deferred's firing, or its
    failure or cancellation).  The recorder must not raise.
    """

    def __call__(self, stage: str, provider: object) -> Callable[[float], object]: ...


def _timed(
    call: Callable[..., object], record: Callable[[float], object]
) -> Callable[..., object]:
    """C{call}, telling C{record} how long each answer took."""
    clock = perf_counter

    def timed(*args: object) -> object:
        start = clock()
        try:
            result = call(*args)
        except BaseException:
            record(clock() - start)
            raise
        if isinstance(result, _Deferred):

            def answered(outcome: object) -> object:
                record(clock() - start)
                return outcome

            result.addBoth(answered)
        else:
            record(clock() - start)
        return result

    return timed


class Chain:
    """
    The plug-ins of one stage, in order, each asked with C{method}.

    @param stage: a word for log lines (C{"rcpt"}).
    @param firstDecides: the first plug-in that accepts or refuses decides
        (recipient validators, verifiers); otherwise every plug-in must
        accept, and a positive reply replaces the stage's default.
    @param accepted: with C{firstDecides}, the reply for an answer that
        accepts without giving one (True).
    @param undecided: with C{firstDecides}, the answer when nobody decided.
    """

    __slots__ = (
        "accepted",
        "calls",
        "firstDecides",
        "method",
        "providers",
        "stage",
        "timer",
        "undecided",
    )

    def __init__(
        self,
        stage: str,
        providers: Sequence[object],
        method: str,
        firstDecides: bool = False,
        accepted: Reply | None = None,
        undecided: Reply | None = None,
    ) -> None:
        self.stage = stage
        self.providers = tuple(providers)
        self.method = method
        self.calls: tuple[Callable[..., object], ...] = ()
        self.timer: PluginTimer | None = None
        self.setTimer(None)
        self.firstDecides = firstDecides
        self.accepted = accepted
        self.undecided = undecided

    def setTimer(self, timer: PluginTimer | None) -> None:
        """Time each plug-in's answers with C{timer} from now on (None: stop timing)."""
        calls = tuple(getattr(p, self.method) for p in self.providers)
        if timer is not None:
            calls = tuple(
                _timed(call, timer(self.stage, p))
                for p, call in zip(self.providers, calls, strict=True)
            )
        self.calls, self.timer = calls, timer

    def __bool__(self) -> bool:
        """True if the stage has plug-ins (hot paths test C{chain.calls} instead)."""
        return bool(self.calls)

    def run(self, verdict: Verdict, *args: object) -> Outcome:
        """
        Ask the plug-ins: None (every one accepted, nothing replaced), a
        L{Reply} (the decision, positive or negative), or a Deferred of either.
        """
        return self.ask(verdict, args)

    def ask(
        self,
        verdict: Verdict,
        args: tuple[object, ...],
        i: int = 0,
        replaced: Reply | None = None,
    ) -> Outcome:
        """L{run} with the arguments as a tuple (one call fewer on hot paths)."""
        calls = self.calls
        n = len(calls)
        while i < n:
            try:
                result = calls[i](*args)
            except SMTPError as e:
                verdict.decider = self.providers[i]
                return e.reply
            except Exception:
                return self._failed(Failure(), i, verdict)
            if result is not None:
                # a Reply first: isinstance() against Deferred (an ABC, by
                # Awaitable) costs a Python-level check
                if type(result) is not Reply and isinstance(result, _Deferred):
                    result = settled(result)
                    if isinstance(result, _Deferred):
                        return result.addCallbacks(
                            self._answered,
                            self._failed,
                            callbackArgs=(i, verdict, args, replaced),
                            errbackArgs=(i, verdict),
                        )
                if type(result) is Reply:
                    verdict.decider = self.providers[i]
                    if result.code >= 400 or self.firstDecides:
                        return result
                    replaced = result
                else:
                    decided = self._judge(result, i, verdict)
                    if decided is not None:
                        if decided.code >= 400 or self.firstDecides:
                            return decided
                        replaced = decided
            i += 1
        if self.firstDecides:
            verdict.decider = None
            return self.undecided
        return replaced

    def _judge(self, result: object, i: int, verdict: Verdict) -> Reply | None:
        """What one answer says: a reply that decides (or replaces), or None to go on."""
        if isinstance(result, Reply):
            verdict.decider = self.providers[i]
            return result
        if self.firstDecides and result:
            verdict.decider = self.providers[i]
            return self.accepted
        return None

    def _answered(
        self,
        result: object,
        i: int,
        verdict: Verdict,
        args: tuple[object, ...],
        replaced: Reply | None,
    ) -> Outcome:
        if result is not None:
            decided = self._judge(result, i, verdict)
            if decided is not None:
                if decided.code >= 400 or self.firstDecides:
                    return decided
                replaced = decided
        return self.ask(verdict, args, i + 1, replaced)

    def _failed(self, reason: Failure, i: int, verdict: Verdict) -> Reply:
        provider = self.providers[i]
        verdict.decider = provider
        error = reason.value
        if isinstance(error, SMTPError):
            return error.reply
        if reason.check(defer.CancelledError):
            log.warn(
                "{stage} plug-in {provider!r} did not answer in time",
                stage=self.stage,
                provider=provider,
            )
        else:
            log.failure(
                "{stage} plug-in {provider!r} failed", reason, stage=self.stage, provider=provider
            )
        return R.LOCAL_ERROR
