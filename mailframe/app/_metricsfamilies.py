"""
The cheap metric families of L{mailframe.app.metrics}: counters, gauges
and histograms kept as plain dicts of label values to numbers, turned into
prometheus-client's metric families only when scraped; and
L{QueueCollector}, the queue by state, read at scrape time.

Why not prometheus-client's C{Counter} and C{Histogram}: each C{labels()}
call validates its arguments and takes a lock, and each C{observe} takes
one per bucket, about 1.5 microseconds an increment and 4 a histogram
observation, which a session's events would pay some twenty times.  Here an
increment is one dict update: every change happens in the reactor thread
(the decision events and the chains' timer are emitted there), and a scrape
reads a copy of each dict.

Owns: the arithmetic of the families.  Must not: name metrics, or read
events.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from mailframe.queue.entry import QueueEntry

__all__ = ["QUEUE_STATES", "Counter", "Families", "Gauge", "Histogram", "QueueCollector"]

Key = tuple[str, ...]


class Counter:
    """A counter family: label values (a tuple, in C{labels} order) to a total."""

    __slots__ = ("help", "labels", "name", "values")

    family = CounterMetricFamily

    def __init__(self, name: str, help: str, labels: Sequence[str] = ()) -> None:
        self.name, self.help, self.labels = name, help, tuple(labels)
        self.values: dict[Key, float] = {} if labels else {(): 0.0}

    def inc(self, key: Key, amount: float = 1.0) -> None:
        values = self.values
        values[key] = values.get(key, 0.0) + amount

    def collect(self) -> Metric:
        family = self.family(self.name, self.help, labels=self.labels)
        for key, value in list(self.values.items()):
            family.add_metric(key, value)
        return family


class Gauge(Counter):
    """A gauge family: L{inc} by a negative amount to decrease it."""

    __slots__ = ()

    family = GaugeMetricFamily  # type: ignore[assignment]


class Histogram:
    """
    A histogram family: label values to counts per bucket (not cumulative:
    the scrape adds them up) and the sum of the observations.
    """

    __slots__ = ("bounds", "help", "labels", "name", "values")

    def __init__(
        self, name: str, help: str, labels: Sequence[str], bounds: Sequence[float]
    ) -> None:
        self.name, self.help, self.labels = name, help, tuple(labels)
        self.bounds = tuple(sorted(bounds))
        # per key: one count per bound, one for +Inf, then the sum
        self.values: dict[Key, list[float]] = {}

    def observe(self, key: Key, amount: float) -> None:
        counts = self.values.get(key)
        if counts is None:
            counts = self.values[key] = [0.0] * (len(self.bounds) + 2)
        counts[bisect_left(self.bounds, amount)] += 1
        counts[-1] += amount

    def recorder(self, key: Key) -> Callable[[float], None]:
        """L{observe} for one key, bound once: the series is there from now on."""
        counts = self.values.get(key)
        if counts is None:
            counts = self.values[key] = [0.0] * (len(self.bounds) + 2)
        bounds = self.bounds

        def record(amount: float) -> None:
            counts[bisect_left(bounds, amount)] += 1
            counts[-1] += amount

        return record

    def collect(self) -> Metric:
        family = HistogramMetricFamily(self.name, self.help, labels=self.labels)
        edges = [*(floatToGoString(b) for b in self.bounds), "+Inf"]
        for key, counts in list(self.values.items()):
            total, buckets = 0.0, []
            for edge, count in zip(edges, counts, strict=False):
                total += count
                buckets.append((edge, total))
            family.add_metric(list(key), buckets, counts[-1])
        return family


class Families:
    """A prometheus-client collector of L{Counter}s, L{Gauge}s and L{Histogram}s."""

    def __init__(self) -> None:
        self.families: list[Counter | Histogram] = []

    def add(self, family: Counter | Histogram) -> None:
        self.families.append(family)

    def describe(self) -> Iterable[Metric]:
        return [
            (CounterMetricFamily if type(f) is Counter else GaugeMetricFamily)(f.name, f.help)
            if not isinstance(f, Histogram)
            else HistogramMetricFamily(f.name, f.help)
            for f in self.families
        ]

    def collect(self) -> Iterable[Metric]:
        return [f.collect() for f in self.families]


#: The queue's states, as mailframe-queue shows them: being attempted now,
#: never attempted yet, waiting for a retry, on hold.
QUEUE_STATES = ("active", "incoming", "deferred", "hold")


class QueueSource(Protocol):
    """What L{QueueCollector} reads: a L{mailframe.queue.runner.QueueRunner}."""

    @property
    def entries(self) -> Mapping[str, QueueEntry]: ...

    def underWay(self, entryID: str) -> bool: ...


class QueueCollector:
    """
    The queue at scrape time, by state (L{QUEUE_STATES}): messages, their
    pending recipients, their octets, and the age of the oldest.  It reads
    the runner's entries in memory (no file is opened): one pass per scrape.
    """

    def __init__(self, queue: QueueSource, clock: IReactorTime, prefix: str) -> None:
        self.queue = queue
        self.clock = clock
        self.prefix = prefix

    def _families(self) -> tuple[GaugeMetricFamily, ...]:
        p = self.prefix
        return (
            GaugeMetricFamily(
                f"{p}_queue_messages", "Messages in the queue, by state.", labels=["state"]
            ),
            GaugeMetricFamily(
                f"{p}_queue_recipients",
                "Recipients still to deliver in the queue, by state.",
                labels=["state"],
            ),
            GaugeMetricFamily(
                f"{p}_queue_bytes",
                "Octets of the messages in the queue, by state.",
                labels=["state"],
            ),
            GaugeMetricFamily(
                f"{p}_queue_oldest_seconds",
                "Age of the oldest message in the queue, by state (0 when none).",
                labels=["state"],
            ),
        )

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterable[Metric]:
        queue = self.queue
        now = self.clock.seconds()
        messages = dict.fromkeys(QUEUE_STATES, 0)
        recipients = dict.fromkeys(QUEUE_STATES, 0)
        octets = dict.fromkeys(QUEUE_STATES, 0)
        oldest: dict[str, float] = {}
        for entry in list(queue.entries.values()):
            if entry.held:
                state = "hold"
            elif queue.underWay(entry.id):
                state = "active"
            elif entry.attempts:
                state = "deferred"
            else:
                state = "incoming"
            messages[state] += 1
            recipients[state] += len(entry.pending)
            octets[state] += entry.size
            if entry.arrival < oldest.get(state, now):
                oldest[state] = entry.arrival
        families = self._families()
        for state in QUEUE_STATES:
            families[0].add_metric([state], messages[state])
            families[1].add_metric([state], recipients[state])
            families[2].add_metric([state], octets[state])
            families[3].add_metric([state], max(0.0, now - oldest.get(state, now)))
        return families
