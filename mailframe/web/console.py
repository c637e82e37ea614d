"""
The web console's server side: L{ConsoleResource} (the root of its Site)
serves the page and its files (L{mailframe.web.static}) and routes the
JSON API under C{/api/v1}: C{info}, C{login} and C{logout}
(L{mailframe.web.auth}), the captured mail (L{mailframe.web.api}), the
live C{sessions}, the C{decisions} (a ring with a long poll), the C{queue}
and its operations, C{stats} and the C{settings} in force.
L{ConsoleService} listens on an endpoint and, while it runs, observes the
decision events and samples the statistics.  See docs/webapi.rst.

Login is on when checkers are given (the setting C{web-auth}): then every
API path but C{info} and C{login} needs a session, and every request that
changes state its CSRF token.  Without login the console listens on
loopback or a unix socket only, and a C{Host} that does not name this
machine is refused (DNS rebinding).

Owns: routing, the console's checks and answers.  Must not: import
mailframe.app (the application passes in what the console shows).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from mailframe import __version__
from mailframe.queue.operations import ControlError, NoSuchEntry, QueueOperations
from mailframe.web import api
from mailframe.web.api import HTTPAnswer, jsonBody, numberArg
from mailframe.web.auth import (
    COOKIE,
    LoginSession,
    WebLogin,
    checkStateChange,
    clientAddress,
)
from mailframe.web.capture import CaptureStore
from mailframe.web.decisions import DEFAULT_SIZE, DecisionFilter, DecisionLog
from mailframe.web.queueapi import QueueView
from mailframe.web.sessions import liveSessions
from mailframe.web.static import STATIC, pageHeaders, readStatic
from mailframe.web.stats import Stats

__all__ = ["MAX_DECISIONS_WAIT", "Console", "ConsoleResource", "ConsoleService", "consoleSite"]

log = Logger(namespace="mailframe.web")

MAX_DECISIONS_WAIT = 60.0
"""The longest long poll of C{/api/v1/decisions} (seconds)."""
MAX_BODY = 16384


@dataclass
class Console:
    """
    What the console shows: the capture C{store} (or None), the listener
    C{factories} (a live list: a reload changes it), the queue's
    C{operations} (or None), the C{settings} in force (already redacted:
    C{{"settings": [...], "listeners": [...]}}), the C{login} (None: no
    login), this host's name, the decision ring and the statistics.
    """

    reactor: Any
    store: CaptureStore | None = None
    factories: Sequence[Any] = ()
    operations: QueueOperations | None = None
    settings: dict[str, Any] = field(default_factory=lambda: {"settings": [], "listeners": []})
    login: WebLogin | None = None
    hostname: str = "localhost"
    decisionsSize: int = DEFAULT_SIZE
    staticDirectory: str = STATIC
    decisions: DecisionLog = field(init=False)
    stats: Stats = field(init=False)

    def __post_init__(self) -> None:
        operations = self.operations
        size = (lambda: len(operations.runner.entries)) if operations is not None else None
        self.stats = Stats(self.reactor, size)
        self.decisions = DecisionLog(self.decisionsSize, self.stats.count)

    def start(self) -> None:
        self.decisions.start()
        self.stats.start()

    def stop(self) -> None:
        self.decisions.stop()
        self.stats.stop()


def _arg(request: Request, name: bytes, default: str = "") -> str:
    value = (request.args or {}).get(name, [None])[0]
    return default if value is None else value.decode("utf-8", "replace")


class ConsoleResource(Resource):
    """The root of the console's Site."""

    isLeaf = True

    def __init__(self, console: Console) -> None:
        super().__init__()
        self.console = console
        self.capture = (
            api.CaptureAPI(console.store, console.reactor) if console.store is not None else None
        )

    # -- the answers ----------------------------------------------------------------------

    def render(self, request: Request) -> bytes | int:
        path = [p.decode("utf-8", "replace") for p in request.postpath or []]
        if path in ([], [""], ["index.html"]):
            return self._static(request, "index.html")
        if len(path) == 2 and path[0] == "static":
            return self._static(request, path[1])
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-content-type-options", b"nosniff")
        if tuple(p.encode() for p in path[:2]) != api.API_PREFIX:
            return jsonBody(request, {"error": "no such resource"}, http.NOT_FOUND)
        try:
            return self._api(request, path[2:])
        except HTTPAnswer as e:
            return jsonBody(request, {"error": e.text}, e.code)

    def _static(self, request: Request, name: str) -> bytes:
        found = readStatic(name, self.console.staticDirectory)
        pageHeaders(request)
        if found is None or request.method not in (b"GET", b"HEAD"):
            request.setResponseCode(http.NOT_FOUND)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"not found\n"
        kind, data = found
        request.setHeader(b"content-type", kind)
        request.setHeader(b"cache-control", b"no-cache")
        return data

    def _session(self, request: Request) -> LoginSession | None:
        login = self.console.login
        if login is None:
            return None
        cookie = request.getCookie(COOKIE)
        return login.sessions.get(cookie.decode("ascii", "replace") if cookie else None)

    def _api(self, request: Request, path: list[str]) -> bytes | int:
        console = self.console
        loginOn = console.login is not None
        if not loginOn and not api.loopbackHost(request.getHeader(b"host")):
            raise HTTPAnswer(http.FORBIDDEN, "the Host header must name this machine")
        session = self._session(request)
        if path == ["info"]:
            self._allow(request, b"GET")
            return jsonBody(request, self._info(session))
        if path in (["login"], ["logout"]):
            self._allow(request, b"POST")
            problem = checkStateChange(request, session, loginOn and session is not None)
            if path == ["login"]:
                problem = checkStateChange(request, None, False)
            if problem is not None:
                raise HTTPAnswer(http.FORBIDDEN, problem)
            if path == ["login"]:
                return self._login(request)
            return self._logout(request, session)
        if loginOn and session is None:
            raise HTTPAnswer(http.UNAUTHORIZED, "login required")
        problem = checkStateChange(request, session, loginOn)
        if problem is not None:
            raise HTTPAnswer(http.FORBIDDEN, problem)
        who = session.user if session is not None else f"[{clientAddress(request)}]"
        if path and path[0] in ("messages", "mailboxes", "wait"):
            if self.capture is None:
                raise HTTPAnswer(http.NOT_FOUND, "capture mode is off")
            return self.capture.renderPath(request, path)
        if path == ["sessions"]:
            self._allow(request, b"GET")
            now = console.reactor.seconds()
            return jsonBody(request, {"sessions": liveSessions(console.factories, now)})
        if path == ["decisions"]:
            self._allow(request, b"GET")
            return self._decisions(request)
        if path == ["stats"]:
            self._allow(request, b"GET")
            return jsonBody(request, console.stats.toJSON())
        if path == ["settings"]:
            self._allow(request, b"GET")
            return jsonBody(request, console.settings)
        if path and path[0] == "queue":
            return self._queue(request, path[1:], who)
        raise HTTPAnswer(http.NOT_FOUND, "no such resource")

    def _allow(self, request: Request, *methods: bytes) -> None:
        if request.method not in methods and not (request.method == b"HEAD" and b"GET" in methods):
            request.setHeader(b"allow", b", ".join(methods))
            raise HTTPAnswer(http.NOT_ALLOWED, "method not allowed")

    def _info(self, session: LoginSession | None) -> dict[str, Any]:
        console = self.console
        return {
            "version": __version__,
            "hostname": console.hostname,
            "capture": console.store is not None,
            "queue": console.operations is not None,
            "login": console.login is not None,
            "user": session.user if session is not None else None,
            "csrf": session.csrf if session is not None else None,
        }

    # -- login --------------------------------------------------------------------------

    def _login(self, request: Request) -> int | bytes:
        login = self.console.login
        if login is None:
            raise HTTPAnswer(http.NOT_FOUND, "login is off")
        address = clientAddress(request)
        if login.limiter.blocked(address):
            raise HTTPAnswer(429, "too many failed logins: try again later")
        body = request.content.read(MAX_BODY + 1) if request.content is not None else b""
        try:
            if len(body) > MAX_BODY:
                raise ValueError
            given = json.loads(body)
            username, password = given["username"], given["password"]
            if not isinstance(username, str) or not isinstance(password, str):
                raise ValueError
        except (ValueError, KeyError, TypeError):
            raise HTTPAnswer(
                http.BAD_REQUEST, 'send {"username": ..., "password": ...} as JSON'
            ) from None
        d = login.login(username, password, address)

        def ok(session: LoginSession) -> bytes:
            cookie = f"{COOKIE.decode()}={session.key}; Path=/; HttpOnly; SameSite=Strict"
            if request.isSecure():
                cookie += "; Secure"
            request.responseHeaders.addRawHeader(b"set-cookie", cookie.encode("ascii"))
            return jsonBody(request, {"user": session.user, "csrf": session.csrf})

        def failed(reason: Failure) -> bytes:
            return jsonBody(request, {"error": "wrong user name or password"}, http.UNAUTHORIZED)

        return self._later(request, d.addCallbacks(ok, failed))

    def _logout(self, request: Request, session: LoginSession | None) -> bytes:
        login = self.console.login
        if login is not None and session is not None:
            login.sessions.end(session.key)
            log.info("web console: {user} logged out", user=session.user)
        cookie = f"{COOKIE.decode()}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"
        if request.isSecure():
            cookie += "; Secure"
        request.responseHeaders.addRawHeader(b"set-cookie", cookie.encode("ascii"))
        return jsonBody(request, {"ok": True})

    def _later(self, request: Request, d: defer.Deferred[bytes]) -> int:
        """Answer with what C{d} gives (unless the client has gone)."""
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))

        def answer(body: bytes) -> None:
            if not gone:
                request.write(body)
                request.finish()

        def broken(reason: Failure) -> None:
            log.failure("web console: an answer failed", reason)
            if not gone:
                request.write(jsonBody(request, {"error": "internal error"}, 500))
                request.finish()

        d.addCallback(answer).addErrback(broken)
        return NOT_DONE_YET

    # -- decisions ----------------------------------------------------------------------

    def _decisions(self, request: Request) -> bytes | int:
        decisions = self.console.decisions
        wanted = DecisionFilter(
            _arg(request, b"q"),
            _arg(request, b"code"),
            _arg(request, b"client"),
            _arg(request, b"address"),
        )
        limit = int(numberArg(request, b"limit", 100, 1, 10000))
        after = int(numberArg(request, b"after", 0, 0, 2**62))
        wait = min(numberArg(request, b"wait", 0, 0, 86400), MAX_DECISIONS_WAIT)

        def answer() -> bytes:
            found = decisions.search(wanted, limit, after)
            return jsonBody(
                request, {"decisions": [d.toJSON() for d in found], "last": decisions.last}
            )

        if not wait or "after" not in _argNames(request) or decisions.search(wanted, 1, after):
            return answer()
        d = decisions.wait(wanted)
        timer = self.console.reactor.callLater(wait, d.cancel)
        gone: list[bool] = []

        def disconnected(_: object) -> None:
            gone.append(True)
            if timer.active():
                timer.cancel()
            d.cancel()

        request.notifyFinish().addErrback(disconnected)

        def done(result: object) -> None:
            if isinstance(result, Failure):
                result.trap(defer.CancelledError)
            if timer.active():
                timer.cancel()
            if not gone:
                request.write(answer())
                request.finish()

        d.addBoth(done)
        return NOT_DONE_YET

    # -- the queue ----------------------------------------------------------------------

    def _queue(self, request: Request, path: list[str], who: str) -> bytes | int:
        operations = self.console.operations
        if operations is None:
            raise HTTPAnswer(http.NOT_FOUND, "no queue")
        view = QueueView(operations)
        method = request.method
        if path == []:
            self._allow(request, b"GET")
            limit = int(numberArg(request, b"limit", 100, 1, 100000))
            return jsonBody(request, view.listing(limit, _arg(request, b"q")))
        if path == ["flush"]:
            self._allow(request, b"POST")
            return jsonBody(request, view.flush(who))
        try:
            if len(path) == 1:
                self._allow(request, b"GET", b"DELETE")
                if method == b"DELETE":
                    return jsonBody(request, view.delete(path[0], who))
                return self._later(request, view.show(path[0]).addCallback(self._ok, request))
            if len(path) == 2 and path[1] in ("hold", "release"):
                self._allow(request, b"POST")
                d = view.hold(path[0], path[1] == "hold", who)
                return self._later(request, d.addCallbacks(self._ok, self._holdFailed, (request,),
                                                          errbackArgs=(request,)))  # fmt: skip
        except NoSuchEntry as e:
            raise HTTPAnswer(http.NOT_FOUND, str(e)) from None
        raise HTTPAnswer(http.NOT_FOUND, "no such resource")

    @staticmethod
    def _ok(value: Any, request: Request) -> bytes:
        return jsonBody(request, value)

    @staticmethod
    def _holdFailed(reason: Failure, request: Request) -> bytes:
        reason.trap(ControlError)
        return jsonBody(request, {"error": str(reason.value)}, http.INTERNAL_SERVER_ERROR)


def _argNames(request: Request) -> set[str]:
    return {k.decode("utf-8", "replace") for k in (request.args or {})}


class _QuietSite(Site):
    """
    A Site that writes no access log line per request: the page polls every
    few seconds.  Logins and queue operations are logged on their own.
    """

    noisy = False

    def log(self, request: Any) -> None:
        pass


def consoleSite(console: Console) -> Site:
    """A Site with the console at its root (no access log)."""
    site = _QuietSite(ConsoleResource(console))
    site.displayTracebacks = False
    return site


class ConsoleService(MultiService):
    """
    The console on the server endpoint C{description}; while it runs, its
    decision ring observes the global log publisher and its statistics are
    sampled.
    """

    def __init__(self, reactor: Any, description: str, console: Console) -> None:
        from twisted.application.strports import service

        super().__init__()
        self.console = console
        self.description = description
        api.checkWebEndpoint(description, login=console.login is not None)
        service(description, consoleSite(console), reactor=reactor).setServiceParent(self)

    def startService(self) -> None:
        self.console.start()
        super().startService()

    def stopService(self) -> Any:
        self.console.stop()
        return super().stopService()
