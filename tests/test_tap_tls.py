"""
Tests for the TLS and AUTH settings of C{twistd mailframe}: --tls-cert,
--tls-key, --tls, --auth, --auth-plaintext, --submission, --submissions, the
brute-force limits, their TOML keys, and what makeService builds from them.
"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.logger import LogLevel
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python import usage
from twisted.trial import unittest

from mailframe.app import tap
from mailframe.extensions.auth import Auth
from mailframe.extensions.starttls import StartTLS
from mailframe.policy.authlimits import AuthFailureLimiter
from tests._certs import TestCA
from tests.test_tap import captureLogs, parse


def extension(factory: Any, kind: type) -> Any:
    return next((e for e in factory.extensions if isinstance(e, kind)), None)


class OptionTests(unittest.TestCase):
    """The options and their checks."""

    def test_defaults(self) -> None:
        """Without TLS options there is no TLS and no AUTH."""
        [spec] = parse().listeners
        self.assertEqual((spec.certificates, spec.selfSigned, spec.auth), ((), False, ()))
        self.assertFalse(spec.config.requireAuthentication)
        self.assertEqual((spec.authFailures, spec.authFailureDelay), (3, 1.0))
        options = parse()
        self.assertEqual(
            (options.clientLimits.failures, options.clientLimits.window),
            (10, 600.0),
        )
        self.assertEqual(options.clientLimits.block, 900.0)

    def test_certificates(self) -> None:
        """--tls-cert and --tls-key pair up in order; keys may be left out altogether."""
        [spec] = parse("--tls-cert", "a.pem", "--tls-key", "a.key",
                       "--tls-cert", "b.pem", "--tls-key", "b.key").listeners  # fmt: skip
        self.assertEqual(spec.certificates, (("a.pem", "a.key"), ("b.pem", "b.key")))
        [spec] = parse("--tls-cert", "both.pem").listeners
        self.assertEqual(spec.certificates, (("both.pem", None),))
        e = self.assertRaises(
            usage.UsageError, parse, "--tls-cert", "a.pem", "--tls-cert", "b", "--tls-key", "k"
        )
        self.assertIn("one tls-key per tls-cert", str(e))
        self.assertTrue(parse("--tls").listeners[0].selfSigned)

    def test_auth(self) -> None:
        """--auth takes strcred strings; an unknown type is a usage error without the secret."""
        [spec] = parse("--auth", "memory:alice:secret", "--auth", "unix").listeners
        self.assertEqual(spec.auth, ("memory:alice:secret", "unix"))
        e = self.assertRaises(usage.UsageError, parse, "--auth", "ldap:cn=admin:hunter2")
        self.assertIn("unknown auth type 'ldap' (known: ", str(e))
        self.assertIn("mailframe", str(e))
        self.assertNotIn("hunter2", str(e))

    def test_submission(self) -> None:
        """--submission and --submissions add listeners where MAIL needs AUTH."""
        listeners = parse(
            "--tls-cert", "c.pem", "--tls-key", "k.pem", "--auth", "memory:a:b",
            "--submission", "tcp:587", "--submissions", "tcp:465",
        ).listeners  # fmt: skip
        self.assertEqual([s.config.listener for s in listeners], ["submission", "submissions"])
        submission, submissions = listeners
        self.assertEqual(submission.endpoints, ("tcp:587",))
        self.assertTrue(submission.config.requireAuthentication)
        self.assertFalse(submission.implicitTLS)
        self.assertTrue(submissions.implicitTLS)
        self.assertEqual(submissions.auth, ("memory:a:b",))

    def test_submissionWithListen(self) -> None:
        """With --listen too, the smtp listener comes first and needs no AUTH."""
        smtp, submission = parse(
            "--tls", "--auth", "memory:a:b", "--listen", "tcp:25", "--submission", "tcp:587"
        ).listeners
        self.assertEqual(smtp.endpoints, ("tcp:25",))
        self.assertFalse(smtp.config.requireAuthentication)
        self.assertEqual(smtp.auth, ("memory:a:b",))
        self.assertTrue(submission.config.requireAuthentication)

    def test_limits(self) -> None:
        """The brute-force limits are options; the per-client ones are service-wide."""
        options = parse(
            "--auth-failures", "5", "--auth-failure-delay", "0", "--auth-client-failures", "20",
            "--auth-client-window", "60", "--auth-client-block", "30",
        )  # fmt: skip
        [spec] = options.listeners
        self.assertEqual((spec.authFailures, spec.authFailureDelay), (5, 0.0))
        limits = options.clientLimits
        self.assertEqual((limits.failures, limits.window, limits.block), (20, 60.0, 30.0))
        self.assertRaises(usage.UsageError, parse, "--auth-failures", "0")
        self.assertRaises(usage.UsageError, parse, "--auth-client-block", "-1")

    def test_errors(self) -> None:
        """Listeners that could never authenticate anyone are usage errors."""
        cases = [
            (("--submission", "tcp:587", "--tls"), "requires AUTH: give auth"),
            (("--submission", "tcp:587", "--auth", "unix"), "offered only inside TLS"),
            (("--submissions", "tcp:465", "--auth", "unix"), "speaks TLS: give tls-cert"),
            (("--require-auth",), "requires AUTH: give auth"),
            (("--implicit-tls",), "speaks TLS"),
        ]
        for args, words in cases:
            e = self.assertRaises(usage.UsageError, parse, *args)
            self.assertIn(words, str(e), args)
        [spec] = parse("--submission", "tcp:587", "--auth", "unix", "--auth-plaintext").listeners
        self.assertTrue(spec.authPlaintext)

    def test_helpAuth(self) -> None:
        """--help-auth lists the checker types, mailframe's among them."""
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        self.assertRaises(SystemExit, parse, "--help-auth")
        self.assertIn("memory", out.getvalue())
        self.assertIn("mailframe    Path to a mailframe password file", out.getvalue())

    def test_usageMentionsOptions(self) -> None:
        """--help shows the TLS and AUTH options."""
        text = tap.Options().getUsage(width=100)
        for option in ("--tls-cert", "--tls-key", "--auth=", "--auth-plaintext", "--submission=",
                       "--submissions=", "--auth-client-block"):  # fmt: skip
            self.assertIn(option, text)


