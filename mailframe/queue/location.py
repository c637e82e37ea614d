"""
Where the queue lives: L{parseSpool} reads the C{spool} setting, a
directory (the file spool) or a URL (C{postgresql://USER@HOST/DB}: the
PostgreSQL store, L{mailframe.queue.pgstore}).

A value that looks like a URL (a scheme, then C{://}) is parsed as one: an
unknown scheme is refused, never taken as a directory name (three nodes
given the same mistyped URL would each keep a private file queue).
C{file:///PATH} is the directory PATH.

Owns: that decision and the PostgreSQL location's pieces (the password is
never kept in what is shown).  Must not: import twisted or psycopg, or
touch the file system.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

__all__ = ["POSTGRES_SCHEMES", "LocationError", "PostgresLocation", "parseSpool"]

POSTGRES_SCHEMES = frozenset({"postgresql", "postgres"})
_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")


class LocationError(ValueError):
    """A C{spool} value that is neither a directory nor a known URL; one line."""


@dataclass(frozen=True)
class PostgresLocation:
    """
    A PostgreSQL database for the queue.  C{conninfo} is the URL libpq is
    given, without a password; C{password} one from the URL (if any; the
    C{spool-password-file} setting or libpq's C{PGPASSWORD} and
    C{PGPASSFILE} are better places); C{display} the URL with the password
    masked, for logs and errors.
    """

    conninfo: str
    display: str
    password: str | None = None

    def withPassword(self, password: str | None) -> PostgresLocation:
        return PostgresLocation(self.conninfo, self.display, password)

    def connectArgs(self) -> dict[str, Any]:
        """Keyword arguments for C{psycopg.connect} besides the conninfo."""
        return {"password": self.password} if self.password is not None else {}


def parseSpool(value: str) -> str | PostgresLocation:
    """
    The directory of a file spool, or a L{PostgresLocation}.

    @raise LocationError: an unknown scheme, or a PostgreSQL URL without a
        database name.
    """
    text = value.strip()
    match = _URL.match(text)
    if match is None:
        return text
    scheme = match.group(1).lower()
    if scheme == "file":
        path = unquote(urlsplit(text).path)
        if not path:
            raise LocationError(f"spool {value!r}: file:// needs a path")
        return path
    if scheme not in POSTGRES_SCHEMES:
        raise LocationError(
            f"spool {_mask(text)!r}: unknown scheme {scheme!r} "
            "(a directory, or postgresql://USER@HOST/DATABASE)"
        )
    parts = urlsplit(text)
    if not parts.path.strip("/"):
        raise LocationError(
            f"spool {_mask(text)!r}: name the database (postgresql://USER@HOST/DB)"
        )
    password = unquote(parts.password) if parts.password is not None else None
    netloc = parts.hostname or ""
    if ":" in netloc:  # an IPv6 address
        netloc = f"[{netloc}]"
    if parts.port is not None:
        netloc += f":{parts.port}"
    if parts.username is not None:
        netloc = f"{parts.username}@{netloc}"
    query = urlencode(parse_qsl(parts.query, keep_blank_values=True))
    conninfo = urlunsplit(("postgresql", netloc, parts.path, query, ""))
    return PostgresLocation(conninfo, _mask(text), password)


def _mask(text: str) -> str:
    """The URL with any password replaced by C{***}."""
    return re.sub(r"(://[^/@:]*):[^/@]*@", r"\1:***@", text)
