"""
twisted.cred for SMTP AUTH: the credentials the SASL mechanisms of
L{mailframe.auth.sasl} produce, a L{Portal} whose checkers are tried in order
(L{makePortal}), the realm whose avatar names the user (L{UserRealm}), and
L{Authenticator}, what the AUTH extension asks.

Which mechanisms a checker can serve follows from its credentials
interfaces: C{IUsernamePassword} gives PLAIN and LOGIN;
C{IUsernameHashedPassword} (a checker that knows plaintext passwords) gives
CRAM-MD5 and SCRAM-SHA-256; L{IScramSha256Credentials} with an
L{IScramKeySource} checker (stored SCRAM keys) gives SCRAM-SHA-256.  A
checker whose users need not all have what a mechanism needs says so with
L{IMechanismCoverage}.  A mechanism is offered only when every checker in
force can serve it for all its users (L{mechanismsFor}): a client tries
what is offered, and must not be made to fail, and be counted as guessing,
for being the user of the wrong checker.  A login that fails all the same
because the user's checker cannot check that mechanism for them, with no
secret of theirs compared, fails with L{MechanismUnavailable}.

Twisted's checkers disagree on the type of a user name (the in-memory one
that C{--auth memory:...} builds keys on str, C{FilePasswordDB} on bytes,
as C{IUsernamePassword} documents): L{CheckerChain} hands each checker the
type it keys on.  Avatar ids are reported as str.

Owns: the mapping from mechanisms to credentials and checkers.  Must not:
import mailframe.server; know SMTP replies; block (checkers may return
Deferreds; a checker that hashes must use a thread pool itself).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any, Self

from twisted.cred import error
from twisted.cred.checkers import (
    FilePasswordDB,
    ICredentialsChecker,
    InMemoryUsernamePasswordDatabaseDontUse,
)
from twisted.cred.credentials import ICredentials, IUsernameHashedPassword, IUsernamePassword
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface, alsoProvides, implementer

from mailframe.auth import sasl

__all__ = [
    "AuthenticatedUser",
    "Authenticator",
    "CheckerChain",
    "CramMD5Credentials",
    "IAuthenticatedUser",
    "IMechanismCoverage",
    "IScramKeySource",
    "IScramSha256Credentials",
    "MechanismUnavailable",
    "PasswordCredentials",
    "ScramPasswordCredentials",
    "ScramStoredCredentials",
    "UserRealm",
    "checkerMechanisms",
    "makePortal",
    "mechanismsFor",
]

log = Logger(namespace="mailframe.auth")


# -- interfaces of this module's own -------------------------------------------


class IScramSha256Credentials(ICredentials):
    """A SCRAM-SHA-256 proof, checked against the user's stored keys."""

    username = Attribute("The user name (str, SASLprep'd).")

    def checkScramKeys(storedKey: bytes, serverKey: bytes) -> bool:
        """
        @return: True if the proof matches C{storedKey}; C{serverKey} is then
            kept to sign the server's final message.
        """


class IScramKeySource(Interface):
    """A checker that can tell the salt and iteration count of a user's SCRAM keys."""

    def scramParameters(
        username: str,
    ) -> tuple[bytes, int] | defer.Deferred[tuple[bytes, int] | None] | None:
        """
        @return: C{(salt, iterations)}, or None if it has no SCRAM keys for
            C{username}; or a Deferred of either.
        """


class IMechanismCoverage(Interface):
    """
    A checker whose users need not all be able to use every mechanism its
    credentials interfaces allow: a password file in which SCRAM keys are
    optional, a directory with plaintext passwords for some users and
    hashes for others.  Mechanisms are named as in L{sasl.MECHANISMS}.
    """

    def mechanismsForEveryone() -> Collection[str]:
        """
        The mechanisms every user it knows can use now (called for each
        EHLO: it must be quick and must not block).
        """

    def mechanismsForUser(
        username: str,
    ) -> Collection[str] | defer.Deferred[Collection[str] | None] | None:
        """
        The mechanisms C{username} (str) can use, or None if it does not
        know the user; or a Deferred of either.
        """


