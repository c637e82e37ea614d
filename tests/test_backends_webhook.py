"""
Tests for L{mailframe.backends.webhook} and its wire format
(L{mailframe.backends._webhookbody}): posts to a twisted.web receiver
listening on 127.0.0.1 in the test's reactor, answering 200, 500, a refusal,
or nothing; a port nobody listens on; a fake client for what a real server
does not do at will (a kept-alive connection closed under a request).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import os
from collections.abc import Callable, Coroutine
from typing import Any

from twisted.internet import defer
from twisted.internet import reactor as _reactor
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface.verify import verifyObject

from mailframe.address import Address, parseMailbox
from mailframe.backends._webhookbody import messageDocument, rawHeaders, sign
from mailframe.backends.factories import webhookBackend
from mailframe.backends.webhook import WebhookBackend, checkURL, readSecret
from mailframe.config import ProviderContext, ServerConfig
from mailframe.envelope import DeliveryResult, Envelope, Recipient, SessionSnapshot, TLSInfo
from mailframe.interfaces import IDeliveryBackend
from mailframe.message import Message

reactor: Any = _reactor
SECRET = b"s3cret-key"

MESSAGE = (
    b"Received: from client.example ([192.0.2.7]) by mx.test\r\n"
    b"Authentication-Results: mx.test; spf=pass smtp.mailfrom=a@b.example\r\n"
    b"From: Ann <a@b.example>\r\n"
    b"To: bob@x.example\r\n"
    b"Subject: =?utf-8?q?caf=C3=A9?= report\r\n"
    b"Message-ID: <1@b.example>\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="B"\r\n'
    b"\r\n"
    b"--B\r\n"
    b'Content-Type: multipart/alternative; boundary="C"\r\n'
    b"\r\n"
    b"--C\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b"Hello caf\xc3\xa9\r\n"
    b"--C\r\n"
    b"Content-Type: text/html; charset=utf-8\r\n"
    b"\r\n"
    b"<p>Hello</p>\r\n"
    b"--C--\r\n"
    b"--B\r\n"
    b'Content-Type: application/pdf; name="r.pdf"\r\n'
    b'Content-Disposition: attachment; filename="r.pdf"\r\n'
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n"
    b"JVBERi0xLjQKJcfs\r\n"
    b"--B--\r\n"
)


def envelope(*recipients: str, sender: str = "a@b.example", **params: str) -> Envelope:
    session = SessionSnapshot(
        sessionID="S1",
        peerHost="192.0.2.7",
        peerPort=40000,
        localHost="127.0.0.1",
        localPort=25,
        hostname="mx.test",
        heloName="client.example",
        protocol="ESMTPSA",
        tls=TLSInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384"),
        authenticated="ann",
        authMechanism="PLAIN",
    )
    return Envelope(
        "Q1",
        parseMailbox(sender) if sender else Address.null(),
        params,
        [Recipient(parseMailbox(r), {"NOTIFY": "FAILURE"}) for r in recipients],
        session=session,
    )


def message(data: bytes = MESSAGE, spill: int = 1 << 20) -> Message:
    m = Message(spillThreshold=spill)
    m.write(data)
    m.finish()
    return m


def verify(
    secret: bytes, headers: Any, body: bytes, name: bytes = b"x-mailframe-signature"
) -> bool:
    """The documented check: t and v1 of the header, HMAC-SHA256 of t "." body."""
    value = headers.getRawHeaders(name)[0].decode()
    fields = dict(item.split("=", 1) for item in value.split(","))
    expected = hmac.new(secret, fields["t"].encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, fields["v1"])


def asyncTest(
    f: Callable[..., Coroutine[Any, Any, None]],
) -> Callable[..., defer.Deferred[None]]:
    @functools.wraps(f)
    def run(self: Any) -> defer.Deferred[None]:
        return defer.ensureDeferred(f(self))

    return run


class Receiver(Resource):
    """Answers each POST as C{answers} says (next in the list, else C{mode}) and keeps it."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.mode = "ok"
        self.answers: list[str] = []
        self.requests: list[tuple[Any, bytes]] = []
        self.hanging: list[Request] = []

    def render_POST(self, request: Request) -> bytes | int:
        assert request.content is not None
        self.requests.append((request.requestHeaders, request.content.read()))
        mode = self.answers.pop(0) if self.answers else self.mode
        if mode == "hang":
            self.hanging.append(request)
            return NOT_DONE_YET
        if mode == "refuse":
            request.setResponseCode(422)
            return b"no such list\r\nsecond line\r\n"
        if mode == "fail":
            request.setResponseCode(500)
            return b"database down"
        if mode == "redirect":
            request.setResponseCode(302)
            request.setHeader(b"Location", b"http://127.0.0.1:1/elsewhere")
            return b""
        request.setResponseCode(202 if mode == "accepted" else 200)
        return b"ok"


