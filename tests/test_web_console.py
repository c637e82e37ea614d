"""
Tests for the web console's server side (mailframe.web.console and its
data modules): the page's files, the sanitised HTML body, the decision
ring and its long poll, the live sessions, the queue pages, the
statistics, the settings (redacted), and the twistd wiring.  In memory,
on a Clock.
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet import defer
from twisted.logger import LogPublisher, formatEvent
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.server import NOT_DONE_YET

from mailframe import _eventlog
from mailframe import events as E
from mailframe.app.webconsole import consoleURL
from mailframe.config import ServerConfig
from mailframe.queue.operations import QueueOperations
from mailframe.server import SMTPServerFactory
from mailframe.web.capture import CaptureStore
from mailframe.web.console import Console, ConsoleResource, ConsoleService
from mailframe.web.decisions import DecisionFilter, DecisionLog
from mailframe.web.sessions import liveSessions
from mailframe.web.settingsview import MASK, redactSettings
from mailframe.web.static import CSP
from mailframe.web.stats import Stats
from tests._transports import CountingTransport, TLSTransport
from tests.test_backends_maildir import SynchronousReactor
from tests.test_capture import envelope
from tests.test_queue import LATER, QueueCase
from tests.test_queue import envelope as queueEnvelope
from tests.test_server import Listed
from tests.test_web_auth import ConsoleCase, WebRequest
from tests.test_webapi import MULTIPART


def decision(name: str, **fields: Any) -> dict[str, Any]:
    """A decision event as the server emits it."""
    event: dict[str, Any] = {
        E.KEY: name,
        "log_format": "{sessionID} " + name + " {clientAddress} {reply}",
        "log_time": 5.0,
        "sessionID": "S1",
        "clientAddress": "192.0.2.1",
        "clientName": "unknown",
        "reply": None,
    }
    event.update(fields)
    return event


class NoLoginCase(ConsoleCase):
    """A console without login, asked from 127.0.0.1."""

    users = None

    def request(self, path: str, method: bytes = b"GET", body: Any = None,
                headers: dict[bytes, bytes] | None = None, **kwargs: Any) -> WebRequest:  # fmt: skip
        headers = {b"host": b"127.0.0.1:8025", **(headers or {})}
        return super().request(path, method, body, headers, **kwargs)


class StaticTests(NoLoginCase):
    """The page and its files: from the static directory only, with the console's headers."""

    def setUp(self) -> None:
        super().setUp()
        directory = self.mktemp()
        os.makedirs(os.path.join(directory, "sub"))
        for name, data in (("index.html", b"<!doctype html>page"), ("console.js", b"js()"),
                           ("console.css", b"p{}"), ("icon.svg", b"<svg/>"),
                           ("notes.txt", b"secret"), ("sub/x.js", b"no")):  # fmt: skip
            with open(os.path.join(directory, name), "wb") as f:
                f.write(data)
        self.console = self.makeConsole(staticDirectory=directory)
        self.resource = ConsoleResource(self.console)

    def test_page(self) -> None:
        """/ and /index.html are the page, with its CSP and no framing."""
        for path in ("", "index.html"):
            r = self.request(path)
            self.assertEqual(self.render(r), (200, b"<!doctype html>page"))
            headers = r.responseHeaders
            self.assertEqual(headers.getRawHeaders(b"content-type"), [b"text/html; charset=utf-8"])
            self.assertEqual(headers.getRawHeaders(b"content-security-policy"), [CSP])
            self.assertEqual(headers.getRawHeaders(b"x-frame-options"), [b"DENY"])
            self.assertEqual(headers.getRawHeaders(b"referrer-policy"), [b"no-referrer"])
            self.assertEqual(headers.getRawHeaders(b"x-content-type-options"), [b"nosniff"])
        self.assertIn(b"frame-ancestors 'none'", CSP)

    def test_files(self) -> None:
        """/static/NAME by extension; other names, types and paths are 404."""
        for name, kind in (("console.js", b"text/javascript; charset=utf-8"),
                           ("console.css", b"text/css; charset=utf-8"),
                           ("icon.svg", b"image/svg+xml")):  # fmt: skip
            r = self.request(f"static/{name}")
            self.assertEqual(self.render(r)[0], 200)
            self.assertEqual(r.responseHeaders.getRawHeaders(b"content-type"), [kind])
            self.assertEqual(r.responseHeaders.getRawHeaders(b"content-security-policy"), [CSP])
        for path in ("static/notes.txt", "static/sub/x.js", "static/..", "static/.hidden.js",
                     "static/nosuch.js", "static/sub", "static"):  # fmt: skip
            self.assertEqual(self.render(self.request(path))[0], 404, path)
        r = WebRequest("static/x")
        r.postpath = [b"static", b"..%2fconsole.js"]
        self.assertEqual(self.render(r)[0], 404)

    def test_missingDirectory(self) -> None:
        """Without the directory (not built yet), the page is a 404."""
        self.resource = ConsoleResource(self.makeConsole(staticDirectory=self.mktemp()))
        self.assertEqual(self.render(self.request(""))[0], 404)


