"""
A small Redis client on Twisted: L{RedisProtocol} sends commands (any
command: L{RedisProtocol.execute}) and matches each reply to its command in
order, so that commands from many deliveries share one connection,
pipelined.  L{RedisURL} reads C{redis://}, C{rediss://} and C{unix://}
URLs; L{connectRedis} connects, authenticates and selects the database.

Owns: the Twisted side of RESP2 (the wire format is L{mailframe.backends._resp}).
Must not: import the global reactor; retry (the backend decides).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlsplit

from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

from mailframe.backends._resp import NEED_DATA, ProtocolError, RedisError, ReplyParser
from mailframe.backends._resp import encodeCommand as encodeCommand

__all__ = ["RedisProtocol", "RedisURL", "connectRedis"]


class RedisConnectionLost(ConnectionError):
    """The connection ended before the reply to a command came."""


@dataclass(frozen=True)
class RedisURL:
    """
    Where a Redis server is and how to log in: C{redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]},
    C{rediss://...} (TLS), or C{unix:///PATH[?db=N&password=...]}.
    """

    scheme: str
    host: str = "127.0.0.1"
    port: int = 6379
    path: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str) -> RedisURL:
        """@raise ValueError: one line, for a URL that is not one of the three forms."""
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        username = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password is not None else None
        password = query.get("password", password)
        try:
            db = int(query.get("db", "0"))
            if scheme == "unix":
                if not parts.path:
                    raise ValueError("no path")
                return cls("unix", path=parts.path, db=db, username=username, password=password)
            if scheme not in ("redis", "rediss"):
                raise ValueError("the scheme must be redis, rediss or unix")
            path = parts.path.strip("/")
            if path:
                db = int(path)
            port = parts.port or 6379
        except ValueError as e:
            raise ValueError(f"bad Redis URL {_redact(url)!r}: {e}") from None
        if db < 0:
            raise ValueError(f"bad Redis URL {_redact(url)!r}: negative database")
        host = parts.hostname or "127.0.0.1"
        return cls(scheme, host, port, "", db, username or None, password)

    def endpoint(self, reactor: Any, timeout: float) -> IStreamClientEndpoint:
        from twisted.internet.endpoints import (
            HostnameEndpoint,
            UNIXClientEndpoint,
            wrapClientTLS,
        )

        if self.scheme == "unix":
            return UNIXClientEndpoint(reactor, self.path, timeout=timeout)
        endpoint: IStreamClientEndpoint = HostnameEndpoint(
            reactor, self.host, self.port, timeout=timeout
        )
        if self.scheme == "rediss":
            from twisted.internet.ssl import optionsForClientTLS

            endpoint = wrapClientTLS(optionsForClientTLS(self.host), endpoint)
        return endpoint

    def __str__(self) -> str:
        if self.scheme == "unix":
            return f"unix://{self.path}" + (f"?db={self.db}" if self.db else "")
        return f"{self.scheme}://{self.host}:{self.port}/{self.db}"


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)


class RedisProtocol(Protocol):
    """
    One connection: L{execute} writes a command at once and returns a
    Deferred of its reply (an error reply fails it with L{RedisError}).
    When the connection ends, every command still waiting fails with
    L{RedisConnectionLost}; C{onLost} is then called with the reason.
    """

    def __init__(self) -> None:
        self._parser = ReplyParser()
        self._pending: deque[defer.Deferred[Any]] = deque()
        self.connected = False
        self.lost: Failure | None = None
        self.onLost: Any = None
        self.name = "redis"

    def connectionMade(self) -> None:
        self.connected = True

    def execute(self, *args: bytes | str | int) -> defer.Deferred[Any]:
        if self.lost is not None or self.transport is None:
            return defer.fail(RedisConnectionLost(f"{self.name}: not connected"))
        d: defer.Deferred[Any] = defer.Deferred()
        self._pending.append(d)
        self.transport.write(encodeCommand(*args))
        return d

    @property
    def pending(self) -> int:
        """Commands written whose reply has not come."""
        return len(self._pending)

    def dataReceived(self, data: bytes) -> None:
        self._parser.feed(data)
        while True:
            try:
                reply = self._parser.next()
            except ProtocolError as e:
                self.abort(f"not RESP2: {e}")
                return
            if reply is NEED_DATA:
                return
            if not self._pending:
                self.abort("a reply to no command")
                return
            d = self._pending.popleft()
            if isinstance(reply, RedisError):
                d.errback(reply)
            else:
                d.callback(reply)

    def abort(self, why: str) -> None:
        """End the connection now (a timeout, a protocol error): what waits fails."""
        if self.lost is None:
            self.lost = Failure(RedisConnectionLost(f"{self.name}: {why}"))
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        self.connected = False
        if self.lost is None:
            self.lost = Failure(
                RedisConnectionLost(f"{self.name}: connection lost: {reason.getErrorMessage()}")
            )
        pending, self._pending = self._pending, deque()
        for d in pending:
            d.errback(self.lost)
        if self.onLost is not None:
            self.onLost(self, self.lost)


async def connectRedis(
    reactor: Any,
    url: RedisURL,
    timeout: float = 10.0,
    name: str | None = None,
    endpoint: IStreamClientEndpoint | None = None,
) -> RedisProtocol:
    """
    Connect to C{url} (through C{endpoint} if given), authenticate (AUTH)
    and select its database, within C{timeout} seconds: the connection,
    ready for commands.
    """
    if endpoint is None:
        endpoint = url.endpoint(reactor, timeout)
    connecting = endpoint.connect(Factory.forProtocol(RedisProtocol))
    connecting.addTimeout(timeout, reactor)
    protocol = cast(RedisProtocol, await connecting)
    protocol.name = name or str(url)
    timer = reactor.callLater(timeout, protocol.abort, f"no answer in {timeout:g} s")
    try:
        if url.password is not None:
            if url.username:
                await protocol.execute("AUTH", url.username, url.password)
            else:
                await protocol.execute("AUTH", url.password)
        if url.db:
            await protocol.execute("SELECT", url.db)
        else:
            await protocol.execute("PING")
    except BaseException:
        protocol.abort("setup failed")
        raise
    finally:
        if timer.active():
            timer.cancel()
    return protocol