class WebhookTests(TestCase):
    def setUp(self) -> None:
        self.receiver = Receiver()
        site = Site(self.receiver)
        site.noisy = False
        site.log = lambda request: None  # type: ignore[method-assign]
        self.port: Any = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.url = f"http://127.0.0.1:{self.port.getHost().port}/inbound?token=t0k"

    def backend(self, **kwargs: Any) -> WebhookBackend:
        kwargs.setdefault("secret", SECRET)
        backend = WebhookBackend(reactor, kwargs.pop("url", self.url), **kwargs)
        self.addCleanup(backend.close)
        self.addCleanup(self.finishHanging)
        return backend

    def finishHanging(self) -> None:
        for request in self.receiver.hanging:
            if not request.finished and request.channel is not None:
                request.channel.transport.abortConnection()  # type: ignore[union-attr]

    def codes(
        self, result: DeliveryResult | None
    ) -> list[tuple[int, tuple[int, int, int] | None]]:
        assert result is not None
        return [(r.code, r.enhanced) for r in result.replies]

    def test_interface(self) -> None:
        """WebhookBackend provides IDeliveryBackend."""
        verifyObject(IDeliveryBackend, self.backend())

    @asyncTest
    async def test_json(self) -> None:
        """A 200 delivers every recipient; the JSON body has the envelope, client and parts."""
        backend = self.backend()
        result = await backend.deliver(
            envelope("bob@x.example", "carol@x.example", RET="HDRS", ENVID="e1"), message()
        )
        self.assertEqual(self.codes(result), [(250, (2, 0, 0))] * 2)
        [(headers, body)] = self.receiver.requests
        self.assertEqual(headers.getRawHeaders(b"content-type"), [b"application/json"])
        self.assertEqual(headers.getRawHeaders(b"x-mailframe-queue-id"), [b"Q1"])
        self.assertTrue(verify(SECRET, headers, body))
        document = json.loads(body)
        self.assertEqual(document["id"], "Q1")
        self.assertEqual(document["envelope"]["sender"], "a@b.example")
        self.assertEqual(document["envelope"]["parameters"], {"RET": "HDRS", "ENVID": "e1"})
        self.assertEqual(
            [r["address"] for r in document["envelope"]["recipients"]],
            ["bob@x.example", "carol@x.example"],
        )
        self.assertEqual(
            document["envelope"]["recipients"][0]["parameters"], {"NOTIFY": "FAILURE"}
        )
        client = document["client"]
        self.assertEqual((client["address"], client["helo"], client["authenticated"]),
                         ("192.0.2.7", "client.example", "ann"))  # fmt: skip
        self.assertEqual(client["tls"]["version"], "TLSv1.3")
        self.assertEqual(
            document["authenticationResults"], ["mx.test; spf=pass smtp.mailfrom=a@b.example"]
        )
        self.assertEqual(document["subject"], "café report")
        self.assertEqual(document["text"], "Hello café")
        self.assertEqual(document["html"], "<p>Hello</p>")
        [attachment] = document["attachments"]
        self.assertEqual(attachment["filename"], "r.pdf")
        self.assertEqual(attachment["contentType"], "application/pdf")
        self.assertEqual(base64.b64decode(attachment["content"]), b"%PDF-1.4\n%\xc7\xec")
        self.assertEqual(document["size"], len(MESSAGE))
        self.assertNotIn("message", document)
        self.assertEqual(document["headers"][2], ["From", "Ann <a@b.example>"])

    @asyncTest
    async def test_jsonOriginal(self) -> None:
        """message=yes: the whole message in base64 too, byte-exact."""
        backend = self.backend(original=True)
        await backend.deliver(envelope("bob@x.example"), message())
        document = json.loads(self.receiver.requests[0][1])
        self.assertEqual(base64.b64decode(document["message"]), MESSAGE)

    @asyncTest
    async def test_raw(self) -> None:
        """format=raw: the message byte-exact, the envelope in headers, both signed."""
        backend = self.backend(format="raw")
        result = await backend.deliver(envelope("bob@x.example", "carol@x.example"), message())
        self.assertEqual(self.codes(result), [(250, (2, 0, 0))] * 2)
        [(headers, body)] = self.receiver.requests
        self.assertEqual(body, MESSAGE)
        self.assertEqual(headers.getRawHeaders(b"content-type"), [b"message/rfc822"])
        self.assertEqual(headers.getRawHeaders(b"x-mailframe-sender"), [b"a@b.example"])
        self.assertEqual(
            headers.getRawHeaders(b"x-mailframe-recipients"), [b"bob@x.example, carol@x.example"]
        )
        self.assertEqual(headers.getRawHeaders(b"x-mailframe-client-address"), [b"192.0.2.7"])
        self.assertTrue(verify(SECRET, headers, body))
        encoded = headers.getRawHeaders(b"x-mailframe-envelope")[0]
        self.assertTrue(verify(SECRET, headers, encoded, b"x-mailframe-envelope-signature"))
        self.assertFalse(verify(SECRET, headers, body + b"x"))
        self.assertFalse(verify(b"other", headers, body))
        self.assertEqual(json.loads(encoded)["recipients"][1]["address"], "carol@x.example")

    @asyncTest
    async def test_nullSender(self) -> None:
        """The null sender is an empty X-Mailframe-Sender and an empty sender in JSON."""
        backend = self.backend(format="raw")
        await backend.deliver(envelope("bob@x.example", sender=""), message())
        headers, _ = self.receiver.requests[0]
        self.assertEqual(headers.getRawHeaders(b"x-mailframe-sender"), [b""])
        self.assertEqual(
            json.loads(headers.getRawHeaders(b"x-mailframe-envelope")[0])["sender"], ""
        )

    @asyncTest
    async def test_unsigned(self) -> None:
        """Without a secret there is no signature header."""
        backend = self.backend(secret=None)
        result = await backend.deliver(envelope("bob@x.example"), message())
        self.assertEqual(self.codes(result), [(250, (2, 0, 0))])
        headers, _ = self.receiver.requests[0]
        self.assertIsNone(headers.getRawHeaders(b"x-mailframe-signature"))

    @asyncTest
    async def test_each(self) -> None:
        """each=yes: one request per recipient, each with its own answer."""
        self.receiver.answers = ["ok", "fail"]
        backend = self.backend(each=True, connections=1)
        result = await backend.deliver(envelope("bob@x.example", "carol@x.example"), message())
        self.assertEqual(self.codes(result), [(250, (2, 0, 0)), (451, (4, 3, 0))])
        recipients = [
            [r["address"] for r in json.loads(body)["envelope"]["recipients"]]
            for _, body in self.receiver.requests
        ]
        self.assertEqual(recipients, [["bob@x.example"], ["carol@x.example"]])

    @asyncTest
    async def test_accepted(self) -> None:
        """Any 2xx (202 here) is delivered."""
        self.receiver.mode = "accepted"
        result = await self.backend().deliver(envelope("bob@x.example"), message())
        self.assertEqual(self.codes(result), [(250, (2, 0, 0))])

    @asyncTest
    async def test_serverError(self) -> None:
        """A 500 is a 451 for every recipient, with the status and the first line of the answer."""
        self.receiver.mode = "fail"
        result = await self.backend().deliver(
            envelope("bob@x.example", "carol@x.example"), message()
        )
        self.assertEqual(self.codes(result), [(451, (4, 3, 0))] * 2)
        assert result is not None
        self.assertEqual(
            result.replies[0].text, "The application answered HTTP 500: database down"
        )
        self.assertEqual(result.remote, (f"127.0.0.1:{self.port.getHost().port}",) * 2)

    @asyncTest
    async def test_refused(self) -> None:
        """A status listed in refuse is a 554 for good, with the answer's first line."""
        self.receiver.mode = "refuse"
        result = await self.backend(refuse={400, 422}).deliver(
            envelope("bob@x.example"), message()
        )
        assert result is not None
        self.assertEqual(self.codes(result), [(554, (5, 0, 0))])
        self.assertEqual(
            result.replies[0].text,
            "The application refused the message (HTTP 422): no such list",
        )

    @asyncTest
    async def test_notListedRetried(self) -> None:
        """A 4xx status not listed in refuse is retried: a 451."""
        self.receiver.mode = "refuse"
        result = await self.backend().deliver(envelope("bob@x.example"), message())
        self.assertEqual(self.codes(result), [(451, (4, 3, 0))])

    @asyncTest
    async def test_redirect(self) -> None:
        """A redirect is not followed: a 451."""
        self.receiver.mode = "redirect"
        result = await self.backend().deliver(envelope("bob@x.example"), message())
        self.assertEqual(self.codes(result), [(451, (4, 3, 0))])
        self.assertEqual(len(self.receiver.requests), 1)

    @asyncTest
    async def test_timeout(self) -> None:
        """A receiver that never answers: a 451 4.4.2 after the timeout, the request aborted."""
        self.receiver.mode = "hang"
        backend = self.backend(timeout=0.3)
        result = await backend.deliver(envelope("bob@x.example"), message())
        self.assertEqual(self.codes(result), [(451, (4, 4, 2))])
        self.assertEqual(len(self.receiver.requests), 1)

    @asyncTest
    async def test_refusedConnection(self) -> None:
        """Nobody listening: a 451 4.4.1 naming the cause."""
        port = self.port.getHost().port
        await self.port.stopListening()
        result = await self.backend().deliver(envelope("bob@x.example"), message())
        self.assertEqual(self.codes(result), [(451, (4, 4, 1))])
        assert result is not None
        self.assertIn("Connection was refused", result.replies[0].text)
        self.assertNotIn(str(port) + "/inbound", result.replies[0].text)

    @asyncTest
    async def test_keptAlive(self) -> None:
        """Several deliveries in a row share a connection and all succeed."""
        backend = self.backend(format="raw")
        for _ in range(5):
            result = await backend.deliver(envelope("bob@x.example"), message())
            self.assertEqual(self.codes(result), [(250, (2, 0, 0))])
        self.assertEqual(len(self.receiver.requests), 5)

    @asyncTest
    async def test_large(self) -> None:
        """A message in a file is signed in a thread and streamed, byte-exact."""
        big = MESSAGE + b"x" * 998 + b"\r\n" + (b"line of text\r\n" * 30000)
        m = message(big, spill=4096)
        self.assertFalse(m.inMemory)
        backend = self.backend(format="raw")
        result = await backend.deliver(envelope("bob@x.example"), m)
        self.assertEqual(self.codes(result), [(250, (2, 0, 0))])
        headers, body = self.receiver.requests[0]
        self.assertEqual(body, big)
        self.assertTrue(verify(SECRET, headers, body))
        result = await self.backend().deliver(envelope("bob@x.example"), m)
        self.assertEqual(self.codes(result), [(250, (2, 0, 0))])
        headers, body = self.receiver.requests[1]
        self.assertTrue(verify(SECRET, headers, body))
        self.assertEqual(json.loads(body)["size"], len(big))

    @asyncTest
    async def test_ownerCloses(self) -> None:
        """The owner closing the message while it is posted: the post is whole; then freed."""
        self.receiver.answers = ["hang"]
        m = message()
        backend = self.backend(format="raw", timeout=0.3)
        d = backend.deliver(envelope("bob@x.example"), m)
        m.close()
        self.assertFalse(m.closed)
        result = await d
        self.assertEqual(self.codes(result), [(451, (4, 4, 2))])
        self.assertTrue(m.closed)
        self.assertEqual(self.receiver.requests[0][1], MESSAGE)

    def test_closedMessage(self) -> None:
        """A message already freed: a 451 at once, nothing sent."""
        m = message()
        m.close()
        result = self.successResultOf(self.backend().deliver(envelope("bob@x.example"), m))
        self.assertEqual(self.codes(result), [(451, (4, 3, 0))])
        self.assertEqual(self.receiver.requests, [])

    def test_noRecipients(self) -> None:
        """No recipients: an empty result, nothing sent."""
        result = self.successResultOf(self.backend().deliver(envelope(), message()))
        self.assertEqual(self.codes(result), [])


