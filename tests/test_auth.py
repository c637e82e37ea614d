"""
Tests for L{mailframe.extensions.auth} and L{mailframe.extensions.starttls}
in a real server session, in memory (StringTransport, a fake clock, no
sleeps): every AUTH path and error, every mechanism, MAIL AUTH=, brute-force
limits, and STARTTLS.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

from twisted.cred import checkers
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from mailframe.auth.credentials import makePortal
from mailframe.backends.memory import MemoryBackend
from mailframe.config import ServerConfig
from mailframe.extensions import defaultExtensions
from mailframe.extensions.auth import Auth
from mailframe.extensions.starttls import StartTLS
from mailframe.interfaces import IExtension
from mailframe.policy.authlimits import AuthFailureLimiter
from mailframe.server import SMTPServerFactory, SMTPServerProtocol
from mailframe.validators.basic import AnyRecipient
from tests._transports import TLSTransport

PEER = "192.0.2.7"
CONTEXT = object()  # what StartTLS hands to transport.startTLS


def b64(data: bytes | str) -> bytes:
    return base64.b64encode(data.encode() if isinstance(data, str) else data)


def plain(user: str, password: str, authzid: str = "") -> bytes:
    return b64(f"{authzid}\0{user}\0{password}")


def codes(data: bytes) -> list[str]:
    """The code (and enhanced code) of each reply's last line."""
    out = []
    for line in data.split(b"\r\n"):
        if len(line) >= 3 and line[:3].isdigit() and line[3:4] in (b" ", b""):
            words = line.decode().split(" ")
            code = words[0]
            if len(words) > 1 and words[1][:1].isdigit() and words[1].count(".") == 2:
                code += " " + words[1]
            out.append(code)
    return out


@implementer(ICredentialsChecker)
class Later:
    """A checker that answers when the test says, or fails as told."""

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self) -> None:
        self.pending: list[defer.Deferred[Any]] = []

    def requestAvatarId(self, credentials: Any) -> Any:
        d: defer.Deferred[Any] = defer.Deferred()
        self.pending.append(d)
        return d


@implementer(ICredentialsChecker)
class Crashing:
    credentialInterfaces = (IUsernamePassword,)

    def requestAvatarId(self, credentials: Any) -> Any:
        raise OSError("user database unreachable")


def writePasswordFile(path: str, *users: tuple[str, int | None]) -> None:
    """A mailframe password file; each user's password is 'pw-USER'."""
    from mailframe.auth import passwords

    lines = [passwords.formatEntry(passwords.makeEntry(n, f"pw-{n}", i)) for n, i in users]
    with open(path, "w") as f:
        f.write("".join(line + "\n" for line in lines))


def passwordFile(
    case: SynchronousTestCase, *users: tuple[str, int | None], now: Any = None
) -> tuple[Any, str]:
    """A --auth mailframe:FILE checker (cheap argon2, checked at once) and its path."""
    from mailframe.auth import passwords
    from tests.test_passwords import fastHashing, synchronous

    fastHashing(case)
    path = case.mktemp()
    writePasswordFile(path, *users)
    source = passwords.PasswordFile(path, now=now or (lambda: 0.0))
    return passwords.PasswordFileChecker(source, runInThread=synchronous), path


def memory(**users: str) -> Any:
    checker = checkers.InMemoryUsernamePasswordDatabaseDontUse()
    for name, password in users.items():
        checker.addUser(name, password)  # type: ignore[arg-type]
    return checker