class MechanismUnavailable(error.UnauthorizedLogin):
    """
    The login failed because the mechanism cannot be checked for this user
    (their checker lacks what it needs), not because an answer was wrong:
    no secret of theirs was compared, so it says nothing about a password.
    """

    def __init__(self, mechanism: str, username: str) -> None:
        super().__init__(f"{mechanism} cannot be checked for {username!r}")
        self.mechanism = mechanism
        self.username = username


class IAuthenticatedUser(Interface):
    """The avatar of an authenticated SMTP session."""

    name = Attribute("The name the session is authenticated as (str).")


# -- credentials --------------------------------------------------------------------


def _bytes(value: str | bytes) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else value


def _text(value: str | bytes) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


class _Credentials:
    """A user name that each checker gets in the type it keys on (see L{CheckerChain})."""

    username: str | bytes
    mechanism = ""  # what the credentials come from (PLAIN stands for LOGIN too)

    def withUsernameType(self, kind: type) -> Self:
        """A copy whose C{username} (and password) are C{kind}: str or bytes."""
        if isinstance(self.username, kind):
            return self
        copy = object.__new__(type(self))
        copy.__dict__.update(self.__dict__)
        copy.username = _bytes(self.username) if kind is bytes else _text(self.username)
        password = getattr(self, "password", None)
        if password is not None:
            copy.__dict__["password"] = _bytes(password) if kind is bytes else _text(password)
        return copy


@implementer(IUsernamePassword)
class PasswordCredentials(_Credentials):
    """A user name and password from PLAIN or LOGIN."""

    mechanism = "PLAIN"

    def __init__(self, username: str | bytes, password: str | bytes) -> None:
        self.username = username
        self.password = password

    def checkPassword(self, password: str | bytes) -> bool:
        return hmac.compare_digest(_bytes(password), _bytes(self.password))

    def __repr__(self) -> str:
        return f"<PasswordCredentials {self.username!r}>"


@implementer(IUsernameHashedPassword)
class CramMD5Credentials(_Credentials):
    """A CRAM-MD5 answer; the checker gives it the plaintext secret."""

    mechanism = "CRAM-MD5"

    def __init__(self, response: sasl.CramMD5Response) -> None:
        self.username = response.username
        self.response = response

    def checkPassword(self, password: str | bytes) -> bool:
        return self.response.verify(_bytes(password))


@implementer(IUsernameHashedPassword)
class ScramPasswordCredentials(_Credentials):
    """A SCRAM proof for a checker that knows the plaintext password."""

    mechanism = "SCRAM-SHA-256"
    serverKey: bytes | None = None

    def __init__(self, response: sasl.ScramResponse) -> None:
        self.username = response.username
        self.response = response

    def checkPassword(self, password: str | bytes) -> bool:
        self.serverKey = self.response.verifyPassword(_text(password))
        return self.serverKey is not None


@implementer(IScramSha256Credentials)
class ScramStoredCredentials(_Credentials):
    """A SCRAM proof for a checker that stores SCRAM keys."""

    mechanism = "SCRAM-SHA-256"
    serverKey: bytes | None = None

    def __init__(self, response: sasl.ScramResponse) -> None:
        self.username = response.username
        self.response = response

    def checkScramKeys(self, storedKey: bytes, serverKey: bytes) -> bool:
        if self.response.verifyStoredKey(storedKey):
            self.serverKey = serverKey
            return True
        return False


# -- the portal ------------------------------------------------------------------------


def _usernameType(checker: ICredentialsChecker) -> type:
    if isinstance(checker, InMemoryUsernamePasswordDatabaseDontUse):
        return str if any(isinstance(k, str) for k in checker.users) else bytes
    if isinstance(checker, FilePasswordDB):
        return bytes
    return getattr(checker, "usernameType", bytes)  # bytes: IUsernamePassword's documented type