class CaptureTests(NoLoginCase):
    """The captured mail through the console, and its HTML body, sanitised."""

    def setUp(self) -> None:
        super().setUp()
        self.store = CaptureStore(SynchronousReactor(), clock=lambda: 5.0)
        self.store.add(envelope("ann@a.example", "bob@b.example", queueID="A"), MULTIPART)
        self.store.add(envelope(queueID="T"), b"Subject: plain\r\n\r\ntext only\r\n")
        self.resource = ConsoleResource(self.makeConsole(store=self.store))

    def test_messages(self) -> None:
        """The message API answers as before, and info says capture is on."""
        self.assertEqual(self.json(self.request("api/v1/messages"))["total"], 2)
        self.assertTrue(self.json(self.request("api/v1/info"))["capture"])
        self.json(self.request("api/v1/messages/A"))

    def test_html(self) -> None:
        """html: the HTML body sanitised, text/html, in a sandbox CSP, framed by us only."""
        r = self.request("api/v1/messages/A/html")
        code, body = self.render(r)
        self.assertEqual(code, 200)
        self.assertEqual(body.strip(), b"<p>Rich </p>")
        headers = r.responseHeaders
        self.assertEqual(headers.getRawHeaders(b"content-type"), [b"text/html; charset=utf-8"])
        [csp] = headers.getRawHeaders(b"content-security-policy")
        self.assertEqual(
            csp,
            b"sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data: cid:",
        )
        self.assertEqual(headers.getRawHeaders(b"x-frame-options"), [b"SAMEORIGIN"])
        self.assertEqual(headers.getRawHeaders(b"x-content-type-options"), [b"nosniff"])

    def test_htmlRemote(self) -> None:
        """?remote=1 keeps remote images and lets the CSP load them."""
        self.store.add(
            envelope(queueID="R"),
            b'Content-Type: text/html\r\n\r\n<img src="https://img.example/a.png">\r\n',
        )
        _, body = self.render(self.request("api/v1/messages/R/html"))
        self.assertEqual(body.strip(), b"")
        r = self.request("api/v1/messages/R/html?remote=1")
        _, body = self.render(r)
        self.assertIn(b'src="https://img.example/a.png"', body)
        [csp] = r.responseHeaders.getRawHeaders(b"content-security-policy")
        self.assertTrue(csp.endswith(b"img-src data: cid: https: http:"))

    def test_htmlNone(self) -> None:
        """A message without an HTML part: 404."""
        self.json(self.request("api/v1/messages/T/html"), 404)
        self.json(self.request("api/v1/messages/nope/html"), 404)

    def test_captureOff(self) -> None:
        """Without capture mode, the message paths say so."""
        self.resource = ConsoleResource(self.makeConsole())
        for path in ("api/v1/messages", "api/v1/mailboxes", "api/v1/messages/A/html"):
            self.assertEqual(self.json(self.request(path), 404), {"error": "capture mode is off"})
        self.assertFalse(self.json(self.request("api/v1/info"))["capture"])


