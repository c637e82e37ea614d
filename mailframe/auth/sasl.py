"""
Server-side SASL mechanisms as small state machines, sans I/O: PLAIN
(RFC 4616), LOGIN (draft-murchison-sasl-login), CRAM-MD5 (RFC 2195) and
SCRAM-SHA-256 (RFC 5802, RFC 7677), with SASLprep (RFC 4013).

A mechanism takes the client's decoded responses (bytes, the base64 layer
is the caller's) through C{start(initial)} and C{respond(data)} and answers
with one value each time:

  - L{Challenge}: send it to the client (in SMTP, a 334 reply);
  - L{PasswordResponse} or L{CramMD5Response}: the exchange is over; check
    these credentials;
  - L{ScramLookup}: SCRAM needs the user's salt and iteration count; call
    C{serverFirst(salt, iterations)} for the next challenge;
  - L{ScramResponse}: check the proof (with the stored keys, or with a
    plaintext password), then call C{serverFinal(serverKey)} for the last
    challenge, whose empty answer gives L{Finished}.

A malformed response raises L{MalformedResponse}; an authorization
identity other than the user raises L{AuthorizationRefused}.

Owns: the message syntax of each mechanism and the SCRAM/CRAM arithmetic.
Must not: import twisted or zope, know about SMTP replies, sessions,
checkers or the network.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import stringprep
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "MECHANISMS",
    "SCRAM_DEFAULT_ITERATIONS",
    "SCRAM_MINIMUM_ITERATIONS",
    "AuthorizationRefused",
    "Challenge",
    "CramMD5",
    "CramMD5Response",
    "Finished",
    "Login",
    "MalformedResponse",
    "PasswordResponse",
    "Plain",
    "SASLError",
    "ScramKeys",
    "ScramLookup",
    "ScramResponse",
    "ScramSha256",
    "saslprep",
    "scramKeys",
]

SCRAM_MINIMUM_ITERATIONS = 4096
"""RFC 7677 4: the least iteration count a server may ask for."""
SCRAM_DEFAULT_ITERATIONS = 4096
"""What a server uses when it computes SCRAM keys from a plaintext password."""


class SASLError(Exception):
    """The exchange cannot go on; the message is for logs, never for clients."""


class MalformedResponse(SASLError):
    """The client's response does not follow the mechanism's syntax."""


class AuthorizationRefused(SASLError):
    """The client asked to act as someone else (an authorization identity)."""


@dataclass(frozen=True, slots=True)
class Challenge:
    """Send C{data} to the client and wait for its response."""

    data: bytes


@dataclass(frozen=True, slots=True, repr=False)
class PasswordResponse:
    """A user name and a plaintext password (PLAIN, LOGIN)."""

    username: str
    password: str

    def __repr__(self) -> str:
        return f"PasswordResponse(username={self.username!r}, password=<hidden>)"


@dataclass(frozen=True, slots=True)
class CramMD5Response:
    """A CRAM-MD5 answer: C{verify(secret)} says whether it matches."""

    username: str
    challenge: bytes
    digest: str

    def verify(self, secret: bytes) -> bool:
        """True if C{digest} is HMAC-MD5 of the challenge keyed with C{secret}."""
        expected = hmac.new(secret, self.challenge, hashlib.md5).hexdigest()
        return hmac.compare_digest(expected.encode("ascii"), self.digest.encode("ascii"))


@dataclass(frozen=True, slots=True)
class ScramLookup:
    """SCRAM needs the salt and iteration count of C{username}."""

    username: str


@dataclass(frozen=True, slots=True)
class ScramKeys:
    """What a server stores for SCRAM-SHA-256: never the password itself."""

    salt: bytes
    iterations: int
    storedKey: bytes
    serverKey: bytes


@dataclass(frozen=True, slots=True, eq=False)
class ScramResponse:
    """The client's proof, to be checked against stored keys or a password."""

    username: str
    salt: bytes
    iterations: int
    authMessage: bytes
    proof: bytes

    def verifyStoredKey(self, storedKey: bytes) -> bool:
        """True if the proof shows knowledge of the key whose hash is C{storedKey}."""
        signature = _hmac(storedKey, self.authMessage)
        clientKey = bytes(a ^ b for a, b in zip(self.proof, signature, strict=True))
        return hmac.compare_digest(hashlib.sha256(clientKey).digest(), storedKey)

    def verifyPassword(self, password: str) -> bytes | None:
        """The ServerKey if the proof matches C{password}, else None."""
        try:
            keys = scramKeys(password, self.salt, self.iterations, storing=False)
        except ValueError:
            return None
        return keys.serverKey if self.verifyStoredKey(keys.storedKey) else None


