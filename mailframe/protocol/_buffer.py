"""
The receive buffer: command-line framing with a length limit, the DATA
reader (CRLF.CRLF only, dot-unstuffing, line and size limits, bare CR/LF
detection) and the BDAT reader.

Owns: every byte between the socket and the parser.  The DATA reader works
on whole chunks with C{bytes.find}, C{bytes.count} and C{bytes.replace}:
there is no per-line Python code on the hot path.  An error inside message
data never ends the data early: the reader discards to the real end, then
reports one error.  Must not: parse commands, know states, import twisted.
"""

from __future__ import annotations

import re

from mailframe import reply as R

__all__ = ["ChunkReader", "DotReader", "LineTooLong", "ReceiveBuffer"]

_TERMINATOR = b"\r\n.\r\n"
_BARE_RE = re.compile(rb"\r(?!\n)|(?<!\r)\n")


def _hasLongLine(piece: bytes, limit: int) -> bool:
    """
    True if a line of C{piece} (which ends with CRLF) has more than C{limit}
    octets before its CRLF.  The piece is probed in blocks of C{limit // 2}
    with C{bytes.find}: a line that long must hold a whole block with no LF,
    and only such blocks are measured.  The work is a few C calls per KiB,
    never per line in Python (splitting the piece into lines costs twice as
    much, even for a 1 KiB message).
    """
    n = len(piece)
    step = max(limit // 2, 1)
    find = piece.find
    pos = 0
    while pos + step <= n:
        if find(b"\n", pos, pos + step) >= 0:
            pos += step
            continue
        start = piece.rfind(b"\n", 0, pos) + 1
        end = find(b"\n", pos + step)
        if end < 0:
            end = n
        length = end - start - (1 if piece[end - 1 : end] == b"\r" else 0)
        if length > limit:
            return True
        pos = end + 1
    return False


class LineTooLong(Exception):
    """A command line went past its limit; it has been discarded."""


class ReceiveBuffer:
    """Bytes received and not yet consumed."""

    __slots__ = ("_discardingLine", "data")

    def __init__(self) -> None:
        self.data = bytearray()
        self._discardingLine = False

    def feed(self, data: bytes) -> None:
        self.data += data

    def clear(self) -> None:
        """Forget everything buffered (after STARTTLS, RFC 3207 4.2)."""
        del self.data[:]
        self._discardingLine = False

    def __len__(self) -> int:
        return len(self.data)

    def readLine(self, limit: int) -> bytes | None:
        """
        The next line without its CRLF (a bare LF is accepted as the end of a
        command line), or None if no full line is buffered.  A line longer
        than C{limit} octets (CRLF included) is discarded whole, and
        L{LineTooLong} is raised once its end arrives.
        """
        buf = self.data
        i = buf.find(b"\n")
        if i < 0:
            if len(buf) > limit:
                self._discardingLine = True
                keep = buf[-1:] if buf.endswith(b"\r") else b""
                del buf[:]
                buf += keep
            return None
        # the CRLF left out before the copy: one copy of the line, not two
        line = bytes(buf[: i - 1] if i and buf[i - 1] == 13 else buf[:i])
        del buf[: i + 1]
        if self._discardingLine or i + 1 > limit:
            self._discardingLine = False
            raise LineTooLong()
        return line


class _MessageChecks:
    """Size accounting and the error found first, shared by both readers."""

    __slots__ = ("error", "maxSize", "size")

    def __init__(self, maxSize: int) -> None:
        self.maxSize = maxSize
        self.size = 0
        self.error: R.Reply | None = None

    def count(self, n: int) -> bool:
        self.size += n
        if self.maxSize and self.size > self.maxSize:
            self.error = R.MESSAGE_TOO_BIG
            return False
        return True


class DotReader:
    """
    Reads message data after DATA until CRLF.CRLF.

    C{read(buffer)} returns C{(pieces, done)}; each piece is unstuffed and ends
    at a line boundary.  After C{done}, C{error} is None or the reply for a
    message that broke a rule (too big, a line too long, a bare CR or LF).
    """

    __slots__ = ("_atLineStart", "_checks", "_discarding", "_lineLimit", "_normalise")

    def __init__(self, maxSize: int, lineLimit: int, normaliseBareLineEndings: bool) -> None:
        self._checks = _MessageChecks(maxSize)
        self._lineLimit = lineLimit
        self._normalise = normaliseBareLineEndings
        self._atLineStart = True
        self._discarding = False

    @property
    def size(self) -> int:
        return self._checks.size

    @property
    def error(self) -> R.Reply | None:
        return self._checks.error

    def _fail(self, reply: R.Reply) -> None:
        if self._checks.error is None:
            self._checks.error = reply
        self._discarding = True

    def read(self, buffer: ReceiveBuffer) -> tuple[list[bytes], bool]:
        buf = buffer.data
        if self._atLineStart and buf[:3] == b".\r\n":
            del buf[:3]
            return [], True
        end = buf.find(_TERMINATOR)
        if end >= 0:
            piece = bytes(buf[: end + 2])
            del buf[: end + 5]
            done = True
        else:
            done = False
            last = buf.rfind(b"\r\n")
            if last >= 0:
                piece = bytes(buf[: last + 2])
                del buf[: last + 2]
                self._atLineStart = True
            else:
                piece = b""
            # what stays buffered is part of one line: bounded by the limit
            if len(buf) > self._lineLimit:
                self._fail(R.DATA_LINE_TOO_LONG)
                keep = 1 if buf.endswith(b"\r") else 0
                del buf[: len(buf) - keep]
                self._atLineStart = False
        if piece and not self._discarding:
            checked = self._check(piece)
            if checked:
                return [checked], done
        return [], done

    def _check(self, piece: bytes) -> bytes | None:
        """Limits, unstuffing and bare line endings for a run of whole lines."""
        if piece[:1] == b".":
            piece = piece[1:]
        piece = piece.replace(b"\r\n.", b"\r\n")
        # RFC 5321 4.5.3.1.6: 1000 octets with CRLF, the stuffed dot not counted
        if len(piece) > self._lineLimit - 2 and _hasLongLine(piece, self._lineLimit - 2):
            self._fail(R.DATA_LINE_TOO_LONG)
            return None
        # a bare CR or LF is one left once every CRLF is taken out (cheaper
        # than counting CRLF, CR and LF: one pass for CRLF, then memchr)
        rest = piece.replace(b"\r\n", b"")
        if b"\r" in rest or b"\n" in rest:
            if not self._normalise:
                self._fail(R.BARE_LINE_ENDING)
                return None
            piece = _BARE_RE.sub(b"\r\n", piece)
        if not self._checks.count(len(piece)):
            self._discarding = True
            return None
        return piece


class ChunkReader:
    """
    Reads one BDAT chunk of exactly C{size} octets.  C{checks} carries the
    size count across the chunks of one message; with C{discard} the octets
    are read and dropped (a BDAT that will be refused must still be consumed,
    RFC 3030 2).  Bare CR/LF are refused unless C{binary} (BODY=BINARYMIME),
    or made CRLF with C{normaliseBareLineEndings}.

    A CR at the end of a piece is passed on as it is and remembered
    (C{prevCR}, carried to the next chunk by C{endsWithCR}): the next piece
    decides whether it was the start of a CRLF or a bare CR.  At the end of
    the C{last} chunk nothing can complete it: it is bare.
    """

    __slots__ = (
        "_binary",
        "_checks",
        "_discard",
        "_last",
        "_normalise",
        "_prevCR",
        "remaining",
        "size",
    )

    def __init__(
        self,
        size: int,
        checks: _MessageChecks | None,
        discard: bool = False,
        binary: bool = True,
        normaliseBareLineEndings: bool = False,
        prevCR: bool = False,
        last: bool = False,
    ) -> None:
        self.remaining = size
        self.size = size
        self._checks = checks if checks is not None else _MessageChecks(0)
        self._discard = discard or self._checks.error is not None
        self._binary = binary
        self._normalise = normaliseBareLineEndings
        self._prevCR = prevCR
        self._last = last

    @property
    def checks(self) -> _MessageChecks:
        return self._checks

    @property
    def endsWithCR(self) -> bool:
        """The data so far ends with a CR that the next chunk may complete."""
        return self._prevCR

    def read(self, buffer: ReceiveBuffer) -> tuple[list[bytes], bool]:
        buf = buffer.data
        n = min(len(buf), self.remaining)
        if n == 0 and (self.remaining or not self._last):
            return [], self.remaining == 0
        piece = bytes(buf[:n])
        del buf[:n]
        self.remaining -= n
        done = self.remaining == 0
        if self._discard:
            return [], done
        if not self._binary:
            checked = self._lineEndings(piece, done and self._last)
            if checked is None:
                return [], done
            piece = checked
        if not self._checks.count(len(piece)):
            self._discard = True
            return [], done
        return [piece], done

    def _lineEndings(self, piece: bytes, end: bool) -> bytes | None:
        """
        C{piece} checked (or normalised) for bare CR and LF; C{end} if it
        ends the message.  Empty only at the end of the message.
        """
        prevCR = self._prevCR
        # the CR that ended the last piece and the LF that starts this one
        joined = prevCR and piece[:1] == b"\n"
        crlf = piece.count(b"\r\n") + joined
        # a CR at the very end may be completed by the next piece, if any
        trailingCR = piece[-1:] == b"\r" and not end
        self._prevCR = trailingCR
        # every CR but a trailing one (the last piece's included) must start
        # a CRLF, and every LF end one
        if piece.count(b"\r") + prevCR - trailingCR == crlf and piece.count(b"\n") == crlf:
            return piece
        if not self._normalise:
            self._checks.error = self._checks.error or R.BARE_LINE_ENDING
            self._discard = True
            return None
        # the CR of the last piece went out as it was: complete it with an LF,
        # this piece's own (joined) or a new one (it was bare)
        head = b"\n" if prevCR else b""
        body = piece[1:] if joined else piece
        if trailingCR:
            return head + _BARE_RE.sub(b"\r\n", body[:-1]) + b"\r"
        return head + _BARE_RE.sub(b"\r\n", body)