class AuthTestCase(SynchronousTestCase):
    """A server with STARTTLS and AUTH (alice/secret), on a fake clock."""

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.backend = MemoryBackend()
        self.limiter = AuthFailureLimiter(self.clock, maxFailures=5, window=60, blockFor=300)
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def factory(
        self,
        checkerList: list[Any] | None = None,
        tls: Any = CONTEXT,
        requireAuthentication: bool = False,
        **authOptions: Any,
    ) -> SMTPServerFactory:
        portal = makePortal(checkerList if checkerList is not None else [memory(alice="secret")])
        authOptions.setdefault("limiter", self.limiter)
        auth = Auth(portal, self.clock, scramNonce=lambda: "SRVNONCE", **authOptions)
        self.auth = auth
        config = ServerConfig(
            hostname="mx.test",
            localDomains=frozenset({"example.com"}),  # type: ignore[arg-type]
            requireAuthentication=requireAuthentication,
        )
        extensions = [*defaultExtensions(1 << 20), StartTLS(tls), auth]
        return SMTPServerFactory(
            config,
            self.backend,
            [AnyRecipient()],
            connectionFilters=[self.limiter],
            extensions=extensions,
            clock=self.clock,
        )

    def connect(
        self, factory: SMTPServerFactory | None = None, peer: str = PEER
    ) -> tuple[SMTPServerProtocol, TLSTransport]:
        proto = (factory or self.factory()).buildProtocol(None)
        transport = TLSTransport(peerAddress=IPv4Address("TCP", peer, 40000))
        proto.makeConnection(transport)
        return proto, transport

    def talk(self, proto: SMTPServerProtocol, t: StringTransport, data: bytes) -> bytes:
        t.clear()
        proto.dataReceived(data)
        return t.value()

    def secure(self, **options: Any) -> tuple[SMTPServerProtocol, TLSTransport]:
        """A session after STARTTLS, the handshake and a new EHLO."""
        proto, t = self.connect(self.factory(**options))
        self.talk(proto, t, b"EHLO client.test\r\nSTARTTLS\r\n")
        proto.handshakeCompleted()
        out = self.talk(proto, t, b"EHLO client.test\r\n")
        self.assertIn(b"AUTH ", out)
        return proto, t

    def logText(self) -> str:
        return "\n".join(formatEvent(e) for e in self.events)

    def scram(
        self, proto: SMTPServerProtocol, t: StringTransport, password: str, user: str = "alice"
    ) -> bytes:
        """Run SCRAM-SHA-256 as a client would; the reply to the client-final message."""
        return self.scramFinal(proto, t, password, self.scramFirst(proto, t, user))

    def scramFirst(
        self, proto: SMTPServerProtocol, t: StringTransport, user: str
    ) -> tuple[str, str]:
        """AUTH SCRAM-SHA-256 with the client-first message: (client-first-bare, server-first)."""
        bare = f"n={user},r=CLIENTNONCE"
        out = self.talk(proto, t, b"AUTH SCRAM-SHA-256 " + b64("n,," + bare) + b"\r\n")
        self.assertEqual(codes(out), ["334"])
        return bare, base64.b64decode(out[4:].strip()).decode()

    def scramFinal(
        self, proto: SMTPServerProtocol, t: StringTransport, password: str, first: tuple[str, str]
    ) -> bytes:
        """The client-final message with a proof made from C{password}; the reply to it."""
        bare, serverFirst = first
        fields = dict(f.split("=", 1) for f in serverFirst.split(","))
        self.assertEqual(fields["r"], "CLIENTNONCESRVNONCE")
        salt, iterations = base64.b64decode(fields["s"]), int(fields["i"])
        salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
        clientKey = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
        without = f"c=biws,r={fields['r']}"
        authMessage = f"{bare},{serverFirst},{without}".encode()
        signature = hmac.new(hashlib.sha256(clientKey).digest(), authMessage, hashlib.sha256)
        proof = bytes(a ^ b for a, b in zip(clientKey, signature.digest(), strict=True))
        self.expectedServerSignature = hmac.new(
            hmac.new(salted, b"Server Key", hashlib.sha256).digest(), authMessage, hashlib.sha256
        ).digest()
        final = f"{without},p={base64.b64encode(proof).decode()}"
        return self.talk(proto, t, b64(final) + b"\r\n")


