"""
Tests for the aliases settings of C{twistd mailframe} (aliases, virtual,
subaddress, srs-secret, srs-domain: options, config file, makeService) and
for C{mailframe route} (L{mailframe.app.route}).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

from twisted.internet import reactor
from twisted.trial import unittest

from mailframe.app import route, tap
from mailframe.plugins import SettingError
from mailframe.queue.srs import SRSRelay
from mailframe.server.expansion import ExpandedDelivery
from mailframe.validators.aliases import AliasMap
from mailframe.validators.srs import SRSReverser
from mailframe.validators.subaddress import Subaddress
from mailframe.validators.virtual import VirtualMap

REPO = Path(__file__).resolve().parent.parent


class Files(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = Path(os.path.abspath(self.mktemp()))
        self.dir.mkdir()
        self.aliases = self.write(
            "aliases",
            "postmaster: alice\nteam: alice, bob, :include:members\nfwd: erin@remote.example\n"
            "loop1: loop2\nloop2: loop1\n",
        )
        self.write("members", "carol\ndave@partner.example\n")
        self.virtual = self.write(
            "virtual",
            "virtual.example anything\ninfo@virtual.example team@example.com\n"
            "postmaster@virtual.example alice@example.com\n@catch.example alice@example.com\n",
        )
        self.secret = self.write("srs.key", "a secret for the route tests\n")
        self.users = self.write("users", "alice@example.com\nbob@example.com\ncarol@example.com\n")

    def write(self, name: str, text: str) -> str:
        path = self.dir / name
        path.write_text(text)
        return str(path)

    def options(self, *args: str, queue: bool = True) -> list[str]:
        base = ["--hostname", "mx.example.com", "--domain", "example.com", "--aliases",
                self.aliases, "--virtual", self.virtual, "--subaddress", "+", "--deliver",
                "memory", "--validate", f"addresses:{self.users}", "--quiet"]  # fmt: skip
        if queue:
            base += ["--spool", str(self.dir / "spool"), "--srs-secret", self.secret]
        return [*base, *args]


class SettingsTests(Files):
    def test_parsed(self) -> None:
        """The listener gets its maps and separators; the queue its SRS settings."""
        options = tap.Options()
        options.parseOptions(self.options("--srs-domain", "srs.example.com"))
        [spec] = options.listeners
        self.assertEqual((spec.aliases, spec.virtual, spec.subaddress),
                         (self.aliases, self.virtual, "+"))  # fmt: skip
        self.assertEqual(options.queue.srsSecret, self.secret)
        self.assertEqual(options.queue.srsDomain, "srs.example.com")

    def test_configFile(self) -> None:
        """The same names in TOML; a [[listener]] may have its own aliases."""
        path = self.write(
            "mailframe.toml",
            f'aliases = "{self.aliases}"\nsubaddress = "+-"\nspool = "{self.dir}/spool"\n'
            f'srs-secret = "{self.secret}"\n[[listener]]\nlisten = "tcp:2600"\n'
            f'virtual = "{self.virtual}"\n',
        )
        options = tap.Options()
        options.parseOptions(["--config", path])
        [spec] = options.listeners
        self.assertEqual((spec.aliases, spec.virtual, spec.subaddress),
                         (self.aliases, self.virtual, "+-"))  # fmt: skip

    def test_errors(self) -> None:
        """SRS needs the queue (and srs-domain a secret); separators are checked."""
        for args, message in (
            (["--srs-secret", "x"], "srs-secret needs the queue"),
            (["--spool", "s", "--srs-domain", "x.example"], "srs-domain needs srs-secret"),
            (["--subaddress", "@"], "cannot separate a subaddress"),
        ):
            options = tap.Options()
            with self.assertRaises((SettingError, Exception)) as caught:
                options.parseOptions(args)
            self.assertIn(message, str(caught.exception))


class MakeServiceTests(Files):
    def test_rewriters(self) -> None:
        """makeService puts the rewriters first, in order, and SRS on the queue's relay."""
        options = tap.Options()
        options.parseOptions(self.options("--listen", "tcp:0:interface=127.0.0.1"))
        service = tap.makeService(options)
        queueService, listening = list(service)
        factory = listening.factory  # type: ignore[attr-defined]
        kinds = [type(r) for r in factory.context.rewriters]
        self.assertEqual(kinds, [SRSReverser, VirtualMap, AliasMap, Subaddress])
        self.assertIsInstance(factory.backend, ExpandedDelivery)
        runner = queueService.runner  # type: ignore[attr-defined]
        self.assertIsInstance(runner.relay, SRSRelay)
        self.assertIn("virtual.example", {str(d) for d in factory.config.localDomains})
        self.assertTrue(any("rewrites recipients with" in a for a in service.announcements))
        self.assertTrue(any("SRS senders at mx.example.com" in a for a in service.announcements))

    def test_noQueueNoRemoteTargets(self) -> None:
        """Without a queue, an alias file with remote targets stops start-up, in one line."""
        options = tap.Options()
        options.parseOptions(self.options(queue=False))
        with self.assertRaises(SystemExit) as caught:
            tap.makeService(options)
        message = str(caught.exception.code)
        self.assertIn("cannot use the", message)
        self.assertIn("forwarding needs the queue", message)
        self.assertNotIn("\n", message)

    def test_noSecretWarned(self) -> None:
        """With the queue and aliases but no srs-secret, start-up warns that SPF may fail."""
        options = tap.Options()
        args = self.options("--listen", "tcp:0:interface=127.0.0.1")
        i = args.index("--srs-secret")
        del args[i : i + 2]
        options.parseOptions(args)
        service = tap.makeService(options)
        self.assertTrue(any("no srs-secret" in w for w in service.warnings))

    def test_badSecret(self) -> None:
        """An unreadable SRS secret stops start-up in one line."""
        options = tap.Options()
        args = self.options()
        args[args.index(self.secret)] = str(self.dir / "missing")
        options.parseOptions(args)
        with self.assertRaises(SystemExit) as caught:
            tap.makeService(options)
        self.assertIn("srs-secret", str(caught.exception.code))


