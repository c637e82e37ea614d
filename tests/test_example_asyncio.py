"""
Tests for the asyncio example of docs/protocol.rst
(C{docs/examples/asyncio_server.py}): an SMTP server on the sans-IO core
alone.  Its server runs in a thread with its own event loop; clients are
smtplib and raw sockets (pipelined groups, BDAT).  Loaded from its file, as
a reader would; and in a subprocess where twisted, zope and mailframe.server
cannot be imported, it still serves a message.
"""

from __future__ import annotations

import ast
import asyncio
import importlib.util
import json
import os
import smtplib
import socket
import subprocess
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

from twisted.trial.unittest import TestCase

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "docs" / "examples" / "asyncio_server.py"
WAIT = 10.0  # the bound on every wait, in seconds
DOMAIN = "example.org"


def loadExample(name: str = "asyncio_server_example") -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


example = loadExample()


class ServerThread:
    """The example's server on 127.0.0.1, port 0, in a thread with its own loop."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.errors: list[BaseException] = []  # raised by a session: a bug
        self.port = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, name="asyncio-smtp", daemon=True)

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(WAIT):
            raise RuntimeError("the asyncio server did not start")
        if self.errors:
            raise self.errors[0]

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(WAIT)
        if self._thread.is_alive():
            raise RuntimeError("the asyncio server did not stop")

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as e:
            self.errors.append(e)
        finally:
            self._ready.set()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self.server.handle(reader, writer)
        except Exception as e:
            self.errors.append(e)
            raise

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        listener = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = listener.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            listener.close()
            # sessions still open are cancelled when asyncio.run returns
            await asyncio.wait_for(listener.wait_closed(), WAIT)


class Client:
    """A raw SMTP client: lines out, replies (code, lines) in."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        self.file = self.sock.makefile("rb")

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> tuple[int, list[bytes]]:
        lines = []
        while True:
            line = self.file.readline(1024)
            if not line.endswith(b"\r\n"):
                raise AssertionError(f"connection closed or bad reply line: {line!r}")
            lines.append(line[4:-2])
            if line[3:4] == b" ":
                return int(line[:3]), lines

    def replies(self, n: int) -> list[bytes]:
        """The first line of each of the next C{n} replies, code included."""
        out = []
        for _ in range(n):
            code, lines = self.reply()
            out.append(b"%d %s" % (code, lines[0]))
        return out

    def atEOF(self) -> bool:
        return self.file.read(1) == b""


