"""
Tests for the security checks as plug-ins and twistd options: each
C{--filter} description builds its provider, bad ones are usage errors,
the TOML keys, C{--limits}, C{--enforce-sync}, C{--greet-delay},
C{--error-delay}, C{--soft-errors}, and makeService putting each provider
at every plug point it provides, in the right order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from mailframe import plugins
from mailframe.app import registry, tap
from mailframe.config import ProviderContext, ServerConfig
from mailframe.interfaces import IPlugInFactory
from mailframe.policy.authresults import AuthenticationResults
from mailframe.policy.dkim import DKIMSigner, DKIMVerifier
from mailframe.policy.dmarc import DMARCCheck
from mailframe.policy.dnsbl import DNSBL
from mailframe.policy.factories import POLICY_FACTORIES
from mailframe.policy.helo import HeloCheck
from mailframe.policy.limits import ConnectionLimits
from mailframe.policy.spf import SPFCheck
from mailframe.validators.basic import AnyRecipient
from tests.test_policy_dkim import ED_PEM


def context(**kwargs: Any) -> ProviderContext:
    return ProviderContext(MemoryReactorClock(), ServerConfig(hostname="mx.example", **kwargs))


def parse(*args: str) -> tap.Options:
    options = tap.Options()
    options.parseOptions(list(args))
    return options


def memoryResolver(case: unittest.TestCase) -> None:
    """Make the checks built in C{case} use an empty in-memory resolver."""
    from mailframe.policy import _dns
    from mailframe.policy.testing import MemoryResolver

    case.patch(_dns, "defaultResolver", lambda reactor: MemoryResolver())


class FactoryTests(unittest.TestCase):
    """The factories build checks from descriptions."""

    def setUp(self) -> None:
        memoryResolver(self)
        self.key = self.mktemp()
        Path(self.key).write_bytes(ED_PEM)

    def test_verifyObject(self) -> None:
        """Every factory is an IPlugInFactory with a one-line synopsis."""
        for factory in POLICY_FACTORIES:
            self.assertTrue(verifyObject(IPlugInFactory, factory))
            self.assertNotIn("\n", factory.synopsis)

    def test_builds(self) -> None:
        """Each description builds its check with the options given."""
        c = context(relayNetworks=("10.0.0.0/8",))
        limits = registry.makeFilter("limits:total=9:client=3:rate=4:messages=5:recipients=6", c)
        self.assertIsInstance(limits, ConnectionLimits)
        self.assertEqual((limits.total, limits.perClient), (9, 3))
        self.assertEqual(limits._connections.limit, 4)
        self.assertTrue(limits.isExempt("10.1.1.1"))  # the relay networks by default
        exempt = registry.makeFilter("limits:exempt=192.0.2.0/24", c)
        self.assertFalse(exempt.isExempt("10.1.1.1"))
        self.assertTrue(exempt.isExempt("192.0.2.7"))
        bl = registry.makeFilter(
            "dnsbl:a.example,b.example=127.0.0.2:allow=w.example:timeout=2", c
        )
        self.assertIsInstance(bl, DNSBL)
        self.assertEqual([z.name for z in bl.zones], ["a.example", "b.example"])
        self.assertEqual(bl.dns.timeout, 2.0)
        helo = registry.makeFilter("helo:fqdn=no:fcrdns=require", c)
        self.assertIsInstance(helo, HeloCheck)
        self.assertEqual((helo.fqdn, helo.literal, helo.fcrdns), (False, True, "require"))
        spf = registry.makeFilter("spf:softfail=reject:temperror=accept", c)
        self.assertIsInstance(spf, SPFCheck)
        self.assertEqual((spf.policy["softfail"], spf.policy["fail"]), ("reject", "reject"))
        self.assertIsInstance(registry.makeFilter("dkim-verify", c), DKIMVerifier)
        dmarc = registry.makeFilter("dmarc:reject=no:temperror=defer", c)
        self.assertIsInstance(dmarc, DMARCCheck)
        self.assertEqual((dmarc.reject, dmarc.deferTemporary), (False, True))
        ar = registry.makeFilter("authresults", c)
        self.assertIsInstance(ar, AuthenticationResults)
        self.assertEqual(ar.authservID, "mx.example")
        signer = registry.makeFilter(f"dkim-sign:example.org:ed1:{self.key}:all=yes", c)
        self.assertIsInstance(signer, DKIMSigner)
        self.assertEqual(
            (signer.domain, signer.algorithm, signer.signAll),
            ("example.org", b"ed25519-sha256", True),
        )

    def test_badDescriptions(self) -> None:
        """Mistakes are one-line PlugInErrors naming the problem."""
        for description, words in [
            ("nope", "unknown filter"),
            ("maildir:/tmp", "is a delivery backend, not a filter"),
            ("limits:client=many", "whole number"),
            ("limits:exempt=nonsense", "not a network"),
            ("limits:colour=red", "unknown option"),
            ("dnsbl", "at least one zone"),
            ("dnsbl:nodot", "not a DNS zone"),
            ("dnsbl:bl.example:timeout=0", "timeout"),
            ("helo:fcrdns=maybe", "fcrdns must be one of"),
            ("spf:fail=bounce", "fail must be one of"),
            ("dmarc:reject=perhaps", "reject must be yes or no"),
            ("authresults:id=two words", "one word"),
            ("dkim-sign:example.org:sel", "DOMAIN:SELECTOR:KEYFILE"),
            ("dkim-sign:example.org:sel:/no/such/key", "no such key file"),
            ("dkim-sign:exa mple:sel:/x", "not a domain"),
        ]:
            e = self.assertRaises(plugins.PlugInError, registry.checkFilter, description)
            self.assertIn(words, str(e), description)
            self.assertNotIn("\n", str(e))


class OptionTests(unittest.TestCase):
    """The twistd options and TOML keys of the checks."""

    def test_defaults(self) -> None:
        """By default: no filters, the built-in connection limits, enforce-sync on, a 1 s pregreet."""
        [spec] = parse().listeners
        self.assertEqual((spec.filters, spec.limits), ((), ""))
        c = spec.config
        self.assertEqual(
            (c.enforceSync, c.greetDelay, c.errorDelay, c.softErrors), (True, 1.0, 0, 3)
        )

    def test_noPregreetOnSubmission(self) -> None:
        """Submission listeners greet at once unless --greet-delay says otherwise."""
        listeners = parse(
            "--submission",
            "tcp:5870",
            "--listen",
            "tcp:2525",
            "--auth",
            "memory:a:b",
            "--auth-plaintext",
        ).listeners
        delays = {spec.config.listener: spec.config.greetDelay for spec in listeners}
        self.assertEqual(delays, {"smtp": 1.0, "submission": 0.0})
        listeners = parse(
            "--submission",
            "tcp:5870",
            "--greet-delay",
            "3",
            "--auth",
            "memory:a:b",
            "--auth-plaintext",
        ).listeners
        self.assertEqual({spec.config.greetDelay for spec in listeners}, {3.0})

    def test_options(self) -> None:
        """--filter repeats in order; the session settings reach ServerConfig."""
        [spec] = parse(
            "--filter", "spf", "--filter", "dmarc", "--limits", "client=5",
            "--enforce-sync", "no", "--greet-delay", "2.5", "--error-delay", "1",
            "--soft-errors", "0",
        ).listeners  # fmt: skip
        self.assertEqual((spec.filters, spec.limits), (("spf", "dmarc"), "client=5"))
        c = spec.config
        self.assertEqual(
            (c.enforceSync, c.greetDelay, c.errorDelay, c.softErrors), (False, 2.5, 1, 0)
        )
        self.assertEqual(parse("--limits", "").listeners[0].limits, "")
        self.assertIsNone(parse("--limits", "off").listeners[0].limits)

    def test_configFile(self) -> None:
        """The same settings as TOML keys, and per listener."""
        path = self.mktemp()
        Path(path).write_text(
            'filter = ["dnsbl:bl.example", "spf:fail=defer"]\nlimits = "rate=30"\n'
            "enforce-sync = false\ngreet-delay = 3\nsoft-errors = 5\n"
            '[[listener]]\nlisten = "tcp:0"\nname = "mx2"\nfilter = ["helo"]\n'
        )
        main, other = parse("--config", path, "--listen", "tcp:0").listeners
        self.assertEqual(main.filters, ("dnsbl:bl.example", "spf:fail=defer"))
        self.assertEqual(
            (main.limits, main.config.greetDelay, main.config.softErrors), ("rate=30", 3, 5)
        )
        self.assertFalse(main.config.enforceSync)
        self.assertEqual(other.filters, ("helo",))

    def test_errors(self) -> None:
        """Bad values are usage errors naming the option."""
        for args, words in [
            (("--filter", "spf:fail=bounce"), "fail must be one of"),
            (("--filter", "any"), "not a filter"),
            (("--limits", "client=x"), "whole number"),
            (("--enforce-sync", "maybe"), "--enforce-sync"),
            (("--greet-delay", "-1"), "--greet-delay"),
            (("--soft-errors", "many"), "--soft-errors"),
        ]:
            e = self.assertRaises(usage.UsageError, parse, *args)
            self.assertIn(words, str(e), args)


class MakeServiceTests(unittest.TestCase):
    """makeService wires each check at its plug points."""

    def test_wiring(self) -> None:
        """Providers go to every plug point they provide; authresults and dkim-sign last."""
        memoryResolver(self)
        key = self.mktemp()
        Path(key).write_bytes(ED_PEM)
        service = tap.makeService(
            parse(
                "--listen", "tcp:0:interface=127.0.0.1", "--deliver", "memory",
                "--hostname", "mx.example", "--limits", "recipients=100",
                "--filter", f"dkim-sign:example.org:s:{key}", "--filter", "authresults",
                "--filter", "dnsbl:bl.example", "--filter", "helo", "--filter", "spf",
                "--filter", "dmarc", "--filter", "dkim-verify",
            )
        )  # fmt: skip
        [child] = list(service)
        factory = child.factory  # type: ignore[attr-defined]
        types = lambda providers: [type(p) for p in providers]  # noqa: E731
        self.assertEqual(types(factory.connectionFilters), [ConnectionLimits, DNSBL])
        self.assertEqual(types(factory.heloValidators), [HeloCheck])
        self.assertEqual(types(factory.senderValidators), [ConnectionLimits, SPFCheck])
        self.assertEqual(type(factory.validators[0]), ConnectionLimits)
        self.assertEqual(
            types(factory.messageFilters),
            [ConnectionLimits, DMARCCheck, DKIMVerifier, AuthenticationResults, DKIMSigner],
        )
        self.assertIn(factory.connectionFilters[0], factory.observers)

    def test_limitsOnlyWhereTheyCount(self) -> None:
        """
        The connection limits are asked only at the plug points where a limit
        is on: with no message or recipient rate (the default) they count
        connections and nothing else, so MAIL, RCPT and DATA do not call them.
        """

        def factoryFor(limits: str) -> Any:
            service = tap.makeService(
                parse(
                    "--listen", "tcp:0:interface=127.0.0.1", "--deliver", "memory",
                    "--hostname", "mx.example", "--limits", limits,
                )
            )  # fmt: skip
            [child] = list(service)
            return child.factory  # type: ignore[attr-defined]

        limited = (ConnectionLimits,)
        cases = [
            ("", (), (AnyRecipient,), ()),
            ("client=5:rate=30", (), (AnyRecipient,), ()),
            ("messages=10", limited, (AnyRecipient,), ()),
            ("recipients=10", limited, (ConnectionLimits, AnyRecipient), limited),
        ]
        for limits, mail, rcpt, data in cases:
            factory = factoryFor(limits)
            types = lambda providers: tuple(type(p) for p in providers)  # noqa: E731
            [connection] = factory.connectionFilters
            self.assertIsInstance(connection, ConnectionLimits, limits)
            self.assertIn(connection, factory.observers, limits)
            self.assertEqual(types(factory.senderValidators), mail, limits)
            self.assertEqual(types(factory.validators), rcpt, limits)
            self.assertEqual(types(factory.messageFilters), data, limits)

    def test_badKeyFile(self) -> None:
        """A key file that is not a key stops the service with one line."""
        key = self.mktemp()
        Path(key).write_text("not a key")
        e = self.assertRaises(
            SystemExit,
            tap.makeService,
            parse(
                "--listen",
                "tcp:0",
                "--deliver",
                "memory",
                "--filter",
                f"dkim-sign:example.org:s:{key}",
            ),
        )
        self.assertIn("bad message filter", str(e))
        self.assertIn("not a PEM private key", str(e))
