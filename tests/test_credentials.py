"""
Tests for L{mailframe.auth.credentials}: which mechanisms a Portal's checkers
serve, checkers tried in order with the user-name type each keys on, the
realm, and the Authenticator's SCRAM parameters.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path
from typing import Any

from twisted.cred import error, strcred
from twisted.cred.checkers import (
    FilePasswordDB,
    ICredentialsChecker,
    InMemoryUsernamePasswordDatabaseDontUse,
)
from twisted.cred.credentials import IUsernameHashedPassword, IUsernamePassword
from twisted.cred.portal import IRealm
from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from mailframe.auth import credentials as C
from mailframe.auth import sasl
from tests.test_passwords import fastHashing, scramFinal, synchronous


def memory(**users: str) -> InMemoryUsernamePasswordDatabaseDontUse:
    """What --auth memory:user:pass builds: str keys and passwords."""
    checker = InMemoryUsernamePasswordDatabaseDontUse()
    for name, password in users.items():
        checker.addUser(name, password)  # type: ignore[arg-type]
    return checker


@implementer(ICredentialsChecker)
class Broken:
    credentialInterfaces = (IUsernamePassword,)

    def requestAvatarId(self, credentials: Any) -> Any:
        raise RuntimeError("database down")


@implementer(ICredentialsChecker, C.IScramKeySource)
class ScramOnly:
    """A checker of stored SCRAM keys only (no PLAIN, no LOGIN)."""

    credentialInterfaces = (C.IScramSha256Credentials,)

    def scramParameters(self, username: str) -> Any:
        return None

    def requestAvatarId(self, credentials: Any) -> Any:
        raise error.UnauthorizedLogin()

    def __repr__(self) -> str:
        return "<ScramOnly>"


def writePasswordFile(path: str, *users: tuple[str, int | None]) -> None:
    """USER:argon2[:SCRAM] lines; each user's password is 'pw-USER'."""
    from mailframe.auth import passwords

    lines = [passwords.formatEntry(passwords.makeEntry(n, f"pw-{n}", i)) for n, i in users]
    Path(path).write_text("".join(line + "\n" for line in lines))


def passwordFile(
    case: SynchronousTestCase, *users: tuple[str, int | None], now: list[float] | None = None
) -> Any:
    """A mailframe password file checker (fast argon2, checked synchronously)."""
    from mailframe.auth import passwords

    fastHashing(case)
    path = case.mktemp()
    writePasswordFile(path, *users)
    clock = now if now is not None else [0.0]
    source = passwords.PasswordFile(path, now=lambda: clock[0])
    return passwords.PasswordFileChecker(source, runInThread=synchronous)