class AdvertiseTests(AuthTestCase):
    def test_onlyInsideTLS(self) -> None:
        """AUTH is offered after STARTTLS, with every mechanism memory: can serve."""
        proto, t = self.connect()
        out = self.talk(proto, t, b"EHLO c\r\n")
        self.assertIn(b"250 STARTTLS\r\n", out)
        self.assertNotIn(b"AUTH", out)
        self.talk(proto, t, b"STARTTLS\r\n")
        proto.handshakeCompleted()
        out = self.talk(proto, t, b"EHLO c\r\n")
        self.assertIn(b"250 AUTH SCRAM-SHA-256 CRAM-MD5 PLAIN LOGIN\r\n", out)
        self.assertNotIn(b"STARTTLS", out)

    def test_beforeTLSOnTheWire(self) -> None:
        """AUTH before TLS is not offered, and on the wire it gets 538 5.7.11, not 500."""
        proto, t = self.connect()
        out = self.talk(proto, t, b"EHLO c\r\nAUTH PLAIN " + plain("alice", "secret") + b"\r\n")
        self.assertEqual(codes(out)[-1], "538 5.7.11")
        self.assertIsNone(proto.session.authenticated)

    def test_encryptionRequired(self) -> None:
        """Reached outside TLS anyway, AUTH answers 538 5.7.11."""
        proto, _t = self.connect()
        reply = self.auth.handleCommand(proto.commands.control, "AUTH", "PLAIN")
        self.assertEqual((reply.code, reply.enhanced), (538, (5, 7, 11)))

    def test_plaintextAllowed(self) -> None:
        """With allowPlaintext AUTH is offered and works without TLS."""
        proto, t = self.connect(self.factory(allowPlaintext=True))
        out = self.talk(proto, t, b"EHLO c\r\nAUTH PLAIN " + plain("alice", "secret") + b"\r\n")
        self.assertIn(b"250 AUTH SCRAM-SHA-256", out)
        self.assertEqual(codes(out)[-1], "235 2.7.0")

    def test_mechanismsFollowCheckers(self) -> None:
        """A checker without plaintext passwords gets PLAIN and LOGIN only."""

        @implementer(ICredentialsChecker)
        class HashesOnly:
            credentialInterfaces = (IUsernamePassword,)

            def requestAvatarId(self, credentials: Any) -> Any:
                raise NotImplementedError

        proto, t = self.secure(checkerList=[HashesOnly()])
        out = self.talk(proto, t, b"EHLO c\r\nAUTH CRAM-MD5\r\n")
        self.assertIn(b"250 AUTH PLAIN LOGIN\r\n", out)
        self.assertEqual(codes(out)[-1], "504 5.5.4")

    def test_argon2BesidePlaintext(self) -> None:
        """mailframe:FILE (argon2) beside a plaintext checker: no CRAM-MD5, and no count for it."""
        checker, _path = passwordFile(self, ("alice", 4096))
        proto, t = self.secure(checkerList=[checker, memory(bob="secret")])
        out = self.talk(proto, t, b"EHLO c\r\nAUTH CRAM-MD5\r\n")
        self.assertIn(b"250 AUTH SCRAM-SHA-256 PLAIN LOGIN\r\n", out)
        self.assertNotIn(b"CRAM-MD5", out)
        self.assertEqual(codes(out)[-1], "504 5.5.4")
        out = self.talk(proto, t, b"AUTH PLAIN " + plain("alice", "pw-alice") + b"\r\n")
        self.assertEqual(codes(out), ["235 2.7.0"])
        self.assertEqual(self.limiter.failures(PEER), 0)

    def test_plaintextCheckersOfferCramMD5(self) -> None:
        """Checkers that all know plaintext passwords still offer CRAM-MD5."""
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"carol:three\n")
        proto, t = self.secure(checkerList=[memory(alice="secret"), checkers.FilePasswordDB(path)])
        out = self.talk(proto, t, b"EHLO c\r\n")
        self.assertIn(b"250 AUTH SCRAM-SHA-256 CRAM-MD5 PLAIN LOGIN\r\n", out)
        challenge = base64.b64decode(self.talk(proto, t, b"AUTH CRAM-MD5\r\n")[4:].strip())
        digest = hmac.new(b"three", challenge, hashlib.md5).hexdigest()
        out = self.talk(proto, t, b64(f"carol {digest}") + b"\r\n")
        self.assertEqual(codes(out), ["235 2.7.0"])

    def test_offerFollowsPasswordFile(self) -> None:
        """SCRAM-SHA-256 comes and goes as users without SCRAM keys join and leave the file."""
        checker, path = passwordFile(self, ("alice", 4096), now=self.clock.seconds)
        proto, t = self.secure(checkerList=[checker])
        self.assertIn(
            b"250 AUTH SCRAM-SHA-256 PLAIN LOGIN\r\n", self.talk(proto, t, b"EHLO c\r\n")
        )
        writePasswordFile(path, ("alice", 4096), ("bob", None))
        self.clock.advance(2)
        out = self.talk(proto, t, b"EHLO c\r\nAUTH SCRAM-SHA-256\r\n")
        self.assertIn(b"250 AUTH PLAIN LOGIN\r\n", out)
        self.assertEqual(codes(out)[-1], "504 5.5.4")
        self.assertEqual(self.limiter.failures(PEER), 0)

    def test_noCheckers(self) -> None:
        """Without checkers AUTH is never offered."""
        proto, t = self.connect(self.factory(checkerList=[]))
        self.talk(proto, t, b"EHLO c\r\nSTARTTLS\r\n")
        proto.handshakeCompleted()
        self.assertNotIn(b"AUTH", self.talk(proto, t, b"EHLO c\r\n"))

    def test_provides(self) -> None:
        """Auth and StartTLS provide IExtension."""
        self.factory()
        verifyObject(IExtension, self.auth)
        verifyObject(IExtension, StartTLS(None))


