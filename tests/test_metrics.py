"""
Tests for L{mailframe.app.metrics} and L{mailframe.app._metricsweb}: the
plug-in timer of L{mailframe.server.chains.Chain}, the decision events
counted (synthetic ones, and those of real sessions in memory), the queue
read at scrape time, label values kept bounded, the /metrics resource (text
and OpenMetrics, gzip) in memory and over loopback, each scrape parsed with
prometheus-client's own parser, and C{--metrics} in twistd's options.
"""

from __future__ import annotations

import gzip
from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openMetricsFamilies,
)
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, task
from twisted.logger import ILogObserver, LogPublisher
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.test.requesthelper import DummyRequest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from mailframe import events as E
from mailframe.app import tap
from mailframe.app._metricsweb import MetricsResource, metricsSite, workerEndpoint
from mailframe.app.metrics import (
    MAX_VALUES,
    Metrics,
    MetricsService,
    QueueCollector,
    metricsEndpoint,
    metricsFor,
    metricsResource,
)
from mailframe.backends.memory import MemoryBackend
from mailframe.config import ServerConfig
from mailframe.interfaces import IRecipientValidator
from mailframe.plugins import SettingError
from mailframe.queue.entry import QueueEntry, RecipientState
from mailframe.reply import Reply, SMTPError
from mailframe.server import SMTPServerFactory
from mailframe.server.chains import Chain
from tests.test_queue import LATER, QueueCase, envelope


def samples(registry: CollectorRegistry) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of C{registry}, scraped and parsed back with prometheus-client's parser."""
    text = generate_latest(registry).decode("utf-8")
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """One sample's value as a scrape shows it (0 when absent)."""
    return samples(registry).get((name, frozenset(labels.items())), 0.0)


def event(name: str, **fields: Any) -> dict[str, Any]:
    return {E.KEY: name, "log_format": "", **fields}


# -- the plug-in timer ----------------------------------------------------------------


class Plug:
    def __init__(self, answer: Any = None, clock: task.Clock | None = None) -> None:
        self.answer = answer
        self.clock = clock

    def check(self, *args: Any) -> Any:
        if isinstance(self.answer, BaseException):
            raise self.answer
        if self.clock is not None:
            d: defer.Deferred[Any] = defer.Deferred()
            self.clock.callLater(1, d.callback, self.answer)
            return d
        return self.answer


@implementer(IRecipientValidator)
class Validator:
    def validateRecipient(self, *args: Any) -> Any:
        return True


class Verdict:
    decider: Any = None


class Timings:
    def __init__(self) -> None:
        self.seen: list[tuple[str, object, float]] = []

    def __call__(self, stage: str, provider: object) -> Any:
        return lambda seconds: self.seen.append((stage, provider, seconds))


class ChainTimerTests(SynchronousTestCase):
    def test_noTimerNoWrapper(self) -> None:
        """Without a timer the chain calls the plug-ins' own bound methods: nothing added."""
        plug = Plug()
        chain = Chain("mail", [plug], "check")
        self.assertEqual(chain.calls, (plug.check,))
        chain.setTimer(Timings())
        self.assertNotEqual(chain.calls, (plug.check,))
        chain.setTimer(None)
        self.assertEqual(chain.calls, (plug.check,))

    def test_synchronous(self) -> None:
        """Each plug-in that answers at once is timed once, with the chain's stage."""
        first, second = Plug(), Plug()
        timings = Timings()
        chain = Chain("mail", [first, second], "check")
        chain.setTimer(timings)
        self.assertIsNone(chain.run(Verdict(), "x"))
        self.assertEqual([(s, p) for s, p, _ in timings.seen], [("mail", first), ("mail", second)])
        self.assertTrue(all(seconds >= 0 for _, _, seconds in timings.seen))

    def test_refusalTimed(self) -> None:
        """A plug-in that raises SMTPError is timed, and still refuses."""
        no = Reply(550, (5, 7, 1), "No")
        plug = Plug(SMTPError(no))
        timings = Timings()
        chain = Chain("rcpt", [plug], "check", firstDecides=True)
        chain.setTimer(timings)
        verdict = Verdict()
        self.assertEqual(chain.run(verdict, "x"), no)
        self.assertIs(verdict.decider, plug)
        self.assertEqual(len(timings.seen), 1)

    def test_deferredTimedWhenItFires(self) -> None:
        """A Deferred answer is timed from the call until it fires."""
        clock = task.Clock()
        plug = Plug(None, clock)
        timings = Timings()
        chain = Chain("data", [plug], "check")
        chain.setTimer(timings)
        d = chain.run(Verdict(), "x")
        self.assertIsInstance(d, defer.Deferred)
        self.assertEqual(timings.seen, [])
        clock.advance(1)
        self.assertEqual(len(timings.seen), 1)
        self.assertIsNone(self.successResultOf(d))  # type: ignore[arg-type]

    def test_contextAndReload(self) -> None:
        """ServerContext.setPluginTimer times every chain, and a reload keeps the timer."""
        config = ServerConfig(hostname="mx.test")
        factory = SMTPServerFactory(config, MemoryBackend(), [Validator()])
        timings = Timings()
        factory.context.setPluginTimer(timings)
        self.assertTrue(all(c.timer is timings for c in factory.context.chains))
        fresh = SMTPServerFactory(config, MemoryBackend())
        factory.reconfigure(fresh)
        self.assertIs(factory.context.recipientChain.timer, timings)


