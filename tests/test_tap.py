"""
Tests for L{mailframe.app.tap} and L{mailframe.app.config}: the options of
C{twistd mailframe}, the TOML config file, makeService, --help, and twistd
itself in a subprocess.
"""

from __future__ import annotations

import io
import os
import re
import select
import smtplib
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.internet import defer
from twisted.logger import LogEvent, capturedLogs
from twisted.python import usage
from twisted.trial import unittest

from mailframe.address import Domain
from mailframe.app import registry, settings, tap
from mailframe.app.registry import BUILTINS
from mailframe.backends.memory import MemoryBackend
from mailframe.config import defaultHostname

REPO = Path(__file__).resolve().parents[1]
TWISTD = Path(sys.executable).with_name("twistd")
DEFAULT_LISTEN = "tcp:2525:interface=127.0.0.1"


def captureLogs(case: unittest.TestCase) -> Sequence[LogEvent]:
    """The log events emitted until the end of the test."""
    manager = capturedLogs()
    events = manager.__enter__()
    case.addCleanup(manager.__exit__, None, None, None)
    return events


def parse(*args: str) -> tap.Options:
    options = tap.Options()
    options.parseOptions(list(args))
    return options


class OptionsDefaultsTests(unittest.TestCase):
    """What C{twistd mailframe} does without options."""

    def test_defaults(self) -> None:
        """One listener on localhost:2525, this host's name, any, maildir:./Maildir."""
        [spec] = parse().listeners
        config = spec.config
        self.assertEqual(spec.endpoints, (DEFAULT_LISTEN,))
        self.assertEqual(spec.validate, ("any",))
        self.assertEqual(spec.deliver, "maildir:./Maildir")
        self.assertEqual(config.hostname, defaultHostname())
        self.assertEqual(
            config.localDomains, frozenset({Domain("localhost"), Domain(defaultHostname())})
        )
        self.assertEqual(config.limits.messageSize, 35 * 1024 * 1024)
        self.assertEqual(config.limits.recipients, 1000)
        self.assertFalse(config.limits.normaliseBareLineEndings)
        self.assertEqual((config.commandTimeout, config.dataTimeout), (300.0, 300.0))
        self.assertEqual(config.maxErrors, 20)
        self.assertFalse(config.transcript)
        self.assertEqual(config.listener, "smtp")