class AsyncioExampleTests(TestCase):
    """The example server, spoken to over TCP."""

    def setUp(self) -> None:
        self.server = example.MailServer(DOMAIN, hostname="mx.example.org")
        self.thread = ServerThread(self.server)
        self.thread.start()
        self.addCleanup(self.checkErrors)
        self.addCleanup(self.thread.stop)

    def checkErrors(self) -> None:
        self.assertEqual(self.thread.errors, [])

    def connect(self) -> Client:
        client = Client(self.thread.port)
        self.addCleanup(client.close)
        code, lines = client.reply()
        self.assertEqual((code, lines), (220, [b"mx.example.org ESMTP mailframe"]))
        return client

    def smtp(self) -> smtplib.SMTP:
        client = smtplib.SMTP("127.0.0.1", self.thread.port, timeout=WAIT)
        self.addCleanup(client.close)
        return client

    def test_smtplib(self) -> None:
        """smtplib sends a message; the recipient of another domain is refused."""
        client = self.smtp()
        code, _ = client.ehlo("client.test")
        self.assertEqual(code, 250)
        for name in ("pipelining", "8bitmime", "enhancedstatuscodes", "chunking"):
            self.assertTrue(client.has_extn(name), name)
        body = "Subject: hello\n\nOne line.\n.A line with a leading dot.\n..\n"
        refused = client.sendmail(
            "alice@sender.test",
            ["bob@example.org", "eve@elsewhere.test", "Carol@EXAMPLE.ORG"],
            body,
        )
        self.assertEqual(refused, {"eve@elsewhere.test": (550, b"5.7.1 Relaying denied")})
        self.assertEqual(client.quit()[0], 221)
        [message] = self.server.messages
        self.assertEqual(message.sender, "alice@sender.test")
        self.assertEqual(message.recipients, ["bob@example.org", "Carol@EXAMPLE.ORG"])
        self.assertEqual(
            bytes(message.data),
            b"Subject: hello\r\n\r\nOne line.\r\n.A line with a leading dot.\r\n..\r\n",
        )

    def test_smtplibAllRefused(self) -> None:
        """Every recipient refused: no message; the session goes on to the next one."""
        client = self.smtp()
        with self.assertRaises(smtplib.SMTPRecipientsRefused):
            client.sendmail("alice@sender.test", ["eve@elsewhere.test"], "Subject: no\n\nx\n")
        self.assertEqual(client.sendmail("alice@sender.test", ["bob@example.org"], "ok\n"), {})
        self.assertEqual(client.quit()[0], 221)
        self.assertEqual([bytes(m.data) for m in self.server.messages], [b"ok\r\n"])

    def test_pipelined(self) -> None:
        """A pipelined group is answered in order; message and QUIT arrive together."""
        client = self.connect()
        client.send(b"EHLO client.test\r\n")
        code, lines = client.reply()
        self.assertEqual(code, 250)
        self.assertEqual(lines[0], b"mx.example.org")
        self.assertIn(b"PIPELINING", lines)
        client.send(
            b"MAIL FROM:<alice@sender.test>\r\n"
            b"RCPT TO:<bob@example.org>\r\n"
            b"RCPT TO:<eve@elsewhere.test>\r\n"
            b"RCPT TO:<Postmaster>\r\n"
            b"DATA\r\n"
        )
        self.assertEqual(
            client.replies(5),
            [
                b"250 2.1.0 Sender OK",
                b"250 2.1.5 Recipient OK",
                b"550 5.7.1 Relaying denied",
                b"250 2.1.5 Recipient OK",
                b"354 End data with <CR><LF>.<CR><LF>",
            ],
        )
        client.send(b"Subject: piped\r\n\r\n..dot\r\n.\r\nQUIT\r\nNOOP\r\n")
        self.assertEqual(
            client.replies(2),
            [b"250 2.0.0 OK queued as 1", b"221 2.0.0 mx.example.org closing connection"],
        )
        self.assertTrue(client.atEOF())  # closed after 221; the NOOP is not answered
        [message] = self.server.messages
        self.assertEqual(message.recipients, ["bob@example.org", "Postmaster"])
        self.assertEqual(bytes(message.data), b"Subject: piped\r\n\r\n.dot\r\n")

    def test_bdat(self) -> None:
        """CHUNKING is advertised: a message in two BDAT chunks, all pipelined."""
        client = self.connect()
        client.send(
            b"EHLO client.test\r\n"
            b"MAIL FROM:<>\r\n"
            b"RCPT TO:<bob@example.org>\r\n"
            b"BDAT 5\r\nHello"
            b"BDAT 9 LAST\r\n, world\r\n"
            b"QUIT\r\n"
        )
        code, lines = client.reply()
        self.assertEqual(code, 250)
        self.assertIn(b"CHUNKING", lines)
        self.assertEqual(
            client.replies(5),
            [
                b"250 2.1.0 Sender OK",
                b"250 2.1.5 Recipient OK",
                b"250 2.0.0 5 octets received",
                b"250 2.0.0 OK queued as 1",
                b"221 2.0.0 mx.example.org closing connection",
            ],
        )
        self.assertTrue(client.atEOF())
        [message] = self.server.messages
        self.assertEqual((message.sender, message.recipients), ("", ["bob@example.org"]))
        self.assertEqual(bytes(message.data), b"Hello, world\r\n")

    def test_refusals(self) -> None:
        """The core's refusals and the example's, interleaved, in order."""
        client = self.connect()
        client.send(
            b"MAIL FROM:<alice@sender.test>\r\n"  # before EHLO: no enhanced codes yet
            b"EHLO client.test\r\n"
        )
        self.assertEqual(client.reply()[0], 503)
        self.assertEqual(client.reply()[0], 250)
        client.send(
            b"DATA\r\n"
            b"MAIL FROM:<alice@sender.test> SIZE=10\r\n"
            b"MAIL FROM:<alice@sender.test> BODY=BINARYMIME\r\n"
            b"MAIL FROM:<alice@sender.test> BODY=8bitmime\r\n"
            b"RCPT TO:<eve@elsewhere.test>\r\n"
            b"DATA\r\n"
            b"RSET\r\n"
            b"VRFY bob\r\n"
            b"NOOP\r\n"
            b"HELP\r\n"
            b"STARTTLS\r\n"
            b"FROBNICATE\r\n"
            b"QUIT\r\n"
        )
        codes = [r[:9] for r in client.replies(13)]
        self.assertEqual(
            codes,
            [
                b"503 5.5.1",
                b"555 5.5.4",
                b"555 5.5.4",
                b"250 2.1.0",
                b"550 5.7.1",
                b"554 5.5.1",
                b"250 2.0.0",
                b"252 2.5.0",
                b"250 2.0.0",
                b"502 5.5.1",
                b"500 5.5.1",
                b"500 5.5.1",
                b"221 2.0.0",
            ],
        )
        self.assertTrue(client.atEOF())
        self.assertEqual(self.server.messages, [])

    def test_timeout(self) -> None:
        """A silent client gets 421 4.4.2, then the server closes."""
        self.server.timeout = 0.2
        client = self.connect()
        client.send(b"EHLO client.test\r\n")
        self.assertEqual(client.reply()[0], 250)
        self.assertEqual(client.replies(1), [b"421 4.4.2 Timeout exceeded, closing connection"])
        self.assertTrue(client.atEOF())

    def test_clientGoesAway(self) -> None:
        """A client that closes mid-message ends its session quietly; nothing is stored."""
        client = self.connect()
        client.send(b"HELO client.test\r\nMAIL FROM:<a@sender.test>\r\n")
        client.send(b"RCPT TO:<bob@example.org>\r\nDATA\r\n")
        self.assertEqual([r[:3] for r in client.replies(4)], [b"250"] * 3 + [b"354"])
        client.send(b"Subject: cut\r\n\r\npart")
        client.close()
        # a new session is served meanwhile, and the first one stored nothing
        other = self.smtp()
        self.assertEqual(other.noop()[0], 250)
        self.assertEqual(other.quit()[0], 221)
        self.assertEqual(self.server.messages, [])


