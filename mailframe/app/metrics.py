"""
Prometheus metrics: L{Metrics} counts mailframe's decision events
(L{mailframe.events}) as a twisted.logger observer, so that what is logged
is what is counted, and reads what only exists at a moment (the queue, by
state) when it is scraped.  It also times the plug-ins of server factories
(L{mailframe.server.chains.PluginTimer}).  C{--metrics ENDPOINT} serves it
(L{mailframe.app._metricsweb}); embedding code calls L{metricsFor}.

Every metric is in a private C{CollectorRegistry} (never prometheus-client's
global one), so two servers in one process, or two tests, count apart.
Label values are bounded: listener names, stages, verbs, reply codes,
plug-in names, TLS versions, AUTH mechanisms and destination kinds, never
an address; a label that sees more than L{MAX_VALUES} values counts the
rest as C{other}.  Everything runs in the reactor thread, and an event
costs a few dict updates (L{mailframe.app._metricsfamilies}); no thread
serves a scrape.

Owns: the names, help and labels of the metrics (docs/metrics.rst lists
them), and turning events into samples.  Must not: change an event, block,
or raise into the logging system.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeGuard

from prometheus_client import CollectorRegistry, Info
from twisted.application.service import MultiService
from twisted.logger import ILogObserver, LogPublisher, globalLogPublisher
from zope.interface import implementer

from mailframe import events as E
from mailframe._eventlog import counting
from mailframe.app._metricsfamilies import (
    QUEUE_STATES,
    Counter,
    Families,
    Gauge,
    Histogram,
    QueueCollector,
    QueueSource,
)
from mailframe.app._metricsweb import MetricsResource, metricsService
from mailframe.plugins import SettingError

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from mailframe.server import SMTPServerFactory

__all__ = [
    "MAX_VALUES",
    "QUEUE_STATES",
    "Metrics",
    "MetricsService",
    "QueueCollector",
    "metricsEndpoint",
    "metricsFor",
    "metricsResource",
]

#: The most values one label of one metric takes; further ones count as C{other}.
MAX_VALUES = 64

OTHER = "other"

#: The buckets of the plug-in latency histogram (seconds).
PLUGIN_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                  1.0, 2.5, 5.0, 10.0, 30.0)  # fmt: skip
#: Of a delivery attempt's transfer (seconds).
TRANSFER_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                    60.0, 120.0, 300.0, 600.0)  # fmt: skip
#: Of the time from arrival to delivery (seconds: up to five days).
DELAY_BUCKETS = (0.1, 1.0, 10.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 86400.0,
                 2 * 86400.0, 5 * 86400.0)  # fmt: skip
#: Of a session, connect to disconnect (seconds).
SESSION_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0, 1800.0)

#: Mail ports a metrics endpoint may not use.
MAIL_PORTS = frozenset({25, 465, 587})

_PREFIX = "mailframe"

_DATA = ("data", "bdat")


def metricsEndpoint(value: object) -> str:
    """
    The C{metrics} setting: a Twisted server endpoint string (parsed; nothing
    listens), not on a mail port.  @raise SettingError: one line.
    """
    from mailframe.app.endpoints import checkServerEndpoint, tcpListenAddress
    from mailframe.plugins import oneLine

    if not isinstance(value, str) or not value.strip():
        raise SettingError(f"expected a server endpoint string, not {value!r}")
    description = value.strip()
    try:
        checkServerEndpoint(description)
    except Exception as e:
        raise SettingError(f"bad endpoint {description!r}: {oneLine(e)}") from None
    try:
        port = tcpListenAddress(description).port
    except Exception:
        port = None  # unix:, systemd: ...
    if port in MAIL_PORTS:
        raise SettingError(
            f"{description!r} is a mail port ({port}): give the metrics a port of their own "
            "(tcp:9025:interface=127.0.0.1, say)"
        )
    return description


class _Labels(dict[object, str]):
    """
    What an event's value is as a label: itself (a string), a plug-in's
    class name, a number's digits; at most L{MAX_VALUES} different labels,
    then C{other}.  A hit is one dict lookup: C{labels[value]}.
    """

    def __init__(self) -> None:
        super().__init__()
        self.labels: set[str] = set()

    def label(self, text: str) -> str:
        """The label of C{text}, a new one if there is room."""
        labels = self.labels
        if text in labels:
            return text
        if len(labels) >= MAX_VALUES or not text or len(text) > 64 or not text.isprintable():
            return OTHER
        labels.add(text)
        return text

    def __missing__(self, value: object) -> str:
        label = self.label(value if isinstance(value, str) else _name(value))
        if len(self) > 4 * MAX_VALUES:  # values that all became "other"
            self.clear()
        self[value] = label
        return label


class _Verbs(_Labels):
    """Command verbs (and stages) as labels: lower case; C{other} for anything odd."""

    def __missing__(self, value: object) -> str:
        text = str(value).lower()
        if not text.isascii() or not text.replace("-", "").replace("_", "").isalnum():
            label = OTHER
        else:
            label = self.label(text)
        if len(self) > 4 * MAX_VALUES:
            self.clear()
        self[value] = label
        return label


class _Replies(dict[object, "tuple[str, str] | None"]):
    """The disconnect event's C{"verb:class"} keys as (verb label, class), or None."""

    def __init__(self, verbs: _Verbs) -> None:
        super().__init__()
        self.verbs = verbs

    def __missing__(self, value: object) -> tuple[str, str] | None:
        verb, _, kind = str(value).rpartition(":")
        split = (self.verbs[verb], kind) if kind in ("2", "3", "4", "5") else None
        if len(self) > 4 * MAX_VALUES:
            self.clear()
        self[value] = split
        return split