class OptionsTests(unittest.TestCase):
    """Each option, and the usage error of a bad value."""

    def test_listen(self) -> None:
        """--listen is repeatable and --port is the same option."""
        [spec] = parse("--listen", "tcp:25", "--port", "unix:/tmp/s", "--listen=tcp6:26").listeners
        self.assertEqual(spec.endpoints, ("tcp:25", "unix:/tmp/s", "tcp6:26"))

    def test_hostnameAndDomains(self) -> None:
        """--hostname names the server; --domain (repeatable, commas) sets the local domains."""
        [spec] = parse(
            "--hostname", "mx.example", "--domain", "a.example,b.example", "--domain", "c.example"
        ).listeners
        self.assertEqual(spec.config.hostname, "mx.example")
        self.assertEqual(
            spec.config.localDomains,
            frozenset(map(Domain, ["a.example", "b.example", "c.example"])),
        )

    def test_hostnameDefaultDomains(self) -> None:
        """Without --domain, the local domains are localhost and --hostname."""
        [spec] = parse("--hostname", "mx.example").listeners
        self.assertEqual(spec.config.localDomains, {Domain("localhost"), Domain("mx.example")})

    def test_validateChain(self) -> None:
        """--validate is repeatable and keeps its order."""
        [spec] = parse("--validate", "domains:x.example", "--validate", "any").listeners
        self.assertEqual(spec.validate, ("domains:x.example", "any"))

    def test_deliver(self) -> None:
        """--deliver chooses the backend."""
        self.assertEqual(
            parse("--deliver", "memory:keep=no").listeners[0].deliver, "memory:keep=no"
        )

    def test_sizes(self) -> None:
        """--max-size takes octets or K, M, G (powers of 1024); 0 is no limit."""
        for text, size in [("123", 123), ("10K", 10240), ("2m", 2 << 20), ("1G", 1 << 30),
                           ("0", 0), ("5MB", 5 << 20)]:  # fmt: skip
            self.assertEqual(
                parse("--max-size", text).listeners[0].config.limits.messageSize, size
            )
        self.assertEqual(settings.convert("max-size", 4096), 4096)

    def test_numbers(self) -> None:
        """--max-recipients, --max-errors, --timeout and --data-timeout are set."""
        [spec] = parse(
            "--max-recipients",
            "5",
            "--max-errors",
            "3",
            "--timeout",
            "60",
            "--data-timeout",
            "2.5",
        ).listeners
        config = spec.config
        self.assertEqual(config.limits.recipients, 5)
        self.assertEqual(config.maxErrors, 3)
        self.assertEqual((config.commandTimeout, config.dataTimeout), (60.0, 2.5))

    def test_bareNewlines(self) -> None:
        """--bare-newlines normalise (or normalize) sets the limit; reject is the default."""
        for word, value in [("normalise", True), ("normalize", True), ("reject", False)]:
            limits = parse("--bare-newlines", word).listeners[0].config.limits
            self.assertIs(limits.normaliseBareLineEndings, value)

    def test_transcript(self) -> None:
        """--transcript sets ServerConfig.transcript."""
        self.assertTrue(parse("--transcript").listeners[0].config.transcript)

    def test_workers(self) -> None:
        """--workers takes 1..64 and needs tcp endpoints with a fixed port."""
        self.assertEqual(parse().workers, 1)
        self.assertEqual(parse("--workers", "2", "--listen", "tcp:2525").workers, 2)
        for args, message in [
            (("--workers", "0"), "--workers: expected 1 to 64"),
            (("--workers", "x"), "--workers: expected 1 to 64"),
            (("--workers", "2", "--listen", "unix:/tmp/s"), "tcp: or tcp6:"),
            (("--workers", "2", "--listen", "tcp:0"), "fixed port"),
        ]:
            e = self.assertRaises(usage.UsageError, parse, *args)
            self.assertIn(message, str(e))

    def test_workersShareThePort(self) -> None:
        """With --workers, listeners are SO_REUSEPORT services and worker 0 starts a pool."""
        from mailframe.app.workers import ReusePortService, WorkerPool

        directory = self.mktemp()
        options = parse(
            "--workers", "3", "--listen", "tcp:2599:interface=127.0.0.1",
            "--deliver", f"maildir:{directory}",
        )  # fmt: skip
        service = tap.makeService(options)
        kinds = [type(s) for s in service]
        self.assertIn(ReusePortService, kinds)
        [pool] = [s for s in service if isinstance(s, WorkerPool)]
        self.assertEqual(pool.count, 3)
        self.assertIn("--workers", pool.argv)
        worker = parse(
            "--workers", "3", "--worker", "1", "--listen", "tcp:2599:interface=127.0.0.1",
            "--deliver", f"maildir:{directory}",
        )  # fmt: skip
        self.assertFalse([s for s in tap.makeService(worker) if isinstance(s, WorkerPool)])

    def test_quiet(self) -> None:
        """--quiet turns the per-message log line off; it is on by default."""
        self.assertTrue(parse().listeners[0].config.logMessages)
        self.assertFalse(parse("--quiet").listeners[0].config.logMessages)

    def test_errors(self) -> None:
        """A bad value of any option is a one-line usage error naming the option."""
        cases = [
            (["--max-size", "3X"], "--max-size: bad size '3X'"),
            (["--max-size", "-1"], "--max-size: bad size"),
            (["--listen", "tcp:notaport"], "--listen: bad endpoint 'tcp:notaport'"),
            (["--port", "nosuch:25"], "--listen: bad endpoint 'nosuch:25'"),
            (["--validate", "nosuch"], "--validate: unknown recipient validator 'nosuch'"),
            (["--validate", "memory"], "'memory' is a delivery backend, not a recipient"),
            (["--deliver", "maildir:/x:layout=flat"], "--deliver: bad delivery backend"),
            (["--deliver", "any"], "'any' is a recipient validator"),
            (["--hostname", "not a name"], "--hostname: not a host name"),
            (["--domain", "a..b"], "--domain: not a domain: 'a..b'"),
            (["--max-recipients", "0"], "--max-recipients: must be at least 1"),
            (["--max-errors", "x"], "--max-errors: expected a whole number"),
            (["--timeout", "0"], "--timeout: must be a positive number"),
            (["--data-timeout", "soon"], "--data-timeout: expected a number of seconds"),
            (["--bare-newlines", "keep"], "--bare-newlines: expected reject or normalise"),
            (["--config", "/no/such/mailframe.toml"], "cannot read config file"),
            (["--bogus"], "option --bogus not recognized"),
        ]
        for args, words in cases:
            e = self.assertRaises(usage.UsageError, parse, *args)
            self.assertIn(words, str(e), args)
            self.assertNotIn("\n", str(e))


FULL_TOML = """\
listen = ["tcp:2525:interface=127.0.0.1", "tcp:2526:interface=127.0.0.1"]
hostname = "mx.example"
domain = ["example.com", "example.net"]
validate = ["domains:example.org", "any"]
deliver = "memory"
max-size = "10M"
max-recipients = 50
max-errors = 5
timeout = 120
data-timeout = 600.5
bare-newlines = "normalise"
transcript = true

[[listener]]
name = "submission"
listen = "tcp:5587:interface=127.0.0.1"
max-size = 52428800
deliver = "memory:keep=no"

[[listener]]
listen = ["tcp:2527:interface=127.0.0.1"]
hostname = "other.example"
validate = ["any"]
"""


