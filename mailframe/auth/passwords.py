"""
mailframe's password file: argon2id hashes (argon2-cffi) and, optionally,
SCRAM-SHA-256 keys; its twisted.cred checker (L{PasswordFileChecker}), the
strcred factory that makes C{--auth mailframe:PATH} work
(L{PasswordFileCheckerFactory}), and L{updatePasswordFile}, which the
C{mailframe-passwd FILE USER} console script (L{mailframe.app.passwd}) uses.

File format: UTF-8, one user a line, C{#} comments and blank lines ignored::

    alice:$argon2id$v=19$m=65536,t=3,p=4$SALT$HASH:{SCRAM-SHA-256}65536,SALT,STOREDKEY,SERVERKEY

The SCRAM field (Dovecot's notation, base64 values) is optional: without it
the user can log in with PLAIN and LOGIN only, and the checker says so
(L{IMechanismCoverage}), so that SCRAM-SHA-256 is offered only while every
user of the file has SCRAM keys.  A user name has no colon,
space or control character.  Neither the hash nor the SCRAM keys let
anyone log in; both let an attacker who reads the file guess passwords
offline, so keep it readable by the server only (the script creates it 0600).

Verifying an argon2 hash takes a fraction of a second of CPU and 64 MiB, so
the checker runs it in the password-hashing thread pool
(L{mailframe._threads.HASHING}, bounded, apart from the disk and DKIM
pools, so a burst of logins delays neither deliveries nor signatures); an
unknown user costs the same as a known one.  The file is read again when it changes (checked at
most once a second); if it no longer parses, the last good version stays in
force and an error is logged.

Owns: the file format and hashing.  Must not: import mailframe.server;
verify a hash in the reactor thread; log a password.
"""

from __future__ import annotations

import base64
import binascii
import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.cred import error
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.strcred import ICheckerFactory
from twisted.internet import defer
from twisted.logger import Logger
from twisted.plugin import IPlugin
from zope.interface import implementer

from mailframe.auth import sasl
from mailframe.auth.credentials import IMechanismCoverage, IScramKeySource, IScramSha256Credentials

if TYPE_CHECKING:
    from argon2 import PasswordHasher

__all__ = [
    "DEFAULT_SCRAM_ITERATIONS",
    "PasswordEntry",
    "PasswordFile",
    "PasswordFileChecker",
    "PasswordFileCheckerFactory",
    "checkerFactory",
    "formatEntry",
    "hashPassword",
    "makeEntry",
    "parsePasswordFile",
    "updatePasswordFile",
    "verifyPassword",
]

log = Logger(namespace="mailframe.auth")

DEFAULT_SCRAM_ITERATIONS = 65536
"""PBKDF2 rounds of new SCRAM keys: RFC 7677's 4096 is cheap to attack offline."""
CHECK_INTERVAL = 1.0
"""Seconds between two stats of the file."""
_SCRAM_PREFIX = "{SCRAM-SHA-256}"


@dataclass(frozen=True)
class PasswordEntry:
    """One user: the argon2 hash and the SCRAM keys, if any."""

    username: str
    hash: str
    scram: sasl.ScramKeys | None = None


def _hasher() -> PasswordHasher:
    from argon2 import PasswordHasher

    return PasswordHasher()


def hashPassword(password: str) -> str:
    """An argon2id hash of C{password} (blocking: a fraction of a second)."""
    return str(_hasher().hash(password))


def verifyPassword(hashed: str, password: str) -> bool:
    """True if C{password} matches the argon2 hash (blocking)."""
    from argon2.exceptions import InvalidHashError, VerificationError

    try:
        return bool(_hasher().verify(hashed, password))
    except (VerificationError, InvalidHashError):
        return False


def checkUsername(name: str) -> str:
    if not name or any(c == ":" or c.isspace() or not c.isprintable() for c in name):
        raise ValueError(f"bad user name {name!r}: no colon, space or control characters")
    return name


def makeEntry(username: str, password: str, scramIterations: int | None) -> PasswordEntry:
    """
    A new entry: the argon2 hash and, unless C{scramIterations} is None,
    SCRAM-SHA-256 keys with a fresh salt.

    @raise ValueError: for a bad user name, an empty password or one that
        SASLprep refuses (SCRAM needs it).
    """
    checkUsername(username)
    if not password:
        raise ValueError("empty password")
    scram = None
    if scramIterations is not None:
        if scramIterations < sasl.SCRAM_MINIMUM_ITERATIONS:
            raise ValueError(f"SCRAM needs at least {sasl.SCRAM_MINIMUM_ITERATIONS} iterations")
        scram = sasl.scramKeys(password, os.urandom(16), scramIterations)
    return PasswordEntry(username, hashPassword(password), scram)


def formatEntry(entry: PasswordEntry) -> str:
    """The line of an entry, without its newline."""
    line = f"{entry.username}:{entry.hash}"
    if entry.scram is not None:
        k = entry.scram
        b64 = [base64.b64encode(v).decode("ascii") for v in (k.salt, k.storedKey, k.serverKey)]
        line += f":{_SCRAM_PREFIX}{k.iterations},{','.join(b64)}"
    return line


