"""
L{QueueRunner}: delivers what is in the spool, retries, gives up, and sends
delivery status notifications.

Each attempt takes a message's pending recipients, groups them by route
(C{routeKey}: C{"local"}, or a key such as C{"mx example.org"} or
C{"nexthop smtp.example.net:587"}), and hands each group to the local
delivery backend of the listener that took the message, or to the
L{IRelay}, within the connection limits: C{maxConnections} relay
deliveries at once in total and C{maxPerDestination} per route key, and
C{maxLocal} local deliveries at once.  A group takes its slot before the
message is read back from the spool (L{AttemptMessage}), so a backlog
waiting for a slow destination holds no message in memory or open file;
groups delivering at the same time share one read.  Then, per recipient:

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

The queue tools (L{mailframe.queue.control}) act through L{hold},
L{release}, L{delete} and L{flush}: a held entry has no timer and is
never attempted; the writes of one entry's envelope run one after
another, so the last state is the one on disk.

Owns: scheduling, limits, and turning each attempt's answers into
per-recipient outcomes (what those do to the entry, and the report they
call for: L{mailframe.queue._outcomes}).  Must not: touch files
(the spool does), speak SMTP (the relay does), or format reports (see
L{mailframe.queue.bounce}).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailframe import events
from mailframe._deferreds import always, settled
from mailframe._eventlog import counting
from mailframe.address import Address, Domain
from mailframe.envelope import DeliveryResult
from mailframe.interfaces import IDeliveryBackend, IQueueStore, IRelay
from mailframe.message import Message
from mailframe.plugins import checkProviders
from mailframe.queue import _decisions, _outcomes, bounce
from mailframe.queue._reading import AttemptMessage
from mailframe.queue._schedule import Schedule
from mailframe.queue.entry import (
    QueueEntry,
    RecipientState,
)
from mailframe.queue.limits import Limiter, RetryPolicy
from mailframe.reply import Reply

__all__ = ["LOCAL", "QueueRunner", "RetryPolicy", "UnknownEntry", "defaultRouteKey"]

log = Logger(namespace="mailframe.queue")

LOCAL = "local"
"""The route key of recipients the local delivery backend takes."""

_LOCAL_OK = Reply(250, (2, 0, 0), "Delivered")
_NO_RELAY = Reply(451, (4, 4, 0), "No relay is configured for this destination")
_TIMED_OUT = Reply(451, (4, 4, 2), "Delivery timed out")
_LOCAL_ERROR = Reply(451, (4, 3, 0), "Local error in delivery; will try again")
_UNREADABLE = Reply(451, (4, 3, 0), "The queued message cannot be read; will try again")

_Answer = tuple[Reply, str | None, bool, str | None]
"""Per recipient: the reply, the remote server, whether the DSN request went
on, and the TLS version of the session that took it (None: in clear)."""


def defaultRouteKey(isLocal: Callable[[Domain], bool]) -> Callable[[Address], str]:
    """Local domains to L{LOCAL}, every other domain to C{"mx DOMAIN"}."""

    def routeKey(address: Address) -> str:
        if address.domain is None or isLocal(address.domain):
            return LOCAL
        return f"mx {address.domain.key}"

    return routeKey


class UnknownEntry(KeyError):
    """No message with that id in the queue."""


class QueueRunner:
    """
    Delivers the entries of C{spool}; it listens to the spool's commits.

    @param clock: times every retry (a C{task.Clock} in tests).

    @param local: the local delivery backend, or a mapping of listener name
        to backend (the first is used for unknown names).

    @param relay: the L{IRelay} for other destinations, or None (they then
        wait with 4xx and eventually fail).

    @raise TypeError: one line, for a backend or relay that does not
        provide its interface (C{verifyObject}).

    @param routeKey: C{(address) -> key}; L{LOCAL} for the local backend.

    @param reports: how delivery status notifications are made.

    @param deliveryTimeout: seconds a relay transfer may take per attempt
        (then a 4xx: tried again later); a local backend is never cut off
        (it may be writing in a thread): it is waited for, with a warning
        logged after this long.

    @param logDeliveries: the decision events (L{mailframe.events}): one
        line per message queued and per recipient outcome (sent, bounced,
        deferred, expired).  Held, released and deleted are always logged.
    """

    def __init__(
        self,
        clock: IReactorTime,
        spool: IQueueStore,
        local: IDeliveryBackend | Mapping[str, IDeliveryBackend],
        relay: IRelay | None,
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
        backends: Mapping[str, IDeliveryBackend] = (
            local if isinstance(local, Mapping) else {"": local}
        )
        checkProviders(IDeliveryBackend, backends.values(), "delivery backend")
        if relay is not None:
            checkProviders(IRelay, [relay], "relay")
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
        self.remoteLimits = Limiter(maxConnections, maxPerDestination)
        self.localLimits = Limiter(maxLocal, maxLocal)
        self.schedule = Schedule(clock, self._attempt)
        self.entries = self.schedule.entries
        self._cache: dict[str, bytes] = {}
        self._reportIDs = itertools.count(1)
        self._writing: dict[str, list[defer.Deferred[None]]] = {}
        self._startWaiters: list[defer.Deferred[None]] = []
        self._attemptStarts: dict[str, float] = {}
        self.running = False
        spool.setCommitListener(self.enqueue)

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
            waiters, self._startWaiters = self._startWaiters, []
            for waiter in waiters:
                waiter.callback(None)

        return self.spool.start().addCallback(loaded)

    def whenRunning(self) -> defer.Deferred[None]:
        """Fires once L{start} has read the spool (at once if it has)."""
        if self.running:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._startWaiters.append(d)
        return d

    def stop(self) -> None:
        """Stop scheduling (attempts under way finish and record their outcome)."""
        self.running = False
        self.schedule.cancelAll()

    def enqueue(self, entry: QueueEntry, data: bytes | None = None) -> None:
        """A newly committed entry: schedule it now (C{data}: its bytes, if at hand)."""
        self.entries[entry.id] = entry
        if data is not None and len(data) <= self.spillThreshold:
            self._cache[entry.id] = data
        if self.logDeliveries or counting:
            size = entry.size if data is None else len(data)
            _decisions.queued(entry, size, self.logDeliveries)
        if entry.held:  # a filter's quarantine
            self._logHeld(entry.id, "quarantined by a filter")
        if self.running:
            self._schedule(entry, entry.nextAttempt)

    def flush(self) -> int:
        """Try every waiting entry now, except held ones; how many that is."""
        count = 0
        for entry in self.entries.values():
            if not entry.held:
                count += 1
                self._schedule(entry, self.clock.seconds())
        return count

    def take(self, entry: QueueEntry) -> None:
        """
        An entry a shared store handed this node (its lease claimed from
        the other nodes): schedule it.  Not a new message: no event.
        """
        self.entries[entry.id] = entry
        if self.running:
            self._schedule(entry, entry.nextAttempt)

    def forget(self, entryID: str) -> None:
        """
        Drop the entry without touching the store: a shared store says
        this node no longer holds its lease (another node has it, or it
        is gone).  An attempt under way finishes; its outcome is not
        recorded here.
        """
        self._cache.pop(entryID, None)
        self.schedule.forget(entryID)

    def idle(self) -> bool:
        """True when no attempt is under way."""
        return self.schedule.idle()

    # -- the queue tools' operations (mailframe-queue, through the control socket) --

    def underWay(self, entryID: str) -> bool:
        """True while an attempt of the entry runs."""
        return self.schedule.underWay(entryID)

    def scheduledAt(self, entryID: str) -> float | None:
        """When the entry's next attempt is due (clock seconds), or None: no timer."""
        return self.schedule.scheduledAt(entryID)

    def _entry(self, entryID: str) -> QueueEntry:
        entry = self.entries.get(entryID)
        if entry is None:
            raise UnknownEntry(entryID)
        return entry

    def hold(self, entryID: str, held: bool = True) -> defer.Deferred[bool]:
        """
        Hold the entry (no attempt until released; one under way finishes),
        or release it (C{held=False}: tried at its next attempt time, at
        once if that has passed).  Fires True once the envelope on disk says
        so, False if it said so already.  @raise UnknownEntry: no such id.
        """
        entry = self._entry(entryID)
        if entry.held == held:
            return defer.succeed(False)
        entry.held = held
        if held:
            self.schedule.cancel(entryID)
        else:
            self._schedule(entry, entry.nextAttempt)

        def written(_: object) -> bool:
            if held:
                self._logHeld(entryID, "by an operator")
            else:
                log.info("{queueID} released", mfEvent=events.QUEUE_RELEASED, queueID=entryID)
            return True

        return self._write(entry).addCallback(written)

    def _logHeld(self, entryID: str, reason: str) -> None:
        log.info(
            "{queueID} held ({reason})", mfEvent=events.QUEUE_HELD, queueID=entryID, reason=reason
        )

    def release(self, entryID: str) -> defer.Deferred[bool]:
        """L{hold} with C{held=False}."""
        return self.hold(entryID, held=False)

    def delete(self, entryID: str) -> None:
        """
        Forget the entry and remove its files, with no report to anyone
        (after an attempt under way).  @raise UnknownEntry: no such id.
        """
        self._entry(entryID)
        self._cache.pop(entryID, None)
        log.info("{queueID} deleted from the queue", mfEvent=events.QUEUE_DELETED, queueID=entryID)
        if self.schedule.forget(entryID):
            self._remove(entryID)

    def _write(self, entry: QueueEntry) -> defer.Deferred[None]:
        """
        Replace the entry's envelope on disk, one write of an entry at a
        time (two in spool threads could finish in either order); those
        asked for meanwhile share the next, which writes the entry as it is then.
        """
        d: defer.Deferred[None] = defer.Deferred()
        queued = self._writing.get(entry.id)
        if queued is not None:
            queued.append(d)
        else:
            self._writeNow(entry, [d])
        return d

    def _writeNow(self, entry: QueueEntry, waiters: list[defer.Deferred[None]]) -> None:
        self._writing[entry.id] = []

        def written(result: object) -> None:
            queued = self._writing.pop(entry.id)
            if queued:
                self._writeNow(entry, queued)
            for waiter in waiters:
                if isinstance(result, Failure):
                    waiter.errback(result)
                else:
                    waiter.callback(None)

        self.spool.update(entry).addBoth(written)

    def _remove(self, entryID: str) -> None:
        """Remove the entry's files, after any write of its envelope (it would come back)."""
        queued = self._writing.get(entryID)
        if queued is None:
            self.spool.remove(entryID)
            return
        d: defer.Deferred[None] = defer.Deferred()
        queued.append(d)
        d.addBoth(lambda _: self._remove(entryID))

    # -- scheduling -----------------------------------------------------------------

    def _schedule(self, entry: QueueEntry, when: float) -> None:
        if not self.running or self.schedule.underWay(entry.id) or entry.held:
            return
        self.schedule.at(entry, when)

    def _attempt(self, entryID: str) -> None:
        entry = self.entries.get(entryID)
        if entry is None or not self.schedule.begin(entryID):
            return
        self._attemptStarts[entryID] = self.clock.seconds()
        try:
            result = self._deliver(entry)
        except Exception:
            result = Failure()
        always(result, self._attempted, entry)

    def _attempted(self, result: object, entry: QueueEntry) -> None:
        """The attempt is over: C{result} is when to try again (None: never), or a Failure."""
        if self.schedule.end(entry.id):  # deleted while the attempt ran
            if result is not None:  # None: finished, and its files removed already
                self._remove(entry.id)
            if isinstance(result, Failure):
                log.failure("{id}: delivery attempt failed", result, id=entry.id)
            return
        if isinstance(result, Failure):
            log.failure("{id}: delivery attempt failed", result, id=entry.id)
            result = self.clock.seconds() + self.retry.initial
        if isinstance(result, float) and entry.id in self.entries:
            self._schedule(entry, result)

    # -- one attempt ----------------------------------------------------------------
    #
    # Each step returns its value, or a Deferred of it when it has to wait;
    # a backend that answers at once costs no Deferred, timer or coroutine.

    def _deliver(self, entry: QueueEntry) -> object:
        groups: dict[str, list[RecipientState]] = {}
        for r in entry.pending:
            groups.setdefault(self._routeKeyOf(r), []).append(r)
        reading = AttemptMessage(
            self.spool, entry.id, self.spillThreshold, self._cache.pop(entry.id, None)
        )
        results = [
            settled(self._deliverGroup(entry, key, rcpts, reading))
            for key, rcpts in groups.items()
        ]
        reading.forget()  # the groups still waiting for a slot read the file when it comes
        if not any(isinstance(r, defer.Deferred) for r in results):
            return self._outcomesOf(results, entry, groups)
        waiting = [r if isinstance(r, defer.Deferred) else defer.succeed(r) for r in results]
        d = defer.gatherResults(waiting, consumeErrors=True)
        return d.addCallback(self._outcomesOf, entry, groups)

    def _outcomesOf(
        self,
        results: list[list[_Answer]],
        entry: QueueEntry,
        groups: dict[str, list[RecipientState]],
    ) -> object:
        outcomes: list[tuple[RecipientState, Reply, str | None, bool, bool]] = []
        routes: dict[int, str] = {}
        tls: dict[int, str] = {}
        for (key, rcpts), result in zip(groups.items(), results, strict=True):
            for r, (reply, remote, passedOn, version) in zip(rcpts, result, strict=True):
                outcomes.append((r, reply, remote, key == LOCAL, passedOn))
                routes[id(r)] = key
                if version is not None:
                    tls[id(r)] = version
        return self._settle(entry, outcomes, routes, tls)

    def _routeKeyOf(self, r: RecipientState) -> str:
        try:
            return self.routeKey(r.toRecipient().address)
        except Exception:
            log.failure("{address}: routing failed", address=r.address)
            return LOCAL

    def _deliverGroup(
        self, entry: QueueEntry, key: str, rcpts: list[RecipientState], reading: AttemptMessage
    ) -> Any:
        """
        One reply and remote per recipient of C{rcpts} (or a Deferred of
        them); never fails.  The delivery slot comes first, the message
        only then: a group waiting for its slot holds no message.
        """
        limits = self.localLimits if key == LOCAL else self.remoteLimits
        if limits.tryAcquire(key):
            return self._withSlot(entry, key, rcpts, reading, limits)
        return limits.acquire(key).addCallback(
            lambda _: self._withSlot(entry, key, rcpts, reading, limits)
        )

    def _withSlot(
        self,
        entry: QueueEntry,
        key: str,
        rcpts: list[RecipientState],
        reading: AttemptMessage,
        limits: Limiter,
    ) -> Any:
        message = reading.get()
        if isinstance(message, defer.Deferred):
            return message.addCallback(self._deliverHeld, entry, key, rcpts, reading, limits)
        return self._deliverHeld(message, entry, key, rcpts, reading, limits)

    def _deliverHeld(
        self,
        message: Message | None,
        entry: QueueEntry,
        key: str,
        rcpts: list[RecipientState],
        reading: AttemptMessage,
        limits: Limiter,
    ) -> Any:
        """With the slot and the message: deliver, then give both back."""
        count = len(rcpts)

        def released(replies: list[_Answer]) -> list[_Answer]:
            reading.done()
            limits.release(key)
            return replies

        if message is None:
            return released([(_UNREADABLE, None, False, None)] * count)
        try:
            envelope = entry.envelopeFor(rcpts)
            if key == LOCAL:
                backend = self.backends.get(entry.listener) or next(iter(self.backends.values()))
                result = settled(backend.deliver(envelope, message))
            elif self.relay is None:
                result = DeliveryResult((_NO_RELAY,) * count)
            else:
                result = settled(self.relay.relay(envelope, envelope.recipients, message))
        except Exception:
            log.failure("{id}: delivery to {key} failed", id=entry.id, key=key)
            return released([(_LOCAL_ERROR, None, False, None)] * count)
        if not isinstance(result, defer.Deferred):
            return released(_replies(result, count, entry.id))

        def failed(reason: Failure) -> list[_Answer]:
            if reason.check(defer.TimeoutError):
                return [(_TIMED_OUT, None, False, None)] * count
            log.failure("{id}: delivery to {key} failed", reason, id=entry.id, key=key)
            return [(_LOCAL_ERROR, None, False, None)] * count

        if key == LOCAL:
            # a local backend is never cancelled: one writing in a thread
            # cannot be stopped, and a retry would deliver the message twice
            warning = self.clock.callLater(self.deliveryTimeout, self._slow, entry, key)
            result.addBoth(_cancelCall, warning)
        else:
            result.addTimeout(self.deliveryTimeout, self.clock)
        result.addCallback(_replies, count, entry.id)
        return result.addErrback(failed).addBoth(released)

    def _slow(self, entry: QueueEntry, key: str) -> None:
        log.warn(
            "{id}: the {key} backend has not answered in {seconds:g} s; waiting for it",
            id=entry.id,
            key=key,
            seconds=self.deliveryTimeout,
        )

    def _settle(
        self,
        entry: QueueEntry,
        outcomes: Sequence[_outcomes.Outcome],
        routes: Mapping[int, str] | None = None,
        tls: Mapping[int, str] | None = None,
    ) -> object:
        """
        Record the outcomes (L{_outcomes.record}) and queue the report they
        call for; the next attempt's time (None: finished), or a Deferred of
        it.  C{routes} and C{tls}: each recipient's route and TLS version,
        by C{id} of its state, for the log.
        """
        now = self.clock.seconds()
        started = self._attemptStarts.pop(entry.id, now)
        items, delayed = _outcomes.record(
            entry, outcomes, self.retry, now, started, routes or {}, tls, self.logDeliveries
        )
        if not items:
            return self._finish(entry, now)
        if entry.sender == "" or entry.report:
            log.info(
                "{id}: no report for {n} recipient(s): the sender is the null path",
                id=entry.id,
                n=len(items),
            )
            return self._finish(entry, now)

        def reported(ok: bool) -> object:
            if not ok:  # try again, and report again, next time
                _outcomes.takeBack(entry, items, delayed)
            return self._finish(entry, now)

        reportID = self.spool.newID(f"{entry.id}R{next(self._reportIDs)}")
        report = _outcomes.queueReport(self.spool, self.reports, entry, items, now, reportID)
        return defer.ensureDeferred(report).addCallback(reported)

    def _finish(self, entry: QueueEntry, now: float) -> defer.Deferred[float] | None:
        """Remove a finished entry, or record when to try it again (the time, or a Deferred)."""
        if entry.done:
            self.entries.pop(entry.id, None)
            self._remove(entry.id)
            return None
        entry.nextAttempt = _outcomes.nextAttempt(self.retry, entry, now)

        def failed(reason: Failure) -> None:
            log.error("{id}: cannot update the queue entry: {error}", id=entry.id,
                      error=str(reason.value))  # fmt: skip

        d = self._write(entry).addErrback(failed)
        return d.addCallback(lambda _: entry.nextAttempt)


def _replies(result: object, count: int, entryID: str) -> list[_Answer]:
    """
    Per recipient, from a backend's or relay's answer: the reply, the
    remote server, and whether the DSN request went on with the message
    (the result's C{dsn}).
    """
    if result is None:
        return [(_LOCAL_OK, None, False, None)] * count
    if not isinstance(result, DeliveryResult) or len(result.replies) != count:
        log.error("{id}: a delivery answered {result!r}", id=entryID, result=result)
        return [(_LOCAL_ERROR, None, False, None)] * count
    remotes = tuple(result.remote) + (None,) * count
    dsn = result.dsn + (False,) * count
    tls = (result.tls,) * count
    return list(zip(result.replies, remotes[:count], dsn[:count], tls, strict=True))


def _cancelCall(result: object, call: IDelayedCall) -> object:
    if call.active():
        call.cancel()
    return result
