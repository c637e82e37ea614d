"""
Capture mode's store: a delivery backend (L{IDeliveryBackend}) that keeps
every message it is given, in memory, up to C{limit} messages (the oldest
dropped first), grouped in mailboxes (by AUTH user, recipient domain or
listener), and wakes whoever waits for a message matching a query
(L{CaptureStore.wait}: the REST API's C{/api/v1/wait}).

A message held in memory is read inside C{deliver}; one spilled to a file
is read in the disk thread pool, held (L{Message.retain}) until the thread
is done, so a large message never blocks the reactor.

Owns: the captured messages, in the reactor thread.  Must not: know HTTP;
import mailframe.server or mailframe.app.
"""

from __future__ import annotations

import email
import email.policy
import itertools
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from twisted.internet import defer
from zope.interface import implementer

from mailframe._threads import DISK, WorkerPool, deferToPool, threadPools
from mailframe.envelope import DeliveryResult, Envelope
from mailframe.interfaces import IDeliveryBackend
from mailframe.message import Message, MessageClosed
from mailframe.reply import Reply

__all__ = ["MAILBOX_MODES", "CaptureStore", "CapturedMessage", "Query"]

MAILBOX_MODES = ("auth", "domain", "listener")
"""How messages are grouped: by AUTH user (else recipient domain), by the
first recipient's domain, or by the listener that received them."""

_GONE = Reply(451, (4, 3, 0), "The message was closed before it could be captured")
_FAILED = Reply(451, (4, 3, 0), "The message could not be captured")


@dataclass
class CapturedMessage:
    """One captured message: its ID, mailbox, envelope, bytes and arrival time."""

    id: str
    mailbox: str
    envelope: Envelope
    data: bytes
    arrived: float
    _parsed: EmailMessage | None = field(default=None, repr=False)

    @property
    def parsed(self) -> EmailMessage:
        """The message parsed (email.policy.default), once."""
        if self._parsed is None:
            parsed = email.message_from_bytes(self.data, policy=email.policy.default)
            assert isinstance(parsed, EmailMessage)
            self._parsed = parsed
        return self._parsed

    @property
    def sender(self) -> str:
        return str(self.envelope.mailFrom)

    @property
    def recipients(self) -> list[str]:
        return [str(r.address) for r in self.envelope.recipients]

    @property
    def subject(self) -> str:
        try:
            return str(self.parsed.get("subject", "") or "")
        except Exception:  # a malformed encoded word
            return ""

    def parts(self) -> list[EmailMessage]:
        """Every part, in the order of C{walk()} (the numbers of the API's C{parts/N})."""
        return list(self.parsed.walk())


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
    Keeps up to C{limit} messages (the oldest dropped), grouped by
    C{mailbox} (one of L{MAILBOX_MODES}).  Every method is for the reactor
    thread.
    """

    def __init__(
        self,
        reactor: Any,
        limit: int = 1000,
        mailbox: str = "auth",
        pool: WorkerPool | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if mailbox not in MAILBOX_MODES:
            raise ValueError(f"capture-mailbox must be one of {', '.join(MAILBOX_MODES)}")
        if limit < 1:
            raise ValueError("capture-limit must be at least 1")
        self.reactor = reactor
        self.limit = limit
        self.mailbox = mailbox
        self._pool = pool
        self._clock = clock
        self._messages: OrderedDict[str, CapturedMessage] = OrderedDict()
        self._waiters: list[tuple[Query, defer.Deferred[CapturedMessage]]] = []
        self._serial = itertools.count(1)

    # -- IDeliveryBackend -----------------------------------------------------

    def deliver(
        self, envelope: Envelope, message: Message
    ) -> DeliveryResult | defer.Deferred[DeliveryResult | None] | None:
        """Captured at once if in memory, else read in the disk pool."""
        count = len(envelope.recipients)
        if message.inMemory:
            try:
                data = message.getvalue()
            except MessageClosed:
                return DeliveryResult((_GONE,) * count)
            self.add(envelope, data)
            return None
        try:
            hold = message.retain()
        except MessageClosed:
            return DeliveryResult((_GONE,) * count)
        pool = self._pool if self._pool is not None else threadPools(self.reactor).pool(DISK)
        d = deferToPool(self.reactor, pool, message.getvalue, hold.release)

        def read(data: bytes) -> None:
            self.add(envelope, data)

        def failed(reason: object) -> DeliveryResult:
            return DeliveryResult((_FAILED,) * count)

        return d.addCallbacks(read, failed)

    # -- the store ------------------------------------------------------------

    def add(self, envelope: Envelope, data: bytes) -> CapturedMessage:
        """Keep C{data} (a message as received, CRLF line endings) and wake its waiters."""
        ident = envelope.queueID or "M"
        if not ident.isascii() or not ident.replace("-", "").replace("_", "").isalnum():
            ident = "M"
        if ident in self._messages:
            ident = f"{ident}-{next(self._serial)}"
        captured = CapturedMessage(
            ident, _mailboxOf(self.mailbox, envelope), envelope, data, self._clock()
        )
        self._messages[ident] = captured
        while len(self._messages) > self.limit:
            self._messages.popitem(last=False)
        waiting, self._waiters = self._waiters, []
        for query, d in waiting:
            if query.matches(captured):
                d.callback(captured)
            else:
                self._waiters.append((query, d))
        return captured

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
        """Forget one message; False if there was none."""
        return self._messages.pop(ident, None) is not None

    def clear(self, mailbox: str | None = None) -> int:
        """Forget every message (of C{mailbox}, if given); how many."""
        doomed = [k for k, m in self._messages.items() if mailbox in (None, m.mailbox)]
        for k in doomed:
            del self._messages[k]
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
