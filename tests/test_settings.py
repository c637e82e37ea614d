"""
Tests for L{mailframe.app.settings} and the value parsers of
L{mailframe.plugins}: one table of settings drives the command line, the
TOML file and the docs, durations are read the same way everywhere, and a
bad setting is one L{SettingError} naming it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from twisted.python import usage
from twisted.trial import unittest

from mailframe.app import reference, registry, settings, tap
from mailframe.app.settings import COMMAND, FILE, FLAG, LIST, SCHEMA, TOP, Setting
from mailframe.plugins import (
    Choice,
    Count,
    Duration,
    Option,
    PlugInError,
    PlugInFactory,
    SettingError,
    Size,
    YesNo,
)

DOCS = Path(__file__).resolve().parents[1] / "docs"


def flat(text: str) -> str:
    """The text with every run of white space made one space (usage wraps its lines)."""
    return " ".join(text.split())


def parse(*args: str) -> tap.Options:
    options = tap.Options()
    options.parseOptions(list(args))
    return options


class ParserTests(unittest.SynchronousTestCase):
    """The shared value parsers."""

    def test_durations(self) -> None:
        """A duration is seconds, or a number with s, m, h, d or w."""
        parse = Duration()
        for value, seconds in [
            (90, 90.0), (2.5, 2.5), ("300", 300.0), ("2.5", 2.5), ("90s", 90.0), ("5m", 300.0),
            ("1h", 3600.0), ("5d", 432000.0), ("1w", 604800.0), (" 1.5H ", 5400.0),
        ]:  # fmt: skip
            self.assertEqual(parse(value), seconds, value)
        for bad in ["soon", "5y", "", "-1", True, None, [1], float("inf"), float("nan"), 0, "0"]:
            self.assertRaises(SettingError, parse, bad)

    def test_durationZeroAndMaximum(self) -> None:
        """zero=True takes 0 (and off, no); maximum bounds it."""
        self.assertEqual(Duration(zero=True)("0"), 0.0)
        self.assertEqual(Duration(zero=True)("off"), 0.0)
        self.assertRaises(SettingError, Duration(zero=True), -1)
        e = self.assertRaises(SettingError, Duration(maximum=300), "10m")
        self.assertIn("must be at most 5m", str(e))

    def test_formatDuration(self) -> None:
        """Defaults are shown in the largest whole unit."""
        show = Duration().format
        self.assertEqual(
            [show(s) for s in (0, 1, 2.5, 90, 300, 3600, 5400, 86400 * 5)],
            ["0", "1s", "2.5s", "90s", "5m", "1h", "90m", "5d"],
        )

    def test_sizes(self) -> None:
        """Sizes are octets or K, M, G (powers of 1024), shown the same way."""
        self.assertEqual(
            [Size()(v) for v in ("10K", "2m", "5MB", 7)], [10240, 2 << 20, 5 << 20, 7]
        )
        self.assertRaises(SettingError, Size(), "3X")
        self.assertRaises(SettingError, Size(), -1)
        self.assertEqual([Size().format(n) for n in (0, 35 << 20, 16384, 1000)],
                         ["0", "35M", "16K", "1000"])  # fmt: skip

    def test_counts(self) -> None:
        """Counts are whole numbers within bounds."""
        self.assertEqual(Count(1)("5"), 5)
        for bad in ["x", 1.5, True, 0]:
            self.assertRaises(SettingError, Count(1), bad)
        e = self.assertRaises(SettingError, Count(1, 64), "65")
        self.assertIn("expected 1 to 64", str(e))

    def test_choicesAndYesNo(self) -> None:
        """Choices and yes/no words."""
        self.assertEqual(Choice("a", "b")("b"), "b")
        e = self.assertRaises(SettingError, Choice("a", "b"), "c")
        self.assertIn("must be one of a, b, not 'c'", str(e))
        self.assertEqual([YesNo()(v) for v in ("yes", "No", "on", "0", True)],
                         [True, False, True, False, True])  # fmt: skip
        self.assertRaises(SettingError, YesNo(), "maybe")

    def test_oneErrorType(self) -> None:
        """A plug-in error is a setting error, and both are ValueErrors."""
        self.assertTrue(issubclass(PlugInError, SettingError))
        self.assertTrue(issubclass(SettingError, ValueError))


class OptionTests(unittest.SynchronousTestCase):
    """Declared options of a plug-in description."""

    def factory(self) -> PlugInFactory:
        class Factory(PlugInFactory):
            prefix = "thing"
            arguments = "PATH"
            options = (
                Option("wait", Duration(), 10.0, "How long to wait."),
                Option("mode", Choice("fast", "slow"), "fast", "How to go."),
            )

        return Factory()

    def test_synopsis(self) -> None:
        """The synopsis is made of the arguments and the declared options."""
        self.assertEqual(self.factory().synopsis, "thing:PATH[:wait=SECONDS][:mode=fast|slow]")

    def test_parseOptions(self) -> None:
        """Declared options are converted; the others take their defaults; unknown ones fail."""
        f = self.factory()
        self.assertEqual(f.parseOptions({"wait": "1m"}), {"wait": 60.0, "mode": "fast"})
        e = self.assertRaises(SettingError, f.parseOptions, {"colour": "red"})
        self.assertEqual(str(e), "unknown option 'colour' (options: mode, wait)")
        e = self.assertRaises(SettingError, f.parseOptions, {"mode": "slowly"})
        self.assertEqual(str(e), "mode must be one of fast, slow, not 'slowly'")
        e = self.assertRaises(SettingError, f.parseOptions, {"wait": "later"})
        self.assertTrue(str(e).startswith("wait: expected a number of seconds"), str(e))

    def test_builtinTimeouts(self) -> None:
        """The DNS timeouts of the checks are durations, at most 5 minutes."""
        for description in ["dnsbl:bl.example:timeout=2s", "helo:timeout=1m", "spf:timeout=30",
                            "dkim-verify:timeout=1.5s", "dmarc:timeout=5m"]:  # fmt: skip
            registry.checkFilter(description)
        e = self.assertRaises(PlugInError, registry.checkFilter, "helo:timeout=1h")
        self.assertIn("timeout must be at most 5m", str(e))

    def test_helpListsOptions(self) -> None:
        """--help shows each built-in's declared options with their defaults."""
        text = flat(tap.plugInHelp(100))
        for factory in registry.BUILTINS:
            for option in getattr(factory, "options", ()):
                self.assertIn(flat(f"{option.name}={option.placeholder}: {option.help}"), text)
                self.assertIn(f"[default: {option.defaultText}]", text)