class DecisionLogTests(SynchronousTestCase):
    """The ring of decision events, its filters and its waiters."""

    def test_ring(self) -> None:
        """Only decision events are kept, numbered, the newest first, at most size."""
        log = DecisionLog(3)
        log({"log_format": "not a decision"})
        for i in range(5):
            log(decision(E.CONNECT, sessionID=f"S{i}"))
        self.assertEqual(log.last, 5)
        self.assertEqual([d.seq for d in log.search()], [5, 4, 3])
        self.assertEqual([d.seq for d in log.search(after=3)], [5, 4])
        self.assertEqual([d.seq for d in log.search(limit=1)], [5])
        got = log.search()[0].toJSON()
        self.assertEqual(got["event"], "connect")
        self.assertEqual(got["text"], "S4 connect 192.0.2.1 None")
        self.assertEqual(got["time"], 5.0)

    def test_filters(self) -> None:
        """q in the line, code prefix, client in address or name, address in sender/recipient."""
        log = DecisionLog()
        log(decision(E.REFUSED, code=550, reply="550 5.7.1 Relaying denied",
                     sender="a@x.example", recipient="b@y.example", decider="mailframe"))  # fmt: skip
        log(decision(E.REFUSED, code=451, reply="451 4.7.1 Greylisted", clientName="mx.z.example",
                     clientAddress="198.51.100.9", sender="c@z.example", recipient="d@y.example"))  # fmt: skip
        log(decision(E.ACCEPTED, code=250, recipients=["e@w.example", "f@w.example"],
                     sender="a@x.example"))  # fmt: skip

        def seqs(**kwargs: str) -> list[int]:
            return [d.seq for d in log.search(DecisionFilter(**kwargs))]

        self.assertEqual(seqs(), [3, 2, 1])
        self.assertEqual(seqs(code="5"), [1])
        self.assertEqual(seqs(code="45"), [2])
        self.assertEqual(seqs(code="550"), [1])
        self.assertEqual(seqs(q="relaying"), [1])
        self.assertEqual(seqs(client="z.example"), [2])
        self.assertEqual(seqs(client="192.0.2"), [3, 1])
        self.assertEqual(seqs(address="Y.EXAMPLE"), [2, 1])
        self.assertEqual(seqs(address="f@w"), [3])
        self.assertEqual(log.search()[0].toJSON()["recipient"], "e@w.example, f@w.example")

    def test_observer(self) -> None:
        """start observes a publisher and the counted-only events; stop undoes both."""
        publisher = LogPublisher()
        log = DecisionLog()
        log.start(publisher)
        self.assertIn(log, _eventlog.counting)
        publisher(decision(E.CONNECT))
        log.stop()
        self.assertNotIn(log, _eventlog.counting)
        publisher(decision(E.CONNECT))
        self.assertEqual(log.last, 1)

    def test_wait(self) -> None:
        """A wait fires on the next matching decision; cancelled, it is forgotten."""
        log = DecisionLog()
        d = log.wait(DecisionFilter(code="5"))
        log(decision(E.CONNECT))
        self.assertNoResult(d)
        log(decision(E.REFUSED, code=554))
        self.successResultOf(d)
        d = log.wait()
        d.cancel()
        self.failureResultOf(d)
        self.assertEqual(log.waiting, 0)