class ConfigFileTests(unittest.TestCase):
    """--config FILE: the same settings in TOML, and [[listener]] tables."""

    def write(self, text: str) -> str:
        path = self.mktemp()
        Path(path).write_text(text)
        return path

    def test_everyKey(self) -> None:
        """Every top-level key is read; listener tables inherit and override."""
        main, submission, other = parse("--config", self.write(FULL_TOML)).listeners
        self.assertEqual(
            main.endpoints, ("tcp:2525:interface=127.0.0.1", "tcp:2526:interface=127.0.0.1")
        )
        self.assertEqual(main.validate, ("domains:example.org", "any"))
        self.assertEqual(main.deliver, "memory")
        c = main.config
        self.assertEqual(c.hostname, "mx.example")
        self.assertEqual(c.localDomains, {Domain("example.com"), Domain("example.net")})
        self.assertEqual((c.limits.messageSize, c.limits.recipients), (10 << 20, 50))
        self.assertTrue(c.limits.normaliseBareLineEndings)
        self.assertEqual((c.maxErrors, c.commandTimeout, c.dataTimeout), (5, 120.0, 600.5))
        self.assertTrue(c.transcript)
        self.assertEqual(c.listener, "smtp")

        self.assertEqual(submission.endpoints, ("tcp:5587:interface=127.0.0.1",))
        self.assertEqual(submission.config.listener, "submission")
        self.assertEqual(submission.config.limits.messageSize, 50 << 20)
        self.assertEqual(submission.deliver, "memory:keep=no")
        self.assertEqual(submission.config.hostname, "mx.example")
        self.assertEqual(submission.validate, main.validate)

        self.assertEqual(other.config.hostname, "other.example")
        self.assertEqual(other.validate, ("any",))
        self.assertEqual(other.config.maxErrors, 5)

    def test_commandLineOverrides(self) -> None:
        """Command-line options replace the file's top-level values, tables inherit them."""
        path = self.write(FULL_TOML)
        main, submission, other = parse(
            "--config", path, "--deliver", "memory:keep=yes", "--max-errors", "9",
            "--listen", "tcp:2999", "--validate", "any",
        ).listeners  # fmt: skip
        self.assertEqual(main.endpoints, ("tcp:2999",))
        self.assertEqual((main.deliver, main.validate), ("memory:keep=yes", ("any",)))
        self.assertEqual(main.config.maxErrors, 9)
        self.assertEqual(submission.deliver, "memory:keep=no")  # the table's own
        self.assertEqual(other.deliver, "memory:keep=yes")  # inherited
        self.assertEqual(other.config.maxErrors, 9)

    def test_tablesOnly(self) -> None:
        """With [[listener]] tables and no top-level listen, only the tables listen."""
        path = self.write('deliver = "memory"\n[[listener]]\nlisten = "tcp:2600"\n')
        [spec] = parse("--config", path).listeners
        self.assertEqual((spec.endpoints, spec.deliver), (("tcp:2600",), "memory"))

    def test_emptyFileIsDefaults(self) -> None:
        """An empty file changes nothing."""
        [spec] = parse("--config", self.write("")).listeners
        self.assertEqual((spec.endpoints, spec.deliver), ((DEFAULT_LISTEN,), "maildir:./Maildir"))

    def test_errors(self) -> None:
        """Bad TOML, unknown keys and bad values are one-line usage errors naming the file."""
        cases = [
            ("listen = [", "bad TOML"),
            ("colour = 'blue'", "unknown key 'colour' (known: listen, hostname"),
            ("port = 'tcp:25'", "unknown key 'port'"),
            ("max-size = true", "max-size: bad size True"),
            ("max-size = '12Q'", "max-size: bad size '12Q'"),
            ("max-recipients = 1.5", "max-recipients: expected a whole number"),
            ("timeout = -3", "timeout: must be a positive number"),
            ("transcript = 'yes'", "transcript: expected true or false"),
            ("listen = 25", "listen: expected a list of strings"),
            ("listen = []", "listen: expected a list of strings"),
            ("validate = ['any', 'nosuch']", "unknown recipient validator 'nosuch'"),
            ("deliver = ['memory']", "deliver: expected a non-empty string"),
            ("listener = 3", "'listener' must be [[listener]] tables"),
            ("[[listener]]\nhostname = 'a.example'", "[[listener]] 1: needs 'listen'"),
            ("[[listener]]\nlisten = 'tcp:1'\n[[listener]]\nlisten = 'tcp:2'\nsize = 1",
             "[[listener]] 2: unknown key 'size' (known: listen"),
            ("[[listener]]\nlisten = 'tcp:1'\nname = 'a b'", "name: expected a word"),
            ("[[listener]]\nlisten = 'tcp:bad'", "[[listener]] 1: listen: bad endpoint"),
        ]  # fmt: skip
        for text, words in cases:
            path = self.write(text)
            e = self.assertRaises(usage.UsageError, parse, "--config", path)
            self.assertIn(words, str(e), text)
            self.assertTrue(str(e).startswith(path) or "config file" in str(e), str(e))
            self.assertNotIn("\n", str(e))

    def test_notUTF8(self) -> None:
        """A file that is not UTF-8 is a usage error, not a traceback."""
        path = self.mktemp()
        Path(path).write_bytes(b"hostname = '\xff'\n")
        self.assertRaises(usage.UsageError, parse, "--config", path)