def _parseScram(text: str) -> sasl.ScramKeys:
    if not text.startswith(_SCRAM_PREFIX):
        raise ValueError(f"third field must start with {_SCRAM_PREFIX}")
    fields = text[len(_SCRAM_PREFIX) :].split(",")
    if len(fields) != 4 or not fields[0].isdigit():
        raise ValueError("SCRAM field must be ITERATIONS,SALT,STOREDKEY,SERVERKEY")
    try:
        salt, stored, server = (base64.b64decode(f, validate=True) for f in fields[1:])
    except binascii.Error:
        raise ValueError("bad base64 in the SCRAM field")
    if len(stored) != 32 or len(server) != 32 or not salt:
        raise ValueError("SCRAM keys must be 32 octets and the salt not empty")
    return sasl.ScramKeys(salt, int(fields[0]), stored, server)


def parsePasswordFile(data: bytes, name: str = "password file") -> dict[str, PasswordEntry]:
    """
    The entries of a password file's contents, by user name.

    @raise ValueError: naming C{name} and each bad line's number (never its text).
    """
    entries: dict[str, PasswordEntry] = {}
    problems = []
    for number, raw in enumerate(data.split(b"\n"), 1):
        try:
            line = raw.decode("utf-8").strip()
            if not line or line.startswith("#"):
                continue
            fields = line.split(":")
            if len(fields) not in (2, 3):
                raise ValueError("expected USER:HASH or USER:HASH:SCRAM")
            username = checkUsername(fields[0])
            if not fields[1].startswith("$argon2"):
                raise ValueError("the hash must be an argon2 hash ($argon2id$...)")
            if username in entries:
                raise ValueError(f"user {username!r} listed twice")
            scram = _parseScram(fields[2]) if len(fields) == 3 else None
            entries[username] = PasswordEntry(username, fields[1], scram)
        except (UnicodeDecodeError, ValueError) as e:
            reason = "not UTF-8" if isinstance(e, UnicodeDecodeError) else str(e)
            problems.append(f"line {number}: {reason}")
    if problems:
        raise ValueError(f"{name}: {'; '.join(problems[:5])}")
    return entries


class PasswordFile:
    """
    The entries of a password file, read again when it changes.

    @raise OSError, ValueError: at construction, if it cannot be read or parsed.
    """

    def __init__(self, path: str, now: Callable[[], float] = time.monotonic) -> None:
        self.path = os.path.abspath(path)
        self._now = now
        self._signature = self._stat()
        self._entries = self._read()
        self._checked = now()
        self._problem: str | None = None

    def _stat(self) -> tuple[int, int, int]:
        st = os.stat(self.path)
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _read(self) -> dict[str, PasswordEntry]:
        with open(self.path, "rb") as f:
            return parsePasswordFile(f.read(), self.path)

    def entries(self) -> dict[str, PasswordEntry]:
        """The current entries (stat'ing the file at most once per CHECK_INTERVAL)."""
        now = self._now()
        if now - self._checked >= CHECK_INTERVAL:
            self._checked = now
            try:
                signature = self._stat()
                if signature != self._signature:
                    self._entries = self._read()
                    self._signature = signature
                    self._problem = None
            except (OSError, ValueError) as e:
                problem = str(e)
                if problem != self._problem:
                    self._problem = problem
                    log.error("password file not reloaded, still using the last good one: "
                              "{problem}", problem=problem)  # fmt: skip
        return self._entries

    def get(self, username: str) -> PasswordEntry | None:
        return self.entries().get(username)


_Runner = Callable[..., "defer.Deferred[Any]"]