def _name(value: object) -> str:
    """A label value for a thing that is not a string: a plug-in's class name, a number."""
    if value is None:
        return "none"
    if isinstance(value, bool | int):
        return str(int(value))
    return type(value).__name__


def _number(value: object) -> float | None:
    """A count or a time of an event: a number that is not negative (not a bool), or None."""
    kind = type(value)
    if kind is float or kind is int:
        return value if value >= 0 else None  # type: ignore[operator,return-value]
    return None


def _isMapping(value: object) -> TypeGuard[Mapping[Any, Any]]:
    return type(value) is dict or isinstance(value, Mapping)


@implementer(ILogObserver)
class Metrics:
    """
    The metrics of one mailframe process (or of the servers given to it):
    a twisted.logger observer of the decision events, a plug-in timer, and
    the C{registry} to expose.  L{start} adds it to a log publisher (by
    default the global one) and L{stop} removes it; calling it with an event
    counts the event.

    @param registry: where the metrics go; a new private one by default.
    @param process: also export prometheus-client's process and platform
        collectors (C{process_*}, C{python_info}).
    """

    def __init__(self, registry: CollectorRegistry | None = None, process: bool = True) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._publisher: LogPublisher | None = None
        self._listeners: dict[str, str] = {}  # open session -> listener
        self._labels: dict[str, _Labels] = {}
        self._listenerNames = _Labels()
        self._verbs = _Verbs()
        self._replyKeys = _Replies(self._verbs)
        self._codes = _Labels()
        r, p = self.registry, _PREFIX
        if process:
            from prometheus_client import PlatformCollector, ProcessCollector

            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
        from mailframe import __version__

        Info(f"{p}_build", "mailframe's version.", registry=r).info({"version": __version__})
        families = Families()

        def counter(name: str, help: str, *labels: str) -> Counter:
            family = Counter(f"{p}_{name}", help, labels)
            families.add(family)
            return family

        def histogram(name: str, help: str, bounds: Sequence[float], *labels: str) -> Histogram:
            family = Histogram(f"{p}_{name}", help, labels, bounds)
            families.add(family)
            return family

        # sessions
        self.connections = counter("connections", "Sessions begun, by listener.", "listener")
        self.open = Gauge(f"{p}_connections_open", "Sessions open now, by listener.", ["listener"])
        families.add(self.open)
        self.connectionsRefused = counter(
            "connections_refused",
            "Sessions refused at connect (421 or 554), by listener, the plug-in that "
            "refused and the reply code.",
            *("listener", "decider", "code"),
        )
        self.sessionSeconds = histogram(
            "session_seconds",
            "How long sessions lasted, by listener.",
            SESSION_BUCKETS,
            "listener",
        )
        self.commands = counter(
            "commands",
            "Commands received, by listener and verb (counted when the session ends).",
            *("listener", "command"),
        )
        self.replies = counter(
            "replies",
            "Replies sent, by listener, stage (the command answered) and code class "
            "(2, 3, 4, 5; counted when the session ends).",
            *("listener", "stage", "class"),
        )
        self.refusals = counter(
            "refusals",
            "Refusals (4xx, 5xx) at any stage, by listener, stage, reply code and the "
            "plug-in that decided (mailframe for the server's own rules).",
            *("listener", "stage", "code", "decider"),
        )
        self.messagesAccepted = counter(
            "messages_accepted", "Messages accepted, by listener.", "listener"
        )
        self.messagesRefused = counter(
            "messages_refused",
            "Messages refused after their data, by listener and reply code.",
            *("listener", "code"),
        )
        self.recipientsAccepted = counter(
            "recipients_accepted", "Recipients of accepted messages, by listener.", "listener"
        )
        self.recipientsRefused = counter(
            "recipients_refused",
            "Recipients refused at RCPT (LMTP: also after the data), by listener and code.",
            *("listener", "code"),
        )
        self.messageBytes = counter(
            "message_bytes", "Octets of accepted messages, by listener.", "listener"
        )
        self.receivedBytes = counter(
            "received_bytes",
            "Octets of message data received, accepted or not, by listener (counted when "
            "the session ends).",
            "listener",
        )
        self.tls = counter(
            "tls_handshakes",
            "TLS handshakes completed, by listener and TLS version.",
            *("listener", "version"),
        )
        self.auth = counter(
            "auth",
            "AUTH attempts, by listener, mechanism and result (success or failure).",
            *("listener", "mechanism", "result"),
        )
        self.pluginSeconds = histogram(
            "plugin_seconds",
            "How long plug-ins took to answer, by stage and plug-in (its class name).",
            PLUGIN_BUCKETS,
            *("stage", "plugin"),
        )
        # the queue
        self.queueEvents = counter(
            "queue_events", "Messages queued, held, released and deleted.", "event"
        )
        self.deliveries = counter(
            "deliveries",
            "Outcomes of delivery attempts, one per recipient, by destination kind (relay, "
            "local ...) and outcome (sent, deferred, bounced, expired).",
            *("kind", "outcome"),
        )
        self.transferSeconds = histogram(
            "delivery_transfer_seconds",
            "How long successful delivery attempts took (relay latency), by destination kind.",
            TRANSFER_BUCKETS,
            "kind",
        )
        self.delaySeconds = histogram(
            "delivery_delay_seconds",
            "Time from arrival in the queue to delivery, by destination kind.",
            DELAY_BUCKETS,
            "kind",
        )
        self.outboundTLS = counter(
            "outbound_tls",
            "Decisions of the outbound TLS policies (DANE, MTA-STS, REQUIRETLS), by mechanism, "
            "decision (required, skipped, testing, failed) and RFC 8460 result type.",
            *("mechanism", "decision", "result"),
        )
        self.observerErrors = counter(
            "metrics_errors", "Events the metrics could not count (a bug: please report it)."
        )
        r.register(families)
        self._handlers: dict[str, Callable[[Mapping[str, Any]], None]] = {
            E.CONNECT: self._connect,
            E.TLS: self._tls,
            E.AUTH: self._auth,
            E.REFUSED: self._refused,
            E.ACCEPTED: self._accepted,
            E.DISCONNECT: self._disconnect,
            E.QUEUE_QUEUED: self._queueEvent,
            E.QUEUE_HELD: self._queueEvent,
            E.QUEUE_RELEASED: self._queueEvent,
            E.QUEUE_DELETED: self._queueEvent,
            E.QUEUE_SENT: self._delivery,
            E.QUEUE_DEFERRED: self._delivery,
            E.QUEUE_BOUNCED: self._delivery,
            E.QUEUE_EXPIRED: self._delivery,
            E.OUTBOUND_TLS: self._outboundTLS,
        }

    # -- what embedding code calls ----------------------------------------------------

    def start(self, publisher: LogPublisher | None = None) -> None:
        """Count the events of C{publisher} (the global one by default) from now on."""
        if self._publisher is None:
            self._publisher = publisher if publisher is not None else globalLogPublisher
            self._publisher.addObserver(self)
            counting.append(self)  # and those of listeners whose lines are off (--quiet)

    def stop(self) -> None:
        """Stop counting events (what was counted stays)."""
        if self._publisher is not None:
            self._publisher.removeObserver(self)
            self._publisher = None
            if self in counting:
                counting.remove(self)

    def timePlugins(self, factory: SMTPServerFactory) -> None:
        """Time the plug-ins of C{factory}'s chains (and of its future reloads)."""
        factory.context.setPluginTimer(self.timePlugin)

    def watchQueue(self, queue: QueueSource, clock: IReactorTime) -> QueueCollector:
        """Export C{queue}'s size and oldest age by state, read at each scrape."""
        collector = QueueCollector(queue, clock, _PREFIX)
        self.registry.register(collector)
        return collector

    # -- the plug-in timer ------------------------------------------------------------

    def timePlugin(self, stage: str, provider: object) -> Callable[[float], None]:
        """A L{mailframe.server.chains.PluginTimer}: the recorder of C{provider}'s answers."""
        key = (self._label("plugin.stage", stage), self._label("plugin", type(provider).__name__))
        return self.pluginSeconds.recorder(key)

    # -- the observer -----------------------------------------------------------------

    def __call__(self, event: Mapping[str, Any]) -> None:
        name = event.get(E.KEY)
        if name is None:
            return
        handler = self._handlers.get(name)
        if handler is None:
            return
        try:
            handler(event)
        except Exception:
            self.observerErrors.inc(())

    def _label(self, where: str, value: object) -> str:
        labels = self._labels.get(where)
        if labels is None:
            labels = self._labels[where] = _Labels()
        return labels[value]

    def _listener(self, event: Mapping[str, Any]) -> str:
        listener = event.get("listener")
        if listener is None:
            listener = self._listeners.get(event.get("sessionID"), "unknown")  # type: ignore[arg-type]
        return self._listenerNames[listener]

    def _code(self, event: Mapping[str, Any]) -> str:
        code = event.get("code")
        if type(code) is int and 200 <= code <= 599:
            return self._codes[code]
        return "unknown"

    def _connect(self, event: Mapping[str, Any]) -> None:
        listener = self._listenerNames[event.get("listener") or "unknown"]
        key = (listener,)
        session = event.get("sessionID")
        if session is not None:
            if session in self._listeners:  # the same session again (XCLIENT starts it over)
                return
            if len(self._listeners) > 1 << 16:  # disconnects lost: forget the oldest
                for old in list(self._listeners)[: 1 << 12]:
                    del self._listeners[old]
            self._listeners[session] = listener
            self.open.inc(key)
        self.connections.inc(key)

    def _disconnect(self, event: Mapping[str, Any]) -> None:
        known = self._listeners.pop(event.get("sessionID"), None)  # type: ignore[arg-type]
        listener = self._listener(event) if known is None else known
        if known is not None:
            self.open.inc((listener,), -1)
        duration = _number(event.get("duration"))
        if duration is not None:
            self.sessionSeconds.observe((listener,), duration)
        commands = event.get("commands")
        if _isMapping(commands):
            values, verbs = self.commands.values, self._verbs
            for verb, count in commands.items():
                if type(count) is int and count > 0:
                    key = (listener, verbs[verb])
                    values[key] = values.get(key, 0.0) + count
        replies = event.get("replies")
        if _isMapping(replies):
            values, keys = self.replies.values, self._replyKeys
            for raw, count in replies.items():
                split = keys[raw]
                if split is not None and type(count) is int and count > 0:
                    reply = (listener, *split)
                    values[reply] = values.get(reply, 0.0) + count
        octets = _number(event.get("bytesIn"))
        if octets:
            self.receivedBytes.inc((listener,), octets)

    def _refused(self, event: Mapping[str, Any]) -> None:
        listener = self._listener(event)
        stage = self._verbs[event.get("stage") or "unknown"]
        code = self._code(event)
        decider = self._label("decider", event.get("decider") or "mailframe")
        self.refusals.inc((listener, stage, code, decider))
        if stage == "connect":
            self.connectionsRefused.inc((listener, decider, code))
        elif stage == "rcpt" or (stage in _DATA and event.get("recipient") is not None):
            self.recipientsRefused.inc((listener, code))  # LMTP: one after the data
        elif stage in _DATA:
            self.messagesRefused.inc((listener, code))

    def _accepted(self, event: Mapping[str, Any]) -> None:
        key = (self._listener(event),)
        self.messagesAccepted.inc(key)
        recipients = event.get("recipients")
        if type(recipients) is list or type(recipients) is tuple:
            self.recipientsAccepted.inc(key, len(recipients))
        size = _number(event.get("size"))
        if size:
            self.messageBytes.inc(key, size)

    def _tls(self, event: Mapping[str, Any]) -> None:
        version = self._label("tls", event.get("tlsVersion") or "unknown")
        self.tls.inc((self._listener(event), version))

    def _auth(self, event: Mapping[str, Any]) -> None:
        mechanism = self._label("mechanism", str(event.get("mechanism") or "unknown").upper())
        result = "success" if event.get("success") else "failure"
        self.auth.inc((self._listener(event), mechanism, result))

    def _queueEvent(self, event: Mapping[str, Any]) -> None:
        self.queueEvents.inc((str(event[E.KEY]).partition(".")[2],))

    def _outboundTLS(self, event: Mapping[str, Any]) -> None:
        self.outboundTLS.inc(
            (
                self._label("tls.mechanism", event.get("mechanism")),
                self._label("tls.decision", event.get("decision")),
                self._label("tls.result", event.get("result") or "none"),
            )
        )

    def _delivery(self, event: Mapping[str, Any]) -> None:
        name = event[E.KEY]
        outcome = str(name).partition(".")[2]
        kind = event.get("kind")
        if not kind:  # older events: the relay field says "local" for the local backend
            relay = event.get("relay")
            kind = "local" if relay == "local" else "relay" if relay else "unknown"
        key = (self._label("kind", kind),)
        self.deliveries.inc((key[0], outcome))
        if name != E.QUEUE_SENT:
            return
        delays = event.get("delays")
        transfer = _number(delays.get("transfer")) if _isMapping(delays) else None
        if transfer is not None:
            self.transferSeconds.observe(key, transfer)
        delay = _number(event.get("delay"))
        if delay is not None:
            self.delaySeconds.observe(key, delay)


