"""
L{QueueRunner}: delivers what is in the spool, retries, gives up, and sends
delivery status notifications.

Each attempt takes a message's pending recipients, groups them by route
(C{routeKey}: C{"local"}, or a key such as C{"mx example.org"} or
C{"nexthop smtp.example.net:587"}), and hands each group to the local
delivery backend of the listener that took the message, or to the
L{IRelay}, within the connection limits: C{maxConnections} relay
deliveries at once in total and C{maxPerDestination} per route key, and
C{maxLocal} local deliveries at once.  Then, per recipient:

  - 2xx: delivered (local) or relayed; a success notice if NOTIFY asks;
  - 5xx: failed; a report to the sender (unless NOTIFY says otherwise);
  - 4xx, a connection failure, a timeout or an error: tried again after
    the L{RetryPolicy}'s back-off (first after C{initial}, doubling, at most
    C{maximum} apart), until C{giveUp} after arrival, when it fails; a delay
    warning once, after C{delayWarning} (when set).

Reports go into the same spool (with the null sender) before the
message's envelope records the outcome, so a crash in between repeats a
report or a delivery but loses neither.  A message with the null sender
gets no report (the failure is logged).  Every timer runs on the clock
passed in; on start the runner reads the spool and schedules everything.

Owns: scheduling, limits, per-recipient outcomes.  Must not: touch files
(the spool does), speak SMTP (the relay does), or format reports (see
L{mailframe.queue.bounce}).
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailframe.address import Address
from mailframe.envelope import DeliveryResult
from mailframe.interfaces import IDeliveryBackend, IRelay
from mailframe.message import Message
from mailframe.queue import bounce
from mailframe.queue.entry import (
    DELIVERED,
    FAILED,
    PENDING,
    RELAYED,
    QueueEntry,
    RecipientState,
)
from mailframe.queue.spool import Spool
from mailframe.reply import Reply

__all__ = ["LOCAL", "QueueRunner", "RetryPolicy", "defaultRouteKey"]

log = Logger(namespace="mailframe.queue")

LOCAL = "local"
"""The route key of recipients the local delivery backend takes."""

_LOCAL_OK = Reply(250, (2, 0, 0), "Delivered")
_NO_RELAY = Reply(451, (4, 4, 0), "No relay is configured for this destination")
_TIMED_OUT = Reply(451, (4, 4, 2), "Delivery timed out")
_LOCAL_ERROR = Reply(451, (4, 3, 0), "Local error in delivery; will try again")
_UNREADABLE = Reply(451, (4, 3, 0), "The queued message cannot be read; will try again")
_EXPIRED = (4, 4, 7)


@dataclass(frozen=True)
class RetryPolicy:
    """
    Back-off in seconds: the first retry C{initial} after the first attempt,
    then twice as long each time, at most C{maximum} apart; recipients still
    pending C{giveUp} after arrival fail.  C{delayWarning}: after this long
    a delay warning is sent once (0: never).
    """

    initial: float = 300.0
    maximum: float = 3600.0
    giveUp: float = 5 * 86400.0
    delayWarning: float = 0.0

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.maximum:
            raise ValueError("the first retry must be positive and at most the longest interval")
        if self.giveUp <= 0 or self.delayWarning < 0:
            raise ValueError("give-up must be positive and delay-warning not negative")

    def delayAfter(self, attempts: int) -> float:
        """Seconds from the end of attempt number C{attempts} (1, 2 ...) to the next."""
        return min(self.maximum, self.initial * 2.0 ** min(max(attempts - 1, 0), 64))


def defaultRouteKey(isLocal: Callable[[Any], bool]) -> Callable[[Address], str]:
    """Local domains to L{LOCAL}, every other domain to C{"mx DOMAIN"}."""

    def routeKey(address: Address) -> str:
        if address.domain is None or isLocal(address.domain):
            return LOCAL
        return f"mx {address.domain.key}"

    return routeKey


class _Limiter:
    """At most C{total} holders, at most C{perKey} per key; waiters served in order."""

    def __init__(self, total: int, perKey: int) -> None:
        self.total = total
        self.perKey = perKey
        self.active = 0
        self.byKey: dict[str, int] = {}
        self._waiting: deque[tuple[str, defer.Deferred[None]]] = deque()

    def _free(self, key: str) -> bool:
        return self.active < self.total and self.byKey.get(key, 0) < self.perKey

    def acquire(self, key: str) -> defer.Deferred[None]:
        if self._free(key) and all(k != key for k, _ in self._waiting):
            self._take(key)
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._waiting.append((key, d))
        return d

    def _take(self, key: str) -> None:
        self.active += 1
        self.byKey[key] = self.byKey.get(key, 0) + 1

    def release(self, key: str) -> None:
        self.active -= 1
        left = self.byKey[key] - 1
        if left:
            self.byKey[key] = left
        else:
            del self.byKey[key]
        for waiter in list(self._waiting):
            if not self._free(waiter[0]):
                if self.active >= self.total:
                    break
                continue
            self._waiting.remove(waiter)
            self._take(waiter[0])
            waiter[1].callback(None)


class QueueRunner:
    """
    Delivers the entries of C{spool}; becomes its C{committed} callback.

    @param clock: times every retry (a C{task.Clock} in tests).
    @param local: the local delivery backend, or a mapping of listener name
        to backend (the first is used for unknown names).
    @param relay: the L{IRelay} for other destinations, or None (they then
        wait with 4xx and eventually fail).
    @param routeKey: C{(address) -> key}; L{LOCAL} for the local backend.
    @param reports: how delivery status notifications are made.
    @param deliveryTimeout: seconds a backend or relay may take per attempt.
    @param logDeliveries: one log line per recipient outcome.
    """

    def __init__(
        self,
        clock: IReactorTime,
        spool: Spool,
        local: Any,
        relay: Any,
        routeKey: Callable[[Address], str],
        reports: bounce.ReportSettings,
        retry: RetryPolicy | None = None,
        maxConnections: int = 20,
        maxPerDestination: int = 5,
        maxLocal: int = 20,
        deliveryTimeout: float = 600.0,
        spillThreshold: int = 1 << 20,
        logDeliveries: bool = True,
    ) -> None:
        backends: Mapping[str, Any] = local if isinstance(local, Mapping) else {"": local}
        for backend in backends.values():
            if not IDeliveryBackend.providedBy(backend):
                raise TypeError(f"{backend!r} does not provide IDeliveryBackend")
        if relay is not None and not IRelay.providedBy(relay):
            raise TypeError(f"{relay!r} does not provide IRelay")
        self.clock = clock
        self.spool = spool
        self.backends = dict(backends)
        self.relay = relay
        self.routeKey = routeKey
        self.reports = reports
        self.retry = retry or RetryPolicy()
        self.deliveryTimeout = deliveryTimeout
        self.spillThreshold = spillThreshold
        self.logDeliveries = logDeliveries
        self.remoteLimits = _Limiter(maxConnections, maxPerDestination)
        self.localLimits = _Limiter(maxLocal, maxLocal)
        self.entries: dict[str, QueueEntry] = {}
        self._timers: dict[str, IDelayedCall] = {}
        self._active: dict[str, defer.Deferred[None]] = {}
        self._cache: dict[str, bytes] = {}
        self._reportIDs = itertools.count(1)
        self.running = False
        spool.committed = self.enqueue

    # -- life -------------------------------------------------------------------

    def start(self) -> defer.Deferred[None]:
        """Read the spool and schedule every entry (the overdue ones at once)."""

        def loaded(entries: list[QueueEntry]) -> None:
            self.running = True
            for entry in entries:
                self.entries.setdefault(entry.id, entry)
            if entries:
                log.info(
                    "queue {path}: {n} message(s) waiting", path=self.spool.path, n=len(entries)
                )
            for entry in list(self.entries.values()):
                self._schedule(entry, entry.nextAttempt)

        return self.spool.start().addCallback(loaded)

    def stop(self) -> None:
        """Stop scheduling (attempts under way finish and record their outcome)."""
        self.running = False
        for call in self._timers.values():
            if call.active():
                call.cancel()
        self._timers.clear()

    def enqueue(self, entry: QueueEntry, data: bytes | None = None) -> None:
        """A newly committed entry: schedule it now (C{data}: its bytes, if at hand)."""
        self.entries[entry.id] = entry
        if data is not None and len(data) <= self.spillThreshold:
            self._cache[entry.id] = data
        if self.running:
            self._schedule(entry, entry.nextAttempt)

    def flush(self) -> None:
        """Try every waiting entry now."""
        for entry in self.entries.values():
            self._schedule(entry, self.clock.seconds())

    def idle(self) -> bool:
        """True when no attempt is under way."""
        return not self._active

    # -- scheduling -----------------------------------------------------------------

    def _schedule(self, entry: QueueEntry, when: float) -> None:
        if not self.running or entry.id in self._active:
            return
        old = self._timers.pop(entry.id, None)
        if old is not None and old.active():
            old.cancel()
        delay = max(0.0, when - self.clock.seconds())
        self._timers[entry.id] = self.clock.callLater(delay, self._attempt, entry.id)

    def _attempt(self, entryID: str) -> None:
        self._timers.pop(entryID, None)
        entry = self.entries.get(entryID)
        if entry is None or entryID in self._active:
            return
        d = defer.ensureDeferred(self._deliver(entry))
        self._active[entryID] = d

        def done(result: object) -> None:
            self._active.pop(entryID, None)
            if isinstance(result, Failure):
                log.failure("{id}: delivery attempt failed", result, id=entryID)
                if entryID in self.entries and self.running:
                    self._schedule(entry, self.clock.seconds() + self.retry.initial)

        d.addBoth(done)

    # -- one attempt ----------------------------------------------------------------

    async def _deliver(self, entry: QueueEntry) -> None:
        groups: dict[str, list[RecipientState]] = {}
        for r in entry.pending:
            groups.setdefault(self._routeKeyOf(r), []).append(r)
        outcomes: list[tuple[RecipientState, Reply, str | None, bool]] = []
        message = await self._message(entry)
        try:
            results = await defer.gatherResults(
                [
                    defer.ensureDeferred(self._deliverGroup(entry, key, rcpts, message))
                    for key, rcpts in groups.items()
                ]
            )
        finally:
            if message is not None:
                message.close()
        for (key, rcpts), result in zip(groups.items(), results, strict=True):
            for r, (reply, remote) in zip(rcpts, result, strict=True):
                outcomes.append((r, reply, remote, key == LOCAL))
        await self._settle(entry, outcomes)

    def _routeKeyOf(self, r: RecipientState) -> str:
        try:
            return self.routeKey(r.toRecipient().address)
        except Exception:
            log.failure("{address}: routing failed", address=r.address)
            return LOCAL

    async def _message(self, entry: QueueEntry) -> Message | None:
        data = self._cache.pop(entry.id, None)
        if data is not None:
            message = Message(self.spillThreshold)
            message.write(data)
            message.finish()
            return message
        try:
            return await self.spool.readMessage(entry.id, self.spillThreshold)
        except Exception as e:
            log.error("{id}: cannot read the queued message: {error}", id=entry.id, error=str(e))
            return None

    async def _deliverGroup(
        self, entry: QueueEntry, key: str, rcpts: list[RecipientState], message: Message | None
    ) -> list[tuple[Reply, str | None]]:
        if message is None:
            return [(_UNREADABLE, None)] * len(rcpts)
        limits = self.localLimits if key == LOCAL else self.remoteLimits
        await limits.acquire(key)
        try:
            envelope = entry.envelopeFor(rcpts)
            if key == LOCAL:
                backend = self.backends.get(entry.listener) or next(iter(self.backends.values()))
                d = defer.maybeDeferred(backend.deliver, envelope, message)
            elif self.relay is None:
                return [(_NO_RELAY, None)] * len(rcpts)
            else:
                d = defer.maybeDeferred(self.relay.relay, envelope, envelope.recipients, message)
            if not d.called:  # a backend that answered at once needs no timer
                d.addTimeout(self.deliveryTimeout, self.clock)
            try:
                result = await d
            except defer.TimeoutError:
                return [(_TIMED_OUT, None)] * len(rcpts)
            except Exception:
                log.failure("{id}: delivery to {key} failed", id=entry.id, key=key)
                return [(_LOCAL_ERROR, None)] * len(rcpts)
            return _replies(result, len(rcpts), entry.id)
        finally:
            limits.release(key)

    async def _settle(
        self, entry: QueueEntry, outcomes: Sequence[tuple[RecipientState, Reply, str | None, bool]]
    ) -> None:
        now = self.clock.seconds()
        entry.attempts += 1
        entry.lastAttempt = now
        items: list[bounce.ReportItem] = []
        for r, reply, remote, local in outcomes:
            r.reply, r.remote, r.lastAttempt = reply, remote, now
            if reply.code < 400:
                r.state = DELIVERED if local else RELAYED
                action = bounce.DELIVERED if local else bounce.RELAYED
            elif reply.code >= 500:
                r.state, action = FAILED, bounce.FAILED
            else:
                continue
            self._log(entry, r, r.state)
            if bounce.wantsNotice(r, action):
                items.append(bounce.ReportItem(r, action))
        still = entry.pending
        retry = self.retry
        delayed = False
        if still and now - entry.arrival >= retry.giveUp:
            for r in still:
                r.state = FAILED
                if r.reply is not None and r.reply.code < 500:
                    r.reply = Reply(r.reply.code, r.reply.enhanced or _EXPIRED, r.reply.text)
                self._log(entry, r, "expired")
                if bounce.wantsNotice(r, bounce.FAILED):
                    items.append(bounce.ReportItem(r, bounce.FAILED))
            still = []
        elif still and self._delayWarningDue(entry, now):
            delayed = entry.delayWarned = True
            until = entry.arrival + retry.giveUp
            items.extend(
                bounce.ReportItem(r, bounce.DELAYED, until)
                for r in still
                if bounce.wantsNotice(r, bounce.DELAYED)
            )
        for r in still:
            self._log(entry, r, "deferred")
        if items:
            if entry.sender == "" or entry.report:
                log.info(
                    "{id}: no report for {n} recipient(s): the sender is the null path",
                    id=entry.id,
                    n=len(items),
                )
            elif not await self._sendReport(entry, items, now):
                for item in items:  # try again, and report again, next time
                    if item.action == bounce.FAILED:
                        item.recipient.state = PENDING
                if delayed:
                    entry.delayWarned = False
        if entry.done:
            self.entries.pop(entry.id, None)
            self.spool.remove(entry.id)
            return
        wait = retry.delayAfter(entry.attempts)
        entry.nextAttempt = max(now, min(now + wait, entry.arrival + retry.giveUp))
        try:
            await self.spool.update(entry)
        except Exception as e:
            log.error("{id}: cannot update the queue entry: {error}", id=entry.id, error=str(e))
        self._schedule(entry, entry.nextAttempt)

    def _delayWarningDue(self, entry: QueueEntry, now: float) -> bool:
        warning = self.retry.delayWarning
        return bool(warning) and not entry.delayWarned and now - entry.arrival >= warning

    async def _sendReport(
        self, entry: QueueEntry, items: list[bounce.ReportItem], now: float
    ) -> bool:
        """Put a report about C{items} into the spool; False if that failed."""
        failure = any(i.action == bounce.FAILED for i in items)
        limit = self.reports.readLimit(entry, failure)
        try:
            original, _ = await self.spool.readHead(entry.id, limit)
        except Exception as e:
            log.error(
                "{id}: cannot read the message to report on: {error}", id=entry.id, error=str(e)
            )
            original = b""
        reportID = self.spool.newID(f"{entry.id}R{next(self._reportIDs)}")
        data, params = bounce.buildReport(entry, items, original, self.reports, now, reportID)
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
            await self.spool.add(report, data)
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

    def _log(self, entry: QueueEntry, r: RecipientState, status: str) -> None:
        if not self.logDeliveries:
            return
        log.info(
            "{line}",
            line=f"{entry.id} to=<{r.address}> {status}"
            f"{f' via {r.remote}' if r.remote else ''} ({r.reply})",
            queueID=entry.id,
            status=status,
        )


def _replies(result: Any, count: int, entryID: str) -> list[tuple[Reply, str | None]]:
    """One (reply, remote) per recipient from a backend's or relay's answer."""
    if result is None:
        return [(_LOCAL_OK, None)] * count
    if not isinstance(result, DeliveryResult) or len(result.replies) != count:
        log.error("{id}: a delivery answered {result!r}", id=entryID, result=result)
        return [(_LOCAL_ERROR, None)] * count
    remotes = tuple(result.remote) + (None,) * (count - len(result.remote))
    return list(zip(result.replies, remotes[:count], strict=True))
