"""Tests for mailframe.testing: the capture server for test suites, in trial and synchronously."""

from __future__ import annotations

import json
import time
import urllib.request
from email.message import EmailMessage
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mailframe.testing import CaptureServer, captureServer


def letter(subject: str) -> EmailMessage:
    m = EmailMessage()
    m["From"] = "app@dev.example"
    m["To"] = "user@customer.example"
    m["Subject"] = subject
    m.set_content("Welcome!\n")
    return m


class TrialTests(TestCase):
    """CaptureServer in a trial test, on the running reactor."""

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        from twisted.internet import reactor

        self.server = CaptureServer(reactor)
        yield self.server.start()
        self.addCleanup(self.server.stop)

    @defer.inlineCallbacks
    def test_sendAndWait(self) -> Any:
        """A message sent to any domain is waited for and found."""
        waiting = self.server.waitForMessage("subject:welcome to:customer", timeout=20)
        yield self.server.send("app@dev.example", ["user@customer.example"], letter("Welcome"))
        found = yield waiting
        self.assertEqual(found.subject, "Welcome")
        self.assertEqual(found.recipients, ["user@customer.example"])
        self.assertEqual(found.mailbox, "customer.example")
        self.assertEqual([m.id for m in self.server.messages("welcome")], [found.id])

    @defer.inlineCallbacks
    def test_bytes(self) -> Any:
        """send takes bytes too, and several recipients of several domains."""
        data = b"Subject: raw one\r\n\r\nbody\r\n"
        yield self.server.send("a@dev.example", ["x@one.example", "y@two.example"], data)
        found = yield self.server.waitForMessage("subject:raw", timeout=5)
        self.assertEqual(found.recipients, ["x@one.example", "y@two.example"])
        self.assertIn(b"Subject: raw one", found.data)

    def test_timeout(self) -> defer.Deferred[Any]:
        """waitForMessage fails with TimeoutError when nothing matching comes."""
        d = self.server.waitForMessage("subject:never", timeout=0.1)
        return self.assertFailure(d, DeferredTimeout)


class SynchronousTests(SynchronousTestCase):
    """captureServer() from plain synchronous code (as pytest would use it)."""

    def test_sendAndWait(self) -> None:
        """send blocks until the server has it; waitForMessage returns it; the API serves it."""
        with captureServer() as server:
            server.send("app@dev.example", ["user@customer.example"], letter("Hi sync"))
            found = server.waitForMessage("subject:sync", timeout=10)
            self.assertEqual(found.subject, "Hi sync")
            self.assertEqual(len(server.messages()), 1)
            url = f"{server.apiURL}/messages/{found.id}"
            with urllib.request.urlopen(url, timeout=10) as response:
                self.assertEqual(json.load(response)["text"], "Welcome!\n")
            self.assertEqual(server.clear(), 1)

    def test_timeout(self) -> None:
        """waitForMessage raises TimeoutError, after about its timeout."""
        with captureServer() as server:
            start = time.monotonic()
            self.assertRaises(TimeoutError, server.waitForMessage, "subject:never", 0.2)
            self.assertLess(time.monotonic() - start, 5)

    def test_stops(self) -> None:
        """After the block, nothing listens on its ports any more."""
        import socket

        with captureServer() as server:
            port = server.smtpPort
        with socket.socket() as s:
            self.assertNotEqual(s.connect_ex(("127.0.0.1", port)), 0)
