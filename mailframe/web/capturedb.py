"""
Capture mode's SQLite file (C{capture-store sqlite:PATH}): the messages of a
L{mailframe.web.capture.CaptureStore} kept in one table, so that they
survive a restart.

One row per message: its place in the order of arrival (C{seq}), ID,
mailbox, arrival time, subject and size (so that the index is loaded and
searched without the bytes), the envelope with the facts of its session as
JSON (L{envelopeToJSON}), and the message as a BLOB, read only when the
message itself is (L{CaptureDatabase.read}).  The schema's version is the
file's C{PRAGMA user_version}: a file of another version is refused, never
rewritten.

Every call is synchronous, made in the reactor thread, and small: the file
is in WAL mode with C{synchronous=NORMAL}, so keeping a message is one
append to the write-ahead log, without an fsync (some 0.1-0.3 ms for a
message of a few KiB; the fsyncs come with SQLite's checkpoint, every 4 MiB
or so).  A crash of mailframe loses nothing committed; a power failure may
lose the last messages.  A message of tens of MiB holds the reactor for a
fraction of a second (35 MiB: about half a second, checkpoint included),
and a lock held by another program for up to C{timeout}: a fair price for
a development tool, which this is, in exchange for one order of writes and
no threads.  Every error is a L{CaptureDatabaseError}, one line naming the
file.

Owns: the file, its schema, the JSON of an envelope.  Must not: import
twisted, mailframe.server or mailframe.app; know the store's limits.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from mailframe.address import Address, AddressError, parseMailbox
from mailframe.envelope import Envelope, Recipient, SessionSnapshot, TLSInfo

__all__ = [
    "SCHEMA_VERSION",
    "CaptureDatabase",
    "CaptureDatabaseError",
    "StoredMessage",
    "envelopeFromJSON",
    "envelopeToJSON",
    "parseStore",
]

SCHEMA_VERSION = 1
"""The version of the table this mailframe writes and reads (C{PRAGMA user_version})."""

_SCHEMA = """
CREATE TABLE messages (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    mailbox TEXT NOT NULL,
    arrived REAL NOT NULL,
    subject TEXT NOT NULL,
    size INTEGER NOT NULL,
    envelope TEXT NOT NULL,
    data BLOB NOT NULL
)
"""
# data last: the other columns of a row are read without the message's pages

_SESSION_FIELDS = (
    "sessionID",
    "peerHost",
    "peerPort",
    "localHost",
    "localPort",
    "hostname",
    "listener",
    "heloName",
    "protocol",
    "authenticated",
    "authMechanism",
    "peerName",
)


class CaptureDatabaseError(Exception):
    """The capture database could not be opened, read or written (one line, naming the file)."""


def parseStore(text: str) -> str | None:
    """
    The value of C{capture-store}: None for C{memory}, the path for
    C{sqlite:PATH}; ValueError (one line) for anything else.
    """
    kind, colon, path = text.strip().partition(":")
    if kind == "memory" and not colon:
        return None
    if kind == "sqlite" and path.strip():
        return path.strip()
    raise ValueError(f"expected memory or sqlite:PATH, not {text!r}")


@dataclass(frozen=True)
class StoredMessage:
    """A row of the table without its bytes: what the store's index needs."""

    id: str
    mailbox: str
    arrived: float
    subject: str
    size: int
    envelope: Envelope


# -- the envelope as JSON -----------------------------------------------------------


def _address(text: str) -> Address:
    if not text:
        return Address.null()
    try:
        return parseMailbox(text)
    except AddressError:
        if "@" in text:
            raise
        return Address(text, None)  # the bare <Postmaster> recipient


def _params(value: Any) -> dict[str, str | None]:
    if not isinstance(value, dict):
        raise ValueError(f"parameters should be an object, not {value!r}")
    return {str(k): None if v is None else str(v) for k, v in value.items()}


def envelopeToJSON(envelope: Envelope) -> str:
    """
    C{envelope} as JSON: its sender, recipients, their parameters, queue ID,
    MAIL's AUTH= identity and the facts of its session (all but the peer's
    certificate).  What a plug-in kept with C{stateFor} and the results of
    checks are not kept.
    """
    session = envelope.session
    value: dict[str, Any] = {
        "queueID": envelope.queueID,
        "mailFrom": str(envelope.mailFrom),
        "mailParams": dict(envelope.mailParams),
        "recipients": [
            {
                "address": str(r.address),
                "params": dict(r.params),
                "original": None if r.original is None else str(r.original),
                "detail": r.detail,
            }
            for r in envelope.recipients
        ],
        "authIdentity": envelope.authIdentity,
        "session": None,
    }
    if session is not None:
        facts: dict[str, Any] = {name: getattr(session, name) for name in _SESSION_FIELDS}
        tls = session.tls
        facts["tls"] = (
            None
            if tls is None
            else {"version": tls.version, "cipher": tls.cipher, "bits": tls.bits}
        )
        value["session"] = facts
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def envelopeFromJSON(text: str) -> Envelope:
    """The envelope L{envelopeToJSON} wrote; ValueError (or KeyError) if it is not one."""
    value = json.loads(text)
    recipients = [
        Recipient(
            _address(r["address"]),
            _params(r.get("params") or {}),
            original=None if r.get("original") is None else _address(r["original"]),
            detail=r.get("detail"),
        )
        for r in value["recipients"]
    ]
    session = None
    facts = value.get("session")
    if facts is not None:
        known = {name: facts[name] for name in _SESSION_FIELDS if name in facts}
        tls = facts.get("tls")
        session = SessionSnapshot(
            **known,
            tls=None
            if tls is None
            else TLSInfo(str(tls["version"]), str(tls["cipher"]), int(tls.get("bits") or 0)),
        )
    return Envelope(
        str(value["queueID"]),
        _address(value["mailFrom"]),
        _params(value.get("mailParams") or {}),
        recipients,
        session=session,
        authIdentity=value.get("authIdentity"),
    )


