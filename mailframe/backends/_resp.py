"""
RESP2, the Redis serialization protocol, sans-IO: L{encodeCommand} turns
a command into bytes, L{ReplyParser} turns received bytes into replies.

Replies are Python values: a simple string is C{str}, an error a
L{RedisError} (returned, not raised: the caller decides), an integer
C{int}, a bulk string C{bytes} (None for the null bulk string), an array a
C{list} (None for the null array).

Owns: the wire format.  Must not: import twisted or zope, do any I/O.
"""

from __future__ import annotations

from typing import Any

__all__ = ["NEED_DATA", "ProtocolError", "RedisError", "ReplyParser", "encodeCommand"]

MAX_BULK = 512 * 1024 * 1024
"""Redis's own limit (proto-max-bulk-len) on a bulk string."""
MAX_LINE = 64 * 1024
MAX_DEPTH = 16


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Any = _NeedData()


class ProtocolError(ValueError):
    """The server sent something that is not RESP2: the connection must end."""


class RedisError(Exception):
    """An error reply (C{-ERR ...}): C{kind} is its first word (C{ERR}, C{NOAUTH}, C{OOM})."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text
        self.kind = text.split(" ", 1)[0] if text else "ERR"


def _asBytes(arg: bytes | str | int) -> bytes:
    if isinstance(arg, bytes):
        return arg
    if isinstance(arg, bool):
        raise TypeError("a Redis argument cannot be a bool")
    if isinstance(arg, int):
        return str(arg).encode("ascii")
    if isinstance(arg, str):
        return arg.encode("utf-8")
    if isinstance(arg, bytearray | memoryview):
        return bytes(arg)
    raise TypeError(f"a Redis argument must be bytes, str or int, not {type(arg).__name__}")


def encodeCommand(*args: bytes | str | int) -> bytes:
    """One command as a RESP array of bulk strings (str as UTF-8)."""
    if not args:
        raise ValueError("a command needs a name")
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = _asBytes(arg)
        parts += [b"$%d\r\n" % len(data), data, b"\r\n"]
    return b"".join(parts)


class ReplyParser:
    """Feed it bytes (L{feed}); L{next} gives each whole reply, or L{NEED_DATA}."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._pos = 0

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def next(self) -> Any:
        """The next reply, or L{NEED_DATA}; L{ProtocolError} for bytes that are not RESP2."""
        result = self._parse(self._pos, 0)
        if result is NEED_DATA:
            return NEED_DATA
        value, self._pos = result
        if self._pos > 65536 or self._pos == len(self._buffer):
            del self._buffer[: self._pos]
            self._pos = 0
        return value

    def _line(self, pos: int) -> tuple[bytes, int] | Any:
        end = self._buffer.find(b"\r\n", pos)
        if end < 0:
            if len(self._buffer) - pos > MAX_LINE:
                raise ProtocolError("a reply line longer than 64 KiB")
            return NEED_DATA
        return bytes(self._buffer[pos:end]), end + 2

    def _parse(self, pos: int, depth: int) -> tuple[Any, int] | Any:
        if depth > MAX_DEPTH:
            raise ProtocolError("arrays nested too deep")
        if pos >= len(self._buffer):
            return NEED_DATA
        line = self._line(pos + 1)
        if line is NEED_DATA:
            return NEED_DATA
        text, pos2 = line
        kind = self._buffer[pos]
        if kind == 0x2B:  # +
            return text.decode("utf-8", "replace"), pos2
        if kind == 0x2D:  # -
            return RedisError(text.decode("utf-8", "replace")), pos2
        if kind == 0x3A:  # :
            return _integer(text), pos2
        if kind == 0x24:  # $
            length = _integer(text)
            if length == -1:
                return None, pos2
            if length < 0 or length > MAX_BULK:
                raise ProtocolError(f"bad bulk length {length}")
            end = pos2 + length
            if len(self._buffer) < end + 2:
                return NEED_DATA
            if self._buffer[end : end + 2] != b"\r\n":
                raise ProtocolError("a bulk string not followed by CRLF")
            return bytes(self._buffer[pos2:end]), end + 2
        if kind == 0x2A:  # *
            count = _integer(text)
            if count == -1:
                return None, pos2
            if count < 0 or count > 1 << 24:
                raise ProtocolError(f"bad array length {count}")
            items = []
            for _ in range(count):
                item = self._parse(pos2, depth + 1)
                if item is NEED_DATA:
                    return NEED_DATA
                value, pos2 = item
                items.append(value)
            return items, pos2
        raise ProtocolError(f"unknown reply type {bytes([kind])!r}")


def _integer(text: bytes) -> int:
    try:
        return int(text)
    except ValueError:
        raise ProtocolError(f"not an integer: {text[:40]!r}") from None