_FAILED = (error.UnauthorizedLogin, error.LoginFailed)


@implementer(ICredentialsChecker)
class CheckerChain:
    """
    One credentials interface served by several checkers, asked in order
    until one accepts.  If none accepts and one failed with an unexpected
    error, the login fails with that error (a temporary failure), else with
    L{UnauthorizedLogin}.
    """

    def __init__(
        self, interface: type[Interface], checkers: Sequence[ICredentialsChecker]
    ) -> None:
        self.credentialInterfaces = (interface,)
        self.checkers = tuple(checkers)
        self.keySources = tuple(c for c in checkers if IScramKeySource.providedBy(c))
        if self.keySources:
            alsoProvides(self, IScramKeySource)

    @defer.inlineCallbacks
    def requestAvatarId(self, credentials: Any) -> Any:
        problem = None
        for checker in self.checkers:
            adapted = credentials
            if isinstance(credentials, _Credentials):
                adapted = credentials.withUsernameType(_usernameType(checker))
            try:
                avatarId = yield defer.maybeDeferred(checker.requestAvatarId, adapted)
            except _FAILED:
                continue
            except defer.CancelledError:
                raise  # the server gave up waiting: stop asking
            except Exception:
                log.failure("credentials checker {checker!r} failed", checker=checker)
                problem = problem or Failure()
                continue
            if adapted is not credentials:
                credentials.__dict__.update(
                    {k: v for k, v in adapted.__dict__.items() if k.startswith("server")}
                )
            return _text(avatarId)
        if problem is not None:
            problem.raiseException()
        raise error.UnauthorizedLogin()

    @property
    def scramIterations(self) -> int:
        """What the first key source tells users it has no keys for."""
        for source in self.keySources:
            return int(getattr(source, "scramIterations", sasl.SCRAM_DEFAULT_ITERATIONS))
        return sasl.SCRAM_DEFAULT_ITERATIONS

    @defer.inlineCallbacks
    def scramParameters(self, username: str) -> Any:
        for source in self.keySources:
            found = yield defer.maybeDeferred(source.scramParameters, username)
            if found is not None:
                return found
        return None

    def __repr__(self) -> str:
        return f"<CheckerChain {self.credentialInterfaces[0].__name__} {list(self.checkers)!r}>"


@implementer(IAuthenticatedUser)
class AuthenticatedUser:
    """The default avatar: just the name."""

    def __init__(self, name: str) -> None:
        self.name = name


@implementer(IRealm)
class UserRealm:
    """Gives every authenticated user an L{AuthenticatedUser} named by the avatar id."""

    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> Any:
        if IAuthenticatedUser not in interfaces:
            raise NotImplementedError("UserRealm only gives IAuthenticatedUser avatars")
        return IAuthenticatedUser, AuthenticatedUser(_text(avatarId)), lambda: None


def makePortal(checkers: Iterable[ICredentialsChecker], realm: IRealm | None = None) -> Portal:
    """
    A Portal (with C{realm}, by default a L{UserRealm}) in which each
    credentials interface is served by a L{CheckerChain} of the checkers
    that support it, in the order given.
    """
    byInterface: dict[type[Interface], list[ICredentialsChecker]] = {}
    for checker in checkers:
        for interface in checker.credentialInterfaces:
            byInterface.setdefault(interface, []).append(checker)
    portal = Portal(realm if realm is not None else UserRealm())
    for interface, members in byInterface.items():
        portal.registerChecker(CheckerChain(interface, members), interface)
    return portal


_PASSWORD = frozenset({"PLAIN", "LOGIN"})
_PLAINTEXT = frozenset({"CRAM-MD5", "SCRAM-SHA-256"})
_AUTH_INTERFACES = (IUsernamePassword, IUsernameHashedPassword, IScramSha256Credentials)


