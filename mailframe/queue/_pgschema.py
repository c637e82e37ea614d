"""
The PostgreSQL queue's schema, versioned: L{MIGRATIONS} in order, and
L{migrate}, which brings a database up to L{VERSION} (run by every node
at start, under an advisory lock, so that nodes starting together apply
each step once).

Tables (prefix C{mailframe_}):

  - C{schema}: the versions applied;
  - C{message}: one row per queued message: its envelope (the JSON of
    L{mailframe.queue.entry.QueueEntry} without its recipients), its data
    (bytea), the next attempt, the hold, the node that accepted it, and
    the lease: the node that holds it (C{lease_owner}) until
    C{lease_until} (the database's clock);
  - C{recipient}: one row per recipient, its state (C{pending},
    C{delivered}, C{relayed}, C{failed}) and its JSON;
  - C{node}: each node, when it started and was last seen;
  - C{control}: cluster-wide counters (C{flush}: a flush asked for).

Owns: the SQL of the schema.  Must not: import twisted (it runs in a
database thread) or know about leases' policy (the store does).
"""

from __future__ import annotations

from typing import Any

__all__ = ["MIGRATIONS", "VERSION", "SchemaError", "migrate"]

_LOCK_KEY = 0x6D66_7175  # "mfqu": the advisory lock of migrations

MIGRATIONS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (
        1,
        (
            """CREATE TABLE mailframe_message (
                id text PRIMARY KEY,
                sender text NOT NULL,
                envelope jsonb NOT NULL,
                data bytea NOT NULL,
                size bigint NOT NULL,
                arrival double precision NOT NULL,
                next_attempt double precision NOT NULL,
                held boolean NOT NULL DEFAULT false,
                report boolean NOT NULL DEFAULT false,
                accepted_by text NOT NULL,
                accepted_at timestamptz NOT NULL DEFAULT now(),
                lease_owner text,
                lease_until timestamptz
            )""",
            "CREATE INDEX mailframe_message_due ON mailframe_message (next_attempt) "
            "WHERE NOT held",
            "CREATE INDEX mailframe_message_owner ON mailframe_message (lease_owner)",
            """CREATE TABLE mailframe_recipient (
                message_id text NOT NULL REFERENCES mailframe_message (id) ON DELETE CASCADE,
                position integer NOT NULL,
                address text NOT NULL,
                state text NOT NULL,
                data jsonb NOT NULL,
                PRIMARY KEY (message_id, position)
            )""",
            """CREATE TABLE mailframe_node (
                name text PRIMARY KEY,
                started timestamptz NOT NULL DEFAULT now(),
                seen timestamptz NOT NULL DEFAULT now()
            )""",
            """CREATE TABLE mailframe_control (
                key text PRIMARY KEY,
                value bigint NOT NULL
            )""",
            "INSERT INTO mailframe_control (key, value) VALUES ('flush', 0)",
        ),
    ),
)

VERSION = MIGRATIONS[-1][0]
"""The schema version this mailframe writes."""


class SchemaError(Exception):
    """A database this mailframe cannot use (a newer schema); one line."""


def migrate(conn: Any) -> list[int]:
    """
    Blocking: create or upgrade the schema on the psycopg connection
    C{conn} (autocommit), in one transaction.  @return: the versions
    applied.  @raise SchemaError: the database is newer than this mailframe.
    """
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS mailframe_schema ("
            "version integer PRIMARY KEY, applied timestamptz NOT NULL DEFAULT now())"
        )
        row = conn.execute("SELECT max(version) FROM mailframe_schema").fetchone()
        current = (row[0] if row else None) or 0
        if current > VERSION:
            raise SchemaError(
                f"the database has queue schema version {current}; this mailframe knows "
                f"{VERSION} at most (upgrade mailframe)"
            )
        applied = []
        for version, statements in MIGRATIONS:
            if version <= current:
                continue
            for statement in statements:
                conn.execute(statement)
            conn.execute("INSERT INTO mailframe_schema (version) VALUES (%s)", (version,))
            applied.append(version)
    return applied
