"""
The console's login: L{Sessions} (random session cookies in memory, each
with its CSRF token, expiring after L{IDLE} idle seconds, at most
L{MAX_SESSIONS}), L{LoginLimiter} (failed logins per client address), and
L{WebLogin} (checks a user name and password with twisted.cred checkers,
as C{IUsernamePassword} credentials whose user name is of the type each
checker keys on,
a failure answered after L{FAILURE_DELAY} seconds, through the reactor).

L{checkStateChange} is the cross-site rule for every request that changes
state: the header C{X-Mailframe-Request: 1}, the session's C{X-CSRF-Token}
when login is on, and an C{Origin} (if any) that is the request's own.

Owns: sessions, tokens, the login rate limit.  Must not: import
mailframe.app; render anything but what it is asked to check.
"""

from __future__ import annotations

import hmac
import secrets
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Request

from mailframe.auth.credentials import CheckerChain, PasswordCredentials

__all__ = [
    "COOKIE",
    "CSRF_HEADER",
    "FAILURE_DELAY",
    "IDLE",
    "MAX_SESSIONS",
    "REQUEST_HEADER",
    "LoginLimiter",
    "LoginSession",
    "Sessions",
    "WebLogin",
    "checkStateChange",
    "clientAddress",
]

log = Logger(namespace="mailframe.web")

COOKIE = b"mailframe_session"
REQUEST_HEADER = b"x-mailframe-request"
CSRF_HEADER = b"x-csrf-token"
IDLE = 12 * 3600.0
"""Seconds a session lasts without a request."""
MAX_SESSIONS = 1000
"""Sessions kept; the one idle longest goes first."""
FAILURE_DELAY = 1.0
"""Seconds a failed login waits for its 401."""
FAILURES = 10
FAILURE_WINDOW = 600.0
STATE_CHANGING = frozenset({b"POST", b"PUT", b"DELETE", b"PATCH"})


@dataclass
class LoginSession:
    """One logged-in browser: its cookie, CSRF token, user and last use."""

    key: str
    csrf: str
    user: str
    lastUsed: float


class Sessions:
    """The logged-in sessions, by cookie, in memory."""

    def __init__(self, clock: IReactorTime, idle: float = IDLE, limit: int = MAX_SESSIONS) -> None:
        self.clock = clock
        self.idle = idle
        self.limit = limit
        self._sessions: OrderedDict[str, LoginSession] = OrderedDict()  # least recent first

    def __len__(self) -> int:
        return len(self._sessions)

    def new(self, user: str) -> LoginSession:
        """A new session for C{user} (the oldest dropped beyond the limit)."""
        now = self.clock.seconds()
        session = LoginSession(secrets.token_urlsafe(32), secrets.token_urlsafe(32), user, now)
        self._sessions[session.key] = session
        while len(self._sessions) > self.limit:
            self._sessions.popitem(last=False)
        return session

    def get(self, key: str | None) -> LoginSession | None:
        """The live session with cookie C{key}, its idle time restarted; None if none."""
        if not key:
            return None
        session = self._sessions.get(key)
        if session is None:
            return None
        now = self.clock.seconds()
        if now - session.lastUsed > self.idle:
            del self._sessions[key]
            return None
        session.lastUsed = now
        self._sessions.move_to_end(key)
        return session

    def end(self, key: str | None) -> None:
        if key:
            self._sessions.pop(key, None)


class LoginLimiter:
    """Counts failed logins per client address: L{FAILURES} in L{FAILURE_WINDOW} s block it."""

    def __init__(
        self, clock: IReactorTime, failures: int = FAILURES, window: float = FAILURE_WINDOW
    ) -> None:
        self.clock = clock
        self.failures = failures
        self.window = window
        self._failed: dict[str, deque[float]] = {}

    def _recent(self, address: str) -> deque[float] | None:
        times = self._failed.get(address)
        if times is None:
            return None
        limit = self.clock.seconds() - self.window
        while times and times[0] <= limit:
            times.popleft()
        if not times:
            del self._failed[address]
            return None
        return times

    def blocked(self, address: str) -> bool:
        times = self._recent(address)
        return times is not None and len(times) >= self.failures

    def failed(self, address: str) -> None:
        if len(self._failed) > 10000:  # many addresses: forget those with old failures only
            for key in list(self._failed):
                self._recent(key)
        self._failed.setdefault(address, deque()).append(self.clock.seconds())

    def succeeded(self, address: str) -> None:
        self._failed.pop(address, None)


