"""
The simplest recipient validators: L{AnyRecipient} (accept everyone) and
L{DomainsValidator} (accept any address of some domains, and make them local).

Owns: these two policies.  Must not: import mailframe.server; look at
anything but the recipient's domain; do I/O.
"""

from __future__ import annotations

from collections.abc import Iterable

from zope.interface import implementer

from mailframe.address import AddressError, Domain
from mailframe.envelope import Envelope, Recipient, SessionInfo
from mailframe.interfaces import ILocalDomains, IRecipientValidator
from mailframe.reply import RECIPIENT_OK, Reply

__all__ = ["AnyRecipient", "DomainsValidator"]


@implementer(IRecipientValidator)
class AnyRecipient:
    """
    Accepts every recipient that reaches it.  The server has already refused
    the domains that are not local, so this means "any user of my domains".
    """

    def validateRecipient(
        self, session: SessionInfo, envelope: Envelope, recipient: Recipient
    ) -> Reply:
        return RECIPIENT_OK


@implementer(IRecipientValidator, ILocalDomains)
class DomainsValidator:
    """
    Accepts any address of C{domains} (compared case-insensitively, by IDNA
    A-label) and has no opinion on the others.  Also makes those domains
    local (L{ILocalDomains}).

    @raise ValueError: if a name is not a domain, or there are none.
    """

    def __init__(self, domains: Iterable[str]) -> None:
        parsed: dict[Domain, None] = {}
        for name in domains:
            try:
                parsed[Domain.parse(name.strip().rstrip("."))] = None
            except AddressError:
                raise ValueError(f"not a domain: {name!r}") from None
        if not parsed:
            raise ValueError("DomainsValidator needs at least one domain")
        self._domains = frozenset(parsed)
        self.domains: tuple[str, ...] = tuple(d.name for d in parsed)

    def validateRecipient(
        self, session: SessionInfo, envelope: Envelope, recipient: Recipient
    ) -> Reply | None:
        domain = recipient.address.domain
        if domain is not None and domain in self._domains:
            return RECIPIENT_OK
        return None

    def __repr__(self) -> str:
        return f"DomainsValidator({list(self.domains)!r})"