class MakeServiceTests(unittest.TestCase):
    """makeService builds the plug-ins and one service per endpoint."""

    def test_oneServicePerListener(self) -> None:
        """Each endpoint is a strports service; a listener's endpoints share its factory."""
        maildir = self.mktemp()
        path = self.mktemp()
        Path(path).write_text(
            f'deliver = "maildir:{maildir}:layout=user"\n'
            'hostname = "mx.example"\n'
            'max-size = "1M"\n'
            'validate = ["domains:extra.example", "any"]\n'
            'listen = ["tcp:0:interface=127.0.0.1", "tcp:0:interface=127.0.0.2"]\n'
            '[[listener]]\nname = "submission"\nlisten = "tcp:0"\ndeliver = "memory"\n'
        )
        service = tap.makeService(parse("--config", path, "--max-errors", "7"))
        children = list(service)
        self.assertEqual(len(children), 3)
        for child in children:
            self.assertIsInstance(child, StreamServerEndpointService)
        first, second, third = (c.factory for c in children)  # type: ignore[attr-defined]
        self.assertIs(first, second)
        self.assertIsNot(first, third)

        from mailframe.backends.maildir import MaildirBackend
        from mailframe.validators.basic import AnyRecipient, DomainsValidator

        self.assertIsInstance(first.backend, MaildirBackend)
        self.assertEqual(first.backend.path, os.path.abspath(maildir))
        self.assertEqual(first.backend.layout, "user")
        self.assertTrue(os.path.isdir(maildir))
        from mailframe.policy.limits import ConnectionLimits

        # the connection limits (on by default) count connections; with no
        # recipient rate they are not asked at RCPT
        self.assertEqual([type(v) for v in first.validators], [DomainsValidator, AnyRecipient])
        self.assertEqual([type(f) for f in first.connectionFilters], [ConnectionLimits])
        self.assertEqual(first.config.hostname, "mx.example")
        self.assertEqual(first.config.maxErrors, 7)
        self.assertEqual(first.config.limits.messageSize, 1 << 20)
        self.assertIn(Domain("extra.example"), first.config.localDomains)
        self.assertIsInstance(third.backend, MemoryBackend)
        self.assertEqual(third.config.listener, "submission")
        self.assertEqual(
            service.announcements,
            [
                "mailframe: listening on tcp:0:interface=127.0.0.1 and "
                "tcp:0:interface=127.0.0.2 as mx.example for extra.example, localhost, "
                f"mx.example; validate domains:extra.example, any; deliver maildir:{maildir}"
                ":layout=user",
                "mailframe: listening on tcp:0 as mx.example for extra.example, localhost, "
                "mx.example; validate domains:extra.example, any; deliver memory",
            ],
        )

    def test_setupFailure(self) -> None:
        """A maildir that cannot be created is a one-line SystemExit."""
        blocker = self.mktemp()
        Path(blocker).write_text("a file")
        options = parse("--deliver", f"maildir:{blocker}/Maildir")
        e = self.assertRaises(SystemExit, tap.makeService, options)
        message = str(e.code)
        self.assertTrue(message.startswith("mailframe: "), message)
        self.assertIn("cannot create", message)
        self.assertNotIn("\n", message)

    def test_validatorFailure(self) -> None:
        """An address list that went away between parsing and start is a SystemExit."""
        path = self.mktemp()
        Path(path).write_text("a@b.example\n")
        options = parse("--validate", f"addresses:{path}", "--deliver", "memory")
        os.remove(path)
        e = self.assertRaises(SystemExit, tap.makeService, options)
        self.assertTrue(str(e.code).startswith("mailframe: bad recipient validator"), e.code)

    @defer.inlineCallbacks
    def test_startLogsListeners(self) -> Any:
        """Starting the service listens and logs one line per listener."""
        events = captureLogs(self)
        service = tap.makeService(
            parse("--listen", "tcp:0:interface=127.0.0.1", "--deliver", "memory",
                  "--hostname", "mx.example")
        )  # fmt: skip
        service.startService()
        try:
            lines = [e["line"] for e in events if "line" in e]
            self.assertEqual(
                lines,
                [
                    "mailframe: listening on tcp:0:interface=127.0.0.1 as mx.example for "
                    "localhost, mx.example; validate any; deliver memory"
                ],
            )
        finally:
            yield service.stopService()


