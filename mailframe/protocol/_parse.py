"""
Command lines to command events: verbs, RFC 5321 paths (with source routes
removed), ESMTP parameters, and RFC 3461 xtext.

Owns: the syntax of a command line.  Raises L{CommandSyntaxError} carrying
the reply a malformed line gets.  Verbs and keywords (FROM:, TO:, LAST,
parameter names) are ASCII and match in ASCII case only: nothing is
uppercased before C{isascii()} says it is ASCII.  Must not: know the
session state, decide policy, or import twisted or zope.  The mailbox
grammar itself is in L{mailframe.address}.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from types import MappingProxyType

from mailframe import reply as R
from mailframe.address import Address, AddressError, parseMailbox
from mailframe.protocol import _events as E
from mailframe.protocol._errors import CommandSyntaxError  # defined there, importable here

__all__ = [
    "CommandSyntaxError",
    "LineParser",
    "decodeXtext",
    "encodeXtext",
    "lineParserFor",
    "parseCommand",
    "parseParameters",
    "parsersFor",
]

MAX_PATH = 256


_PATH_RE = re.compile(r'\s*<((?:"(?:[^"\\]|\\.)*"|[^<>"])*)>')
_ROUTE_RE = re.compile(
    r"@[^,:@\s]+(?:,@[^,:@\s]+)*:"
)  # A-d-l ":" (RFC 5321 4.1.2), stripped per 3.6.1 / C
_KEYWORD_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9\-]*\Z")
_VALUE_RE = re.compile("[\x21-\x3c\x3e-\x7e\u0080-\U0010ffff]+\\Z")
_XTEXT_RE = re.compile(rb"\+([0-9A-F]{2})")

_MAIL_SYNTAX = R.Reply(501, (5, 5, 2), "Syntax: MAIL FROM:<address> [parameters]")
_RCPT_SYNTAX = R.Reply(501, (5, 5, 2), "Syntax: RCPT TO:<address> [parameters]")
_BAD_SENDER = R.Reply(501, (5, 1, 7), "Bad sender address syntax")
_BAD_RECIPIENT = R.Reply(501, (5, 1, 3), "Bad recipient address syntax")
_BAD_PARAMETER = R.Reply(501, (5, 5, 4), "Bad ESMTP parameter syntax")
_DUPLICATE_PARAMETER = R.Reply(501, (5, 5, 4), "Parameter given twice")
_HELO_SYNTAX = R.Reply(501, (5, 5, 4), "Syntax: HELO/EHLO hostname")
_BDAT_SYNTAX = R.Reply(501, (5, 5, 4), "Syntax: BDAT size [LAST]")
_VRFY_SYNTAX = R.Reply(501, (5, 5, 4), "Syntax: VRFY user or mailbox")

_EMPTY: MappingProxyType[str, str | None] = MappingProxyType({})


def parseParameters(text: str) -> MappingProxyType[str, str | None]:
    """
    Parse C{KEY[=VALUE] ...} (RFC 5321 4.1.2 esmtp-param; values may be UTF-8
    per RFC 6531).  Keys are ASCII and returned uppercase; values as sent
    (compare a keyword value only after C{isascii()}: the dotless i, U+0131,
    uppercases to C{I}).
    """
    if not text:
        return _EMPTY
    params: dict[str, str | None] = {}
    for word in text.split():
        key, eq, value = word.partition("=")
        if not _KEYWORD_RE.match(key) or (eq and not _VALUE_RE.match(value)):
            raise CommandSyntaxError(_BAD_PARAMETER)
        key = key.upper()
        if key in params:
            raise CommandSyntaxError(_DUPLICATE_PARAMETER)
        params[key] = value if eq else None
    return MappingProxyType(params)


def _parsePath(
    arg: str, prefix: str, syntax: R.Reply, bad: R.Reply, nullAllowed: bool
) -> tuple[Address, MappingProxyType[str, str | None]]:
    n = len(prefix)
    if not arg[:n].isascii() or arg[:n].upper() != prefix:
        raise CommandSyntaxError(syntax)
    m = _PATH_RE.match(arg, n)
    if m is None:
        raise CommandSyntaxError(syntax)
    path = m.group(1)
    end = m.end()
    if end == len(arg):
        params = _EMPTY
    else:
        rest = arg[end:]
        if rest[:1] != " ":
            raise CommandSyntaxError(syntax)
        params = parseParameters(rest.strip())
    if len(path) + 2 > MAX_PATH and len(path.encode("utf-8")) + 2 > MAX_PATH:
        raise CommandSyntaxError(R.PATH_TOO_LONG)
    if not path:
        if not nullAllowed:
            raise CommandSyntaxError(bad)
        return Address.null(), params
    if path[:1] == "@":
        route = _ROUTE_RE.match(path)
        if route is None:
            raise CommandSyntaxError(bad)
        path = path[route.end() :]
    if not nullAllowed and len(path) == 10 and path.isascii() and path.lower() == "postmaster":
        return Address(path, None), params
    try:
        address = parseMailbox(path)
    except AddressError as e:
        if e.part == "local-part-length":
            raise CommandSyntaxError(R.LOCAL_PART_TOO_LONG) from None
        if e.part == "domain-length":
            raise CommandSyntaxError(R.DOMAIN_TOO_LONG) from None
        raise CommandSyntaxError(bad) from None
    return address, params


# The MAIL and RCPT commands parsed last, by the argument's text: most mail
# repeats its senders and recipients, and the events (an Address and its
# parameters) are immutable.  Only commands that parse are kept; a table is
# emptied when it is full.
_PATH_CACHE_SIZE = 512
_mailEvents: dict[str, E.MailFrom] = {}
_rcptEvents: dict[str, E.RcptTo] = {}


def _mail(arg: str) -> E.Event:
    event = _mailEvents.get(arg)
    if event is None:
        event = E.MailFrom(*_parsePath(arg, "FROM:", _MAIL_SYNTAX, _BAD_SENDER, True))
        if len(_mailEvents) >= _PATH_CACHE_SIZE:
            _mailEvents.clear()
        _mailEvents[arg] = event
    return event


def _rcpt(arg: str) -> E.Event:
    event = _rcptEvents.get(arg)
    if event is None:
        event = E.RcptTo(*_parsePath(arg, "TO:", _RCPT_SYNTAX, _BAD_RECIPIENT, False))
        if len(_rcptEvents) >= _PATH_CACHE_SIZE:
            _rcptEvents.clear()
        _rcptEvents[arg] = event
    return event


def _hello(extended: bool) -> Callable[[str], E.Event]:
    def parse(arg: str) -> E.Event:
        name = arg.strip()
        # a domain or an address literal: never a control character (they
        # would reach the Received field and the log lines as they are)
        # (stripped, it holds whitespace if split() cuts it: the same definition)
        if not name or not name.isprintable() or len(name.split()) != 1:
            raise CommandSyntaxError(_HELO_SYNTAX)
        return E.Hello(name, extended)

    return parse


def _noArgument(event: E.Event) -> Callable[[str], E.Event]:
    def parse(arg: str) -> E.Event:
        if arg.strip():
            raise CommandSyntaxError(R.NO_PARAMETERS)
        return event

    return parse


def _bdat(arg: str) -> E.Event:
    words = arg.split()
    if not 1 <= len(words) <= 2 or not words[0].isdigit() or not words[0].isascii():
        raise CommandSyntaxError(_BDAT_SYNTAX)
    if len(words) == 2 and (not words[1].isascii() or words[1].upper() != "LAST"):
        raise CommandSyntaxError(_BDAT_SYNTAX)
    if len(words[0]) > 18:
        raise CommandSyntaxError(R.MESSAGE_TOO_BIG)
    return E.Bdat(int(words[0]), len(words) == 2)


def _vrfy(arg: str) -> E.Event:
    arg = arg.strip()
    if not arg:
        raise CommandSyntaxError(_VRFY_SYNTAX)
    return E.Vrfy(arg)


def _expn(arg: str) -> E.Event:
    arg = arg.strip()
    if not arg:
        raise CommandSyntaxError(_VRFY_SYNTAX.withText("Syntax: EXPN list"))
    return E.Expn(arg)


DATA = E.Data()
RSET = E.Rset()
QUIT = E.Quit()
NOOP = E.Noop()
STARTTLS = E.StartTLS()

Parsers = Mapping[str, Callable[[str], E.Event]]

_PARSERS: dict[str, Callable[[str], E.Event]] = {
    "HELO": _hello(False),
    "EHLO": _hello(True),
    "MAIL": _mail,
    "RCPT": _rcpt,
    "DATA": _noArgument(DATA),
    "BDAT": _bdat,
    "RSET": _noArgument(RSET),
    "QUIT": _noArgument(QUIT),
    "NOOP": lambda arg: E.Noop(arg.strip()) if arg.strip() else NOOP,
    "HELP": lambda arg: E.Help(arg.strip()),
    "VRFY": _vrfy,
    "EXPN": _expn,
    "STARTTLS": _noArgument(STARTTLS),
}

OBSOLETE = frozenset({"SEND", "SOML", "SAML", "TURN"})
"""Verbs of RFC 821 that RFC 5321 removed: 502, not 500."""

_HELLO_VERBS = frozenset({"HELO", "EHLO", "LHLO"})
_TABLES: dict[tuple[tuple[str, bool], ...], Parsers] = {}


def parsersFor(hello: Mapping[str, bool]) -> Parsers:
    """
    The verb table of a protocol whose greeting verbs are C{hello} (verb ->
    extended): C{{"HELO": False, "EHLO": True}} for SMTP, C{{"LHLO": True}}
    for LMTP, where HELO and EHLO are then unknown verbs.  Made once.
    """
    key = tuple(sorted(hello.items()))
    table = _TABLES.get(key)
    if table is None:
        built = {verb: p for verb, p in _PARSERS.items() if verb not in _HELLO_VERBS}
        built.update({verb.upper(): _hello(extended) for verb, extended in hello.items()})
        table = _TABLES[key] = MappingProxyType(built)
    return table


def parseCommand(
    line: bytes, extensionVerbs: frozenset[str] = frozenset(), parsers: Parsers = _PARSERS
) -> E.Event:
    """
    Parse one command line (without its line ending).  C{extensionVerbs}
    are verbs that extensions add; they become L{E.ExtensionCommand}.
    C{parsers}: the verbs of the protocol (L{parsersFor}); SMTP's by default.
    """
    if b"\x00" in line:
        raise CommandSyntaxError(R.BAD_ENCODING)
    if line.isascii():
        verb, _, arg = line.decode("ascii").partition(" ")
    else:
        try:
            verb, _, arg = line.decode("utf-8").partition(" ")
        except UnicodeDecodeError:
            raise CommandSyntaxError(R.BAD_ENCODING) from None
        if not verb.isascii():
            # verbs are ASCII: "\u017fTARTTLS".upper() is STARTTLS, but no verb
            raise CommandSyntaxError(R.UNRECOGNIZED)
    verb = verb.upper()
    parser = parsers.get(verb)
    if parser is not None:
        return parser(arg)
    if verb in extensionVerbs:
        return E.ExtensionCommand(verb, arg.strip())
    if verb in OBSOLETE:
        raise CommandSyntaxError(R.NOT_IMPLEMENTED)
    raise CommandSyntaxError(R.UNRECOGNIZED)


_LINE_CACHE_SIZE = 1024
_SAME_EVERY_TIME = frozenset({E.Hello, E.MailFrom, E.RcptTo, E.Data, E.Rset, E.Quit, E.StartTLS})
"""
The events a line always parses to, whoever sends it: remembered by
L{LineParser}.  Never an extension's command (AUTH's line carries
credentials) nor VRFY/EXPN/NOOP/HELP (their text is the client's to vary).
"""


class LineParser:
    """
    L{parseCommand} for one verb table and one set of extension verbs,
    remembering the event of each line seen recently that parses the same
    for every session (L{_SAME_EVERY_TIME}: C{MAIL FROM:<a@b>}, C{RCPT TO:...},
    C{EHLO name}, C{DATA}, C{QUIT} ...): the next identical line costs one
    dictionary lookup.  Events are frozen, so sessions may share them.  At
    most L{_LINE_CACHE_SIZE} lines are kept (all forgotten when full).
    Shared by every session of a listener (L{lineParserFor}).
    """

    __slots__ = ("_events", "extensionVerbs", "parsers")

    def __init__(self, parsers: Parsers, extensionVerbs: frozenset[str]) -> None:
        self.parsers = parsers
        self.extensionVerbs = extensionVerbs
        self._events: dict[bytes, E.Event] = {}

    def __call__(self, line: bytes) -> E.Event:
        """The event of C{line}; raises L{CommandSyntaxError} as L{parseCommand} does."""
        event = self._events.get(line)
        if event is None:
            event = parseCommand(line, self.extensionVerbs, self.parsers)
            if type(event) in _SAME_EVERY_TIME:
                events = self._events
                if len(events) >= _LINE_CACHE_SIZE:
                    events.clear()
                events[line] = event
        return event


_LINE_PARSERS: dict[tuple[int, frozenset[str]], LineParser] = {}


def lineParserFor(parsers: Parsers, extensionVerbs: frozenset[str]) -> LineParser:
    """
    The L{LineParser} of a verb table (one of L{parsersFor}'s, which live as
    long as the process) and a set of extension verbs, made once.
    """
    key = (id(parsers), extensionVerbs)
    parser = _LINE_PARSERS.get(key)
    if parser is None or parser.parsers is not parsers:
        if len(_LINE_PARSERS) >= 64:
            _LINE_PARSERS.clear()
        parser = _LINE_PARSERS[key] = LineParser(parsers, extensionVerbs)
    return parser


def decodeXtext(text: str) -> str:
    """RFC 3461 4: C{+XX} hex escapes to characters; raises ValueError."""
    raw = text.encode("ascii")
    if b"+" in raw:
        if re.search(rb"\+(?![0-9A-F]{2})", raw):
            raise ValueError(f"bad xtext: {text!r}")
        raw = _XTEXT_RE.sub(lambda m: bytes([int(m.group(1), 16)]), raw)
    return raw.decode("utf-8")


def encodeXtext(text: str) -> str:
    """RFC 3461 4: characters outside 33..126, C{+} and C{=} as C{+XX}."""
    out = []
    for byte in text.encode("utf-8"):
        if 33 <= byte <= 126 and byte not in (0x2B, 0x3D):
            out.append(chr(byte))
        else:
            out.append(f"+{byte:02X}")
    return "".join(out)
