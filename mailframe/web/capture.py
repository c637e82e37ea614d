"""
Capture mode's store: a delivery backend (L{IDeliveryBackend}) that keeps
every message it is given, up to C{limit} messages and C{maxBytes} octets
(the oldest dropped first), grouped in mailboxes (by AUTH user, recipient
domain or listener), and wakes whoever waits for a message matching a query
(L{CaptureStore.wait}: the REST API's C{/api/v1/wait}).

The messages are kept in memory, or, given a
L{mailframe.web.capturedb.CaptureDatabase} (C{capture-store sqlite:PATH}),
in a SQLite file that survives a restart: then only the index (ID, mailbox,
envelope, subject, size) is in memory, and the bytes of the most recently
used messages, at most C{maxBytes} octets; the others are read from the
file when asked for.  A message the file could not take is answered 451.

A message held in memory is read inside C{deliver}; one spilled to a file
is read in the disk thread pool, held (L{Message.retain}) until the thread
is done, so a large message never blocks the reactor.  The SQLite writes
are in the reactor thread (see L{mailframe.web.capturedb} for why).

Owns: the captured messages, their limits and their bytes in memory, in the
reactor thread.  Must not: know HTTP or SQL; import mailframe.server or
mailframe.app.
"""

from __future__ import annotations

import email
import email.parser
import email.policy
import itertools
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mailframe._threads import DISK, WorkerPool, deferToPool, threadPools
from mailframe.envelope import DeliveryResult, Envelope
from mailframe.interfaces import IDeliveryBackend
from mailframe.message import Message, MessageClosed
from mailframe.reply import Reply
from mailframe.web.capturedb import CaptureDatabase, CaptureDatabaseError

__all__ = ["DEFAULT_MAX_BYTES", "MAILBOX_MODES", "CaptureStore", "CapturedMessage", "Query"]

log = Logger(namespace="mailframe.web")

MAILBOX_MODES = ("auth", "domain", "listener")
"""How messages are grouped: by AUTH user (else recipient domain), by the
first recipient's domain, or by the listener that received them."""

DEFAULT_MAX_BYTES = 256 << 20
"""The octets of captured messages kept in memory by default (C{capture-max-bytes})."""

_GONE = Reply(451, (4, 3, 0), "The message was closed before it could be captured")
_FAILED = Reply(451, (4, 3, 0), "The message could not be captured")


def _parse(data: bytes) -> EmailMessage:
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def _subjectOf(data: bytes) -> str:
    """The Subject field of C{data}, decoded; the header is parsed, not the body."""
    try:
        headers = email.parser.BytesHeaderParser(policy=email.policy.default).parsebytes(data)
        return str(headers.get("subject", "") or "")
    except Exception:  # a malformed encoded word
        return ""


class CapturedMessage:
    """
    One captured message: its C{id}, C{mailbox}, C{envelope}, bytes
    (C{data}), C{size} and C{arrived} time, and what is derived from them.

    A message of a store in memory holds its bytes.  One of a store with a
    SQLite file is an entry of the index: C{data} and C{parsed} are read from
    the file when asked for, and stay in memory while they are among the most
    recently used; so read them in the reactor thread, and not after the
    message was deleted (a L{LookupError} then, unless they are in memory).
    """

    def __init__(
        self,
        id: str,
        mailbox: str,
        envelope: Envelope,
        data: bytes | None,
        arrived: float,
        *,
        size: int | None = None,
        subject: str | None = None,
        resident: _Resident | None = None,
    ) -> None:
        if data is None and (resident is None or size is None or subject is None):
            raise ValueError("a message without its bytes needs its size, subject and file")
        self.id = id
        self.mailbox = mailbox
        self.envelope = envelope
        self.arrived = arrived
        self.size = len(data) if data is not None else int(size or 0)
        self._data = data if resident is None else None
        self._parsed: EmailMessage | None = None
        self._subject = subject
        self._resident = resident

    def __repr__(self) -> str:
        return (
            f"<CapturedMessage {self.id} mailbox={self.mailbox!r} size={self.size} "
            f"arrived={self.arrived}>"
        )

    @property
    def data(self) -> bytes:
        """The message as received (CRLF line endings)."""
        if self._resident is not None:
            return self._resident.entry(self).data
        assert self._data is not None
        return self._data

    @property
    def inMemory(self) -> bool:
        """Whether C{data} is in memory now (else it is read from the file when asked for)."""
        return self._resident is None or self._resident.holds(self)

    @property
    def parsed(self) -> EmailMessage:
        """The message parsed (email.policy.default), once (while it is in memory)."""
        if self._resident is not None:
            entry = self._resident.entry(self)
            if entry.parsed is None:
                entry.parsed = _parse(entry.data)
            return entry.parsed
        if self._parsed is None:
            self._parsed = _parse(self.data)
        return self._parsed

    @property
    def sender(self) -> str:
        return str(self.envelope.mailFrom)

    @property
    def recipients(self) -> list[str]:
        return [str(r.address) for r in self.envelope.recipients]

    @property
    def subject(self) -> str:
        if self._subject is None:
            self._subject = _subjectOf(self.data)
        return self._subject

    def parts(self) -> list[EmailMessage]:
        """Every part, in the order of C{walk()} (the numbers of the API's C{parts/N})."""
        return list(self.parsed.walk())


