"""
Recipient rewriting at RCPT time (aliases, virtual maps, subaddressing,
SRS bounce addresses) and its other half at delivery time.

L{rewrite} runs the L{IRecipientRewriter}s of a server as a pipeline (see
that interface): each is given every address of a local domain the ones
before it produced; addresses of other domains pass through (they are
forwarded).  The result is the recipient unchanged (None), a refusal (a
L{Reply}), or the recipient with its C{targets}: each target carries the
RCPT's parameters, an ORCPT naming the RCPT address when the client gave
none (RFC 3461 4.2), and C{original}.  Duplicate targets (the same mailbox
and detail) are kept once.  The recipient validators then judge each
target of a local domain as if the client had given it (postmaster is
always accepted); the first refusal refuses the RCPT.  A pipeline that
produces more than L{MAX_TARGETS} targets is refused.

L{ExpandedDelivery} wraps the delivery backend of a server with rewriters:
the backend is given the targets in place of the recipients that stand for
them (every target once, even when several RCPTs share it), and its
answer is turned back into one reply per RCPT, so that the server (and an
LMTP session) answers each RCPT for what became of its targets: the first
4xx among them, else the first 5xx, else the first reply.  A recipient
with no targets (C{/dev/null}) is delivered nowhere and answered 250.

Owns: the pipeline's order and limits, and the mapping between RCPTs and
targets.  Must not: know any rewriter's format, or touch the session's
transport.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mailframe import reply as R
from mailframe._deferreds import settled, then
from mailframe.address import Address
from mailframe.envelope import DeliveryResult, Envelope, Recipient, SessionInfo
from mailframe.interfaces import IDeliveryBackend, IRecipientRewriter
from mailframe.message import Message
from mailframe.protocol import encodeXtext
from mailframe.reply import Reply, SMTPError

if TYPE_CHECKING:
    from mailframe.config import ServerConfig
    from mailframe.interfaces import Delivered
    from mailframe.server.chains import Chain, Verdict


class _Context(Protocol):
    """What rewriting reads of a L{mailframe.server.context.ServerContext}."""

    config: ServerConfig
    rewriters: tuple[IRecipientRewriter, ...]
    recipientChain: Chain


__all__ = ["MAX_TARGETS", "ExpandedDelivery", "orcptFor", "rewrite"]

log = Logger(namespace="mailframe.server")

MAX_TARGETS = 1000
"""The most targets one RCPT may stand for (Postfix's virtual_alias_expansion_limit)."""

TOO_MANY_TARGETS = Reply(
    550, (5, 5, 3), f"The address expands to more than {MAX_TARGETS} recipients"
)
DISCARDED = Reply(250, (2, 0, 0), "Delivered nowhere (discarded)")

_Deferred = defer.Deferred
_Outcome = Recipient | Reply | None


def orcptFor(address: Address) -> str:
    """The ORCPT value naming C{address} (RFC 3461 4.2; RFC 6533 for a UTF-8 one)."""
    text = str(address)
    if text.isascii():
        return "rfc822;" + encodeXtext(text)
    escaped = "".join(
        c if " " < c < "\x7f" and c not in "+=\\" else f"\\x{{{ord(c):X}}}" for c in text
    )
    return "utf-8;" + escaped


def _key(recipient: Recipient) -> tuple[str, str, str | None]:
    address = recipient.address
    domain = address.domain.key if address.domain is not None else ""
    return (address.localPart.lower(), domain, recipient.detail)


def rewrite(
    context: _Context,
    session: SessionInfo,
    envelope: Envelope,
    recipient: Recipient,
    verdict: Verdict,
) -> _Outcome | defer.Deferred[_Outcome]:
    """
    Rewrite one recipient of a local domain with C{context.rewriters}, and
    judge its targets with C{context.recipientChain}.

    @return: None (not rewritten: judge it as it is), a 4xx/5xx L{Reply}
        (refused), or the recipient with its C{targets} (accepted), or a
        Deferred of one of these.  It does not fail.  C{verdict.decider}
        names the plug-in that decided.
    """
    return _Rewriting(context, session, envelope, recipient, verdict).run()


class _Rewriting:
    """The state of one recipient's rewriting (only made when there are rewriters)."""

    __slots__ = ("context", "envelope", "items", "recipient", "session", "verdict")

    def __init__(
        self,
        context: _Context,
        session: SessionInfo,
        envelope: Envelope,
        recipient: Recipient,
        verdict: Verdict,
    ) -> None:
        self.context = context
        self.session = session
        self.envelope = envelope
        self.recipient = recipient
        self.verdict = verdict
        self.items = [recipient]

    def run(self) -> Any:
        return self._walk(0, 0, [])

    # -- the pipeline ----------------------------------------------------------------

    def _walk(self, stage: int, index: int, out: list[Recipient]) -> Any:
        """Give rewriter C{stage} each item from C{index} on (C{out}: what came of the others)."""
        rewriters: Sequence[IRecipientRewriter] = self.context.rewriters
        isLocal = self.context.config.isLocal
        args = (self.session, self.envelope)
        while stage < len(rewriters):
            rewriter = rewriters[stage]
            items = self.items
            while index < len(items):
                item = items[index]
                index += 1
                if not isLocal(item.address.domain):
                    out.append(item)  # forwarded as it is
                    continue
                try:
                    result = rewriter.rewriteRecipient(*args, item)
                except SMTPError as e:
                    self.verdict.decider = rewriter
                    return e.reply
                except Exception:
                    return self._failed(Failure(), rewriter)
                if result is None:
                    out.append(item)
                    continue
                if isinstance(result, _Deferred):
                    result = settled(result)
                    if isinstance(result, _Deferred):
                        return result.addCallbacks(
                            self._answered,
                            self._failed,
                            callbackArgs=(stage, index, out, item, rewriter),
                            errbackArgs=(rewriter,),
                        )
                refused = self._take(result, item, out, rewriter)
                if refused is not None:
                    return refused
            self.items = out
            stage, index, out = stage + 1, 0, []
        return self._targets()

    def _answered(
        self,
        result: Sequence[Recipient] | None,
        stage: int,
        index: int,
        out: list[Recipient],
        item: Recipient,
        rewriter: IRecipientRewriter,
    ) -> Any:
        refused = self._take(result, item, out, rewriter)
        if refused is not None:
            return refused
        return self._walk(stage, index, out)

    def _take(
        self,
        result: Sequence[Recipient] | None,
        item: Recipient,
        out: list[Recipient],
        rewriter: IRecipientRewriter,
    ) -> Reply | None:
        if result is None:
            out.append(item)
            return None
        if len(out) + len(result) > MAX_TARGETS:
            self.verdict.decider = rewriter
            log.warn(
                "{id} <{address}>: {rewriter!r} expands it to more than {limit} recipients",
                id=self.session.sessionID,
                address=self.recipient.address,
                rewriter=rewriter,
                limit=MAX_TARGETS,
            )
            return TOO_MANY_TARGETS
        out.extend(result)
        return None

    def _failed(self, reason: Failure, rewriter: IRecipientRewriter) -> Reply:
        self.verdict.decider = rewriter
        error = reason.value
        if isinstance(error, SMTPError):
            return error.reply
        if reason.check(defer.CancelledError):
            log.warn("rcpt rewriter {rewriter!r} did not answer in time", rewriter=rewriter)
        else:
            log.failure("rcpt rewriter {rewriter!r} failed", reason, rewriter=rewriter)
        return R.LOCAL_ERROR

    # -- the targets -----------------------------------------------------------------

    def _targets(self) -> Any:
        items = self.items
        rcpt = self.recipient
        if len(items) == 1:
            only = items[0]
            if only is rcpt or (only.address == rcpt.address and only.detail is None):
                return None  # not rewritten
        params = dict(rcpt.params)
        if "ORCPT" not in params:
            params["ORCPT"] = orcptFor(rcpt.address)
        seen: set[tuple[str, str, str | None]] = set()
        targets: list[Recipient] = []
        for item in items:
            key = _key(item)
            if key in seen:
                continue
            seen.add(key)
            targets.append(Recipient(item.address, params, None, rcpt.address, item.detail))
        if self.context.config.logMessages:
            log.info(
                "{line}",
                line=f"{self.session.sessionID} {self.envelope.queueID} {rcpt.address.toPath()} "
                f"-> {', '.join(t.address.toPath() for t in targets) or 'nowhere'}",
            )
        return self._judge(targets, 0)

    def _judge(self, targets: list[Recipient], index: int) -> Any:
        """Ask the validators about each local target from C{index} on."""
        chain: Chain = self.context.recipientChain
        isLocal = self.context.config.isLocal
        while index < len(targets):
            target = targets[index]
            index += 1
            if target.address.isPostmaster or not isLocal(target.address.domain):
                continue
            decided = chain.ask(self.verdict, (self.session, self.envelope, target))
            if isinstance(decided, _Deferred):
                return decided.addCallback(self._judged, targets, index, target)
            refused = self._refused(decided, target)
            if refused is not None:
                return refused
        return replace(self.recipient, targets=tuple(targets))

    def _judged(
        self, decided: Reply | None, targets: list[Recipient], index: int, target: Recipient
    ) -> Any:
        refused = self._refused(decided, target)
        if refused is not None:
            return refused
        return self._judge(targets, index)

    def _refused(self, decided: Reply | None, target: Recipient) -> Reply | None:
        if decided is None or decided.code < 400:
            return None
        log.info(
            "{id} {address}: its target {target} is refused by {decider!r} ({reply})",
            id=self.session.sessionID,
            address=self.recipient.address.toPath(),
            target=target.address.toPath(),
            decider=self.verdict.decider,
            reply=decided,
        )
        return decided


# -- delivery ----------------------------------------------------------------------------


def _flatten(
    recipients: Sequence[Recipient],
) -> tuple[list[Recipient], list[list[int]]]:
    """The targets to deliver (each once), and for each recipient the indices of its own."""
    flat: list[Recipient] = []
    where: dict[tuple[str, str, str | None], int] = {}
    groups: list[list[int]] = []
    for r in recipients:
        group: list[int] = []
        for t in r.targets if r.targets is not None else (r,):
            key = _key(t)
            i = where.get(key)
            if i is None:
                i = where[key] = len(flat)
                flat.append(t)
            group.append(i)
        groups.append(group)
    return flat, groups


def _regroup(
    result: DeliveryResult | None, groups: list[list[int]], count: int, queueID: str
) -> DeliveryResult | None:
    """One reply per recipient from the backend's answer about the targets."""
    if result is None:
        if all(groups):
            return None
        result = DeliveryResult((DISCARDED,) * count)  # to answer the discarded ones alike
    replies = result.replies
    if len(replies) != count:
        log.error(
            "{queueID}: the delivery backend answered {n} replies for {count} recipients",
            queueID=queueID,
            n=len(replies),
            count=count,
        )
        return DeliveryResult((R.LOCAL_ERROR,) * len(groups), queueID=result.queueID)
    remote = tuple(result.remote) + (None,) * (count - len(result.remote))
    dsn = tuple(result.dsn) + (False,) * (count - len(result.dsn))
    picked = [_pick(group, replies) for group in groups]
    return DeliveryResult(
        tuple(replies[i] if i is not None else DISCARDED for i in picked),
        tuple(remote[i] if i is not None else None for i in picked),
        tuple(dsn[i] if i is not None else False for i in picked),
        queueID=result.queueID,
    )


def _pick(group: list[int], replies: tuple[Reply, ...]) -> int | None:
    """The target whose reply answers for a recipient: first 4xx, else first 5xx, else first."""
    if not group:
        return None
    failed = [i for i in group if replies[i].code >= 400]
    if not failed:
        return group[0]
    return next((i for i in failed if replies[i].code < 500), failed[0])


@implementer(IDeliveryBackend)
class ExpandedDelivery:
    """
    The delivery backend of a server with rewriters: gives C{backend} the
    targets of the recipients (see the module docstring) and answers per
    recipient.  An envelope with no rewritten recipient goes through as it is.
    """

    def __init__(self, backend: IDeliveryBackend) -> None:
        self.backend = backend

    def deliver(self, envelope: Envelope, message: Message) -> Delivered:
        recipients = envelope.recipients
        if all(r.targets is None for r in recipients):
            return self.backend.deliver(envelope, message)
        flat, groups = _flatten(recipients)
        if not flat:
            return DeliveryResult((DISCARDED,) * len(recipients))
        result = self.backend.deliver(replace(envelope, recipients=flat), message)
        return then(result, _regroup, groups, len(flat), envelope.queueID)

    def __repr__(self) -> str:
        return f"ExpandedDelivery({self.backend!r})"
