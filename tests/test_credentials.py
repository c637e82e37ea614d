"""
Tests for L{mailframe.credentials}: which mechanisms a Portal's checkers
serve, checkers tried in order with the user-name type each keys on, the
realm, and the Authenticator's SCRAM parameters.
"""

from __future__ import annotations

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
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from mailframe import credentials as C
from mailframe import sasl
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
        from mailframe import passwords

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