class WebLogin:
    """
    Checks logins with C{checkers} (asked in order, for
    C{IUsernamePassword}); keeps the L{Sessions} and the L{LoginLimiter}.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        checkers: Sequence[ICredentialsChecker],
        sessions: Sessions | None = None,
        limiter: LoginLimiter | None = None,
        delay: float = FAILURE_DELAY,
    ) -> None:
        usable = [c for c in checkers if IUsernamePassword in c.credentialInterfaces]
        if not usable:
            raise ValueError("no web-auth checker takes a user name and password")
        self.reactor = reactor
        self.checker = CheckerChain(IUsernamePassword, usable)
        self.sessions = sessions if sessions is not None else Sessions(reactor)
        self.limiter = limiter if limiter is not None else LoginLimiter(reactor)
        self.delay = delay

    def login(self, username: str, password: str, address: str) -> defer.Deferred[LoginSession]:
        """
        A new session for a right password; else, after C{delay} seconds,
        an L{UnauthorizedLogin} failure.  The caller checks
        L{LoginLimiter.blocked} first.
        """
        # each checker gets the user name as the type it keys on (str or bytes)
        credentials = PasswordCredentials(username, password)
        d = defer.maybeDeferred(self.checker.requestAvatarId, credentials)

        def ok(avatarId: Any) -> LoginSession:
            user = (
                avatarId.decode("utf-8", "replace")
                if isinstance(avatarId, bytes)
                else str(avatarId)
            )
            self.limiter.succeeded(address)
            log.info("web console: {user} logged in from {client}", user=user, client=address)
            return self.sessions.new(user)

        def failed(reason: Failure) -> defer.Deferred[LoginSession]:
            if not reason.check(UnauthorizedLogin):
                log.failure("web console: checking a login failed", reason)
            self.limiter.failed(address)
            log.info(
                "web console: failed login as {user!r} from {client}",
                user=username[:100],
                client=address,
            )
            later: defer.Deferred[LoginSession] = defer.Deferred()
            self.reactor.callLater(self.delay, later.errback, Failure(UnauthorizedLogin()))
            return later

        return d.addCallbacks(ok, failed)


def clientAddress(request: Request) -> str:
    """The client's address (its host for TCP; the unix socket's path or C{"unix"})."""
    peer = request.getClientAddress()
    host = getattr(peer, "host", None)
    if isinstance(host, str):
        return host
    name = getattr(peer, "name", None)
    if isinstance(name, bytes):
        return name.decode("utf-8", "replace") or "unix"
    return str(name or "unix")


def _origin(request: Request) -> str:
    scheme = "https" if request.isSecure() else "http"
    host = (request.getHeader(b"host") or b"").decode("ascii", "replace").strip().lower()
    return f"{scheme}://{host}"


def checkStateChange(request: Request, session: LoginSession | None, loginOn: bool) -> str | None:
    """
    None if C{request} may change state; else why not (for a 403).  Only
    for the methods that change state (POST, PUT, DELETE, PATCH).
    """
    if request.method not in STATE_CHANGING:
        return None
    if request.getHeader(REQUEST_HEADER) != b"1":
        return "this request needs the header X-Mailframe-Request: 1"
    if loginOn:
        token = request.getHeader(CSRF_HEADER) or b""
        if session is None or not hmac.compare_digest(token, session.csrf.encode("ascii")):
            return "missing or wrong X-CSRF-Token"
    origin = request.getHeader(b"origin")
    if origin is not None and origin.decode("ascii", "replace").strip().lower() != _origin(
        request
    ):
        return "the Origin is another site"
    return None