class MechanismTests(SynchronousTestCase):
    def test_memory(self) -> None:
        """A plaintext checker serves every mechanism, strongest first."""
        portal = C.makePortal([memory(alice="secret")])
        self.assertEqual(C.mechanismsFor(portal), ("SCRAM-SHA-256", "CRAM-MD5", "PLAIN", "LOGIN"))

    def test_unix(self) -> None:
        """The unix checker (hashes only) serves PLAIN and LOGIN."""
        portal = C.makePortal([strcred.makeChecker("unix")])
        self.assertEqual(C.mechanismsFor(portal), ("PLAIN", "LOGIN"))

    def test_passwordFile(self) -> None:
        """mailframe's password file serves SCRAM-SHA-256, PLAIN and LOGIN, not CRAM-MD5."""
        path = self.mktemp()
        Path(path).write_text("")
        portal = C.makePortal([strcred.makeChecker(f"mailframe:{path}")])
        self.assertEqual(C.mechanismsFor(portal), ("SCRAM-SHA-256", "PLAIN", "LOGIN"))

    def test_none(self) -> None:
        """No checkers, no mechanisms."""
        self.assertEqual(C.mechanismsFor(C.makePortal([])), ())

    def test_restrict(self) -> None:
        """An Authenticator may offer fewer mechanisms, never ones the checkers cannot serve."""
        portal = C.makePortal([strcred.makeChecker("unix")])
        self.assertEqual(C.Authenticator(portal, ["PLAIN"]).mechanisms, ("PLAIN",))
        e = self.assertRaises(ValueError, C.Authenticator, portal, ["CRAM-MD5"])
        self.assertIn("cannot serve CRAM-MD5", str(e))

    def test_restrictMixed(self) -> None:
        """CRAM-MD5 cannot be forced on when one checker cannot check it."""
        portal = C.makePortal([memory(alice="secret"), strcred.makeChecker("unix")])
        e = self.assertRaises(ValueError, C.Authenticator, portal, ["CRAM-MD5", "PLAIN"])
        self.assertIn("cannot serve CRAM-MD5", str(e))

    def test_plaintextCheckers(self) -> None:
        """Several checkers that all know plaintext passwords still serve every mechanism."""
        path = self.mktemp()
        Path(path).write_bytes(b"carol:three\n")
        portal = C.makePortal([memory(alice="secret"), strcred.makeChecker(f"file:{path}")])
        self.assertEqual(C.mechanismsFor(portal), ("SCRAM-SHA-256", "CRAM-MD5", "PLAIN", "LOGIN"))

    def test_hashesBesidePlaintext(self) -> None:
        """A checker with hashes only beside a plaintext one: no CRAM-MD5, no SCRAM for all."""
        portal = C.makePortal([strcred.makeChecker("unix"), memory(alice="secret")])
        self.assertEqual(C.mechanismsFor(portal), ("PLAIN", "LOGIN"))

    def test_passwordFileBesidePlaintext(self) -> None:
        """mailframe:FILE (argon2 and SCRAM keys) beside memory: SCRAM, PLAIN, LOGIN."""
        portal = C.makePortal([passwordFile(self, ("alice", 4096)), memory(bob="secret")])
        self.assertEqual(C.mechanismsFor(portal), ("SCRAM-SHA-256", "PLAIN", "LOGIN"))
        self.assertEqual(C.Authenticator(portal).mechanisms, ("SCRAM-SHA-256", "PLAIN", "LOGIN"))

    def test_passwordFileWithoutScramKeys(self) -> None:
        """SCRAM-SHA-256 is offered only while every user of the file has SCRAM keys."""
        now = [0.0]
        checker = passwordFile(self, ("alice", 4096), ("bob", None), now=now)
        authenticator = C.Authenticator(C.makePortal([checker, memory(carol="secret")]))
        self.assertEqual(authenticator.mechanisms, ("PLAIN", "LOGIN"))
        self.assertEqual(C.mechanismsFor(authenticator.portal), ("PLAIN", "LOGIN"))
        writePasswordFile(checker.passwords.path, ("alice", 4096), ("bob", 4096))
        now[0] = 2.0
        self.assertEqual(authenticator.mechanisms, ("SCRAM-SHA-256", "PLAIN", "LOGIN"))

    def test_otherCredentialsIgnored(self) -> None:
        """A checker for credentials AUTH never uses (anonymous) takes nothing away."""
        portal = C.makePortal([strcred.makeChecker("anonymous"), memory(alice="secret")])
        self.assertEqual(C.mechanismsFor(portal), ("SCRAM-SHA-256", "CRAM-MD5", "PLAIN", "LOGIN"))

    def test_nothingInCommon(self) -> None:
        """Checkers that share no mechanism are refused when the Authenticator is made."""
        portal = C.makePortal([ScramOnly(), strcred.makeChecker("unix")])
        self.assertEqual(C.mechanismsFor(portal), ())
        e = self.assertRaises(ValueError, C.Authenticator, portal)
        self.assertIn("no mechanism in common", str(e))
        self.assertIn("ScramOnly", str(e))