@dataclass
class _Entry:
    data: bytes
    parsed: EmailMessage | None = None


class _Resident:
    """
    The bytes (and parsed form) of a SQLite store's most recently used
    messages, at most C{maxBytes} octets of bytes (0: no limit) but always
    the one in use; the others are read from C{database} when asked for.
    """

    def __init__(self, database: CaptureDatabase, maxBytes: int) -> None:
        self.database = database
        self.maxBytes = maxBytes
        self.bytes = 0
        self._kept: OrderedDict[CapturedMessage, _Entry] = OrderedDict()

    def holds(self, message: CapturedMessage) -> bool:
        return message in self._kept

    def entry(self, message: CapturedMessage) -> _Entry:
        """C{message}'s bytes, now the most recently used; read from the file if need be."""
        found = self._kept.get(message)
        if found is not None:
            self._kept.move_to_end(message)
            return found
        data = self.database.read(message.id)
        if data is None:
            raise LookupError(f"captured message {message.id} was deleted")
        return self.keep(message, data)

    def keep(self, message: CapturedMessage, data: bytes) -> _Entry:
        """Hold C{data}, dropping the least recently used beyond C{maxBytes}."""
        self.forget(message)
        entry = self._kept[message] = _Entry(data)
        self.bytes += len(data)
        while self.maxBytes and self.bytes > self.maxBytes and len(self._kept) > 1:
            _, old = self._kept.popitem(last=False)
            self.bytes -= len(old.data)
        return entry

    def forget(self, message: CapturedMessage) -> None:
        old = self._kept.pop(message, None)
        if old is not None:
            self.bytes -= len(old.data)


@dataclass(frozen=True)
class Query:
    """
    A search: every word must be found (case-insensitive) in the sender, a
    recipient or the subject; C{from:X}, C{to:X} and C{subject:X} look in
    that one only.  An empty query matches every message.
    """

    text: str = ""
    mailbox: str | None = None

    def matches(self, captured: CapturedMessage) -> bool:
        if self.mailbox is not None and captured.mailbox != self.mailbox:
            return False
        fields = {
            "from": captured.sender.lower(),
            "to": " ".join(captured.recipients).lower(),
            "subject": captured.subject.lower(),
        }
        everything = " ".join(fields.values())
        for word in self.text.lower().split():
            name, colon, value = word.partition(":")
            if colon and name in fields:
                if value not in fields[name]:
                    return False
            elif word not in everything:
                return False
        return True


def _mailboxOf(mode: str, envelope: Envelope) -> str:
    session = envelope.session
    if mode == "listener":
        return session.listener if session is not None else "smtp"
    if mode == "auth":
        user = session.authenticated if session is not None else None  # not MAIL's AUTH=
        if user:
            return user
    for recipient in envelope.recipients:
        if recipient.address.domain is not None:
            return str(recipient.address.domain).lower()
    return "default"