TOML = """
tls-cert = ["{cert}"]
tls-key = ["{key}"]
auth = ["memory:alice:secret"]
auth-failures = 4
auth-client-failures = 7
submission = ["tcp:0:interface=127.0.0.1"]
submissions = "tcp:0:interface=127.0.0.1"

[[listener]]
name = "internal"
listen = "tcp:0:interface=127.0.0.1"
require-auth = true
auth-plaintext = true
auth-failure-delay = 0
"""


class ConfigFileTests(unittest.TestCase):
    """The same settings in the TOML file, and per [[listener]] table."""

    def write(self, text: str) -> str:
        path = self.mktemp()
        Path(path).write_text(text)
        return path

    def test_keys(self) -> None:
        """Every TLS and AUTH key is read; tables inherit and override."""
        path = self.write(TOML.format(cert="c.pem", key="k.pem"))
        options = parse("--config", path)
        submission, submissions, internal = options.listeners
        self.assertEqual(submission.certificates, (("c.pem", "k.pem"),))
        self.assertEqual(submission.authFailures, 4)
        self.assertTrue(submissions.implicitTLS)
        self.assertEqual(internal.config.listener, "internal")
        self.assertTrue(internal.config.requireAuthentication)
        self.assertTrue(internal.authPlaintext)
        self.assertEqual(internal.authFailureDelay, 0.0)
        self.assertEqual(options.clientLimits.failures, 7)

    def test_topLevelOnly(self) -> None:
        """Service-wide keys are refused in a [[listener]] table."""
        for key, value in (("submission", '"tcp:1"'), ("auth-client-window", "5")):
            path = self.write(f'[[listener]]\nlisten = "tcp:1"\n{key} = {value}\n')
            e = self.assertRaises(usage.UsageError, parse, "--config", path)
            self.assertIn(f"'{key}' is a setting of the top level only", str(e))

    def test_badValues(self) -> None:
        """Wrong types are errors naming the key."""
        for text, words in (
            ("tls = 'yes'", "tls: expected true or false"),
            ("auth = 3", "auth: expected a list of strings"),
            ("auth = ['nosuch:x']", "unknown auth type 'nosuch'"),
            ("submission = 'tcp:bad'", "submission: bad endpoint"),
        ):
            e = self.assertRaises(usage.UsageError, parse, "--config", self.write(text))
            self.assertIn(words, str(e))


