"""
Tests for L{mailframe.app.security}: the AUTH extension C{twistd mailframe}
builds from C{--auth}: the mechanisms follow every checker in force, one
Authenticator serves every listener with the same checkers, and checkers
that share no mechanism stop the start with one line.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.trial import unittest

from mailframe.app import tap
from mailframe.app.config import ClientLimits
from mailframe.app.security import Security
from mailframe.auth import passwords
from mailframe.extensions.auth import Auth
from tests.test_passwords import fastHashing
from tests.test_tap import parse


def auth(extensions: list[Any]) -> Auth:
    [found] = [e for e in extensions if isinstance(e, Auth)]
    return found


class AuthExtensionTests(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        fastHashing(self)
        self.passwd = self.mktemp()
        entry = passwords.makeEntry("alice", "secret", 4096)
        Path(self.passwd).write_text(passwords.formatEntry(entry) + "\n")

    def security(self) -> Security:
        return Security(MemoryReactorClock(), ClientLimits())

    def test_argon2BesidePlaintext(self) -> None:
        """--auth mailframe:FILE with --auth memory: offers no CRAM-MD5, and says so at start."""
        options = parse("--deliver", "memory", "--auth-plaintext",
                        "--auth", f"mailframe:{self.passwd}", "--auth", "memory:bob:pw")  # fmt: skip
        [spec] = options.listeners
        extensions, _filters, _tls = self.security().forListener(spec)
        self.assertEqual(auth(extensions).mechanisms, ("SCRAM-SHA-256", "PLAIN", "LOGIN"))
        service = tap.makeService(options)
        self.assertIn(
            "; AUTH SCRAM-SHA-256 PLAIN LOGIN (also without TLS)", service.announcements[0]
        )

    def test_plaintextOnly(self) -> None:
        """--auth memory: alone offers every mechanism, CRAM-MD5 included."""
        [spec] = parse("--deliver", "memory", "--auth-plaintext",
                       "--auth", "memory:bob:pw").listeners  # fmt: skip
        extensions, _filters, _tls = self.security().forListener(spec)
        self.assertEqual(
            auth(extensions).mechanisms, ("SCRAM-SHA-256", "CRAM-MD5", "PLAIN", "LOGIN")
        )

    def test_oneAuthenticator(self) -> None:
        """Listeners with the same --auth share one Authenticator (and so one fake-salt secret)."""
        options = parse("--deliver", "memory", "--auth-plaintext",
                        "--auth", f"mailframe:{self.passwd}",
                        "--listen", "tcp:0", "--submission", "tcp:0")  # fmt: skip
        security = self.security()
        first, second = (auth(security.forListener(spec)[0]) for spec in options.listeners)
        self.assertIsNot(first, second)
        self.assertIs(first.authenticator, second.authenticator)
        salts = [
            self.successResultOf(a.authenticator.scramParameters("nobody"))
            for a in (first, second)
        ]
        self.assertEqual(salts[0], salts[1])

    def test_nothingInCommon(self) -> None:
        """Checkers that share no mechanism stop the start with one line."""
        from twisted.cred import strcred

        from tests.test_credentials import ScramOnly

        real = strcred.makeChecker
        self.patch(strcred, "makeChecker", lambda d: ScramOnly() if d == "scram-only" else real(d))
        [spec] = parse("--deliver", "memory", "--auth-plaintext", "--auth", "unix").listeners
        spec = dataclasses.replace(spec, auth=("scram-only", "unix"))
        e = self.assertRaises(SystemExit, self.security().forListener, spec)
        self.assertIn("mailframe: cannot set up --auth: the checkers have no mechanism in common",
                      str(e))  # fmt: skip
        self.assertNotIn("\n", str(e))
