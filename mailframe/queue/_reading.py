"""
L{AttemptMessage}: the message of one delivery attempt of the queue runner,
open only while a group of its recipients holds a delivery slot.

Why: a backlog for one slow destination is many entries waiting for a
slot; if each had read its message first, all of them would sit in memory
or in open temporary files.  The runner takes the slot first and only then
asks for the message, so at most as many messages are open as there are
slots in use.

Owns: reading a queued message back and closing it after its last user.
Must not: deliver, or take slots (the runner does).
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailframe.interfaces import IQueueStore
from mailframe.message import Message

__all__ = ["AttemptMessage"]

log = Logger(namespace="mailframe.queue")


class AttemptMessage:
    """
    The message of one attempt, open only while a group of its recipients
    holds a delivery slot: read (from the bytes kept since the commit, or
    from the spool) when the first group that needs it has its slot, shared
    by the groups delivering at the same time, and closed when the last of
    them is done; a group whose slot comes later reads it again.  A backend
    that reads it after answering holds it itself (L{Message.retain}).
    """

    def __init__(
        self, spool: IQueueStore, entryID: str, spillThreshold: int, data: bytes | None
    ) -> None:
        self.spool = spool
        self.entryID = entryID
        self.spillThreshold = spillThreshold
        self.data = data
        self.message: Message | None = None
        self.users = 0
        self._waiting: list[defer.Deferred[Message | None]] | None = None

    def forget(self) -> None:
        """Drop the bytes kept since the commit (the file has them)."""
        self.data = None

    def get(self) -> Message | defer.Deferred[Message | None] | None:
        """The message (None if it cannot be read), or a Deferred of it; L{done} after."""
        self.users += 1
        if self.message is not None:
            return self.message
        if self.data is not None:
            message = self.message = Message(self.spillThreshold)
            message.write(self.data)
            message.finish()
            self.data = None
            return message
        d: defer.Deferred[Message | None] = defer.Deferred()
        if self._waiting is None:
            self._waiting = [d]
            self.spool.readMessage(self.entryID, self.spillThreshold).addCallbacks(
                self._read, self._unreadable
            )
        else:
            self._waiting.append(d)
        return d

    def _read(self, message: Message) -> None:
        waiting, self._waiting = self._waiting or [], None
        self.message = message
        for d in waiting:
            d.callback(message)

    def _unreadable(self, reason: Failure) -> None:
        log.error("{id}: cannot read the queued message: {error}", id=self.entryID,
                  error=str(reason.value))  # fmt: skip
        waiting, self._waiting = self._waiting or [], None
        for d in waiting:
            d.callback(None)

    def done(self) -> None:
        """A group is done with the message: the last one closes it."""
        self.users -= 1
        if not self.users and self.message is not None:
            self.message.close()
            self.message = None
