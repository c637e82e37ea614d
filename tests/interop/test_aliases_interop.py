"""
Aliases, SRS and the pipe backend end to end, with the real programs: a
C{twistd -n mailframe} child process with an alias file (a list, an
include, a loop, remote forwards), a spool, an SRS secret, a smarthost on
loopback (a mailframe server in the test's reactor, standing for the next
hop) and C{--deliver pipe:} with an sh program that exits 0, 75 and 67;
Python's smtplib as the client.

Every wait is bounded (sockets have timeouts, polls a deadline); nothing
sleeps in the reactor thread.
"""

from __future__ import annotations

import os
import shutil
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase

from mailframe.address import parseMailbox
from mailframe.validators.srs import SRS
from tests.interop._mailpeers import waitForTwistd
from tests.interop._support import HOST, AcceptLocal, inThread, startServer

REPO = Path(__file__).resolve().parents[2]
TWISTD = Path(sys.executable).with_name("twistd")
SECRET = b"the secret of the aliases interop test"
WAIT = 45.0
USER = ":user=nobody" if os.geteuid() == 0 else ""

PROGRAM = r"""#!/bin/sh
# exits as the recipient's local part asks: later 75, nobody 67, else 0
cat > "OUTDIR/$RECIPIENT.$$"
case "$LOCAL" in
  later) echo "the mailbox is busy"; exit 75 ;;
  nobody) echo "no such mailbox here: $LOCAL"; exit 67 ;;
esac
exit 0
"""


def _freePort() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class AliasesInteropTests(TestCase):
    timeout = 120

    def setUp(self) -> Any:
        if not TWISTD.exists():
            self.skipTest(f"no twistd next to {sys.executable}")
        self.dir = Path(tempfile.mkdtemp(prefix="mailframe-aliases-"))
        self.addCleanup(shutil.rmtree, self.dir, True)
        os.chmod(self.dir, 0o755)
        self.out = self.dir / "out"
        self.out.mkdir()
        os.chmod(self.out, 0o777)
        program = self.dir / "deliver"
        program.write_text(PROGRAM.replace("OUTDIR", str(self.out)))
        os.chmod(program, 0o755)
        (self.dir / "members").write_text("# the list\ncarol, later\ndave@remote.example\n")
        (self.dir / "aliases").write_text(
            "list:  alice, bob, :include:members\n"
            "fwd:   erin@remote.example\n"
            "ghost: nobody\n"
            "loop1: loop2\nloop2: loop1\n"
        )
        (self.dir / "srs.key").write_bytes(SECRET + b"\n")
        # the next hop: a mailframe server in this reactor that takes everything
        self.sink = startServer(
            self, [AcceptLocal(())], localDomains=("remote.example", "sender.example")
        )
        self.port = _freePort()
        log = self.dir / "twistd.log"
        argv = [str(TWISTD), "-n", "--pidfile=", "--logfile", str(log), "mailframe",
                "--listen", f"tcp:{self.port}:interface={HOST}", "--hostname", "mx.example.com",
                "--domain", "example.com", "--aliases", str(self.dir / "aliases"),
                "--subaddress", "+", "--spool", str(self.dir / "spool"),
                "--srs-secret", str(self.dir / "srs.key"),
                "--relay-host", f"127.0.0.1:{self.sink.portNumber}",
                "--retry-initial", "1h", "--deliver", f"pipe:{program}{USER}"]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *sys.path])}
        self.process = subprocess.Popen(argv, cwd=self.dir, env=env)
        self.addCleanup(self._stop)
        return inThread(waitForTwistd, self.process, log, None, WAIT)  # a worker thread

    def _stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def send(self, sender: str, recipients: list[str], body: bytes) -> defer.Deferred[Any]:
        """Send one message with smtplib: each RCPT's code, and the code after the data."""

        def run() -> tuple[list[int], int | None]:
            with smtplib.SMTP(HOST, self.port, timeout=15) as client:
                client.ehlo("client.example")
                client.mail(sender)
                codes = [client.rcpt(r)[0] for r in recipients]
                if not any(c < 300 for c in codes):
                    return codes, None
                code, _ = client.data(body)
                return codes, code

        return inThread(run)

    @defer.inlineCallbacks
    def until(self, condition: Callable[[], bool], what: str) -> Any:
        deadline = time.monotonic() + WAIT
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            yield task.deferLater(reactor, 0.1, lambda: None)  # type: ignore[arg-type]

    def delivered(self) -> set[str]:
        return {p.name.rsplit(".", 1)[0] for p in self.out.iterdir()}

    def relayed(self) -> list[tuple[str, list[str], bytes]]:
        return [
            (str(m.envelope.mailFrom), [str(r.address) for r in m.envelope.recipients], m.data)
            for m in self.sink.messages
        ]

    @defer.inlineCallbacks
    def test_listIncludeLoopForwardSRSAndPipe(self) -> Any:
        """The list reaches its members once each; forwards get SRS; a bounce comes back."""
        codes, final = yield self.send(
            "alice@sender.example",
            ["list+news@example.com", "fwd@example.com", "loop1@example.com"],
            b"From: alice@sender.example\r\nSubject: to the list\r\n\r\nHello\r\n",
        )
        self.assertEqual(codes, [250, 250, 554])
        self.assertEqual(final, 250)
        # local members through the pipe program (later exits 75 and waits)
        yield self.until(lambda: {"alice@example.com", "bob@example.com", "carol@example.com",
                                  "later@example.com"} <= self.delivered(), "the local members")  # fmt: skip
        # the forwarded copies, in one transfer, with an SRS sender
        yield self.until(lambda: len(self.relayed()) >= 1, "the forwarded copies")
        sender, recipients, data = self.relayed()[0]
        self.assertEqual(sorted(recipients), ["dave@remote.example", "erin@remote.example"])
        self.assertTrue(sender.startswith("SRS0="), sender)
        self.assertTrue(sender.endswith("@mx.example.com"), sender)
        srs = SRS((SECRET,), "mx.example.com")
        self.assertEqual(str(srs.reverse(parseMailbox(sender), time.time())),
                         "alice@sender.example")  # fmt: skip
        self.assertIn(b"Subject: to the list", data)
        # a bounce to the SRS address goes back to the original sender, with <>
        codes, final = yield self.send(
            "", [sender], b"Subject: Undelivered Mail Returned to Sender\r\n\r\nsorry\r\n"
        )
        self.assertEqual((codes, final), ([250], 250))
        yield self.until(lambda: len(self.relayed()) >= 2, "the bounce sent back")
        bounceSender, bounceRecipients, _ = self.relayed()[1]
        self.assertEqual((bounceSender, bounceRecipients), ("", ["alice@sender.example"]))
        # a forged SRS address is refused
        codes, _ = yield self.send("", ["SRS0=AAAA=JW=victim.example=x@mx.example.com"], b"x\r\n")
        self.assertEqual(codes, [550])

    @defer.inlineCallbacks
    def test_pipeBounceReported(self) -> Any:
        """A member the program refuses (exit 67) makes a report with its line of output."""
        codes, final = yield self.send(
            "alice@sender.example", ["ghost@example.com"], b"Subject: to a ghost\r\n\r\nboo\r\n"
        )
        self.assertEqual((codes, final), ([250], 250))
        yield self.until(lambda: len(self.relayed()) >= 1, "the report")
        sender, recipients, data = self.relayed()[0]
        self.assertEqual((sender, recipients), ("", ["alice@sender.example"]))
        self.assertIn(b"no such mailbox here: nobody", data)
        self.assertIn(b"Original-Recipient: rfc822; ghost@example.com", data)
