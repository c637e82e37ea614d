"""
The webhook backend end to end: swaks and smtplib send to a real
C{twistd -n mailframe --deliver webhook:http://127.0.0.1:PORT/...}, which
posts to the consumers of docs/examples (twisted.web, and the standard
library's http.server) run as programs, or to a small receiver of the
test's own that refuses what it is told to.

  - the message arrives byte for byte, with its envelope, signed (the
    consumers refuse a bad signature: a wrong secret is never delivered);
  - without --spool the 250 comes only once the consumer has the message,
    451 while it is down, 554 for a status listed in refuse=;
  - with --spool, the consumer down and killed under a load of a few
    hundred messages, then started: every message answered 250 arrives;
  - a SIGKILL of mailframe under load loses nothing answered 250;
  - a refused message comes back to its sender as a bounce.

Everything listens on 127.0.0.1; every wait has a deadline, every socket a
timeout.  Owns: nothing of mailframe.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import smtplib
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.interop._mailpeers import (
    HOST,
    REPO,
    STOP_TIMEOUT,
    Twistd,
    freePort,
    heldBy,
    listening,
    scratch,
    stopProcess,
    unavailable,
    waitFor,
)

SWAKS = shutil.which("swaks") or "/usr/bin/swaks"
EXAMPLES = REPO / "docs" / "examples"
CONSUMERS = {
    "twisted": EXAMPLES / "webhook_consumer_twisted.py",
    "plain": EXAMPLES / "webhook_consumer.py",
}
SOCKET_TIMEOUT = 20.0
SECRET = b"a shared secret for the tests\n"
LOAD = 300
"""Messages sent in the load tests."""

MESSAGE = (
    b"From: Sender <s@x.example>\r\n"
    b"To: ann@x.example\r\n"
    b"Subject: webhook interop\r\n"
    b"Message-ID: <interop@x.example>\r\n"
    b"\r\n"
    b"Hello application.\r\n"
    b".a line that starts with a dot\r\n"
    b"\xc3\xa9 8-bit text\r\n"
)

# A receiver of the test's own: 422 for a message whose Subject says
# "refuse me" (unless it is a bounce, from <>), else 200, every body kept
# as N.eml (the bounce, here).
REFUSING = r"""
import http.server, itertools, os, sys
port, store = int(sys.argv[1]), sys.argv[2]
numbers = itertools.count()
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        bounce = not self.headers["X-Mailframe-Sender"]
        code = 422 if b"Subject: refuse me" in body and not bounce else 200
        if code == 200:
            with open(os.path.join(store, "%d.eml" % next(numbers)), "wb") as f:
                f.write(body)
        text = b"no such ticket queue\n" if code == 422 else b"ok\n"
        self.send_response(code)
        self.send_header("Content-Length", str(len(text)))
        self.end_headers()
        self.wfile.write(text)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""


