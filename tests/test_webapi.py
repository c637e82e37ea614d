"""Tests for mailframe.web.api: capture mode's REST API (in memory, and end to end)."""

from __future__ import annotations

import json
import os
import shutil
import threading
import urllib.error
import urllib.request
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from mailframe.web.api import CaptureAPI, apiSite, checkWebEndpoint
from mailframe.web.capture import CaptureStore
from tests.test_backends_maildir import SynchronousReactor
from tests.test_capture import envelope

MULTIPART = (
    b"From: Ann <ann@a.example>\r\n"
    b"To: bob@b.example\r\n"
    b"Subject: =?utf-8?q?Caf=C3=A9?= report\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="B"\r\n'
    b"\r\n"
    b"--B\r\n"
    b'Content-Type: multipart/alternative; boundary="A"\r\n'
    b"\r\n"
    b"--A\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"Plain words\r\n"
    b"--A\r\n"
    b"Content-Type: text/html; charset=utf-8\r\n"
    b"\r\n"
    b"<p>Rich <script>alert(1)</script></p>\r\n"
    b"--A--\r\n"
    b"--B\r\n"
    b'Content-Type: text/html; name="page.html"\r\n'
    b'Content-Disposition: attachment; filename="page.html"\r\n'
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n"
    b"PHNjcmlwdD5ldmlsKCk8L3NjcmlwdD4=\r\n"
    b"--B--\r\n"
)


def request(
    path: str, method: bytes = b"GET", headers: dict[bytes, bytes] | None = None, **args: str
) -> DummyRequest:
    """A DummyRequest for C{path} (under /), with query arguments C{args}."""
    r = DummyRequest([p.encode() for p in path.strip("/").split("/")])
    r.method = method
    r.args = {k.encode(): [v.encode()] for k, v in args.items()}
    for k, v in (headers or {}).items():
        r.requestHeaders.setRawHeaders(k, [v])
    return r


