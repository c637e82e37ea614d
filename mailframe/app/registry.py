"""
Finding plug-in factories and building providers from description strings:
the built-ins (L{BUILTINS}) first, then every L{IPlugInFactory} that
C{twisted.plugin} finds in C{twisted.plugins}.

Owns: discovery, and checking and building providers (L{checkDescription},
L{makeProvider}, L{checkFilter}, L{makeFilter}, L{factoriesFor}).  Must not:
import a provider module at import time.
"""

from __future__ import annotations

import inspect
from typing import TypeVar, cast

from twisted.logger import Logger
from twisted.plugin import getPlugins
from zope.interface import Interface
from zope.interface.interface import InterfaceClass

from mailframe.backends.factories import BACKEND_FACTORIES
from mailframe.config import ProviderContext
from mailframe.interfaces import IPlugInFactory
from mailframe.plugins import (
    FILTER_KINDS,
    PlugInError,
    PlugInFactory,
    kindName,
    parseDescription,
    providerProblem,
    redact,
)
from mailframe.policy.factories import POLICY_FACTORIES
from mailframe.validators.factories import VALIDATOR_FACTORIES

__all__ = [
    "BUILTINS",
    "checkDescription",
    "checkFilter",
    "factoriesFor",
    "makeFilter",
    "makeProvider",
]

log = Logger(namespace="mailframe.plugins")

_I = TypeVar("_I", bound=Interface)

#: The built-in factories: always available, and preferred on a clash.
BUILTINS: tuple[PlugInFactory, ...] = (
    *BACKEND_FACTORIES,
    *VALIDATOR_FACTORIES,
    *POLICY_FACTORIES,
)

_warned: list[IPlugInFactory] = []  # the ignored factories, kept so that each is warned about once


def _allFactories() -> list[IPlugInFactory]:
    """The built-ins, then every other factory twisted.plugin finds."""
    found: list[IPlugInFactory] = list(BUILTINS)
    seen: dict[tuple[InterfaceClass, str], IPlugInFactory] = {
        (f.provides, f.prefix.lower()): f for f in BUILTINS
    }
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


def _isKind(factory: IPlugInFactory, interface: InterfaceClass) -> bool:
    try:
        return bool(factory.provides.isOrExtends(interface))
    except Exception:
        return False


def factoriesFor(interface: InterfaceClass) -> list[IPlugInFactory]:
    """
    The L{IPlugInFactory} providers whose providers provide C{interface}:
    the built-ins first, then those found in C{twisted.plugins}.
    """
    return [f for f in _allFactories() if _isKind(f, interface)]


def _find(
    interface: InterfaceClass, description: str
) -> tuple[IPlugInFactory, tuple[str, ...], dict[str, str]]:
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


def _bad(
    interface: InterfaceClass, description: str, factory: IPlugInFactory, error: Exception
) -> PlugInError:
    message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if isinstance(error, TypeError):
        message = f"bad arguments: {message} (usage: {factory.synopsis})"
    return PlugInError(redact(f"bad {kindName(interface)} {description!r}: {message}"))


def checkDescription(interface: InterfaceClass, description: str) -> IPlugInFactory:
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


def makeProvider(interface: type[_I], description: str, context: ProviderContext) -> _I:
    """
    Build the provider of C{interface} that C{description} names.

    @param context: the L{mailframe.config.ProviderContext}.
    @raise PlugInError: for an unknown prefix, a plug-in of another kind,
        arguments its factory refuses, or a provider that does not have
        what C{interface} promises (C{verifyObject}); the message is one
        line.  Other errors (an L{OSError} creating a directory ...) propagate.
    """
    return cast(_I, _build(interface, description, context))


def _build(interface: InterfaceClass, description: str, context: ProviderContext) -> object:
    factory, args, kwargs = _find(interface, description)
    try:
        provider = factory.makeProvider(context, *args, **kwargs)
    except (TypeError, ValueError) as e:
        raise _bad(interface, description, factory, e)
    problem = providerProblem(interface, provider)
    if problem is not None:
        raise PlugInError(f"plug-in {factory.prefix!r} built {provider!r}, which {problem}")
    return provider


def _isFilter(factory: IPlugInFactory) -> bool:
    return any(_isKind(factory, kind) for kind in FILTER_KINDS)


def _filterKind(description: str) -> InterfaceClass:
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


def checkFilter(description: str) -> IPlugInFactory:
    """
    L{checkDescription} for C{--filter}: a connection filter, HELO
    validator, sender validator or message filter.

    @return: the factory.
    @raise PlugInError: with a one-line message.
    """
    return checkDescription(_filterKind(description), description)


def makeFilter(description: str, context: ProviderContext) -> object:
    """
    Build the provider a C{--filter} description names.  It may provide
    several plug points (L{FILTER_KINDS}, and L{IRecipientValidator}); the
    caller uses it at each.
    """
    return _build(_filterKind(description), description, context)
