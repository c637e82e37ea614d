"""
L{Message}: the bytes of a received message, with the trace and filter
headers prepended, held in memory while small and in an unnamed temporary
file once large.

Ownership: a Message has one owner at a time and is closed by its last
user, never under a reader.  Its owner (the server, for a received message;
the queue runner, for one read back from the spool) calls L{Message.close}
when it is done with it, whatever anyone else is doing.  Whoever reads it
later than the call that handed it over (a delivery in a thread, a callback
after the owner may have moved on) takes a L{Hold} first with
L{Message.retain} and releases it once the reading is over: C{close}
only marks the message closing, and its storage (the temporary file, the
pieces in memory) is freed when the last hold is released.  C{retain},
C{release} and C{close} are called in the reactor thread only, so the count
needs no lock; reading (L{Message.chunks}, L{Message.open}, ...) may happen
in any thread while a hold is kept.

Each reader (C{chunks()}, C{open()}) takes, when it is made, everything it
will read: the pieces in memory, or its own duplicate of the temporary
file's descriptor.  A reader made before the storage was freed therefore
reads this message whole, to its end, even after the free; one asked for
after it gets L{MessageClosed}, never an empty or partial message, and no
reader ever reads a closed or reused descriptor.

Filters may also rewrite the whole header section (L{Message.headerFields},
L{Message.replaceHeaderFields}: only the header section is rewritten) and
replace the body (L{Message.bodyReplacement}, written to storage of its own
and swapped in by L{Message.replaceBody} only when complete), before the
message is handed on.

Owns: message storage during a session and reading it back (as chunks, as a
file, or its header section), editing it, and its ownership (L{Hold}).  Line endings are
stored as received (CRLF).  Must not: import twisted or zope; do blocking
work beyond local file writes of data that just arrived.
"""

from __future__ import annotations

import email.message
import io
import itertools
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Sequence
from email.parser import BytesHeaderParser
from email.policy import SMTPUTF8 as _POLICY
from typing import BinaryIO, TypeVar

__all__ = ["BodyReplacement", "Hold", "Message", "MessageClosed", "toLF"]

_T = TypeVar("_T")

SPILL_THRESHOLD = 1 << 20
"""Bodies larger than this many octets are moved to a temporary file."""

_READ_SIZE = 1 << 16
_FIELD_NAME_RE = re.compile(r"[\x21-\x39\x3b-\x7e]+\Z")  # RFC 5322 ftext
_FOLDED_VALUE_RE = re.compile(r"[^\r\n]*(?:\r\n[ \t][^\r\n]*)*\Z")
_FIELD_START_RE = re.compile(rb"(?<=\n)(?=[^ \t])")  # a line that is not a continuation
_MAX_HEADER_SECTION = 1 << 18


class MessageClosed(ValueError):
    """The message's storage was freed: its last owner closed it."""


