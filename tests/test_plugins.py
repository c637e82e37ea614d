"""
Tests for L{mailframe.plugins}: description strings, the built-in factories,
discovery through twisted.plugin, and the errors a user sees.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogEvent, capturedLogs
from twisted.plugin import IPlugin, getPlugins
from twisted.trial import unittest
from zope.interface import Interface, implementer
from zope.interface.verify import verifyObject

import twisted.plugins
from mailframe.app import registry
from mailframe.backends import factories as backendFactories
from mailframe.backends.memory import MemoryBackend
from mailframe.config import ProviderContext, ServerConfig
from mailframe.interfaces import (
    IDeliveryBackend,
    ILocalDomains,
    IMessageFilter,
    IPlugInFactory,
    IRecipientValidator,
)
from mailframe.plugins import PlugInError, parseDescription

REPO = Path(__file__).resolve().parents[1]


def captureLogs(case: unittest.TestCase) -> Sequence[LogEvent]:
    """The log events emitted until the end of the test."""
    manager = capturedLogs()
    events = manager.__enter__()
    case.addCleanup(manager.__exit__, None, None, None)
    return events


def context() -> ProviderContext:
    return ProviderContext(MemoryReactorClock(), ServerConfig(hostname="mx.example"))


@implementer(IPlugin, IPlugInFactory)
class FakeFactory:
    """A third-party-like factory: not a PlugInFactory, so it cannot be checked."""

    def __init__(self, prefix: str, provides: Any = IDeliveryBackend, result: Any = None) -> None:
        self.prefix = prefix
        self.provides = provides
        self.synopsis = f"{prefix}:NAME[:size=N]"
        self.description = f"The fake {prefix} plug-in."
        self.result = result
        self.calls: list[tuple[Any, ...]] = []

    def makeProvider(self, context: Any, *args: str, **kwargs: str) -> Any:
        return self._build(context, *args, **kwargs)

    def _build(self, context: Any, name: str, size: str = "1") -> Any:
        self.calls.append((context, name, size))
        if size == "bad":
            raise ValueError("size must be a number\nsecond line")
        return self.result if self.result is not None else MemoryBackend()


class ExplicitFactory(FakeFactory):
    """
    A factory whose makeProvider spells out its parameters.  twisted.plugin
    takes it (verifyObject would not); checkDescription can bind them.
    """

    def makeProvider(self, context: Any, name: str, size: str = "1") -> Any:  # type: ignore[override]
        return self._build(context, name, size)


class ParseDescriptionTests(unittest.TestCase):
    """L{parseDescription} splits like endpoint descriptions."""

    def test_example(self) -> None:
        """The example of the docs: one argument, one option."""
        self.assertEqual(
            parseDescription("maildir:/var/mail:layout=user"),
            ("maildir", ("/var/mail",), {"layout": "user"}),
        )

    def test_prefixOnly(self) -> None:
        """A bare prefix has no arguments and no options."""
        self.assertEqual(parseDescription("any"), ("any", (), {}))

    def test_commaListIsOneArgument(self) -> None:
        """Commas do not split: the factory does."""
        self.assertEqual(
            parseDescription("domains:a.example,b.example"),
            ("domains", ("a.example,b.example",), {}),
        )

    def test_escapedColon(self) -> None:
        """A backslash-colon is part of the argument."""
        self.assertEqual(parseDescription(r"x:a\:b:c"), ("x", ("a:b", "c"), {}))

    def test_escapedBackslash(self) -> None:
        """A double backslash is one backslash, and does not escape what follows."""
        self.assertEqual(parseDescription("x:a\\\\:b"), ("x", ("a\\", "b"), {}))

    def test_escapedEquals(self) -> None:
        """A backslash-equals keeps a part positional."""
        self.assertEqual(parseDescription(r"x:layout\=user"), ("x", ("layout=user",), {}))

    def test_escapedColonInOption(self) -> None:
        """An option value may hold an escaped colon, and further equals signs."""
        self.assertEqual(
            parseDescription(r"x:host=\:\:1:q=a=b"), ("x", (), {"host": "::1", "q": "a=b"})
        )

    def test_nonIdentifierKeyIsPositional(self) -> None:
        """A part whose text before '=' is not an identifier is an argument."""
        self.assertEqual(parseDescription("x:/a=b:c-d=e"), ("x", ("/a=b", "c-d=e"), {}))

    def test_mixedOrderAndEmpty(self) -> None:
        """Arguments may follow options; empty parts are empty arguments."""
        self.assertEqual(parseDescription("x:k=v:a::"), ("x", ("a", "", ""), {"k": "v"}))

    def test_errors(self) -> None:
        """No prefix, a repeated option or a lone trailing backslash is a PlugInError."""
        for bad, words in [
            (":a", "no plug-in name"),
            ("", "no plug-in name"),
            ("x:k=1:k=2", "given twice"),
            ("x:a\\", "lone backslash"),
        ]:
            e = self.assertRaises(PlugInError, parseDescription, bad)
            self.assertIn(words, str(e))
            self.assertIsInstance(e, ValueError)


class BuiltinFactoryTests(unittest.TestCase):
    """Each built-in factory is a proper plug-in and builds its provider."""

    def test_verifyObject(self) -> None:
        """Every built-in provides IPlugInFactory and IPlugin."""
        self.assertEqual(
            [f.prefix for f in registry.BUILTINS],
            ["maildir", "mbox", "memory", "pipe", "lmtp", "webhook", "amqp", "redis-stream",
             "any", "domains", "addresses", "aliases",
             "virtual", "subaddress", "limits", "dnsbl", "helo", "spf", "dkim-verify", "dmarc",
             "authresults", "dkim-sign", "rspamd"],
        )  # fmt: skip
        for factory in registry.BUILTINS:
            self.assertTrue(verifyObject(IPlugInFactory, factory))
            self.assertTrue(IPlugin.providedBy(factory))
            self.assertNotIn("\n", factory.synopsis)

    def test_maildir(self) -> None:
        """maildir:PATH:layout=user builds a MaildirBackend there."""
        from mailframe.backends.maildir import MaildirBackend

        path = self.mktemp()
        ctx = context()
        backend = registry.makeProvider(IDeliveryBackend, f"maildir:{path}:layout=user", ctx)
        self.assertIsInstance(backend, MaildirBackend)
        self.assertEqual((backend.path, backend.layout), (os.path.abspath(path), "user"))
        self.assertIs(backend.reactor, ctx.reactor)
        self.assertTrue(os.path.isdir(path))

    def test_maildirDefaultLayout(self) -> None:
        """Without layout, a maildir is single."""
        path = self.mktemp()
        backend = registry.makeProvider(IDeliveryBackend, f"maildir:{path}", context())
        self.assertEqual(backend.layout, "single")
        self.assertTrue(os.path.isdir(os.path.join(path, "new")))

    def test_mbox(self) -> None:
        """mbox:PATH builds an MboxBackend."""
        from mailframe.backends.mbox import MboxBackend

        path = self.mktemp()
        backend = registry.makeProvider(IDeliveryBackend, f"mbox:{path}:layout=user", context())
        self.assertIsInstance(backend, MboxBackend)
        self.assertEqual((backend.path, backend.layout), (os.path.abspath(path), "user"))

    def test_memory(self) -> None:
        """memory keeps messages; memory:keep=no only counts."""
        kept = registry.makeProvider(IDeliveryBackend, "memory", context())
        counted = registry.makeProvider(IDeliveryBackend, "memory:keep=no", context())
        self.assertIsInstance(kept, MemoryBackend)
        self.assertEqual((kept.keep, counted.keep), (True, False))

    def test_any(self) -> None:
        """any builds an AnyRecipient."""
        from mailframe.validators.basic import AnyRecipient

        validator = registry.makeProvider(IRecipientValidator, "any", context())
        self.assertIsInstance(validator, AnyRecipient)

    def test_domains(self) -> None:
        """domains:A,B builds a DomainsValidator that makes A and B local."""
        from mailframe.validators.basic import DomainsValidator

        validator = registry.makeProvider(
            IRecipientValidator, "domains:a.example, B.example", context()
        )
        self.assertIsInstance(validator, DomainsValidator)
        self.assertTrue(ILocalDomains.providedBy(validator))
        self.assertEqual(list(validator.domains), ["a.example", "B.example"])

    def test_addresses(self) -> None:
        """addresses:PATH builds an AddressListValidator reading PATH."""
        from mailframe.validators.addresses import AddressListValidator

        path = self.mktemp()
        Path(path).write_text("alice@mx.example\n")
        ctx = context()
        validator = registry.makeProvider(IRecipientValidator, f"addresses:{path}", ctx)
        self.assertIsInstance(validator, AddressListValidator)
        self.assertEqual((validator.path, len(validator)), (os.path.abspath(path), 1))
        self.assertIs(validator.clock, ctx.reactor)

    def test_badArguments(self) -> None:
        """Arguments a built-in refuses give one-line PlugInErrors naming the problem."""
        cases = [
            (IDeliveryBackend, "maildir", "expected one PATH"),
            (IDeliveryBackend, "maildir:/a:/b", "expected one PATH"),
            (IDeliveryBackend, "maildir:/a:layout=flat", "layout must be one of single"),
            (IDeliveryBackend, "maildir:/a:mode=600", "unknown option 'mode'"),
            (IDeliveryBackend, "mbox:/a:layout=domain", "layout must be one of single, user"),
            (IDeliveryBackend, "memory:keep=maybe", "keep must be yes or no"),
            (IDeliveryBackend, "memory:x", "takes no argument"),
            (IRecipientValidator, "any:x", "takes no argument"),
            (IRecipientValidator, "domains", "at least one domain"),
            (IRecipientValidator, "domains:a..b", "not a domain"),
            (IRecipientValidator, "addresses:/no/such/file", "no such file"),
        ]
        for interface, description, words in cases:
            for check in (registry.checkDescription, registry.makeProvider):
                args = (
                    (interface, description)
                    if check is registry.checkDescription
                    else (interface, description, context())
                )
                e = self.assertRaises(PlugInError, check, *args)
                self.assertIn(words, str(e), description)
                self.assertIn(repr(description), str(e))
                self.assertNotIn("\n", str(e))

    def test_checkTouchesNothing(self) -> None:
        """checkDescription of a maildir does not create it."""
        path = self.mktemp()
        factory = registry.checkDescription(IDeliveryBackend, f"maildir:{path}:layout=domain")
        self.assertIs(factory, backendFactories.maildirBackend)
        self.assertFalse(os.path.exists(path))

    def test_creationFailureIsOneLine(self) -> None:
        """A maildir that cannot be created is a one-line PlugInError."""
        blocker = self.mktemp()
        Path(blocker).write_text("a file")
        e = self.assertRaises(
            PlugInError,
            registry.makeProvider,
            IDeliveryBackend,
            f"maildir:{blocker}/Maildir",
            context(),
        )
        self.assertIn("cannot create", str(e))
        self.assertNotIn("\n", str(e))


class RedactTests(unittest.TestCase):
    """Passwords in URLs never reach an error message, a log line or route's output."""

    def test_redact(self) -> None:
        from mailframe.plugins import redact

        self.assertEqual(
            redact("amqp:amqp://u:secret@host:5672/:key=x"), "amqp:amqp://u:****@host:5672/:key=x"
        )
        self.assertEqual(redact("redis-stream:redis://:pw@h/0"), "redis-stream:redis://:****@h/0")
        self.assertEqual(redact("webhook:https://h/p?x=y"), "webhook:https://h/p?x=y")
        self.assertEqual(
            redact("webhook:https://h/p?x=y&access_token=abc:timeout=5"),
            "webhook:https://h/p?x=y&access_token=****:timeout=5",
        )
        self.assertEqual(
            redact("webhook:https://h/?apiKey=k&sig=s"), "webhook:https://h/?apiKey=****&sig=****"
        )
        self.assertEqual(redact("maildir:/var/mail"), "maildir:/var/mail")

    def test_badDescription(self) -> None:
        """A refused description with a password in its URL is shown without it."""
        with self.assertRaises(PlugInError) as caught:
            registry.checkDescription(
                IDeliveryBackend, "amqp:amqp://u:secretpw@127.0.0.1:5672/:bogus=1"
            )
        self.assertNotIn("secretpw", str(caught.exception))
        self.assertIn("amqp://u:****@127.0.0.1:5672/", str(caught.exception))


