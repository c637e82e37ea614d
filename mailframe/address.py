"""
Mail addresses: L{Domain}, L{Address} and the RFC 5321 / RFC 6531 mailbox
syntax (dot-string and quoted local parts, domains with U-labels, address
literals).

Owns: the value types every plug point sees and the grammar of a mailbox.
Must not: import twisted, zope or mailframe.protocol (which imports this); know
about SMTP commands, angle brackets or ESMTP parameters (that is
mailframe.protocol._parse).
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import re
from dataclasses import dataclass, field

__all__ = ["Address", "AddressError", "Domain", "asciiUpper", "parseMailbox"]


def asciiUpper(text: str) -> str:
    """
    C{text} in upper case if it is ASCII, else unchanged.  Protocol keywords
    and parameter values are ASCII and compared as ASCII only: Unicode case
    mapping would make C{"8bitm\u0131me"} (a dotless i) equal C{"8BITMIME"}.
    """
    return text.upper() if text.isascii() else text


# RFC 5321 4.1.2 with the RFC 6531 3.3 additions (UTF8-non-ascii).
_UTF8 = "\u0080-\U0010ffff"
_ATEXT = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~\-" + _UTF8
_DOT_STRING = rf"[{_ATEXT}]+(?:\.[{_ATEXT}]+)*"
_QTEXT = r"\x20\x21\x23-\x5b\x5d-\x7e" + _UTF8
_QUOTED = rf'"(?:[{_QTEXT}]|\\[\x20-\x7e])*"'
_LETDIG = "A-Za-z0-9" + _UTF8
_LABEL = rf"[{_LETDIG}](?:[{_LETDIG}\-]*[{_LETDIG}])?"
_DOMAIN = rf"{_LABEL}(?:\.{_LABEL})*"
_LITERAL = r"\[[\x21-\x5a\x5e-\x7e]+\]"

_MAILBOX_RE = re.compile(rf"({_DOT_STRING}|{_QUOTED})@({_DOMAIN}|{_LITERAL})\Z")
_DOT_STRING_RE = re.compile(rf"{_DOT_STRING}\Z")
_DOMAIN_RE = re.compile(rf"(?:{_DOMAIN}|{_LITERAL})\Z")
_UNQUOTE_RE = re.compile(r"\\(.)")
_QUOTE_RE = re.compile(r'(["\\])')
_GENERAL_TAG_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?\Z")

MAX_LOCAL_PART = 64
MAX_DOMAIN = 255


class AddressError(ValueError):
    """
    A mailbox that does not parse.  C{part} names what is wrong: C{"syntax"},
    C{"local-part-length"} or C{"domain-length"}.
    """

    def __init__(self, message: str, part: str = "syntax") -> None:
        super().__init__(message)
        self.part = part


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: never from the wire
        return False
    return True


def _utf8len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))


@dataclass(frozen=True, slots=True, eq=False)
class Domain:
    """
    A domain name or address literal, compared case-insensitively and, for
    internationalised names, by its IDNA A-label form.

    @ivar key: the form used for comparison: lowercase A-labels, or the literal.
    """

    name: str
    # the form used for comparison: lowercase A-labels, or the literal (a
    # field, not a property: RCPT reads it for every recipient)
    key: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        name = self.name.rstrip(".") if not self.name.startswith("[") else self.name
        object.__setattr__(self, "name", name)
        key = name.lower()
        if not key.isascii() and not self.isLiteral:
            with contextlib.suppress(ValueError):  # else compared by its lowercase form
                key = _toASCII(name)
        object.__setattr__(self, "key", key)

    @classmethod
    def parse(cls, text: str) -> Domain:
        """Parse a domain or address literal, raising L{AddressError}."""
        if _utf8len(text) > MAX_DOMAIN:
            raise AddressError("domain longer than 255 octets", "domain-length")
        if not _DOMAIN_RE.match(text):
            raise AddressError(f"not a domain: {text!r}")
        if text.startswith("["):
            _checkLiteral(text)
        return cls(text)

    @property
    def isLiteral(self) -> bool:
        """True for an address literal such as C{[192.0.2.1]}."""
        return self.name.startswith("[")

    @property
    def isUTF8(self) -> bool:
        """True if the name is written with non-ASCII characters (U-labels)."""
        return not self.name.isascii()

    @property
    def ascii(self) -> str:
        """The A-label (ASCII) form; raises ValueError if IDNA refuses it."""
        if self.isLiteral or self.name.isascii():
            return self.name
        return _toASCII(self.name)

    @property
    def unicode(self) -> str:
        """The U-label form, for display."""
        if self.isLiteral or "xn--" not in self.name.lower():
            return self.name
        try:
            return self.name.encode("ascii").decode("idna")
        except UnicodeError:
            return self.name

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Domain):
            return self.key == other.key
        if isinstance(other, str):
            return self.key == Domain(other).key
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.key)

    def __str__(self) -> str:
        return self.name


def _toASCII(name: str) -> str:
    try:
        import idna  # IDNA 2008, when installed (it comes with twisted)
    except ImportError:  # pragma: no cover - stdlib IDNA 2003 fallback
        return name.encode("idna").decode("ascii").lower()
    try:
        return idna.encode(name, uts46=True).decode("ascii").lower()
    except idna.IDNAError as e:
        raise ValueError(str(e)) from None


def _checkLiteral(text: str) -> None:
    inner = text[1:-1]
    if inner[:5].lower() == "ipv6:":
        try:
            ipaddress.IPv6Address(inner[5:])
        except ValueError:
            raise AddressError(f"bad IPv6 address literal: {text!r}") from None
        return
    if inner[:1].isdigit():
        try:
            ipaddress.IPv4Address(inner)
        except ValueError:
            raise AddressError(f"bad IPv4 address literal: {text!r}") from None
        return
    tag, colon, content = inner.partition(":")
    if not colon or not content or not _GENERAL_TAG_RE.match(tag):
        raise AddressError(f"bad address literal: {text!r}")


@dataclass(frozen=True, slots=True)
class Address:
    """
    A mailbox (RFC 5321 Mailbox) or the null reverse-path.

    C{localPart} is the semantic local part: quotes and backslashes of a
    quoted string are removed, and L{__str__} puts them back when needed, so
    C{parseMailbox(str(a)) == a}.  C{domain} is None for the null path C{<>}
    and for the bare C{<Postmaster>} recipient.
    """

    localPart: str
    domain: Domain | None
    _text: str = field(init=False, default="", compare=False, repr=False)  # str(), made once

    @classmethod
    def null(cls) -> Address:
        """The null reverse-path C{<>} (bounces and other notifications)."""
        return _NULL

    @property
    def isNull(self) -> bool:
        """True for the null reverse-path."""
        return self.domain is None and not self.localPart

    @property
    def isPostmaster(self) -> bool:
        """True for postmaster, at any domain or none (case-insensitive)."""
        return self.localPart.lower() == "postmaster"

    @property
    def isUTF8(self) -> bool:
        """True if the local part or the domain has non-ASCII characters."""
        return not self.localPart.isascii() or (self.domain is not None and self.domain.isUTF8)

    @property
    def quotedLocalPart(self) -> str:
        """The local part as written in a path: dot-string or quoted string."""
        return _quoteLocalPart(self.localPart)

    def __str__(self) -> str:
        text = self._text
        if not text:
            if self.domain is None:
                return _quoteLocalPart(self.localPart) if self.localPart else ""
            text = f"{_quoteLocalPart(self.localPart)}@{self.domain.name}"
            object.__setattr__(self, "_text", text)  # addresses are shared: made once
        return text

    def toPath(self) -> str:
        """The address between angle brackets, as in MAIL FROM and RCPT TO."""
        return f"<{self}>"


_NULL = Address("", None)


@functools.lru_cache(maxsize=1024)
def _quoteLocalPart(localPart: str) -> str:
    if _DOT_STRING_RE.match(localPart):
        return localPart
    return '"' + _QUOTE_RE.sub(r"\\\1", localPart) + '"'


def parseMailbox(text: str) -> Address:
    """
    Parse an RFC 5321 Mailbox (C{local@domain}; RFC 6531 UTF-8 allowed),
    raising L{AddressError}.  Length limits: 64 octets of local part, 255 of
    domain (RFC 5321 4.5.3.1).
    """
    m = _MAILBOX_RE.match(text)
    ascii = text.isascii()
    if m is None or (not ascii and not _encodable(text)):
        raise AddressError(f"not a mailbox: {text!r}")
    local, domain = m.group(1, 2)
    if (len(local) if ascii else _utf8len(local)) > MAX_LOCAL_PART:
        raise AddressError("local part longer than 64 octets", "local-part-length")
    if (len(domain) if ascii else _utf8len(domain)) > MAX_DOMAIN:
        raise AddressError("domain longer than 255 octets", "domain-length")
    if local[:1] == '"':
        local = _UNQUOTE_RE.sub(r"\1", local[1:-1])
    if domain[:1] == "[":
        _checkLiteral(domain)
    return Address(local, _domain(domain))


@functools.lru_cache(maxsize=4096)
def _domain(name: str) -> Domain:
    """Domains are immutable: the ones seen again are shared, not rebuilt."""
    return Domain(name)
