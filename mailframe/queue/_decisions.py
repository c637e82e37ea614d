"""
The queue's decision events (L{mailframe.events}): a message queued, a
recipient sent, bounced, deferred or expired; the runner (L{mailframe.queue.runner})
calls these when its C{logDeliveries} is on.

Owns: the queue events' formats and fields.  Must not: decide anything.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from mailframe import events
from mailframe._eventlog import emit
from mailframe.queue.entry import QueueEntry, RecipientState
from mailframe.reply import Reply

__all__ = ["deferred", "expired", "queued", "sentOrBounced"]

log = Logger(namespace="mailframe.queue")


def _info(logged: bool, format: str, **fields: Any) -> None:
    emit(log, format, fields, logged)


LOCAL = "local"


def queued(entry: QueueEntry, size: int, logged: bool = True) -> None:
    """A message put in the queue (by a listener, or a report the queue made)."""
    _info(
        logged,
        "{queueID} queued from=<{sender}> nrcpt={nrcpt} size={size}",
        mfEvent=events.QUEUE_QUEUED,
        queueID=entry.id,
        sender=entry.sender,
        recipients=[r.address for r in entry.recipients],
        nrcpt=len(entry.recipients),
        size=size,
        listener=entry.listener,
        report=entry.report,
    )


def sentOrBounced(
    entry: QueueEntry,
    r: RecipientState,
    route: str | None,
    local: bool,
    started: float,
    now: float,
    logged: bool = True,
    tls: str | None = None,
) -> None:
    """
    A recipient sent (delivered or relayed) or bounced by this attempt;
    C{tls}: the TLS version of the session that took it (None: in clear).
    """
    reply = r.reply
    assert reply is not None
    relay = r.remote or route or LOCAL
    if reply.code < 400:
        _info(
            logged,
            "{queueID} to=<{recipient}> {status} via {relay} delay={delay:.2f} "
            "delays={delays[queued]:.2f}/{delays[transfer]:.2f} dsn={dsn} ({reply})",
            mfEvent=events.QUEUE_SENT,
            queueID=entry.id,
            recipient=r.address,
            status=r.state,
            relay=relay,
            tls=tls,
            delay=now - entry.arrival,
            delays={"queued": max(0.0, started - entry.arrival), "transfer": now - started},
            dsn=_dsn(reply),
            reply=_text(reply),
            code=reply.code,
            kind=LOCAL if local else "relay",
            attempts=entry.attempts,
        )
        return
    _info(
        logged,
        "{queueID} to=<{recipient}> bounced via {relay} dsn={dsn} ({reply})",
        mfEvent=events.QUEUE_BOUNCED,
        queueID=entry.id,
        recipient=r.address,
        relay=relay,
        reply=_text(reply),
        code=reply.code,
        dsn=_dsn(reply),
        kind=LOCAL if local else "relay",
        attempts=entry.attempts,
        sender=entry.sender,
    )


def deferred(
    entry: QueueEntry,
    r: RecipientState,
    route: str | None,
    now: float,
    nextAttempt: float,
    logged: bool = True,
) -> None:
    """A recipient to try again at C{nextAttempt}."""
    reply = r.reply
    _info(
        logged,
        "{queueID} to=<{recipient}> deferred via {relay} attempts={attempts} "
        "next in {wait:.0f}s ({reply})",
        mfEvent=events.QUEUE_DEFERRED,
        queueID=entry.id,
        recipient=r.address,
        relay=r.remote or route or LOCAL,
        reply=_text(reply) if reply is not None else None,
        code=reply.code if reply is not None else None,
        kind=LOCAL if route == LOCAL else "relay",
        nextAttempt=nextAttempt,
        wait=nextAttempt - now,
        attempts=entry.attempts,
    )


def expired(
    entry: QueueEntry, r: RecipientState, route: str | None, now: float, logged: bool = True
) -> None:
    """A recipient given up on: still 4xx when the queue's lifetime ran out."""
    reply = r.reply
    _info(
        logged,
        "{queueID} to=<{recipient}> expired after {age:.0f}s attempts={attempts} ({reply})",
        mfEvent=events.QUEUE_EXPIRED,
        queueID=entry.id,
        recipient=r.address,
        relay=r.remote or route,
        reply=_text(reply) if reply is not None else None,
        code=reply.code if reply is not None else None,
        kind=LOCAL if route == LOCAL else "relay",
        age=now - entry.arrival,
        attempts=entry.attempts,
        sender=entry.sender,
    )


def _text(reply: Reply) -> str:
    """A reply on one line, as the decision events give it."""
    return str(reply).replace("\r\n", " ")


def _dsn(reply: Reply) -> str:
    """The DSN status of a reply: its enhanced code, or the class (C{5.0.0})."""
    enhanced = reply.enhanced
    if enhanced:
        return f"{enhanced[0]}.{enhanced[1]}.{enhanced[2]}"
    return f"{reply.code // 100}.0.0"