class SchemaTests(unittest.SynchronousTestCase):
    """The table of settings itself."""

    def test_names(self) -> None:
        """Each setting once; listen and hostname first (the 'known:' list starts there)."""
        names = [s.name for s in SCHEMA]
        self.assertEqual(len(names), len(set(names)))
        self.assertEqual(names[:2], ["listen", "hostname"])
        for setting in SCHEMA:
            self.assertIsInstance(setting, Setting)
            self.assertTrue(setting.help.endswith("."), setting.name)
            self.assertNotIn("\n", setting.defaultText, setting.name)

    def test_defaultsAreConverted(self) -> None:
        """Every default other than None is a value its converter would give back."""
        for setting in SCHEMA:
            if setting.default is None or setting.form == COMMAND:
                continue
            if isinstance(setting.default, tuple) and not setting.default:
                continue  # an empty list is not a value one can write
            if isinstance(setting.default, dict):
                continue
            value = setting.default
            if isinstance(value, tuple):
                value = list(value)
            if setting.name == "limits":
                continue  # "" is the limits plug-in's defaults
            self.assertEqual(setting.convert(value), setting.default, setting.name)

    def test_convertNamesTheSetting(self) -> None:
        """A bad value is a one-line SettingError naming the setting, or the given label."""
        e = self.assertRaises(SettingError, settings.convert, "timeout", "soon")
        self.assertTrue(str(e).startswith("timeout: expected a number of seconds"), str(e))
        e = self.assertRaises(SettingError, settings.convert, "deliver", "nosuch", "--deliver")
        self.assertTrue(str(e).startswith("--deliver: unknown delivery backend"), str(e))

    def test_defaults(self) -> None:
        """DEFAULTS and TOP_LEVEL_ONLY come from the table."""
        self.assertEqual(settings.DEFAULTS["timeout"], 300.0)
        self.assertEqual(settings.DEFAULTS["give-up"], 5 * 86400.0)
        self.assertIn("spool", settings.TOP_LEVEL_ONLY)
        self.assertNotIn("relay-network", settings.TOP_LEVEL_ONLY)
        self.assertEqual(settings.TOP_LEVEL_ONLY, {s.name for s in SCHEMA if s.scope == TOP})


