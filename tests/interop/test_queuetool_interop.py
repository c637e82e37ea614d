"""
The queue's "Done when", end to end: a real C{twistd -n mailframe
--relay-host tcp:127.0.0.1:PORT --relay-network 127.0.0.0/8 --spool ...}
with a local Maildir domain, swaks submitting through it, the next hop an
aiosmtpd server (someone else's, in a thread), and C{mailframe-queue} run
as a child process (C{python -m mailframe.app.queuetool}).

  1. The next hop is down: the message waits; C{mailframe-queue list}
     shows it and the connection error (and C{--json} says the same).
  2. The next hop comes up; C{mailframe-queue flush} delivers it at once
     (the retry would have come 5 minutes later).
  3. The next hop answers 550 for a recipient: the sender, a local Maildir
     address, gets an RFC 3464 report holding the first part of the message.

Owns: nothing of mailframe.  Must not: run longer than its bounds (every
wait has a deadline, every child process a timeout); leave a process
behind (twistd is terminated, then killed, at cleanup).
"""

from __future__ import annotations

import email
import email.message
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from twisted.trial.unittest import SynchronousTestCase

from tests.interop._mailpeers import waitForTwistd

REPO = Path(__file__).resolve().parents[2]
TWISTD = Path(sys.executable).with_name("twistd")
SWAKS = shutil.which("swaks") or "/usr/bin/swaks"
HOST = "127.0.0.1"
START_TIMEOUT = 30.0
WAIT_TIMEOUT = 30.0
PROCESS_TIMEOUT = 30.0
T = TypeVar("T")


def freePort() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def waitFor(what: str, check: Callable[[], T | None], timeout: float = WAIT_TIMEOUT) -> T:
    """Poll C{check} (every 50 ms) until it returns something true; fail after C{timeout}."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out waiting for {what}")
        threading.Event().wait(0.05)


class NextHop:
    """aiosmtpd on a fixed port: keeps every message; 550 5.1.1 for local parts C{reject*}."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.messages: list[tuple[str, list[str], bytes]] = []
        self.controller: Any = None

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          options: list[str]) -> str:  # fmt: skip
        if address.startswith("reject"):
            return "550 5.1.1 No such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 2.0.0 Queued"

    def start(self) -> None:
        from aiosmtpd.controller import Controller

        self.controller = Controller(self, hostname=HOST, port=self.port, ready_timeout=10)
        self.controller.start()

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None