class ChainTests(SynchronousTestCase):
    def login(self, portal: Any, creds: Any) -> str:
        d = C.Authenticator(portal).login(creds)
        return self.successResultOf(  # type: ignore[no-any-return]
            d.addErrback(lambda f: f.trap(error.UnauthorizedLogin) and "refused")
        )

    def test_inOrder(self) -> None:
        """Checkers are asked in order until one accepts."""
        portal = C.makePortal([memory(alice="one"), memory(bob="two")])
        self.assertEqual(self.login(portal, C.PasswordCredentials("bob", "two")), "bob")
        self.assertEqual(self.login(portal, C.PasswordCredentials("alice", "one")), "alice")
        self.assertEqual(self.login(portal, C.PasswordCredentials("bob", "one")), "refused")

    def test_usernameTypes(self) -> None:
        """The str-keyed memory checker and the bytes-keyed file checker both work."""
        path = self.mktemp()
        Path(path).write_bytes(b"carol:three\n")
        portal = C.makePortal([memory(alice="one"), FilePasswordDB(path)])
        self.assertEqual(self.login(portal, C.PasswordCredentials("carol", "three")), "carol")
        self.assertEqual(self.login(portal, C.PasswordCredentials("alice", "one")), "alice")
        self.assertEqual(self.login(portal, C.PasswordCredentials(b"alice", b"one")), "alice")

    def test_brokenChecker(self) -> None:
        """A checker that crashes makes the login fail with its error, not UnauthorizedLogin."""
        portal = C.makePortal([Broken(), memory(alice="one")])
        self.assertEqual(self.login(portal, C.PasswordCredentials("alice", "one")), "alice")
        failure = self.failureResultOf(
            C.Authenticator(portal).login(C.PasswordCredentials("alice", "two")), RuntimeError
        )
        self.assertIn("database down", str(failure.value))
        self.flushLoggedErrors(RuntimeError)

    def test_cramMD5(self) -> None:
        """CRAM-MD5 credentials are checked with the plaintext secret."""
        portal = C.makePortal([memory(tim="tanstaaftanstaaf")])
        mech = sasl.CramMD5("h")
        mech.challenge = b"<1896.697170952@postoffice.reston.mci.net>"
        response = mech.respond(b"tim b913a602c7eda7a495b4e6e7334d3890")
        assert isinstance(response, sasl.CramMD5Response)
        self.assertEqual(self.login(portal, C.CramMD5Credentials(response)), "tim")

    def test_scramPlaintext(self) -> None:
        """A SCRAM proof is checked with a plaintext password and yields the server key."""
        portal = C.makePortal([memory(alice="secret")])
        auth = C.Authenticator(portal, randomBytes=lambda n: b"s" * n)
        salt, iterations, stored = self.successResultOf(auth.scramParameters("alice"))
        self.assertEqual((salt, iterations, stored), (b"s" * 16, 4096, False))
        mech = sasl.ScramSha256(nonce=lambda: "srv")
        mech.start(b"n,,n=alice,r=cli")
        mech.serverFirst(salt, iterations)
        creds = C.ScramPasswordCredentials(mech.respond(scramFinal("secret", salt, 4096, mech)))  # type: ignore[arg-type]
        self.assertEqual(self.login(portal, creds), "alice")
        self.assertEqual(creds.serverKey, sasl.scramKeys("secret", salt, 4096).serverKey)

    def test_scramStoredAndFake(self) -> None:
        """Stored SCRAM parameters come from the file; unknown users get a stable fake salt."""
        fastHashing(self)
        from mailframe.auth import passwords

        path = self.mktemp()
        entry = passwords.makeEntry("alice", "secret", 5000)
        Path(path).write_text(passwords.formatEntry(entry) + "\n")
        checker = passwords.PasswordFileChecker(path, runInThread=synchronous)
        auth = C.Authenticator(C.makePortal([checker]))
        assert entry.scram is not None
        self.assertEqual(
            self.successResultOf(auth.scramParameters("alice")), (entry.scram.salt, 5000, True)
        )
        fake = self.successResultOf(auth.scramParameters("nobody"))
        self.assertEqual(fake[1:], (5000, True))
        self.assertEqual(self.successResultOf(auth.scramParameters("nobody")), fake)
        self.assertNotEqual(self.successResultOf(auth.scramParameters("nobody2")), fake)


def outcome(d: defer.Deferred[Any]) -> Any:
    """The result of a Deferred that has fired: a value, or a Failure."""
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    return results[0]


