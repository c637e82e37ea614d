"""
Tests for L{mailframe.auth.passwords}: the password file format, reloading, the
argon2/SCRAM checker (synchronously and in a real thread), the strcred
factory behind C{--auth mailframe:PATH}, and C{mailframe-passwd}.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher
from twisted.cred import error, strcred
from twisted.cred.checkers import ICredentialsChecker
from twisted.internet import defer
from twisted.plugin import IPlugin
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from mailframe.auth import passwords, sasl
from mailframe.auth.credentials import (
    IMechanismCoverage,
    IScramKeySource,
    PasswordCredentials,
    ScramStoredCredentials,
)

FAST = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


def fastHashing(case: SynchronousTestCase) -> None:
    """Make argon2 cheap for the test: the format is the same."""
    case.patch(passwords, "_hasher", lambda: FAST)


def synchronous(f: Any, *args: Any) -> defer.Deferred[Any]:
    return defer.maybeDeferred(f, *args)


class FormatTests(SynchronousTestCase):
    def setUp(self) -> None:
        fastHashing(self)

    def test_roundTrip(self) -> None:
        """An entry written by formatEntry parses back to the same entry."""
        entry = passwords.makeEntry("alice", "secret", 4096)
        parsed = passwords.parsePasswordFile(passwords.formatEntry(entry).encode() + b"\n")
        self.assertEqual(parsed, {"alice": entry})
        self.assertTrue(entry.hash.startswith("$argon2id$"))
        self.assertTrue(passwords.verifyPassword(entry.hash, "secret"))
        self.assertFalse(passwords.verifyPassword(entry.hash, "Secret"))
        assert entry.scram is not None
        self.assertEqual(entry.scram, sasl.scramKeys("secret", entry.scram.salt, 4096))

    def test_withoutScram(self) -> None:
        """With no SCRAM iterations the line has two fields."""
        entry = passwords.makeEntry("bob", "pw", None)
        self.assertIsNone(entry.scram)
        self.assertEqual(passwords.formatEntry(entry).count(":"), 1)

    def test_commentsAndBlanks(self) -> None:
        """Comments and blank lines are ignored."""
        line = passwords.formatEntry(passwords.makeEntry("bob", "pw", None))
        data = f"# users\n\n  {line}  \n".encode()
        self.assertEqual(list(passwords.parsePasswordFile(data)), ["bob"])

    def test_errors(self) -> None:
        """Bad lines are named by number, never quoted (they hold hashes)."""
        good = passwords.formatEntry(passwords.makeEntry("bob", "pw", None))
        salt = base64.b64encode(b"s").decode()
        key = base64.b64encode(b"k" * 32).decode()
        cases = [
            (b"bob", "expected USER:HASH"),
            (b"a b:$argon2id$x", "bad user name"),
            (b"bob:$2b$12$abcdefghijklmnopqrstuv", "must be an argon2 hash"),
            (f"{good}\n{good}".encode(), "line 2: user 'bob' listed twice"),
            (b"bob:$argon2id$x:{PLAIN}x", "must start with {SCRAM-SHA-256}"),
            (b"bob:$argon2id$x:{SCRAM-SHA-256}4096,a,b", "ITERATIONS,SALT,STOREDKEY,SERVERKEY"),
            (f"bob:$argon2id$x:{{SCRAM-SHA-256}}4096,{salt},!!,{key}".encode(), "bad base64"),
            (f"bob:$argon2id$x:{{SCRAM-SHA-256}}4096,{salt},{salt},{key}".encode(), "32 octets"),
            (b"\xffbob:$argon2id$x", "not UTF-8"),
        ]
        for data, words in cases:
            e = self.assertRaises(ValueError, passwords.parsePasswordFile, data, "users")
            self.assertIn(words, str(e))
            self.assertTrue(str(e).startswith("users: line "), str(e))
            self.assertNotIn("argon2id$x", str(e))

    def test_makeEntryErrors(self) -> None:
        """Bad names, empty passwords and too few SCRAM iterations are refused."""
        self.assertRaises(ValueError, passwords.makeEntry, "a:b", "pw", None)
        self.assertRaises(ValueError, passwords.makeEntry, "", "pw", None)
        self.assertRaises(ValueError, passwords.makeEntry, "a", "", None)
        self.assertRaises(ValueError, passwords.makeEntry, "a", "pw", 1000)
        self.assertRaises(ValueError, passwords.makeEntry, "a", "p\u0007w", 4096)


class PasswordFileTests(SynchronousTestCase):
    def setUp(self) -> None:
        fastHashing(self)
        self.now = 0.0
        self.path = self.mktemp()
        self.write("alice", "one")

    def write(self, *pairs: str) -> None:
        lines = [
            passwords.formatEntry(passwords.makeEntry(pairs[i], pairs[i + 1], 4096))
            for i in range(0, len(pairs), 2)
        ]
        Path(self.path).write_text("".join(f"{line}\n" for line in lines))

    def test_reload(self) -> None:
        """A changed file is read again, at most once per second."""
        f = passwords.PasswordFile(self.path, now=lambda: self.now)
        self.assertEqual(list(f.entries()), ["alice"])
        self.write("alice", "one", "bob", "two")
        self.assertEqual(list(f.entries()), ["alice"])
        self.now = 1.0
        self.assertEqual(list(f.entries()), ["alice", "bob"])

    def test_badReloadKeepsLast(self) -> None:
        """A file that no longer parses leaves the last good entries in force."""
        f = passwords.PasswordFile(self.path, now=lambda: self.now)
        Path(self.path).write_text("garbage\n")
        self.now = 5.0
        self.assertEqual(list(f.entries()), ["alice"])
        os.unlink(self.path)
        self.now = 10.0
        self.assertEqual(list(f.entries()), ["alice"])

    def test_unreadable(self) -> None:
        """A missing file fails at construction."""
        self.assertRaises(OSError, passwords.PasswordFile, self.path + ".missing")


class CheckerTests(SynchronousTestCase):
    def setUp(self) -> None:
        fastHashing(self)
        self.path = self.mktemp()
        entries = [
            passwords.makeEntry("alice", "secret", 8192),
            passwords.makeEntry("bob", "hunter2", None),
        ]
        Path(self.path).write_text("".join(passwords.formatEntry(e) + "\n" for e in entries))
        self.calls: list[Any] = []

        def run(f: Any, *args: Any) -> defer.Deferred[Any]:
            self.calls.append(f)
            return defer.maybeDeferred(f, *args)

        self.checker = passwords.PasswordFileChecker(self.path, runInThread=run)

    def check(self, credentials: Any) -> Any:
        return self.successResultOf(
            defer.maybeDeferred(self.checker.requestAvatarId, credentials).addErrback(
                lambda f: f.trap(error.UnauthorizedLogin) and "refused"
            )
        )

    def test_provides(self) -> None:
        """The checker provides ICredentialsChecker, IScramKeySource and IMechanismCoverage."""
        verifyObject(ICredentialsChecker, self.checker)
        verifyObject(IScramKeySource, self.checker)
        verifyObject(IMechanismCoverage, self.checker)

    def test_coverage(self) -> None:
        """bob has no SCRAM keys: SCRAM is not for everyone, and not for him."""
        self.assertEqual(self.checker.mechanismsForEveryone(), {"PLAIN", "LOGIN"})
        self.assertEqual(self.checker.mechanismsForUser("bob"), {"PLAIN", "LOGIN"})
        self.assertEqual(
            self.checker.mechanismsForUser("alice"), {"SCRAM-SHA-256", "PLAIN", "LOGIN"}
        )
        self.assertIsNone(self.checker.mechanismsForUser("carol"))

    def test_passwords(self) -> None:
        """Right passwords log in (str or bytes names); wrong ones and unknown users do not."""
        self.assertEqual(self.check(PasswordCredentials("alice", "secret")), "alice")
        self.assertEqual(self.check(PasswordCredentials(b"bob", b"hunter2")), "bob")
        self.assertEqual(self.check(PasswordCredentials("alice", "hunter2")), "refused")
        self.assertEqual(self.check(PasswordCredentials("carol", "secret")), "refused")

    def test_unknownUserCostsAHash(self) -> None:
        """An unknown user is verified against a dummy hash, in the thread pool too."""
        self.check(PasswordCredentials("carol", "secret"))
        self.check(PasswordCredentials("alice", "secret"))
        self.assertEqual(len(self.calls), 2)

    def test_scram(self) -> None:
        """SCRAM parameters come from the file; the proof is checked with the stored keys."""
        self.assertIsNone(self.checker.scramParameters("bob"))
        self.assertIsNone(self.checker.scramParameters("carol"))
        found = self.checker.scramParameters("alice")
        assert found is not None
        salt, iterations = found
        self.assertEqual(iterations, 8192)
        self.assertEqual(self.checker.scramIterations, 8192)
        for password, expected in (("secret", "alice"), ("wrong", "refused")):
            mech = sasl.ScramSha256(nonce=lambda: "server")
            mech.start(b"n,,n=alice,r=client")
            mech.serverFirst(salt, iterations)
            response = mech.respond(scramFinal(password, salt, iterations, mech))
            creds = ScramStoredCredentials(response)
            self.assertEqual(self.check(creds), expected)
            self.assertEqual(creds.serverKey is not None, expected == "alice")
        self.assertEqual(self.calls, [])  # no hashing for SCRAM

    def test_scramUnknown(self) -> None:
        """A SCRAM proof for a user without keys is refused."""
        mech = sasl.ScramSha256(nonce=lambda: "server")
        mech.start(b"n,,n=bob,r=client")
        mech.serverFirst(b"salt", 4096)
        response = mech.respond(scramFinal("hunter2", b"salt", 4096, mech))
        self.assertEqual(self.check(ScramStoredCredentials(response)), "refused")


def scramFinal(password: str, salt: bytes, iterations: int, mech: sasl.ScramSha256) -> bytes:
    """The client-final-message a client with C{password} sends (RFC 5802 3)."""
    import hashlib
    import hmac

    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    clientKey = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    storedKey = hashlib.sha256(clientKey).digest()
    nonce = mech._combinedNonce
    withoutProof = f"c=biws,r={nonce}"
    authMessage = ",".join([mech._bare, mech._serverFirst, withoutProof]).encode()
    signature = hmac.new(storedKey, authMessage, hashlib.sha256).digest()
    proof = bytes(a ^ b for a, b in zip(clientKey, signature, strict=True))
    return f"{withoutProof},p={base64.b64encode(proof).decode()}".encode()


class ThreadTests(TestCase):
    """The default runner verifies in the reactor's thread pool."""

    def test_realThread(self) -> defer.Deferred[None]:
        """A password check through deferToThread logs in."""
        fastHashing(self)
        path = self.mktemp()
        Path(path).write_text(passwords.formatEntry(passwords.makeEntry("al", "pw", None)) + "\n")
        checker = passwords.PasswordFileChecker(path)
        d = checker.requestAvatarId(PasswordCredentials("al", "pw"))
        return d.addCallback(self.assertEqual, "al")


class FactoryTests(SynchronousTestCase):
    def setUp(self) -> None:
        fastHashing(self)

    def test_provides(self) -> None:
        """The factory provides ICheckerFactory and IPlugin."""
        verifyObject(strcred.ICheckerFactory, passwords.checkerFactory)
        verifyObject(IPlugin, passwords.checkerFactory)

    def test_strcred(self) -> None:
        """--auth mailframe:PATH builds a PasswordFileChecker through strcred."""
        path = self.mktemp()
        Path(path).write_text("")
        checker = strcred.makeChecker(f"mailframe:{path}")
        self.assertIsInstance(checker, passwords.PasswordFileChecker)
        self.assertEqual(checker.passwords.path, os.path.abspath(path))

    def test_errors(self) -> None:
        """No path, or a missing file, is a one-line ValueError."""
        self.assertRaises(ValueError, passwords.checkerFactory.generateChecker, "")
        e = self.assertRaises(
            ValueError, passwords.checkerFactory.generateChecker, "/nonexistent/users"
        )
        self.assertIn("cannot read password file /nonexistent/users", str(e))
