"""
The REST API (JSON) of the captured mail, on twisted.web, in the reactor
thread: C{/api/v1/messages} (list, search, get, raw source, parts, the
sanitised HTML body, delete), C{/api/v1/mailboxes} and C{/api/v1/wait} (a
long poll for a message matching a query).  See docs/webapi.rst for the
schema.  L{CaptureAPI} serves it alone (what L{mailframe.testing} uses);
the console (L{mailframe.web.console}) serves it with the rest of its API.

Every answer is C{application/json; charset=utf-8} with C{Cache-Control:
no-store} (but the raw source, the parts and the HTML body); DELETE needs
the header C{X-Mailframe-Request: 1}, which a cross-site form cannot send;
there are no CORS headers.  A part is downloaded as an attachment, with
C{nosniff}; the HTML body is served only sanitised (L{mailframe.web.sanitise})
and with a C{sandbox} Content-Security-Policy.

Alone (no login), L{checkWebEndpoint} allows loopback and unix endpoints
only; with the console's login, any endpoint but the mail ports.

Owns: HTTP of the captured mail.  Must not: import mailframe.app.
"""

from __future__ import annotations

import email.policy
import ipaddress
import json
from email.message import EmailMessage
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from mailframe.plugins import parseDescription
from mailframe.web.capture import CapturedMessage, CaptureStore, Query
from mailframe.web.sanitise import sanitise

__all__ = [
    "API_PREFIX",
    "MAX_WAIT",
    "CaptureAPI",
    "HTTPAnswer",
    "apiSite",
    "checkWebEndpoint",
    "describe",
    "htmlBodies",
    "isLoopbackEndpoint",
    "jsonBody",
    "loopbackHost",
    "numberArg",
    "summary",
]

API_PREFIX = (b"api", b"v1")
MAX_WAIT = 300.0
"""The longest C{/api/v1/wait} (seconds)."""
DEFAULT_WAIT = 30.0
CSRF_HEADER = b"x-mailframe-request"
_REFUSED_PORTS = frozenset({25, 465, 587})


def isLoopbackEndpoint(description: str) -> bool:
    """Whether C{description} (a valid endpoint) listens on loopback or a unix socket."""
    kind, _, options = parseDescription(description)
    if kind.lower() == "unix":
        return True
    interface = options.get("interface", "")
    try:
        return ipaddress.ip_address(interface).is_loopback
    except ValueError:
        return interface == "localhost"


def checkWebEndpoint(description: str, login: bool = False) -> str:
    """
    C{description} if it is a loopback TCP or a unix endpoint (any
    endpoint with C{login}), not on a mail port; else ValueError with a
    one-line reason.
    """
    try:
        kind, args, options = parseDescription(description)
    except ValueError as e:
        raise ValueError(f"{description!r}: {e}") from None
    kind = kind.lower()
    if kind == "unix":
        return description
    if login and kind not in ("tcp", "tcp6", "ssl"):
        return description  # systemd:, another plug-in's: no port of ours to check
    if kind not in ("tcp", "tcp6", "ssl") or (kind == "ssl" and not login):
        raise ValueError(
            f"{description!r}: use tcp:PORT:interface=127.0.0.1 or unix:PATH "
            "(without web-auth: loopback or unix only)"
        )
    try:
        port = int(options.get("port") or args[0])
    except (ValueError, IndexError):
        raise ValueError(f"{description!r}: no port") from None
    if port in _REFUSED_PORTS:
        raise ValueError(f"{description!r}: port {port} is a mail port")
    if not login and not isLoopbackEndpoint(description):
        raise ValueError(
            f"{description!r}: without a login (web-auth), the console listens on a "
            "loopback interface only (interface=127.0.0.1 or interface=\\:\\:1) or a "
            "unix socket"
        )
    return description


def loopbackHost(header: bytes | None) -> bool:
    """
    Whether a Host header names this machine (localhost, a loopback
    address): a page whose own name an attacker re-pointed at 127.0.0.1 (DNS
    rebinding) sends its own name, and is refused.
    """
    if header is None:
        return True  # HTTP/1.0
    host = header.decode("ascii", "replace").strip().lower()
    if host.startswith("["):
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    if host in ("localhost", "localhost.") or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _text(part: EmailMessage) -> str:
    """A text part decoded, its line endings LF."""
    try:
        text = str(part.get_content())
    except Exception:  # an unknown charset, a broken encoding
        payload = part.get_payload(decode=True)
        text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
    return text.replace("\r\n", "\n")


def _isAttachment(part: EmailMessage) -> bool:
    return part.get_content_disposition() == "attachment" or part.get_filename() is not None


def summary(m: CapturedMessage) -> dict[str, Any]:
    """A message in a list: ID, mailbox, sender, recipients, subject, size, arrival."""
    return {
        "id": m.id,
        "mailbox": m.mailbox,
        "from": m.sender,
        "to": m.recipients,
        "subject": m.subject,
        "size": m.size,
        "received": m.arrived,
    }


