"""
The Sender Rewriting Scheme (SRS, as libsrs2 and postsrsd write it): L{SRS}
makes the envelope sender of a forwarded copy an address of our own, so
that SPF checks at the next hop see a domain that authorises us, and
reverses it when a bounce comes back; L{SRSReverser} is the recipient
rewriter that does the reversing at RCPT time.

Forms (the separator after C{SRS0}/C{SRS1} may be C{=}, C{+} or C{-} when
read; C{=} is written)::

    alice@example.org
      -> SRS0=HHHH=TT=example.org=alice@srs.example.com
    SRS0=HHHH=TT=example.org=alice@forwarder.example     (already forwarded)
      -> SRS1=GGGG=forwarder.example==HHHH=TT=example.org=alice@srs.example.com

C{HHHH}: the first four characters of the base64 HMAC-SHA1, keyed with the
secret, of the lowercased fields (timestamp, domain, local part; for SRS1
the first forwarder's domain and the rest); C{TT}: the day, modulo 1024, in
two base32 characters.  Reversing checks the hash (without regard to case:
some MTAs lowercase addresses) against every secret, and that the
timestamp is at most C{maxAge} days old (21 by default): an SRS0 address
gives the original sender back, an SRS1 address the SRS0 address at the
first forwarder.  A forged or expired address is refused with C{550 5.1.1}
/ C{550 5.7.1}, so that nobody can use us as a relay through it.

Secrets: a file of one or more lines (blank lines and C{#} comments
ignored); the first signs, all verify, so a new secret goes first and the
old one stays until the addresses it signed have expired.

What is not rewritten (L{SRS.forward} answers None, and the caller says
why in its log): the null sender; an address whose SRS form would have a
local part longer than 64 octets (RFC 5321 4.5.3.1.1: the bounce could not
come back to us).  The queue leaves senders of its local domains alone (see
L{mailframe.queue.srs}).

Owns: the SRS forms, their hash and timestamp.  Must not: import
mailframe.server or the queue.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from mailframe.address import MAX_LOCAL_PART, Address, Domain
from mailframe.envelope import Envelope, Recipient, SessionInfo
from mailframe.interfaces import ILocalDomains, IRecipientRewriter, IRecipientValidator
from mailframe.reply import USER_UNKNOWN, Reply, SMTPError

__all__ = ["SRS", "SRSError", "SRSReverser", "isSRS", "readSecrets"]

log = Logger(namespace="mailframe.validators")

_BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_DAY = 86400
_SLOTS = 1024
_SEPARATORS = "=+-"


class SRSError(ValueError):
    """An SRS address that does not verify; C{reply} is the answer to its RCPT."""

    def __init__(self, message: str, reply: Reply) -> None:
        super().__init__(message)
        self.reply = reply


_FORGED = Reply(550, (5, 1, 1), "Invalid SRS address: it was not made here")
_EXPIRED = Reply(550, (5, 7, 1), "Expired SRS address")
_MALFORMED = Reply(550, (5, 1, 1), "Invalid SRS address")


def isSRS(localPart: str) -> bool:
    """True for a local part in an SRS form (C{SRS0=...}, C{SRS1+...})."""
    return len(localPart) > 5 and localPart[:4].upper() in ("SRS0", "SRS1") and (
        localPart[4] in _SEPARATORS
    )  # fmt: skip


def readSecrets(path: str) -> list[bytes]:
    """
    The secrets in the file C{path}, the signing one first.

    @raise ValueError: one line, for a file that cannot be read or has none.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ValueError(f"srs-secret {path}: {e.strerror or e}") from None
    secrets = [
        line.strip()
        for line in data.splitlines()
        if line.strip() and not line.strip().startswith(b"#")
    ]
    if not secrets:
        raise ValueError(f"srs-secret {path}: no secret in the file")
    if len(secrets[0]) < 16:
        raise ValueError(f"srs-secret {path}: the secret is shorter than 16 octets")
    return secrets