class FakeResponse:
    def __init__(self, code: int) -> None:
        self.code = code

    def deliverBody(self, protocol: Any) -> None:
        protocol.makeConnection(None)
        protocol.dataReceived(b"fine")
        protocol.connectionLost(Failure(Exception("done")))


class FakeClient:
    """Fails the first request as a closed kept-alive connection does, then answers 200."""

    def __init__(self, failures: list[Exception]) -> None:
        self.failures = failures
        self.bodies: list[bytes] = []

    def request(self, method: str, url: str, **kwargs: Any) -> defer.Deferred[FakeResponse]:
        producer = kwargs["data"]
        collected: list[bytes] = []

        class Consumer:
            def write(self, data: bytes) -> None:
                collected.append(data)

        producer.startProducing(Consumer())
        self.bodies.append(b"".join(collected))
        if self.failures:
            return defer.fail(self.failures.pop(0))
        return defer.succeed(FakeResponse(200))


class RetryTests(SynchronousTestCase):
    def test_staleConnection(self) -> None:
        """A connection lost before any answer is tried again once, at once."""
        from twisted.web._newclient import ResponseNeverReceived

        client = FakeClient([ResponseNeverReceived([Failure(Exception("closed"))])])
        backend = WebhookBackend(MemoryReactorClock(), "http://app.test/", client=client)
        result = self.successResultOf(backend.deliver(envelope("bob@x.example"), message()))
        assert result is not None
        self.assertEqual([r.code for r in result.replies], [250])
        self.assertEqual(len(client.bodies), 2)
        self.assertEqual(client.bodies[0], client.bodies[1])

    def test_lostTwice(self) -> None:
        """Lost twice: a 451 4.4.1, never a success."""
        from twisted.web._newclient import ResponseNeverReceived

        failures: list[Exception] = [
            ResponseNeverReceived([Failure(Exception("closed"))]) for _ in range(2)
        ]
        client = FakeClient(failures)
        backend = WebhookBackend(MemoryReactorClock(), "http://app.test/", client=client)
        result = self.successResultOf(backend.deliver(envelope("bob@x.example"), message()))
        assert result is not None
        self.assertEqual([(r.code, r.enhanced) for r in result.replies], [(451, (4, 4, 1))])

    def test_unexpectedError(self) -> None:
        """Any other error of the client is a 451, logged."""
        client = FakeClient([RuntimeError("bug")])
        backend = WebhookBackend(MemoryReactorClock(), "http://app.test/", client=client)
        result = self.successResultOf(backend.deliver(envelope("bob@x.example"), message()))
        assert result is not None
        self.assertEqual([r.code for r in result.replies], [451])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class FormatTests(SynchronousTestCase):
    def test_sign(self) -> None:
        """sign() is HMAC-SHA256 of the decimal timestamp, a dot and the body, in hex."""
        expected = hmac.new(b"k", b"1700000000.body", hashlib.sha256).hexdigest()
        self.assertEqual(sign(b"k", 1700000000, b"body"), expected)
        self.assertEqual(sign(b"k", 1700000000, [b"bo", b"dy"]), expected)

    def test_rawHeadersUTF8(self) -> None:
        """UTF-8 addresses are exact in X-Mailframe-Envelope (ASCII JSON)."""
        headers, encoded = rawHeaders(
            envelope("dörte@x.example"), envelope("dörte@x.example").recipients
        )
        self.assertTrue(encoded.isascii())
        self.assertEqual(json.loads(encoded)["recipients"][0]["address"], "dörte@x.example")
        self.assertEqual(headers[b"X-Mailframe-Recipients"], ["dörte@x.example".encode()])

    def test_plainMessage(self) -> None:
        """A message without MIME: its body is the text; no attachments."""
        data = b"Subject: hi\r\n\r\nJust text\r\n"
        document = messageDocument(envelope("b@x.example"), [], data)
        self.assertEqual((document["text"], document["html"]), ("Just text\n", None))
        self.assertEqual(document["attachments"], [])

    def test_brokenMessage(self) -> None:
        """Bad charsets, bad encodings and no header section do not fail the conversion."""
        for data in [
            b"Content-Type: text/plain; charset=nonesuch\r\n\r\n\xff\xfe\r\n",
            b"Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!\r\n",
            b"no header section at all",
            b"Subject: =?bogus?q?x?=\r\n\r\n",
            b'Content-Type: multipart/mixed; boundary="X"\r\n\r\nno parts\r\n',
        ]:
            document = messageDocument(envelope("b@x.example"), [], data)
            json.dumps(document)

    def test_forwardedAndUTF8(self) -> None:
        """A forwarded message is one attachment; UTF-8 header fields are text."""
        data = (
            "Subject: Grüße\r\n".encode()
            + b'Content-Type: multipart/mixed; boundary="B"\r\n\r\n--B\r\n'
            b"Content-Type: text/plain\r\n\r\nsee below\r\n--B\r\n"
            b"Content-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\ninner body\r\n"
            b"--B--\r\n"
        )
        document = messageDocument(envelope("b@x.example"), [], data)
        self.assertEqual(document["subject"], "Grüße")
        self.assertEqual(document["text"], "see below")
        [forwarded] = document["attachments"]
        self.assertEqual(forwarded["contentType"], "message/rfc822")
        self.assertIn(b"inner body", base64.b64decode(forwarded["content"]))

    def test_onlyAttachment(self) -> None:
        """A message that is only an image: no text, one attachment."""
        data = b"Content-Type: image/png\r\nContent-Transfer-Encoding: base64\r\n\r\niVBORw==\r\n"
        document = messageDocument(envelope("b@x.example"), [], data)
        self.assertIsNone(document["text"])
        self.assertEqual(base64.b64decode(document["attachments"][0]["content"]), b"\x89PNG")


