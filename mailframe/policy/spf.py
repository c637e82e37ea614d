"""
SPF (RFC 7208) with pyspf, without blocking the reactor: L{checkSPF} and
the L{SPFCheck} sender validator.

How the reactor never blocks: pyspf evaluates a record synchronously and
looks names up through its module-level C{DNSLookup}.  We replace that
function (once, at import) with one that, while an evaluation of ours is
running in the reactor thread, answers only from the answers already
fetched for that evaluation; on a name it does not have yet it notes the
name and raises.  L{checkSPF} then fetches the missing names with
twisted.names (asynchronously, with a timeout) and runs the evaluation
again from the start.  Each pass is pure computation on data in memory
(microseconds); the passes are bounded by the lookups RFC 7208 4.6.4
allows (pyspf enforces its limits: 10 terms that query, 10 MX or PTR
names each, 2 void lookups), and by L{MAX_PASSES} and an overall time
limit here.  An answer that pyspf's own code swallows (its C{exp=} and
C{ptr} code catch every exception) is still seen, because the missing name
is noted before raising: a pass that missed anything is never believed.
Outside our evaluations (C{_active} unset) pyspf's lookup is untouched, so
other users of pyspf in the process are not affected.

Owns: running pyspf and the policy per result.  Must not: block, or use
pyspf's own resolver from the reactor thread.
"""

from __future__ import annotations

import contextvars
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import spf as _pyspf
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from mailframe.envelope import Envelope, SessionInfo
from mailframe.interfaces import ISenderValidator
from mailframe.policy import isTrusted
from mailframe.policy._dns import Answer, AsyncDNS, DNSTemporaryError
from mailframe.reply import Reply, SMTPError, clientText
from mailframe.results import SPFResult

if TYPE_CHECKING:
    from mailframe.config import ServerConfig

__all__ = [
    "ACTIONS",
    "DEFAULT_POLICY",
    "MAX_PASSES",
    "RESULTS",
    "SPFCheck",
    "checkSPF",
    "spfReply",
]

log = Logger(namespace="mailframe.spf")

RESULTS = ("pass", "fail", "softfail", "neutral", "none", "temperror", "permerror")
ACTIONS = ("accept", "reject", "defer")

#: What each result does by default: refuse a hard fail, ask again on a
#: DNS failure, accept (and record) the rest.
DEFAULT_POLICY: Mapping[str, str] = {
    "pass": "accept",
    "fail": "reject",
    "softfail": "accept",
    "neutral": "accept",
    "none": "accept",
    "temperror": "defer",
    "permerror": "accept",
}

MAX_PASSES = 64
"""Evaluations of one check at most (each after fetching the names it lacked)."""

_active: contextvars.ContextVar[_Answers | None] = contextvars.ContextVar(
    "mailframe_spf", default=None
)


class _Missing(Exception):
    """pyspf asked for a name not fetched yet."""


class _Answers:
    """The answers of one evaluation, as pyspf's DNSLookup returns them."""

    def __init__(self) -> None:
        self.cache: dict[tuple[str, str], list[Answer] | DNSTemporaryError] = {}
        self.missing: list[tuple[str, str]] = []

    def lookup(self, name: str, qtype: str) -> list[tuple[tuple[str, str], Any]]:
        key = (str(name).rstrip(".").lower(), qtype)
        if qtype not in ("A", "AAAA", "MX", "PTR", "TXT"):
            return []  # the obsolete SPF type, and anything else
        found = self.cache.get(key)
        if found is None:
            self.missing.append(key)
            raise _Missing(key)
        if isinstance(found, DNSTemporaryError):
            raise _pyspf.TempError(f"DNS {found}")
        return [((a.name, a.type), a.value) for a in found]


_pyspfLookup = _pyspf.DNSLookup


def _lookup(name: str, qtype: str, strict: Any = True, timeout: Any = None) -> Any:
    answers = _active.get()
    if answers is None:  # not ours: pyspf's own resolver
        return _pyspfLookup(name, qtype, strict, timeout)
    return answers.lookup(name, qtype)


_pyspf.DNSLookup = _lookup


