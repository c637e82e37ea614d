"""
Bytes for the wire that the core writes besides replies: dot-stuffing of
message data and client command lines.

Owns: the inverse of what _buffer reads.  Reply encoding lives with the
value type in L{mailframe.reply}.  Must not: import twisted or zope.
"""

from __future__ import annotations

__all__ = ["dotStuff", "formatCommand"]


def dotStuff(data: bytes, atLineStart: bool = True) -> bytes:
    """
    Double every period that starts a line (RFC 5321 4.5.2).  C{data} must
    end at a line boundary or C{atLineStart} must say where the next piece
    starts; bulk C{bytes.replace}, no per-line work.
    """
    data = data.replace(b"\r\n.", b"\r\n..")
    if atLineStart and data[:1] == b".":
        data = b"." + data
    return data


def formatCommand(verb: str, argument: str = "") -> bytes:
    """One command line with its CRLF; refuses CR or LF in the argument."""
    if "\r" in argument or "\n" in argument or "\r" in verb or "\n" in verb:
        raise ValueError("a command may not contain CR or LF")
    line = f"{verb} {argument}" if argument else verb
    return line.encode("utf-8") + b"\r\n"