class DecisionsAPITests(NoLoginCase):
    """GET /api/v1/decisions: filters, and the long poll on a Clock."""

    def test_list(self) -> None:
        """Newest first, with the highest seq; filters from the query."""
        log = self.console.decisions
        log(decision(E.CONNECT))
        log(decision(E.REFUSED, code=550, reply="550 no"))
        got = self.json(self.request("api/v1/decisions"))
        self.assertEqual(got["last"], 2)
        self.assertEqual([d["seq"] for d in got["decisions"]], [2, 1])
        got = self.json(self.request("api/v1/decisions?code=55&limit=10"))
        self.assertEqual([d["code"] for d in got["decisions"]], [550])
        self.json(self.request("api/v1/decisions?wait=-1&after=0"), 400)
        self.json(self.request("api/v1/decisions?limit=x"), 400)

    def test_longPoll(self) -> None:
        """With after and wait, the answer comes when a newer matching decision does."""
        log = self.console.decisions
        log(decision(E.CONNECT))
        r = self.request("api/v1/decisions?after=1&wait=30&code=5")
        self.assertIs(self.resource.render(r), NOT_DONE_YET)
        log(decision(E.CONNECT))
        self.assertFalse(r.finished)
        log(decision(E.REFUSED, code=550))
        self.assertTrue(r.finished)
        got = json.loads(b"".join(r.written))
        self.assertEqual([d["seq"] for d in got["decisions"]], [3])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_longPollAtOnce(self) -> None:
        """A newer decision already there is answered at once."""
        self.console.decisions(decision(E.CONNECT))
        got = self.json(self.request("api/v1/decisions?after=0&wait=30"))
        self.assertEqual(got["last"], 1)

    def test_longPollTimeout(self) -> None:
        """After wait seconds, an empty answer; the wait is forgotten."""
        r = self.request("api/v1/decisions?after=0&wait=5")
        self.assertIs(self.resource.render(r), NOT_DONE_YET)
        self.clock.advance(4.9)
        self.assertFalse(r.finished)
        self.clock.advance(0.1)
        self.assertEqual(json.loads(b"".join(r.written)), {"decisions": [], "last": 0})
        self.assertEqual(self.console.decisions.waiting, 0)

    def test_longPollBounded(self) -> None:
        """A wait above 60 s is cut to 60."""
        r = self.request("api/v1/decisions?after=0&wait=600")
        self.assertIs(self.resource.render(r), NOT_DONE_YET)
        [timer] = self.clock.getDelayedCalls()
        self.assertEqual(timer.getTime() - self.clock.seconds(), 60)
        self.clock.advance(60)
        self.assertTrue(r.finished)

    def test_longPollGone(self) -> None:
        """A client that goes away stops its wait and timer; nothing is written."""
        r = self.request("api/v1/decisions?after=0&wait=60")
        self.assertIs(self.resource.render(r), NOT_DONE_YET)
        r.processingFailed(Exception("gone"))
        self.assertEqual(self.console.decisions.waiting, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.console.decisions(decision(E.CONNECT))
        self.assertEqual(r.written, [])


class SessionsTests(NoLoginCase):
    """GET /api/v1/sessions from a real SMTPServerFactory's open sessions."""

    def connect(self, transport: Any = None) -> Any:
        proto = self.factory.buildProtocol(None)
        proto.makeConnection(transport or CountingTransport())
        return proto

    def setUp(self) -> None:
        super().setUp()
        from mailframe.backends.memory import MemoryBackend

        config = ServerConfig(hostname="mx.test", localDomains=frozenset({"example.com"}))
        self.factory = SMTPServerFactory(
            config, MemoryBackend(), validators=[Listed("user")], clock=self.clock
        )
        self.resource = ConsoleResource(self.makeConsole(factories=[self.factory]))

    def test_sessions(self) -> None:
        """Each open session: client, HELO, stage, TLS, messages, start."""
        a = self.connect()
        a.dataReceived(b"EHLO client.example\r\nMAIL FROM:<s@x.example>\r\n")
        b = self.connect()
        got = self.json(self.request("api/v1/sessions"))["sessions"]
        self.assertEqual(len(got), 2)
        first = got[0]
        self.assertEqual(first["id"], a.session.sessionID)
        self.assertEqual(first["listener"], "smtp")
        self.assertEqual(first["helo"], "client.example")
        self.assertEqual(first["stage"], "mail")
        self.assertEqual(first["started"], self.clock.seconds())
        self.assertEqual((first["messages"], first["bytes"], first["tls"]), (0, 0, None))
        self.assertEqual(got[1]["stage"], "greeted")
        self.assertEqual(got[1]["clientName"], "unknown")
        a.dataReceived(b"RCPT TO:<user@example.com>\r\nDATA\r\n")
        self.assertEqual(
            self.json(self.request("api/v1/sessions"))["sessions"][0]["stage"], "data"
        )
        a.dataReceived(b"Subject: x\r\n\r\nbody\r\n.\r\n")
        [after, _] = self.json(self.request("api/v1/sessions"))["sessions"]
        self.assertEqual((after["messages"], after["stage"]), (1, "helo"))
        self.assertGreater(after["bytes"], 0)
        b.connectionLost()
        self.assertEqual(len(self.json(self.request("api/v1/sessions"))["sessions"]), 1)

    def test_tls(self) -> None:
        """A session with TLS says its version and cipher."""
        proto = self.connect(TLSTransport())
        proto.handshakeCompleted()
        [got] = liveSessions([self.factory], self.clock.seconds())
        self.assertEqual(got["tls"], {"version": "TLSv1.3", "cipher": "TLS_AES_256_GCM_SHA384"})


class QueueAPITests(QueueCase):
    """The queue pages and operations through the console, on a real runner and spool."""

    def setUp(self) -> None:
        super().setUp()
        self.console = Console(self.clock, operations=QueueOperations(self.runner))
        self.resource = ConsoleResource(self.console)

    def call(self, path: str, method: bytes = b"GET", code: int = 200) -> Any:
        r = WebRequest(path, method)
        r.requestHeaders.setRawHeaders(b"host", [b"localhost"])
        if method != b"GET":
            r.requestHeaders.setRawHeaders(b"x-mailframe-request", [b"1"])
        body = self.resource.render(r)
        if body is NOT_DONE_YET:
            self.assertTrue(r.finished)
            body = b"".join(r.written)
        assert isinstance(body, bytes)
        self.assertEqual(r.responseCode or 200, code, body)
        return json.loads(body)

    def said(self, text: str) -> bool:
        """Whether a log line (rendered) has C{text} in it."""
        return any(text in formatEvent(e) for e in self.logged)

    def deferred(self, *recipients: str) -> str:
        self.relay.answer = lambda a: LATER
        return self.send(queueEnvelope("s@example.com", *recipients), b"Subject: q\r\n\r\nHi\r\n")

    def test_list(self) -> None:
        """The list: total, entries with held and last reply, counts per destination."""
        first = self.deferred("a@remote.example", "b@other.example")
        self.clock.advance(1)
        self.deferred("c@remote.example")
        got = self.call("api/v1/queue")
        self.assertEqual(got["total"], 2)
        entry = got["messages"][0]
        self.assertEqual(entry["id"], first)
        self.assertFalse(entry["held"])
        self.assertEqual(entry["lastReply"]["code"], 451)
        self.assertEqual(entry["attempts"], 1)
        self.assertEqual(
            got["byDestination"],
            [{"domain": "remote.example", "count": 2, "oldest": entry["arrival"]},
             {"domain": "other.example", "count": 1, "oldest": entry["arrival"]}],
        )  # fmt: skip
        self.assertEqual(len(self.call("api/v1/queue?q=c@remote")["messages"]), 1)
        self.assertEqual(len(self.call("api/v1/queue?limit=1")["messages"]), 1)

    def test_show(self) -> None:
        """One message: its envelope, recipients and first octets."""
        entryID = self.deferred("a@remote.example")
        got = self.call(f"api/v1/queue/{entryID}")
        self.assertEqual(got["id"], entryID)
        self.assertEqual(got["recipients"][0]["address"], "a@remote.example")
        self.assertIn("Subject: q", got["head"])
        self.assertEqual(self.call("api/v1/queue/nope", code=404)["error"],
                         "no message nope in the queue")  # fmt: skip

    def test_holdRelease(self) -> None:
        """hold and release change the entry and are logged with who asked."""
        entryID = self.deferred("a@remote.example")
        got = self.call(f"api/v1/queue/{entryID}/hold", b"POST")
        self.assertEqual(got, {"ok": True, "id": entryID, "changed": True})
        self.assertTrue(self.runner.entries[entryID].held)
        self.assertTrue(self.said("web console: [192.0.2.7]: hold"))
        self.assertFalse(self.call(f"api/v1/queue/{entryID}/hold", b"POST")["changed"])
        self.assertTrue(self.call(f"api/v1/queue/{entryID}/release", b"POST")["changed"])
        self.assertFalse(self.runner.entries[entryID].held)
        self.call("api/v1/queue/nope/hold", b"POST", 404)
        self.call(f"api/v1/queue/{entryID}/hold", b"GET", 405)

    def test_delete(self) -> None:
        """DELETE removes one message; an unknown one is 404."""
        entryID = self.deferred("a@remote.example")
        self.assertEqual(
            self.call(f"api/v1/queue/{entryID}", b"DELETE"), {"ok": True, "id": entryID}
        )
        self.assertNotIn(entryID, self.runner.entries)
        self.call(f"api/v1/queue/{entryID}", b"DELETE", 404)
        self.assertTrue(self.said("web console: [192.0.2.7]: delete"))

    def test_flush(self) -> None:
        """flush tries every message not held now."""
        self.deferred("a@remote.example")
        calls = len(self.relay.calls)
        self.assertEqual(self.call("api/v1/queue/flush", b"POST"), {"ok": True, "count": 1})
        self.clock.advance(0)
        self.assertEqual(len(self.relay.calls), calls + 1)
        self.call("api/v1/queue/flush", b"GET", 405)

    def test_noQueue(self) -> None:
        """Without a queue: 404 no queue."""
        self.resource = ConsoleResource(Console(self.clock))
        self.assertEqual(self.call("api/v1/queue", code=404), {"error": "no queue"})


class StatsTests(NoLoginCase):
    """The statistics: counted from decisions, sampled every 10 s on the Clock."""

    def test_sampling(self) -> None:
        """Each interval's counts join the series; totals and reasons add up."""
        size = [3]
        stats = Stats(self.clock, lambda: size[0])
        log = DecisionLog(counter=stats.count)
        stats.start()
        log(decision(E.CONNECT))
        log(decision(E.REFUSED, code=550, decider="mailframe"))
        log(decision(E.REFUSED, code=554, decider="dnsbl"))
        self.clock.advance(10)
        log(decision(E.ACCEPTED, code=250))
        log(decision(E.QUEUE_SENT))
        log(decision(E.QUEUE_BOUNCED))
        log(decision(E.QUEUE_EXPIRED))
        log(decision(E.QUEUE_DEFERRED))
        size[0] = 1
        self.clock.advance(10)
        got = stats.toJSON()
        self.assertEqual(got["interval"], 10)
        self.assertEqual(
            [(p["connections"], p["accepted"], p["refused"], p["queue"]) for p in got["series"]],
            [(1, 0, 2, 3), (0, 1, 0, 1)],
        )
        self.assertEqual(got["series"][1]["time"], self.clock.seconds())
        self.assertEqual(got["totals"], {"connections": 1, "accepted": 1, "refused": 2,
                                         "deferred": 1, "sent": 1, "bounced": 2})  # fmt: skip
        self.assertEqual(got["refusedByReason"], {"550": 1, "dnsbl": 1})
        self.assertEqual(got["refusedByCode"], {"550": 1, "554": 1})
        stats.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_keepsAnHour(self) -> None:
        """The series keeps the last hour (360 samples)."""
        stats = Stats(self.clock)
        stats.start()
        self.clock.pump([10] * 400)
        self.assertEqual(len(stats.series), 360)
        stats.stop()

    def test_api(self) -> None:
        """GET stats: the console's statistics, fed by its decision ring."""
        self.console.decisions(decision(E.CONNECT))
        got = self.json(self.request("api/v1/stats"))
        self.assertEqual(got["totals"]["connections"], 1)
        self.assertEqual(got["now"], self.clock.seconds())


class SettingsTests(NoLoginCase):
    """The settings in force, every secret taken out."""

    def test_redact(self) -> None:
        """Inline secrets go; file paths and ordinary values stay; URLs lose their password."""
        got = redactSettings(
            [("relay-password", "hunter2"), ("spool-password-file", "/etc/pw"),
             ("srs-secret", "/etc/srs"), ("tls-key", ("/k.pem",)),
             ("spool", "postgresql://u:pw@db/mail"), ("auth", ("memory:a:pw", "file:/p")),
             ("web-auth", ("mailframe:/etc/mf",)), ("max-size", 100),
             ("relay", {"smarthost": "x", "password": "pw", "routes": {"a": {"secret": "s"}}}),
             ("deliver", "webhook:https://h/x?token=abc"), ("domain", ("a.example",))],
            paths={"spool-password-file", "srs-secret", "tls-key", "spool"},
        )  # fmt: skip
        values = {s["name"]: s["value"] for s in got}
        self.assertEqual(values["relay-password"], MASK)
        self.assertEqual(values["spool-password-file"], "/etc/pw")
        self.assertEqual(values["srs-secret"], "/etc/srs")
        self.assertEqual(values["tls-key"], ["/k.pem"])
        self.assertNotIn("pw", values["spool"])
        self.assertEqual(values["auth"], ["memory:****", "file:/p"])
        self.assertEqual(values["web-auth"], ["mailframe:/etc/mf"])
        self.assertEqual(values["max-size"], 100)
        self.assertEqual(values["relay"]["password"], MASK)
        self.assertEqual(values["relay"]["routes"]["a"]["secret"], MASK)
        self.assertEqual(values["relay"]["smarthost"], "x")
        self.assertNotIn("abc", values["deliver"])
        self.assertEqual(values["domain"], ["a.example"])

    def test_api(self) -> None:
        """GET settings gives what the application handed over."""
        settings = {"settings": [{"name": "max-size", "value": 1}], "listeners": []}
        self.resource = ConsoleResource(self.makeConsole(settings=settings))
        self.assertEqual(self.json(self.request("api/v1/settings")), settings)


class TapTests(SynchronousTestCase):
    """twistd mailframe --web: the console without capture, with a queue, with a login."""

    def service(self, *args: str) -> Any:
        from mailframe.app.tap import Options, makeService

        options = Options()
        options.parseOptions(["--listen", "tcp:0:interface=127.0.0.1", *args])
        return makeService(options)

    def console(self, service: Any) -> ConsoleService:
        [child] = [c for c in service if isinstance(c, ConsoleService)]
        return child

    def test_withoutCapture(self) -> None:
        """--web alone: a console with no captured mail, no queue, no login."""
        service = self.service("--web", "tcp:0:interface=127.0.0.1")
        console = self.console(service).console
        self.assertIsNone(console.store)
        self.assertIsNone(console.operations)
        self.assertIsNone(console.login)
        self.assertEqual(list(console.factories), service.factories)
        self.assertIn("mailframe: web console at tcp:0:interface=127.0.0.1 (no login)",
                      service.announcements)  # fmt: skip
        names = [s["name"] for s in console.settings["settings"]]
        self.assertIn("max-size", names)
        self.assertEqual(console.settings["listeners"][0]["name"], "smtp")

    def test_consoleURL(self) -> None:
        """The announcement names the address to open in a browser, where one is known."""
        self.assertEqual(consoleURL("tcp:8025:interface=127.0.0.1"), "http://127.0.0.1:8025/")
        self.assertEqual(consoleURL("tcp6:port=8025:interface=\\:\\:1"), "http://[::1]:8025/")
        self.assertEqual(consoleURL("ssl:8443:privateKey=k.pem"), "https://localhost:8443/")
        self.assertIsNone(consoleURL("unix:/run/console.sock"))
        self.assertIsNone(consoleURL("tcp:0:interface=127.0.0.1"))
        service = self.service("--web", "tcp:8025:interface=127.0.0.1")
        self.assertIn(
            "mailframe: web console at http://127.0.0.1:8025/ "
            "(tcp:8025:interface=127.0.0.1, no login)",
            service.announcements,
        )

    def test_badWebAuthChecker(self) -> None:
        """A web-auth checker that cannot be set up stops the start, naming web-auth."""
        missing = os.path.join(self.mktemp(), "passwd")
        with self.assertRaises(SystemExit) as e:
            self.service(
                "--web", "tcp:0:interface=127.0.0.1", "--web-auth", f"mailframe:{missing}"
            )
        self.assertIn(
            "cannot set up --web-auth mailframe: cannot read password file", str(e.exception)
        )

    def test_withQueue(self) -> None:
        """With a spool, the console has the queue's runner."""
        spool = self.mktemp()
        service = self.service("--web", "unix:" + self.mktemp(), "--spool", spool)
        console = self.console(service).console
        assert console.operations is not None
        [queue] = [c for c in service if hasattr(c, "runner")]
        self.assertIs(console.operations.runner, queue.runner)
        self.assertTrue(self.console(service).console.settings["settings"])

    def test_loginOffLoopback(self) -> None:
        """--web-auth: a public endpoint is accepted, with a warning for plain tcp."""
        service = self.service("--web", "tcp:0", "--web-auth", "memory:admin:pw")
        console = self.console(service).console
        assert console.login is not None
        session = self.successResultOf(console.login.login("admin", "pw", "192.0.2.1"))
        self.assertEqual(session.user, "admin")
        [warning] = [w for w in service.warnings if "web console" in w]
        self.assertIn("in clear", warning)
        self.assertIn("ssl:", warning)
        self.assertEqual(
            [s["value"] for s in console.settings["settings"] if s["name"] == "web-auth"],
            [["memory:****"]],
        )

    def test_refusedWithoutLogin(self) -> None:
        """Without --web-auth, a public endpoint is a usage error."""
        self.assertRaises(usage.UsageError, self.service, "--web", "tcp:8025")

    def test_startStop(self) -> None:
        """The service observes decisions while it runs, and stops observing after."""
        service = self.service("--web", "tcp:0:interface=127.0.0.1")
        child = self.console(service)
        decisions = child.console.decisions
        child.console.start()
        self.assertIn(decisions, _eventlog.counting)
        child.console.stop()
        self.assertNotIn(decisions, _eventlog.counting)


class RealSiteTests(TestCase):
    """The console on a real Site on 127.0.0.1, through treq: login, cookie, token."""

    @defer.inlineCallbacks
    def test_login(self) -> Any:
        """A login over HTTP gives a cookie that opens the API, and a token for a POST."""
        import treq
        from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
        from twisted.internet import reactor
        from twisted.web.client import HTTPConnectionPool

        from mailframe.web.auth import WebLogin
        from mailframe.web.console import consoleSite

        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        checker = InMemoryUsernamePasswordDatabaseDontUse(admin=b"pw")
        console = Console(reactor, login=WebLogin(reactor, [checker]))
        port = reactor.listenTCP(0, consoleSite(console), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        base = f"http://127.0.0.1:{port.getHost().port}/api/v1"
        post = {"X-Mailframe-Request": "1", "Content-Type": "application/json"}
        refused = yield treq.get(f"{base}/stats", pool=pool)
        self.assertEqual(refused.code, 401)
        yield refused.content()
        answer = yield treq.post(
            f"{base}/login", b'{"username": "admin", "password": "pw"}', headers=post, pool=pool
        )
        self.assertEqual(answer.code, 200)
        token = (yield answer.json())["csrf"]
        [cookie] = answer.headers.getRawHeaders(b"set-cookie")
        self.assertIn(b"; HttpOnly; SameSite=Strict", cookie)
        value = cookie.split(b";")[0]
        got = yield treq.get(f"{base}/info", headers={b"Cookie": value}, pool=pool)
        self.assertEqual((yield got.json())["user"], "admin")
        flush = yield treq.post(
            f"{base}/queue/flush",
            headers={**post, "X-CSRF-Token": token, "Cookie": value.decode()},
            pool=pool,
        )
        self.assertEqual(flush.code, 404)  # no queue: past every check
        self.assertEqual((yield flush.json()), {"error": "no queue"})