class Hold:
    """
    A claim on a L{Message} (from L{Message.retain}): the message stays
    readable until L{release}.  Releasing twice is harmless.  Also a context
    manager, and L{passThrough} suits C{Deferred.addBoth}.
    """

    __slots__ = ("_release",)

    def __init__(self, release: Callable[[], None]) -> None:
        self._release: Callable[[], None] | None = release

    @property
    def released(self) -> bool:
        return self._release is None

    def release(self) -> None:
        """Give the message back (in the reactor thread); the last one frees a closed message."""
        release, self._release = self._release, None
        if release is not None:
            release()

    def passThrough(self, result: _T) -> _T:
        """L{release}, then return C{result} unchanged."""
        self.release()
        return result

    def __enter__(self) -> Hold:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Message:
    """
    A received message.  The server writes the body with L{write}, then calls
    L{finish}; filters add header fields with L{prependHeader}; backends
    read it with L{chunks} or L{open}, holding it (L{retain}) while they read
    later than the call that gave it to them (see the module docstring).
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
        self._trace: bytes | None = None  # the server's own trace field
        self._holds = 0
        self._closing = False
        self._freed = False

    # -- writing (the server) ------------------------------------------------

    def write(self, data: bytes) -> None:
        """Append received body octets."""
        if self._finished:
            raise RuntimeError("message already finished" if not self._freed else "message closed")
        self._bodySize += len(data)
        if self._file is not None:
            self._file.write(data)
            return
        self._pieces.append(data)
        if self._bodySize > self._spillThreshold:
            f = tempfile.TemporaryFile(dir=self._tempDir)  # noqa: SIM115 (kept open)
            f.writelines(self._pieces)
            self._pieces = []
            self._file = f

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
        self._trace = field

    @property
    def traceField(self) -> bytes | None:
        """The field the last L{prependTrace} added (the server's Received:), if any."""
        return self._trace

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
        reader = self._reader([], 0)
        try:
            for chunk in reader:
                data += chunk
                if b"\r\n\r\n" in data or len(data) > _MAX_HEADER_SECTION:
                    break
        finally:
            reader.close()
        if data.startswith(b"\r\n"):
            return 0, 0, b""
        end = data.find(b"\r\n\r\n")
        end = end + 2 if end >= 0 else min(len(data), _MAX_HEADER_SECTION)
        return 0, end, bytes(data[:end])

    # -- editing the whole header section, replacing the body (filters) ----------

    def headerFields(self) -> list[bytes]:
        """
        Every field of the header section as it will be delivered, prepended
        ones first: each as its octets (C{b"Name: value\\r\\n"}, continuation
        lines included).  Only the header section (at most 256 KiB) is read.
        """
        if not self._finished:
            raise RuntimeError("read the header fields once the message is complete")
        fields = _splitFields(b"".join(self._prefix))
        fields.extend(_splitFields(self._headerSection()[2]))
        return fields

    def replaceHeaderFields(self, fields: Sequence[bytes]) -> None:
        """
        Make C{fields} (as L{headerFields} gives them) the whole header
        section; the body is not copied.  The server's trace field, if it is
        among them, and the fields before it stay prepended ones (see
        L{removeHeaderFields}).

        @raise ValueError: a field that is not C{Name: value} with CRLF line
            endings and continuation lines starting with white space; nothing
            is changed then.
        """
        if not self._finished or self._freed:
            raise RuntimeError("edit the header fields of a complete message only")
        fields = list(fields)
        for f in fields:
            _checkField(f)
        _, end, _ = self._headerSection()
        cut = 0
        if self._trace is not None and self._trace in fields:
            cut = fields.index(self._trace) + 1
        self._prefix = fields[:cut]
        self._head = (end, b"".join(fields[cut:]))

    def bodyChunks(self, size: int = _READ_SIZE) -> Iterator[bytes]:
        """
        The body: what follows the blank line after the header section, as
        L{chunks} reads (each call from the start; close it if you stop
        early).  Empty for a message without a blank line.
        """
        return self._reader([], self._bodyOffset(), size)

    def _bodyOffset(self) -> int:
        """Where the body starts in the stored octets."""
        _, end, _ = self._headerSection()
        reader = self._reader([], end, 2)
        try:
            blank = b"".join(itertools.islice(reader, 2))[:2]
        finally:
            reader.close()
        return end + 2 if blank == b"\r\n" else end

    def bodyReplacement(self) -> BodyReplacement:
        """
        A new body, written piece by piece (in memory while small, then in
        its own temporary file) and swapped in by L{replaceBody}, or thrown
        away with L{BodyReplacement.discard}: until then the message is
        unchanged.
        """
        if not self._finished or self._freed:
            raise RuntimeError("replace the body of a complete message only")
        _, end, _ = self._headerSection()
        reader = self._reader([], 0)
        storage = Message(self._spillThreshold, self._tempDir)
        want = end
        try:
            for chunk in reader:
                if want <= 0:
                    break
                storage.write(chunk[:want])
                want -= len(chunk)
        finally:
            reader.close()
        storage.write(b"\r\n")
        return BodyReplacement(storage, end)

    def replaceBody(self, replacement: BodyReplacement) -> None:
        """
        Swap in the body written to C{replacement}.  Readers made before keep
        reading the old message whole (they hold their own descriptors);
        the old storage is freed now.  The owner calls it, before it hands
        the message on.

        @raise MessageClosed: the owner closed the message already.
        """
        if self._closing or self._freed:
            raise MessageClosed("the message was closed before its body was replaced")
        if not self._finished:
            raise RuntimeError("replace the body of a complete message only")
        storage = replacement._take()
        storage.finish()
        old = self._file
        self._pieces, self._file, self._bodySize = (
            storage._pieces,
            storage._file,
            storage._bodySize,
        )
        storage._pieces, storage._file = [], None
        storage._free()
        if old is not None:
            old.close()

    # -- ownership (the reactor thread only) ---------------------------------------

    def retain(self) -> Hold:
        """
        Keep the message readable until the returned L{Hold} is released,
        even if its owner closes it meanwhile.  Reactor thread only.

        @raise MessageClosed: its storage is already freed.
        """
        if self._freed:
            raise MessageClosed("the message was closed before it was retained")
        self._holds += 1
        return Hold(self._released)

    def _released(self) -> None:
        self._holds -= 1
        if not self._holds and self._closing:
            self._free()

    def close(self) -> None:
        """
        The owner is done with the message: its storage is freed now if
        nobody holds it, else when the last L{Hold} is released.  Calling it
        again is harmless.  Reactor thread only.
        """
        self._closing = True
        if not self._holds:
            self._free()

    @property
    def closing(self) -> bool:
        """True once L{close} was called (the storage may still be held)."""
        return self._closing

    @property
    def closed(self) -> bool:
        """True once the storage is freed: no new reader can be made."""
        return self._freed

    def _free(self) -> None:
        if self._freed:
            return
        self._freed = self._finished = True
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
        reader (threads may read at once), and takes what it reads now (see
        the module docstring): it reads this message whole even if the
        storage is freed meanwhile.  Close it (C{.close()}) if you stop early.

        @raise MessageClosed: the storage is already freed.
        """
        lead = [b"".join(self._prefix)]
        offset = 0
        if self._head is not None:
            offset, head = self._head
            lead.append(head)
        return self._reader(lead, offset, size)

    def _reader(self, lead: list[bytes], offset: int, size: int = _READ_SIZE) -> _Reader:
        """A reader of C{lead}, then the body from C{offset}."""
        if self._freed:
            raise MessageClosed("the message was closed")
        if self._file is None:
            for piece in self._pieces:
                if offset < len(piece):
                    lead.append(piece[offset:] if offset else piece)
                offset = max(0, offset - len(piece))
            return _Reader(lead)
        return _Reader(lead, os.dup(self._file.fileno()), offset, self._bodySize, size)

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
        reader = self.chunks()
        try:
            for chunk in reader:
                head += chunk
                end = head.find(b"\r\n\r\n")
                if end >= 0:
                    del head[end + 4 :]
                    break
                if len(head) > _MAX_HEADER_SECTION:
                    break
        finally:
            _closeReader(reader)
        return BytesHeaderParser(policy=_POLICY).parsebytes(bytes(head))


class BodyReplacement:
    """
    A body being written to replace a L{Message}'s (L{Message.bodyReplacement}):
    C{write} its octets (CRLF line endings, as stored), then give it to
    L{Message.replaceBody}, or L{discard} it.
    """

    __slots__ = ("_end", "_storage")

    def __init__(self, storage: Message, end: int) -> None:
        self._storage: Message | None = storage
        self._end = end

    @property
    def size(self) -> int:
        """Octets of the new body written so far."""
        storage = self._storage
        return storage._bodySize - self._end - 2 if storage is not None else 0

    def write(self, data: bytes) -> None:
        if self._storage is None:
            raise RuntimeError("this body replacement is used up")
        self._storage.write(data)

    def discard(self) -> None:
        """Throw it away (its temporary file is closed).  Harmless when used up."""
        storage, self._storage = self._storage, None
        if storage is not None:
            storage.close()

    def _take(self) -> Message:
        storage, self._storage = self._storage, None
        if storage is None:
            raise RuntimeError("this body replacement is used up")
        return storage


def _splitFields(head: bytes) -> list[bytes]:
    return [f for f in _FIELD_START_RE.split(head) if f]


_RAW_FIELD_RE = re.compile(rb"[\x21-\x39\x3b-\x7e]+:[^\r\n]*(?:\r\n[ \t][^\r\n]*)*\r\n\Z")


def _checkField(field: bytes) -> None:
    if not _RAW_FIELD_RE.match(field):
        raise ValueError(f"not a header field: {field[:60]!r}")


class _Reader:
    """
    One reader of a L{Message}: byte strings in memory (C{parts}), then,
    for a message on disk, C{end - offset} octets read with C{pread} from
    its own descriptor C{fd} (a duplicate, closed at the end, on L{close}
    or when the reader is collected).
    """

    __slots__ = ("_end", "_fd", "_offset", "_parts", "_size")

    def __init__(
        self, parts: list[bytes], fd: int = -1, offset: int = 0, end: int = 0, size: int = 0
    ) -> None:
        parts.reverse()
        self._parts = parts
        self._fd = fd
        self._offset = offset
        self._end = end
        self._size = size

    def __iter__(self) -> _Reader:
        return self

    def __next__(self) -> bytes:
        parts = self._parts
        while parts:
            part = parts.pop()
            if part:
                return part
        fd = self._fd
        if fd >= 0:
            want = min(self._size, self._end - self._offset)
            data = os.pread(fd, want, self._offset) if want > 0 else b""
            if data:
                self._offset += len(data)
                return data
            self.close()
        raise StopIteration

    def close(self) -> None:
        """Stop reading; the descriptor is closed."""
        self._parts = []
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def __del__(self) -> None:
        self.close()


def _closeReader(reader: Iterator[bytes]) -> None:
    close = getattr(reader, "close", None)
    if close is not None:
        close()


class _ChainReader(io.RawIOBase):
    """A read-only file over a L{Message} that lives on disk."""

    def __init__(self, message: Message) -> None:
        self._iter = message.chunks()
        self._pending = b""

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        if not self.closed:
            _closeReader(self._iter)
        super().close()

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