_CHILD = """
import asyncio, importlib.util, json, smtplib, sys

FORBIDDEN = ("twisted", "zope", "mailframe.server")
blocked = []


def forbidden(name):
    return any(name == f or name.startswith(f + ".") for f in FORBIDDEN)


class Blocker:
    def find_spec(self, name, path=None, target=None):
        if forbidden(name):
            blocked.append(name)
            raise ImportError("blocked by the test: " + name)
        return None


for name in list(sys.modules):  # a .pth file may have made namespace stubs (zope)
    if forbidden(name):
        del sys.modules[name]
sys.meta_path.insert(0, Blocker())

spec = importlib.util.spec_from_file_location("asyncio_server", {path!r})
example = importlib.util.module_from_spec(spec)
sys.modules["asyncio_server"] = example
spec.loader.exec_module(example)


def send(port):
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        return client.sendmail("a@sender.test", ["bob@example.org", "x@other.test"], "Hi\\n")


async def main():
    server = example.MailServer("example.org")
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    async with listener:
        port = listener.sockets[0].getsockname()[1]
        refused = await asyncio.wait_for(asyncio.to_thread(send, port), 10)
    return server, refused


server, refused = asyncio.run(main())
print(json.dumps({{
    "blocked": blocked,
    "loaded": sorted(n for n in sys.modules if forbidden(n)),
    "refused": sorted(refused),
    "messages": [[m.sender, m.recipients, bytes(m.data).decode()] for m in server.messages],
}}))
"""


class SansIOTests(TestCase):
    """The example needs neither Twisted nor zope nor mailframe's Twisted server."""

    def runChild(self, code: str) -> subprocess.CompletedProcess[bytes]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        return subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT,
            env=env,
            capture_output=True,
            timeout=60,
            check=False,
        )

    def test_serveWithTwistedBlocked(self) -> None:
        """With twisted, zope and mailframe.server refused on import, the example serves mail."""
        result = self.runChild(_CHILD.format(path=str(EXAMPLE)))
        self.assertEqual(result.returncode, 0, result.stderr.decode("utf-8", "replace"))
        report = json.loads(result.stdout.decode("utf-8").strip().splitlines()[-1])
        self.assertEqual(report["blocked"], [])  # not even tried and caught
        self.assertEqual(report["loaded"], [])
        self.assertEqual(report["refused"], ["x@other.test"])
        self.assertEqual(report["messages"], [["a@sender.test", ["bob@example.org"], "Hi\r\n"]])

    def test_hookBlocks(self) -> None:
        """The subprocess's hook really refuses twisted, zope and mailframe.server."""
        for module in ("twisted", "zope", "mailframe.server"):
            code = _CHILD.format(path=str(EXAMPLE)).replace(
                "spec = ", f"import {module}\nspec = ", 1
            )
            result = self.runChild(code)
            self.assertNotEqual(result.returncode, 0)
            self.assertIn(f"blocked by the test: {module}".encode(), result.stderr)

    def test_importsInSource(self) -> None:
        """The example imports the standard library, mailframe.protocol and mailframe.reply only."""
        allowed = {"mailframe.protocol", "mailframe.reply"}
        imported = set()
        for node in ast.walk(ast.parse(EXAMPLE.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                self.assertEqual(node.level, 0)
                if node.module == "mailframe":
                    imported.update(f"mailframe.{a.name}" for a in node.names)
                else:
                    imported.add(node.module)
        self.assertIn("mailframe.protocol", imported)
        others = {
            n for n in imported - allowed if n.partition(".")[0] not in sys.stdlib_module_names
        }
        self.assertEqual(others, set())