def htmlBodies(m: CapturedMessage) -> list[str]:
    """The HTML bodies of C{m} (text/html parts that are not attachments), decoded."""
    return [
        _text(part)
        for part in m.parts()
        if not part.is_multipart()
        and part.get_content_type() == "text/html"
        and not _isAttachment(part)
    ]


SANDBOX_CSP = "sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data: cid:"
"""The Content-Security-Policy of a message's HTML body (remote images: L{REMOTE_CSP})."""
REMOTE_CSP = SANDBOX_CSP + " https: http:"


def describe(m: CapturedMessage) -> dict[str, Any]:
    """One message whole: the summary, its envelope and session, headers, text, HTML, parts."""
    text: list[str] = []
    html: list[str] = []
    attachments: list[dict[str, Any]] = []
    for index, part in enumerate(m.parts()):
        if part.is_multipart():
            continue
        ctype = part.get_content_type()
        if not _isAttachment(part) and ctype == "text/plain":
            text.append(_text(part))
        elif not _isAttachment(part) and ctype == "text/html":
            html.append(_text(part))
        else:
            payload = part.get_payload(decode=True)
            attachments.append(
                {
                    "part": index,
                    "filename": part.get_filename(),
                    "contentType": ctype,
                    "size": len(payload) if isinstance(payload, bytes) else 0,
                }
            )
    env = m.envelope
    session = env.session
    result = summary(m)
    result.update(
        {
            "envelope": {
                "mailFrom": str(env.mailFrom),
                "mailParams": dict(env.mailParams),
                "recipients": [
                    {"address": str(r.address), "params": dict(r.params)} for r in env.recipients
                ],
                "queueID": env.queueID,
            },
            "session": None
            if session is None
            else {
                "client": session.peerHost,
                "clientPort": session.peerPort,
                "clientName": session.peerName,
                "helo": session.heloName,
                "protocol": session.protocol,
                "listener": session.listener,
                "tls": None
                if session.tls is None
                else {"version": session.tls.version, "cipher": session.tls.cipher},
                "user": session.authenticated,
            },
            "headers": [[k, str(v)] for k, v in _headers(m.parsed)],
            "text": "\n".join(text) if text else None,
            "html": "\n".join(html) if html else None,
            "attachments": attachments,
            "parts": [
                {"part": i, "contentType": p.get_content_type(), "multipart": p.is_multipart()}
                for i, p in enumerate(m.parts())
            ],
        }
    )
    return result


def _headers(parsed: EmailMessage) -> list[tuple[str, str]]:
    found = []
    for k, v in parsed.raw_items():
        try:
            found.append((k, str(email.policy.default.header_factory(k, v))))
        except Exception:
            found.append((k, str(v)))
    return found


def _query(request: Request) -> Query:
    args = request.args or {}
    text = args.get(b"q", [b""])[0].decode("utf-8", "replace")
    box = args.get(b"mailbox", [None])[0]
    return Query(text, box.decode("utf-8", "replace") if box is not None else None)


