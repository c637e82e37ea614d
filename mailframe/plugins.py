"""
The kit for writing plug-ins chosen by description strings, the way
endpoints are: C{maildir:/var/mail:layout=user} is the plug-in C{maildir}
with the argument C{/var/mail} and the option C{layout=user}.

Owns: L{parseDescription}, L{PlugInFactory} (the base of mailframe's own
factories, and of anyone's) with its declared L{Option}s, the value parsers
that the options of plug-ins and the application's settings share
(L{Duration}, L{Size}, L{Count}, L{Choice}, L{YesNo}, L{Networks}),
L{SettingError} (the one error of a bad setting or option) and its
L{PlugInError}, the names of the plug-in kinds, and checking that a
provider has what its interface promises (L{checkProviders}, with
C{verifyObject}).  The built-in factories live beside their providers
(C{mailframe.backends.factories}, C{mailframe.validators.factories},
C{mailframe.policy.factories}); finding
and building them is the application's (L{mailframe.app.registry}), and so
is the table of settings (L{mailframe.app.settings}).

Must not: import the reactor, C{mailframe.server}, or any provider module at
import time: twistd imports every dropin when it scans for service makers,
and the dropins import this module.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from ipaddress import ip_network
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger
from twisted.plugin import IPlugin
from zope.interface import implementer
from zope.interface.exceptions import Invalid
from zope.interface.interface import InterfaceClass
from zope.interface.verify import verifyObject

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

if TYPE_CHECKING:
    from mailframe.config import ProviderContext

__all__ = [
    "FILTER_KINDS",
    "Choice",
    "Count",
    "Duration",
    "Networks",
    "Option",
    "PlugInError",
    "PlugInFactory",
    "SettingError",
    "Size",
    "YesNo",
    "checkProviders",
    "kindName",
    "oneLine",
    "parseDescription",
    "providerProblem",
    "redact",
    "showValue",
    "splitItems",
]

log = Logger(namespace="mailframe.plugins")


class SettingError(ValueError):
    """
    A bad setting, or a bad option of a plug-in description: the one error
    type of both.  The message is one line and names the setting.
    """


class PlugInError(SettingError):
    """A description names no such plug-in, the wrong kind, or bad arguments."""


def oneLine(error: BaseException) -> str:
    """The first line of an error's message, or its type's name."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


# -- value parsers: a command-line string or a TOML value -> the value -----------
#
# Each is a callable that raises SettingError with a one-line message that
# does not name the setting (the Option that uses it does), and shows a value
# the way it is written (format), with a placeholder for usage (metavar).


