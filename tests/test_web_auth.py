"""
Tests for mailframe.web.auth and the console's login: sessions, the login
rate limit, the cookie, CSRF and Origin checks, 401 without a session (the
console rendered in memory, on a Clock).
"""

from __future__ import annotations

import io
import json
from http.cookies import SimpleCookie
from typing import Any

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from mailframe.web.auth import (
    COOKIE,
    FAILURE_DELAY,
    IDLE,
    LoginLimiter,
    Sessions,
    WebLogin,
    checkStateChange,
)
from mailframe.web.console import Console, ConsoleResource

HOST = b"console.example:8025"


class WebRequest(DummyRequest):
    """A DummyRequest with a body, cookies, a client address and TLS or not."""

    def __init__(self, path: str, method: bytes = b"GET", secure: bool = False) -> None:
        super().__init__([p.encode() for p in path.split("?")[0].strip("/").split("/")])
        self.method = method
        self.content = io.BytesIO(b"")
        self.client = IPv4Address("TCP", "192.0.2.7", 40000)
        self.secure = secure
        if "?" in path:
            for pair in path.split("?", 1)[1].split("&"):
                k, _, v = pair.partition("=")
                self.args.setdefault(k.encode(), []).append(v.encode())

    def isSecure(self) -> bool:
        return self.secure

    def getCookie(self, name: bytes) -> bytes | None:
        header = self.requestHeaders.getRawHeaders(b"cookie", [b""])[0].decode()
        found = SimpleCookie(header).get(name.decode())
        return found.value.encode() if found is not None else None


class ConsoleCase(SynchronousTestCase):
    """A console (login on unless C{checkers} is None) rendered in memory, on a Clock."""

    users: dict[str, bytes] | None = {"admin": b"s3cret"}

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.console = self.makeConsole()
        self.resource = ConsoleResource(self.console)
        self.cookie: str | None = None
        self.csrf: str | None = None

    def makeConsole(self, **kwargs: Any) -> Console:
        login = None
        if self.users is not None:
            checker = InMemoryUsernamePasswordDatabaseDontUse(**self.users)
            login = WebLogin(self.clock, [checker])
        return Console(self.clock, login=login, hostname="mx.example", **kwargs)

    def request(
        self,
        path: str,
        method: bytes = b"GET",
        body: Any = None,
        headers: dict[bytes, bytes] | None = None,
        session: bool = True,
        csrf: bool = True,
        secure: bool = False,
    ) -> WebRequest:
        """A request from the console's own page (its headers, cookie and token)."""
        r = WebRequest(path, method, secure)
        r.requestHeaders.setRawHeaders(b"host", [HOST])
        if method != b"GET":
            r.requestHeaders.setRawHeaders(b"x-mailframe-request", [b"1"])
            if csrf and self.csrf:
                r.requestHeaders.setRawHeaders(b"x-csrf-token", [self.csrf.encode()])
        if session and self.cookie:
            r.requestHeaders.setRawHeaders(
                b"cookie", [f"mailframe_session={self.cookie}".encode()]
            )
        if body is not None:
            r.content = io.BytesIO(json.dumps(body).encode())
        for k, v in (headers or {}).items():
            r.requestHeaders.setRawHeaders(k, [v])
        return r

    def render(self, r: WebRequest) -> tuple[int, bytes]:
        """The code and body of C{r}, answered at once (or after the Clock moved on)."""
        body = self.resource.render(r)
        if body is NOT_DONE_YET:
            if not r.finished:
                self.clock.advance(FAILURE_DELAY)
            self.assertTrue(r.finished, "not answered")
            body = b"".join(r.written)
        assert isinstance(body, bytes)
        return r.responseCode or 200, body

    def json(self, r: WebRequest, code: int = 200) -> Any:
        got, body = self.render(r)
        self.assertEqual(got, code, body)
        self.assertEqual(
            r.responseHeaders.getRawHeaders(b"content-type"), [b"application/json; charset=utf-8"]
        )
        self.assertEqual(r.responseHeaders.getRawHeaders(b"cache-control"), [b"no-store"])
        self.assertEqual(r.responseHeaders.getRawHeaders(b"x-content-type-options"), [b"nosniff"])
        return json.loads(body)

    def login(self, username: str = "admin", password: str = "s3cret") -> WebRequest:
        r = self.request("api/v1/login", b"POST", {"username": username, "password": password})
        got = self.json(r)
        self.csrf = got["csrf"]
        [cookie] = r.responseHeaders.getRawHeaders(b"set-cookie")
        self.cookie = cookie.decode().split(";")[0].split("=", 1)[1]
        return r


