"""
The kit for writing plug-ins chosen by description strings, the way
endpoints are: C{maildir:/var/mail:layout=user} is the plug-in C{maildir}
with the argument C{/var/mail} and the option C{layout=user}.

Owns: L{parseDescription}, L{PlugInFactory} (the base of mailframe's own
factories, and of anyone's), L{PlugInError} and the names of the plug-in
kinds.  The built-in factories live beside their providers
(C{mailframe.backends.factories}, C{mailframe.validators.factories},
C{mailframe.policy.factories}); finding and building them is the
application's (L{mailframe.app.registry}).

Must not: import the reactor, C{mailframe.server}, or any provider module at
import time: twistd imports every dropin when it scans for service makers,
and the dropins import this module.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from twisted.logger import Logger
from twisted.plugin import IPlugin
from zope.interface import implementer
from zope.interface.interface import InterfaceClass

from mailframe.interfaces import (
    IConnectionFilter,
    IDeliveryBackend,
    IExtension,
    IHeloValidator,
    IMessageFilter,
    IPlugInFactory,
    IRecipientValidator,
    ISenderValidator,
)

__all__ = [
    "FILTER_KINDS",
    "PlugInError",
    "PlugInFactory",
    "kindName",
    "parseDescription",
]

log = Logger(namespace="mailframe.plugins")


class PlugInError(ValueError):
    """A description names no such plug-in, the wrong kind, or bad arguments."""


# -- description strings ------------------------------------------------------


def parseDescription(description: str) -> tuple[str, tuple[str, ...], dict[str, str]]:
    """
    Split a description into its prefix, arguments and options.

    Parts are separated by C{:}; a backslash makes the next character
    ordinary (C{\\:}, C{\\\\}, C{\\=}).  A part C{key=value} whose key is
    an identifier is an option; any other part is an argument.

    @raise PlugInError: for an empty prefix, an option given twice or a
        trailing lone backslash.
    """
    parts: list[tuple[str, int | None]] = []
    current: list[str] = []
    equals: int | None = None
    chars = iter(description)
    for c in chars:
        if c == "\\":
            escaped = next(chars, None)
            if escaped is None:
                raise PlugInError(f"description {description!r} ends with a lone backslash")
            current.append(escaped)
        elif c == ":":
            parts.append(("".join(current), equals))
            current, equals = [], None
        else:
            if c == "=" and equals is None:
                equals = len(current)
            current.append(c)
    parts.append(("".join(current), equals))
    prefix = parts[0][0]
    if not prefix:
        raise PlugInError(f"description {description!r} has no plug-in name before ':'")
    args: list[str] = []
    kwargs: dict[str, str] = {}
    for text, at in parts[1:]:
        if at is not None and text[:at].isidentifier():
            key = text[:at]
            if key in kwargs:
                raise PlugInError(f"option {key!r} given twice in {description!r}")
            kwargs[key] = text[at + 1 :]
        else:
            args.append(text)
    return prefix, tuple(args), kwargs


# -- kinds ----------------------------------------------------------------------

_KINDS: dict[Any, str] = {
    IDeliveryBackend: "delivery backend",
    IRecipientValidator: "recipient validator",
    ISenderValidator: "sender validator",
    IConnectionFilter: "connection filter",
    IMessageFilter: "message filter",
    IExtension: "ESMTP extension",
    IHeloValidator: "HELO validator",
}

#: The kinds C{--filter} chooses from: a provider built from a filter
#: description is used at every one of these plug points it provides.
FILTER_KINDS: tuple[Any, ...] = (
    IConnectionFilter,
    IHeloValidator,
    ISenderValidator,
    IMessageFilter,
)


def kindName(interface: Any) -> str:
    """A plug-in kind in words: C{"delivery backend"} for IDeliveryBackend."""
    return _KINDS.get(interface, getattr(interface, "__name__", repr(interface)))


# -- the base of factories -------------------------------------------------------


@implementer(IPlugin, IPlugInFactory)
class PlugInFactory:
    """
    A base for L{IPlugInFactory} providers that can check their arguments
    without side effects, so that twistd refuses a bad one as a usage error
    before anything starts.  Subclasses set the four attributes and write
    L{checkArguments} (pure) and L{build}.
    """

    prefix: str
    provides: InterfaceClass
    synopsis: str
    description: str

    def checkArguments(self, *args: str, **kwargs: str) -> dict[str, Any]:
        """
        Check and convert the arguments, touching nothing.

        @return: what L{build} takes as keyword arguments.
        @raise ValueError: with a one-line message.
        """
        raise NotImplementedError

    def build(self, context: Any, **arguments: Any) -> Any:
        """Build the provider from what L{checkArguments} returned."""
        raise NotImplementedError

    def makeProvider(self, context: Any, *args: str, **kwargs: str) -> Any:
        return self.build(context, **self.checkArguments(*args, **kwargs))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.prefix!r}>"

    # helpers for subclasses

    def _noArguments(self, args: tuple[str, ...]) -> None:
        if args:
            raise ValueError(f"takes no argument (usage: {self.synopsis})")

    def _path(self, args: tuple[str, ...]) -> str:
        if len(args) != 1 or not args[0]:
            raise ValueError(f"expected one PATH (usage: {self.synopsis})")
        return os.path.abspath(os.path.expanduser(args[0]))

    def _options(self, kwargs: dict[str, str], known: Iterable[str]) -> None:
        known = sorted(known)
        for key in kwargs:
            if key not in known:
                names = ", ".join(known) if known else "none"
                raise ValueError(f"unknown option {key!r} (options: {names})")

    def _flag(self, kwargs: dict[str, str], key: str, default: bool) -> bool:
        """A yes/no option (also true/false, on/off, 1/0)."""
        value = kwargs.get(key)
        if value is None:
            return default
        if value.lower() not in _BOOLEANS:
            raise ValueError(f"{key} must be yes or no, not {value!r}")
        return _BOOLEANS[value.lower()]

    def _choice(self, kwargs: dict[str, str], key: str, choices: tuple[str, ...]) -> str:
        value = kwargs.get(key, choices[0])
        if value not in choices:
            raise ValueError(f"{key} must be one of {', '.join(choices)}, not {value!r}")
        return value


_BOOLEANS = {"yes": True, "true": True, "on": True, "1": True}
_BOOLEANS.update({"no": False, "false": False, "off": False, "0": False})