def checkerMechanisms(checker: ICredentialsChecker) -> frozenset[str]:
    """
    The mechanisms C{checker} can serve by its credentials interfaces, for
    the users that have what they need (see L{IMechanismCoverage}).
    """
    interfaces = tuple(checker.credentialInterfaces)
    found: set[str] = set()
    if IUsernamePassword in interfaces:
        found |= _PASSWORD
    if IUsernameHashedPassword in interfaces:
        found |= _PLAINTEXT
    if IScramSha256Credentials in interfaces and IScramKeySource.providedBy(checker):
        found.add("SCRAM-SHA-256")
    return frozenset(found)


def _forEveryone(checker: ICredentialsChecker) -> frozenset[str]:
    found = checkerMechanisms(checker)
    if IMechanismCoverage.providedBy(checker):
        found &= frozenset(checker.mechanismsForEveryone())
    return found


def _checkersIn(portal: Portal) -> tuple[ICredentialsChecker, ...]:
    """The checkers in force for AUTH, each once, in the order they are asked."""
    found: dict[int, ICredentialsChecker] = {}
    for interface in _AUTH_INTERFACES:
        checker = portal.checkers.get(interface)
        members = checker.checkers if isinstance(checker, CheckerChain) else (checker,)
        for member in members:
            if member is not None and checkerMechanisms(member):
                found.setdefault(id(member), member)
    return tuple(found.values())


def _common(sets: Iterable[frozenset[str]]) -> frozenset[str]:
    common: frozenset[str] | None = None
    for each in sets:
        common = each if common is None else common & each
    return common or frozenset()


def _ordered(found: Collection[str]) -> tuple[str, ...]:
    return tuple(m for m in sasl.MECHANISMS if m in found)


def mechanismsFor(portal: Portal) -> tuple[str, ...]:
    """
    The SASL mechanisms every checker of C{portal} can serve now, for all its
    users, strongest first.  (Checkers of credentials AUTH never uses, such
    as anonymous ones, are left out.)
    """
    return _ordered(_common(_forEveryone(c) for c in _checkersIn(portal)))


_UNKNOWN = object()  # a checker that cannot say whom it knows


def _userMechanisms(checker: ICredentialsChecker, username: str) -> Any:
    """
    What C{checker} can check for C{username}: a set, None if it does not
    know the user, or _UNKNOWN; or a Deferred of one of those.
    """
    if IMechanismCoverage.providedBy(checker):
        d = defer.maybeDeferred(checker.mechanismsForUser, username)
        return d.addCallback(lambda found: None if found is None else frozenset(found))
    if isinstance(checker, InMemoryUsernamePasswordDatabaseDontUse):
        known = username in checker.users or _bytes(username) in checker.users
        return checkerMechanisms(checker) if known else None
    if isinstance(checker, FilePasswordDB):
        try:
            checker.getUser(_bytes(username))
        except KeyError:
            return None
        except Exception:  # an unreadable file: it may know the user
            return _UNKNOWN
        return checkerMechanisms(checker)
    return _UNKNOWN