class HTTPAnswer(Exception):
    """An error answer: its HTTP code and text (a JSON C{{"error": text}})."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


def jsonBody(request: Request, value: Any, code: int = http.OK) -> bytes:
    """C{value} as the JSON body of the answer to C{request}, with C{code}."""
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json; charset=utf-8")
    return json.dumps(value, ensure_ascii=False).encode("utf-8")


def numberArg(request: Request, name: bytes, default: float, low: float, high: float) -> float:
    """The query argument C{name} as a number from C{low} to C{high}; else a 400."""
    raw = (request.args or {}).get(name, [None])[0]
    if raw is None or raw == b"":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise HTTPAnswer(http.BAD_REQUEST, f"{name.decode()} must be a number") from None
    if not low <= value <= high:
        raise HTTPAnswer(http.BAD_REQUEST, f"{name.decode()} must be from {low:g} to {high:g}")
    return value


class CaptureAPI(Resource):
    """The API at C{/api/v1/...}: the root resource of its Site, a JSON 404 elsewhere."""

    isLeaf = True

    def __init__(self, store: CaptureStore, reactor: Any) -> None:
        super().__init__()
        self.store = store
        self.reactor = reactor

    def render(self, request: Request) -> bytes | int:
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-content-type-options", b"nosniff")
        if not loopbackHost(request.getHeader(b"host")):
            return self._error(request, http.FORBIDDEN, "the Host header must name this machine")
        postpath = list(request.postpath or [])
        if tuple(postpath[:2]) != API_PREFIX:
            return self._error(request, http.NOT_FOUND, "no such resource")
        path = [p.decode("utf-8", "replace") for p in postpath[2:]]
        if request.method == b"DELETE" and request.getHeader(CSRF_HEADER) != b"1":
            return self._error(request, http.FORBIDDEN, "DELETE needs X-Mailframe-Request: 1")
        return self.renderPath(request, path)

    def handles(self, path: list[str]) -> bool:
        """Whether C{path} (after C{/api/v1}) is one of this API's."""
        return bool(path) and path[0] in ("messages", "mailboxes", "wait")

    def renderPath(self, request: Request, path: list[str]) -> bytes | int:
        """Answer C{path} (after C{/api/v1}); the caller has checked where it comes from."""
        method = request.method
        try:
            if path == ["messages"]:
                if method == b"GET":
                    return self._list(request)
                if method == b"DELETE":
                    box = _query(request).mailbox
                    return self._json(request, {"deleted": self.store.clear(box)})
            elif path == ["mailboxes"] and method == b"GET":
                boxes = [{"name": k, "count": v} for k, v in self.store.mailboxes().items()]
                return self._json(request, {"mailboxes": boxes})
            elif path == ["wait"] and method == b"GET":
                return self._wait(request)
            elif len(path) >= 2 and path[0] == "messages":
                return self._one(request, path[1], path[2:])
            else:
                return self._error(request, http.NOT_FOUND, "no such resource")
            request.setHeader(b"allow", b"GET, DELETE")
            return self._error(request, http.NOT_ALLOWED, "method not allowed")
        except HTTPAnswer as e:
            return self._error(request, e.code, e.text)

    def _json(self, request: Request, value: Any, code: int = http.OK) -> bytes:
        return jsonBody(request, value, code)

    def _error(self, request: Request, code: int, text: str) -> bytes:
        return jsonBody(request, {"error": text}, code)

    def _list(self, request: Request) -> bytes:
        limit = int(numberArg(request, b"limit", 100, 1, 100000))
        query = _query(request)
        found = self.store.search(query, limit)
        return self._json(
            request,
            {
                "total": len(self.store),
                "count": len(found),
                "messages": [summary(m) for m in found],
            },
        )

    def _one(self, request: Request, ident: str, rest: list[str]) -> bytes:
        m = self.store.get(ident)
        if m is None:
            return self._error(request, http.NOT_FOUND, "no such message")
        method = request.method
        if not rest:
            if method == b"GET":
                return self._json(request, describe(m))
            if method == b"DELETE":
                self.store.delete(ident)
                return self._json(request, {"deleted": 1})
        elif rest == ["html"] and method == b"GET":
            return self._html(request, m)
        elif rest == ["raw"] and method == b"GET":
            request.setHeader(b"content-type", b"message/rfc822")
            request.setHeader(b"content-disposition", f'attachment; filename="{m.id}.eml"')
            return m.data
        elif len(rest) == 2 and rest[0] == "parts" and method == b"GET":
            parts = m.parts()
            if not rest[1].isdigit() or int(rest[1]) >= len(parts):
                return self._error(request, http.NOT_FOUND, "no such part")
            part = parts[int(rest[1])]
            if part.is_multipart():
                return self._error(request, http.NOT_FOUND, "a multipart part has no content")
            payload = part.get_payload(decode=True)
            request.setHeader(b"content-type", part.get_content_type())
            request.setHeader(b"content-disposition", "attachment")
            return payload if isinstance(payload, bytes) else b""
        else:
            return self._error(request, http.NOT_FOUND, "no such resource")
        request.setHeader(b"allow", b"GET, DELETE" if not rest else b"GET")
        return self._error(request, http.NOT_ALLOWED, "method not allowed")

    def _html(self, request: Request, m: CapturedMessage) -> bytes:
        bodies = htmlBodies(m)
        if not bodies:
            return self._error(request, http.NOT_FOUND, "the message has no HTML part")
        remote = (request.args or {}).get(b"remote", [b"0"])[0] == b"1"
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"content-security-policy", REMOTE_CSP if remote else SANDBOX_CSP)
        request.setHeader(b"x-frame-options", b"SAMEORIGIN")
        request.setHeader(b"referrer-policy", b"no-referrer")
        return "\n".join(sanitise(b, remote) for b in bodies).encode("utf-8")

    def _wait(self, request: Request) -> int:
        timeout = numberArg(request, b"timeout", DEFAULT_WAIT, 0, MAX_WAIT)
        d = self.store.wait(_query(request))
        timer = self.reactor.callLater(timeout, d.cancel) if not d.called else None
        gone = False

        def disconnected(_: object) -> None:
            nonlocal gone
            gone = True
            if timer is not None and timer.active():
                timer.cancel()
            d.cancel()

        finished = request.notifyFinish()
        finished.addErrback(disconnected)

        def found(m: CapturedMessage) -> None:
            if timer is not None and timer.active():
                timer.cancel()
            if not gone:
                request.write(self._json(request, describe(m)))
                request.finish()

        def failed(reason: Failure) -> None:
            reason.trap(defer.CancelledError)
            if not gone:
                request.write(
                    self._error(request, http.REQUEST_TIMEOUT, "no matching message in time")
                )
                request.finish()

        d.addCallbacks(found, failed)
        return NOT_DONE_YET


def apiSite(store: CaptureStore, reactor: Any) -> Site:
    """A Site with the API at C{/api/v1} (and a JSON 404 elsewhere)."""
    site = Site(CaptureAPI(store, reactor))
    site.displayTracebacks = False
    return site