@implementer(IDeliveryBackend)
class CaptureStore:
    """
    Keeps up to C{limit} messages and C{maxBytes} octets of them (0: no
    limit; the newest message is always kept), the oldest dropped first,
    grouped by C{mailbox} (one of L{MAILBOX_MODES}).  Every method is for
    the reactor thread.

    With a C{database}, the messages are kept in its file too: the newest
    C{limit} of an earlier run are there at once, and C{maxBytes} bounds the
    bytes held in memory only (the file keeps C{limit} messages).

    @raise CaptureDatabaseError: if the messages of C{database} cannot be read.
    """

    def __init__(
        self,
        reactor: Any,
        limit: int = 1000,
        mailbox: str = "auth",
        pool: WorkerPool | None = None,
        clock: Callable[[], float] = time.time,
        maxBytes: int = DEFAULT_MAX_BYTES,
        database: CaptureDatabase | None = None,
    ) -> None:
        if mailbox not in MAILBOX_MODES:
            raise ValueError(f"capture-mailbox must be one of {', '.join(MAILBOX_MODES)}")
        if limit < 1:
            raise ValueError("capture-limit must be at least 1")
        if maxBytes < 0:
            raise ValueError("capture-max-bytes may not be negative")
        self.reactor = reactor
        self.limit = limit
        self.mailbox = mailbox
        self.maxBytes = maxBytes
        self.database = database
        self._pool = pool
        self._clock = clock
        self._messages: OrderedDict[str, CapturedMessage] = OrderedDict()
        self._bytes = 0
        self._waiters: list[tuple[Query, defer.Deferred[CapturedMessage]]] = []
        self._serial = itertools.count(1)
        self._resident = None if database is None else _Resident(database, maxBytes)
        if database is not None:
            for row in database.load(limit):
                self._messages[row.id] = CapturedMessage(
                    row.id,
                    row.mailbox,
                    row.envelope,
                    None,
                    row.arrived,
                    size=row.size,
                    subject=row.subject,
                    resident=self._resident,
                )
                self._bytes += row.size

    # -- IDeliveryBackend -----------------------------------------------------

    def deliver(
        self, envelope: Envelope, message: Message
    ) -> DeliveryResult | defer.Deferred[DeliveryResult | None] | None:
        """Captured at once if in memory, else read in the disk pool; 451 if not kept."""
        count = len(envelope.recipients)
        if message.inMemory:
            try:
                data = message.getvalue()
            except MessageClosed:
                return DeliveryResult((_GONE,) * count)
            try:
                self.add(envelope, data)
            except CaptureDatabaseError as e:
                self._notKept(envelope, e)
                return DeliveryResult((_FAILED,) * count)
            return None
        try:
            hold = message.retain()
        except MessageClosed:
            return DeliveryResult((_GONE,) * count)
        pool = self._pool if self._pool is not None else threadPools(self.reactor).pool(DISK)
        d = deferToPool(self.reactor, pool, message.getvalue, hold.release)

        def read(data: bytes) -> None:
            self.add(envelope, data)

        def failed(reason: Failure) -> DeliveryResult:
            self._notKept(envelope, reason.value)
            return DeliveryResult((_FAILED,) * count)

        return d.addCallbacks(read, failed).addErrback(failed)

    def _notKept(self, envelope: Envelope, error: object) -> None:
        log.error(
            "mailframe: capture: message {queueID} not kept (451): {error}",
            queueID=envelope.queueID,
            error=str(error),
        )

    # -- the store ------------------------------------------------------------

    def add(self, envelope: Envelope, data: bytes) -> CapturedMessage:
        """
        Keep C{data} (a message as received, CRLF line endings), drop the
        oldest beyond the limits, and wake its waiters.

        @raise CaptureDatabaseError: if the file could not take it (the store
            is then as it was).
        """
        base = envelope.queueID or "M"
        if not base.isascii() or not base.replace("-", "").replace("_", "").isalnum():
            base = "M"
        ident = base
        while ident in self._messages:
            ident = f"{base}-{next(self._serial)}"
        mailbox = _mailboxOf(self.mailbox, envelope)
        arrived = self._clock()
        doomed = self._doomed(len(data))
        if self._resident is None:
            captured = CapturedMessage(ident, mailbox, envelope, data, arrived)
        else:
            subject = _subjectOf(data)
            self._resident.database.insert(
                ident, mailbox, arrived, subject, envelope, data, [m.id for m in doomed]
            )
            captured = CapturedMessage(ident, mailbox, envelope, None, arrived,
                                       size=len(data), subject=subject,
                                       resident=self._resident)  # fmt: skip
            self._resident.keep(captured, data)
        for old in doomed:
            self._forget(old)
        self._messages[ident] = captured
        self._bytes += captured.size
        waiting, self._waiters = self._waiters, []
        for query, d in waiting:
            if query.matches(captured):
                d.callback(captured)
            else:
                self._waiters.append((query, d))
        return captured

    def _doomed(self, size: int) -> list[CapturedMessage]:
        """The oldest messages to drop for a new one of C{size} octets."""
        count, total = len(self._messages) + 1, self._bytes + size
        bounded = self._resident is None and self.maxBytes > 0  # the file: the count only
        doomed = []
        for old in self._messages.values():
            if count <= self.limit and not (bounded and total > self.maxBytes):
                break
            doomed.append(old)
            count -= 1
            total -= old.size
        return doomed

    def _forget(self, captured: CapturedMessage) -> None:
        del self._messages[captured.id]
        self._bytes -= captured.size
        if self._resident is not None:
            self._resident.forget(captured)

    @property
    def totalBytes(self) -> int:
        """The octets of the messages kept."""
        return self._bytes

    @property
    def bytesInMemory(self) -> int:
        """The octets of message bytes held in memory (with a file, the recently used)."""
        return self._bytes if self._resident is None else self._resident.bytes

    def __len__(self) -> int:
        return len(self._messages)

    def newestFirst(self) -> Iterator[CapturedMessage]:
        return reversed(self._messages.values())

    def search(self, query: Query = Query(), limit: int | None = None) -> list[CapturedMessage]:
        """The messages matching C{query}, newest first, at most C{limit}."""
        found = (m for m in self.newestFirst() if query.matches(m))
        return list(itertools.islice(found, limit))

    def get(self, ident: str) -> CapturedMessage | None:
        return self._messages.get(ident)

    def delete(self, ident: str) -> bool:
        """
        Forget one message; False if there was none.

        @raise CaptureDatabaseError: if the file could not delete it (it is kept).
        """
        captured = self._messages.get(ident)
        if captured is None:
            return False
        if self.database is not None:
            self.database.delete([ident])
        self._forget(captured)
        return True

    def clear(self, mailbox: str | None = None) -> int:
        """
        Forget every message (of C{mailbox}, if given); how many.

        @raise CaptureDatabaseError: if the file could not delete them (they are kept).
        """
        doomed = [m for m in self._messages.values() if mailbox in (None, m.mailbox)]
        if self.database is not None:
            self.database.delete(m.id for m in doomed)
        for captured in doomed:
            self._forget(captured)
        return len(doomed)

    def mailboxes(self) -> dict[str, int]:
        """Each mailbox's name and count of messages, by name."""
        counts: dict[str, int] = {}
        for m in self._messages.values():
            counts[m.mailbox] = counts.get(m.mailbox, 0) + 1
        return dict(sorted(counts.items()))

    def wait(self, query: Query = Query()) -> defer.Deferred[CapturedMessage]:
        """
        The newest message matching C{query}, at once if there is one, else
        the first one to arrive.  Cancel the Deferred to stop waiting.
        """
        found = self.search(query, 1)
        if found:
            return defer.succeed(found[0])
        entry: list[tuple[Query, defer.Deferred[CapturedMessage]]] = []

        def cancel(d: defer.Deferred[CapturedMessage]) -> None:
            if entry and entry[0] in self._waiters:
                self._waiters.remove(entry[0])

        d: defer.Deferred[CapturedMessage] = defer.Deferred(cancel)
        entry.append((query, d))
        self._waiters.append(entry[0])
        return d

    @property
    def waiting(self) -> int:
        """How many waits are pending."""
        return len(self._waiters)