def durationSettings() -> list[Setting]:
    return [s for s in SCHEMA if isinstance(s.convert, Duration)]


class DurationEverywhereTests(unittest.TestCase):
    """Every duration accepts 90s, 5m, 1h, 5d and a bare number of seconds."""

    def test_list(self) -> None:
        """The server's timeouts and delays are durations, as the queue's are."""
        names = {s.name for s in durationSettings()}
        for name in ["timeout", "data-timeout", "auth-failure-delay", "auth-client-window",
                     "auth-client-block", "greet-delay", "error-delay", "retry-initial",
                     "retry-max", "give-up", "delay-warning"]:  # fmt: skip
            self.assertIn(name, names)

    def test_eachForm(self) -> None:
        """Each duration setting takes each form, on the command line and in the file."""
        for setting in durationSettings():
            for text, seconds in [("90s", 90.0), ("5m", 300.0), ("1h", 3600.0), ("120", 120.0)]:
                self.assertEqual(settings.convert(setting.name, text), seconds, setting.name)
            self.assertEqual(settings.convert(setting.name, 30), 30.0)
        self.assertEqual(settings.convert("give-up", "5d"), 5 * 86400.0)

    def test_commandLine(self) -> None:
        """Through the options: a server timeout and a delay in minutes."""
        [spec] = parse("--timeout", "5m", "--greet-delay", "2s", "--error-delay", "1m").listeners
        self.assertEqual(spec.config.commandTimeout, 300.0)
        self.assertEqual((spec.config.greetDelay, spec.config.errorDelay), (2.0, 60.0))

    def test_file(self) -> None:
        """Through the file: auth settings and the relay's own timeouts."""
        path = self.mktemp()
        Path(path).write_text(
            'auth-client-window = "10m"\ndata-timeout = "1h"\n'
            '[relay]\nconnect-timeout = "30s"\nkeep-alive = 5\n[relay.timeouts]\ngreeting = "5m"\n'
        )
        options = parse("--config", path)
        self.assertEqual(options.clientLimits.window, 600.0)
        self.assertEqual(options.listeners[0].config.dataTimeout, 3600.0)
        assert options.queue is not None
        relay = options.queue.relay
        self.assertEqual((relay["connect-timeout"], relay["keep-alive"]), (30.0, 5.0))
        self.assertEqual(relay["timeouts"], {"greeting": 300.0})

    def test_relayTimeoutErrors(self) -> None:
        """A bad relay timeout names its key."""
        path = self.mktemp()
        Path(path).write_text('[relay.timeouts]\ngreeting = "soon"\n')
        e = self.assertRaises(usage.UsageError, parse, "--config", path)
        self.assertIn("relay: timeouts: greeting: expected a number of seconds", str(e))


