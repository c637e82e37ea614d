"""
L{SRSRelay}: the relay of a queue that forwards aliased mail, giving each
forwarded copy an SRS envelope sender (L{mailframe.validators.srs}).

A recipient is a forwarded copy when an alias or virtual map made it
(its C{original} is set) and the queue relays it (its domain is not
delivered locally).  Its envelope sender becomes the SRS form of the
original sender, so that an SPF check at the next hop sees our domain, and
a bounce to it comes back to us, where L{SRSReverser} sends it on to the
original sender.  Recipients that are not forwarded copies (mail an
authenticated client relays) keep the sender; when one transfer has both,
they go as two transactions, and the replies come back in order.

The sender is kept (and the start-up line of the queue, or this log, says
why) when it is the null path (a bounce being forwarded), when its domain
is one of ours (we may send for it; postsrsd's exclusion of local
domains), or when its SRS form would be longer than 64 octets.

Reports of the queue itself (a forwarded copy that fails for good) go to
the original sender, as for any recipient.

Owns: choosing the sender of forwarded copies.  Must not: speak SMTP (the
relay it wraps does) or decide routes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from mailframe.address import Address, Domain
from mailframe.envelope import DeliveryResult, Envelope, Recipient
from mailframe.interfaces import IRelay
from mailframe.message import Message
from mailframe.reply import Reply
from mailframe.validators.srs import SRS

__all__ = ["SRSRelay"]

log = Logger(namespace="mailframe.queue")


@implementer(IRelay)
class SRSRelay:
    """
    Relays through C{relay} (kept as C{inner}), forwarded copies with an SRS sender.

    @param srs: the L{SRS} rewriter (its secret and domain).
    @param isLocal: tells the domains whose senders are never rewritten.
    @param clock: gives the SRS timestamp.
    """

    def __init__(
        self,
        relay: IRelay,
        srs: SRS,
        isLocal: Callable[[Domain], bool],
        clock: IReactorTime,
    ) -> None:
        self.inner = relay
        self.srs = srs
        self.isLocal = isLocal
        self.clock = clock

    def senderFor(self, sender: Address) -> Address | None:
        """The SRS sender of a forwarded copy from C{sender}, or None to keep it."""
        if sender.isNull or sender.domain is None or self.isLocal(sender.domain):
            return None
        forwarded = self.srs.forward(sender, self.clock.seconds())
        if forwarded is None:
            log.info(
                "forwarding with the sender <{sender}> as it is: its SRS form would be "
                "longer than 64 octets",
                sender=sender,
            )
        return forwarded

    def relay(
        self, envelope: Envelope, recipients: Sequence[Recipient], message: Message
    ) -> defer.Deferred[DeliveryResult]:
        rcpts = list(recipients)
        forwarded = [i for i, r in enumerate(rcpts) if r.original is not None]
        sender = self.senderFor(envelope.mailFrom) if forwarded else None
        if sender is None:
            return self.inner.relay(envelope, rcpts, message)
        copies = [rcpts[i] for i in forwarded]
        rewritten = replace(envelope, mailFrom=sender, recipients=copies)
        if len(forwarded) == len(rcpts):
            return self.inner.relay(rewritten, copies, message)
        others = [r for r in rcpts if r.original is None]
        plain = replace(envelope, recipients=others)
        both = [
            self.inner.relay(rewritten, copies, message),
            self.inner.relay(plain, others, message),
        ]
        d = defer.gatherResults(both, consumeErrors=True)
        return d.addCallback(_merge, forwarded, len(rcpts))

    def __repr__(self) -> str:
        return f"SRSRelay({self.inner!r}, {self.srs!r})"


def _merge(results: list[DeliveryResult], forwarded: list[int], count: int) -> DeliveryResult:
    """The replies of the two transfers, back in the order of the recipients."""
    copies, others = _answers(results[0]), _answers(results[1])
    wanted = set(forwarded)
    answers = [next(copies) if i in wanted else next(others) for i in range(count)]
    return DeliveryResult(
        tuple(a[0] for a in answers),
        tuple(a[1] for a in answers),
        tuple(a[2] for a in answers),
    )


def _answers(result: DeliveryResult) -> Iterator[tuple[Reply, str | None, bool]]:
    n = len(result.replies)
    remote = tuple(result.remote) + (None,) * (n - len(result.remote))
    dsn = tuple(result.dsn) + (False,) * (n - len(result.dsn))
    return iter(zip(result.replies, remote[:n], dsn[:n], strict=True))