class MechanismTests(AuthTestCase):
    def assertAuthenticated(self, proto: SMTPServerProtocol, mechanism: str) -> None:
        self.assertEqual(proto.session.authenticated, "alice")
        self.assertEqual(proto.session.authMechanism, mechanism)
        self.assertIn(f"auth ok user=alice mechanism={mechanism} ", self.logText())
        self.assertNotIn("secret", self.logText())

    def test_plainInitial(self) -> None:
        """PLAIN with an initial response: 235 2.7.0."""
        proto, t = self.secure()
        out = self.talk(proto, t, b"AUTH PLAIN " + plain("alice", "secret") + b"\r\n")
        self.assertEqual(out, b"235 2.7.0 Authentication successful\r\n")
        self.assertAuthenticated(proto, "PLAIN")

    def test_plainChallenge(self) -> None:
        """PLAIN without an initial response: an empty 334, then the credentials."""
        proto, t = self.secure()
        self.assertEqual(codes(self.talk(proto, t, b"AUTH plain\r\n")), ["334"])
        out = self.talk(proto, t, plain("alice", "secret") + b"\r\n")
        self.assertEqual(codes(out), ["235 2.7.0"])
        self.assertAuthenticated(proto, "PLAIN")

    def test_login(self) -> None:
        """LOGIN asks for Username: and Password: in base64."""
        proto, t = self.secure()
        self.assertEqual(self.talk(proto, t, b"AUTH LOGIN\r\n"), b"334 VXNlcm5hbWU6\r\n")
        self.assertEqual(self.talk(proto, t, b64("alice") + b"\r\n"), b"334 UGFzc3dvcmQ6\r\n")
        self.assertEqual(codes(self.talk(proto, t, b64("secret") + b"\r\n")), ["235 2.7.0"])
        self.assertAuthenticated(proto, "LOGIN")

    def test_loginInitial(self) -> None:
        """LOGIN with the user name as initial response asks only for the password."""
        proto, t = self.secure()
        self.assertEqual(
            self.talk(proto, t, b"AUTH LOGIN " + b64("alice") + b"\r\n"), b"334 UGFzc3dvcmQ6\r\n"
        )
        self.assertEqual(codes(self.talk(proto, t, b64("secret") + b"\r\n")), ["235 2.7.0"])

    def test_cramMD5(self) -> None:
        """CRAM-MD5: the digest of the server's challenge with the secret."""
        proto, t = self.secure()
        out = self.talk(proto, t, b"AUTH CRAM-MD5\r\n")
        challenge = base64.b64decode(out[4:].strip())
        self.assertRegex(challenge, rb"^<\d+@mx\.test>$")
        digest = hmac.new(b"secret", challenge, hashlib.md5).hexdigest()
        out = self.talk(proto, t, b64(f"alice {digest}") + b"\r\n")
        self.assertEqual(codes(out), ["235 2.7.0"])
        self.assertAuthenticated(proto, "CRAM-MD5")

    def test_cramMD5Wrong(self) -> None:
        """CRAM-MD5 with the wrong secret: 535 5.7.8."""
        proto, t = self.secure()
        challenge = base64.b64decode(self.talk(proto, t, b"AUTH CRAM-MD5\r\n")[4:].strip())
        digest = hmac.new(b"guess", challenge, hashlib.md5).hexdigest()
        self.assertEqual(
            codes(self.talk(proto, t, b64(f"alice {digest}") + b"\r\n")), ["535 5.7.8"]
        )

    def test_scramPlaintextChecker(self) -> None:
        """SCRAM-SHA-256 against memory:, with the server's signature checked."""
        proto, t = self.secure()
        out = self.scram(proto, t, "secret")
        self.assertEqual(codes(out), ["334"])
        verifier = base64.b64decode(out[4:].strip())
        self.assertEqual(verifier, b"v=" + base64.b64encode(self.expectedServerSignature))
        self.assertIsNone(proto.session.authenticated)
        self.assertEqual(codes(self.talk(proto, t, b"\r\n")), ["235 2.7.0"])
        self.assertAuthenticated(proto, "SCRAM-SHA-256")

    def test_scramStoredKeys(self) -> None:
        """SCRAM-SHA-256 against the password file's stored keys."""
        from mailframe.auth import passwords
        from tests.test_passwords import fastHashing, synchronous

        fastHashing(self)
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(passwords.formatEntry(passwords.makeEntry("alice", "secret", 4096)) + "\n")
        checker = passwords.PasswordFileChecker(path, runInThread=synchronous)
        proto, t = self.secure(checkerList=[checker])
        self.assertEqual(codes(self.scram(proto, t, "secret")), ["334"])
        self.assertEqual(codes(self.talk(proto, t, b"\r\n")), ["235 2.7.0"])
        self.assertEqual(proto.session.authenticated, "alice")

    def test_scramWrongPassword(self) -> None:
        """A SCRAM proof made with the wrong password: 535 5.7.8."""
        proto, t = self.secure()
        self.assertEqual(codes(self.scram(proto, t, "wrong")), ["535 5.7.8"])
        self.assertIsNone(proto.session.authenticated)

    def test_scramBadFinalAnswer(self) -> None:
        """Anything but an empty answer to the server signature is refused, unauthenticated."""
        proto, t = self.secure()
        self.scram(proto, t, "secret")
        self.assertEqual(codes(self.talk(proto, t, b64("x") + b"\r\n")), ["501 5.5.2"])
        self.assertIsNone(proto.session.authenticated)