class APITests(SynchronousTestCase):
    """The API's resources, rendered in memory."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.store = CaptureStore(SynchronousReactor(), clock=lambda: 5.0)
        self.api = CaptureAPI(self.store, self.clock)

    def render(self, r: DummyRequest) -> tuple[int, bytes]:
        """The code and body of C{r} rendered (at once)."""
        body = self.api.render(r)
        if body is NOT_DONE_YET:
            self.assertTrue(r.finished, "not answered at once")
            body = b"".join(r.written)
        assert isinstance(body, bytes)
        return r.responseCode or 200, body

    def json(self, r: DummyRequest, code: int = 200) -> Any:
        got, body = self.render(r)
        self.assertEqual(got, code, body)
        self.assertEqual(
            r.responseHeaders.getRawHeaders(b"content-type"), [b"application/json; charset=utf-8"]
        )
        self.assertEqual(r.responseHeaders.getRawHeaders(b"cache-control"), [b"no-store"])
        self.assertIsNone(r.responseHeaders.getRawHeaders(b"access-control-allow-origin"))
        return json.loads(body)

    def add(
        self, queueID: str, data: bytes = MULTIPART, *recipients: str, user: str | None = None
    ) -> None:
        self.store.add(envelope("ann@a.example", *recipients, queueID=queueID, user=user), data)

    def test_list(self) -> None:
        """GET messages lists summaries newest first; q, mailbox and limit narrow it."""
        self.add("A", MULTIPART, "bob@b.example")
        self.add("B", b"Subject: other\r\n\r\nx\r\n", "cat@c.example")
        got = self.json(request("api/v1/messages"))
        self.assertEqual(got["total"], 2)
        self.assertEqual([m["id"] for m in got["messages"]], ["B", "A"])
        first = got["messages"][1]
        self.assertEqual(first["subject"], "Café report")
        self.assertEqual(first["to"], ["bob@b.example"])
        self.assertEqual(first["mailbox"], "b.example")
        self.assertEqual(first["received"], 5.0)
        q = self.json(request("api/v1/messages", q="café"))
        self.assertEqual([m["id"] for m in q["messages"]], ["A"])
        box = self.json(request("api/v1/messages", mailbox="c.example"))
        self.assertEqual([m["id"] for m in box["messages"]], ["B"])
        self.assertEqual(self.json(request("api/v1/messages", limit="1"))["count"], 1)
        self.json(request("api/v1/messages", limit="many"), 400)

    def test_get(self) -> None:
        """GET messages/ID: envelope, session, headers, text, HTML (a string) and attachments."""
        self.add("A", MULTIPART, "bob@b.example", user="alice")
        got = self.json(request("api/v1/messages/A"))
        self.assertEqual(got["envelope"]["mailFrom"], "ann@a.example")
        self.assertEqual(got["envelope"]["recipients"][0]["address"], "bob@b.example")
        self.assertEqual(got["session"]["user"], "alice")
        self.assertEqual(got["mailbox"], "alice")
        self.assertIn(["Subject", "Café report"], got["headers"])
        self.assertEqual(got["text"].strip(), "Plain words")
        self.assertEqual(got["html"].strip(), "<p>Rich <script>alert(1)</script></p>")
        self.assertEqual(
            got["attachments"],
            [{"part": 4, "filename": "page.html", "contentType": "text/html", "size": 23}],
        )
        self.json(request("api/v1/messages/nope"), 404)

    def test_raw(self) -> None:
        """GET messages/ID/raw is the message as received, message/rfc822."""
        self.add("A")
        r = request("api/v1/messages/A/raw")
        self.assertEqual(self.render(r), (200, MULTIPART))
        self.assertEqual(r.responseHeaders.getRawHeaders(b"content-type"), [b"message/rfc822"])

    def test_part(self) -> None:
        """A part is downloaded decoded, as an attachment, never sniffed."""
        self.add("A")
        r = request("api/v1/messages/A/parts/4")
        self.assertEqual(self.render(r), (200, b"<script>evil()</script>"))
        headers = r.responseHeaders
        self.assertEqual(headers.getRawHeaders(b"content-type"), [b"text/html"])
        self.assertEqual(headers.getRawHeaders(b"content-disposition"), [b"attachment"])
        self.assertEqual(headers.getRawHeaders(b"x-content-type-options"), [b"nosniff"])
        self.json(request("api/v1/messages/A/parts/0"), 404)  # multipart
        self.json(request("api/v1/messages/A/parts/9"), 404)
        self.json(request("api/v1/messages/A/parts/x"), 404)

    def test_deleteNeedsHeader(self) -> None:
        """DELETE without X-Mailframe-Request: 1 is refused (a cross-site form cannot send it)."""
        self.add("A")
        self.json(request("api/v1/messages/A", b"DELETE"), 403)
        self.json(request("api/v1/messages", b"DELETE"), 403)
        self.assertEqual(len(self.store), 1)

    def test_delete(self) -> None:
        """DELETE one message, or all of them (or one mailbox's)."""
        h = {b"X-Mailframe-Request": b"1"}
        self.add("A", MULTIPART, "x@one.example")
        self.add("B", MULTIPART, "x@two.example")
        self.add("C", MULTIPART, "x@two.example")
        self.assertEqual(self.json(request("api/v1/messages/A", b"DELETE", h)), {"deleted": 1})
        self.json(request("api/v1/messages/A", b"DELETE", h), 404)
        got = self.json(request("api/v1/messages", b"DELETE", h, mailbox="two.example"))
        self.assertEqual(got, {"deleted": 2})
        self.assertEqual(len(self.store), 0)

    def test_mailboxes(self) -> None:
        """GET mailboxes: each one's name and count."""
        self.add("A", MULTIPART, "x@one.example")
        self.add("B", MULTIPART, "x@two.example")
        self.add("C", MULTIPART, "x@two.example")
        self.assertEqual(
            self.json(request("api/v1/mailboxes")),
            {
                "mailboxes": [
                    {"name": "one.example", "count": 1},
                    {"name": "two.example", "count": 2},
                ]
            },
        )

    def test_notFoundAndMethods(self) -> None:
        """Unknown paths are a JSON 404, other methods a JSON 405."""
        self.json(request("index.html"), 404)
        self.json(request("api/v2/messages"), 404)
        self.json(request("api/v1/messages", b"POST"), 405)
        self.json(request("api/v1/messages/A/raw", b"PUT"), 404)

    def test_waitAlreadyThere(self) -> None:
        """wait answers at once with a matching message already captured."""
        self.add("A")
        self.assertEqual(self.json(request("api/v1/wait", q="café"))["id"], "A")

    def test_waitArrives(self) -> None:
        """wait answers when a matching message arrives."""
        r = request("api/v1/wait", q="to:bob", timeout="60")
        self.assertIs(self.api.render(r), NOT_DONE_YET)
        self.add("X", MULTIPART, "cat@c.example")
        self.assertFalse(r.finished)
        self.clock.advance(30)
        self.add("A", MULTIPART, "bob@b.example")
        self.assertTrue(r.finished)
        self.assertEqual(json.loads(b"".join(r.written))["id"], "A")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_waitTimeout(self) -> None:
        """wait answers 408 after its timeout, and forgets the wait."""
        r = request("api/v1/wait", q="nothing", timeout="2.5")
        self.assertIs(self.api.render(r), NOT_DONE_YET)
        self.clock.advance(2.4)
        self.assertFalse(r.finished)
        self.clock.advance(0.1)
        self.assertEqual(r.responseCode, 408)
        self.assertIn(b"no matching message", b"".join(r.written))
        self.assertEqual(self.store.waiting, 0)

    def test_waitClientGone(self) -> None:
        """A client that goes away stops its wait and its timer; nothing is written."""
        r = request("api/v1/wait", q="nothing", timeout="100")
        self.assertIs(self.api.render(r), NOT_DONE_YET)
        r.processingFailed(Exception("connection lost"))
        self.assertEqual(self.store.waiting, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.add("A")
        self.assertEqual(r.written, [])

    def test_waitBounded(self) -> None:
        """A timeout above 300 s (or not a number) is refused."""
        self.json(request("api/v1/wait", timeout="301"), 400)
        self.json(request("api/v1/wait", timeout="soon"), 400)

    def test_hostHeader(self) -> None:
        """A Host header naming another site (DNS rebinding) is refused; loopback names pass."""
        self.add("A")
        for bad in (b"evil.example", b"evil.example:8025", b"127.0.0.1.evil.example", b"[::2]"):
            self.json(request("api/v1/messages", headers={b"Host": bad}), 403)
        for good in (b"127.0.0.1:8025", b"localhost", b"[::1]:8025", b"127.1.2.3", b"a.localhost"):
            self.json(request("api/v1/messages/A", headers={b"Host": good}))

    def test_endpoints(self) -> None:
        """checkWebEndpoint allows loopback and unix only, never a mail port."""
        self.assertEqual(checkWebEndpoint("unix:/x"), "unix:/x")
        self.assertRaises(ValueError, checkWebEndpoint, "tcp:465:interface=127.0.0.1")
        self.assertRaises(ValueError, checkWebEndpoint, "tcp:8025:interface=192.0.2.1")


class RealSiteTests(TestCase):
    """The API on a real Site on 127.0.0.1, through treq: a long poll answered."""

    @defer.inlineCallbacks
    def test_longPoll(self) -> Any:
        """A wait in flight gets the message that arrives after it started."""
        import treq
        from twisted.internet import reactor
        from twisted.web.client import HTTPConnectionPool

        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)

        store = CaptureStore(reactor)
        site = apiSite(store, reactor)
        site.timeOut = None
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        base = f"http://127.0.0.1:{port.getHost().port}/api/v1"
        waiting = treq.get(f"{base}/wait?q=subject:ping&timeout=20", pool=pool)
        yield deferLater(reactor, 0.1)
        store.add(envelope(queueID="P"), b"Subject: ping\r\n\r\nbody\r\n")
        response = yield waiting
        self.assertEqual(response.code, 200)
        body = yield response.json()
        self.assertEqual(body["id"], "P")
        listing = yield treq.get(f"{base}/messages", pool=pool)
        self.assertEqual((yield listing.json())["total"], 1)


def deferLater(reactor: Any, seconds: float) -> defer.Deferred[None]:
    from twisted.internet.task import deferLater as later

    return later(reactor, seconds, lambda: None)


class EndToEndTests(SynchronousTestCase):
    """twistd -n mailframe --capture --web, swaks to any domain, the API's wait sees it."""

    def test_swaksToWait(self) -> None:
        """A message swaks sends to an arbitrary domain answers a long poll begun before."""
        from tests.interop._mailpeers import Twistd, freePort, listening, scratch
        from tests.interop._support import SWAKS

        if not os.path.exists(SWAKS):
            from tests.interop._mailpeers import unavailable

            raise unavailable("swaks is missing (Debian package swaks)")
        directory = scratch("mailframe-capture-")
        self.addCleanup(shutil.rmtree, directory, True)
        smtp, web = freePort(), freePort()
        twistd = Twistd(
            directory,
            "--capture",
            "--listen",
            f"tcp:{smtp}:interface=127.0.0.1",
            "--web",
            f"tcp:{web}:interface=127.0.0.1",
        )
        self.addCleanup(twistd.stop)
        twistd.start(lambda: listening(smtp) and listening(web))
        self.assertIn("CAPTURE MODE", twistd.text())
        got: list[Any] = []

        def poll() -> None:
            url = f"http://127.0.0.1:{web}/api/v1/wait?q=subject:e2e-capture&timeout=30"
            try:
                with urllib.request.urlopen(url, timeout=40) as response:
                    got.append(json.load(response))
            except (OSError, urllib.error.URLError) as e:
                got.append(e)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        import subprocess

        done = subprocess.run(
            [SWAKS, "--server", f"127.0.0.1:{smtp}", "--from", "app@dev.example",
             "--to", "someone@anywhere.invalid", "--header", "Subject: e2e-capture",
             "--timeout", "20"],
            capture_output=True, timeout=60, env={"PATH": "/usr/bin:/bin", "HOME": str(directory)},
        )  # fmt: skip
        self.assertEqual(done.returncode, 0, done.stdout[-2000:])
        poller.join(45)
        self.assertFalse(poller.is_alive())
        [message] = got
        self.assertIsInstance(message, dict, message)
        self.assertEqual(
            message["envelope"]["recipients"][0]["address"], "someone@anywhere.invalid"
        )
        self.assertEqual(message["mailbox"], "anywhere.invalid")
        self.assertEqual(message["subject"], "e2e-capture")