def _deferToThread(f: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
    """C{f(*args)} in the global reactor's password-hashing pool."""
    from twisted.internet import reactor

    from mailframe._threads import HASHING, threadPools

    return threadPools(reactor).run(HASHING, f, *args)


_PASSWORD = frozenset({"PLAIN", "LOGIN"})
_WITH_SCRAM = _PASSWORD | {"SCRAM-SHA-256"}


@implementer(ICredentialsChecker, IScramKeySource, IMechanismCoverage)
class PasswordFileChecker:
    """
    Checks PLAIN/LOGIN passwords against the file's argon2 hashes (in a
    thread, via C{runInThread}: by default the reactor's password-hashing
    pool) and SCRAM-SHA-256 proofs against its keys.
    """

    credentialInterfaces = (IUsernamePassword, IScramSha256Credentials)
    usernameType = str

    def __init__(self, passwords: PasswordFile | str, runInThread: _Runner | None = None) -> None:
        self.passwords = (
            passwords if isinstance(passwords, PasswordFile) else PasswordFile(passwords)
        )
        self._run = runInThread or _deferToThread
        self._dummy: str | None = None
        self._coverage: tuple[object, frozenset[str]] = (None, _PASSWORD)

    def mechanismsForEveryone(self) -> frozenset[str]:
        """SCRAM-SHA-256 only while every user has SCRAM keys; PLAIN and LOGIN always."""
        entries = self.passwords.entries()
        seen, mechanisms = self._coverage
        if seen is not entries:  # worked out once per version of the file
            everyone = all(e.scram is not None for e in entries.values())
            mechanisms = _WITH_SCRAM if everyone else _PASSWORD
            self._coverage = (entries, mechanisms)
        return mechanisms

    def mechanismsForUser(self, username: str) -> frozenset[str] | None:
        entry = self.passwords.get(username)
        if entry is None:
            return None
        return _WITH_SCRAM if entry.scram is not None else _PASSWORD

    @property
    def scramIterations(self) -> int:
        """The iteration count most entries use: what an unknown user is told."""
        counts = Counter(e.scram.iterations for e in self.passwords.entries().values() if e.scram)
        return counts.most_common(1)[0][0] if counts else DEFAULT_SCRAM_ITERATIONS

    def scramParameters(self, username: str) -> tuple[bytes, int] | None:
        entry = self.passwords.get(username)
        if entry is None or entry.scram is None:
            return None
        return entry.scram.salt, entry.scram.iterations

    def requestAvatarId(self, credentials: Any) -> Any:
        username = credentials.username
        if isinstance(username, bytes):
            username = username.decode("utf-8", "replace")
        entry = self.passwords.get(username)
        if IScramSha256Credentials.providedBy(credentials):
            keys = entry.scram if entry is not None else None
            if keys is not None and credentials.checkScramKeys(keys.storedKey, keys.serverKey):
                return defer.succeed(username)
            return defer.fail(error.UnauthorizedLogin())
        password = credentials.password
        if isinstance(password, bytes):
            password = password.decode("utf-8", "surrogateescape")
        if entry is None:
            # as slow as a real check, so that timing does not tell who exists
            d = self._run(self._verifyDummy, password)
            return d.addCallback(lambda _: defer.fail(error.UnauthorizedLogin()))

        def verified(ok: bool) -> str:
            if ok:
                return username
            raise error.UnauthorizedLogin()

        return self._run(verifyPassword, entry.hash, password).addCallback(verified)

    def _verifyDummy(self, password: str) -> bool:
        if self._dummy is None:
            self._dummy = hashPassword(base64.b64encode(os.urandom(12)).decode("ascii"))
        return verifyPassword(self._dummy, password)

    def __repr__(self) -> str:
        return f"<PasswordFileChecker {self.passwords.path}>"


@implementer(ICheckerFactory, IPlugin)
class PasswordFileCheckerFactory:
    """C{--auth mailframe:PATH}: a L{PasswordFileChecker} of the file PATH."""

    authType = "mailframe"
    authHelp = (
        "A mailframe password file: USER:ARGON2-HASH[:SCRAM-SHA-256 keys], one user a line,\n"
        "written by 'mailframe-passwd FILE USER'.  Serves PLAIN, LOGIN and SCRAM-SHA-256."
    )
    argStringFormat = "Path to a mailframe password file (see mailframe-passwd)."
    credentialInterfaces = (IUsernamePassword, IScramSha256Credentials)

    def generateChecker(self, argstring: str) -> PasswordFileChecker:
        if not argstring.strip():
            raise ValueError("mailframe:PATH needs the path of a password file")
        try:
            return PasswordFileChecker(os.path.expanduser(argstring))
        except OSError as e:
            raise ValueError(f"cannot read password file {argstring}: {e.strerror or e}")


checkerFactory = PasswordFileCheckerFactory()


# -- mailframe-passwd ---------------------------------------------------------------


def updatePasswordFile(path: str, username: str, entry: PasswordEntry | None) -> str:
    """
    Add, replace (or with C{entry} None delete) C{username}'s line, keeping
    every other line as it is; the file is replaced atomically and created
    0600.  @return: C{"added"}, C{"changed"} or C{"deleted"}.
    @raise ValueError: for a file that does not parse, or deleting an unknown user.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
        mode = os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        data, mode = b"", 0o600
    parsePasswordFile(data, path)
    lines = data.decode("utf-8").splitlines()
    outcome = "added"
    kept = []
    for line in lines:
        if line.strip().split(":", 1)[0] == username and not line.lstrip().startswith("#"):
            outcome = "changed"
            if entry is not None:
                kept.append(formatEntry(entry))
            continue
        kept.append(line)
    if entry is None:
        if outcome == "added":
            raise ValueError(f"no user {username!r} in {path}")
        outcome = "deleted"
    elif outcome == "added":
        kept.append(formatEntry(entry))
    directory = os.path.dirname(os.path.abspath(path))
    fd, temp = tempfile.mkstemp(dir=directory, prefix=".mailframe-passwd-")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("".join(f"{line}\n" for line in kept))
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        if os.path.exists(temp):
            os.unlink(temp)
        raise
    return outcome
