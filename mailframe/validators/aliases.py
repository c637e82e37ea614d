"""
L{AliasMap}: local aliases in the format of C{/etc/aliases} (aliases(5)
of sendmail and Postfix), applied to the recipients of every local domain
before the validators judge them; re-read when the file or one of its
C{:include:} files changes.

The format::

    # a comment
    postmaster: root
    root:       alice
    team:       alice, bob,
                carol@example.net         # a continuation line starts with space
    list:       :include:/etc/mail/list-members
    alice:      \\alice, alice@example.org  # \\ delivers without aliasing again
    nobody:     /dev/null                 # accepted, delivered nowhere

A name is a local part, compared case-insensitively, and applies to every
local domain (C{team@example.com} and C{team@example.org} alike).  A target
is:

  - a local name (C{bob}): the address C{bob@} the recipient's domain,
    looked up again in the aliases (recursively);
  - C{\\name}: the same, not looked up again;
  - an address (C{bob@example.net}): delivered or forwarded as it is, not
    looked up again (write a local name to have it expanded);
  - C{:include:PATH}: the targets listed in the file PATH (commas or new
    lines between them, C{#} comments; relative to the alias file's
    directory), which may include others;
  - C{/dev/null}: nothing (the recipient is accepted and discarded).

Program (C{|command}) and file (C{/path}) targets are not supported: a
line with one does not load (deliver to a program with
C{--deliver pipe:...}).  An address of a domain that is not local is
forwarded through the queue, so without one (C{forwarding} false) such a
target does not load either.

Loops: a name that lists itself (C{alice: alice, alice@example.org}) is
delivered to its own mailbox there, as sendmail and Postfix do; a name
reached again through others (C{a: b}, C{b: a}) is a loop: the recipient is
refused with C{554 5.4.6}, and the load logs the loop.  Expansion stops at
L{MAX_DEPTH} levels.  An alias that expands to nobody without
C{/dev/null} (an empty include file) is refused with C{550 5.1.1}.

Subaddresses (with C{separators}): C{team+news} is looked up as
C{team+news}, then as C{team}; the detail (C{news}) is kept on the local
targets.  owner- and -request: C{owner-team} and C{team-request} are
ordinary names, never split at a C{-} separator (Postfix's
owner_request_special); mailframe does not make C{owner-team} the envelope
sender of the copies of C{team} (a queued message has one sender: the
original sender gets the reports).

Owns: the format, expansion, loops.  Must not: import mailframe.server;
deliver anything.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from mailframe.address import Address, AddressError, Domain, parseMailbox
from mailframe.envelope import Envelope, Recipient, SessionInfo
from mailframe.interfaces import IRecipientRewriter, IRecipientValidator
from mailframe.reply import Reply, SMTPError
from mailframe.validators._watch import FileReader, WatchedFiles
from mailframe.validators.subaddress import checkSeparators, splitDetail

__all__ = ["MAX_DEPTH", "AliasEntry", "AliasMap", "AliasTable", "Name", "parseAliases"]

log = Logger(namespace="mailframe.validators")

MAX_DEPTH = 20
"""The deepest an alias may expand through others."""
MAX_INCLUDES = 10
"""The deepest C{:include:} files may nest."""

_MAX_ERRORS = 5
_NAME_RE = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010ffff]+"
                      r"(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010ffff]+)*\Z")  # fmt: skip
_SPLIT_RE = re.compile(r'((?:"[^"]*"|[^,"])+)')


@dataclass(frozen=True)
class Name:
    """A local-name target: C{name}; C{final} for C{\\name} (not looked up again)."""

    name: str
    final: bool = False


class _Discard:
    def __repr__(self) -> str:
        return "/dev/null"


DISCARD = _Discard()
"""The C{/dev/null} target."""

Target = Name | Address | _Discard


@dataclass(frozen=True)
class AliasEntry:
    """One alias: its C{name} as written, its targets (includes read), and where it is."""

    name: str
    targets: tuple[Target, ...]
    where: str

    @property
    def key(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class AliasTable:
    """The aliases of a file by lowercased name, and what its load found worth a warning."""

    entries: Mapping[str, AliasEntry]
    warnings: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.entries)


_LOOP = (554, (5, 4, 6))


class _Parser:
    """Parses one alias file and its includes."""

    def __init__(
        self,
        reader: FileReader,
        path: str,
        forwarding: bool,
        isLocal: Callable[[Domain], bool] | None,
    ) -> None:
        self.reader = reader
        self.path = path
        self.forwarding = forwarding
        self.isLocal = isLocal
        self.errors: list[str] = []
        self.warnings: list[str] = []

    def error(self, where: str, message: str) -> None:
        self.errors.append(f"{where}: {message}")

    def target(self, token: str, where: str, includes: tuple[str, ...]) -> list[Target]:
        token = token.strip()
        if token.startswith('"') and token.endswith('"') and len(token) >= 2:
            token = token[1:-1].strip()
        if not token:
            return []
        if token[:9].lower() == ":include:":
            return self.include(token[9:].strip(), where, includes)
        if token.startswith("|"):
            self.error(where, f"program targets ({token[:40]}) are not supported: "
                              "deliver to a program with --deliver pipe:...")  # fmt: skip
            return []
        if token == "/dev/null":
            return [DISCARD]
        if token.startswith("/"):
            self.error(where, f"file targets ({token[:40]}) are not supported")
            return []
        if token.startswith("<") and token.endswith(">"):
            token = token[1:-1]
        if token.startswith("\\"):
            name = token[1:]
            if not _NAME_RE.match(name):
                self.error(where, f"not a local name: {token[:80]!r}")
                return []
            return [Name(name, final=True)]
        if "@" in token:
            try:
                address = parseMailbox(token)
            except AddressError:
                self.error(where, f"not an address: {token[:80]!r}")
                return []
            domain = address.domain
            assert domain is not None
            if not self.forwarding and self.isLocal is not None and not self.isLocal(domain):
                self.error(where, f"{token} is not in a local domain: forwarding needs the "
                                  "queue (spool; or list its domain with --domain)")  # fmt: skip
                return []
            return [address]
        if not _NAME_RE.match(token):
            self.error(where, f"not a local name or address: {token[:80]!r}")
            return []
        return [Name(token)]

    def targets(self, text: str, where: str, includes: tuple[str, ...]) -> list[Target]:
        out: list[Target] = []
        for token in _SPLIT_RE.findall(text):
            out.extend(self.target(token, where, includes))
        if text.count('"') % 2:
            self.error(where, "unbalanced quotes")
        return out

    def include(self, path: str, where: str, includes: tuple[str, ...]) -> list[Target]:
        if not path:
            self.error(where, ":include: needs a file name")
            return []
        base = os.path.dirname(includes[-1] if includes else self.path)
        path = os.path.normpath(os.path.join(base, os.path.expanduser(path)))
        if path in includes or path == self.path:
            self.error(where, f"{path} includes itself")
            return []
        if len(includes) >= MAX_INCLUDES:
            self.error(where, f"includes nest deeper than {MAX_INCLUDES}")
            return []
        data = self.reader.read(path)  # OSError: the load fails, naming the file
        out: list[Target] = []
        for number, raw in enumerate(data.split(b"\n"), 1):
            line = self.decode(raw, f"{path}:{number}")
            if line is None:
                continue
            line = line.strip()
            if line and not line.startswith("#"):
                out.extend(self.targets(line, f"{path}:{number}", (*includes, path)))
        return out

    def decode(self, raw: bytes, where: str) -> str | None:
        try:
            return raw.decode("utf-8").rstrip("\r").lstrip("\ufeff")
        except UnicodeDecodeError:
            self.error(where, "not UTF-8")
            return None

    def parse(self, data: bytes) -> AliasTable:
        entries: dict[str, AliasEntry] = {}
        for start, text in self.logicalLines(data):
            where = f"{self.path}:{start}"
            name, colon, value = _partitionKey(text)
            name = name.strip()
            if not colon:
                self.error(where, f"expected 'name: target, ...', not {text[:80]!r}")
                continue
            if name.startswith('"') and name.endswith('"') and len(name) >= 2:
                name = name[1:-1]
            if "@" in name:
                self.error(where, f"an alias name is a local part, not {name[:80]!r} "
                                  "(user@domain keys go in a virtual map: --virtual)")  # fmt: skip
                continue
            if not _NAME_RE.match(name):
                self.error(where, f"not a local name: {name[:80]!r}")
                continue
            if not value.strip():
                self.error(where, f"{name} has no targets")
                continue
            targets = self.targets(value, where, ())
            if not targets:
                self.warnings.append(f"{where}: {name} expands to nobody (mail to it is refused)")
            entry = AliasEntry(name, tuple(targets), where)
            if entry.key in entries:
                self.warnings.append(
                    f"{where}: {name} is defined again (the first, at "
                    f"{entries[entry.key].where}, is used)"
                )
                continue
            entries[entry.key] = entry
        if self.errors:
            more = len(self.errors) - _MAX_ERRORS
            shown = self.errors[:_MAX_ERRORS] + ([f"and {more} more"] if more > 0 else [])
            raise ValueError("; ".join(shown))
        return AliasTable(entries, (*self.warnings, *_loops(entries)))

    def logicalLines(self, data: bytes) -> list[tuple[int, str]]:
        """(first line number, text) of each entry: a line and its continuation lines."""
        out: list[tuple[int, str]] = []
        for number, raw in enumerate(data.split(b"\n"), 1):
            line = self.decode(raw, f"{self.path}:{number}")
            if line is None:
                continue
            if not line.strip() or line.lstrip().startswith("#"):
                if not line.strip() and out:
                    out.append((0, ""))  # a blank line ends an entry
                continue
            if line[0] in " \t" and out and out[-1][0]:
                start, text = out[-1]
                out[-1] = (start, f"{text} {line.strip()}")
            elif line[0] in " \t":
                self.error(f"{self.path}:{number}", "a continuation line with no entry before it")
            else:
                out.append((number, line.strip()))
        return [(n, t) for n, t in out if n]


def _partitionKey(text: str) -> tuple[str, str, str]:
    """Split at the first colon outside quotes."""
    quoted = False
    for i, c in enumerate(text):
        if c == '"':
            quoted = not quoted
        elif c == ":" and not quoted:
            return text[:i], ":", text[i + 1 :]
    return text, "", ""


def _loops(entries: Mapping[str, AliasEntry]) -> list[str]:
    """A warning for each loop among the names (a name that lists itself is no loop)."""
    found: list[str] = []
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(key: str, path: list[str]) -> None:
        state[key] = 1
        path.append(key)
        for t in entries[key].targets:
            if not isinstance(t, Name) or t.final:
                continue
            nxt = t.name.lower()
            if nxt == key or nxt not in entries:
                continue
            if state.get(nxt) == 1:
                cycle = [*path[path.index(nxt) :], nxt]
                found.append(f"alias loop: {' -> '.join(cycle)} (mail to them is refused)")
            elif nxt not in state:
                visit(nxt, path)
        path.pop()
        state[key] = 2

    for key in entries:
        if key not in state:
            visit(key, [])
    return found


def parseAliases(
    data: bytes,
    path: str,
    reader: FileReader | None = None,
    forwarding: bool = True,
    isLocal: Callable[[Domain], bool] | None = None,
) -> AliasTable:
    """
    The aliases in C{data} (the contents of the file C{path}), includes read
    with C{reader}.

    @param forwarding: addresses of other domains may be targets (the queue
        forwards them); if not, and C{isLocal} is given, they are errors.
    @raise ValueError: naming the file and line of each problem (at most five).
    @raise OSError: for an include file that cannot be read.
    """
    parser = _Parser(reader or FileReader(), path, forwarding, isLocal)
    return parser.parse(data)


@implementer(IRecipientValidator, IRecipientRewriter)
class AliasMap:
    """
    The aliases of the file C{path} (see the module docstring), as a
    recipient rewriter; no opinion as a validator.

    @param clock: times the checks for changes.
    @param separators: subaddress separators (C{"+"}), or "" for none.
    @param forwarding: whether targets of other domains can be forwarded
        (the server has a queue).
    @param isLocal: tells the local domains, for checking targets when
        there is no queue.
    @raise ValueError: one line, if the file cannot be read or has errors.
    """

    def __init__(
        self,
        clock: IReactorTime,
        path: str,
        separators: str = "",
        forwarding: bool = True,
        isLocal: Callable[[Domain], bool] | None = None,
    ) -> None:
        self.path = path
        self.separators = checkSeparators(separators) if separators else ""
        self.forwarding = forwarding
        self.isLocal = isLocal
        self.watched = WatchedFiles(
            clock, self._load, f"aliases {path}", lambda t: f"{len(t)} aliases loaded"
        )

    def _load(self, reader: FileReader) -> AliasTable:
        table = parseAliases(reader.read(self.path), self.path, reader, self.forwarding,
                             self.isLocal)  # fmt: skip
        for warning in table.warnings:
            log.warn("aliases: {problem}", problem=warning)
        return table

    @property
    def table(self) -> AliasTable:
        """The aliases in force (read again first if the files changed)."""
        return self.watched.check()

    def entryFor(self, localPart: str) -> tuple[AliasEntry, str | None] | None:
        """The alias for C{localPart}, and the detail taken off to find it (or None)."""
        entries = self.table.entries
        entry = entries.get(localPart.lower())
        if entry is not None:
            return entry, None
        split = splitDetail(localPart, self.separators)
        if split is not None:
            entry = entries.get(split[0].lower())
            if entry is not None:
                return entry, split[1]
        return None

    def validateRecipient(
        self, session: SessionInfo, envelope: Envelope, recipient: Recipient
    ) -> None:
        return None

    def rewriteRecipient(
        self, session: SessionInfo, envelope: Envelope, recipient: Recipient
    ) -> list[Recipient] | None:
        found = self.entryFor(recipient.address.localPart)
        if found is None:
            return None
        entry, detail = found
        return self.expand(entry, recipient.address.domain, detail or recipient.detail)

    def expand(
        self, entry: AliasEntry, domain: Domain | None, detail: str | None = None
    ) -> list[Recipient]:
        """
        The recipients C{entry} stands for at C{domain}.

        @raise SMTPError: 554 5.4.6 for a loop, 550 5.1.1 for nobody.
        """
        entries = self.table.entries
        out: list[Recipient] = []
        discarded = False

        def walk(current: AliasEntry, chain: tuple[str, ...]) -> None:
            nonlocal discarded
            for t in current.targets:
                if isinstance(t, Address):
                    out.append(Recipient(t))
                    continue
                if not isinstance(t, Name):
                    discarded = True
                    continue
                key = t.name.lower()
                found = None if t.final or key == current.key else entries.get(key)
                if found is None:
                    out.append(Recipient(Address(t.name, domain), detail=detail))
                    continue
                if key in chain or len(chain) >= MAX_DEPTH:
                    log.warn(
                        "aliases: loop at {name} ({chain}); mail to {alias} is refused",
                        name=t.name,
                        chain=" -> ".join((*chain, key)),
                        alias=entry.name,
                    )
                    raise SMTPError(Reply(*_LOOP, f"Alias loop for {entry.name}"))
                walk(found, (*chain, key))

        walk(entry, (entry.key,))
        if not out and not discarded:
            raise SMTPError(Reply(550, (5, 1, 1), f"The alias {entry.name} has no members"))
        return out

    def __repr__(self) -> str:
        return f"AliasMap({self.path!r})"