class UnavoidableFailureTests(AuthTestCase):
    """A mechanism the user's checker cannot check for that user: 534 5.7.9, not counted."""

    def test_scramWithoutKeys(self) -> None:
        """A user who has no SCRAM keys (added while the exchange ran) gets 534, at once."""
        checker, path = passwordFile(self, ("alice", 4096), now=self.clock.seconds)
        proto, t = self.secure(checkerList=[checker], failureDelay=1.0, maxFailures=1)
        first = self.scramFirst(proto, t, "bob")
        writePasswordFile(path, ("alice", 4096), ("bob", None))
        self.clock.advance(2)
        out = self.scramFinal(proto, t, "pw-bob", first)
        self.assertEqual(codes(out), ["534 5.7.9"])  # no delay, and maxFailures=1 not reached
        self.assertFalse(t.disconnecting)
        self.assertIsNone(proto.session.authenticated)
        self.assertEqual(self.limiter.failures(PEER), 0)
        self.assertIn("AUTH SCRAM-SHA-256 for 'bob' not possible", self.logText())
        out = self.talk(proto, t, b"AUTH PLAIN " + plain("bob", "pw-bob") + b"\r\n")
        self.assertEqual(codes(out), ["235 2.7.0"])

    def test_wrongPasswordStillCounts(self) -> None:
        """A wrong SCRAM proof for a user with keys is still 535 and counted."""
        checker, _path = passwordFile(self, ("alice", 4096))
        proto, t = self.secure(checkerList=[checker])
        self.assertEqual(codes(self.scram(proto, t, "guess")), ["535 5.7.8"])
        self.assertEqual(codes(self.scram(proto, t, "guess", user="nobody")), ["535 5.7.8"])
        self.assertEqual(self.limiter.failures(PEER), 2)

    def test_smtplibFallsBack(self) -> None:
        """After 534 a client that moves to the next mechanism (as smtplib does) logs in."""
        checker, path = passwordFile(self, ("alice", 4096), now=self.clock.seconds)
        proto, t = self.secure(checkerList=[checker, memory(carol="secret")], failureDelay=1.0)
        first = self.scramFirst(proto, t, "bob")
        writePasswordFile(path, ("alice", 4096), ("bob", None))
        self.clock.advance(2)
        self.assertEqual(codes(self.scramFinal(proto, t, "pw-bob", first)), ["534 5.7.9"])
        out = self.talk(proto, t, b"AUTH LOGIN " + b64("bob") + b"\r\n" + b64("pw-bob") + b"\r\n")
        self.assertEqual(codes(out), ["334", "235 2.7.0"])
        self.assertEqual(self.limiter.failures(PEER), 0)


