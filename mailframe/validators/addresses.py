"""
L{AddressListValidator}: accepts the recipients listed in a text file, one
address per line, and re-reads the file when it changes.

File format: UTF-8, one mailbox (C{local@domain}, RFC 5321 / RFC 6531
syntax) per line; blank lines and lines starting with C{#} are ignored, and
so is a C{#} comment after whitespace at the end of a line.  Addresses are
compared case-insensitively on the local part and by domain key (case and
IDNA form do not matter).

Reloading: on a recipient check, at most once per second of the passed
clock, the file is stat'ed; if it changed it is read again.  If it has gone
or no longer parses, the last good list stays in force and a warning is
logged (once per distinct problem).  The stat and the read are blocking
calls in the reactor thread, which is acceptable for a small local file.

Owns: the address-list format and its reloading.  Must not: import
mailframe.server; read the file more than once per change, or stat it more
than once per second.
"""

from __future__ import annotations

import os
import re

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from mailframe.address import Address, AddressError, parseMailbox
from mailframe.envelope import Envelope, Recipient, SessionInfo
from mailframe.interfaces import IRecipientValidator
from mailframe.reply import RECIPIENT_OK, Reply

__all__ = ["CHECK_INTERVAL", "AddressListValidator", "addressKey", "parseAddressList"]

log = Logger(namespace="mailframe.validators")

CHECK_INTERVAL = 1.0
"""Seconds between two stats of the file."""

_TRAILING_COMMENT_RE = re.compile(r"\s+#.*\Z", re.DOTALL)
_MAX_ERRORS = 5

_Key = tuple[str, str]
_Signature = tuple[int, int, int, int, int]


def addressKey(address: Address) -> _Key:
    """What two addresses that are the same recipient have in common."""
    domain = address.domain.key if address.domain is not None else ""
    return (address.localPart.lower(), domain)


def _parseLine(line: str) -> Address | None:
    try:
        return parseMailbox(line)
    except AddressError:
        pass
    stripped = _TRAILING_COMMENT_RE.sub("", line)
    if stripped != line:
        try:
            return parseMailbox(stripped)
        except AddressError:
            pass
    return None


def parseAddressList(data: bytes, name: str = "address list") -> frozenset[_Key]:
    """
    The keys of the addresses in C{data} (the file's contents).

    @raise ValueError: naming C{name} and the line number of each bad line.
    """
    keys: set[_Key] = set()
    errors: list[str] = []
    for number, raw in enumerate(data.split(b"\n"), 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            errors.append(f"line {number}: not UTF-8")
            continue
        line = line.strip().lstrip("\ufeff") if number == 1 else line.strip()
        if not line or line.startswith("#"):
            continue
        address = _parseLine(line)
        if address is None:
            errors.append(f"line {number}: not an address: {line[:80]!r}")
            continue
        keys.add(addressKey(address))
    if errors:
        more = len(errors) - _MAX_ERRORS
        shown = errors[:_MAX_ERRORS] + ([f"and {more} more"] if more > 0 else [])
        raise ValueError(f"{name}: " + "; ".join(shown))
    return frozenset(keys)


def _signature(path: str) -> _Signature:
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _read(path: str) -> tuple[_Signature, frozenset[_Key]]:
    """Stat, read and parse; the signature is the one before the read."""
    signature = _signature(path)
    with open(path, "rb") as f:
        data = f.read()
    return signature, parseAddressList(data, path)


@implementer(IRecipientValidator)
class AddressListValidator:
    """
    Accepts the addresses listed in the file C{path}; no opinion on others.

    @param clock: times the checks for changes (C{seconds()}).
    @param path: the address list.
    @raise ValueError: if the file cannot be read or has bad lines (with
        their line numbers).
    """

    def __init__(self, clock: IReactorTime, path: str) -> None:
        self.clock = clock
        self.path = path
        try:
            signature, addresses = _read(path)
        except OSError as e:
            raise ValueError(f"address list {path}: {e.strerror or e}") from None
        self._addresses = addresses
        self._seen: _Signature | None = signature
        self._lastCheck = clock.seconds()
        self._problem: str | None = None

    def __len__(self) -> int:
        return len(self._addresses)

    def __contains__(self, address: Address) -> bool:
        return addressKey(address) in self._addresses

    def validateRecipient(
        self, session: SessionInfo, envelope: Envelope, recipient: Recipient
    ) -> Reply | None:
        self.checkForChanges()
        if addressKey(recipient.address) in self._addresses:
            return RECIPIENT_OK
        return None

    def checkForChanges(self) -> None:
        """Re-read the file if it changed, at most once per second."""
        now = self.clock.seconds()
        if 0 <= now - self._lastCheck < CHECK_INTERVAL:
            return
        self._lastCheck = now
        try:
            signature = _signature(self.path)
            if signature == self._seen:
                return
            with open(self.path, "rb") as f:
                data = f.read()
            if _signature(self.path) != signature:
                return  # written while we read: read it again at the next check
        except OSError as e:
            self._seen = None
            self._warn(f"{self.path}: {e.strerror or e}")
            return
        self._seen = signature
        try:
            addresses = parseAddressList(data, self.path)
        except ValueError as e:
            self._warn(str(e))
            return
        self._addresses = addresses
        self._problem = None
        log.info("{path}: loaded {count} addresses", path=self.path, count=len(addresses))

    def _warn(self, problem: str) -> None:
        if problem != self._problem:
            self._problem = problem
            log.warn(
                "address list not reloaded, keeping the last good one: {problem}",
                problem=problem,
            )
