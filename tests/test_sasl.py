"""
Tests for L{mailframe.auth.sasl}: PLAIN, LOGIN, CRAM-MD5 (RFC 2195 vector),
SCRAM-SHA-256 (RFC 7677 vector) and SASLprep (RFC 4013 examples).
"""

from __future__ import annotations

import base64

from twisted.trial.unittest import SynchronousTestCase

from mailframe.auth import sasl

# RFC 7677 3
SCRAM_USER = "user"
SCRAM_PASSWORD = "pencil"
CLIENT_FIRST = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
SERVER_NONCE = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
SALT = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
SERVER_FIRST = (
    b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
)
CLIENT_FINAL = (
    b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
    b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
)
SERVER_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="

# RFC 2195 2
CRAM_CHALLENGE = b"<1896.697170952@postoffice.reston.mci.net>"
CRAM_RESPONSE = b"tim b913a602c7eda7a495b4e6e7334d3890"
CRAM_SECRET = b"tanstaaftanstaaf"


class PlainTests(SynchronousTestCase):
    def test_initialResponse(self) -> None:
        """An initial response gives the user name and password at once."""
        outcome = sasl.Plain().start(b"\0alice\0secret")
        self.assertEqual(outcome, sasl.PasswordResponse("alice", "secret"))

    def test_emptyChallenge(self) -> None:
        """Without an initial response PLAIN asks with an empty challenge."""
        mech = sasl.Plain()
        self.assertEqual(mech.start(None), sasl.Challenge(b""))
        self.assertEqual(mech.respond(b"\0bob\0pw"), sasl.PasswordResponse("bob", "pw"))

    def test_authzid(self) -> None:
        """An authorization identity equal to the user is fine; another one is refused."""
        self.assertEqual(
            sasl.Plain().start(b"alice\0alice\0pw"), sasl.PasswordResponse("alice", "pw")
        )
        self.assertRaises(sasl.AuthorizationRefused, sasl.Plain().start, b"root\0alice\0pw")

    def test_malformed(self) -> None:
        """A missing NUL, empty fields or bytes that are not UTF-8 are malformed."""
        for data in (b"alice secret", b"\0alice", b"\0\0pw", b"\0alice\0", b"\0\xff\0pw", b""):
            self.assertRaises(sasl.MalformedResponse, sasl.Plain().start, data)

    def test_reprHidesPassword(self) -> None:
        """The password never shows in a repr (and so never in a log)."""
        self.assertNotIn("secret", repr(sasl.PasswordResponse("alice", "secret")))


class LoginTests(SynchronousTestCase):
    def test_exchange(self) -> None:
        """LOGIN asks for the user name, then the password."""
        mech = sasl.Login()
        self.assertEqual(mech.start(None), sasl.Challenge(b"Username:"))
        self.assertEqual(mech.respond(b"alice"), sasl.Challenge(b"Password:"))
        self.assertEqual(mech.respond(b"secret"), sasl.PasswordResponse("alice", "secret"))

    def test_initialResponse(self) -> None:
        """An initial response is the user name."""
        mech = sasl.Login()
        self.assertEqual(mech.start(b"alice"), sasl.Challenge(b"Password:"))
        self.assertEqual(mech.respond(b"pw"), sasl.PasswordResponse("alice", "pw"))

    def test_malformed(self) -> None:
        """Empty answers, NULs and bytes that are not UTF-8 are malformed."""
        self.assertRaises(sasl.MalformedResponse, sasl.Login().start, b"")
        self.assertRaises(sasl.MalformedResponse, sasl.Login().start, b"a\0b")
        self.assertRaises(sasl.MalformedResponse, sasl.Login().start, b"\xff")
        mech = sasl.Login()
        mech.start(b"alice")
        self.assertRaises(sasl.MalformedResponse, mech.respond, b"")


