"""
The sans-IO core imports without twisted or zope: in a subprocess where an
import hook refuses them, and in the source, where no module of
mailframe/protocol (nor mailframe.reply or mailframe.address) names them.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import TestCase

import mailframe

PACKAGE = Path(mailframe.__file__).resolve().parent
ROOT = PACKAGE.parent
FORBIDDEN = ("twisted", "zope")
STANDALONE = ["mailframe.reply", "mailframe.address"]
"""Modules outside mailframe/protocol that promise the standard library only."""

_CHILD = """
import json, pkgutil, sys

FORBIDDEN = {forbidden!r}
blocked = []


class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in FORBIDDEN:
            blocked.append(name)
            raise ImportError("blocked by the test: " + name)
        return None


# a .pth file may have made namespace stubs (zope) before this ran
for name in list(sys.modules):
    if name.partition(".")[0] in FORBIDDEN:
        del sys.modules[name]
sys.meta_path.insert(0, Blocker())

import mailframe.protocol
names = ["mailframe.protocol"] + [
    "mailframe.protocol." + m.name for m in pkgutil.iter_modules(mailframe.protocol.__path__)
] + {standalone!r}
for name in names:
    __import__(name)
loaded = sorted(n for n in sys.modules if n.partition(".")[0] in FORBIDDEN)
print(json.dumps({{
    "file": mailframe.__file__,
    "imported": names,
    "blocked": blocked,
    "loaded": loaded,
    "ServerConnection": mailframe.protocol.ServerConnection.__name__,
}}))
"""


def protocolSources() -> list[Path]:
    files = sorted((PACKAGE / "protocol").rglob("*.py"))
    assert files, PACKAGE
    return files + [PACKAGE / (m.split(".")[1] + ".py") for m in STANDALONE]


def forbiddenImports(source: str) -> list[str]:
    """Names of twisted/zope modules imported anywhere in C{source}."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            first = node.args[0]
            if called in ("import_module", "__import__") and isinstance(first, ast.Constant):
                names = [str(first.value)]
        found.extend(n for n in names if n.partition(".")[0] in FORBIDDEN)
    return found


class SansIOImportTests(TestCase):
    """mailframe.protocol is standard library only."""

    def test_importWithTwistedBlocked(self) -> None:
        """With twisted and zope refused by a meta-path hook, the core and its value types import."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        code = _CHILD.format(forbidden=FORBIDDEN, standalone=STANDALONE)
        result = subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT,
            env=env,
            capture_output=True,
            timeout=60,
            check=False,
        )
        self.assertEqual(result.returncode, 0, result.stderr.decode("utf-8", "replace"))
        report = json.loads(result.stdout.decode("utf-8").strip().splitlines()[-1])
        self.assertEqual(Path(report["file"]).resolve().parent, PACKAGE)
        self.assertEqual(report["blocked"], [])  # not even tried and caught
        self.assertEqual(report["loaded"], [])
        self.assertIn("mailframe.protocol.server", report["imported"])
        self.assertIn("mailframe.protocol._buffer", report["imported"])
        self.assertEqual(report["ServerConnection"], "ServerConnection")

    def test_hookBlocks(self) -> None:
        """The hook of the subprocess test really refuses twisted (the test above can fail)."""
        code = _CHILD.format(forbidden=FORBIDDEN, standalone=STANDALONE).replace(
            "import mailframe.protocol\n",
            "import mailframe.protocol\nimport twisted.internet\n",
            1,
        )
        result = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, capture_output=True, timeout=60, check=False
        )
        self.assertNotEqual(result.returncode, 0)
        self.assertIn(b"blocked by the test: twisted", result.stderr)

    def test_noForbiddenImportInSource(self) -> None:
        """No module under mailframe/protocol (nor reply.py, address.py) imports twisted or zope."""
        offenders = {}
        for path in protocolSources():
            found = forbiddenImports(path.read_text(encoding="utf-8"))
            if found:
                offenders[str(path.relative_to(ROOT))] = found
        self.assertEqual(offenders, {})

    def test_scannerFindsImports(self) -> None:
        """The source scan recognises every form of import it looks for."""
        source = (
            "import os, twisted.internet\n"
            "from zope.interface import implementer\n"
            "def f():\n"
            "    import importlib\n"
            "    importlib.import_module('twisted.logger')\n"
            "    __import__('zope')\n"
            "from . import twisted\n"
        )
        self.assertEqual(
            forbiddenImports(source),
            ["twisted.internet", "zope.interface", "twisted.logger", "zope"],
        )