class RouteTests(Files):
    def explain(self, *args: str) -> tuple[int, str]:
        options = route.RouteOptions()
        options.parseOptions([*self.options(), *args])
        out = io.StringIO()
        d = route.explain(reactor, options, out)
        status: int = self.successResultOf(d)  # type: ignore[arg-type]
        return status, out.getvalue()

    def test_alias(self) -> None:
        """A list with an include: each result, validated, local or relayed, with SRS."""
        status, text = self.explain("--sender", "someone@sender.example", "team@example.com")
        self.assertEqual(status, 0)
        lines = text.splitlines()
        self.assertEqual(lines[0], "team@example.com")
        self.assertIn("alias team (", lines[1])
        self.assertIn("aliases:2)", lines[1])
        self.assertIn("queued, then delivered by memory", text)
        self.assertIn("dave@partner.example\n    queued, then relayed to the MX hosts of "
                      "partner.example", text)  # fmt: skip
        self.assertIn("forwarded with the sender <SRS0=", text)

    def test_virtualCatchAllSubaddressForward(self) -> None:
        """A virtual entry, a subaddress and a remote forward, each explained."""
        status, text = self.explain("info@virtual.example", "bob+lists@example.com",
                                    "fwd@example.com")  # fmt: skip
        self.assertEqual(status, 0)
        self.assertIn("virtual info@virtual.example (", text)
        self.assertIn("Subaddress('+'): bob+lists@example.com -> bob@example.com "
                      "(detail 'lists')", text)  # fmt: skip
        self.assertIn("erin@remote.example\n    queued, then relayed to the MX hosts of "
                      "remote.example\n    forwarded with an SRS sender at mx.example.com", text)  # fmt: skip

    def test_refused(self) -> None:
        """A loop, an unknown user and a virtual domain's unknown address: status 1."""
        for address, reply in (("loop1@example.com", "554 5.4.6"),
                               ("zed@example.com", "550 5.1.1"),
                               ("zed@virtual.example", "550 5.1.1")):  # fmt: skip
            status, text = self.explain(address)
            self.assertEqual(status, 1, text)
            self.assertIn(reply, text)

    def test_relayed(self) -> None:
        """An address of another domain is relayed, never rewritten; a smarthost is named."""
        status, text = self.explain("--relay-host", "smtp.example.net:587", "x@gmail.com")
        self.assertEqual(status, 0)
        self.assertIn("not a local domain", text)
        self.assertIn("relayed to smtp.example.net:587 (the smarthost)", text)

    def test_usage(self) -> None:
        """No address, or an unknown listener, is a usage error (status 2)."""
        self.assertEqual(route.main([]), 2)
        self.assertEqual(route.main([*self.options(), "--listener", "nope", "a@example.com"]), 2)

    def test_command(self) -> None:
        """`mailframe route` runs as a command of the mailframe script (mailframe.app.main)."""
        code = "import sys; from mailframe.app.main import run; sys.argv[0] = 'mailframe'; run()"
        result = subprocess.run(
            [sys.executable, "-c", code, "route", *self.options(), "postmaster@example.com"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=str(REPO),
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("alias postmaster", result.stdout)
        self.assertIn("alice@example.com\n    queued, then delivered by memory", result.stdout)