class HelpTests(unittest.SynchronousTestCase):
    """--help comes from the table."""

    def test_everySettingWithItsDefault(self) -> None:
        """Every setting is in --help, with the default the code uses."""
        text = flat(tap.Options().getUsage(width=100))
        for setting in SCHEMA:
            if setting.form == FILE:
                self.assertIn(f" {setting.name}: ", text)
            else:
                self.assertIn(f"--{setting.name}", text)
            self.assertIn(flat(setting.help), text, setting.name)
            self.assertIn(flat(f"[default: {setting.defaultText}]"), text, setting.name)

    def test_limitsAreOn(self) -> None:
        """--limits says what is true: on, with the limits plug-in's own defaults."""
        text = flat(tap.Options().getUsage(width=100))
        limits = text[text.index("--limits=") :]
        limits = limits[: limits.index("]") + 1]
        self.assertNotIn("[default: off]", limits)
        self.assertIn("[default: on: total=1000, client=50", limits)
        self.assertEqual(parse().listeners[0].limits, "")

    def test_formsOnTheCommandLine(self) -> None:
        """Flags take no value, repeatable settings are methods, file-only ones are absent."""
        options = tap.Options()
        flags = {f[0] for f in options.optFlags}
        parameters = {p[0] for p in options.optParameters}
        for setting in SCHEMA:
            method = "opt_" + setting.name.replace("-", "_")
            if setting.form == FLAG:
                self.assertIn(setting.name, flags)
            elif setting.form == LIST:
                self.assertTrue(callable(getattr(options, method, None)), setting.name)
            elif setting.form == FILE:
                self.assertNotIn(setting.name, parameters | flags)
                self.assertFalse(hasattr(options, method), setting.name)
            else:
                self.assertIn(setting.name, parameters)

    def test_fileOnlyRefusedOnTheCommandLine(self) -> None:
        """A file-only setting is not an option."""
        self.assertRaises(usage.UsageError, parse, "--relay-password", "x")

    def test_commandOnlyRefusedInTheFile(self) -> None:
        """A command-line-only setting is an unknown key in the file."""
        path = self.mktemp()
        Path(path).write_text("workers = 2\n")
        e = self.assertRaises(usage.UsageError, parse, "--config", path)
        self.assertIn("unknown key 'workers'", str(e))


class DocsTests(unittest.SynchronousTestCase):
    """docs/configuration.rst is made from the same table."""

    def test_everySettingWithItsDefault(self) -> None:
        """Each setting is in the reference of its section, with its default."""
        for setting in SCHEMA:
            text = flat(reference.render(setting.section))
            self.assertIn(f"``{setting.name}``", text, setting.name)
            self.assertIn(flat(setting.help), text, setting.name)
            default = flat(setting.defaultText)
            self.assertTrue(
                f"Default: {default}." in text or f"Default: ``{default}``." in text,
                setting.name,
            )

    def test_configurationIncludesEverySection(self) -> None:
        """configuration.rst includes the generated reference of every section."""
        page = (DOCS / "configuration.rst").read_text()
        for section, _ in settings.SECTIONS:
            self.assertIn(f".. include:: _generated/settings-{section}.inc", page)
        for part, _ in reference.PLUGIN_PARTS:
            self.assertIn(f".. include:: _generated/plugins-{part}.inc", page)
        self.assertEqual({s.section for s in SCHEMA}, {name for name, _ in settings.SECTIONS})

    def test_write(self) -> None:
        """write() makes the include files docs/conf.py asks for."""
        directory = self.mktemp()
        reference.write(directory)
        names = sorted(os.listdir(directory))
        self.assertEqual(
            names,
            sorted(
                [f"settings-{s}.inc" for s, _ in settings.SECTIONS]
                + [f"plugins-{p}.inc" for p, _ in reference.PLUGIN_PARTS]
            ),
        )
        text = "".join(
            (Path(directory) / f"plugins-{p}.inc").read_text() for p, _ in reference.PLUGIN_PARTS
        )
        for factory in registry.BUILTINS:
            self.assertIn(f"``{factory.synopsis}``", text)
            for option in factory.options:
                self.assertIn(f"``{option.name}={option.placeholder}``", text)

    def test_conf(self) -> None:
        """docs/conf.py writes the reference."""
        conf = (DOCS / "conf.py").read_text()
        self.assertTrue(re.search(r"reference\.write\(", conf))


class LayersTests(unittest.SynchronousTestCase):
    """What the queue needs stays in the queue; no test reactor in production code."""

    def test_queueSettingsAreValues(self) -> None:
        """mailframe.queue.settings holds the QueueSpec value, no converters."""
        from mailframe.queue import settings as queueSettings

        self.assertEqual(sorted(queueSettings.__all__), ["DEFAULT_SPOOL", "QueueSpec"])

    def test_noTestingModule(self) -> None:
        """No module of mailframe imports twisted.internet.testing."""
        root = Path(__file__).resolve().parents[1] / "mailframe"
        found = [
            str(path)
            for path in root.rglob("*.py")
            if "twisted.internet.testing" in path.read_text(encoding="utf-8")
        ]
        self.assertEqual(found, [])