def metricsFor(
    factories: Iterable[SMTPServerFactory] = (),
    queue: QueueSource | None = None,
    clock: IReactorTime | None = None,
    publisher: LogPublisher | None = None,
    registry: CollectorRegistry | None = None,
) -> Metrics:
    """
    Metrics for embedding code, counting from now on: the decision events
    of C{publisher} (the global one by default), the plug-in latency of
    C{factories}, and the state of C{queue} (a
    L{mailframe.queue.runner.QueueRunner}, read with C{clock}, by default
    the reactor) at each scrape.  Serve C{metricsResource(metrics)} (a
    twisted.web resource) wherever you like; call C{metrics.stop()} when done.
    """
    metrics = Metrics(registry)
    for factory in factories:
        metrics.timePlugins(factory)
    if queue is not None:
        if clock is None:
            from twisted.internet import reactor

            clock = reactor
        assert clock is not None
        metrics.watchQueue(queue, clock)
    metrics.start(publisher)
    return metrics


def metricsResource(metrics: Metrics) -> MetricsResource:
    """
    The twisted.web resource that renders C{metrics} at each GET: put it
    at C{/metrics} of your Site (C{root.putChild(b"metrics", ...)}).
    """
    return MetricsResource(metrics.registry)


class MetricsService(MultiService):
    """
    Serves C{metrics} at C{/metrics} on the server endpoint C{description}
    (with C{worker}, an index under C{--workers}: its port plus the index),
    counting the global log publisher's events while it runs.
    """

    def __init__(
        self, reactor: Any, description: str, metrics: Metrics, worker: int | None = None
    ) -> None:
        super().__init__()
        self.metrics = metrics
        metricsService(reactor, description, metrics.registry, worker).setServiceParent(self)

    def startService(self) -> None:
        self.metrics.start()
        super().startService()

    def stopService(self) -> Any:
        self.metrics.stop()
        return super().stopService()