@dataclass(frozen=True, slots=True)
class Finished:
    """The exchange succeeded (after SCRAM's server signature was accepted)."""

    username: str


Outcome = Challenge | PasswordResponse | CramMD5Response | ScramLookup | ScramResponse | Finished


def _utf8(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedResponse(f"{what} is not UTF-8")


def _checkAuthzid(authzid: str, username: str) -> None:
    if authzid and authzid != username:
        raise AuthorizationRefused(f"{username!r} may not act as {authzid!r}")


class Plain:
    """PLAIN: C{[authzid] NUL authcid NUL password} in one response."""

    name = "PLAIN"

    def start(self, initial: bytes | None) -> Outcome:
        if initial is None:
            return Challenge(b"")
        return self.respond(initial)

    def respond(self, data: bytes) -> Outcome:
        parts = data.split(b"\0")
        if len(parts) != 3:
            raise MalformedResponse("PLAIN needs authzid NUL authcid NUL password")
        authzid, username, password = (_utf8(p, "PLAIN response") for p in parts)
        if not username or not password:
            raise MalformedResponse("PLAIN with an empty user name or password")
        _checkAuthzid(authzid, username)
        return PasswordResponse(username, password)


class Login:
    """LOGIN: the user name, then the password, each asked for in turn."""

    name = "LOGIN"

    def __init__(self) -> None:
        self._username: str | None = None

    def start(self, initial: bytes | None) -> Outcome:
        if initial is None:
            return Challenge(b"Username:")
        return self.respond(initial)

    def respond(self, data: bytes) -> Outcome:
        text = _utf8(data, "LOGIN response")
        if "\0" in text:
            raise MalformedResponse("NUL in a LOGIN response")
        if self._username is None:
            if not text:
                raise MalformedResponse("LOGIN with an empty user name")
            self._username = text
            return Challenge(b"Password:")
        if not text:
            raise MalformedResponse("LOGIN with an empty password")
        return PasswordResponse(self._username, text)


class CramMD5:
    """CRAM-MD5: a challenge, answered with C{user SP hex(HMAC-MD5(secret, challenge))}."""

    name = "CRAM-MD5"
    _RESPONSE = re.compile(rb"(.+) ([0-9a-f]{32})\Z", re.DOTALL)

    def __init__(self, hostname: str, randomBytes: Callable[[int], bytes] = os.urandom) -> None:
        token = int.from_bytes(randomBytes(8), "big")
        self.challenge = f"<{token}@{hostname}>".encode("ascii", "replace")

    def start(self, initial: bytes | None) -> Outcome:
        if initial is not None:
            raise MalformedResponse("CRAM-MD5 takes no initial response")
        return Challenge(self.challenge)

    def respond(self, data: bytes) -> Outcome:
        match = self._RESPONSE.match(data)
        if match is None:
            raise MalformedResponse("CRAM-MD5 needs user SP 32 lowercase hex digits")
        username = _utf8(match.group(1), "CRAM-MD5 user name")
        if "\0" in username:
            raise MalformedResponse("NUL in a CRAM-MD5 user name")
        return CramMD5Response(username, self.challenge, match.group(2).decode("ascii"))


# -- SCRAM-SHA-256 ------------------------------------------------------------


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def scramKeys(password: str, salt: bytes, iterations: int, storing: bool = True) -> ScramKeys:
    """
    The SCRAM-SHA-256 keys of a password (RFC 5802 3).

    @param storing: SASLprep the password as a stored string (unassigned
        code points refused) rather than as a query.

    @raise ValueError: for a password SASLprep refuses.
    """
    salted = hashlib.pbkdf2_hmac(
        "sha256", saslprep(password, allowUnassigned=not storing).encode("utf-8"), salt, iterations
    )
    clientKey = _hmac(salted, b"Client Key")
    return ScramKeys(
        salt, iterations, hashlib.sha256(clientKey).digest(), _hmac(salted, b"Server Key")
    )


_PRINTABLE = re.compile(r"[\x21-\x2b\x2d-\x7e]+\Z")  # RFC 5802 7: printable except ","


def _decodeSaslname(text: str) -> str:
    if re.search(r"=(?!2C|3D)", text) or "," in text:
        raise MalformedResponse("bad saslname escape")
    return text.replace("=2C", ",").replace("=3D", "=")


def _attributes(message: str, names: str) -> list[str]:
    """The values of C{message}'s leading attributes, which must be C{names} in order."""
    parts = message.split(",")
    if len(parts) < len(names):
        raise MalformedResponse("SCRAM message too short")
    values = []
    for name, part in zip(names, parts, strict=False):
        if part[:2] != name + "=":
            raise MalformedResponse(f"SCRAM attribute {name!r} expected")
        values.append(part[2:])
    return values


class ScramSha256:
    """
    SCRAM-SHA-256 without channel binding.  C{nonce} makes the server's part
    of the nonce (printable, no comma); tests pass fixed ones.
    """

    name = "SCRAM-SHA-256"

    def __init__(self, nonce: Callable[[], str] | None = None) -> None:
        self._nonce = nonce or (lambda: base64.b64encode(os.urandom(18)).decode("ascii"))
        self._state = "first"
        self._gs2 = ""
        self._bare = ""
        self._serverFirst = ""
        self._combinedNonce = ""
        self._username = ""
        self._salt = b""
        self._iterations = 0
        self._authMessage = b""

    def start(self, initial: bytes | None) -> Outcome:
        if initial is None:
            return Challenge(b"")
        return self.respond(initial)

    def respond(self, data: bytes) -> Outcome:
        if self._state == "first":
            return self._clientFirst(_utf8(data, "SCRAM message"))
        if self._state == "final":
            return self._clientFinal(_utf8(data, "SCRAM message"))
        if self._state == "ack" and data == b"":
            self._state = "done"
            return Finished(self._username)
        raise MalformedResponse(f"unexpected SCRAM response in state {self._state}")

    def _clientFirst(self, message: str) -> Outcome:
        flag, authzid, bare = [*message.split(",", 2), "", ""][:3]
        if flag.startswith("p="):
            raise MalformedResponse("channel binding is not offered (no SCRAM-SHA-256-PLUS)")
        if flag not in ("n", "y") or message.count(",") < 3:
            raise MalformedResponse("bad SCRAM GS2 header")
        if authzid and not authzid.startswith("a="):
            raise MalformedResponse("bad SCRAM authzid")
        if bare.startswith("m="):
            raise MalformedResponse("SCRAM mandatory extension not supported")
        rawUser, clientNonce = _attributes(bare, "nr")
        try:
            username = saslprep(_decodeSaslname(rawUser), allowUnassigned=True)
        except ValueError as e:
            raise MalformedResponse(f"bad SCRAM user name: {e}")
        if not username or not _PRINTABLE.match(clientNonce):
            raise MalformedResponse("empty SCRAM user name or bad nonce")
        _checkAuthzid(_decodeSaslname(authzid[2:]) if authzid else "", username)
        self._gs2 = f"{flag},{authzid},"
        self._bare = bare
        self._username = username
        self._combinedNonce = clientNonce + self._nonce()
        self._state = "lookup"
        return ScramLookup(username)

    def serverFirst(self, salt: bytes, iterations: int) -> Challenge:
        """The server-first-message, once the salt and iteration count are known."""
        if self._state != "lookup":
            raise SASLError("serverFirst() before the client-first-message")
        self._salt, self._iterations = salt, iterations
        b64salt = base64.b64encode(salt).decode("ascii")
        self._serverFirst = f"r={self._combinedNonce},s={b64salt},i={iterations}"
        self._state = "final"
        return Challenge(self._serverFirst.encode("ascii"))

    def _clientFinal(self, message: str) -> Outcome:
        binding, nonce = _attributes(message, "cr")
        head, sep, proof64 = message.rpartition(",p=")
        if not sep:
            raise MalformedResponse("SCRAM proof missing")
        try:
            gs2 = base64.b64decode(binding, validate=True).decode("utf-8")
            proof = base64.b64decode(proof64, validate=True)
        except (ValueError, UnicodeDecodeError):
            raise MalformedResponse("bad base64 in SCRAM client-final-message")
        if gs2 != self._gs2:
            raise MalformedResponse("SCRAM channel binding does not match the GS2 header")
        if not hmac.compare_digest(nonce.encode(), self._combinedNonce.encode()):
            raise MalformedResponse("SCRAM nonce does not match")
        if len(proof) != hashlib.sha256().digest_size:
            raise MalformedResponse("SCRAM proof of the wrong length")
        self._authMessage = ",".join([self._bare, self._serverFirst, head]).encode("utf-8")
        self._state = "verify"
        return ScramResponse(
            self._username, self._salt, self._iterations, self._authMessage, proof
        )

    def serverFinal(self, serverKey: bytes) -> Challenge:
        """The server-final-message (C{v=} signature), once the proof was accepted."""
        if self._state != "verify":
            raise SASLError("serverFinal() before the client proof")
        self._state = "ack"
        signature = base64.b64encode(_hmac(serverKey, self._authMessage)).decode("ascii")
        return Challenge(f"v={signature}".encode("ascii"))


MECHANISMS = ("SCRAM-SHA-256", "CRAM-MD5", "PLAIN", "LOGIN")
"""Every mechanism here, strongest first (the order they are advertised in)."""


# -- SASLprep (RFC 4013) ----------------------------------------------------------

_PROHIBITED = (
    stringprep.in_table_c12,
    stringprep.in_table_c21_c22,
    stringprep.in_table_c3,
    stringprep.in_table_c4,
    stringprep.in_table_c5,
    stringprep.in_table_c6,
    stringprep.in_table_c7,
    stringprep.in_table_c8,
    stringprep.in_table_c9,
)


def saslprep(text: str, allowUnassigned: bool = False) -> str:
    """
    The SASLprep form of a user name or password (RFC 4013, stringprep).

    @param allowUnassigned: a query (what a client sent) may hold unassigned
        code points; a stored string may not.

    @raise ValueError: for a prohibited character or bad bidirectional text.
    """
    if text.isascii() and all(" " <= c <= "~" for c in text):
        return text  # the common case: nothing to map, nothing prohibited
    mapped = "".join(
        " " if stringprep.in_table_c12(c) else c for c in text if not stringprep.in_table_b1(c)
    )
    result = unicodedata.normalize("NFKC", mapped)
    for c in result:
        if any(test(c) for test in _PROHIBITED):
            raise ValueError(f"prohibited character U+{ord(c):04X}")
        if not allowUnassigned and stringprep.in_table_a1(c):
            raise ValueError(f"unassigned code point U+{ord(c):04X}")
    if any(stringprep.in_table_d1(c) for c in result):
        if any(stringprep.in_table_d2(c) for c in result):
            raise ValueError("mixed left-to-right and right-to-left text")
        if not (stringprep.in_table_d1(result[0]) and stringprep.in_table_d1(result[-1])):
            raise ValueError("right-to-left text must start and end with such a character")
    return result
