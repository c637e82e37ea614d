"""
L{VirtualMap}: virtual aliases in the style of Postfix's virtual(5),
applied before the local aliases; re-read when the file changes.

The format, one entry a line (a line starting with space continues the one
before; C{#} starts a comment line)::

    example.com              anything         # a virtual alias domain
    info@example.com         alice@example.org, bob
    sales@example.com        sales-team@partner.example
    @example.com             catchall@example.org
    postmaster@example.com   postmaster

A key is an address (C{user@domain}), a catch-all (C{@domain}), or a
domain name alone: that declares a I{virtual alias domain} (the value is
ignored; Postfix's convention).  A virtual alias domain becomes a local
domain (L{ILocalDomains}, read once at start), and an address of it that no
entry matches is refused with C{550 5.1.1}, as Postfix does; other domains
of the keys are rewritten only where they are local otherwise (C{--domain}).
Targets are addresses, separated by commas or spaces; a bare name is an
address at the server's host name (Postfix's myorigin).

Lookup, for C{user+ext@domain} (with subaddress C{separators}): the whole
address, then C{user@domain}, then C{@domain}; when the extension was not
part of the key that matched, it is added to each target's local part that
has none (C{joe@x} -> C{joe+ext@x}: Postfix's propagate_unmatched_extensions).
Every target is looked up again (recursively, whatever its domain), except
an address that an entry lists for itself (C{joe@x  joe@x, copy@y}): that
one is final.  An address reached again through others is a loop,
refused with C{554 5.4.6}; expansion stops at L{MAX_DEPTH} levels.
Targets of domains that are not local are forwarded through the queue; so
without one (C{forwarding} false) such a target does not load.

Owns: the format, lookup order, expansion.  Must not: import
mailframe.server; deliver anything.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from mailframe.address import MAX_LOCAL_PART, Address, AddressError, Domain, parseMailbox
from mailframe.envelope import Envelope, Recipient, SessionInfo
from mailframe.interfaces import ILocalDomains, IRecipientRewriter, IRecipientValidator
from mailframe.reply import Reply, SMTPError
from mailframe.validators._watch import FileReader, WatchedFiles
from mailframe.validators.subaddress import checkSeparators, splitDetail

__all__ = ["MAX_DEPTH", "VirtualEntry", "VirtualMap", "VirtualTable", "parseVirtual"]

log = Logger(namespace="mailframe.validators")

MAX_DEPTH = 20
"""The deepest a virtual address may expand through others."""

_MAX_ERRORS = 5
_TOKENS_RE = re.compile(r"[^\s,]+")
_UNKNOWN = Reply(550, (5, 1, 1), "User unknown in virtual alias table")

_Key = tuple[str, str]


def _key(address: Address) -> _Key:
    domain = address.domain.key if address.domain is not None else ""
    return (address.localPart.lower(), domain)


@dataclass(frozen=True)
class VirtualEntry:
    """One entry: its key as written, its targets, and where it is."""

    key: str
    targets: tuple[Address, ...]
    where: str


@dataclass(frozen=True)
class VirtualTable:
    """
    The entries of a virtual map: by address key, catch-alls by domain key,
    and the virtual alias domains (their names, and keys).
    """

    addresses: Mapping[_Key, VirtualEntry]
    catchAll: Mapping[str, VirtualEntry]
    domains: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def domainKeys(self) -> frozenset[str]:
        return frozenset(Domain(d).key for d in self.domains)

    def __len__(self) -> int:
        return len(self.addresses) + len(self.catchAll)


def parseVirtual(
    data: bytes,
    path: str,
    origin: str,
    forwarding: bool = True,
    isLocal: Callable[[Domain], bool] | None = None,
) -> VirtualTable:
    """
    The entries in C{data} (the contents of the file C{path}).

    @param origin: the domain of bare names among the targets.
    @param forwarding: targets of other domains may be forwarded; if not,
        and C{isLocal} is given, they are errors.
    @raise ValueError: naming the file and line of each problem (at most five).
    """
    errors: list[str] = []
    warnings: list[str] = []
    lines: list[tuple[int, str]] = []
    for number, raw in enumerate(data.split(b"\n"), 1):
        try:
            line = raw.decode("utf-8").rstrip("\r").lstrip("\ufeff")
        except UnicodeDecodeError:
            errors.append(f"{path}:{number}: not UTF-8")
            continue
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0] in " \t":
            if not lines:
                errors.append(f"{path}:{number}: a continuation line with no entry before it")
            else:
                lines[-1] = (lines[-1][0], f"{lines[-1][1]} {line.strip()}")
            continue
        lines.append((number, line.strip()))

    domains: dict[str, str] = {}  # key -> name
    raw_entries: list[tuple[str, str, list[str]]] = []
    for number, text in lines:
        where = f"{path}:{number}"
        key, _, rest = text.partition(" ") if " " in text else text.partition("\t")
        key = key.rstrip(":")
        tokens = _TOKENS_RE.findall(rest)
        if not tokens:
            errors.append(f"{where}: {key[:80]!r} has no targets")
            continue
        if "@" not in key:
            try:
                if "." not in key.rstrip("."):  # Postfix's bare user keys are not supported
                    raise AddressError(key)
                domain = Domain.parse(key.rstrip("."))
            except AddressError:
                errors.append(f"{where}: a key is user@domain, @domain or a domain, "
                              f"not {key[:80]!r}")  # fmt: skip
                continue
            domains.setdefault(domain.key, domain.name)
            continue
        raw_entries.append((where, key, tokens))

    def local(domain: Domain) -> bool:
        return domain.key in domains or (isLocal is not None and isLocal(domain))

    addresses: dict[_Key, VirtualEntry] = {}
    catchAll: dict[str, VirtualEntry] = {}
    for where, key, tokens in raw_entries:
        targets: list[Address] = []
        for token in tokens:
            text = token[1:-1] if token.startswith("<") and token.endswith(">") else token
            try:
                address = parseMailbox(text if "@" in text else f"{text}@{origin}")
            except AddressError:
                errors.append(f"{where}: not an address: {token[:80]!r}")
                continue
            targetDomain = address.domain
            assert targetDomain is not None
            if not forwarding and isLocal is not None and not local(targetDomain):
                errors.append(
                    f"{where}: {address} is not in a local domain: forwarding needs the "
                    "queue (spool; or list its domain with --domain)"
                )
                continue
            targets.append(address)
        try:
            if key.startswith("@"):
                dkey = Domain.parse(key[1:].rstrip(".")).key
                table: dict[Any, VirtualEntry] = catchAll
                k: Any = dkey
            else:
                k = _key(parseMailbox(key))
                table = addresses
        except AddressError:
            errors.append(f"{where}: not an address or @domain: {key[:80]!r}")
            continue
        if k in table:
            warnings.append(f"{where}: {key} is defined again (the first, at "
                            f"{table[k].where}, is used)")  # fmt: skip
            continue
        table[k] = VirtualEntry(key, tuple(targets), where)
    if errors:
        more = len(errors) - _MAX_ERRORS
        shown = errors[:_MAX_ERRORS] + ([f"and {more} more"] if more > 0 else [])
        raise ValueError("; ".join(shown))
    for dkey, name in domains.items():
        if ("postmaster", dkey) not in addresses and dkey not in catchAll:
            warnings.append(f"{path}: the virtual alias domain {name} has no postmaster entry "
                            "(RFC 5321 4.5.1 wants one)")  # fmt: skip
    return VirtualTable(addresses, catchAll, tuple(domains.values()), tuple(warnings))


@implementer(IRecipientValidator, IRecipientRewriter, ILocalDomains)
class VirtualMap:
    """
    The virtual aliases of the file C{path} (see the module docstring), as
    a recipient rewriter; no opinion as a validator.  Its virtual alias
    domains (as the file had them at start) are local domains.

    @param origin: the domain of bare names among the targets (the host name).
    @param separators: subaddress separators (C{"+"}), or "" for none.
    @param forwarding: whether targets of other domains can be forwarded.
    @param isLocal: tells the local domains, for checking targets when
        there is no queue.
    @raise ValueError: one line, if the file cannot be read or has errors.
    """

    def __init__(
        self,
        clock: IReactorTime,
        path: str,
        origin: str,
        separators: str = "",
        forwarding: bool = True,
        isLocal: Callable[[Domain], bool] | None = None,
    ) -> None:
        self.path = path
        self.origin = origin
        self.separators = checkSeparators(separators) if separators else ""
        self.forwarding = forwarding
        self.isLocal = isLocal
        self.watched = WatchedFiles(
            clock, self._load, f"virtual map {path}", lambda t: f"{len(t)} entries loaded"
        )
        self.domains: tuple[str, ...] = self.watched.value.domains

    def _load(self, reader: FileReader) -> VirtualTable:
        table = parseVirtual(reader.read(self.path), self.path, self.origin, self.forwarding,
                             self.isLocal)  # fmt: skip
        for warning in table.warnings:
            log.warn("virtual map: {problem}", problem=warning)
        return table

    @property
    def table(self) -> VirtualTable:
        """The entries in force (read again first if the file changed)."""
        return self.watched.check()

    def validateRecipient(
        self, session: SessionInfo, envelope: Envelope, recipient: Recipient
    ) -> None:
        return None

    def lookup(self, address: Address, table: VirtualTable | None = None) -> list[Address] | None:
        """
        The targets of C{address} (the extension added where it was not
        matched), or None if no entry matches.

        @raise SMTPError: 550 5.1.1 for an unmatched address of a virtual
            alias domain.
        """
        found = self.entryFor(address, table)
        if found is None:
            return None
        entry, extension = found
        if extension is None:
            return list(entry.targets)
        return [_extended(t, extension, self.separators) for t in entry.targets]

    def entryFor(
        self, address: Address, table: VirtualTable | None = None
    ) -> tuple[VirtualEntry, tuple[str, str] | None] | None:
        """
        The entry that matches C{address}, and the extension (separator,
        detail) not part of its key; None if none matches.

        @raise SMTPError: 550 5.1.1 for an unmatched address of a virtual
            alias domain.
        """
        table = table or self.table
        if address.domain is None:
            return None
        key = _key(address)
        entry = table.addresses.get(key)
        extension: tuple[str, str] | None = None
        if entry is None:
            split = splitDetail(address.localPart, self.separators)
            if split is not None:
                entry = table.addresses.get((split[0].lower(), key[1]))
                extension = (address.localPart[len(split[0])], split[1])
            if entry is None:
                entry = table.catchAll.get(key[1])
        if entry is None:
            if key[1] in table.domainKeys:
                raise SMTPError(_UNKNOWN)
            return None
        return entry, extension

    def rewriteRecipient(
        self, session: SessionInfo, envelope: Envelope, recipient: Recipient
    ) -> list[Recipient] | None:
        table = self.table
        start = recipient.address
        first = self.lookup(start, table)
        if first is None:
            return None
        out: list[Recipient] = []

        def walk(address: Address, targets: list[Address], chain: tuple[_Key, ...]) -> None:
            for target in targets:
                key = _key(target)
                if key == chain[-1]:
                    out.append(Recipient(target))  # listed for itself: final
                    continue
                found = self.lookup(target, table)
                if found is None:
                    out.append(Recipient(target))
                    continue
                if key in chain or len(chain) >= MAX_DEPTH:
                    log.warn(
                        "virtual map: loop at {target} ({chain}); mail to {start} is refused",
                        target=target,
                        chain=" -> ".join("@".join(k) for k in (*chain, key)),
                        start=start,
                    )
                    raise SMTPError(Reply(554, (5, 4, 6), f"Virtual alias loop for {start}"))
                walk(target, found, (*chain, key))

        walk(start, first, (_key(start),))
        return out

    def __repr__(self) -> str:
        return f"VirtualMap({self.path!r})"


def _extended(target: Address, extension: tuple[str, str], separators: str) -> Address:
    """C{target} with C{+ext} added to its local part, unless it has one or would be too long."""
    local = target.localPart
    if splitDetail(local, separators) is not None:
        return target
    extended = f"{local}{extension[0]}{extension[1]}"
    if len(extended.encode("utf-8")) > MAX_LOCAL_PART:
        return target
    return Address(extended, target.domain)