# -- the file -----------------------------------------------------------------------


class CaptureDatabase:
    """
    The table of captured messages in the SQLite file C{path}, opened (and
    made, if it is new) at once.  C{timeout}: how long a write waits for a
    lock another connection holds (the reactor waits with it).

    @raise CaptureDatabaseError: if the file is not a capture database, is
        of another schema version, or cannot be written.
    """

    def __init__(
        self,
        path: str,
        timeout: float = 1.0,
        connect: Callable[..., sqlite3.Connection] = sqlite3.connect,
    ) -> None:
        self.path = os.path.abspath(path)
        with self._errors():
            self._db = connect(self.path, timeout=timeout, isolation_level=None)
        try:
            self._open()
        except BaseException:
            self._db.close()
            raise

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as e:
            raise CaptureDatabaseError(f"capture-store {self.path}: {e}") from e

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._errors():
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _refuse(self, why: str) -> CaptureDatabaseError:
        return CaptureDatabaseError(f"capture-store {self.path}: {why}")

    def _open(self) -> None:
        with self._errors():
            db = self._db
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                tables = db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                if tables.fetchall():
                    raise self._refuse("not a capture database (it has other tables)")
                with self._transaction():
                    db.execute(_SCHEMA)
                    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            elif version != SCHEMA_VERSION:
                raise self._refuse(
                    f"schema version {version}, and this mailframe reads version "
                    f"{SCHEMA_VERSION} only (a newer mailframe wrote it?)"
                )
            mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise self._refuse(f"cannot use WAL mode (journal mode {mode})")
            db.execute("PRAGMA synchronous = NORMAL")
            db.execute("PRAGMA journal_size_limit = 67108864")
            # a write now, so that a file mailframe may not write is refused at start
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            db.execute("SELECT seq, id, mailbox, arrived, subject, size, envelope, data "
                       "FROM messages LIMIT 0")  # fmt: skip

    def load(self, limit: int) -> list[StoredMessage]:
        """
        The newest C{limit} messages, oldest first, without their bytes; the
        older ones are deleted (the limit was lowered since they came).
        """
        with self._transaction() as db:
            db.execute(
                "DELETE FROM messages WHERE seq NOT IN "
                "(SELECT seq FROM messages ORDER BY seq DESC LIMIT ?)",
                (limit,),
            )
            rows = db.execute(
                "SELECT id, mailbox, arrived, subject, size, envelope FROM messages ORDER BY seq"
            ).fetchall()
        found = []
        for ident, mailbox, arrived, subject, size, envelope in rows:
            try:
                found.append(
                    StoredMessage(
                        str(ident),
                        str(mailbox),
                        float(arrived),
                        str(subject),
                        int(size),
                        envelopeFromJSON(envelope),
                    )
                )
            except (ValueError, KeyError, TypeError) as e:
                raise self._refuse(f"message {ident!r}: a bad envelope ({e})") from None
        return found

    def insert(
        self,
        ident: str,
        mailbox: str,
        arrived: float,
        subject: str,
        envelope: Envelope,
        data: bytes,
        drop: Iterable[str] = (),
    ) -> None:
        """Keep a message, and delete the messages C{drop}, in one transaction."""
        row = (ident, mailbox, arrived, subject, len(data), envelopeToJSON(envelope), data)
        with self._transaction() as db:
            db.executemany("DELETE FROM messages WHERE id = ?", ((i,) for i in drop))
            db.execute(
                "INSERT INTO messages (id, mailbox, arrived, subject, size, envelope, data) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                row,
            )

    def read(self, ident: str) -> bytes | None:
        """The bytes of message C{ident}; None if there is no such message."""
        with self._errors():
            row = self._db.execute("SELECT data FROM messages WHERE id = ?", (ident,)).fetchone()
        return None if row is None else bytes(row[0])

    def delete(self, idents: Iterable[str]) -> None:
        """Delete the messages C{idents}, in one transaction."""
        with self._transaction() as db:
            db.executemany("DELETE FROM messages WHERE id = ?", ((i,) for i in idents))

    def count(self) -> int:
        """How many messages the file holds."""
        with self._errors():
            return int(self._db.execute("SELECT count(*) FROM messages").fetchone()[0])

    def close(self) -> None:
        """Close the file (the write-ahead log is checkpointed into it)."""
        with self._errors():
            self._db.close()