class Authenticator:
    """
    What the AUTH extension asks: which mechanisms there are, SCRAM
    parameters for a user, and whether credentials log in (a Deferred of the
    avatar's name).

    @param mechanisms: offer only these (of those every checker can serve).

    @param randomBytes: the source of salts and of the secret that makes a
        stable fake salt for users without SCRAM keys, so that an exchange
        does not tell whether a user exists.  Share one Authenticator
        between listeners with the same checkers, so that the fake salts
        agree too.

    @raise ValueError: if the checkers share no mechanism, or cannot serve
        one of C{mechanisms}.
    """

    def __init__(
        self,
        portal: Portal,
        mechanisms: Sequence[str] | None = None,
        randomBytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.portal = portal
        checkers = self._checkers = _checkersIn(portal)
        possible = _common(checkerMechanisms(c) for c in checkers)
        if checkers and not possible:
            served = "; ".join(
                f"{type(c).__name__} serves {' '.join(_ordered(checkerMechanisms(c)))}"
                for c in checkers
            )
            raise ValueError(f"the checkers have no mechanism in common ({served})")
        if mechanisms is not None:
            unknown = set(mechanisms) - possible
            if unknown:
                raise ValueError(
                    f"the checkers cannot serve {', '.join(sorted(unknown))} "
                    f"(every one of them serves {', '.join(_ordered(possible)) or 'nothing'})"
                )
            possible = frozenset(mechanisms)
        self._allowed = possible
        self._partial = tuple(c for c in checkers if IMechanismCoverage.providedBy(c))
        self._random = randomBytes
        self._secret = randomBytes(32)

    @property
    def mechanisms(self) -> tuple[str, ...]:
        """
        The mechanisms to offer now, strongest first: those every checker in
        force (when this was made) can serve for all its users.
        """
        found = self._allowed
        for checker in self._partial:
            found = found & frozenset(checker.mechanismsForEveryone())
        return _ordered(found)

    @defer.inlineCallbacks
    def scramParameters(self, username: str) -> Any:
        """
        C{(salt, iterations, stored)}: C{stored} says whether the proof is
        to be checked against stored keys (else against a plaintext password).
        """
        checkers = self.portal.checkers
        source = checkers.get(IScramSha256Credentials)
        if source is not None and IScramKeySource.providedBy(source):
            found = yield defer.maybeDeferred(source.scramParameters, username)
            if found is not None:
                salt, iterations = found
                return salt, iterations, True
        if IUsernameHashedPassword in checkers:
            return self._random(16), sasl.SCRAM_DEFAULT_ITERATIONS, False
        # no such user: a salt that is the same on every try, as a real one is
        fake = hmac.new(self._secret, username.encode("utf-8"), hashlib.sha256).digest()
        iterations = getattr(source, "scramIterations", sasl.SCRAM_DEFAULT_ITERATIONS)
        return fake[:16], int(iterations), True

    def login(self, credentials: Any) -> defer.Deferred[str]:
        """
        The name of the user C{credentials} log in as; fails with
        UnauthorizedLogin, or its L{MechanismUnavailable} when no checker
        could check the mechanism for the user.
        """

        def named(result: tuple[Any, Any, Callable[[], None]]) -> str:
            _interface, avatar, logout = result
            logout()  # the session keeps only the name
            return _text(avatar.name)

        d = self.portal.login(credentials, None, IAuthenticatedUser).addCallback(named)
        mechanism = getattr(credentials, "mechanism", "")
        if mechanism:
            d.addErrback(self._unavailable, mechanism, credentials.username)
        return d

    @defer.inlineCallbacks
    def _unavailable(self, reason: Failure, mechanism: str, username: str | bytes) -> Any:
        """
        Turn a refusal into L{MechanismUnavailable} when a checker knows the
        user but cannot check C{mechanism} for them, and no checker that can
        check it knows them (or might: one that cannot say whom it knows).
        Then no answer was compared with a secret of the user's, and the
        client could not have done better with this mechanism.
        """
        if not reason.check(error.UnauthorizedLogin) or reason.check(MechanismUnavailable):
            return reason
        name = _text(username)
        knownWithout = False
        for checker in self._checkers:
            try:
                usable = yield _userMechanisms(checker, name)
            except Exception:
                log.failure("credentials checker {checker!r} could not say whom it knows",
                            checker=checker)  # fmt: skip
                return reason  # a failure, as it would have been
            if usable is _UNKNOWN:
                if mechanism in checkerMechanisms(checker):
                    return reason  # it may have compared the answer with the user's secret
            elif usable is not None:
                if mechanism in usable & checkerMechanisms(checker):
                    return reason  # it compared the answer with the user's secret
                knownWithout = True
        if knownWithout:
            raise MechanismUnavailable(mechanism, name)
        return reason
