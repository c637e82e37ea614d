"""
L{Message}: the bytes of a received message, with the trace and filter
headers prepended, held in memory while small and in an unnamed temporary
file once large.

Owns: message storage during a session and reading it back (as chunks, as a
file, or its header section).  Line endings are stored as received (CRLF).
Must not: import twisted or zope; do blocking work beyond local file writes
of data that just arrived.
"""

from __future__ import annotations

import email.message
import io
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from email.parser import BytesHeaderParser
from email.policy import SMTPUTF8 as _POLICY
from typing import BinaryIO

__all__ = ["Message", "toLF"]

SPILL_THRESHOLD = 1 << 20
"""Bodies larger than this many octets are moved to a temporary file."""

_READ_SIZE = 1 << 16
_FIELD_NAME_RE = re.compile(r"[\x21-\x39\x3b-\x7e]+\Z")  # RFC 5322 ftext
_FOLDED_VALUE_RE = re.compile(r"[^\r\n]*(?:\r\n[ \t][^\r\n]*)*\Z")
_FIELD_START_RE = re.compile(rb"(?<=\n)(?=[^ \t])")  # a line that is not a continuation
_MAX_HEADER_SECTION = 1 << 18


class Message:
    """
    A received message.  The server writes the body with L{write}, then calls
    L{finish}; filters add header fields with L{prependHeader}; backends
    read it with L{chunks} or L{open}.
    """

    def __init__(self, spillThreshold: int = SPILL_THRESHOLD, tempDir: str | None = None) -> None:
        self._prefix: list[bytes] = []
        self._pieces: list[bytes] = []
        self._bodySize = 0
        self._file: BinaryIO | None = None
        self._spillThreshold = spillThreshold
        self._tempDir = tempDir
        self._finished = False
        self._head: tuple[int, bytes] | None = None  # (end, rewritten fields)

    # -- writing (the server) ------------------------------------------------

    def write(self, data: bytes) -> None:
        """Append received body octets."""
        if self._finished:
            raise RuntimeError("message already finished")
        self._bodySize += len(data)
        if self._file is not None:
            self._file.write(data)
            return
        self._pieces.append(data)
        if self._bodySize > self._spillThreshold:
            f = tempfile.TemporaryFile(dir=self._tempDir)  # noqa: SIM115 (kept open)
            f.writelines(self._pieces)
            self._pieces = []
            self._file = f  # type: ignore[assignment]

    def finish(self) -> None:
        """The body is complete."""
        self._finished = True
        if self._file is not None:
            self._file.flush()
        elif len(self._pieces) > 1:
            self._pieces = [b"".join(self._pieces)]

    def prependHeader(self, name: str, value: str) -> None:
        """
        Add a header field at the top (the newest trace field first, as RFC
        5321 4.4 wants).  C{value} may be pre-folded with CRLF + whitespace.
        """
        if not _FIELD_NAME_RE.match(name):
            raise ValueError(f"bad header field name {name!r}")
        if not _FOLDED_VALUE_RE.match(value):
            raise ValueError(
                "a header value may only break (CRLF) before whitespace, with no bare CR or LF"
            )
        self._prefix.insert(0, f"{name}: {value}\r\n".encode())

    def prependTrace(self, field: bytes) -> None:
        """
        Add a whole header field the server built itself from checked parts
        (C{b"Received: ...\\r\\n"}), skipping L{prependHeader}'s checks.
        """
        self._prefix.insert(0, field)

    def removeHeaderFields(self, predicate: Callable[[str, str], bool]) -> int:
        """
        Drop the received message's header fields for which
        C{predicate(name, value)} is true (e.g. forged Authentication-Results
        carrying our own id, RFC 8601 5); fields prepended here are kept.
        Only the header section (at most 256 KiB) is read and rewritten; the
        body is not copied.  Returns how many fields were removed.
        """
        if not self._finished:
            raise RuntimeError("remove header fields once the message is complete")
        _, end, head = self._headerSection()
        kept: list[bytes] = []
        removed = 0
        for field in _FIELD_START_RE.split(head):
            if not field:
                continue
            name, colon, value = field.partition(b":")
            text = value.decode("utf-8", "replace").strip()
            if colon and predicate(name.decode("ascii", "replace").strip(), text):
                removed += 1
            else:
                kept.append(field)
        if removed:
            self._head = (end, b"".join(kept))
        return removed

    def _headerSection(self) -> tuple[int, int, bytes]:
        """(start, end, bytes) of the body's header fields, without the blank line."""
        if self._head is not None:
            return 0, self._head[0], self._head[1]
        data = bytearray()
        for chunk in self._bodyChunks(0):
            data += chunk
            if b"\r\n\r\n" in data or len(data) > _MAX_HEADER_SECTION:
                break
        if data.startswith(b"\r\n"):
            return 0, 0, b""
        end = data.find(b"\r\n\r\n")
        end = end + 2 if end >= 0 else min(len(data), _MAX_HEADER_SECTION)
        return 0, end, bytes(data[:end])

    def close(self) -> None:
        """Release the temporary file, if any."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self._pieces = []

    # -- reading (filters and backends) ----------------------------------------

    @property
    def size(self) -> int:
        """Octets of the whole message, prepended header fields included."""
        size = sum(map(len, self._prefix)) + self._bodySize
        if self._head is not None:
            size += len(self._head[1]) - self._head[0]
        return size

    @property
    def bodySize(self) -> int:
        """Octets as received, without the fields prepended here."""
        return self._bodySize

    @property
    def inMemory(self) -> bool:
        return self._file is None

    def chunks(self, size: int = _READ_SIZE) -> Iterator[bytes]:
        """
        The message as a series of byte strings: the prepended fields, then
        the body.  Each call reads from the start, independent of any other
        reader (threads may read at once).
        """
        if self._prefix:
            yield b"".join(self._prefix)
        if self._head is None:
            yield from self._bodyChunks(0, size)
            return
        end, head = self._head
        yield head
        yield from self._bodyChunks(end, size)

    def _bodyChunks(self, offset: int, size: int = _READ_SIZE) -> Iterator[bytes]:
        if self._file is None:
            if offset == 0:
                yield from self._pieces
                return
            for piece in self._pieces:
                if offset < len(piece):
                    yield piece[offset:] if offset else piece
                offset = max(0, offset - len(piece))
            return
        fd = self._file.fileno()
        while offset < self._bodySize:
            data = os.pread(fd, min(size, self._bodySize - offset), offset)
            if not data:
                break
            offset += len(data)
            yield data

    def getvalue(self) -> bytes:
        """The whole message as one byte string (small messages and tests)."""
        return b"".join(self.chunks())

    def open(self) -> BinaryIO:
        """A new file object reading the whole message from its start."""
        if self._file is None:
            return io.BytesIO(self.getvalue())
        return _ChainReader(self)  # type: ignore[return-value]

    def headers(self) -> email.message.Message:
        """The header section parsed by C{email} (at most 256 KiB is read)."""
        head = bytearray()
        for chunk in self.chunks():
            head += chunk
            end = head.find(b"\r\n\r\n")
            if end >= 0:
                del head[end + 4 :]
                break
            if len(head) > _MAX_HEADER_SECTION:
                break
        return BytesHeaderParser(policy=_POLICY).parsebytes(bytes(head))


class _ChainReader(io.RawIOBase):
    """A read-only file over a L{Message} that lives on disk."""

    def __init__(self, message: Message) -> None:
        self._iter = message.chunks()
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray) -> int:  # type: ignore[override]
        while not self._pending:
            try:
                self._pending = next(self._iter)
            except StopIteration:
                return 0
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


def toLF(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """
    CRLF line endings to LF, across chunk boundaries (Maildir and mbox files
    use the Unix convention).  Bare CRs are kept.
    """
    carry = b""
    for chunk in chunks:
        if carry:
            chunk = carry + chunk
            carry = b""
        if chunk.endswith(b"\r"):
            chunk, carry = chunk[:-1], b"\r"
        yield chunk.replace(b"\r\n", b"\n")
    if carry:
        yield carry
