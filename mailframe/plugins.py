"""
Plug-ins chosen by description strings, the way endpoints are:
C{maildir:/var/mail:layout=user} is the plug-in C{maildir} with the argument
C{/var/mail} and the option C{layout=user}.

Owns: L{parseDescription}; the built-in L{IPlugInFactory} providers
(backends C{maildir}, C{mbox}, C{memory}; validators C{any}, C{domains},
C{addresses}); finding factories with C{twisted.plugin} (L{factoriesFor});
building and checking providers from descriptions (L{makeProvider},
L{checkDescription}).

Must not: import the reactor, C{mailframe.server}, or any provider module at
import time.  twistd imports every dropin when it scans for service makers,
and the dropin C{twisted/plugins/mailframe_builtins.py} imports this module:
provider modules are imported inside C{makeProvider}.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterable
from typing import Any

from twisted.logger import Logger
from twisted.plugin import IPlugin, getPlugins
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
    "BUILTINS",
    "FILTER_KINDS",
    "PlugInError",
    "PlugInFactory",
    "addressesValidator",
    "anyValidator",
    "checkDescription",
    "checkFilter",
    "domainsValidator",
    "factoriesFor",
    "kindName",
    "maildirBackend",
    "makeFilter",
    "makeProvider",
    "mboxBackend",
    "memoryBackend",
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


# -- the built-in factories -------------------------------------------------------


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


class _Maildir(PlugInFactory):
    prefix = "maildir"
    provides = IDeliveryBackend
    synopsis = "maildir:PATH[:layout=single|user|domain]"
    description = (
        "Deliver into Maildir folders under PATH: one for all mail (single), "
        "PATH/LOCALPART (user), or PATH/DOMAIN/LOCALPART (domain)."
    )

    def checkArguments(self, *args: str, **kwargs: str) -> dict[str, Any]:
        self._options(kwargs, ["layout"])
        layout = self._choice(kwargs, "layout", ("single", "user", "domain"))
        return {"path": self._path(args), "layout": layout}

    def build(self, context: Any, **arguments: Any) -> Any:
        from mailframe.backends.maildir import MaildirBackend

        return MaildirBackend(context.reactor, arguments["path"], layout=arguments["layout"])


class _Mbox(PlugInFactory):
    prefix = "mbox"
    provides = IDeliveryBackend
    synopsis = "mbox:PATH[:layout=single|user]"
    description = (
        "Append to mbox files: the file PATH for all mail (single), or PATH/LOCALPART (user)."
    )

    def checkArguments(self, *args: str, **kwargs: str) -> dict[str, Any]:
        self._options(kwargs, ["layout"])
        layout = self._choice(kwargs, "layout", ("single", "user"))
        return {"path": self._path(args), "layout": layout}

    def build(self, context: Any, **arguments: Any) -> Any:
        from mailframe.backends.mbox import MboxBackend

        return MboxBackend(context.reactor, arguments["path"], layout=arguments["layout"])


class _Memory(PlugInFactory):
    prefix = "memory"
    provides = IDeliveryBackend
    synopsis = "memory[:keep=yes|no]"
    description = "Keep messages in memory, lost at exit (for tests); keep=no only counts them."

    def checkArguments(self, *args: str, **kwargs: str) -> dict[str, Any]:
        self._noArguments(args)
        self._options(kwargs, ["keep"])
        return {"keep": self._flag(kwargs, "keep", True)}

    def build(self, context: Any, **arguments: Any) -> Any:
        from mailframe.backends.memory import MemoryBackend

        return MemoryBackend(keep=arguments["keep"])


class _Any(PlugInFactory):
    prefix = "any"
    provides = IRecipientValidator
    synopsis = "any"
    description = "Accept every recipient of a local domain."

    def checkArguments(self, *args: str, **kwargs: str) -> dict[str, Any]:
        self._noArguments(args)
        self._options(kwargs, [])
        return {}

    def build(self, context: Any, **arguments: Any) -> Any:
        from mailframe.validators.basic import AnyRecipient

        return AnyRecipient()


class _Domains(PlugInFactory):
    prefix = "domains"
    provides = IRecipientValidator
    synopsis = "domains:DOMAIN[,DOMAIN...]"
    description = (
        "Make these domains local and accept every address in them "
        "(no opinion on other domains: the next validator is asked)."
    )

    def checkArguments(self, *args: str, **kwargs: str) -> dict[str, Any]:
        from mailframe.address import Domain

        self._options(kwargs, [])
        names = [n.strip() for arg in args for n in arg.split(",") if n.strip()]
        if not names:
            raise ValueError(f"expected at least one domain (usage: {self.synopsis})")
        for name in names:
            Domain.parse(name)
        return {"domains": names}

    def build(self, context: Any, **arguments: Any) -> Any:
        from mailframe.validators.basic import DomainsValidator

        return DomainsValidator(arguments["domains"])


class _Addresses(PlugInFactory):
    prefix = "addresses"
    provides = IRecipientValidator
    synopsis = "addresses:PATH"
    description = (
        "Accept the addresses listed in the file PATH, one a line (no opinion "
        "on others: the next validator decides, else 550 5.1.1); re-read when it changes."
    )

    def checkArguments(self, *args: str, **kwargs: str) -> dict[str, Any]:
        self._options(kwargs, [])
        path = self._path(args)
        if not os.path.isfile(path):
            raise ValueError(f"no such file: {path}")
        return {"path": path}

    def build(self, context: Any, **arguments: Any) -> Any:
        from mailframe.validators.addresses import AddressListValidator

        return AddressListValidator(context.reactor, arguments["path"])


maildirBackend = _Maildir()
mboxBackend = _Mbox()
memoryBackend = _Memory()
anyValidator = _Any()
domainsValidator = _Domains()
addressesValidator = _Addresses()

#: The built-in factories: always available, and preferred on a clash.
BUILTINS: tuple[PlugInFactory, ...] = (
    maildirBackend,
    mboxBackend,
    memoryBackend,
    anyValidator,
    domainsValidator,
    addressesValidator,
)

# the security checks (mailframe.policy): their factories need PlugInFactory above
from mailframe.policy.factories import POLICY_FACTORIES  # noqa: E402

BUILTINS += POLICY_FACTORIES

# -- discovery ----------------------------------------------------------------

_warned: list[Any] = []  # the ignored factories, kept so that each is warned about once


def _allFactories() -> list[Any]:
    """The built-ins, then every other factory twisted.plugin finds."""
    found: list[Any] = list(BUILTINS)
    seen: dict[tuple[Any, str], Any] = {(f.provides, f.prefix.lower()): f for f in BUILTINS}
    try:
        discovered = list(getPlugins(IPlugInFactory))
    except Exception:
        log.failure("scanning for plug-ins failed; only the built-in ones are available")
        return found
    for factory in discovered:
        if any(factory is b for b in BUILTINS):
            continue
        try:
            prefix = factory.prefix
            provides = factory.provides
            key = (provides, prefix.lower())
            hash(key)
        except Exception:
            log.warn("ignoring plug-in {factory!r}: no usable prefix or provides", factory=factory)
            continue
        other = seen.get(key)
        if other is None:
            seen[key] = factory
            found.append(factory)
        elif other is not factory and not any(w is factory for w in _warned):
            _warned.append(factory)
            log.warn(
                "ignoring {kind} plug-in {factory!r}: the prefix {prefix!r} is taken by {other!r}",
                kind=kindName(provides),
                factory=factory,
                prefix=prefix,
                other=other,
            )
    return found


def _isKind(factory: Any, interface: Any) -> bool:
    try:
        return bool(factory.provides.isOrExtends(interface))
    except Exception:
        return False


def factoriesFor(interface: Any) -> list[Any]:
    """
    The L{IPlugInFactory} providers whose providers provide C{interface}:
    the built-ins first, then those found in C{twisted.plugins}.
    """
    return [f for f in _allFactories() if _isKind(f, interface)]


def _find(interface: Any, description: str) -> tuple[Any, tuple[str, ...], dict[str, str]]:
    prefix, args, kwargs = parseDescription(description)
    kind = kindName(interface)
    factories = _allFactories()
    for f in factories:
        if _isKind(f, interface) and f.prefix.lower() == prefix.lower():
            return f, args, kwargs
    known = ", ".join(sorted(f.prefix for f in factories if _isKind(f, interface))) or "none"
    for f in factories:
        if f.prefix.lower() == prefix.lower():
            raise PlugInError(
                f"{prefix!r} is a {kindName(f.provides)}, not a {kind} ({kind}s: {known})"
            )
    raise PlugInError(f"unknown {kind} {prefix!r} (known: {known})")


def _bad(interface: Any, description: str, factory: Any, error: Exception) -> PlugInError:
    message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if isinstance(error, TypeError):
        message = f"bad arguments: {message} (usage: {factory.synopsis})"
    return PlugInError(f"bad {kindName(interface)} {description!r}: {message}")


def checkDescription(interface: Any, description: str) -> Any:
    """
    Check a description without building anything: the prefix exists, is of
    the right kind, and (as far as can be told without side effects) its
    factory takes these arguments.

    @return: the factory.
    @raise PlugInError: with a one-line message.
    """
    factory, args, kwargs = _find(interface, description)
    try:
        if isinstance(factory, PlugInFactory):
            factory.checkArguments(*args, **kwargs)
        else:
            try:
                signature = inspect.signature(factory.makeProvider)
            except (TypeError, ValueError):
                return factory
            signature.bind(None, *args, **kwargs)
    except (TypeError, ValueError) as e:
        raise _bad(interface, description, factory, e)
    return factory


def makeProvider(interface: Any, description: str, context: Any) -> Any:
    """
    Build the provider of C{interface} that C{description} names.

    @param context: the L{mailframe.config.ProviderContext}.
    @raise PlugInError: for an unknown prefix, a plug-in of another kind, or
        arguments its factory refuses; the message is one line.  Other
        errors (an L{OSError} creating a directory ...) propagate.
    """
    factory, args, kwargs = _find(interface, description)
    try:
        provider = factory.makeProvider(context, *args, **kwargs)
    except (TypeError, ValueError) as e:
        raise _bad(interface, description, factory, e)
    if not interface.providedBy(provider):
        raise PlugInError(
            f"plug-in {factory.prefix!r} built {provider!r}, which does not provide "
            f"{interface.__name__}"
        )
    return provider


def _isFilter(factory: Any) -> bool:
    return any(_isKind(factory, kind) for kind in FILTER_KINDS)


def _filterKind(description: str) -> Any:
    """The filter kind whose factories have C{description}'s prefix."""
    prefix = parseDescription(description)[0].lower()
    factories = _allFactories()
    for f in factories:
        if f.prefix.lower() == prefix:
            for kind in FILTER_KINDS:
                if _isKind(f, kind):
                    return kind
    known = ", ".join(sorted({f.prefix for f in factories if _isFilter(f)}))
    for f in factories:
        if f.prefix.lower() == prefix:
            raise PlugInError(
                f"{prefix!r} is a {kindName(f.provides)}, not a filter (filters: {known})"
            )
    raise PlugInError(f"unknown filter {prefix!r} (filters: {known})")


def checkFilter(description: str) -> Any:
    """
    L{checkDescription} for C{--filter}: a connection filter, HELO
    validator, sender validator or message filter.

    @return: the factory.
    @raise PlugInError: with a one-line message.
    """
    return checkDescription(_filterKind(description), description)


def makeFilter(description: str, context: Any) -> Any:
    """
    Build the provider a C{--filter} description names.  It may provide
    several plug points (L{FILTER_KINDS}, and L{IRecipientValidator}); the
    caller uses it at each.
    """
    return makeProvider(_filterKind(description), description, context)