class Consumer:
    """An example consumer (or the refusing receiver) as a program of its own."""

    def __init__(self, home: Path, kind: str, port: int, secret: Path) -> None:
        self.home = home
        self.kind = kind
        self.port = port
        self.secret = secret
        self.store = home / f"store-{kind}"
        self.store.mkdir(exist_ok=True)
        self.output = home / f"consumer-{kind}.out"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if self.kind == "refusing":
            command = [sys.executable, "-c", REFUSING, str(self.port), str(self.store)]
        else:
            command = [sys.executable, str(CONSUMERS[self.kind]), "--port", str(self.port),
                       "--secret-file", str(self.secret), "--store", str(self.store)]  # fmt: skip
        with open(self.output, "ab") as out:
            self.process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        process = self.process

        def up() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"the consumer exited:\n{self.text()}")
            return heldBy(process.pid, self.port)  # this one, not a server on a reused port

        waitFor(up, 30, f"the {self.kind} consumer to listen")

    def kill(self) -> None:
        """SIGKILL, as a crash."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(STOP_TIMEOUT)

    def stop(self) -> None:
        if self.process is not None:
            stopProcess(self.process)

    def text(self) -> str:
        return self.output.read_text(errors="replace") if self.output.exists() else ""

    def messages(self) -> list[bytes]:
        """The messages kept (raw format), complete ones only."""
        out = []
        for path in self.store.glob("*.eml"):
            if self.kind == "refusing" or path.with_suffix(".json").exists():
                with contextlib.suppress(FileNotFoundError):
                    out.append(path.read_bytes())
        return out

    def envelopes(self) -> list[Any]:
        return [json.loads(p.read_bytes()) for p in self.store.glob("*.json")]


def tokens(messages: list[bytes]) -> set[str]:
    found = set()
    for m in messages:
        match = re.search(rb"\r\nX-Token: (t-\d+)\r\n", m)
        if match:
            found.add(match.group(1).decode())
    return found


def numbered(n: int) -> bytes:
    return (
        b"From: s@x.example\r\nTo: ann@x.example\r\nX-Token: t-%d\r\n"
        b"Subject: load %d\r\n\r\nMessage number %d.\r\n" % (n, n, n)
    )


class Load:
    """
    Senders in threads, each message with its token, sent again until it is
    answered 250 (within a deadline); remembers those answered 250.
    """

    def __init__(self, port: int, count: int, threads: int = 4) -> None:
        self.port = port
        self.pending = list(range(count))
        self.lock = threading.Lock()
        self.acknowledged: set[str] = set()
        self.refused = 0
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(threads)]

    def start(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def next(self) -> int | None:
        with self.lock:
            return self.pending.pop(0) if self.pending else None

    def run(self) -> None:
        deadline = time.monotonic() + 180
        n = self.next()
        while n is not None and time.monotonic() < deadline:
            try:
                with smtplib.SMTP(HOST, self.port, timeout=SOCKET_TIMEOUT) as client:
                    while n is not None:
                        client.sendmail("s@x.example", ["ann@x.example"], numbered(n))
                        with self.lock:
                            self.acknowledged.add(f"t-{n}")
                        n = self.next()
            except (OSError, smtplib.SMTPException):
                # not answered 250 (the server was killed, or is starting):
                # the same message again, which may then arrive twice
                with self.lock:
                    self.refused += 1
                threading.Event().wait(0.1)

    @property
    def done(self) -> bool:
        return not any(t.is_alive() for t in self.threads)

    def join(self) -> None:
        waitFor(lambda: self.done, 200, "the senders to finish", 0.1)


class WebhookInteropTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.home = scratch("mailframe-webhook-")
        self.addCleanup(shutil.rmtree, self.home, True)
        self.secret = self.home / "webhook.key"
        self.secret.write_bytes(SECRET)
        self.secret.chmod(0o600)

    def consumer(self, kind: str, start: bool = True) -> Consumer:
        consumer = Consumer(self.home, kind, freePort(), self.secret)
        self.addCleanup(consumer.stop)
        if start:
            consumer.start()
        return consumer

    def mailframe(self, consumer: Consumer, *args: str, options: str = "format=raw") -> Twistd:
        port = freePort()
        url = f"http://{HOST}:{consumer.port}/inbound?token=abc"
        server = Twistd(self.home, "--listen", f"tcp:{port}:interface={HOST}",
                        "--hostname", "mx.test", "--domain", "x.example",
                        "--deliver", f"webhook:{url}:secret={self.secret}:{options}",
                        *args)  # fmt: skip
        self.addCleanup(server.stop)
        server.start(lambda: listening(port))
        self.port = port
        return server

    def swaks(self, *args: str) -> str:
        if not os.path.exists(SWAKS):
            raise unavailable("swaks is not installed")
        data = self.home / "message.eml"
        data.write_bytes(MESSAGE[:-2])  # swaks ends the data with a line end of its own
        result = subprocess.run(
            [SWAKS, "--server", f"{HOST}:{self.port}", "--from", "s@x.example",
             "--to", "ann@x.example,bob@x.example", "--data", str(data), *args],
            capture_output=True, timeout=60, check=False,
        )  # fmt: skip
        text = result.stdout.decode(errors="replace")
        self.assertEqual(result.returncode, 0, text + result.stderr.decode(errors="replace"))
        return text

    def checkArrived(self, consumer: Consumer) -> None:
        """One copy of MESSAGE, its Received: field above it, its envelope beside it."""
        waitFor(lambda: consumer.messages(), 60, "the message at the consumer", 0.1)
        [stored] = consumer.messages()
        self.assertTrue(stored.endswith(MESSAGE), stored[-300:])
        self.assertTrue(stored.startswith(b"Received: from "), stored[:200])
        self.assertEqual(stored.count(b"by mx.test (mailframe)"), 1)
        [envelope] = consumer.envelopes()
        self.assertEqual(envelope["sender"], "s@x.example")
        recipients = [r["address"] for r in envelope["recipients"]]
        self.assertEqual(recipients, ["ann@x.example", "bob@x.example"])
        line = "from <s@x.example> to <ann@x.example>, <bob@x.example>: webhook interop"
        waitFor(lambda: line in consumer.text(), 10, "the consumer's line")  # printed after

    def test_swaksTwisted(self) -> None:
        """swaks -> mailframe --spool -> the twisted.web consumer: byte for byte, with its envelope."""
        consumer = self.consumer("twisted")
        self.mailframe(consumer, "--spool", "spool")
        self.swaks()
        self.checkArrived(consumer)

    def test_swaksPlain(self) -> None:
        """swaks -> mailframe --spool -> the http.server consumer: byte for byte, with its envelope."""
        consumer = self.consumer("plain")
        self.mailframe(consumer, "--spool", "spool")
        self.swaks()
        self.checkArrived(consumer)

    def test_json(self) -> None:
        """format=json to each consumer: the document has the envelope, client and text."""
        for kind in CONSUMERS:
            consumer = self.consumer(kind)
            server = self.mailframe(consumer, options="format=json")
            with smtplib.SMTP(HOST, self.port, timeout=SOCKET_TIMEOUT) as client:
                client.ehlo("client.test")
                self.assertEqual(client.sendmail("s@x.example", ["ann@x.example"], MESSAGE), {})
            [document] = consumer.envelopes()  # kept before the 250
            server.stop()
            self.assertEqual(document["subject"], "webhook interop")
            self.assertEqual(document["envelope"]["recipients"][0]["address"], "ann@x.example")
            self.assertEqual(document["client"]["helo"], "client.test")
            self.assertEqual(document["client"]["address"], HOST)
            self.assertIn("Hello application.\n", document["text"])

    def test_withoutSpool(self) -> None:
        """Without --spool: 250 once the consumer has the message; 451 while it is down."""
        consumer = self.consumer("plain")
        self.mailframe(consumer)
        with smtplib.SMTP(HOST, self.port, timeout=SOCKET_TIMEOUT) as client:
            self.assertEqual(client.sendmail("s@x.example", ["ann@x.example"], MESSAGE), {})
            [stored] = consumer.messages()  # kept before the 250
            self.assertTrue(stored.endswith(b"\r\n" + MESSAGE), stored[-300:])
            consumer.stop()
            with self.assertRaises(smtplib.SMTPDataError) as caught:
                client.sendmail("s@x.example", ["ann@x.example"], MESSAGE)
            self.assertEqual(caught.exception.smtp_code, 451)
            self.assertIn(b"4.4.1 Cannot reach the application", caught.exception.smtp_error)

    def test_wrongSecret(self) -> None:
        """Each consumer answers 401 to another secret: listed in refuse=, the client gets 554."""
        self.secret.write_bytes(b"not the consumers' secret")
        for kind in CONSUMERS:
            consumer = Consumer(self.home, kind, freePort(), self.home / "consumer.key")
            consumer.secret.write_bytes(SECRET)
            self.addCleanup(consumer.stop)
            consumer.start()
            server = self.mailframe(consumer, options="format=raw:refuse=401,422")
            with (
                smtplib.SMTP(HOST, self.port, timeout=SOCKET_TIMEOUT) as client,
                self.assertRaises(smtplib.SMTPDataError) as caught,
            ):
                client.sendmail("s@x.example", ["ann@x.example"], MESSAGE)
            server.stop()
            self.assertEqual(caught.exception.smtp_code, 554)
            self.assertIn(b"(HTTP 401): bad signature", caught.exception.smtp_error)
            self.assertEqual(consumer.messages(), [])

    def test_bounce(self) -> None:
        """With --spool a refused message comes back to its sender as a bounce with the reason."""
        consumer = self.consumer("refusing")
        server = self.mailframe(consumer, "--spool", "spool", options="format=raw:refuse=422")
        refuse = MESSAGE.replace(b"Subject: webhook interop", b"Subject: refuse me")
        with smtplib.SMTP(HOST, self.port, timeout=SOCKET_TIMEOUT) as client:
            self.assertEqual(client.sendmail("s@x.example", ["ann@x.example"], refuse), {})
        try:
            waitFor(lambda: consumer.messages(), 60, "the bounce", 0.1)
        except AssertionError:
            raise AssertionError(server.text() + consumer.text()) from None
        [bounce] = consumer.messages()
        self.assertIn(b"multipart/report", bounce)
        self.assertIn(b"(HTTP 422): no such ticket queue", bounce)
        self.assertIn(b"Final-Recipient: rfc822; ann@x.example", bounce)

    def test_consumerDown(self) -> None:
        """With --spool, the consumer down, killed, then up again under load: all 250s arrive."""
        consumer = self.consumer("twisted", start=False)
        self.mailframe(consumer, "--spool", "spool", "--retry-initial", "1s",
                       "--retry-max", "2s", options="format=raw:timeout=5s")  # fmt: skip
        load = Load(self.port, LOAD).start()
        waitFor(lambda: len(load.acknowledged) >= LOAD // 3 or load.done, 120, "a third sent")
        consumer.start()
        waitFor(lambda: tokens(consumer.messages()), 60, "the first arrivals", 0.2)
        consumer.kill()
        waitFor(lambda: len(load.acknowledged) >= 2 * LOAD // 3 or load.done, 120, "more sent")
        consumer.start()
        threading.Event().wait(0.5)
        consumer.kill()
        load.join()
        consumer.start()
        self.assertEqual(len(load.acknowledged), LOAD)  # the spool took every one
        missing = lambda: load.acknowledged - tokens(consumer.messages())  # noqa: E731
        waitFor(lambda: not missing(), 120, "every acknowledged message at the consumer", 0.5)
        queue = self.home / "spool" / "queue"
        waitFor(lambda: not any(queue.iterdir()), 30, "the spool to empty", 0.2)

    def test_sigkill(self) -> None:
        """SIGKILL of mailframe --spool twice under load: nothing answered 250 is lost."""
        consumer = self.consumer("plain")
        server = self.mailframe(consumer, "--spool", "spool", "--retry-initial", "1s",
                                "--retry-max", "2s")  # fmt: skip
        load = Load(self.port, LOAD).start()
        for step in (1, 2):
            enough = step * LOAD // 3
            waitFor(lambda: len(load.acknowledged) >= enough or load.done, 120,  # noqa: B023
                    "messages sent")  # fmt: skip
            assert server.process is not None
            server.process.send_signal(signal.SIGKILL)
            server.process.wait(STOP_TIMEOUT)
            server.start(lambda: listening(self.port))
        load.join()
        self.assertEqual(len(load.acknowledged), LOAD)
        missing = lambda: load.acknowledged - tokens(consumer.messages())  # noqa: E731
        waitFor(lambda: not missing(), 120, "every acknowledged message at the consumer", 0.5)
        queue = self.home / "spool" / "queue"
        waitFor(lambda: not any(queue.iterdir()), 60, "the spool to empty", 0.2)