class ErrorTests(AuthTestCase):
    def assertUsable(self, proto: SMTPServerProtocol, t: TLSTransport) -> None:
        self.assertEqual(codes(self.talk(proto, t, b"NOOP\r\n")), ["250 2.0.0"])
        self.assertFalse(t.disconnecting)

    def test_badCredentials(self) -> None:
        """A wrong password is 535 5.7.8, and the session goes on."""
        proto, t = self.secure()
        out = self.talk(proto, t, b"AUTH PLAIN " + plain("alice", "guess") + b"\r\n")
        self.assertEqual(out, b"535 5.7.8 Authentication credentials invalid\r\n")
        self.assertUsable(proto, t)
        self.assertIn("auth failed user='alice' mechanism=PLAIN ", self.logText())
        self.assertNotIn("guess", self.logText())

    def test_malformed(self) -> None:
        """Bad base64, a missing NUL, and an empty initial response are 501 5.5.2."""
        proto, t = self.secure()
        for line in (
            b"AUTH PLAIN !!!!",
            b"AUTH PLAIN " + b64("alice secret"),
            b"AUTH PLAIN =",
            b"AUTH PLAIN YWxpY2U",  # no padding
        ):
            self.assertEqual(codes(self.talk(proto, t, line + b"\r\n")), ["501 5.5.2"], line)
        self.talk(proto, t, b"AUTH LOGIN\r\n")
        self.assertEqual(codes(self.talk(proto, t, b"not base64!\r\n")), ["501 5.5.2"])
        self.assertUsable(proto, t)
        self.assertIsNone(proto.session.authenticated)
        self.assertEqual(self.limiter.failures(PEER), 0)

    def test_cancel(self) -> None:
        """'*' cancels, as an answer or as the initial response: 501 5.0.0."""
        proto, t = self.secure()
        self.talk(proto, t, b"AUTH LOGIN\r\n")
        self.assertEqual(codes(self.talk(proto, t, b"*\r\n")), ["501 5.0.0"])
        self.assertEqual(codes(self.talk(proto, t, b"AUTH PLAIN *\r\n")), ["501 5.0.0"])
        self.assertUsable(proto, t)

    def test_tooLong(self) -> None:
        """An answer over 12288 octets is 500 5.5.6 (from the core); the session goes on."""
        proto, t = self.secure()
        self.talk(proto, t, b"AUTH PLAIN\r\n")
        self.assertEqual(codes(self.talk(proto, t, b"A" * 13000 + b"\r\n")), ["500 5.5.6"])
        self.assertUsable(proto, t)
        out = self.talk(proto, t, b"AUTH PLAIN " + plain("alice", "secret") + b"\r\n")
        self.assertEqual(codes(out), ["235 2.7.0"])

    def test_sequence(self) -> None:
        """AUTH during a transaction, or after success, is 503 5.5.1."""
        proto, t = self.secure()
        out = self.talk(proto, t, b"MAIL FROM:<a@b.example>\r\nAUTH PLAIN\r\nRSET\r\n")
        self.assertEqual(codes(out), ["250 2.1.0", "503 5.5.1", "250 2.0.0"])
        self.talk(proto, t, b"AUTH PLAIN " + plain("alice", "secret") + b"\r\n")
        out = self.talk(proto, t, b"AUTH PLAIN " + plain("alice", "secret") + b"\r\n")
        self.assertEqual(codes(out), ["503 5.5.1"])

    def test_syntax(self) -> None:
        """No mechanism or too many words is 501 5.5.4; an unknown mechanism 504 5.5.4."""
        proto, t = self.secure()
        out = self.talk(proto, t, b"AUTH\r\nAUTH PLAIN a b\r\nAUTH KERBEROS_V4\r\n")
        self.assertEqual(codes(out), ["501 5.5.4", "501 5.5.4", "504 5.5.4"])
        self.assertUsable(proto, t)

    def test_mechanismNameIsASCII(self) -> None:
        """A mechanism name matches as ASCII only: PLA<dotless i>N is not PLAIN."""
        proto, t = self.secure()
        out = self.talk(proto, t, "AUTH PLA\u0131N\r\n".encode())
        self.assertEqual(codes(out), ["504 5.5.4"])

    def test_authzid(self) -> None:
        """Asking to act as another user counts as a failure: 535 5.7.8."""
        proto, t = self.secure()
        out = self.talk(proto, t, b"AUTH PLAIN " + plain("alice", "secret", "root") + b"\r\n")
        self.assertEqual(codes(out), ["535 5.7.8"])
        self.assertIsNone(proto.session.authenticated)

    def test_checkerCrash(self) -> None:
        """A checker that fails is 454 4.7.0, not counted as a failed attempt."""
        proto, t = self.secure(checkerList=[Crashing()])
        out = self.talk(proto, t, b"AUTH PLAIN " + plain("alice", "secret") + b"\r\n")
        self.assertEqual(codes(out), ["454 4.7.0"])
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 2)
        self.assertEqual(self.limiter.failures(PEER), 0)
        self.assertUsable(proto, t)

    def test_slowChecker(self) -> None:
        """A checker's Deferred holds the reply, and pipelined commands, until it fires."""
        later = Later()
        proto, t = self.secure(checkerList=[later])
        out = self.talk(proto, t, b"AUTH PLAIN " + plain("alice", "secret") + b"\r\nNOOP\r\n")
        self.assertEqual(out, b"")
        later.pending[0].callback("alice")
        self.assertEqual(codes(t.value()), ["235 2.7.0", "250 2.0.0"])

    def test_pipelinedExchange(self) -> None:
        """AUTH LOGIN with its two answers in one write: each line goes to the exchange."""
        proto, t = self.secure()
        out = self.talk(
            proto, t, b"AUTH LOGIN\r\n" + b64("alice") + b"\r\n" + b64("secret") + b"\r\nNOOP\r\n"
        )
        self.assertEqual(codes(out), ["334", "334", "235 2.7.0", "250 2.0.0"])

    def test_emptyChallengeOnTheWire(self) -> None:
        """An empty challenge is a bare 334 line (the Reply type drops the trailing space)."""
        proto, t = self.secure()
        self.assertEqual(self.talk(proto, t, b"AUTH PLAIN\r\n"), b"334 \r\n")

    def test_connectionLostWhileChecking(self) -> None:
        """A checker that answers after the client left changes nothing and raises nothing."""
        later = Later()
        proto, t = self.secure(checkerList=[later])
        self.talk(proto, t, b"AUTH PLAIN " + plain("alice", "secret") + b"\r\n")
        proto.connectionLost(None)  # type: ignore[arg-type]
        later.pending[0].callback("alice")
        self.assertEqual(t.value(), b"")

    def test_checkerTimeout(self) -> None:
        """A checker that never answers is cancelled by the server's plug-point timeout."""
        later = Later()
        proto, t = self.secure(checkerList=[later])
        self.talk(proto, t, b"AUTH PLAIN " + plain("alice", "secret") + b"\r\n")
        self.clock.advance(proto.factory.config.pluginTimeout + 1)
        self.assertEqual(codes(t.value()), ["451 4.3.0"])
        self.assertIsNone(proto.session.authenticated)
        self.assertEqual(self.limiter.failures(PEER), 0)
        self.assertUsable(proto, t)

    def test_failureDelay(self) -> None:
        """With a failure delay the 535 is sent that many seconds later."""
        proto, t = self.secure(failureDelay=2.0)
        out = self.talk(proto, t, b"AUTH PLAIN " + plain("alice", "guess") + b"\r\n")
        self.assertEqual(out, b"")
        self.clock.advance(1.9)
        self.assertEqual(t.value(), b"")
        self.clock.advance(0.2)
        self.assertEqual(codes(t.value()), ["535 5.7.8"])