class CramMD5Tests(SynchronousTestCase):
    def test_rfc2195(self) -> None:
        """The example of RFC 2195 verifies with its secret, and not with another."""
        mech = sasl.CramMD5("postoffice.reston.mci.net")
        mech.challenge = CRAM_CHALLENGE
        self.assertEqual(mech.start(None), sasl.Challenge(CRAM_CHALLENGE))
        response = mech.respond(CRAM_RESPONSE)
        assert isinstance(response, sasl.CramMD5Response)
        self.assertEqual(response.username, "tim")
        self.assertTrue(response.verify(CRAM_SECRET))
        self.assertFalse(response.verify(b"wrong"))

    def test_challenge(self) -> None:
        """The challenge is a msg-id with a random number and the host name."""
        mech = sasl.CramMD5("mx.test", lambda n: b"\x01" * n)
        self.assertEqual(mech.challenge, f"<{0x0101010101010101}@mx.test>".encode())

    def test_malformed(self) -> None:
        """An initial response, or an answer that is not 'user hex32', is malformed."""
        self.assertRaises(sasl.MalformedResponse, sasl.CramMD5("h").start, b"x")
        for data in (
            b"tim",
            b"tim B913A602C7EDA7A495B4E6E7334D3890",
            b"tim abc",
            b" " + b"0" * 32,
        ):
            mech = sasl.CramMD5("h")
            mech.start(None)
            self.assertRaises(sasl.MalformedResponse, mech.respond, data)


class ScramTests(SynchronousTestCase):
    def mechanism(self) -> sasl.ScramSha256:
        return sasl.ScramSha256(nonce=lambda: SERVER_NONCE)

    def test_rfc7677(self) -> None:
        """The RFC 7677 exchange, checked with the plaintext password."""
        mech = self.mechanism()
        self.assertEqual(mech.start(CLIENT_FIRST), sasl.ScramLookup(SCRAM_USER))
        self.assertEqual(mech.serverFirst(SALT, 4096), sasl.Challenge(SERVER_FIRST))
        response = mech.respond(CLIENT_FINAL)
        assert isinstance(response, sasl.ScramResponse)
        serverKey = response.verifyPassword(SCRAM_PASSWORD)
        assert serverKey is not None
        self.assertIsNone(response.verifyPassword("pencil2"))
        self.assertEqual(mech.serverFinal(serverKey), sasl.Challenge(SERVER_FINAL))
        self.assertEqual(mech.respond(b""), sasl.Finished(SCRAM_USER))

    def test_storedKeys(self) -> None:
        """The same exchange checked with stored keys, never the password."""
        keys = sasl.scramKeys(SCRAM_PASSWORD, SALT, 4096)
        mech = self.mechanism()
        mech.start(CLIENT_FIRST)
        mech.serverFirst(keys.salt, keys.iterations)
        response = mech.respond(CLIENT_FINAL)
        assert isinstance(response, sasl.ScramResponse)
        self.assertTrue(response.verifyStoredKey(keys.storedKey))
        self.assertFalse(response.verifyStoredKey(sasl.scramKeys("x", SALT, 4096).storedKey))
        self.assertEqual(mech.serverFinal(keys.serverKey), sasl.Challenge(SERVER_FINAL))

    def test_emptyInitial(self) -> None:
        """Without an initial response SCRAM asks with an empty challenge."""
        mech = self.mechanism()
        self.assertEqual(mech.start(None), sasl.Challenge(b""))
        self.assertEqual(mech.respond(CLIENT_FIRST), sasl.ScramLookup(SCRAM_USER))

    def test_clientFirstErrors(self) -> None:
        """Channel binding, mandatory extensions, bad names and nonces are malformed."""
        for message in (
            b"p=tls-unique,,n=user,r=abc",
            b"x,,n=user,r=abc",
            b"n,,m=ext,n=user,r=abc",
            b"n,,n=us=er,r=abc",
            b"n,,n=,r=abc",
            b"n,,r=abc,n=user",
            b"n,,n=user",
            b"n,,n=user,r=",
            b"n,b=x,n=user,r=abc",
            b"n,,n=user,r=\xff",
            b"n,,n=user\x07,r=abc",
        ):
            self.assertRaises(sasl.MalformedResponse, self.mechanism().start, message)

    def test_saslnameEscapes(self) -> None:
        """=2C and =3D in a user name are a comma and an equals sign."""
        self.assertEqual(self.mechanism().start(b"n,,n=a=2Cb=3Dc,r=x"), sasl.ScramLookup("a,b=c"))

    def test_authzid(self) -> None:
        """An authzid naming the user is fine; another one is refused."""
        self.assertEqual(self.mechanism().start(b"n,a=user,n=user,r=x"), sasl.ScramLookup("user"))
        self.assertRaises(
            sasl.AuthorizationRefused, self.mechanism().start, b"n,a=admin,n=user,r=x"
        )

    def test_clientFinalErrors(self) -> None:
        """A wrong nonce, channel binding, bad base64 or proof length is malformed."""
        nonce = b"rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
        proof = b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        for message in (
            b"c=biws,r=other," + proof,
            b"c=eSws,r=" + nonce + b"," + proof,  # y,, while the client sent n,,
            b"c=biws,r=" + nonce,
            b"c=bi!ws,r=" + nonce + b"," + proof,
            b"c=biws,r=" + nonce + b",p=AAAA",
            b"r=" + nonce + b",c=biws," + proof,
        ):
            mech = self.mechanism()
            mech.start(CLIENT_FIRST)
            mech.serverFirst(SALT, 4096)
            self.assertRaises(sasl.MalformedResponse, mech.respond, message)

    def test_yFlag(self) -> None:
        """A client that would bind but thinks the server cannot sends y,, and c=eSws."""
        mech = self.mechanism()
        mech.start(b"y,,n=user,r=abc")
        mech.serverFirst(SALT, 4096)
        response = mech.respond(
            b"c=eSws,r=abc" + SERVER_NONCE.encode() + b",p=" + b"A" * 43 + b"="
        )
        self.assertIsInstance(response, sasl.ScramResponse)

    def test_order(self) -> None:
        """Steps out of order raise; an answer to the server signature must be empty."""
        mech = self.mechanism()
        self.assertRaises(sasl.SASLError, mech.serverFirst, SALT, 4096)
        mech.start(CLIENT_FIRST)
        self.assertRaises(sasl.SASLError, mech.serverFinal, b"k")
        mech.serverFirst(SALT, 4096)
        mech.respond(CLIENT_FINAL)
        mech.serverFinal(b"k" * 32)
        self.assertRaises(sasl.MalformedResponse, mech.respond, b"more")

    def test_serverNonce(self) -> None:
        """The default server nonce is random and printable without commas."""
        a = sasl.ScramSha256()
        b = sasl.ScramSha256()
        a.start(b"n,,n=u,r=x")
        b.start(b"n,,n=u,r=x")
        first = a.serverFirst(SALT, 4096).data
        self.assertNotEqual(first, b.serverFirst(SALT, 4096).data)
        nonce = first.split(b",")[0][2:]
        self.assertTrue(len(nonce) > 20 and all(0x21 <= c <= 0x7E for c in nonce))