class LookupTests(unittest.TestCase):
    """Finding factories, and the errors of a wrong prefix or kind."""

    def fakePlugins(self, *factories: Any) -> None:
        for factory in factories:
            if not isinstance(factory, ExplicitFactory):
                verifyObject(IPlugInFactory, factory)
        self.patch(registry, "getPlugins", lambda interface: list(factories))

    def test_factoriesFor(self) -> None:
        """factoriesFor lists the built-ins of a kind first, then the others."""
        fake = FakeFactory("fake")
        self.fakePlugins(fake, FakeFactory("filter", IMessageFilter))
        self.assertEqual(
            [f.prefix for f in registry.factoriesFor(IDeliveryBackend)],
            [
                "maildir",
                "mbox",
                "memory",
                "pipe",
                "lmtp",
                "webhook",
                "amqp",
                "redis-stream",
                "fake",
            ],
        )
        self.assertEqual(
            [f.prefix for f in registry.factoriesFor(IRecipientValidator)],
            ["any", "domains", "addresses", "aliases", "virtual", "subaddress"],
        )
        self.assertEqual(
            [f.prefix for f in registry.factoriesFor(IMessageFilter)],
            ["dkim-verify", "dmarc", "authresults", "dkim-sign", "rspamd", "filter"],
        )
        self.assertEqual(len(registry.factoriesFor(Interface)), len(registry.BUILTINS) + 2)

    def test_unknownPrefix(self) -> None:
        """An unknown prefix names the kind and lists the known prefixes."""
        e = self.assertRaises(
            PlugInError, registry.makeProvider, IDeliveryBackend, "nosuch:/x", context()
        )
        self.assertEqual(
            str(e),
            "unknown delivery backend 'nosuch' (known: amqp, lmtp, maildir, mbox, memory, pipe, "
            "redis-stream, webhook)",
        )

    def test_wrongKind(self) -> None:
        """A validator's prefix given as a backend says what it is."""
        e = self.assertRaises(
            PlugInError, registry.makeProvider, IDeliveryBackend, "any", context()
        )
        self.assertEqual(
            str(e),
            "'any' is a recipient validator, not a delivery backend "
            "(delivery backends: amqp, lmtp, maildir, mbox, memory, pipe, redis-stream, webhook)",
        )
        e = self.assertRaises(
            PlugInError, registry.checkDescription, IRecipientValidator, "mbox:x"
        )
        self.assertIn("'mbox' is a delivery backend, not a recipient validator", str(e))

    def test_prefixIgnoresCase(self) -> None:
        """Prefixes match case-insensitively, like endpoint types."""
        self.assertIsInstance(
            registry.makeProvider(IDeliveryBackend, "Memory", context()), MemoryBackend
        )

    def test_thirdPartyBuilt(self) -> None:
        """A discovered factory gets the context, arguments and options."""
        fake = FakeFactory("fake")
        self.fakePlugins(fake)
        ctx = context()
        provider = registry.makeProvider(IDeliveryBackend, "fake:n:size=3", ctx)
        self.assertIsInstance(provider, MemoryBackend)
        self.assertEqual(fake.calls, [(ctx, "n", "3")])

    def test_thirdPartyValueError(self) -> None:
        """A factory's ValueError becomes a PlugInError with its first line."""
        self.fakePlugins(FakeFactory("fake"))
        e = self.assertRaises(
            PlugInError, registry.makeProvider, IDeliveryBackend, "fake:n:size=bad", context()
        )
        self.assertEqual(str(e), "bad delivery backend 'fake:n:size=bad': size must be a number")

    def test_thirdPartyTypeError(self) -> None:
        """A factory's TypeError for its arguments is reworded, with its synopsis."""
        self.fakePlugins(FakeFactory("fake"))
        for description in ["fake", "fake:a:b:c", "fake:n:colour=red"]:
            e = self.assertRaises(
                PlugInError, registry.makeProvider, IDeliveryBackend, description, context()
            )
            self.assertIn(f"bad delivery backend {description!r}: bad arguments", str(e))
            self.assertIn("(usage: fake:NAME[:size=N])", str(e))

    def test_checkCannotTellForOthers(self) -> None:
        """checkDescription of a (*args, **kwargs) factory checks the prefix only."""
        fake = FakeFactory("fake")
        self.fakePlugins(fake)
        self.assertIs(registry.checkDescription(IDeliveryBackend, "fake:a:b:c"), fake)
        self.assertEqual(fake.calls, [])

    def test_checkBindsExplicitSignature(self) -> None:
        """checkDescription binds an explicit signature, without calling it."""
        fake = ExplicitFactory("fake")
        self.fakePlugins(fake)
        self.assertIs(registry.checkDescription(IDeliveryBackend, "fake:n:size=2"), fake)
        for description in ["fake", "fake:a:b:c", "fake:n:colour=red"]:
            e = self.assertRaises(
                PlugInError, registry.checkDescription, IDeliveryBackend, description
            )
            self.assertIn(f"bad delivery backend {description!r}: bad arguments", str(e))
            self.assertIn("(usage: fake:NAME[:size=N])", str(e))
        self.assertEqual(fake.calls, [])

    def test_wrongProvider(self) -> None:
        """A factory that builds something of another kind is refused clearly."""
        self.fakePlugins(FakeFactory("fake", result=object()))
        e = self.assertRaises(
            PlugInError, registry.makeProvider, IDeliveryBackend, "fake:n", context()
        )
        self.assertIn("does not provide IDeliveryBackend", str(e))

    def test_incompleteProvider(self) -> None:
        """A provider that declares its interface but lacks a method is refused in one line."""

        @implementer(IDeliveryBackend)
        class NoDeliver:
            pass

        self.fakePlugins(FakeFactory("fake", result=NoDeliver()))
        e = self.assertRaises(
            PlugInError, registry.makeProvider, IDeliveryBackend, "fake:n", context()
        )
        self.assertIn("plug-in 'fake' built", str(e))
        self.assertIn("which does not implement IDeliveryBackend", str(e))
        self.assertIn("deliver", str(e))
        self.assertNotIn("\n", str(e))

    def test_providerWithWrongSignature(self) -> None:
        """A method that cannot take the interface's arguments is refused (verifyObject)."""

        @implementer(IDeliveryBackend)
        class OneArgument:
            def deliver(self, envelope: Any) -> None:
                pass

        self.fakePlugins(FakeFactory("fake", result=OneArgument()))
        e = self.assertRaises(
            PlugInError, registry.makeProvider, IDeliveryBackend, "fake:n", context()
        )
        self.assertIn("which does not implement IDeliveryBackend", str(e))
        self.assertNotIn("\n", str(e))

    def test_completeProvider(self) -> None:
        """A provider with everything its interface promises is built."""
        self.fakePlugins(FakeFactory("fake"))
        provider = registry.makeProvider(IDeliveryBackend, "fake:n", context())
        self.assertTrue(verifyObject(IDeliveryBackend, provider))

    def test_scanFailure(self) -> None:
        """If scanning for plug-ins fails, the built-ins remain, and it is logged."""

        def broken(interface: Any) -> Any:
            raise RuntimeError("broken plug-in directory")

        self.patch(registry, "getPlugins", broken)
        self.assertEqual(len(registry.factoriesFor(Interface)), len(registry.BUILTINS))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_collisionBuiltinWins(self) -> None:
        """A third-party factory with a built-in's prefix is ignored, with a warning."""
        events = captureLogs(self)
        impostor = FakeFactory("maildir")
        self.fakePlugins(impostor, backendFactories.memoryBackend)
        self.assertEqual(
            [f.prefix for f in registry.factoriesFor(IDeliveryBackend)],
            ["maildir", "mbox", "memory", "pipe", "lmtp", "webhook", "amqp", "redis-stream"],
        )
        warnings = [e for e in events if e.get("factory") is impostor]
        self.assertEqual(len(warnings), 1)
        self.assertEqual(warnings[0]["prefix"], "maildir")
        registry.factoriesFor(IDeliveryBackend)
        self.assertEqual(len([e for e in events if e.get("factory") is impostor]), 1)

    def test_samePrefixOtherKind(self) -> None:
        """Prefixes are per kind: a validator may be called 'maildir'."""
        self.fakePlugins(FakeFactory("maildir", IRecipientValidator))
        self.assertEqual(
            [f.prefix for f in registry.factoriesFor(IRecipientValidator)][-1], "maildir"
        )