class FactoryTests(SynchronousTestCase):
    def test_checkArguments(self) -> None:
        """The URL is the arguments joined again; options are converted and checked."""
        args = webhookBackend.checkArguments(
            "https", "//app.example:8443/in?x=1", refuse="400,410, 422", format="raw"
        )
        self.assertEqual(args["url"], "https://app.example:8443/in?x=1")
        self.assertEqual(args["refuse"], frozenset({400, 410, 422}))
        self.assertEqual((args["format"], args["each"], args["timeout"]), ("raw", False, 30.0))
        for bad in [
            (("ftp", "//x/"), {}),
            (("http", "///nohost"), {}),
            (("http", "//u:p@x/"), {}),
            (("http", "//x/"), {"refuse": "200"}),
            (("http", "//x/"), {"refuse": "4xx"}),
            (("http", "//x/"), {"format": "xml"}),
            (("http", "//x/"), {"secret": "/nonexistent/secret"}),
            (("http", "//x/"), {"bogus": "1"}),
        ]:
            self.assertRaises(ValueError, webhookBackend.checkArguments, *bad[0], **bad[1])

    def test_build(self) -> None:
        """build() reads the secret file (trimmed) and passes the options on."""
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"key\n")
        context = ProviderContext(MemoryReactorClock(), ServerConfig(hostname="mx.example"))
        backend = webhookBackend.makeProvider(
            context, "http", "//app.test/in", secret=path, each="yes", timeout="5s"
        )
        assert isinstance(backend, WebhookBackend)
        verifyObject(IDeliveryBackend, backend)
        self.assertEqual((backend.secret, backend.each, backend.timeout), (b"key", True, 5.0))
        self.assertEqual(backend.name, "http://app.test/in")

    def test_readSecret(self) -> None:
        """An empty secret file is refused."""
        path = self.mktemp()
        open(path, "wb").close()
        self.assertRaises(ValueError, readSecret, path)
        os.remove(path)
        self.assertRaises(OSError, readSecret, path)

    def test_checkURL(self) -> None:
        """checkURL keeps a good URL as it is."""
        self.assertEqual(checkURL("http://127.0.0.1:8080/a?b=c"), "http://127.0.0.1:8080/a?b=c")
        self.assertRaises(ValueError, checkURL, "http://x:99999/")