class UnavoidableTests(SynchronousTestCase):
    """
    A login that fails because the user's checker cannot check that mechanism
    for them fails with MechanismUnavailable; a wrong answer that some checker
    compared with a secret of the user stays UnauthorizedLogin.
    """

    def scram(self, authenticator: C.Authenticator, username: str, password: str) -> Any:
        """Log in with SCRAM-SHA-256 as a client would; the Failure or the name."""
        salt, iterations, stored = self.successResultOf(authenticator.scramParameters(username))
        mech = sasl.ScramSha256(nonce=lambda: "srv")
        mech.start(f"n,,n={username},r=cli".encode())
        mech.serverFirst(salt, iterations)
        response = mech.respond(scramFinal(password, salt, iterations, mech))
        kind = C.ScramStoredCredentials if stored else C.ScramPasswordCredentials
        return outcome(authenticator.login(kind(response)))  # type: ignore[arg-type]

    def cram(self, authenticator: C.Authenticator, username: str, secret: bytes) -> Any:
        mech = sasl.CramMD5("h")
        digest = hmac.new(secret, mech.challenge, hashlib.md5).hexdigest()
        response = mech.respond(f"{username} {digest}".encode())
        return outcome(authenticator.login(C.CramMD5Credentials(response)))  # type: ignore[arg-type]

    def assertUnavailable(self, result: Any) -> None:
        self.assertIsInstance(result, Failure)
        self.assertTrue(result.check(C.MechanismUnavailable), result)
        self.assertIsInstance(result.value, error.UnauthorizedLogin)

    def assertRefused(self, result: Any) -> None:
        self.assertIsInstance(result, Failure)
        self.assertTrue(result.check(error.UnauthorizedLogin), result)
        self.assertFalse(result.check(C.MechanismUnavailable), result)

    def test_noScramKeys(self) -> None:
        """A user of the file without SCRAM keys cannot use SCRAM, whatever the password."""
        checker = passwordFile(self, ("alice", 4096), ("bob", None))
        authenticator = C.Authenticator(C.makePortal([checker]))
        self.assertUnavailable(self.scram(authenticator, "bob", "pw-bob"))
        self.assertUnavailable(self.scram(authenticator, "bob", "guess"))
        self.assertEqual(self.scram(authenticator, "alice", "pw-alice"), "alice")
        self.assertRefused(self.scram(authenticator, "alice", "guess"))
        self.assertRefused(self.scram(authenticator, "nobody", "guess"))

    def test_besidePlaintext(self) -> None:
        """Beside a plaintext checker that does not know the user, still unavailable."""
        checker = passwordFile(self, ("bob", None))
        authenticator = C.Authenticator(C.makePortal([checker, memory(carol="secret")]))
        self.assertUnavailable(self.scram(authenticator, "bob", "pw-bob"))
        self.assertUnavailable(self.cram(authenticator, "bob", b"pw-bob"))
        self.assertRefused(self.cram(authenticator, "carol", b"guess"))
        self.assertRefused(self.scram(authenticator, "nobody", "guess"))

    def test_comparedElsewhere(self) -> None:
        """If another checker compared the answer with the user's secret, it is a failure."""
        checker = passwordFile(self, ("bob", None))
        authenticator = C.Authenticator(C.makePortal([checker, memory(bob="other")]))
        self.assertRefused(self.scram(authenticator, "bob", "pw-bob"))
        self.assertRefused(self.cram(authenticator, "bob", b"pw-bob"))

    def test_unknownChecker(self) -> None:
        """A plaintext checker that cannot say whom it knows may have compared: a failure."""

        @implementer(ICredentialsChecker)
        class Opaque:
            credentialInterfaces = (IUsernamePassword, IUsernameHashedPassword)

            def requestAvatarId(self, credentials: Any) -> Any:
                raise error.UnauthorizedLogin()

        checker = passwordFile(self, ("bob", None))
        authenticator = C.Authenticator(C.makePortal([checker, Opaque()]))
        self.assertRefused(self.cram(authenticator, "bob", b"pw-bob"))

    def test_hashedFile(self) -> None:
        """A FilePasswordDB of hashes knows its users: CRAM-MD5 for them is unavailable."""
        path = self.mktemp()
        Path(path).write_bytes(b"dave:" + hashlib.sha256(b"pw").hexdigest().encode() + b"\n")
        hashed = FilePasswordDB(path, hash=lambda u, p, s: hashlib.sha256(p).hexdigest().encode())
        plainPath = self.mktemp()
        Path(plainPath).write_bytes(b"erin:pw\n")
        portal = C.makePortal([hashed, FilePasswordDB(plainPath), memory(carol="secret")])
        authenticator = C.Authenticator(portal)
        self.assertEqual(authenticator.mechanisms, ("PLAIN", "LOGIN"))
        self.assertUnavailable(self.cram(authenticator, "dave", b"pw"))
        self.assertRefused(self.cram(authenticator, "erin", b"guess"))
        self.assertEqual(self.cram(authenticator, "erin", b"pw"), "erin")
        self.assertRefused(self.cram(authenticator, "frank", b"guess"))

    def test_passwordsNeverUnavailable(self) -> None:
        """A wrong PLAIN password is a failure, for users of every checker."""
        checker = passwordFile(self, ("bob", None))
        authenticator = C.Authenticator(C.makePortal([checker, memory(carol="secret")]))
        for name in ("bob", "carol", "nobody"):
            self.assertRefused(outcome(authenticator.login(C.PasswordCredentials(name, "guess"))))

    def test_coverageCrash(self) -> None:
        """A checker that cannot say whom it knows leaves a refusal a refusal (and is logged)."""

        @implementer(ICredentialsChecker, C.IMechanismCoverage)
        class Crashing:
            credentialInterfaces = (IUsernamePassword,)

            def requestAvatarId(self, credentials: Any) -> Any:
                raise error.UnauthorizedLogin()

            def mechanismsForEveryone(self) -> Any:
                return {"PLAIN", "LOGIN"}

            def mechanismsForUser(self, username: str) -> Any:
                raise OSError("directory down")

        authenticator = C.Authenticator(C.makePortal([Crashing(), memory(carol="secret")]))
        self.assertRefused(self.cram(authenticator, "bob", b"guess"))
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    def test_coverageProvided(self) -> None:
        """The password file checker says what each user, and every user, can use."""
        checker = passwordFile(self, ("alice", 4096), ("bob", None))
        verifyObject(C.IMechanismCoverage, checker)
        self.assertEqual(set(checker.mechanismsForEveryone()), {"PLAIN", "LOGIN"})
        self.assertEqual(
            set(checker.mechanismsForUser("alice")), {"SCRAM-SHA-256", "PLAIN", "LOGIN"}
        )
        self.assertEqual(set(checker.mechanismsForUser("bob")), {"PLAIN", "LOGIN"})
        self.assertIsNone(checker.mechanismsForUser("carol"))