# -- the events counted ---------------------------------------------------------------


class ObserverTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.metrics = Metrics(process=False)
        self.registry = self.metrics.registry

    def value(self, name: str, **labels: str) -> float:
        return value(self.registry, name, **labels)

    def test_interface(self) -> None:
        """Metrics is a twisted.logger observer."""
        verifyObject(ILogObserver, self.metrics)

    def test_ignoresOtherEvents(self) -> None:
        """Events without mfEvent, or with an unknown name, change nothing."""
        before = samples(self.registry)
        self.metrics({"log_format": "hello"})
        self.metrics(event("no.such.event"))
        self.assertEqual(samples(self.registry).keys(), before.keys())

    def test_session(self) -> None:
        """connect and disconnect: total, open gauge, commands, replies by stage, bytes, time."""
        m = self.metrics
        m(event(E.CONNECT, sessionID="S1", listener="smtp", clientAddress="192.0.2.1"))
        m(event(E.CONNECT, sessionID="S2", listener="submission"))
        m(event(E.CONNECT, sessionID="S1", listener="smtp"))  # again: not a new session
        self.assertEqual(self.value("mailframe_connections_total", listener="smtp"), 1)
        self.assertEqual(self.value("mailframe_connections_open", listener="smtp"), 1)
        m(
            event(
                E.DISCONNECT,
                sessionID="S1",
                duration=1.5,
                commands={"ehlo": 1, "mail": 1, "rcpt": 2, "data": 1, "quit": 1},
                failed={"rcpt": 1},
                replies={"connect:2": 1, "ehlo:2": 1, "rcpt:2": 1, "rcpt:5": 1, "data:3": 1},
                bytesIn=1234,
            )
        )
        self.assertEqual(self.value("mailframe_connections_open", listener="smtp"), 0)
        self.assertEqual(self.value("mailframe_connections_open", listener="submission"), 1)
        self.assertEqual(
            self.value("mailframe_commands_total", listener="smtp", command="rcpt"), 2
        )
        self.assertEqual(
            self.value("mailframe_replies_total", listener="smtp", stage="rcpt", **{"class": "5"}),
            1,
        )
        self.assertEqual(self.value("mailframe_received_bytes_total", listener="smtp"), 1234)
        self.assertEqual(self.value("mailframe_session_seconds_sum", listener="smtp"), 1.5)
        self.assertEqual(self.value("mailframe_session_seconds_count", listener="smtp"), 1)

    def test_refusals(self) -> None:
        """Refusals by stage, code and decider; the connect, rcpt and data ones counted apart."""
        m = self.metrics
        m(event(E.CONNECT, sessionID="S1", listener="smtp"))
        m(event(E.REFUSED, sessionID="S1", stage="connect", code=421, decider="limits"))
        m(event(E.REFUSED, sessionID="S1", stage="rcpt", code=550, decider=None))
        m(event(E.REFUSED, sessionID="S1", stage="data", code=554, decider="rspamd"))
        m(event(E.REFUSED, sessionID="S1", stage="data", code=452, recipient="a@x.test"))
        self.assertEqual(
            self.value(
                "mailframe_connections_refused_total",
                listener="smtp",
                decider="limits",
                code="421",
            ),
            1,
        )
        self.assertEqual(
            self.value("mailframe_recipients_refused_total", listener="smtp", code="550"), 1
        )
        self.assertEqual(
            self.value("mailframe_messages_refused_total", listener="smtp", code="554"), 1
        )
        self.assertEqual(  # LMTP's refusal of one recipient after the data
            self.value("mailframe_recipients_refused_total", listener="smtp", code="452"), 1
        )
        self.assertEqual(
            self.value("mailframe_messages_refused_total", listener="smtp", code="452"), 0
        )
        self.assertEqual(
            self.value(
                "mailframe_refusals_total",
                listener="smtp",
                stage="rcpt",
                code="550",
                decider="mailframe",
            ),
            1,
        )

    def test_accepted(self) -> None:
        """An accepted message counts once, its recipients and its octets."""
        self.metrics(
            event(E.ACCEPTED, listener="lmtp", recipients=["a@x.test", "b@x.test"], size=500)
        )
        self.assertEqual(self.value("mailframe_messages_accepted_total", listener="lmtp"), 1)
        self.assertEqual(self.value("mailframe_recipients_accepted_total", listener="lmtp"), 2)
        self.assertEqual(self.value("mailframe_message_bytes_total", listener="lmtp"), 500)

    def test_tlsAndAuth(self) -> None:
        """TLS handshakes by version; AUTH by mechanism and result."""
        m = self.metrics
        m(event(E.CONNECT, sessionID="S1", listener="submission"))
        m(event(E.TLS, sessionID="S1", tlsVersion="TLSv1.3", cipher="TLS_AES_256_GCM_SHA384"))
        m(event(E.AUTH, sessionID="S1", mechanism="plain", user="alice", success=True))
        m(event(E.AUTH, sessionID="S1", mechanism="LOGIN", user="bob", success=False, code=535))
        self.assertEqual(
            self.value("mailframe_tls_handshakes_total", listener="submission", version="TLSv1.3"),
            1,
        )
        auth = "mailframe_auth_total"
        self.assertEqual(
            self.value(auth, listener="submission", mechanism="PLAIN", result="success"), 1
        )
        self.assertEqual(
            self.value(auth, listener="submission", mechanism="LOGIN", result="failure"), 1
        )

    def test_queueEvents(self) -> None:
        """Deliveries by kind and outcome, transfer and delay times of sent ones, operations."""
        m = self.metrics
        m(event(E.QUEUE_QUEUED, queueID="Q1", recipients=["a@x.test"], size=10))
        m(event(E.QUEUE_DEFERRED, queueID="Q1", kind="relay", code=451, attempts=1))
        m(
            event(
                E.QUEUE_SENT,
                queueID="Q1",
                kind="relay",
                delay=310.0,
                delays={"queued": 309.5, "transfer": 0.5},
                dsn="2.0.0",
            )
        )
        m(event(E.QUEUE_BOUNCED, queueID="Q2", kind="local", code=550))
        m(event(E.QUEUE_EXPIRED, queueID="Q3"))
        m(event(E.QUEUE_DEFERRED, queueID="Q5", relay="local", code=451))
        m(event(E.QUEUE_DEFERRED, queueID="Q6", relay="mx.example.net", code=421))
        m(event(E.QUEUE_HELD, queueID="Q4", reason="quarantine"))
        d = "mailframe_deliveries_total"
        self.assertEqual(self.value(d, kind="relay", outcome="deferred"), 2)
        self.assertEqual(self.value(d, kind="local", outcome="deferred"), 1)
        self.assertEqual(self.value(d, kind="relay", outcome="sent"), 1)
        self.assertEqual(self.value(d, kind="local", outcome="bounced"), 1)
        self.assertEqual(self.value(d, kind="unknown", outcome="expired"), 1)
        self.assertEqual(self.value("mailframe_delivery_transfer_seconds_sum", kind="relay"), 0.5)
        self.assertEqual(
            self.value("mailframe_delivery_transfer_seconds_bucket", kind="relay", le="0.5"), 1
        )
        self.assertEqual(self.value("mailframe_delivery_delay_seconds_sum", kind="relay"), 310)
        self.assertEqual(self.value("mailframe_queue_events_total", event="queued"), 1)
        self.assertEqual(self.value("mailframe_queue_events_total", event="held"), 1)

    def test_outboundTLS(self) -> None:
        """The outbound TLS policies' decisions, by mechanism, decision and result type."""
        m = self.metrics
        m(event(E.OUTBOUND_TLS, queueID="Q1", mechanism="DANE", decision="required"))
        m(event(E.OUTBOUND_TLS, queueID="Q1", mechanism="DANE", decision="failed",
                result="validation-failure"))  # fmt: skip
        m(event(E.OUTBOUND_TLS, queueID="Q2", mechanism="MTA-STS", decision="skipped",
                result="certificate-host-mismatch"))  # fmt: skip
        o = "mailframe_outbound_tls_total"
        self.assertEqual(self.value(o, mechanism="DANE", decision="required", result="none"), 1)
        self.assertEqual(
            self.value(o, mechanism="DANE", decision="failed", result="validation-failure"), 1
        )
        self.assertEqual(
            self.value(
                o, mechanism="MTA-STS", decision="skipped", result="certificate-host-mismatch"
            ),
            1,
        )

    def test_boundedLabels(self) -> None:
        """A label never takes more than MAX_VALUES values; odd verbs are 'other'."""
        m = self.metrics
        for i in range(MAX_VALUES + 10):
            m(event(E.REFUSED, listener="smtp", stage="rcpt", code=550, decider=f"plugin{i}"))
        deciders = {
            dict(labels)["decider"]
            for name, labels in samples(self.registry)
            if name == "mailframe_refusals_total"
        }
        self.assertEqual(len(deciders), MAX_VALUES + 1)
        self.assertIn("other", deciders)
        m(event(E.DISCONNECT, listener="smtp", commands={"x y\x00": 1, "\u00e9hlo": 2}))
        self.assertEqual(
            self.value("mailframe_commands_total", listener="smtp", command="other"), 3
        )

    def test_badEventCountedNotRaised(self) -> None:
        """An event with fields of the wrong types never raises into the log system."""
        self.metrics(event(E.DISCONNECT, sessionID=["unhashable"], commands={"rcpt": "two"}))
        self.metrics(event(E.QUEUE_SENT, kind="relay", delays={"transfer": "soon"}))
        self.assertEqual(self.value("mailframe_metrics_errors_total"), 1)

    def test_pluginLatency(self) -> None:
        """timePlugins puts each plug-in's answers in a histogram by stage and class name."""
        config = ServerConfig(hostname="mx.test")
        factory = SMTPServerFactory(config, MemoryBackend(), [Validator()])
        self.metrics.timePlugins(factory)
        chain = factory.context.recipientChain
        chain.run(Verdict(), "x")
        chain.run(Verdict(), "x")
        self.assertEqual(
            self.value("mailframe_plugin_seconds_count", stage="rcpt", plugin="Validator"), 2
        )

    def test_startStop(self) -> None:
        """start() counts a publisher's events until stop()."""
        publisher = LogPublisher()
        self.metrics.start(publisher)
        publisher(event(E.ACCEPTED, listener="smtp", recipients=["a@x.test"], size=1))
        self.metrics.stop()
        publisher(event(E.ACCEPTED, listener="smtp", recipients=["a@x.test"], size=1))
        self.assertEqual(self.value("mailframe_messages_accepted_total", listener="smtp"), 1)

    def test_privateRegistries(self) -> None:
        """Two Metrics count apart (no global registry)."""
        other = Metrics(process=False)
        self.metrics(event(E.ACCEPTED, listener="smtp", recipients=[], size=1))
        self.assertEqual(
            value(other.registry, "mailframe_messages_accepted_total", listener="smtp"), 0
        )