def showValue(value: object) -> str:
    """A value as a person would write it: C{yes}, C{a, b}, C{none}."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, list | tuple | frozenset | set):
        return ", ".join(showValue(v) for v in value) if value else "none"
    if isinstance(value, Mapping) and not value:
        return "none"
    return str(value)


class Duration:
    """
    Seconds from a number or a string: C{300}, C{2.5}, C{90s}, C{5m},
    C{1.5h}, C{5d}, C{1w}.  Positive, or also 0 (and C{off}, C{no}) with
    C{zero}; at most C{maximum} seconds if given.  C{noun} is what an error
    calls it ("a number of seconds" or "a duration").
    """

    _RE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw]?)\Z", re.IGNORECASE)
    _UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}

    def __init__(
        self, noun: str = "a number of seconds", zero: bool = False, maximum: float | None = None
    ) -> None:
        self.noun = noun
        self.zero = zero
        self.maximum = maximum
        self.metavar = "SECONDS" if noun == "a number of seconds" else "DURATION"

    def __call__(self, value: object) -> float:
        seconds: float | None = None
        if isinstance(value, int | float) and not isinstance(value, bool):
            seconds = float(value)
        elif isinstance(value, str):
            text = value.strip()
            if m := self._RE.match(text):
                seconds = float(m.group(1)) * self._UNITS[m.group(2).lower()]
            elif self.zero and text.lower() in ("off", "no"):
                seconds = 0.0
            else:
                try:
                    seconds = float(text)
                except ValueError:
                    seconds = None
        if seconds is None or math.isnan(seconds):
            raise SettingError(f"expected {self.noun} (300, 90s, 5m, 1h, 5d), not {value!r}")
        what = self.noun.removeprefix("a ")
        if math.isinf(seconds) or seconds < 0 or (seconds == 0 and not self.zero):
            alternative = " or 0" if self.zero else ""
            raise SettingError(f"must be a positive {what}{alternative}, not {value!r}")
        if self.maximum is not None and seconds > self.maximum:
            raise SettingError(f"must be at most {self.format(self.maximum)}, not {value!r}")
        return seconds

    def format(self, seconds: float | None) -> str:
        """C{300} as C{5m}, C{1.0} as C{1s}, 0 as C{0}."""
        if seconds is None:
            return "none"
        if seconds == 0:
            return "0"
        for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
            if seconds >= size and seconds % size == 0:
                return f"{int(seconds // size)}{unit}"
        return f"{seconds:g}s"


class Size:
    """Octets from an int or a string such as C{"35M"} (K, M, G are powers of 1024)."""

    metavar = "SIZE"
    _RE = re.compile(r"\s*(\d+)\s*([KMG]?)(?:I?B)?\s*\Z", re.IGNORECASE)
    _UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}

    def __call__(self, value: object) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            size = value
        elif isinstance(value, str) and (m := self._RE.match(value)):
            size = int(m.group(1)) * self._UNITS[m.group(2).upper()]
        else:
            raise SettingError(f"bad size {value!r} (octets, or a number with K, M or G)")
        if size < 0:
            raise SettingError(f"bad size {value!r}: may not be negative")
        return size

    def format(self, size: int) -> str:
        for unit in ("G", "M", "K"):
            if size and size % self._UNITS[unit] == 0:
                return f"{size // self._UNITS[unit]}{unit}"
        return str(size)


class Count:
    """
    A whole number, at least C{minimum} (and at most C{maximum} if given).
    C{expected}: what every error says is expected (by default, a bounded
    count says C{1 to 64}; an unbounded one says what is wrong).
    """

    metavar = "N"

    def __init__(
        self, minimum: int = 0, maximum: int | None = None, expected: str | None = None
    ) -> None:
        self.minimum = minimum
        self.maximum = maximum
        if expected is None and maximum is not None:
            expected = f"{minimum} to {maximum}"
        self.expected = expected

    def __call__(self, value: Any) -> int:
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        whole = isinstance(value, int) and not isinstance(value, bool)
        inRange = (
            whole and self.minimum <= value and (self.maximum is None or value <= self.maximum)
        )
        if self.expected is not None and not inRange:
            raise SettingError(f"expected {self.expected}, not {value!r}")
        if not whole:
            raise SettingError(f"expected a whole number, not {value!r}")
        if not inRange:
            raise SettingError(f"must be at least {self.minimum}, not {value!r}")
        return int(value)

    def format(self, value: object) -> str:
        return showValue(value)


class Choice:
    """One of some words; C{aliases} maps other spellings to them."""

    def __init__(self, *choices: str, aliases: Mapping[str, str] | None = None) -> None:
        self.choices = choices
        self.aliases = dict(aliases or {})
        self.metavar = "|".join(choices)

    def __call__(self, value: object) -> str:
        word = self.aliases.get(value, value) if isinstance(value, str) else None
        if word not in self.choices:
            raise SettingError(f"must be one of {', '.join(self.choices)}, not {value!r}")
        return str(word)

    def format(self, value: object) -> str:
        return showValue(value)


_BOOLEANS = {"yes": True, "true": True, "on": True, "1": True}
_BOOLEANS.update({"no": False, "false": False, "off": False, "0": False})


class YesNo:
    """Yes or no: the words yes/no, true/false, on/off, 1/0, or a TOML boolean."""

    metavar = "yes|no"

    def __call__(self, value: object) -> bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _BOOLEANS:
            return _BOOLEANS[value.strip().lower()]
        raise SettingError(f"must be yes or no, not {value!r}")

    def format(self, value: object) -> str:
        return showValue(value)


class Networks:
    """
    Networks in CIDR notation, as their normalised strings: a list, or one
    string with commas.  C{empty}: nothing at all is allowed.
    """

    metavar = "NET,..."

    def __init__(self, empty: bool = False) -> None:
        self.empty = empty

    def __call__(self, value: Any) -> tuple[str, ...]:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
            raise SettingError(f"expected a list of networks (CIDR), not {value!r}")
        out = []
        for item in items:
            for text in item.split(","):
                text = text.strip()
                if not text and self.empty:
                    continue
                try:
                    out.append(str(ip_network(text, strict=False)))
                except ValueError:
                    raise SettingError(f"not a network: {text!r} (e.g. 192.0.2.0/24)") from None
        if not out and not self.empty:
            raise SettingError(f"expected a list of networks (CIDR), not {value!r}")
        return tuple(out)

    def format(self, value: object) -> str:
        return showValue(value)


# -- declared options ------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    """
    An option of a description (C{timeout=5s}), or a setting of the
    application (L{mailframe.app.settings.Setting} adds where it applies):
    its name, the parser that checks and converts a value, its default (a
    converted value) and one or two sentences of help.

    @ivar shown: the default as text, when the value alone does not say it
        (None: a computed default); a callable is asked when it is shown.
    @ivar metavar: the placeholder of a value in synopses and the docs; by
        default the parser's.
    """

    name: str
    convert: Callable[[Any], Any]
    default: Any = None
    help: str = ""
    shown: str | Callable[[], str] | None = None
    metavar: str | None = None

    @property
    def placeholder(self) -> str:
        return self.metavar or getattr(self.convert, "metavar", None) or "VALUE"

    @property
    def defaultText(self) -> str:
        """The default as --help and the docs show it."""
        if self.shown is not None:
            return self.shown if isinstance(self.shown, str) else self.shown()
        format = getattr(self.convert, "format", None)
        if format is not None and self.default is not None:
            return str(format(self.default))
        return showValue(self.default)

    def parse(self, value: Any, label: str | None = None) -> Any:
        """Convert and check a value; a L{SettingError} names the option (or C{label})."""
        try:
            return self.convert(value)
        except ValueError as e:
            raise SettingError(self.describe(label or self.name, oneLine(e))) from None

    def describe(self, label: str, message: str) -> str:
        """An error message naming the option: C{keep must be yes or no}, C{client: ...}."""
        if message.startswith("must "):
            return f"{label} {message}"
        return f"{label}: {message}"


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

_KINDS: dict[InterfaceClass, str] = {
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
FILTER_KINDS: tuple[InterfaceClass, ...] = (
    IConnectionFilter,
    IHeloValidator,
    ISenderValidator,
    IMessageFilter,
)


_SECRET_IN_URL = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^:/@\s]*):[^@/\s]+@")
_SECRET_IN_QUERY = re.compile(
    r"(?i)([?&](?:[a-z0-9_-]*(?:token|secret|passw(?:or)?d|pass|key|sig|signature|auth)"
    r"[a-z0-9_-]*)=)[^&:#\s]+"
)


def redact(text: str) -> str:
    """
    C{text} (a plug-in description, an error about one) with the password
    of every URL in it masked (C{amqp://user:****@host/}), and the values
    of query parameters named like secrets (C{?token=****}, C{api_key},
    C{sig} ...).  For whatever is shown or logged.
    """
    text = _SECRET_IN_URL.sub(r"\1:****@", text)
    return _SECRET_IN_QUERY.sub(r"\1****", text)


def kindName(interface: InterfaceClass) -> str:
    """A plug-in kind in words: C{"delivery backend"} for IDeliveryBackend."""
    return _KINDS.get(interface, getattr(interface, "__name__", repr(interface)))


# -- the base of factories -------------------------------------------------------


@implementer(IPlugin, IPlugInFactory)
class PlugInFactory:
    """
    A base for L{IPlugInFactory} providers that can check their arguments
    without side effects, so that twistd refuses a bad one as a usage error
    before anything starts.  Subclasses set C{prefix}, C{provides} and
    C{description}, declare their C{options} (and C{arguments}, the
    synopsis of the arguments before them), and write L{checkArguments}
    (pure; L{parseOptions} converts the options) and L{build}.  The
    synopsis is made from the declarations unless a subclass sets one.
    """

    prefix: str
    provides: InterfaceClass
    description: str
    #: The synopsis of the arguments (C{PATH}), or "" for none.
    arguments: str = ""
    #: The options a description may give, with their parsers and defaults.
    options: tuple[Option, ...] = ()

    @property
    def synopsis(self) -> str:
        """C{prefix[:ARGUMENTS][:name=VALUE]...}, from the declarations."""
        head = f"{self.prefix}:{self.arguments}" if self.arguments else self.prefix
        return head + "".join(f"[:{o.name}={o.placeholder}]" for o in self.options)

    def checkArguments(self, *args: str, **kwargs: str) -> dict[str, Any]:
        """
        Check and convert the arguments, touching nothing.

        @return: what L{build} takes as keyword arguments.
        @raise ValueError: with a one-line message.
        """
        raise NotImplementedError

    def build(self, context: ProviderContext, **arguments: Any) -> object:
        """Build the provider from what L{checkArguments} returned."""
        raise NotImplementedError

    def makeProvider(self, context: ProviderContext, *args: str, **kwargs: str) -> object:
        return self.build(context, **self.checkArguments(*args, **kwargs))

    def parseOptions(self, kwargs: Mapping[str, str]) -> dict[str, Any]:
        """
        Every declared option by name: converted where given, else its default.

        @raise SettingError: for an unknown option or a bad value, naming it.
        """
        known = {o.name: o for o in self.options}
        for key in kwargs:
            if key not in known:
                names = ", ".join(sorted(known)) if known else "none"
                raise SettingError(f"unknown option {key!r} (options: {names})")
        return {
            name: option.parse(kwargs[name]) if name in kwargs else option.default
            for name, option in known.items()
        }

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


def splitItems(args: Iterable[str]) -> list[str]:
    """The comma-separated items of some arguments, blanks dropped: C{a,b} C{c} -> a, b, c."""
    return [n.strip() for arg in args for n in arg.split(",") if n.strip()]


# -- checking providers ----------------------------------------------------------


def providerProblem(interface: InterfaceClass, provider: object) -> str | None:
    """
    None if C{provider} declares C{interface} and has what it promises
    (C{verifyObject}: every method and attribute, with compatible
    signatures); else one line saying what is wrong, to follow its name.
    """
    if not interface.providedBy(provider):
        return f"does not provide {interface.__name__}"
    try:
        verifyObject(interface, provider)
    except Invalid as e:
        return f"does not implement {interface.__name__}: {' '.join(str(e).split())}"
    return None


def checkProviders(interface: InterfaceClass, providers: Iterable[object], what: str) -> None:
    """
    Each of C{providers} declares C{interface} and has what it promises
    (L{providerProblem}), or TypeError with one line naming the plug-in
    (C{what} says which kind) and the gap.
    """
    for p in providers:
        problem = providerProblem(interface, p)
        if problem is not None:
            raise TypeError(f"{what} {p!r} {problem}")
