"""
What an attempt's outcomes do to a queue entry, for the runner
(L{mailframe.queue.runner}): each recipient's new state, the recipients
that expired, the delay warning, the report items these call for (RFC
3461 NOTIFY) and their decision events (L{mailframe.queue._decisions});
and the report itself, put into the spool.

Owns: the recipient states after an attempt, and queueing its report.
Must not: schedule or deliver, write the entry's envelope (the runner
does), or format a report (L{mailframe.queue.bounce} does).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypeAlias

from twisted.logger import Logger

from mailframe._eventlog import counting
from mailframe.interfaces import IQueueStore
from mailframe.queue import _decisions, bounce
from mailframe.queue.entry import (
    DELIVERED,
    FAILED,
    PENDING,
    RELAYED,
    QueueEntry,
    RecipientState,
)
from mailframe.queue.limits import RetryPolicy
from mailframe.reply import Reply

__all__ = ["Outcome", "nextAttempt", "queueReport", "record", "takeBack"]

log = Logger(namespace="mailframe.queue")

_EXPIRED = (4, 4, 7)

Outcome: TypeAlias = tuple[RecipientState, Reply, str | None, bool, bool]
"""Per recipient: its state, the reply, the server that gave it, whether it
was delivered here (not relayed), and whether the DSN request went on with
the message (the next hop reports for itself)."""


def nextAttempt(retry: RetryPolicy, entry: QueueEntry, now: float) -> float:
    """When an entry not finished by the attempt that ended at C{now} is tried next."""
    wait = retry.delayAfter(entry.attempts)
    return max(now, min(now + wait, entry.arrival + retry.giveUp))


def record(
    entry: QueueEntry,
    outcomes: Sequence[Outcome],
    retry: RetryPolicy,
    now: float,
    started: float,
    routes: Mapping[int, str],
    tls: Mapping[int, str] | None,
    logged: bool,
) -> tuple[list[bounce.ReportItem], bool]:
    """
    Record an attempt that began at C{started} and ended at C{now}: each
    recipient's reply and state, expiry after C{retry.giveUp}, the delay
    warning when due, and (when C{logged}, or counted for metrics) the
    decision events.  C{routes} and C{tls}: each recipient's route and TLS
    version, by C{id} of its state.  Returns the report items, and whether
    a delay warning is among them (L{takeBack} needs it).
    """
    entry.attempts += 1
    entry.lastAttempt = now
    items: list[bounce.ReportItem] = []
    logging = logged or bool(counting)  # counted (metrics) even when not logged
    for r, reply, remote, local, passedOn in outcomes:
        r.reply, r.remote, r.lastAttempt = reply, remote, now
        if reply.code < 400:
            r.state = DELIVERED if local else RELAYED
            action = bounce.DELIVERED if local else bounce.RELAYED
            if logging:
                route = routes.get(id(r))
                version = tls.get(id(r)) if tls else None
                _decisions.sentOrBounced(entry, r, route, local, started, now, logged, version)
            if passedOn:  # the next hop took NOTIFY and reports for itself (RFC 3461 5.2)
                continue
        elif reply.code >= 500:
            r.state, action = FAILED, bounce.FAILED
            if logging:
                _decisions.sentOrBounced(entry, r, routes.get(id(r)), local, started, now, logged)
        else:
            continue
        if bounce.wantsNotice(r, action):
            items.append(bounce.ReportItem(r, action))
    still = entry.pending
    delayed = False
    if still and now - entry.arrival >= retry.giveUp:
        for r in still:
            r.state = FAILED
            if r.reply is not None and r.reply.code < 500:
                r.reply = Reply(r.reply.code, r.reply.enhanced or _EXPIRED, r.reply.text)
            if logging:
                _decisions.expired(entry, r, routes.get(id(r)), now, logged)
            if bounce.wantsNotice(r, bounce.FAILED):
                items.append(bounce.ReportItem(r, bounce.FAILED))
        still = []
    elif still and _delayWarningDue(retry, entry, now):
        delayed = entry.delayWarned = True
        until = entry.arrival + retry.giveUp
        items.extend(
            bounce.ReportItem(r, bounce.DELAYED, until)
            for r in still
            if bounce.wantsNotice(r, bounce.DELAYED)
        )
    if logging and still:
        when = nextAttempt(retry, entry, now)
        for r in still:
            _decisions.deferred(entry, r, routes.get(id(r)), now, when, logged)
    return items, delayed


def _delayWarningDue(retry: RetryPolicy, entry: QueueEntry, now: float) -> bool:
    warning = retry.delayWarning
    return bool(warning) and not entry.delayWarned and now - entry.arrival >= warning


def takeBack(entry: QueueEntry, items: Sequence[bounce.ReportItem], delayed: bool) -> None:
    """
    The report about C{items} could not be queued: the failures are pending
    again, and the delay warning not given, so that the next attempt
    reports them (a repeated report, never a lost one).
    """
    for item in items:
        if item.action == bounce.FAILED:
            item.recipient.state = PENDING
    if delayed:
        entry.delayWarned = False


async def queueReport(
    spool: IQueueStore,
    reports: bounce.ReportSettings,
    entry: QueueEntry,
    items: list[bounce.ReportItem],
    now: float,
    reportID: str,
) -> bool:
    """Put the report C{reportID} about C{items} into C{spool}; False if that failed."""
    failure = any(i.action == bounce.FAILED for i in items)
    limit = reports.readLimit(entry, failure)
    try:
        original, _ = await spool.readHead(entry.id, limit)
    except Exception as e:
        log.error("{id}: cannot read the message to report on: {error}", id=entry.id, error=str(e))
        original = b""
    data, params = bounce.buildReport(entry, items, original, reports, now, reportID)
    report = QueueEntry(
        id=reportID,
        sender="",
        recipients=[RecipientState(entry.sender)],
        arrival=now,
        mailParams=params,
        nextAttempt=now,
        listener=entry.listener,
        report=True,
    )
    try:
        await spool.addReport(entry.id, report, data)
    except Exception as e:
        log.error("{id}: cannot queue the report: {error}", id=entry.id, error=str(e))
        return False
    log.info(
        "{id}: report {report} ({actions}) to <{sender}>",
        id=entry.id,
        report=reportID,
        actions=",".join(sorted({i.action for i in items})),
        sender=entry.sender,
    )
    return True
