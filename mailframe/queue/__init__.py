"""
The outbound queue: a durable spool (L{Spool}), the runner that delivers
from it with retries and limits (L{QueueRunner}), delivery status
notifications (L{mailframe.queue.bounce}), and the delivery backend a
server with a queue uses (L{SpoolBackend}).

Owns: keeping accepted mail until it is delivered or reported.  Must not:
import mailframe.server, mailframe.app.tap or the global reactor.
"""

from mailframe.queue.backend import QueueService, SpoolBackend
from mailframe.queue.bounce import ReportSettings
from mailframe.queue.entry import QueueEntry, RecipientState
from mailframe.queue.runner import LOCAL, QueueRunner, RetryPolicy, defaultRouteKey
from mailframe.queue.spool import Spool, SpoolError

__all__ = [
    "LOCAL",
    "QueueEntry",
    "QueueRunner",
    "QueueService",
    "RecipientState",
    "ReportSettings",
    "RetryPolicy",
    "Spool",
    "SpoolBackend",
    "SpoolError",
    "defaultRouteKey",
]