class QueueToolInteropTests(SynchronousTestCase):
    """twistd mailframe with a queue, swaks, aiosmtpd and mailframe-queue."""

    def setUp(self) -> None:
        if not TWISTD.exists():
            raise self.skipTest(f"no twistd next to {sys.executable}")
        if not os.path.exists(SWAKS):
            raise self.skipTest("no swaks")
        try:
            import aiosmtpd.controller  # noqa: F401
        except ImportError:
            raise self.skipTest("no aiosmtpd") from None
        # a short path: the control socket's must fit in sockaddr_un (108 octets)
        self.directory = Path(tempfile.mkdtemp(prefix="mfq", dir="/tmp"))
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.spool = self.directory / "spool"
        self.maildir = self.directory / "Maildir"
        self.port = freePort()
        self.nextHop = NextHop(freePort())
        self.addCleanup(self.nextHop.stop)
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *sys.path])}

    def startServer(self) -> subprocess.Popen[bytes]:
        log = open(self.directory / "twistd.log", "wb")  # noqa: SIM115
        process = subprocess.Popen(
            [str(TWISTD), "-n", "--pidfile=", "--logfile=-", "mailframe",
             "--listen", f"tcp:{self.port}:interface={HOST}", "--hostname", "mx.test",
             "--domain", "example.com", "--deliver", f"maildir:{self.maildir}",
             "--relay-host", f"tcp:{HOST}:{self.nextHop.port}",
             "--relay-network", "127.0.0.0/8", "--spool", str(self.spool)],
            cwd=self.directory, env=self.env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        self.addCleanup(self.stopServer, process)

        control = self.spool / "control.sock"
        waitForTwistd(process, self.directory / "twistd.log", control.exists, START_TIMEOUT)
        return process

    def stopServer(self, process: subprocess.Popen[bytes]) -> None:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(PROCESS_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(PROCESS_TIMEOUT)

    def log(self) -> str:
        return (self.directory / "twistd.log").read_text(errors="replace")[-3000:]

    def swaks(self, to: str, *args: str) -> str:
        """Submit a message from the local user with swaks; its transcript."""
        result = subprocess.run(
            [SWAKS, "--server", f"{HOST}:{self.port}", "--from", "user@example.com",
             "--to", to, "--timeout", "15", *args],
            capture_output=True, timeout=PROCESS_TIMEOUT, check=False,
            env={"PATH": "/usr/bin:/bin", "HOME": str(self.directory), "LANG": "C"},
        )  # fmt: skip
        transcript = result.stdout.decode(errors="replace")
        self.assertEqual(result.returncode, 0, transcript)
        self.assertIn("<-  250 2.0.0", transcript)
        return transcript

    def queueTool(self, *argv: str) -> tuple[int, str, str]:
        """mailframe-queue as a child process: (exit status, stdout, stderr)."""
        result = subprocess.run(
            [sys.executable, "-m", "mailframe.app.queuetool", "--spool", str(self.spool), *argv],
            capture_output=True, timeout=PROCESS_TIMEOUT, check=False, env=self.env,
        )  # fmt: skip
        return result.returncode, result.stdout.decode(), result.stderr.decode()

    def maildirMessages(self) -> list[email.message.Message]:
        new = self.maildir / "new"
        if not new.is_dir():
            return []
        return [email.message_from_bytes(p.read_bytes()) for p in sorted(new.iterdir())]

    def test_doneWhen(self) -> None:
        """Waits with its error while the next hop is down, flush delivers it, a 550 bounces."""
        self.startServer()

        # 1. the next hop is down: the message waits, with its error
        self.swaks("rcpt@remote.example", "--header", "Subject: waiting")

        def listed() -> str | None:
            status, out, err = self.queueTool("list")
            self.assertEqual((status, err), (0, ""))
            return out if "rcpt@remote.example> 421 4.4.1 Connection" in out else None

        line = waitFor("the failed first attempt in the list", listed)
        self.assertEqual(len(line.splitlines()), 1, line)
        self.assertIn("  next in 4m  <user@example.com> -> <rcpt@remote.example> 421", line)
        status, out, _ = self.queueTool("list", "--json")
        [entry] = [json.loads(x) for x in out.splitlines()]
        self.assertEqual(entry["recipients"][0]["reply"][:2], [421, "4.4.1"])
        status, out, _ = self.queueTool("show", entry["id"])
        self.assertEqual(status, 0)
        self.assertIn("\nSubject: waiting\n", out)

        # 2. the next hop is back: flush delivers at once
        self.nextHop.start()
        self.assertEqual(self.queueTool("flush")[:2], (0, "1 message(s) to be tried now\n"))
        [(sender, rcpts, data)] = waitFor("the delivery", lambda: self.nextHop.messages)
        self.assertEqual((sender, rcpts), ("user@example.com", ["rcpt@remote.example"]))
        self.assertIn(b"Subject: waiting", data)
        waitFor("an empty queue", lambda: self.queueTool("list")[1] == "")

        # 3. a 550 from the next hop: a report to the local sender with the first part
        body = self.directory / "body.txt"
        body.write_text("FIRST-PART-MARKER\n" + "filler line of the body\n" * 2000 + "TAIL\n")
        self.swaks("reject@remote.example", "--header", "Subject: refused", "--body", str(body))
        [report] = waitFor("the report in the Maildir", self.maildirMessages)
        self.assertEqual(report.get_content_type(), "multipart/report")
        self.assertIn("MAILER-DAEMON@mx.test", report["From"])
        self.assertEqual(report["To"], "<user@example.com>")
        _, status, original = report.get_payload()  # type: ignore[misc]
        fields = status.get_payload()[1]
        self.assertEqual(fields["Action"], "failed")
        self.assertEqual(fields["Status"], "5.1.1")
        self.assertEqual(fields["Final-Recipient"], "rfc822; reject@remote.example")
        self.assertEqual(fields["Diagnostic-Code"], "smtp; 550 5.1.1 No such user here")
        self.assertEqual(original.get_content_type(), "message/rfc822")
        returned = original.as_string()
        self.assertIn("Subject: refused", returned)
        self.assertIn("FIRST-PART-MARKER", returned)
        self.assertNotIn("TAIL", returned)  # only the first 16 KiB of the body
        waitFor("an empty queue", lambda: self.queueTool("list")[1] == "")
        self.assertEqual(len(self.nextHop.messages), 1)
