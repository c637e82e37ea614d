"""
The console's page and its files: C{/}, C{/index.html} and
C{/static/NAME} from the directory C{mailframe/web/static} (plain names
only: no subdirectory, no C{..}), with the security headers every page of
the console carries (L{pageHeaders}: its Content-Security-Policy, no
framing, no referrer, no sniffing).

Owns: serving the files.  Must not: import mailframe.app.
"""

from __future__ import annotations

import os
import re

from twisted.web.server import Request

__all__ = ["CSP", "STATIC", "TYPES", "pageHeaders", "readStatic"]

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
"""The directory of the console's files."""

CSP = (
    b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    b"connect-src 'self'; frame-src 'self'; form-action 'self'; base-uri 'none'; "
    b"frame-ancestors 'none'"
)
TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".png": b"image/png",
    ".svg": b"image/svg+xml",
}
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\Z")


def pageHeaders(request: Request) -> None:
    """The headers of every page and file of the console."""
    request.setHeader(b"content-security-policy", CSP)
    request.setHeader(b"x-frame-options", b"DENY")
    request.setHeader(b"referrer-policy", b"no-referrer")
    request.setHeader(b"x-content-type-options", b"nosniff")


def readStatic(name: str, directory: str = STATIC) -> tuple[bytes, bytes] | None:
    """C{(content type, bytes)} of the file C{name}, or None (not there, or not allowed)."""
    if not _NAME.match(name) or ".." in name:
        return None
    kind = TYPES.get(os.path.splitext(name)[1].lower())
    if kind is None:
        return None
    path = os.path.join(directory, name)
    try:
        with open(path, "rb") as f:  # small files, read in the reactor as Twisted's File does
            return kind, f.read()
    except OSError:
        return None