def checkSPF(
    dns: AsyncDNS,
    ip: str,
    sender: str,
    helo: str,
    receiver: str = "unknown",
    timeLimit: float = 20.0,
) -> defer.Deferred[tuple[str, str]]:
    """
    Evaluate SPF for a client C{ip} sending from C{sender} (empty for the
    null sender: the HELO identity C{helo} is checked, RFC 7208 2.3).

    @return: a Deferred firing C{(result, explanation)}; C{result} is one
        of L{RESULTS}.  It does not fail.
    """
    answers = _Answers()
    clock: IReactorTime = dns.clock
    start = clock.seconds()
    passes = [0]

    def evaluate(_: object = None) -> Any:
        passes[0] += 1
        answers.missing.clear()
        token = _active.set(answers)
        try:
            q = _pyspf.query(i=ip, s=sender, h=helo, receiver=receiver, strict=True)
            result, _code, explanation = q.check()
        except _Missing:
            result, explanation = "", ""
        except Exception as e:  # a bug of pyspf's on odd input: not the client's fault
            log.failure("SPF evaluation for {ip} {sender} failed", ip=ip, sender=sender)
            return ("temperror", f"SPF evaluation error: {type(e).__name__}")
        finally:
            _active.reset(token)
        if not answers.missing:
            return (str(result), str(explanation))
        if passes[0] >= MAX_PASSES or clock.seconds() - start > timeLimit:
            return ("temperror", "SPF evaluation took too many lookups or too long")
        wanted = list(dict.fromkeys(answers.missing))
        lookups = [
            dns.lookup(name, qtype).addErrback(_temporary).addCallback(_store, answers, key)
            for key in wanted
            for name, qtype in [key]
        ]
        return defer.gatherResults(lookups, consumeErrors=True).addCallback(evaluate)

    return defer.maybeDeferred(evaluate)


def _temporary(reason: Any) -> DNSTemporaryError:
    reason.trap(DNSTemporaryError)
    return reason.value


def _store(found: Any, answers: _Answers, key: tuple[str, str]) -> None:
    answers.cache[key] = found


def spfReply(result: str, action: str, domain: str, explanation: str = "") -> Reply | None:
    """The refusal for C{result} under C{action}, or None to accept."""
    if action == "accept":
        return None
    if action == "defer" or result == "temperror":
        text = f"SPF check of {domain} failed for now ({result}); try again later"
        return Reply(451, (4, 4, 3) if result == "temperror" else (4, 7, 24), text)
    if result in ("permerror",):
        return Reply(550, (5, 7, 24), f"SPF record of {domain} is broken (permerror)")
    text = f"SPF check of {domain} failed ({result})"
    if explanation and result == "fail":
        text = f"{text}: {explanation}"
    return Reply(550, (5, 7, 23), clientText(text, 400))


@implementer(ISenderValidator)
class SPFCheck:
    """
    Checks SPF at MAIL FROM and records an L{SPFResult} in
    C{envelope.spf}; what each result does is C{policy} (result ->
    C{accept}, C{reject} or C{defer}; L{DEFAULT_POLICY} for the rest).
    Trusted sessions (authenticated, relay networks) are not checked.

    Replies: C{reject} gives C{550 5.7.23} (fail, softfail, neutral) or
    C{550 5.7.24} (permerror); C{defer} gives C{451 4.4.3} (temperror) or
    C{451 4.7.24}.
    """

    def __init__(
        self,
        dns: AsyncDNS,
        config: ServerConfig | None = None,
        policy: Mapping[str, str] | None = None,
        receiver: str | None = None,
    ) -> None:
        merged = dict(DEFAULT_POLICY)
        for result, action in (policy or {}).items():
            if result not in RESULTS:
                raise ValueError(f"unknown SPF result {result!r} (results: {', '.join(RESULTS)})")
            if action not in ACTIONS:
                raise ValueError(f"{result}: action must be one of {', '.join(ACTIONS)}")
            merged[result] = action
        self.dns = dns
        self.config = config
        self.policy = merged
        self.receiver = receiver or (config.hostname if config is not None else "unknown")

    def check(self, session: SessionInfo, envelope: Envelope) -> defer.Deferred[SPFResult]:
        """Evaluate SPF for this transaction and record the result (no policy)."""
        sender = envelope.mailFrom
        helo = (session.heloName or "").strip("[]")
        if sender.isNull or sender.domain is None:
            scope, domain, identity = "helo", helo, helo
            address = ""
        else:
            scope, domain = "mailfrom", sender.domain.key
            address = f"{sender.localPart}@{sender.domain.key}"
            identity = address
        if not domain or (sender.domain is not None and sender.domain.isLiteral):
            result = SPFResult("none", scope, domain, identity, "no domain to check")
            envelope.spf = result
            return defer.succeed(result)
        d = checkSPF(self.dns, session.peerHost, address, helo or domain, self.receiver)

        def record(outcome: tuple[str, str]) -> SPFResult:
            result = SPFResult(outcome[0], scope, domain, identity, outcome[1])
            envelope.spf = result
            return result

        return d.addCallback(record)

    def validateSender(
        self, session: SessionInfo, envelope: Envelope
    ) -> defer.Deferred[Reply | None] | None:
        """ISenderValidator: check, record, and refuse as the policy says."""
        if isTrusted(session, self.config):
            return None
        return self.check(session, envelope).addCallback(self._apply, session)

    def _apply(self, result: SPFResult, session: SessionInfo) -> Reply | None:
        action = self.policy[result.result]
        reply = spfReply(result.result, action, result.domain, result.explanation)
        if reply is None:
            return None
        log.info(
            "{id} {peer} SPF {result} for {identity}: {code}",
            id=session.sessionID,
            peer=session.peer,
            result=result.result,
            identity=result.identity,
            code=reply.code,
        )
        raise SMTPError(reply)