class MakeServiceTests(unittest.TestCase):
    """makeService builds STARTTLS, AUTH, the limiter and implicit TLS from the settings."""

    def setUp(self) -> None:
        self.ca = TestCA(self.mktemp())
        self.issued = self.ca.issue("mx", "mx.example")

    def service(self, *args: str) -> tap.MailframeService:
        return tap.makeService(
            parse("--deliver", "memory", "--hostname", "mx.example",
                  "--tls-cert", self.issued.fullchain, "--tls-key", self.issued.privkey, *args)
        )  # fmt: skip

    def test_extensions(self) -> None:
        """STARTTLS and AUTH on the submission listener; one limiter for every listener."""
        service = self.service(
            "--auth", "memory:alice:secret", "--listen", "tcp:0:interface=127.0.0.1",
            "--submission", "tcp:0:interface=127.0.0.1",
        )  # fmt: skip
        smtp, submission = (child.factory for child in service)  # type: ignore[attr-defined]
        for factory in (smtp, submission):
            self.assertIsNotNone(extension(factory, StartTLS))
            auth = extension(factory, Auth)
            self.assertEqual(auth.mechanisms, ("SCRAM-SHA-256", "CRAM-MD5", "PLAIN", "LOGIN"))
            self.assertFalse(auth.allowPlaintext)
            [_limiter] = [
                f for f in factory.connectionFilters if isinstance(f, AuthFailureLimiter)
            ]
        self.assertIs(
            next(f for f in smtp.connectionFilters if isinstance(f, AuthFailureLimiter)),
            next(f for f in submission.connectionFilters if isinstance(f, AuthFailureLimiter)),
        )
        self.assertIs(extension(smtp, StartTLS).contextFactory,
                      extension(submission, StartTLS).contextFactory)  # fmt: skip
        self.assertTrue(submission.config.requireAuthentication)
        self.assertIn("; STARTTLS; AUTH SCRAM-SHA-256 CRAM-MD5 PLAIN LOGIN; MAIL needs AUTH",
                      service.announcements[1])  # fmt: skip

    def test_implicit(self) -> None:
        """--submissions wraps its endpoints in TLS and offers no STARTTLS."""
        service = self.service("--auth", "memory:a:b", "--submissions", "tcp:0")
        [child] = list(service)
        wrapper = child.factory  # type: ignore[attr-defined]
        self.assertIsInstance(wrapper, TLSMemoryBIOFactory)
        factory = wrapper.wrappedFactory
        self.assertIsNone(extension(factory, StartTLS))
        self.assertIsNotNone(extension(factory, Auth))
        self.assertIn("; TLS from the first byte;", service.announcements[0])

    def test_noAuth(self) -> None:
        """TLS without --auth: STARTTLS only, no AUTH failure limiter."""
        from mailframe.policy.limits import ConnectionLimits

        [child] = list(self.service("--listen", "tcp:0"))
        factory = child.factory  # type: ignore[attr-defined]
        self.assertIsNone(extension(factory, Auth))
        self.assertEqual([type(f) for f in factory.connectionFilters], [ConnectionLimits])

    def test_badCertificate(self) -> None:
        """A certificate that cannot be loaded is a one-line SystemExit."""
        options = parse("--deliver", "memory", "--tls-cert", self.issued.fullchain,
                        "--tls-key", self.ca.issue("x", "x.example").privkey)  # fmt: skip
        e = self.assertRaises(SystemExit, tap.makeService, options)
        self.assertTrue(str(e.code).startswith("mailframe: cannot set up TLS: "), e.code)
        self.assertIn("does not match", str(e.code))
        self.assertNotIn("\n", str(e.code))

    def test_badChecker(self) -> None:
        """A checker that cannot be built is a one-line SystemExit naming only its type."""
        e = self.assertRaises(
            SystemExit, self.service, "--auth", f"mailframe:{self.mktemp()}", "--listen", "tcp:0"
        )
        self.assertIn("mailframe: cannot set up --auth mailframe: cannot read password file",
                      str(e.code))  # fmt: skip
        e = self.assertRaises(
            SystemExit, self.service, "--auth", "memory:odd", "--listen", "tcp:0"
        )
        self.assertNotIn("odd", str(e.code))

    def test_selfSigned(self) -> None:
        """--tls makes the development certificate in the working directory, once."""
        cwd = os.path.abspath(self.mktemp())
        os.makedirs(cwd)
        self.addCleanup(os.chdir, os.getcwd())
        os.chdir(cwd)
        service = tap.makeService(parse("--tls", "--deliver", "memory", "--hostname", "mx.example",
                                        "--listen", "tcp:0", "--submission", "tcp:0",
                                        "--auth", "memory:a:b"))  # fmt: skip
        self.assertEqual(os.listdir(cwd), ["mailframe-selfsigned-mx.example.pem"])
        first, second = (extension(c.factory, StartTLS) for c in service)  # type: ignore[attr-defined]
        self.assertIs(first.contextFactory, second.contextFactory)
        self.assertEqual(first.contextFactory.names, ("mx.example",))

    @defer.inlineCallbacks
    def test_plaintextWarning(self) -> Any:
        """--auth-plaintext is announced with a warning when the service starts."""
        events = captureLogs(self)
        service = self.service("--auth", "memory:a:b", "--auth-plaintext",
                               "--listen", "tcp:0:interface=127.0.0.1")  # fmt: skip
        service.startService()
        try:
            warnings = [e for e in events if e["log_level"] == LogLevel.warn and "line" in e]
            self.assertEqual(len(warnings), 1)
            self.assertIn("passwords cross the network in clear", warnings[0]["line"])
            self.assertIn("AUTH SCRAM-SHA-256 CRAM-MD5 PLAIN LOGIN (also without TLS)",
                          service.announcements[0])  # fmt: skip
        finally:
            yield service.stopService()

    def test_authWithoutTLSWarning(self) -> None:
        """--auth on a listener without TLS (nor --auth-plaintext) is warned about."""
        service = tap.makeService(
            parse("--deliver", "memory", "--auth", "memory:a:b", "--listen", "tcp:0")
        )
        self.assertEqual(len(service.warnings), 1)
        self.assertIn("--auth is never offered on smtp", service.warnings[0])
