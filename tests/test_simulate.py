"""
Tests for C{mailframe simulate} (L{mailframe.app.simulate}): a session from
a file against the configured plug-ins, each reply with the plug-in that
decided it, nothing delivered, no spool or Maildir made; the DNS checks ask
the tiny DNS server of tests/test_dns_resolver.py.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from mailframe.app import tap
from mailframe.app.simulate import parser, simulate
from tests.test_dns_resolver import RECORDS, TinyDNS

REPO = Path(__file__).resolve().parents[1]
SESSION = """\
EHLO client.example
MAIL FROM:<s@example.org>
RCPT TO:<bob@example.com>
RCPT TO:<alice@example.com>
RCPT TO:<x@elsewhere.example>
DATA
Subject: test

Hello
.
QUIT
"""


class SimulateTests(TestCase):
    """The transcript of a simulated session."""

    def setUp(self) -> None:
        self.directory = Path(self.mktemp()).absolute()
        self.directory.mkdir()
        (self.directory / "users").write_text("alice@example.com\n")
        self.maildir = self.directory / "Maildir"
        self.spool = self.directory / "spool"

    @defer.inlineCallbacks
    def play(self, session: str, *argv: str) -> Any:
        args, rest = parser().parse_known_args(list(argv))
        options = tap.Options()
        options.parseOptions([
            "--hostname", "mx.test", "--domain", "example.com",
            "--validate", f"addresses:{self.directory / 'users'}",
            "--deliver", f"maildir:{self.maildir}", *rest,
        ])  # fmt: skip
        out, err = io.StringIO(), io.StringIO()
        status = yield defer.ensureDeferred(
            simulate(reactor, args, options, session.splitlines(), tap.buildListener, out, err)
        )
        return status, out.getvalue(), err.getvalue()

    @defer.inlineCallbacks
    def test_session(self) -> Any:
        """Each command, each reply and who decided it; the message is not delivered anywhere."""
        status, out, err = yield self.play(SESSION, "--client", "192.0.2.7", "--spool",
                                          str(self.spool))  # fmt: skip
        self.assertEqual((status, err), (0, ""))
        lines = out.splitlines()
        self.assertEqual(
            lines[0], "*** connection from [192.0.2.7]:49152 to the smtp listener; nothing is "
            "delivered",
        )  # fmt: skip
        self.assertEqual(lines[1], "<<< 220 mx.test ESMTP mailframe")
        text = "\n".join(lines)
        self.assertIn(">>> RCPT TO:<bob@example.com>\n<<< 550 5.1.1 No such user here\n"
                      "    decided by mailframe (no plug-in decided", text)  # fmt: skip
        self.assertIn(">>> RCPT TO:<alice@example.com>\n<<< 250 2.1.5 Recipient OK\n"
                      f"    decided by addresses:{self.directory / 'users'}\n", text)  # fmt: skip
        self.assertIn(">>> RCPT TO:<x@elsewhere.example>\n<<< 550 5.7.1 Relaying denied", text)
        self.assertIn(">>> (3 lines of message data)\n>>> .\n<<< 250 2.0.0 OK queued as ", text)
        self.assertIn("    (simulated: not delivered)\n>>> QUIT\n<<< 221 2.0.0 mx.test", text)
        self.assertIn("<<< 250 DSN\n", text)  # the queue's extension, without a spool
        self.assertFalse(self.maildir.exists())
        self.assertFalse(self.spool.exists())

    @defer.inlineCallbacks
    def test_dnsbl(self) -> Any:
        """A listed client: the greeting refusal, decided by the dnsbl check (over real DNS)."""
        dns = TinyDNS(self, RECORDS)
        status, out, _ = yield self.play("EHLO c\nQUIT\n", "--client", "127.0.0.2", "--dns-server",
                                        dns.setting, "--filter", "dnsbl:bl.test")  # fmt: skip
        self.assertEqual(status, 0)
        lines = out.splitlines()
        self.assertEqual(lines[1], "<<< 554 Service unavailable; client [127.0.0.2] blocked using "
                                   "bl.test: listed for tests")  # fmt: skip
        self.assertEqual(lines[2], "    decided by dnsbl:bl.test")
        self.assertEqual(lines[4], "<<< 503 No service here; send QUIT")  # no EHLO: no 5.5.1

    @defer.inlineCallbacks
    def test_startTLS(self) -> Any:
        """STARTTLS is answered and the session goes on as inside TLS: AUTH is offered."""
        from tests._certs import TestCA

        issued = TestCA(str(self.directory / "ca")).issue("mx", "mx.test")
        status, out, _ = yield self.play(
            "EHLO c\nSTARTTLS\nEHLO c\nAUTH PLAIN AGEAYg==\nQUIT\n", "--client", "192.0.2.8",
            "--auth", "memory:a:b", "--tls-cert", issued.fullchain, "--tls-key", issued.privkey,
        )  # fmt: skip
        self.assertEqual(status, 0)
        self.assertIn(">>> STARTTLS\n<<< 220 2.0.0 ", out)
        self.assertIn("<<< 250 AUTH SCRAM-SHA-256 CRAM-MD5 PLAIN LOGIN\n", out)
        self.assertIn(">>> AUTH PLAIN AGEAYg==\n<<< 235 2.7.0 Authentication successful", out)

    @defer.inlineCallbacks
    def test_insideTLS(self) -> Any:
        """--inside-tls: as if TLS from the first byte."""
        status, out, _ = yield self.play("EHLO c\nQUIT\n", "--client", "192.0.2.8",
                                         "--inside-tls", "--auth", "memory:a:b")  # fmt: skip
        self.assertEqual(status, 0)
        self.assertIn("(TLS from the first byte)", out.splitlines()[0])
        self.assertIn("<<< 250 AUTH ", out)

    @defer.inlineCallbacks
    def test_lmtp(self) -> Any:
        """An LMTP listener: one reply per accepted recipient after the data, each shown."""
        status, out, _ = yield self.play(
            "LHLO c\nMAIL FROM:<s@example.org>\nRCPT TO:<alice@example.com>\n"
            "RCPT TO:<bob@example.com>\nRCPT TO:<alice@example.com>\nDATA\nSubject: x\n\nhi\n.\n"
            "QUIT\n", "--client", "192.0.2.7", "--lmtp", "tcp:0:interface=127.0.0.1",
            "--listener", "lmtp",
        )  # fmt: skip
        self.assertEqual(status, 0)
        after = out.split(">>> .\n", 1)[1].splitlines()
        self.assertEqual([line[:13] for line in after[:4]],
                         ["<<< 250 2.0.0", "    decided b", "<<< 250 2.0.0", "    (simulate"])  # fmt: skip

    @defer.inlineCallbacks
    def test_closedByServer(self) -> Any:
        """Commands after the server closed the connection are not sent."""
        status, out, _ = yield self.play("QUIT\nNOOP\n", "--client", "192.0.2.7")
        self.assertEqual(status, 0)
        self.assertTrue(out.endswith("*** the server closed the connection\n"), out)
        self.assertNotIn("NOOP", out)

    @defer.inlineCallbacks
    def test_badListener(self) -> Any:
        """An unknown --listener is one line, status 1."""
        status, out, err = yield self.play("QUIT\n", "--client", "192.0.2.7", "--listener", "x")
        self.assertEqual((status, out), (1, ""))
        self.assertEqual(err, "mailframe simulate: no listener 'x' (the listeners: smtp)\n")


class CommandLineTests(TestCase):
    """mailframe simulate as a command."""

    def mailframe(self, *argv: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *sys.path])}
        code = "import sys; from mailframe.app.main import run; sys.argv[0] = 'mailframe'; run()"
        return subprocess.run(
            [sys.executable, "-c", code, *argv], input=stdin, capture_output=True, text=True,
            timeout=60, check=False, env=env,
        )  # fmt: skip

    def test_stdin(self) -> None:
        """The session from standard input; exit status 0."""
        result = self.mailframe("simulate", "--client", "192.0.2.9", "--deliver", "memory",
                                "--hostname", "mx.test", stdin="NOOP\nQUIT\n")  # fmt: skip
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn(">>> NOOP\n<<< 250 OK\n", result.stdout)

    def test_usage(self) -> None:
        """Without --client, or with a bad server option: a usage error, status 2."""
        result = self.mailframe("simulate")
        self.assertEqual(result.returncode, 2)
        self.assertIn("--client", result.stderr)
        result = self.mailframe("simulate", "--client", "192.0.2.9", "--bogus")
        self.assertEqual((result.returncode, result.stderr),
                         (2, "mailframe simulate: option --bogus not recognized\n"))  # fmt: skip