class BruteForceTests(AuthTestCase):
    def failOnce(self, proto: SMTPServerProtocol, t: TLSTransport) -> list[str]:
        return codes(self.talk(proto, t, b"AUTH PLAIN " + plain("alice", "guess") + b"\r\n"))

    def test_sessionLimit(self) -> None:
        """The third failure in a session is 421 4.7.0 and the connection closes."""
        proto, t = self.secure()
        self.assertEqual(self.failOnce(proto, t), ["535 5.7.8"])
        self.assertEqual(self.failOnce(proto, t), ["535 5.7.8"])
        self.assertEqual(self.failOnce(proto, t), ["421 4.7.0"])
        self.assertTrue(t.disconnecting)

    def test_clientLimit(self) -> None:
        """Failures add up per client across sessions; over the limit it is refused at connect."""
        for _ in range(2):
            proto, t = self.secure()
            self.failOnce(proto, t)
            self.failOnce(proto, t)
        proto, t = self.secure()
        self.assertEqual(self.failOnce(proto, t), ["421 4.7.0"])  # the fifth: blocked now
        self.assertTrue(t.disconnecting)
        proto, t = self.connect()  # a 421 at connect is no greeting: it has its enhanced code
        self.assertEqual(
            t.value(), b"421 4.7.0 Too many failed authentication attempts; try again later\r\n"
        )
        self.assertTrue(t.disconnecting)
        _other, t2 = self.connect(peer="192.0.2.8")
        self.assertEqual(codes(t2.value()), ["220"])
        self.clock.advance(301)
        proto, t = self.connect()
        self.assertEqual(codes(t.value()), ["220"])

    def test_blockedMidSession(self) -> None:
        """A session whose client was blocked meanwhile gets 421 at its next AUTH."""
        proto, t = self.secure()
        for _ in range(5):
            self.limiter.recordFailure(PEER)
        out = self.talk(proto, t, b"AUTH PLAIN " + plain("alice", "secret") + b"\r\n")
        self.assertEqual(codes(out), ["421 4.7.0"])
        self.assertIsNone(proto.session.authenticated)

    def test_successDoesNotReset(self) -> None:
        """A success does not wipe the client's failures."""
        proto, t = self.secure()
        self.failOnce(proto, t)
        self.talk(proto, t, b"AUTH PLAIN " + plain("alice", "secret") + b"\r\n")
        self.assertEqual(self.limiter.failures(PEER), 1)


