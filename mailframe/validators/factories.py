"""
The plug-in factories of the built-in recipient validators, chosen with
C{--validate}: C{any}, C{domains}, C{addresses}; and of the recipient
rewriters, which C{--aliases}, C{--virtual} and C{--subaddress} choose
too: C{aliases}, C{virtual}, C{subaddress}.

Must not: import a validator's module at import time; providers are built
in C{build}.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from mailframe.interfaces import IRecipientValidator
from mailframe.plugins import Option, PlugInFactory, SettingError, splitItems

if TYPE_CHECKING:
    from mailframe.config import ProviderContext

__all__ = [
    "VALIDATOR_FACTORIES",
    "Separators",
    "addressesValidator",
    "aliasesRewriter",
    "anyValidator",
    "domainsValidator",
    "subaddressRewriter",
    "virtualRewriter",
]


class Separators:
    """The characters that start a subaddress (C{+}, or C{+-} for either); "" or none for none."""

    metavar = "CHARS"

    def __call__(self, value: object) -> str:
        if not isinstance(value, str):
            raise SettingError(f"expected separator characters such as +, not {value!r}")
        if value.lower() in ("", "none", "off"):
            return ""
        from mailframe.validators.subaddress import checkSeparators

        try:
            return checkSeparators(value)
        except ValueError as e:
            raise SettingError(str(e)) from None

    def format(self, value: object) -> str:
        return str(value) if value else "none"


_SEPARATORS = Option(
    "separators",
    Separators(),
    "",
    "Subaddress separators: user+tag is looked up whole, then as user.",
)


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


def _file(factory: PlugInFactory, args: tuple[str, ...]) -> str:
    path = factory._path(args)
    if not os.path.isfile(path):
        raise ValueError(f"no such file: {path}")
    return path


class _Aliases(PlugInFactory):
    prefix = "aliases"
    provides = IRecipientValidator
    arguments = "PATH"
    options = (_SEPARATORS,)
    description = (
        "Rewrite recipients with the local aliases in PATH (the /etc/aliases format: "
        "lists, :include:, /dev/null) before the validators judge them; re-read when "
        "it changes."
    )

    def checkArguments(self, *args: str, **kwargs: str) -> dict[str, Any]:
        return {"path": _file(self, args), **self.parseOptions(kwargs)}

    def build(self, context: ProviderContext, **arguments: Any) -> IRecipientValidator:
        from mailframe.validators.aliases import AliasMap

        return AliasMap(
            context.reactor,
            arguments["path"],
            arguments["separators"],
            forwarding=context.forwarding,
            isLocal=context.config.isLocal,
        )


class _Virtual(PlugInFactory):
    prefix = "virtual"
    provides = IRecipientValidator
    arguments = "PATH"
    options = (_SEPARATORS,)
    description = (
        "Rewrite recipients with the virtual map in PATH (Postfix virtual(5): "
        "user@domain and @domain keys, virtual alias domains) before the aliases; "
        "re-read when it changes."
    )

    def checkArguments(self, *args: str, **kwargs: str) -> dict[str, Any]:
        return {"path": _file(self, args), **self.parseOptions(kwargs)}

    def build(self, context: ProviderContext, **arguments: Any) -> IRecipientValidator:
        from mailframe.validators.virtual import VirtualMap

        return VirtualMap(
            context.reactor,
            arguments["path"],
            context.config.hostname,
            arguments["separators"],
            forwarding=context.forwarding,
            isLocal=context.config.isLocal,
        )


class _Subaddress(PlugInFactory):
    prefix = "subaddress"
    provides = IRecipientValidator
    options = (Option("separators", Separators(), "+", "The subaddress separators."),)
    description = "Deliver user+tag@domain to user@domain, the tag kept as its detail."

    def checkArguments(self, *args: str, **kwargs: str) -> dict[str, Any]:
        self._noArguments(args)
        options = self.parseOptions(kwargs)
        if not options["separators"]:
            raise ValueError("separators cannot be empty")
        return options

    def build(self, context: ProviderContext, **arguments: Any) -> IRecipientValidator:
        from mailframe.validators.subaddress import Subaddress

        return Subaddress(arguments["separators"])


anyValidator = _Any()
domainsValidator = _Domains()
addressesValidator = _Addresses()
aliasesRewriter = _Aliases()
virtualRewriter = _Virtual()
subaddressRewriter = _Subaddress()

VALIDATOR_FACTORIES: tuple[PlugInFactory, ...] = (
    anyValidator,
    domainsValidator,
    addressesValidator,
    aliasesRewriter,
    virtualRewriter,
    subaddressRewriter,
)