DROPIN = """
from zope.interface import implementer
from twisted.plugin import IPlugin
from mailframe.interfaces import IDeliveryBackend, IPlugInFactory
from mailframe.backends.memory import MemoryBackend
from mailframe.backends.factories import memoryBackend  # re-exported: not a clash


@implementer(IPlugin, IPlugInFactory)
class _Factory:
    provides = IDeliveryBackend

    def __init__(self, prefix):
        self.prefix = prefix
        self.synopsis = prefix + ":TAG"
        self.description = "A third-party backend."

    def makeProvider(self, context, *args, **kwargs):
        (tag,) = args
        backend = MemoryBackend()
        backend.tag = tag
        return backend


thirdParty = _Factory("thirdparty")
impostor = _Factory("memory")
"""


class DiscoveryTests(unittest.TestCase):
    """Discovery through twisted.plugin, with real dropins."""

    def addPluginDirectory(self, root: Path) -> None:
        sys.path.insert(0, str(root))
        self.addCleanup(sys.path.remove, str(root))
        here = str(root / "twisted" / "plugins")
        self.patch(twisted.plugins, "__path__", [*twisted.plugins.__path__, here])

    def test_builtinsDropin(self) -> None:
        """twisted/plugins/mailframe_builtins.py exposes the built-ins to getPlugins."""
        here = str(REPO / "twisted" / "plugins")
        if here not in twisted.plugins.__path__:
            self.patch(twisted.plugins, "__path__", [*twisted.plugins.__path__, here])
        found = list(getPlugins(IPlugInFactory))
        for factory in registry.BUILTINS:
            self.assertTrue(any(f is factory for f in found), factory)

    def test_dropinImportsLittle(self) -> None:
        """Importing the dropin imports no provider, no server and no reactor."""
        code = (
            "import sys, twisted.plugins.mailframe_builtins\n"
            "heavy = ['twisted.internet.reactor', 'mailframe.server.protocol',\n"
            "         'mailframe.backends.maildir', 'mailframe.backends.mbox',\n"
            "         'mailframe.validators.basic', 'mailframe.validators.addresses']\n"
            "print([m for m in heavy if m in sys.modules])\n"
        )
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *sys.path])}
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
        )
        self.assertEqual((out.returncode, out.stdout.strip()), (0, "[]"), out.stderr)

    def test_thirdPartyPackage(self) -> None:
        """A dropin on sys.path is found and chosen by its prefix; a clash loses."""
        root = Path(self.mktemp())
        (root / "twisted" / "plugins").mkdir(parents=True)
        (root / "twisted" / "plugins" / "thirdparty_mf.py").write_text(textwrap.dedent(DROPIN))
        self.addCleanup(sys.modules.pop, "twisted.plugins.thirdparty_mf", None)
        self.addPluginDirectory(root)
        events = captureLogs(self)

        prefixes = [f.prefix for f in registry.factoriesFor(IDeliveryBackend)]
        self.assertEqual(
            prefixes,
            [
                "maildir",
                "mbox",
                "memory",
                "pipe",
                "lmtp",
                "webhook",
                "amqp",
                "redis-stream",
                "thirdparty",
            ],
        )
        backend = registry.makeProvider(IDeliveryBackend, "thirdparty:blue", context())
        self.assertEqual(backend.tag, "blue")
        self.assertIsInstance(
            registry.makeProvider(IDeliveryBackend, "memory", context()), MemoryBackend
        )
        self.assertFalse(
            hasattr(registry.makeProvider(IDeliveryBackend, "memory", context()), "tag")
        )
        clashes = [e for e in events if e.get("prefix") == "memory" and "factory" in e]
        self.assertEqual(len(clashes), 1)
        self.assertIn("taken by", clashes[0]["log_format"])
        verifyObject(IPlugInFactory, registry.factoriesFor(IDeliveryBackend)[-1])
