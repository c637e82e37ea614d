"""
Tests for L{mailframe.queue.location}: the C{spool} setting is a directory
or a URL, and a URL of an unknown scheme is refused in one line.
"""

from __future__ import annotations

from pathlib import Path

from twisted.python import usage
from twisted.trial import unittest

from mailframe.app import tap
from mailframe.queue.location import LocationError, PostgresLocation, parseSpool


def parse(*args: str) -> tap.Options:
    options = tap.Options()
    options.parseOptions(list(args))
    return options


class ParseSpoolTests(unittest.TestCase):
    """L{parseSpool}."""

    def test_path(self) -> None:
        """A plain path (relative, absolute, with a colon) stays a directory."""
        for text in ("spool", "/var/spool/mailframe", "./spool", "dir:with:colons"):
            self.assertEqual(parseSpool(text), text)

    def test_fileURL(self) -> None:
        """file:///PATH is the directory PATH."""
        self.assertEqual(parseSpool("file:///var/spool/mf"), "/var/spool/mf")

    def test_postgresql(self) -> None:
        """postgresql:// and postgres:// are the PostgreSQL store; the password kept apart."""
        location = parseSpool("postgres://mf:s3cret@db.example:5433/mail?sslmode=require")
        assert isinstance(location, PostgresLocation)
        self.assertEqual(location.conninfo, "postgresql://mf@db.example:5433/mail?sslmode=require")
        self.assertEqual(location.password, "s3cret")
        self.assertNotIn("s3cret", location.display)
        self.assertEqual(location.connectArgs(), {"password": "s3cret"})
        plain = parseSpool("postgresql://mf@127.0.0.1/mail")
        assert isinstance(plain, PostgresLocation)
        self.assertIsNone(plain.password)
        self.assertEqual(plain.connectArgs(), {})

    def test_unknownScheme(self) -> None:
        """Another scheme is an error naming it, with no password in it."""
        e = self.assertRaises(LocationError, parseSpool, "mysql://u:pw@h/db")
        self.assertIn("unknown scheme 'mysql'", str(e))
        self.assertNotIn("pw", str(e))

    def test_noDatabase(self) -> None:
        """A PostgreSQL URL must name the database."""
        self.assertRaises(LocationError, parseSpool, "postgresql://mf@127.0.0.1")


class SpoolSettingTests(unittest.TestCase):
    """The C{spool} setting of C{twistd mailframe}."""

    def test_unknownSchemeRefused(self) -> None:
        """--spool redis://... is a one-line usage error, never a directory."""
        e = self.assertRaises(usage.UsageError, parse, "--spool", "redis://127.0.0.1/0")
        self.assertIn("unknown scheme 'redis'", str(e))
        self.assertNotIn("\n", str(e))

    def test_postgresqlAccepted(self) -> None:
        """--spool postgresql://... is taken as a URL, with the node settings."""
        queue = parse(
            "--spool", "postgresql://mf@127.0.0.1:5432/mail", "--node-name", "mx1",
            "--queue-lease", "30",
        ).queue  # fmt: skip
        assert queue is not None
        self.assertIsInstance(queue.location, PostgresLocation)
        self.assertEqual((queue.nodeName, queue.lease), ("mx1", 30.0))

    def test_fileSettings(self) -> None:
        """In the file: the URL and the password file."""
        path = Path(self.mktemp())
        path.write_text(
            'spool = "postgresql://mf@127.0.0.1/mail"\nspool-password-file = "/etc/mf/pw"\n'
        )
        queue = parse("--config", str(path)).queue
        assert queue is not None
        self.assertEqual(queue.passwordFile, "/etc/mf/pw")

    def test_nodeNameNeedsPostgresql(self) -> None:
        """node-name and spool-password-file without a PostgreSQL spool are refused."""
        e = self.assertRaises(usage.UsageError, parse, "--spool", "q", "--node-name", "a")
        self.assertIn("node-name needs a postgresql:// spool", str(e))