class SessionsTests(SynchronousTestCase):
    """Sessions expire when idle, and the oldest goes beyond the limit."""

    def test_expiry(self) -> None:
        """A session idle longer than IDLE is gone; one in use lives on."""
        clock = Clock()
        sessions = Sessions(clock)
        a, b = sessions.new("a"), sessions.new("b")
        clock.advance(IDLE - 1)
        self.assertIs(sessions.get(a.key), a)
        clock.advance(2)
        self.assertIs(sessions.get(a.key), a)
        self.assertIsNone(sessions.get(b.key))

    def test_limit(self) -> None:
        """Beyond the limit, the least recently used session is dropped."""
        sessions = Sessions(Clock(), limit=2)
        a, b = sessions.new("a"), sessions.new("b")
        sessions.get(a.key)
        sessions.new("c")
        self.assertIsNone(sessions.get(b.key))
        self.assertIs(sessions.get(a.key), a)
        self.assertEqual(len(sessions), 2)

    def test_randomKeys(self) -> None:
        """Keys and tokens are long, random and different."""
        sessions = Sessions(Clock())
        a, b = sessions.new("a"), sessions.new("a")
        self.assertNotEqual(a.key, b.key)
        self.assertNotEqual(a.key, a.csrf)
        self.assertGreaterEqual(len(a.key), 43)  # 32 octets, base64url
        self.assertIsNone(sessions.get(""))
        self.assertIsNone(sessions.get("nope"))

    def test_limiter(self) -> None:
        """Ten failures within the window block an address; they age out."""
        clock = Clock()
        limiter = LoginLimiter(clock)
        for _ in range(9):
            limiter.failed("192.0.2.1")
        self.assertFalse(limiter.blocked("192.0.2.1"))
        limiter.failed("192.0.2.1")
        self.assertTrue(limiter.blocked("192.0.2.1"))
        self.assertFalse(limiter.blocked("192.0.2.2"))
        clock.advance(601)
        self.assertFalse(limiter.blocked("192.0.2.1"))

    def test_checkerKinds(self) -> None:
        """strcred's memory: (str keys), a bytes-keyed checker and file: all log users in."""
        from twisted.cred import strcred

        path = self.mktemp()
        with open(path, "w") as f:
            f.write("carol:pw3\n")
        clock = Clock()
        login = WebLogin(
            clock,
            [strcred.makeChecker("memory:alice:pw1"),
             InMemoryUsernamePasswordDatabaseDontUse(bob=b"pw2"),
             strcred.makeChecker(f"file:{path}")],
        )  # fmt: skip
        for user, password in (("alice", "pw1"), ("bob", "pw2"), ("carol", "pw3")):
            session = self.successResultOf(login.login(user, password, "192.0.2.1"))
            self.assertEqual(session.user, user)
        d = login.login("alice", "pw2", "192.0.2.1")
        clock.advance(FAILURE_DELAY)
        self.failureResultOf(d)

    def test_noPasswordChecker(self) -> None:
        """A checker that takes no user name and password is refused."""

        class KeyChecker:
            credentialInterfaces = ()

        self.assertRaises(ValueError, WebLogin, Clock(), [KeyChecker()])