class SASLprepTests(SynchronousTestCase):
    def test_rfc4013Examples(self) -> None:
        """The examples of RFC 4013 3."""
        self.assertEqual(sasl.saslprep("I\u00adX"), "IX")
        self.assertEqual(sasl.saslprep("user"), "user")
        self.assertEqual(sasl.saslprep("USER"), "USER")
        self.assertEqual(sasl.saslprep("\u00aa"), "a")
        self.assertEqual(sasl.saslprep("\u2168"), "IX")
        self.assertRaises(ValueError, sasl.saslprep, "\u0007")
        self.assertRaises(ValueError, sasl.saslprep, "\u0627\u0031")

    def test_spaces(self) -> None:
        """Non-ASCII spaces map to a space; unassigned code points only in queries."""
        self.assertEqual(sasl.saslprep("a\u00a0b"), "a b")
        self.assertEqual(sasl.saslprep("\U000e0080x", allowUnassigned=True), "\U000e0080x")
        self.assertRaises(ValueError, sasl.saslprep, "\U000e0080x")

    def test_scramKeysNormalise(self) -> None:
        """SCRAM keys of equivalent passwords are equal."""
        self.assertEqual(sasl.scramKeys("I\u00adX", SALT, 4096), sasl.scramKeys("IX", SALT, 4096))


class StandaloneTests(SynchronousTestCase):
    def test_noTwisted(self) -> None:
        """mailframe.auth.sasl imports with twisted and zope blocked (it is sans-IO)."""
        import subprocess
        import sys

        child = (
            "import sys\n"
            "class Blocker:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.partition('.')[0] in ('twisted', 'zope'):\n"
            "            raise ImportError('blocked: ' + name)\n"
            "for name in list(sys.modules):\n"
            "    if name.partition('.')[0] in ('twisted', 'zope'):\n"
            "        del sys.modules[name]\n"
            "sys.meta_path.insert(0, Blocker())\n"
            "import mailframe.auth.sasl\n"
            "print(sorted(n for n in sys.modules if n.partition('.')[0] in ('twisted', 'zope')))\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", child], capture_output=True, text=True, timeout=60
        )
        self.assertEqual((result.returncode, result.stdout.strip()), (0, "[]"), result.stderr)