class HelpTests(unittest.TestCase):
    """--help lists the installed plug-ins."""

    def test_usageListsBuiltins(self) -> None:
        """getUsage lists every built-in by kind, with its synopsis and description."""
        text = tap.Options().getUsage(width=100)
        self.assertIn("Delivery backends (--deliver", text)
        self.assertIn("Recipient validators (--validate", text)
        for factory in BUILTINS:
            self.assertIn(f"    {factory.synopsis}\n", text)
            self.assertIn(factory.description.split()[0], text)
        self.assertLess(text.index("maildir:PATH"), text.index("Recipient validators"))
        for option in ["--listen", "--port", "--hostname", "--domain", "--validate",
                       "--deliver", "--max-size", "--max-recipients", "--max-errors",
                       "--timeout", "--data-timeout", "--bare-newlines", "--transcript",
                       "--config"]:  # fmt: skip
            self.assertIn(option, text)

    def test_usageListsOtherKinds(self) -> None:
        """A plug-in of a kind no option chooses is listed under its kind."""
        from zope.interface import Interface, implementer
        from zope.interface.verify import verifyObject

        from mailframe.interfaces import IMessageFilter, IPlugInFactory

        class IScorer(Interface):
            """A kind of plug-in mailframe has no option for."""

        @implementer(IPlugInFactory)
        class Scorer:
            prefix, provides = "spam", IScorer
            synopsis, description = "spam[:score=N]", "Score spam."

            def makeProvider(self, context: Any, *args: str, **kwargs: str) -> Any:
                raise NotImplementedError

        @implementer(IPlugInFactory)
        class Filter:
            prefix, provides = "bayes", IMessageFilter
            synopsis, description = "bayes[:score=N]", "Refuse spam."

            def makeProvider(self, context: Any, *args: str, **kwargs: str) -> Any:
                raise NotImplementedError

        verifyObject(IPlugInFactory, Filter())
        self.patch(registry, "getPlugins", lambda interface: [Scorer(), Filter()])
        text = tap.plugInHelp(100)
        self.assertIn("  IScorers (no option yet):\n    spam[:score=N]\n", text)
        self.assertIn("Score spam.", text)
        filters = text.index("  Message filters (--filter")
        self.assertLess(filters, text.index("    bayes[:score=N]\n"))
        self.assertIn("Refuse spam.", text)

    def test_helpOption(self) -> None:
        """--help prints the usage with the plug-ins and exits."""
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        self.assertRaises(SystemExit, parse, "--help")
        self.assertIn("addresses:PATH", out.getvalue())


class RunTests(unittest.TestCase):
    """The console script."""

    def test_run(self) -> None:
        """run() runs twistd -n mailframe with the script's arguments."""
        import twisted.scripts.twistd

        seen: list[list[str]] = []
        self.patch(twisted.scripts.twistd, "run", lambda: seen.append(list(sys.argv)))
        self.patch(sys, "argv", ["mailframe", "--listen", "tcp:2600", "--transcript"])
        tap.run()
        pidfile = ["--pidfile="] if os.name == "posix" else []
        self.assertEqual(
            seen,
            [["twistd", "-n", *pidfile, "mailframe", "--listen", "tcp:2600", "--transcript"]],
        )


