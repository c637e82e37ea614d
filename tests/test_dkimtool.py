"""
Tests for L{mailframe.app.dkimtool}, the C{mailframe-dkim} console script: the
key and record files, the printed DNS record, and a key that signs mail
dkimpy verifies against that very record.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
from pathlib import Path

import dkim
from twisted.trial import unittest

from mailframe.app.dkimtool import dnsRecord, generateKey, main, zoneLine
from mailframe.policy.dkim import DKIMSigner, inlineRunner
from mailframe.policy.testing import makeEnvelope, makeMessage, makeSession

BODY = b"From: a@example.org\r\nTo: b@example.com\r\nSubject: s\r\n\r\nbody\r\n"


class KeygenTests(unittest.TestCase):
    """mailframe-dkim keygen."""

    def keygen(self, *args: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["keygen", *args])
        return code, out.getvalue(), err.getvalue()

    def roundTrip(self, keyType: str) -> None:
        directory = os.path.abspath(self.mktemp())
        code, out, err = self.keygen(
            "example.org", "s1", "--type", keyType, "--directory", directory
        )
        self.assertEqual((code, err), (0, ""))
        keyPath = os.path.join(directory, "example.org.s1.key")
        self.assertEqual(stat.S_IMODE(os.stat(keyPath).st_mode), 0o600)
        record = Path(directory, "example.org.s1.txt").read_text()
        self.assertIn(record.strip(), out)
        self.assertTrue(record.startswith("s1._domainkey.example.org. IN TXT ( "))
        self.assertIn(f"--filter dkim-sign:example.org:s1:{keyPath}", out)
        text = "".join(record.split('"')[1::2])  # the strings of the record, joined
        self.assertTrue(text.startswith(f"v=DKIM1; k={keyType}; p="))
        signer = DKIMSigner("example.org", "s1", Path(keyPath).read_bytes(), runner=inlineRunner)
        message = makeMessage(BODY)
        signer.filterMessage(makeSession(authenticated="a"), makeEnvelope(), message)
        self.assertTrue(
            dkim.verify(message.getvalue(), dnsfunc=lambda name, timeout=5: text.encode())
        )

    def test_rsa(self) -> None:
        """An RSA key (the default type) signs mail dkimpy verifies with the printed record."""
        self.roundTrip("rsa")

    def test_ed25519(self) -> None:
        """An ed25519 key does too."""
        self.roundTrip("ed25519")

    def test_noOverwrite(self) -> None:
        """An existing key is kept unless --force."""
        directory = self.mktemp()
        self.assertEqual(self.keygen("example.org", "s", "--directory", directory)[0], 0)
        key = Path(directory, "example.org.s.key").read_bytes()
        code, _, err = self.keygen("example.org", "s", "--directory", directory)
        self.assertEqual(code, 1)
        self.assertIn("--force", err)
        self.assertEqual(Path(directory, "example.org.s.key").read_bytes(), key)
        self.assertEqual(
            self.keygen("example.org", "s", "--directory", directory, "--force")[0], 0
        )
        self.assertNotEqual(Path(directory, "example.org.s.key").read_bytes(), key)

    def test_badArguments(self) -> None:
        """A bad domain, selector or size exits 2 with one line."""
        directory = self.mktemp()
        for args in (("not a domain", "s"), ("example.org", "bad selector!"),
                     ("example.org", "s", "--bits", "512")):  # fmt: skip
            code, out, err = self.keygen(*args, "--directory", directory)
            self.assertEqual((code, out), (2, ""), args)
            self.assertEqual(len(err.strip().splitlines()), 1, err)
        self.assertFalse(os.path.exists(directory))

    def test_zoneLine(self) -> None:
        """Long records are split into strings of at most 255 octets."""
        private, public = generateKey("rsa", 4096)
        self.assertIn(b"BEGIN RSA PRIVATE KEY", private)
        line = zoneLine("example.org.", "big", dnsRecord("rsa", public))
        strings = line.split('"')[1::2]
        self.assertGreater(len(strings), 2)
        self.assertTrue(all(len(s) <= 255 for s in strings))
        self.assertRaises(ValueError, generateKey, "dsa")


class TwistdSigningTests(unittest.TestCase):
    """The issue's check: twistd with a relay network and a DKIM key signs what dkimpy verifies."""

    def test_signedByTwistd(self) -> None:
        """Mail from 127.0.0.1 (a relay network) is signed with keygen's key; dkimpy verifies it."""
        import re
        import select
        import smtplib
        import subprocess
        import sys
        import time

        twistd = Path(sys.executable).with_name("twistd")
        if not twistd.exists():
            raise unittest.SkipTest(f"no twistd next to {sys.executable}")
        repo = Path(__file__).resolve().parents[1]
        cwd = os.path.abspath(self.mktemp())
        os.mkdir(cwd)
        code, _out, _ = KeygenTests.keygen(self, "example.org", "s1", "--directory", cwd)  # type: ignore[arg-type]
        self.assertEqual(code, 0)
        record = "".join(Path(cwd, "example.org.s1.txt").read_text().split('"')[1::2])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), *sys.path])}
        process = subprocess.Popen(
            [str(twistd), "-n", "--pidfile=", "--logfile=-", "mailframe",
             "--listen", "tcp:0:interface=127.0.0.1", "--hostname", "mx.example",
             "--relay-network", "127.0.0.0/8", "--deliver", "maildir:./Maildir",
             "--filter", f"dkim-sign:example.org:s1:{cwd}/example.org.s1.key"],
            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.addCleanup(process.wait, 30)
        self.addCleanup(process.kill)
        assert process.stdout is not None
        output, port = b"", None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (port and b"listening on" in output):
            ready, _, _ = select.select([process.stdout], [], [], 1)
            if ready:
                chunk = os.read(process.stdout.fileno(), 4096)
                if not chunk:
                    break
                output += chunk
                found = re.search(rb"starting on (\d+)", output)
                port = int(found.group(1)) if found else None
        assert port is not None, output
        with smtplib.SMTP("127.0.0.1", port, timeout=15) as client:
            client.sendmail("a@example.org", ["user@localhost"], BODY)
        new = Path(cwd, "Maildir", "new")
        files: list[Path] = []
        deadline = time.monotonic() + 20  # a queue may deliver after its 250
        while not files and time.monotonic() < deadline:
            files = list(new.iterdir()) if new.exists() else []
            if not files:
                time.sleep(0.05)
        self.assertEqual(len(files), 1, (list(Path(cwd).rglob("*")), output))
        [stored] = files
        data = stored.read_bytes()
        self.assertIn(
            b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.org;", data
        )
        self.assertTrue(dkim.verify(data, dnsfunc=lambda name, timeout=5: record.encode()))