class SRS:
    """
    Rewrites and reverses SRS addresses of C{domain}.

    @param secrets: the keys, the signing one first (L{readSecrets}).
    @param maxAge: days an SRS address stays valid.
    """

    def __init__(
        self,
        secrets: Sequence[bytes],
        domain: str,
        maxAge: int = 21,
        hashLength: int = 4,
    ) -> None:
        if not secrets:
            raise ValueError("SRS needs a secret")
        self.secrets = tuple(secrets)
        self.domain = Domain.parse(domain.rstrip("."))
        self.maxAge = maxAge
        self.hashLength = hashLength

    def _hash(self, secret: bytes, *fields: str) -> str:
        mac = hmac.new(secret, digestmod=hashlib.sha1)
        for f in fields:
            mac.update(f.lower().encode("utf-8"))
        return base64.b64encode(mac.digest()).decode("ascii")[: self.hashLength]

    def _verify(self, given: str, *fields: str) -> bool:
        if len(given) != self.hashLength:
            return False
        given = given.lower()
        return any(
            hmac.compare_digest(self._hash(s, *fields).lower(), given) for s in self.secrets
        )

    @staticmethod
    def timestamp(now: float) -> str:
        """Today (of the clock C{now}) as two base32 characters."""
        day = int(now // _DAY) % _SLOTS
        return _BASE32[(day >> 5) & 31] + _BASE32[day & 31]

    def _fresh(self, stamp: str, now: float) -> bool:
        try:
            then = _BASE32.index(stamp[0].upper()) << 5 | _BASE32.index(stamp[1].upper())
        except (ValueError, IndexError):
            return False
        today = int(now // _DAY) % _SLOTS
        while today < then:
            today += _SLOTS
        return today - then <= self.maxAge

    def forward(self, sender: Address, now: float) -> Address | None:
        """
        The SRS form of C{sender} for a forwarded copy, or None when it
        cannot have one (the null sender, or a local part that would be
        longer than 64 octets).
        """
        if sender.isNull or sender.domain is None:
            return None
        local, host = sender.localPart, sender.domain.name
        secret = self.secrets[0]
        tag = local[:4].upper()
        if tag == "SRS0" and len(local) > 5 and local[4] in _SEPARATORS:
            rest = "=" + local[5:]
            srs = f"SRS1={self._hash(secret, host, rest)}={host}={rest}"
        elif tag == "SRS1" and len(local) > 5 and local[4] in _SEPARATORS:
            parts = local[5:].split("=", 2)
            if len(parts) == 3 and parts[1] and parts[2].startswith("="):
                first, rest = parts[1], parts[2]
                srs = f"SRS1={self._hash(secret, first, rest)}={first}={rest}"
            else:  # not really SRS1: treat it as any address
                srs = self._srs0(secret, local, host, now)
        else:
            srs = self._srs0(secret, local, host, now)
        if len(srs.encode("utf-8")) > MAX_LOCAL_PART:
            return None
        return Address(srs, self.domain)

    def _srs0(self, secret: bytes, local: str, host: str, now: float) -> str:
        stamp = self.timestamp(now)
        return f"SRS0={self._hash(secret, stamp, host, local)}={stamp}={host}={local}"

    def reverse(self, address: Address, now: float) -> Address:
        """
        The address an SRS address stands for.

        @raise SRSError: not an SRS address of ours, forged, or expired.
        """
        local = address.localPart
        if not isSRS(local):
            raise SRSError("not an SRS address", _MALFORMED)
        tag, body = local[:4].upper(), local[5:]
        if tag == "SRS0":
            parts = body.split("=", 3)
            if len(parts) != 4 or not all(parts):
                raise SRSError("malformed SRS0 address", _MALFORMED)
            given, stamp, host, user = parts
            if not self._verify(given, stamp, host, user):
                raise SRSError("the hash does not match", _FORGED)
            if not self._fresh(stamp, now):
                raise SRSError("the timestamp has expired", _EXPIRED)
            return _address(user, host)
        parts = body.split("=", 2)
        if len(parts) != 3 or not parts[0] or not parts[1] or not parts[2].startswith("="):
            raise SRSError("malformed SRS1 address", _MALFORMED)
        given, host, rest = parts
        if not self._verify(given, host, rest):
            raise SRSError("the hash does not match", _FORGED)
        return _address("SRS0" + rest, host)

    def __repr__(self) -> str:
        return f"SRS({self.domain.name!r})"


def _address(local: str, host: str) -> Address:
    try:
        return Address(local, Domain.parse(host))
    except ValueError:
        raise SRSError("malformed SRS address", _MALFORMED) from None


@implementer(IRecipientValidator, IRecipientRewriter, ILocalDomains)
class SRSReverser:
    """
    Sends bounces to SRS addresses of C{srs.domain} back to the sender they
    stand for (forwarded through the queue); refuses forged and expired
    ones.  The SRS domain is local (L{ILocalDomains}); when it is
    C{dedicated} (no other mail is for it), its other addresses are refused
    too, except postmaster.  No opinion as a validator.
    """

    def __init__(self, srs: SRS, clock: IReactorTime, dedicated: bool = False) -> None:
        self.srs = srs
        self.clock = clock
        self.dedicated = dedicated
        self.domains: tuple[str, ...] = (srs.domain.name,)

    def validateRecipient(
        self, session: SessionInfo, envelope: Envelope, recipient: Recipient
    ) -> None:
        return None

    def rewriteRecipient(
        self, session: SessionInfo, envelope: Envelope, recipient: Recipient
    ) -> list[Recipient] | None:
        address = recipient.address
        if address.domain != self.srs.domain:
            return None
        if not isSRS(address.localPart):
            if self.dedicated and not address.isPostmaster:
                raise SMTPError(USER_UNKNOWN)
            return None
        try:
            original = self.srs.reverse(address, self.clock.seconds())
        except SRSError as e:
            log.info(
                "{id} {address}: refused: {reason}",
                id=session.sessionID,
                address=address.toPath(),
                reason=str(e),
            )
            raise SMTPError(e.reply) from None
        return [Recipient(original)]

    def __repr__(self) -> str:
        return f"SRSReverser({self.srs.domain.name!r})"
