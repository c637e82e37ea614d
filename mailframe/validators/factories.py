"""
The plug-in factories of the built-in recipient validators, chosen with
C{--validate}: C{any}, C{domains}, C{addresses}.

Must not: import a validator's module at import time; providers are built
in C{build}.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from mailframe.interfaces import IRecipientValidator
from mailframe.plugins import PlugInFactory, splitItems

if TYPE_CHECKING:
    from mailframe.config import ProviderContext

__all__ = ["VALIDATOR_FACTORIES", "addressesValidator", "anyValidator", "domainsValidator"]


class _Any(PlugInFactory):
    prefix = "any"
    provides = IRecipientValidator
    description = "Accept every recipient of a local domain."

    def checkArguments(self, *args: str, **kwargs: str) -> dict[str, Any]:
        self._noArguments(args)
        return self.parseOptions(kwargs)

    def build(self, context: ProviderContext, **arguments: Any) -> IRecipientValidator:
        from mailframe.validators.basic import AnyRecipient

        return AnyRecipient()


class _Domains(PlugInFactory):
    prefix = "domains"
    provides = IRecipientValidator
    arguments = "DOMAIN[,DOMAIN...]"
    description = (
        "Make these domains local and accept every address in them "
        "(no opinion on other domains: the next validator is asked)."
    )

    def checkArguments(self, *args: str, **kwargs: str) -> dict[str, Any]:
        from mailframe.address import Domain

        self.parseOptions(kwargs)
        names = splitItems(args)
        if not names:
            raise ValueError(f"expected at least one domain (usage: {self.synopsis})")
        for name in names:
            Domain.parse(name)
        return {"domains": names}

    def build(self, context: ProviderContext, **arguments: Any) -> IRecipientValidator:
        from mailframe.validators.basic import DomainsValidator

        return DomainsValidator(arguments["domains"])


class _Addresses(PlugInFactory):
    prefix = "addresses"
    provides = IRecipientValidator
    arguments = "PATH"
    description = (
        "Accept the addresses listed in the file PATH, one a line (no opinion "
        "on others: the next validator decides, else 550 5.1.1); re-read when it changes."
    )

    def checkArguments(self, *args: str, **kwargs: str) -> dict[str, Any]:
        self.parseOptions(kwargs)
        path = self._path(args)
        if not os.path.isfile(path):
            raise ValueError(f"no such file: {path}")
        return {"path": path}

    def build(self, context: ProviderContext, **arguments: Any) -> IRecipientValidator:
        from mailframe.validators.addresses import AddressListValidator

        return AddressListValidator(context.reactor, arguments["path"])


anyValidator = _Any()
domainsValidator = _Domains()
addressesValidator = _Addresses()

VALIDATOR_FACTORIES: tuple[PlugInFactory, ...] = (
    anyValidator,
    domainsValidator,
    addressesValidator,
)