class TwistdTests(unittest.TestCase):
    """twistd mailframe in a subprocess: errors are one line, and it serves."""

    def setUp(self) -> None:
        if not TWISTD.exists():
            raise unittest.SkipTest(f"no twistd next to {sys.executable}")
        self.cwd = os.path.abspath(self.mktemp())
        os.mkdir(self.cwd)
        # The editable install does not put the repository's twisted/plugins on
        # twisted.plugins.__path__; PYTHONPATH does.
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *sys.path])}

    def twistd(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(TWISTD), "-n", "--pidfile=", "mailframe", *args],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def assertOneLineError(self, result: subprocess.CompletedProcess[str], words: str) -> None:
        self.assertNotEqual(result.returncode, 0)
        self.assertNotIn("Traceback", result.stdout + result.stderr)
        lines = [line for line in (result.stdout + result.stderr).splitlines() if words in line]
        self.assertEqual(len(lines), 1, result.stdout + result.stderr)

    def test_bogusOption(self) -> None:
        """An unknown option exits non-zero with a one-line error."""
        self.assertOneLineError(self.twistd("--bogus"), "option --bogus not recognized")

    def test_badConfigFile(self) -> None:
        """A bad config file exits non-zero with a one-line error naming the key."""
        path = os.path.join(self.cwd, "bad.toml")
        Path(path).write_text("deliver = 'memory'\nflavour = 'mint'\n")
        self.assertOneLineError(self.twistd("--config", path), "unknown key 'flavour'")

    def test_setupFailure(self) -> None:
        """What can only fail at start exits non-zero with 'mailframe: ...' on stderr."""
        blocker = os.path.join(self.cwd, "file")
        Path(blocker).write_text("")
        result = self.twistd(
            "--listen", "tcp:0:interface=127.0.0.1", "--deliver", f"maildir:{blocker}/Maildir"
        )
        self.assertOneLineError(result, "mailframe: bad delivery backend")

    def test_help(self) -> None:
        """twistd mailframe --help lists the built-in plug-ins."""
        result = self.twistd("--help")
        self.assertEqual(result.returncode, 0, result.stderr)
        for factory in BUILTINS:
            self.assertIn(factory.synopsis, result.stdout)

    def test_serves(self) -> None:
        """twistd mailframe listens, logs its listener line and answers SMTP."""
        process = subprocess.Popen(
            [str(TWISTD), "-n", "--pidfile=", "--logfile=-", "mailframe",
             "--listen", "tcp:0:interface=127.0.0.1", "--deliver", "memory",
             "--hostname", "mx.example"],
            cwd=self.cwd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.addCleanup(process.wait, 30)
        self.addCleanup(process.kill)
        assert process.stdout is not None
        output = b""
        port = None
        deadline = time.monotonic() + 30
        # the port is this twistd's own (tcp:0); the wait also needs its listening line
        while time.monotonic() < deadline and not (port and b"mailframe: listening on " in output):
            ready, _, _ = select.select([process.stdout], [], [], 1)
            if ready:
                chunk = os.read(process.stdout.fileno(), 4096)
                if not chunk:
                    break
                output += chunk
                found = re.search(rb"starting on (\d+)", output)
                port = int(found.group(1)) if found else None
        self.assertIn(b"mailframe: listening on tcp:0:interface=127.0.0.1 as mx.example", output)
        assert port is not None, output
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            code, message = client.ehlo("client.example")
            self.assertEqual(code, 250)
            self.assertTrue(message.startswith(b"mx.example"), message)


class QueueOptionsTests(unittest.TestCase):
    """The queue's options (--spool, --relay-host, --relay-network, retry, bounce) and keys."""

    def write(self, text: str) -> str:
        path = self.mktemp()
        Path(path).write_text(text)
        return path

    def test_off(self) -> None:
        """Without a queue setting there is no queue and no relay network."""
        options = parse()
        self.assertIsNone(options.queue)
        self.assertEqual(options.listeners[0].config.relayNetworks, ())

    def test_spoolDefaults(self) -> None:
        """--spool turns the queue on with the documented defaults."""
        queue = parse("--spool", "/var/spool/mf").queue
        assert queue is not None
        self.assertEqual(queue.spool, "/var/spool/mf")
        retry = queue.retry
        self.assertEqual(
            (retry.initial, retry.maximum, retry.giveUp, retry.delayWarning),
            (300.0, 3600.0, 432000.0, 0.0),
        )
        self.assertEqual((queue.bounceBodySize, queue.bounceFullSize), (16 << 10, 1 << 20))
        self.assertEqual(
            (queue.connections, queue.destinationConnections, queue.threads), (20, 5, 8)
        )
        self.assertEqual(dict(queue.relay), {"tls-state": "/var/spool/mf/tls-state"})

    def test_values(self) -> None:
        """Durations take s, m, h, d; sizes K, M; counts numbers."""
        queue = parse(
            "--spool",
            "q",
            "--retry-initial",
            "90s",
            "--retry-max",
            "2h",
            "--give-up",
            "3d",
            "--delay-warning",
            "4h",
            "--bounce-body-size",
            "8K",
            "--bounce-full-size",
            "2M",
            "--queue-connections",
            "7",
            "--queue-destination-connections",
            "2",
            "--spool-threads",
            "4",
        ).queue
        assert queue is not None
        retry = queue.retry
        self.assertEqual(
            (retry.initial, retry.maximum, retry.giveUp, retry.delayWarning),
            (90.0, 7200.0, 3 * 86400.0, 4 * 3600.0),
        )
        self.assertEqual((queue.bounceBodySize, queue.bounceFullSize), (8192, 2 << 20))
        self.assertEqual(
            (queue.connections, queue.destinationConnections, queue.threads), (7, 2, 4)
        )

    def test_relayNetwork(self) -> None:
        """--relay-network is repeatable, sets the relay networks, and turns the queue on."""
        options = parse(
            "--relay-network", "10.0.0.0/8", "--relay-network", "2001:db8::/32,192.0.2.1"
        )
        config = options.listeners[0].config
        self.assertEqual(
            [str(n) for n in config.relayNetworks], ["10.0.0.0/8", "2001:db8::/32", "192.0.2.1/32"]
        )
        self.assertTrue(config.mayRelay("10.1.2.3"))
        self.assertFalse(config.mayRelay("192.0.2.2"))
        assert options.queue is not None
        self.assertEqual(options.queue.spool, "./spool")

    def test_relayHost(self) -> None:
        """--relay-host is the smarthost; its credentials and TLS policy come from the file."""
        path = self.write(
            'relay-host = "tcp:smtp.example.net:587"\nrelay-tls = "require"\n'
            'relay-user = "me"\nrelay-password = "secret"\n'
        )
        queue = parse("--config", path).queue
        assert queue is not None
        self.assertEqual(
            queue.relay["smarthost"],
            {
                "host": "tcp:smtp.example.net:587",
                "tls": "require",
                "username": "me",
                "password": "secret",
            },
        )
        self.assertEqual(queue.relayHost, "tcp:smtp.example.net:587")
        queue = parse("--config", path, "--relay-host", "[192.0.2.5]:25").queue
        assert queue is not None
        self.assertEqual(queue.relay["smarthost"]["host"], "[192.0.2.5]:25")

    def test_fileKeys(self) -> None:
        """The queue's keys in TOML: routes and relay tables, relay-network per listener."""
        path = self.write(
            'spool = "/srv/spool"\nretry-initial = 60\ngive-up = "2d"\ndelay-warning = "off"\n'
            'bounce-body-size = "4K"\n'
            '[routes]\n"example.org" = "local"\n"example.net" = "tcp:10.0.0.5:25"\n'
            '".lan.example" = { host = "10.0.0.6", tls = "none" }\n'
            '[relay]\nconnect-timeout = 10\ntls = "require"\n'
            '[[listener]]\nlisten = "tcp:2600"\nrelay-network = ["192.0.2.0/24"]\n'
        )
        options = parse("--config", path)
        queue = options.queue
        assert queue is not None
        self.assertEqual(queue.spool, "/srv/spool")
        self.assertEqual(
            (queue.retry.initial, queue.retry.giveUp, queue.retry.delayWarning),
            (60.0, 172800.0, 0.0),
        )
        self.assertEqual(queue.bounceBodySize, 4096)
        self.assertEqual(queue.relay["routes"]["example.net"], "tcp:10.0.0.5:25")
        self.assertEqual((queue.relay["connect-timeout"], queue.relay["tls"]), (10, "require"))
        self.assertEqual(queue.localRoutes, ("example.org",))
        [spec] = options.listeners
        self.assertEqual([str(n) for n in spec.config.relayNetworks], ["192.0.2.0/24"])

    def test_relayTable(self) -> None:
        """[relay] takes the relay's own keys and smarthost/routes; [routes] and relay-host win."""
        path = self.write(
            '[relay]\nkeep-alive = 5\n[relay.smarthost]\nhost = "smtp.example.net"\nport = 587\n'
            '[relay.routes]\n"a.example" = "local"\n".lan.example" = "local"\n'
            '"b.example" = "tcp:192.0.2.5:25"\n[routes]\n"b.example" = "local"\n'
        )
        queue = parse("--config", path).queue
        assert queue is not None
        self.assertEqual(queue.relay["keep-alive"], 5)
        self.assertEqual(queue.relay["smarthost"], {"host": "smtp.example.net", "port": 587})
        self.assertEqual(queue.relay["routes"]["b.example"], "local")
        self.assertEqual(queue.localRoutes, ("a.example", "b.example"))
        queue = parse("--config", path, "--relay-host", "tcp:10.0.0.1:25").queue
        assert queue is not None
        self.assertEqual(queue.relay["smarthost"], {"host": "tcp:10.0.0.1:25"})

    def test_errors(self) -> None:
        """Bad values are one-line usage errors naming the option."""
        cases = [
            (["--spool", "q", "--retry-initial", "soon"], "--retry-initial: expected a duration"),
            (["--spool", "q", "--give-up", "0"], "--give-up: must be a positive duration"),
            (
                ["--spool", "q", "--retry-initial", "2h", "--retry-max", "1h"],
                "retry-initial must be at most retry-max",
            ),
            (["--relay-network", "10.0.0.0/33"], "--relay-network: not a network"),
            (["--relay-host", "unix:/tmp/x"], "--relay-host: bad relay host"),
            (["--spool", "q", "--bounce-body-size", "lots"], "--bounce-body-size: bad size"),
            (
                ["--spool", "q", "--queue-connections", "0"],
                "--queue-connections: expected a whole",
            ),
        ]
        for args, words in cases:
            e = self.assertRaises(usage.UsageError, parse, *args)
            self.assertIn(words, str(e), args)
            self.assertNotIn("\n", str(e))

    def test_fileErrors(self) -> None:
        """Bad queue keys in the file are one-line errors naming the file and key."""
        cases = [
            ('relay-user = "me"\nrelay-password = "x"', "relay-user needs relay-host"),
            ('relay-host = "h:25"\nrelay-user = "me"', "give relay-user and relay-password"),
            ('relay-host = "h:25"\nrelay-tls = "maybe"', "relay-tls: TLS policy 'maybe'"),
            ('[routes]\n"example.org" = 5', "routes: a route is 'local'"),
            ('[routes]\n"example.org" = { port = 25 }', "routes: a route table needs a host"),
            ('[relay]\ncolour = "blue"', "relay: unknown relay settings: colour"),
            ('[relay]\nconnect-timeout = "soon"', "connect-timeout: expected a number"),
            (
                '[[listener]]\nlisten = "tcp:1"\nspool = "x"',
                "'spool' is a setting of the top level",
            ),
        ]
        for text, words in cases:
            path = self.write(text)
            e = self.assertRaises(usage.UsageError, parse, "--config", path)
            self.assertIn(words, str(e), text)
            self.assertNotIn("\n", str(e))

    def test_makeService(self) -> None:
        """With a queue: a SpoolBackend before the --deliver backend, DSN, the queue service first."""
        from mailframe.client.relay import SMTPRelay
        from mailframe.extensions.dsn import DSN
        from mailframe.queue import QueueService, SpoolBackend

        spool = self.mktemp()
        service = tap.makeService(
            parse(
                "--spool",
                spool,
                "--deliver",
                "memory",
                "--listen",
                "tcp:0:interface=127.0.0.1",
                "--relay-network",
                "127.0.0.0/8",
                "--hostname",
                "mx.example",
                "--quiet",
            )
        )
        children = list(service)
        self.assertIsInstance(children[0], QueueService)
        queueService = children[0]
        factory = children[1].factory  # type: ignore[attr-defined]
        self.assertIsInstance(factory.backend, SpoolBackend)
        self.assertNotIn(
            factory.backend, factory.messageFilters
        )  # the facts come with the envelope
        self.assertTrue(any(isinstance(e, DSN) for e in factory.extensions))
        runner = queueService.runner  # type: ignore[attr-defined]
        self.assertIsInstance(runner.backends["smtp"], MemoryBackend)
        self.assertIsInstance(runner.relay, SMTPRelay)
        self.assertFalse(runner.logDeliveries)
        self.assertTrue(os.path.isdir(os.path.join(spool, "queue")))
        from mailframe.address import parseMailbox

        self.assertEqual(runner.routeKey(parseMailbox("a@mx.example")), "local")
        self.assertEqual(runner.routeKey(parseMailbox("a@example.org")), "mx example.org")
        self.assertIn(f"mailframe: queue in {os.path.abspath(spool)}", service.announcements[-1])

    def test_makeServiceRoutes(self) -> None:
        """Routes: 'local' domains become local; a routed local domain is relayed there."""
        path = self.write(
            '[routes]\n"partner.example" = "local"\n"mx.example" = "tcp:10.0.0.5:25"\n'
        )
        service = tap.makeService(
            parse(
                "--config",
                path,
                "--spool",
                self.mktemp(),
                "--deliver",
                "memory",
                "--listen",
                "tcp:0:interface=127.0.0.1",
                "--hostname",
                "mx.example",
            )
        )
        from mailframe.address import parseMailbox

        queueService, listening = list(service)
        factory = listening.factory  # type: ignore[attr-defined]
        self.assertIn(Domain("partner.example"), factory.config.localDomains)
        routeKey = queueService.runner.routeKey  # type: ignore[attr-defined]
        self.assertEqual(routeKey(parseMailbox("a@partner.example")), "local")
        self.assertEqual(routeKey(parseMailbox("a@localhost")), "local")
        self.assertEqual(routeKey(parseMailbox("a@mx.example")), "nexthop 10.0.0.5:25")

    def test_workersSpool(self) -> None:
        """With --workers, each worker has its own spool directory."""
        spool = self.mktemp()
        options = parse(
            "--spool",
            spool,
            "--deliver",
            "memory",
            "--workers",
            "2",
            "--listen",
            "tcp:2525",
            "--worker",
            "1",
        )
        service = tap.makeService(options)
        runner = next(iter(service)).runner  # type: ignore[attr-defined]
        self.assertEqual(runner.spool.path, os.path.join(os.path.abspath(spool), "worker-1"))

    def test_unusableSpool(self) -> None:
        """A spool that cannot be created is a one-line SystemExit."""
        blocker = self.mktemp()
        Path(blocker).write_text("a file")
        e = self.assertRaises(
            SystemExit,
            tap.makeService,
            parse("--spool", f"{blocker}/spool", "--deliver", "memory"),
        )
        self.assertTrue(str(e.code).startswith("mailframe: cannot create the spool"), e.code)
        self.assertNotIn("\n", str(e.code))
