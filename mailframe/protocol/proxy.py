"""
The PROXY protocol header (HAProxy's, versions 1 and 2), sans I/O: the
first bytes a load balancer sends on a connection, naming the client it
accepted the connection from.

Owns: the syntax of the header.  L{ProxyHeaderReader} buffers bytes until a
whole header has arrived and returns it with the bytes that followed.
Must not: decide whom to believe (the server glue checks that the header
comes from a trusted proxy), import twisted or zope.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

__all__ = ["V2_SIGNATURE", "ProxyHeader", "ProxyHeaderError", "ProxyHeaderReader"]

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_V1_PREFIX = b"PROXY "
_V1_MAX = 107  # the longest v1 line, CRLF included (the specification, 2.1)
_V2_MAX = 16 + 4096  # the fixed part and a bound on addresses and TLVs


class ProxyHeaderError(Exception):
    """The bytes are not a PROXY header (or not one we accept)."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """
    A parsed header.  C{source} and C{destination} are (host, port) pairs,
    or None when the proxy sent none: a v1 C{UNKNOWN}, a v2 C{LOCAL}
    command (the proxy's own health check), or an address family other
    than TCP over IPv4 or IPv6.
    """

    version: int
    source: tuple[str, int] | None
    destination: tuple[str, int] | None


class ProxyHeaderReader:
    """
    Feed bytes with L{feed} until it returns C{(header, rest)}; raises
    L{ProxyHeaderError} as soon as the bytes cannot start a valid header.
    """

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> tuple[ProxyHeader, bytes] | None:
        buf = self._buffer = self._buffer + data
        if buf[:1] == b"\r":
            if not V2_SIGNATURE.startswith(buf[:12]):
                raise ProxyHeaderError("not a PROXY header")
            if len(buf) < 16:
                return None
            (length,) = struct.unpack_from("!H", buf, 14)
            if 16 + length > _V2_MAX:
                raise ProxyHeaderError("PROXY v2 header too long")
            if len(buf) < 16 + length:
                return None
            return _v2(buf[12], buf[13], buf[16 : 16 + length]), buf[16 + length :]
        if not _V1_PREFIX.startswith(buf[:6]):
            raise ProxyHeaderError("not a PROXY header")
        end = buf.find(b"\r\n")
        if end < 0:
            if len(buf) >= _V1_MAX:
                raise ProxyHeaderError("PROXY v1 header too long")
            return None
        if end + 2 > _V1_MAX:
            raise ProxyHeaderError("PROXY v1 header too long")
        return _v1(buf[:end]), buf[end + 2 :]


def _v1(line: bytes) -> ProxyHeader:
    try:
        words = line.decode("ascii").split(" ")
    except UnicodeDecodeError:
        raise ProxyHeaderError("PROXY v1 header is not ASCII") from None
    if len(words) >= 2 and words[1] == "UNKNOWN":
        return ProxyHeader(1, None, None)
    if len(words) != 6 or words[1] not in ("TCP4", "TCP6"):
        raise ProxyHeaderError("bad PROXY v1 header")
    version = 4 if words[1] == "TCP4" else 6
    source = (_address(words[2], version), _port(words[4]))
    destination = (_address(words[3], version), _port(words[5]))
    return ProxyHeader(1, source, destination)


def _address(text: str, version: int) -> str:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ProxyHeaderError(f"bad address in PROXY header: {text[:50]!r}") from None
    if address.version != version:
        raise ProxyHeaderError("PROXY header address of the wrong family")
    return str(address)


def _port(text: str) -> int:
    if not text.isdigit() or not text.isascii() or len(text) > 5 or int(text) > 65535:
        raise ProxyHeaderError(f"bad port in PROXY header: {text[:10]!r}")
    if len(text) > 1 and text[0] == "0":
        raise ProxyHeaderError("PROXY v1 port with a leading zero")
    return int(text)


def _v2(versionCommand: int, family: int, body: bytes) -> ProxyHeader:
    if versionCommand >> 4 != 2:
        raise ProxyHeaderError("PROXY header of an unknown version")
    command = versionCommand & 0x0F
    if command == 0:  # LOCAL: the proxy's own connection
        return ProxyHeader(2, None, None)
    if command != 1:
        raise ProxyHeaderError("PROXY v2 header with an unknown command")
    transport, kind = family >> 4, family & 0x0F
    if kind != 1:  # not STREAM (UNSPEC, or DGRAM): no usable address
        return ProxyHeader(2, None, None)
    make: type[ipaddress.IPv4Address | ipaddress.IPv6Address]
    if transport == 1:  # AF_INET
        size, make = 4, ipaddress.IPv4Address
    elif transport == 2:  # AF_INET6
        size, make = 16, ipaddress.IPv6Address
    else:  # AF_UNSPEC or AF_UNIX
        return ProxyHeader(2, None, None)
    if len(body) < 2 * size + 4:
        raise ProxyHeaderError("PROXY v2 addresses too short")
    src, dst = make(body[:size]), make(body[size : 2 * size])
    sport, dport = struct.unpack_from("!HH", body, 2 * size)
    return ProxyHeader(2, (str(src), sport), (str(dst), dport))