# -- the queue, read at scrape time ---------------------------------------------------


class FakeQueue:
    def __init__(self, entries: list[QueueEntry], active: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.entries: Mapping[str, QueueEntry] = {e.id: e for e in entries}
        self.active = active

    def underWay(self, entryID: str) -> bool:
        return entryID in self.active


def entry(id: str, arrival: float, attempts: int = 0, held: bool = False) -> QueueEntry:
    return QueueEntry(
        id,
        "s@x.test",
        [RecipientState("a@y.test"), RecipientState("b@y.test", state="sent")],
        arrival,
        size=100,
        attempts=attempts,
        held=held,
    )


class QueueCollectorTests(SynchronousTestCase):
    def test_states(self) -> None:
        """Messages, pending recipients, octets and the oldest age, per state."""
        clock = task.Clock()
        clock.advance(1000)
        queue = FakeQueue(
            [
                entry("A", 990),
                entry("B", 400, attempts=2),
                entry("C", 700, attempts=1),
                entry("D", 100, held=True),
                entry("E", 900, attempts=1),
            ],
            active={"E"},
        )
        metrics = Metrics(process=False)
        metrics.watchQueue(queue, clock)
        r = metrics.registry
        self.assertEqual(value(r, "mailframe_queue_messages", state="incoming"), 1)
        self.assertEqual(value(r, "mailframe_queue_messages", state="deferred"), 2)
        self.assertEqual(value(r, "mailframe_queue_messages", state="hold"), 1)
        self.assertEqual(value(r, "mailframe_queue_messages", state="active"), 1)
        self.assertEqual(value(r, "mailframe_queue_oldest_seconds", state="deferred"), 600)
        self.assertEqual(value(r, "mailframe_queue_oldest_seconds", state="hold"), 900)
        self.assertEqual(value(r, "mailframe_queue_recipients", state="deferred"), 2)
        self.assertEqual(value(r, "mailframe_queue_bytes", state="deferred"), 200)

    def test_empty(self) -> None:
        """An empty queue reports every state at 0."""
        metrics = Metrics(process=False)
        collector = metrics.watchQueue(FakeQueue([]), task.Clock())
        self.assertIsInstance(collector, QueueCollector)
        for state in ("active", "incoming", "deferred", "hold"):
            self.assertEqual(
                samples(metrics.registry)[
                    ("mailframe_queue_messages", frozenset({("state", state)}))
                ],
                0,
            )


# -- serving ----------------------------------------------------------------------------


def render(resource: MetricsResource, **headers: str) -> tuple[DummyRequest, bytes]:
    request = DummyRequest([b""])
    for name, text in headers.items():
        request.requestHeaders.setRawHeaders(name.replace("_", "-"), [text])
    body = resource.render(request)
    assert isinstance(body, bytes)
    return request, body


class ResourceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.metrics = Metrics(process=False)
        self.metrics(event(E.ACCEPTED, listener="smtp", recipients=["a@x.test"], size=42))
        self.resource = metricsResource(self.metrics)

    def test_text(self) -> None:
        """By default the Prometheus text format, which prometheus-client's parser reads."""
        request, body = render(self.resource)
        [kind] = request.responseHeaders.getRawHeaders("content-type") or []
        self.assertTrue(kind.startswith("text/plain; version=0.0.4"))
        names = {f.name for f in text_string_to_metric_families(body.decode())}
        self.assertIn("mailframe_messages_accepted", names)

    def test_openMetrics(self) -> None:
        """OpenMetrics when the Accept header asks for it (as Prometheus does)."""
        accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
        request, body = render(self.resource, accept=accept)
        [kind] = request.responseHeaders.getRawHeaders("content-type") or []
        self.assertTrue(kind.startswith("application/openmetrics-text"))
        self.assertTrue(body.endswith(b"# EOF\n"))
        families = {f.name: f for f in openMetricsFamilies(body.decode())}
        [sample] = [
            s for s in families["mailframe_messages_accepted"].samples if s.name.endswith("_total")
        ]
        self.assertEqual(sample.value, 1)

    def test_gzip(self) -> None:
        """gzip'd when the client accepts it."""
        request, body = render(self.resource, accept_encoding="gzip")
        self.assertEqual(request.responseHeaders.getRawHeaders("content-encoding"), ["gzip"])
        self.assertIn(b"mailframe_messages_accepted_total", gzip.decompress(body))

    def test_names(self) -> None:
        """name[]= restricts the scrape to those metrics."""
        request = DummyRequest([b""])
        request.args = {b"name[]": [b"mailframe_message_bytes_total"]}
        body = self.resource.render(request)
        self.assertIn(b"mailframe_message_bytes_total", body)
        self.assertNotIn(b"mailframe_messages_accepted_total", body)


class LoopbackTests(TestCase):
    """/metrics over TCP on 127.0.0.1, read with twisted.web's Agent."""

    @defer.inlineCallbacks
    def test_scrape(self) -> Any:
        """The Site serves /metrics and a pointer at /; counters move between scrapes."""
        from twisted.internet import reactor
        from twisted.web.client import Agent, readBody

        metrics = Metrics()
        tcp: Any = reactor
        port = tcp.listenTCP(0, metricsSite(metrics.registry), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        url = f"http://127.0.0.1:{port.getHost().port}".encode()
        agent = Agent(reactor)

        def scrape() -> Any:
            return agent.request(b"GET", url + b"/metrics").addCallback(readBody)

        first = yield scrape()
        metrics(event(E.ACCEPTED, listener="smtp", recipients=["a@x.test"], size=42))
        second = yield scrape()
        index = yield agent.request(b"GET", url + b"/").addCallback(readBody)
        self.assertIn(b"/metrics", index)

        def accepted(body: bytes) -> float:
            for family in text_string_to_metric_families(body.decode()):
                for s in family.samples:
                    if s.name == "mailframe_messages_accepted_total":
                        return s.value
            return 0.0

        self.assertEqual((accepted(first), accepted(second)), (0.0, 1.0))
        self.assertIn(b"process_resident_memory_bytes", second)


# -- the setting ------------------------------------------------------------------------


class SettingTests(SynchronousTestCase):
    def test_endpoint(self) -> None:
        """A server endpoint string is kept as given."""
        self.assertEqual(
            metricsEndpoint("tcp:9025:interface=127.0.0.1"), "tcp:9025:interface=127.0.0.1"
        )
        self.assertEqual(metricsEndpoint("unix:/run/m.sock"), "unix:/run/m.sock")

    def test_bad(self) -> None:
        """Bad strings and mail ports are one-line SettingErrors."""
        for bad, words in (
            ("nonsense:1", "bad endpoint"),
            ("", "expected a server endpoint"),
            ("tcp:25", "mail port"),
            ("tcp:587:interface=127.0.0.1", "mail port"),
        ):
            e = self.assertRaises(SettingError, metricsEndpoint, bad)
            self.assertIn(words, str(e))
            self.assertNotIn("\n", str(e))

    def test_options(self) -> None:
        """--metrics is parsed into Options.metrics; a bad one is a one-line usage error."""
        options = tap.Options()
        options.parseOptions(["--metrics", "tcp:19025:interface=127.0.0.1"])
        self.assertEqual(options.metrics, "tcp:19025:interface=127.0.0.1")
        e = self.assertRaises(
            usage.UsageError, tap.Options().parseOptions, ["--metrics", "tcp:25"]
        )
        self.assertIn("--metrics", str(e))

    def test_workers(self) -> None:
        """With workers the metrics need a tcp: endpoint with a fixed port; worker K uses port+K."""
        e = self.assertRaises(
            usage.UsageError,
            tap.Options().parseOptions,
            ["--workers", "2", "--metrics", "unix:/tmp/m.sock", "--listen", "tcp:2526"],
        )
        self.assertIn("metrics with workers", str(e))
        endpoint = workerEndpoint(None, "tcp:9100:interface=127.0.0.1", 3)
        self.assertEqual(endpoint._port, 9103)

    def test_quietCounted(self) -> None:
        """--quiet turns the lines off, not the counting: no warning at start."""
        options = tap.Options()
        options.parseOptions(
            ["--metrics", "tcp:0:interface=127.0.0.1", "--deliver", "memory", "--quiet"]
        )
        self.assertEqual([w for w in tap.makeService(options).warnings if "metrics" in w], [])

    def test_reloadNeedsRestart(self) -> None:
        """A reload that changes the metrics endpoint is refused: it needs a restart."""
        from mailframe.app.reload import restartNeeded

        def parse(*args: str) -> tap.Options:
            options = tap.Options()
            options.parseOptions(list(args))
            return options

        old = parse("--metrics", "tcp:19025:interface=127.0.0.1")
        self.assertIsNone(restartNeeded(old, parse("--metrics", "tcp:19025:interface=127.0.0.1")))
        problem = restartNeeded(old, parse())
        self.assertEqual(problem, "metrics changed (tcp:19025:interface=127.0.0.1 -> none)")

    def test_makeService(self) -> None:
        """makeService adds a MetricsService (a listening endpoint) that times every listener."""
        options = tap.Options()
        options.parseOptions(
            ["--metrics", "tcp:0:interface=127.0.0.1", "--deliver", "memory", "--limits", "off"]
        )
        service = tap.makeService(options)
        [child] = [c for c in service if isinstance(c, MetricsService)]
        self.assertIn(child, service.endpoints)
        [factory] = service.factories
        self.assertIsNotNone(factory.context.pluginTimer)


class ServiceTests(SynchronousTestCase):
    def test_portInUse(self) -> None:
        """A metrics port in use stops the start with one line, like a mail port."""
        import socket

        busy = socket.socket()
        self.addCleanup(busy.close)
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        options = tap.Options()
        options.parseOptions(
            ["--listen", "tcp:0:interface=127.0.0.1", "--deliver", "memory", "--limits", "off",
             "--metrics", f"tcp:{port}:interface=127.0.0.1"]
        )  # fmt: skip
        service = tap.makeService(options)
        self.addCleanup(service.stopService)
        e = self.assertRaises(SystemExit, service.privilegedStartService)
        self.assertEqual(
            str(e), f"mailframe: cannot listen on tcp:{port}:interface=127.0.0.1: "
            "Address already in use"
        )  # fmt: skip

    def test_observesWhileRunning(self) -> None:
        """The service counts the global publisher's events between start and stop."""
        from twisted.logger import Logger

        log = Logger(namespace="tests.test_metrics")
        metrics = Metrics(process=False)
        service = MetricsService(None, "tcp:0:interface=127.0.0.1", metrics)
        [listening] = list(service)
        listening.startService = lambda: None  # type: ignore[method-assign]
        listening.stopService = lambda: None  # type: ignore[method-assign]
        service.startService()
        log.info("accepted", mfEvent=E.ACCEPTED, listener="smtp", recipients=["a@x.test"], size=1)
        service.stopService()
        log.info("accepted", mfEvent=E.ACCEPTED, listener="smtp", recipients=["a@x.test"], size=1)
        accepted = value(metrics.registry, "mailframe_messages_accepted_total", listener="smtp")
        self.assertEqual(accepted, 1)


class EmbeddingTests(SynchronousTestCase):
    def test_metricsFor(self) -> None:
        """metricsFor times the factories' plug-ins, reads the queue and counts events."""
        publisher = LogPublisher()
        config = ServerConfig(hostname="mx.test")
        factory = SMTPServerFactory(config, MemoryBackend(), [Validator()])
        metrics = metricsFor([factory], FakeQueue([entry("A", 0)]), task.Clock(), publisher)
        self.addCleanup(metrics.stop)
        publisher(event(E.ACCEPTED, listener="smtp", recipients=["a@x.test"], size=1))
        factory.context.recipientChain.run(Verdict(), "x")
        r = metrics.registry
        self.assertEqual(value(r, "mailframe_messages_accepted_total", listener="smtp"), 1)
        self.assertEqual(value(r, "mailframe_queue_messages", state="incoming"), 1)
        self.assertEqual(
            value(r, "mailframe_plugin_seconds_count", stage="rcpt", plugin="Validator"), 1
        )


class DocsTests(SynchronousTestCase):
    def test_everyMetricDocumented(self) -> None:
        """docs/metrics.rst names every mailframe_ metric, and no other."""
        import re
        from pathlib import Path

        text = (Path(__file__).resolve().parents[1] / "docs" / "metrics.rst").read_text()
        documented = set(re.findall(r"``(mailframe_[a-z_]+)`` \{", text))
        documented |= set(re.findall(r"^``(mailframe_[a-z_]+)``$", text, re.M))
        metrics = Metrics(process=False)
        metrics.watchQueue(FakeQueue([]), task.Clock())
        exported = set()
        for family in metrics.registry.collect():
            name = family.name
            if family.type == "counter":
                name += "_total"
            elif family.type == "info":
                name += "_info"
            exported.add(name)
        self.assertEqual(documented, exported)

    def test_embeddingCodeRuns(self) -> None:
        """The embedding example of docs/metrics.rst runs, and its resource renders."""
        import re
        from pathlib import Path

        from twisted.internet.testing import MemoryReactorClock

        text = (Path(__file__).resolve().parents[1] / "docs" / "metrics.rst").read_text()
        [code] = re.findall(r"\.\. code-block:: python\n\n((?:   .*\n|\n)+)", text)
        reactor = MemoryReactorClock()
        factory = SMTPServerFactory(ServerConfig(hostname="mx.test"), MemoryBackend())
        namespace: dict[str, Any] = {"factory": factory, "runner": FakeQueue([]),
                                     "reactor": reactor}  # fmt: skip
        exec(compile("\n".join(line[3:] for line in code.splitlines()), "metrics.rst", "exec"),
             namespace)  # fmt: skip
        metrics = namespace["metrics"]
        self.addCleanup(metrics.stop)
        [(port, site, _, interface)] = reactor.tcpServers
        self.assertEqual((port, interface), (9025, "127.0.0.1"))
        self.assertIsNotNone(factory.context.pluginTimer)
        resource = site.resource.children[b"metrics"]
        _, body = render(resource)
        self.assertIn(b"mailframe_queue_messages", body)


# -- real sessions ----------------------------------------------------------------------


class SessionTests(SynchronousTestCase):
    """The events of real sessions (in memory) counted: what the log says is what is counted."""

    def test_session(self) -> None:
        """One accepted and one refused recipient, a message, QUIT: every counter moves."""
        self.session(quiet=False)

    def test_sessionQuiet(self) -> None:
        """
        With its lines off (--quiet) a session is counted all the same, and
        none of its decision events reaches the log.
        """
        from twisted.logger import globalLogPublisher

        logged: list[Any] = []

        def observe(event: Any) -> None:
            if "mfEvent" in event:
                logged.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        self.session(quiet=True)
        self.assertEqual(logged, [])

    def session(self, quiet: bool) -> None:
        from twisted.internet.error import ConnectionDone
        from twisted.internet.testing import MemoryReactorClock, StringTransport
        from twisted.python.failure import Failure

        metrics = Metrics(process=False)
        metrics.start()
        self.addCleanup(metrics.stop)
        config = ServerConfig(
            hostname="mx.test", localDomains=frozenset({"example.com"}), logMessages=not quiet
        )
        clock = MemoryReactorClock()
        factory = SMTPServerFactory(config, MemoryBackend(), [Validator()], clock=clock)
        metrics.timePlugins(factory)
        proto = factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        for line in (
            b"EHLO client.test",
            b"MAIL FROM:<s@client.test>",
            b"RCPT TO:<user@example.com>",
            b"RCPT TO:<x@elsewhere.test>",
            b"DATA",
            b"Subject: hi\r\n\r\nhello\r\n.",
            b"QUIT",
        ):
            proto.dataReceived(line + b"\r\n")
            clock.advance(1)
        self.assertIn(b"221", transport.value())
        proto.connectionLost(Failure(ConnectionDone()))
        r = metrics.registry
        smtp = {"listener": "smtp"}
        self.assertEqual(value(r, "mailframe_connections_total", **smtp), 1)
        self.assertEqual(value(r, "mailframe_connections_open", **smtp), 0)
        self.assertEqual(value(r, "mailframe_messages_accepted_total", **smtp), 1)
        self.assertEqual(value(r, "mailframe_recipients_accepted_total", **smtp), 1)
        self.assertEqual(value(r, "mailframe_recipients_refused_total", code="550", **smtp), 1)
        self.assertEqual(value(r, "mailframe_commands_total", command="rcpt", **smtp), 2)
        self.assertEqual(
            value(r, "mailframe_replies_total", stage="rcpt", **{"class": "5"}, **smtp), 1
        )
        # the 2xx and 3xx too, lines on or off (the session counts 2xx only for them)
        for stage, kind, n in (("ehlo", "2", 1), ("rcpt", "2", 1), ("data", "3", 1),
                               ("data", "2", 1), ("quit", "2", 1)):  # fmt: skip
            self.assertEqual(
                value(r, "mailframe_replies_total", stage=stage, **{"class": kind}, **smtp), n
            )
        self.assertEqual(value(r, "mailframe_received_bytes_total", **smtp) > 0, True)
        self.assertEqual(
            value(r, "mailframe_plugin_seconds_count", stage="rcpt", plugin="Validator"), 1
        )
        self.assertEqual(value(r, "mailframe_metrics_errors_total"), 0)


class QueueSessionTests(QueueCase):
    """A real queue runner: its events counted, its entries read at scrape time."""

    def test_queue(self) -> None:
        """A local recipient sent, a remote one deferred: deliveries by kind, the queue by state."""

        metrics = Metrics(process=False)
        metrics.start()
        self.addCleanup(metrics.stop)
        metrics.watchQueue(self.runner, self.clock)
        self.relay.answer = lambda address: LATER
        self.send(envelope("s@example.com", "user@example.com", "far@remote.test"))
        self.clock.advance(30)
        r = metrics.registry
        self.assertEqual(value(r, "mailframe_deliveries_total", kind="local", outcome="sent"), 1)
        self.assertEqual(
            value(r, "mailframe_deliveries_total", kind="relay", outcome="deferred"), 1
        )
        self.assertEqual(value(r, "mailframe_delivery_transfer_seconds_count", kind="local"), 1)
        self.assertEqual(value(r, "mailframe_queue_messages", state="deferred"), 1)
        self.assertEqual(value(r, "mailframe_queue_recipients", state="deferred"), 1)
        self.assertEqual(value(r, "mailframe_queue_oldest_seconds", state="deferred"), 30)
        self.assertEqual(value(r, "mailframe_metrics_errors_total"), 0)

    def test_queueQuiet(self) -> None:
        """With the queue's lines off, its deliveries are counted and not logged."""
        from twisted.logger import globalLogPublisher

        logged: list[Any] = []

        def observe(event: Any) -> None:
            if "mfEvent" in event:
                logged.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        self.runner.logDeliveries = False
        metrics = Metrics(process=False)
        metrics.start()
        self.addCleanup(metrics.stop)
        self.relay.answer = lambda address: LATER
        self.send(envelope("s@example.com", "user@example.com", "far@remote.test"))
        self.clock.advance(30)
        r = metrics.registry
        self.assertEqual(value(r, "mailframe_deliveries_total", kind="local", outcome="sent"), 1)
        self.assertEqual(
            value(r, "mailframe_deliveries_total", kind="relay", outcome="deferred"), 1
        )
        self.assertEqual(logged, [])