class MailParameterTests(AuthTestCase):
    def test_authenticated(self) -> None:
        """An authenticated session's AUTH= is xtext-decoded into envelope.authIdentity."""
        proto, t = self.secure()
        self.talk(proto, t, b"AUTH PLAIN " + plain("alice", "secret") + b"\r\n")
        out = self.talk(
            proto,
            t,
            b"MAIL FROM:<alice@example.com> AUTH=alice+2Bx@example.com\r\n"
            b"RCPT TO:<bob@elsewhere.example>\r\nDATA\r\nhi\r\n.\r\n",
        )
        self.assertEqual(codes(out), ["250 2.1.0", "250 2.1.5", "354", "250 2.0.0"])
        [message] = self.backend.messages
        self.assertEqual(message.envelope.authIdentity, "alice+x@example.com")
        self.assertIn(b"with ESMTPSA id", message.data)

    def test_unauthenticated(self) -> None:
        """Without authentication AUTH= is taken as AUTH=<>."""
        proto, t = self.secure()
        self.talk(proto, t, b"MAIL FROM:<a@b.example> AUTH=someone@example.com\r\n")
        self.assertEqual(self.backendEnvelope(proto).authIdentity, "<>")

    def backendEnvelope(self, proto: SMTPServerProtocol) -> Any:
        assert proto.commands.envelope is not None
        return proto.commands.envelope

    def test_badValue(self) -> None:
        """A bad xtext or a missing value is 501 5.5.4."""
        proto, t = self.secure()
        out = self.talk(proto, t, b"MAIL FROM:<a@b.example> AUTH=bad+ZZ\r\nMAIL FROM:<a@b.example> AUTH\r\n")  # fmt: skip
        self.assertEqual(codes(out), ["501 5.5.4", "501 5.5.4"])

    def test_notAdvertised(self) -> None:
        """Before TLS AUTH is not offered, so AUTH= is an unknown parameter."""
        proto, t = self.connect()
        out = self.talk(proto, t, b"EHLO c\r\nMAIL FROM:<a@b.example> AUTH=<>\r\n")
        self.assertEqual(codes(out)[-1], "555 5.5.4")

    def test_submission(self) -> None:
        """On a submission listener MAIL needs AUTH (530 5.7.0); then any domain is fine."""
        proto, t = self.secure(requireAuthentication=True)
        self.assertEqual(
            codes(self.talk(proto, t, b"MAIL FROM:<alice@example.com>\r\n")), ["530 5.7.0"]
        )
        self.talk(proto, t, b"AUTH PLAIN " + plain("alice", "secret") + b"\r\n")
        out = self.talk(proto, t, b"MAIL FROM:<alice@example.com>\r\nRCPT TO:<x@far.example>\r\n")
        self.assertEqual(codes(out), ["250 2.1.0", "250 2.1.5"])
