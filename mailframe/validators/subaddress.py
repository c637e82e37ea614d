"""
Subaddressing (RFC 5233): C{user+tag@domain} is delivered to
C{user@domain}, with the tag kept as the recipient's C{detail}.

L{splitDetail} is the one rule, shared with the alias and virtual maps
(which look a local part up whole first, then without its detail): the
local part is split at the first separator character; nothing is split
when the part before it would be empty, and, when C{-} is a separator,
C{owner-NAME} and C{NAME-request} are not split (Postfix's
owner_request_special).

L{Subaddress} is the rewriter: the last of the pipeline, it takes the
detail off every local address that still has one, so that the
validators and the delivery backend see C{user}.

Owns: the splitting rule.  Must not: import mailframe.server; do I/O.
"""

from __future__ import annotations

from zope.interface import implementer

from mailframe.address import Address
from mailframe.envelope import Envelope, Recipient, SessionInfo
from mailframe.interfaces import IRecipientRewriter, IRecipientValidator

__all__ = ["Subaddress", "checkSeparators", "splitDetail"]


def checkSeparators(separators: str) -> str:
    """
    C{separators}, checked: one or more characters, each printable ASCII
    other than C{@}, quotes, backslash and space.

    @raise ValueError: one line.
    """
    if not separators:
        raise ValueError("expected one or more separator characters, such as +")
    for c in separators:
        if not ("!" <= c <= "~") or c in '@"\\.':
            raise ValueError(f"{c!r} cannot separate a subaddress")
    return separators


def splitDetail(localPart: str, separators: str) -> tuple[str, str] | None:
    """
    C{(user, detail)} for a local part with a subaddress, else None.

    >>> splitDetail("bob+lists", "+")
    ('bob', 'lists')
    """
    if not separators:
        return None
    at = -1
    for c in separators:
        i = localPart.find(c)
        if i > 0 and (at < 0 or i < at):
            at = i
    if at < 0:
        return None
    if "-" in separators:
        lower = localPart.lower()
        if lower.startswith("owner-") or lower.endswith("-request"):
            return None
    return localPart[:at], localPart[at + 1 :]


@implementer(IRecipientValidator, IRecipientRewriter)
class Subaddress:
    """
    Takes the subaddress off a local recipient (C{user+tag} -> C{user},
    detail C{tag}); no opinion as a validator.

    @param separators: the characters that start a subaddress (C{"+"}, or
        C{"+-"} for either).
    @raise ValueError: for unusable separators.
    """

    def __init__(self, separators: str = "+") -> None:
        self.separators = checkSeparators(separators)

    def validateRecipient(
        self, session: SessionInfo, envelope: Envelope, recipient: Recipient
    ) -> None:
        return None

    def rewriteRecipient(
        self, session: SessionInfo, envelope: Envelope, recipient: Recipient
    ) -> list[Recipient] | None:
        address = recipient.address
        split = splitDetail(address.localPart, self.separators)
        if split is None:
            return None
        user, detail = split
        return [Recipient(Address(user, address.domain), detail=detail)]

    def __repr__(self) -> str:
        return f"Subaddress({self.separators!r})"