class ProvidesTests(SynchronousTestCase):
    def test_provides(self) -> None:
        """Every provider of this module verifies against its interface."""
        verifyObject(IRealm, C.UserRealm())
        verifyObject(C.IAuthenticatedUser, C.AuthenticatedUser("alice"))
        verifyObject(IUsernamePassword, C.PasswordCredentials("a", "b"))
        response = sasl.CramMD5Response("a", b"c", "0" * 32)
        verifyObject(IUsernameHashedPassword, C.CramMD5Credentials(response))
        scram = sasl.ScramResponse("a", b"s", 4096, b"m", b"p" * 32)
        verifyObject(IUsernameHashedPassword, C.ScramPasswordCredentials(scram))
        verifyObject(C.IScramSha256Credentials, C.ScramStoredCredentials(scram))
        chain = C.CheckerChain(IUsernamePassword, [memory()])
        verifyObject(ICredentialsChecker, chain)

    def test_realm(self) -> None:
        """The realm names the avatar after the avatar id, as str."""
        _i, avatar, logout = C.UserRealm().requestAvatar(b"alice", None, C.IAuthenticatedUser)
        self.assertEqual(avatar.name, "alice")
        logout()
        self.assertRaises(NotImplementedError, C.UserRealm().requestAvatar, "a", None, IRealm)

    def test_deferred(self) -> None:
        """A checker that answers later is waited for."""

        @implementer(ICredentialsChecker)
        class Later:
            credentialInterfaces = (IUsernamePassword,)

            def __init__(self) -> None:
                self.d: defer.Deferred[str] = defer.Deferred()

            def requestAvatarId(self, credentials: Any) -> Any:
                return self.d

        later = Later()
        d = C.Authenticator(C.makePortal([later])).login(C.PasswordCredentials("a", "b"))
        self.assertNoResult(d)
        later.d.callback(b"a")
        self.assertEqual(self.successResultOf(d), "a")
