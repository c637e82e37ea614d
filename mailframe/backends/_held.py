"""
L{heldDelivery}: the shape every backend that hands a message on over the
network (C{lmtp}, C{webhook}, C{amqp}, C{redis-stream}) gives its
C{deliver}: nothing to do for no recipients; the message held
(L{Message.retain}) until the hand-over is over, so its owner may close it
at any time; a message already closed answered 451 for each recipient; and
an unexpected error in the backend logged and answered 451 for each, never
a success.

Owns: that shape.  Must not: know a protocol, or import mailframe.server.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailframe.envelope import DeliveryResult, Envelope
from mailframe.message import Message, MessageClosed
from mailframe.reply import Reply

__all__ = ["GONE", "heldDelivery"]

GONE = Reply(451, (4, 3, 0), "The message was closed before its delivery began")


def heldDelivery(
    envelope: Envelope,
    message: Message,
    work: Callable[[], Coroutine[Any, Any, DeliveryResult]],
    log: Logger,
    what: str,
    localError: Reply,
    remote: str | None = None,
) -> defer.Deferred[DeliveryResult | None]:
    """
    Run C{work()} (the hand-over, a coroutine giving one result per
    recipient) with C{message} held.  C{what} names the backend in the line
    logged for an unexpected failure, answered C{localError} for each
    recipient (with C{remote} as each one's remote host, if given).
    """
    count = len(envelope.recipients)
    if not count:
        return defer.succeed(DeliveryResult(()))
    try:
        hold = message.retain()
    except MessageClosed:
        return defer.succeed(DeliveryResult((GONE,) * count))
    d: defer.Deferred[DeliveryResult | None] = defer.ensureDeferred(work())

    def failed(reason: Failure) -> DeliveryResult:
        log.failure("{id}: {what} delivery failed", reason, id=envelope.queueID, what=what)
        if remote is None:
            return DeliveryResult((localError,) * count)
        return DeliveryResult((localError,) * count, (remote,) * count)

    return d.addErrback(failed).addBoth(hold.passThrough)
