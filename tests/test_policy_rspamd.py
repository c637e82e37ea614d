"""
The rspamd filter (mailframe.policy.rspamd) with a fake HTTP request: what
it tells rspamd, each action applied, rspamd's milter header changes, and
what a failure does.  The real rspamd is in tests/interop/test_milter_interop.py.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from mailframe.app import registry
from mailframe.config import ProviderContext, ServerConfig
from mailframe.envelope import TLSInfo
from mailframe.interfaces import IMessageFilter
from mailframe.plugins import PlugInError
from mailframe.policy.rspamd import RspamdFilter
from mailframe.policy.testing import makeEnvelope, makeMessage, makeSession
from mailframe.reply import Reply

DATA = b"From: a@example.org\r\nSubject: hello\r\nX-Old: 1\r\nX-Old: 2\r\n\r\nbody\r\n"
TRACE = b"Received: from client by mx\r\n"


class FakeResponse:
    def __init__(self, code: int, body: bytes) -> None:
        self.code = code
        self.body = body

    def content(self) -> defer.Deferred[bytes]:
        return defer.succeed(self.body)


class FakeRequest:
    def __init__(self, answer: Any = None, code: int = 200, error: Exception | None = None):
        self.answer = answer
        self.code = code
        self.error = error
        self.calls: list[dict[str, Any]] = []

    def __call__(self, method: str, url: str, **kwargs: Any) -> defer.Deferred[FakeResponse]:
        self.calls.append({"method": method, "url": url, **kwargs})
        if self.error is not None:
            return defer.fail(self.error)
        body = self.answer if isinstance(self.answer, bytes) else json.dumps(self.answer).encode()
        return defer.succeed(FakeResponse(self.code, body))


def check(answer: Any = None, **kwargs: Any) -> tuple[Reply | None, bytes, FakeRequest, Any]:
    request = FakeRequest(answer, **kwargs)
    f = RspamdFilter("http://127.0.0.1:11333/", Clock(), "mx.test", request=request)
    session = makeSession(authenticated="alice")
    session.tls = TLSInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384")
    envelope = makeEnvelope("a@example.org", "b@example.com", "c@example.com")
    message = makeMessage(DATA)
    message.prependTrace(TRACE)
    results: list[Any] = []
    f.filterMessage(session, envelope, message).addBoth(results.append)
    [result] = results
    return result, message.getvalue(), request, envelope


class RspamdTests(SynchronousTestCase):
    def test_provider(self) -> None:
        """The rspamd: description builds an IMessageFilter; bad options are refused."""
        context = ProviderContext(Clock(), ServerConfig(hostname="mx.test"))
        f = registry.makeFilter("rspamd:url=http\\://127.0.0.1\\:11333:timeout=5s", context)
        self.assertTrue(verifyObject(IMessageFilter, f))
        self.assertEqual(f.url, "http://127.0.0.1:11333/checkv2")
        self.assertRaises(PlugInError, registry.makeFilter, "rspamd:url=ftp\\://x", context)
        self.assertRaises(PlugInError, registry.makeFilter, "rspamd:failure=maybe", context)

    def test_request(self) -> None:
        """POST /checkv2 with the message (not our Received:) and the session's facts."""
        _, _, request, _ = check({"action": "no action", "score": 1.0, "required_score": 15})
        [call] = request.calls
        self.assertEqual((call["method"], call["url"]), ("POST", "http://127.0.0.1:11333/checkv2"))
        self.assertEqual(call["data"], DATA)
        headers = call["headers"]
        self.assertEqual(headers[b"IP"], [b"192.0.2.1"])
        self.assertEqual(headers[b"Helo"], [b"client.example.org"])
        self.assertEqual(headers[b"From"], [b"a@example.org"])
        self.assertEqual(headers[b"Rcpt"], [b"b@example.com", b"c@example.com"])
        self.assertEqual(headers[b"Queue-Id"], [b"Q1"])
        self.assertEqual(headers[b"User"], [b"alice"])
        self.assertEqual(headers[b"TLS-Version"], [b"TLSv1.3"])
        self.assertEqual(headers[b"Hostname"], [b"unknown"])

    def test_refusals(self) -> None:
        """reject is 554 5.7.1 (rspamd's message); soft reject and greylist are 451 4.7.1."""
        reply, _, _, _ = check({"action": "reject", "messages": {"smtp_message": "Gtube pattern"}})
        self.assertEqual(reply, Reply(554, (5, 7, 1), "Gtube pattern"))
        reply, _, _, _ = check({"action": "reject"})
        self.assertEqual(reply, Reply(554, (5, 7, 1), "Spam message rejected"))
        for action in ("soft reject", "greylist"):
            reply, _, _, _ = check({"action": action})
            self.assertEqual(reply, Reply(451, (4, 7, 1), "Try again later"))

    def test_addHeader(self) -> None:
        """add header: X-Spam: Yes and X-Spamd-Result at the end; Received: stays first."""
        reply, data, _, _ = check(
            {
                "action": "add header",
                "score": 7.5,
                "required_score": 15,
                "symbols": {"B": {"score": 1.5}, "A": {"score": 6}},
            }
        )
        self.assertIsNone(reply)
        head = data.partition(b"\r\n\r\n")[0]
        self.assertTrue(head.startswith(TRACE))
        self.assertTrue(
            head.endswith(
                b"X-Spam: Yes\r\nX-Spamd-Result: default: True [7.50 / 15.00];\r\n"
                b"\tA(6.00);\r\n\tB(1.50)"
            ),
            head,
        )

    def test_rewriteSubjectAndMilterHeaders(self) -> None:
        """rewrite subject, and rspamd's milter add_headers / remove_headers."""
        reply, data, _, _ = check(
            {
                "action": "rewrite subject",
                "subject": "*** SPAM *** hello",
                "milter": {
                    "add_headers": {
                        "X-Top": {"value": "first", "order": 0},
                        "X-List": ["a", {"value": "b"}],
                    },
                    "remove_headers": {"X-Old": 1},
                },
            }
        )
        self.assertIsNone(reply)
        self.assertEqual(
            data,
            TRACE + b"X-Top: first\r\nFrom: a@example.org\r\nSubject: *** SPAM *** hello\r\n"
            b"X-Old: 2\r\nX-List: a\r\nX-List: b\r\n\r\nbody\r\n",
        )

    def test_failures(self) -> None:
        """rspamd down, an HTTP error or bad JSON: accept (default) or tempfail; nothing changed."""
        for kwargs in (
            {"error": ConnectionRefusedError("refused")},
            {"answer": {"action": "reject"}, "code": 500},
            {"answer": b"not json"},
        ):
            reply, data, _, _ = check(**kwargs)
            self.assertIsNone(reply)
            self.assertEqual(data, TRACE + DATA)
        self.flushLoggedErrors()

        request = FakeRequest(error=ConnectionRefusedError("refused"))
        f = RspamdFilter("http://x:1", Clock(), "mx", failure="tempfail", request=request)
        message = makeMessage(DATA)
        results: list[Any] = []
        f.filterMessage(
            makeSession(), makeEnvelope("a@b.example", "c@d.example"), message
        ).addBoth(results.append)
        self.assertEqual(results[0].code, 451)