class LoginTests(ConsoleCase):
    """POST /api/v1/login and /logout, and what needs a session."""

    def test_info(self) -> None:
        """info needs no login; it says a login is needed, and no user yet."""
        got = self.json(self.request("api/v1/info"))
        self.assertEqual(
            {k: got[k] for k in ("capture", "queue", "login", "user", "csrf", "hostname")},
            {"capture": False, "queue": False, "login": True, "user": None, "csrf": None,
             "hostname": "mx.example"},
        )  # fmt: skip
        self.assertIsInstance(got["version"], str)

    def test_loginOK(self) -> None:
        """A right password: the user, a CSRF token, and a session cookie with its flags."""
        r = self.login()
        [cookie] = r.responseHeaders.getRawHeaders(b"set-cookie")
        name, _, rest = cookie.decode().partition("=")
        self.assertEqual(name, COOKIE.decode())
        value, *flags = rest.split("; ")
        self.assertGreaterEqual(len(value), 43)
        self.assertEqual(flags, ["Path=/", "HttpOnly", "SameSite=Strict"])
        got = self.json(self.request("api/v1/info"))
        self.assertEqual((got["user"], got["csrf"]), ("admin", self.csrf))

    def test_secureCookie(self) -> None:
        """Over TLS, the cookie is Secure too."""
        r = self.request(
            "api/v1/login", b"POST", {"username": "admin", "password": "s3cret"}, secure=True
        )
        r.requestHeaders.setRawHeaders(b"origin", [b"https://" + HOST])
        self.json(r)
        [cookie] = r.responseHeaders.getRawHeaders(b"set-cookie")
        self.assertTrue(cookie.endswith(b"; Secure"))

    def test_loginWrong(self) -> None:
        """A wrong password: 401 only after the delay, no cookie."""
        r = self.request("api/v1/login", b"POST", {"username": "admin", "password": "nope"})
        self.assertIs(self.resource.render(r), NOT_DONE_YET)
        self.clock.advance(FAILURE_DELAY - 0.01)
        self.assertFalse(r.finished)
        self.clock.advance(0.01)
        self.assertEqual(r.responseCode, 401)
        self.assertEqual(json.loads(b"".join(r.written)), {"error": "wrong user name or password"})
        self.assertIsNone(r.responseHeaders.getRawHeaders(b"set-cookie"))

    def test_loginRateLimited(self) -> None:
        """Ten failures from one address in ten minutes: 429, even with the right password."""
        for _ in range(10):
            self.json(
                self.request("api/v1/login", b"POST", {"username": "admin", "password": "x"}),
                401,
            )
        r = self.request("api/v1/login", b"POST", {"username": "admin", "password": "s3cret"})
        self.json(r, 429)
        self.clock.advance(601)
        self.login()

    def test_loginBadBody(self) -> None:
        """A body that is not the JSON object asked for is a 400."""
        for body in ([1, 2], {"username": "admin"}, {"username": 1, "password": "x"}):
            self.json(self.request("api/v1/login", b"POST", body), 400)
        self.json(self.request("api/v1/login"), 405)

    def test_loginRequired(self) -> None:
        """Without a session, every API path but info and login is 401."""
        for path in ("api/v1/sessions", "api/v1/decisions", "api/v1/stats", "api/v1/settings",
                     "api/v1/queue", "api/v1/messages", "api/v1/nosuch"):  # fmt: skip
            self.assertEqual(self.json(self.request(path), 401), {"error": "login required"})
        self.json(self.request("api/v1/queue/flush", b"POST"), 401)

    def test_sessionWorks(self) -> None:
        """With the cookie, the API answers."""
        self.login()
        self.assertEqual(self.json(self.request("api/v1/sessions")), {"sessions": []})

    def test_sessionExpires(self) -> None:
        """After twelve idle hours the cookie is worth nothing."""
        self.login()
        self.clock.advance(IDLE + 1)
        self.json(self.request("api/v1/sessions"), 401)

    def test_logout(self) -> None:
        """logout ends the session and clears the cookie."""
        self.login()
        r = self.request("api/v1/logout", b"POST")
        self.assertEqual(self.json(r), {"ok": True})
        [cookie] = r.responseHeaders.getRawHeaders(b"set-cookie")
        self.assertTrue(cookie.startswith(b"mailframe_session=;"))
        self.assertIn(b"Max-Age=0", cookie)
        self.json(self.request("api/v1/sessions"), 401)

    def test_pageWithoutLogin(self) -> None:
        """The page and its files are served without a session (it has its own login form)."""
        r = self.request("")
        code, _ = self.render(r)
        self.assertIn(code, (200, 404))  # 404 until the front end's files exist
        self.assertEqual(r.responseHeaders.getRawHeaders(b"x-frame-options"), [b"DENY"])

    def test_anyHost(self) -> None:
        """With login on, the Host may be any name (a public one)."""
        self.login()
        r = self.request("api/v1/sessions", headers={b"host": b"mail.example.org"})
        self.json(r)


