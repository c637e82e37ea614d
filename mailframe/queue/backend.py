"""
L{SpoolBackend}, the delivery backend of a server with a queue, and
L{QueueService}, which starts and stops the spool and its runner.

The server hands each accepted message to L{SpoolBackend.deliver}; it
writes the message into the spool and answers (so the client gets its 250)
only once the spool says it is durable.  The runner then delivers each
recipient: those of local domains through the listener's local backend
(C{--deliver}), the others through the relay.  A spool that cannot write
the message answers 452 4.3.1 (disk full) or 451 4.3.0, and nothing is
queued.

The session facts a report names (the client's HELO name and address,
the protocol) come with the envelope (C{envelope.session}).

The queue ID.  An entry is stored under the server's queue ID
(C{envelope.queueID}) unless the spool already has one of that name (after
a restart, say); then under a variant (L{Spool.newID}), and the backend's
answer, a L{DeliveryResult} of 250s, names it in C{queueID}, so that the
ID the client is told (C{250 ... queued as ID}) is the one the queue tools
show.

The message.  A small one (up to C{keepInMemory}) is copied at once;
a larger one is given to the spool as it is, which holds it
(L{mailframe.message.Message.retain}) until its commit is over, so the
server may close it whenever its session ends.

Owns: turning a server transaction into a queue entry.  Must not: deliver
(the runner does) or write files itself (the spool does).
"""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mailframe.backends._files import replyForError
from mailframe.envelope import DeliveryResult, Envelope
from mailframe.interfaces import IDeliveryBackend, IQueueStore, IRelay
from mailframe.message import Message
from mailframe.queue.entry import QueueEntry
from mailframe.queue.runner import QueueRunner
from mailframe.reply import Reply

__all__ = ["QueueService", "SpoolBackend"]

log = Logger(namespace="mailframe.queue")


@implementer(IDeliveryBackend)
class SpoolBackend:
    """
    Queues every message in C{spool} (an L{IQueueStore}) for the runner.

    @param clock: gives the arrival time.

    @param listener: the listener name recorded in each entry (the runner
        delivers it with that listener's local backend).

    @param keepInMemory: messages up to this size are kept in memory for
        the first attempt (no need to read the file back).
    """

    def __init__(
        self,
        spool: IQueueStore,
        clock: IReactorTime,
        listener: str = "smtp",
        keepInMemory: int = 1 << 20,
    ) -> None:
        self.spool = spool
        self.clock = clock
        self.listener = listener
        self.keepInMemory = keepInMemory

    def deliver(
        self, envelope: Envelope, message: Message
    ) -> defer.Deferred[DeliveryResult | None]:
        """
        Write the message into the spool; once it is durable, fire None
        (250), or a L{DeliveryResult} of 250s naming the entry's ID when it
        is not C{envelope.queueID}.
        """
        entryID = self.spool.newID(envelope.queueID)
        entry = QueueEntry.fromEnvelope(
            entryID, envelope, self.clock.seconds(), message.size, self.listener
        )
        if envelope.quarantine is not None:  # a filter's quarantine: held until released
            entry.held = True
        data: bytes | Message = message
        if message.inMemory and message.size <= self.keepInMemory:
            data = message.getvalue()
        d = self.spool.add(entry, data)

        def stored(_: None) -> DeliveryResult | None:
            stored = entry.id  # a shared store may have had to change it
            if stored == envelope.queueID:
                return None
            queued = Reply(250, (2, 0, 0), f"Queued as {stored}")
            return DeliveryResult((queued,) * len(envelope.recipients), queueID=stored)

        def failed(reason: Failure) -> DeliveryResult | Failure:
            if reason.check(defer.CancelledError):
                return reason
            reply = getattr(reason.value, "reply", None)  # a store's own (451 4.3.0)
            if not isinstance(reply, Reply):
                reply = replyForError(reason.value)
            return DeliveryResult.allDelivered(envelope, reply)

        return d.addCallbacks(stored, failed)


class QueueService(Service):
    """
    Starts the runner (which reads the spool) and stops it, the relay's idle
    sessions and the spool's threads.  C{runner} may be set after
    construction, before the service starts.
    """

    name = "mailframe-queue"

    def __init__(self, runner: QueueRunner | None, relay: IRelay | None = None) -> None:
        self.runner = runner
        self.relay = relay

    def startService(self) -> None:
        super().startService()
        if self.runner is None:
            raise RuntimeError("QueueService started without a runner")

        def failed(reason: Failure) -> None:
            log.failure("the queue cannot start", reason)

        self.runner.start().addErrback(failed)

    def stopService(self) -> defer.Deferred[None] | None:
        super().stopService()
        if self.runner is not None:
            self.runner.stop()
            self.runner.spool.stop()
        closeIdle = getattr(self.relay, "closeIdle", None)
        if closeIdle is not None:
            closeIdle()
        return None
