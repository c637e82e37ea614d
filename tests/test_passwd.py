"""Tests for the C{mailframe-passwd} console script (L{mailframe.app.passwd})."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from mailframe.app import passwd
from mailframe.auth import passwords
from tests.test_passwords import fastHashing


class ScriptTests(SynchronousTestCase):
    def setUp(self) -> None:
        fastHashing(self)
        self.path = self.mktemp()
        self.out = io.StringIO()
        self.err = io.StringIO()
        self.patch(sys, "stdout", self.out)
        self.patch(sys, "stderr", self.err)

    def run_(self, *args: str, stdin: str = "") -> int:
        self.patch(sys, "stdin", io.StringIO(stdin))
        return passwd.main(list(args))

    def entries(self) -> dict[str, passwords.PasswordEntry]:
        return passwords.parsePasswordFile(Path(self.path).read_bytes())

    def test_addChangeDelete(self) -> None:
        """Add creates the file 0600; change replaces the line; delete removes it."""
        self.assertEqual(self.run_("--stdin", self.path, "alice", stdin="one\n"), 0)
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        first = self.entries()["alice"]
        self.assertTrue(passwords.verifyPassword(first.hash, "one"))
        assert first.scram is not None
        self.assertEqual(first.scram.iterations, passwords.DEFAULT_SCRAM_ITERATIONS)
        with open(self.path, "a") as f:
            f.write("# keep me\n")
        self.assertEqual(self.run_("--stdin", self.path, "bob", stdin="b\n"), 0)
        self.assertEqual(self.run_("--stdin", "--no-scram", self.path, "alice", stdin="two\n"), 0)
        changed = self.entries()["alice"]
        self.assertTrue(passwords.verifyPassword(changed.hash, "two"))
        self.assertIsNone(changed.scram)
        self.assertIn("# keep me\n", Path(self.path).read_text())
        self.assertEqual(self.run_("--delete", self.path, "alice"), 0)
        self.assertEqual(list(self.entries()), ["bob"])
        self.assertEqual(
            self.out.getvalue().splitlines(),
            [
                f"mailframe-passwd: added alice in {self.path}",
                f"mailframe-passwd: added bob in {self.path}",
                f"mailframe-passwd: changed alice in {self.path}",
                f"mailframe-passwd: deleted alice in {self.path}",
            ],
        )
        self.assertNotIn("two", Path(self.path).read_text())

    def test_prompt(self) -> None:
        """Without --stdin the password is asked twice; a mismatch changes nothing."""
        answers = iter(["pw", "pw", "x", "y"])
        self.patch(passwd.getpass, "getpass", lambda prompt: next(answers))
        self.assertEqual(self.run_(self.path, "alice"), 0)
        self.assertEqual(self.run_(self.path, "bob"), 1)
        self.assertEqual(list(self.entries()), ["alice"])
        self.assertIn("the passwords differ", self.err.getvalue())

    def test_errors(self) -> None:
        """Bad names, empty passwords, unknown users and broken files are one-line errors."""
        self.assertEqual(self.run_("--stdin", self.path, "a:b", stdin="pw\n"), 1)
        self.assertEqual(self.run_("--stdin", self.path, "alice", stdin="\n"), 1)
        self.assertEqual(self.run_("--delete", self.path, "alice"), 1)
        Path(self.path).write_text("broken\n")
        self.assertEqual(self.run_("--stdin", self.path, "alice", stdin="pw\n"), 1)
        lines = self.err.getvalue().splitlines()
        self.assertEqual(len(lines), 4)
        self.assertTrue(all(line.startswith("mailframe-passwd: ") for line in lines))
        self.assertEqual(Path(self.path).read_text(), "broken\n")

    def test_consoleScript(self) -> None:
        """The installed mailframe-passwd script adds a user from standard input."""
        script = Path(sys.executable).with_name("mailframe-passwd")
        if not script.exists():
            raise self.skipTest("mailframe-passwd is not installed next to the interpreter")
        result = subprocess.run(
            [str(script), "--stdin", "--scram-iterations", "4096", self.path, "carol"],
            input="s3cret\n",
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        entry = self.entries()["carol"]
        assert entry.scram is not None
        self.assertEqual(entry.scram.iterations, 4096)
        self.assertTrue(passwords.verifyPassword(entry.hash, "s3cret"))