class CrossSiteTests(ConsoleCase):
    """Requests that change state need the custom header, the token and their own Origin."""

    def setUp(self) -> None:
        super().setUp()
        self.login()

    def test_noRequestHeader(self) -> None:
        """Without X-Mailframe-Request: 403."""
        r = self.request("api/v1/logout", b"POST")
        r.requestHeaders.removeHeader(b"x-mailframe-request")
        self.assertIn("X-Mailframe-Request", self.json(r, 403)["error"])
        r = self.request("api/v1/login", b"POST", {"username": "admin", "password": "s3cret"})
        r.requestHeaders.removeHeader(b"x-mailframe-request")
        self.json(r, 403)

    def test_noToken(self) -> None:
        """Without the session's CSRF token, or with another, 403."""
        self.json(self.request("api/v1/queue/flush", b"POST", csrf=False), 403)
        r = self.request("api/v1/queue/flush", b"POST", headers={b"x-csrf-token": b"guess"})
        self.assertIn("CSRF", self.json(r, 403)["error"])
        r = self.request("api/v1/logout", b"POST", csrf=False)
        self.json(r, 403)
        self.json(self.request("api/v1/sessions"))  # still logged in

    def test_foreignOrigin(self) -> None:
        """An Origin of another site (or scheme) is 403; the page's own passes."""
        for origin in (b"https://evil.example", b"http://console.example", b"null",
                       b"https://" + HOST):  # fmt: skip
            r = self.request("api/v1/queue/flush", b"POST", headers={b"origin": origin})
            self.assertIn("Origin", self.json(r, 403)["error"])
        r = self.request("api/v1/queue/flush", b"POST", headers={b"origin": b"http://" + HOST})
        self.assertEqual(self.json(r, 404), {"error": "no queue"})

    def test_getNeedsNoToken(self) -> None:
        """A GET needs neither the header nor the token."""
        self.json(self.request("api/v1/stats", csrf=False))

    def test_checkStateChange(self) -> None:
        """checkStateChange passes GET and a right POST, refuses the others."""
        r = WebRequest("x", b"GET")
        self.assertIsNone(checkStateChange(r, None, True))
        r = WebRequest("x", b"DELETE")
        self.assertIsNotNone(checkStateChange(r, None, False))
        r.requestHeaders.setRawHeaders(b"x-mailframe-request", [b"1"])
        self.assertIsNone(checkStateChange(r, None, False))
        self.assertIsNotNone(checkStateChange(r, None, True))


class NoLoginTests(ConsoleCase):
    """Without web-auth: no login, no token, but the loopback Host rule."""

    users = None

    def test_info(self) -> None:
        """info says no login; the API answers without a session."""
        got = self.json(self.request("api/v1/info", headers={b"host": b"127.0.0.1:8025"}))
        self.assertEqual((got["login"], got["user"], got["csrf"]), (False, None, None))
        self.json(self.request("api/v1/stats", headers={b"host": b"localhost:8025"}))

    def test_hostChecked(self) -> None:
        """A Host that does not name this machine is refused (DNS rebinding)."""
        self.json(self.request("api/v1/stats"), 403)

    def test_stateChangeNeedsHeader(self) -> None:
        """A POST still needs X-Mailframe-Request, but no token."""
        h = {b"host": b"127.0.0.1"}
        r = self.request("api/v1/queue/flush", b"POST", headers=h)
        self.assertEqual(self.json(r, 404), {"error": "no queue"})
        r.requestHeaders.removeHeader(b"x-mailframe-request")
        r = self.request("api/v1/queue/flush", b"POST", headers=h)
        r.requestHeaders.removeHeader(b"x-mailframe-request")
        self.json(r, 403)

    def test_loginOff(self) -> None:
        """POST login without web-auth: 404."""
        r = self.request(
            "api/v1/login", b"POST", {"username": "a", "password": "b"},
            headers={b"host": b"127.0.0.1"},
        )  # fmt: skip
        self.json(r, 404)
