"""
Milters in C{twistd mailframe}'s settings: C{--milter} (repeatable, in
order), tables in the config file with their own time limits, default
action and listeners, the errors, and makeService putting each milter at
every stage of the listeners it applies to.
"""

from __future__ import annotations

from pathlib import Path

from twisted.python import usage
from twisted.trial import unittest

from mailframe.app import tap
from mailframe.milter.filter import Milter
from mailframe.milter.settings import MilterSettings, parseMilters
from mailframe.plugins import SettingError


def parse(*args: str) -> tap.Options:
    options = tap.Options()
    options.parseOptions(list(args))
    return options


class MilterSettingTests(unittest.TestCase):
    def test_commandLine(self) -> None:
        """--milter is repeatable and keeps its order; the defaults are Postfix-like."""
        [spec] = parse("--milter", "inet:127.0.0.1:8891", "--milter", "unix:/run/m.sock").listeners
        first, second = spec.milters
        self.assertEqual((first.name, second.name), ("inet:127.0.0.1:8891", "unix:/run/m.sock"))
        self.assertEqual(
            (first.connectTimeout, first.commandTimeout, first.eomTimeout, first.defaultAction),
            (10.0, 30.0, 180.0, "tempfail"),
        )

    def test_configTables(self) -> None:
        """A table sets a milter's limits, default action and listeners (OpenDKIM on submission only)."""
        path = self.mktemp()
        Path(path).write_text(
            'milter = ["inet:127.0.0.1:3310", { address = "inet:127.0.0.1:8891", '
            'connect-timeout = "2s", command-timeout = 5, eom-timeout = "1m", '
            'default-action = "accept", listeners = ["submission"] }]\n'
            'auth = ["memory:u:p"]\nauth-plaintext = true\n'
            'submission = ["tcp:0:interface=127.0.0.1"]\nlisten = ["tcp:0:interface=127.0.0.1"]\n'
        )
        smtp, submission = parse("--config", path).listeners
        self.assertEqual([m.name for m in smtp.milters], ["inet:127.0.0.1:3310"])
        self.assertEqual(
            [m.name for m in submission.milters], ["inet:127.0.0.1:3310", "inet:127.0.0.1:8891"]
        )
        dkim = submission.milters[1]
        self.assertEqual(
            (dkim.connectTimeout, dkim.commandTimeout, dkim.eomTimeout, dkim.defaultAction),
            (2.0, 5.0, 60.0, "accept"),
        )

    def test_errors(self) -> None:
        """Bad addresses, keys and values are one-line setting errors."""
        for value, words in (
            ("tcp:1:2", "unknown milter transport"),
            ("inet:localhost", "inet:HOST:PORT"),
            ({"address": "inet:h:1", "default-action": "reject"}, "accept or tempfail"),
            ({"address": "inet:h:1", "timeout": 3}, "unknown milter settings timeout"),
            ({"address": "inet:h:1", "eom-timeout": "soon"}, "eom-timeout"),
            ({"connect-timeout": 3}, "needs address"),
            (3, "expected inet:HOST:PORT"),
        ):
            e = self.assertRaises(SettingError, parseMilters, [value])
            self.assertIn(words, str(e))
        self.assertRaises(usage.UsageError, parse, "--milter", "inet:nope")

    def test_parsed(self) -> None:
        """A string and a list of tables come out as MilterSettings, in order."""
        [one] = parseMilters("unix:/a")
        self.assertIsInstance(one, MilterSettings)
        self.assertEqual(one.address.path, "/a")


class MakeServiceTests(unittest.TestCase):
    def test_everyStage(self) -> None:
        """makeService puts each milter at every stage, after the filters, before dkim-sign."""
        key = self.mktemp()
        Path(key).write_text("not used before a message is signed")
        options = parse(
            "--listen", "tcp:0:interface=127.0.0.1",
            "--deliver", "memory",
            "--filter", "helo",
            "--milter", "inet:127.0.0.1:8891",
            "--milter", "inet:127.0.0.1:3310",
        )  # fmt: skip
        service = tap.makeService(options)
        [factory] = service.factories
        milters = [p for p in factory.connectionFilters if isinstance(p, Milter)]
        self.assertEqual(
            [m.settings.name for m in milters], [m.name for m in options.listeners[0].milters]
        )
        self.assertEqual(list(factory.heloValidators)[-2:], milters)
        self.assertEqual(list(factory.senderValidators)[-2:], milters)
        validators = list(factory.validators)
        self.assertEqual(validators[-3:-1], milters)  # before the validate ones ("any")
        self.assertEqual(list(factory.messageFilters)[-2:], milters)
        self.assertIn("milters inet:127.0.0.1:8891, inet:127.0.0.1:3310", service.announcements[0])
