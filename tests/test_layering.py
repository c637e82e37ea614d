"""
The direction of imports (DESIGN.md "Layout and the direction of imports"),
checked on the source: the sans-IO core and the value types import nothing
above them, plug-ins never import the server, the server never imports the
twistd wiring.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterator

from twisted.trial.unittest import SynchronousTestCase

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "mailframe")


def modules() -> Iterator[tuple[str, set[str]]]:
    """(module name, the mailframe modules it imports) for every module."""
    for directory, _, files in os.walk(ROOT):
        for fileName in files:
            if not fileName.endswith(".py"):
                continue
            path = os.path.join(directory, fileName)
            rel = os.path.relpath(path, os.path.dirname(ROOT))[:-3].replace(os.sep, ".")
            name = rel.removesuffix(".__init__")
            with open(path, encoding="utf-8") as f:
                tree = ast.parse(f.read(), path)
            imported: set[str] = set()
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    imported.update(a.name for a in node.names if a.name.startswith("mailframe"))
                elif (
                    isinstance(node, ast.ImportFrom)
                    and node.level == 0
                    and (node.module or "").startswith("mailframe")
                ):
                    module = node.module or ""
                    imported.add(module)
                    imported.update(f"{module}.{a.name}" for a in node.names)
            yield name, imported


def under(module: str, *prefixes: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


GLUE = ("mailframe.server", "mailframe._commands", "mailframe._serverutil")
# mailframe._deferreds is a shared utility: anything may use it
WIRING = ("mailframe.tap", "mailframe._tapconfig", "mailframe._tapsecurity", "mailframe.workers")
OUTBOUND = ("mailframe.client", "mailframe.relay", "mailframe.routing", "mailframe.queue")


class LayeringTests(SynchronousTestCase):
    def check(self, rule: str, subjects: tuple[str, ...], forbidden: tuple[str, ...],
              allowed: tuple[str, ...] = ()) -> None:  # fmt: skip
        bad = []
        for module, imported in modules():
            if not under(module, *subjects) or under(module, *allowed):
                continue
            bad += [f"{module} imports {i}" for i in imported if under(i, *forbidden)]
        self.assertEqual(bad, [], rule)

    def test_valueTypes(self) -> None:
        """reply, address and interfaces import nothing else of mailframe."""
        for module, imported in modules():
            if module in ("mailframe.reply", "mailframe.address", "mailframe.interfaces"):
                self.assertEqual({i for i in imported if i != "mailframe"}, set(), module)

    def test_core(self) -> None:
        """The sans-IO core imports only itself, reply and address."""
        for module, imported in modules():
            if under(module, "mailframe.protocol"):
                outside = {
                    i for i in imported
                    if not under(i, "mailframe.protocol", "mailframe.reply", "mailframe.address")
                    and i != "mailframe"
                }  # fmt: skip
                self.assertEqual(outside, set(), module)

    def test_plugInsNeverImportTheServer(self) -> None:
        """Built-in plug-ins see interfaces and values, never the server or its wiring."""
        self.check(
            "plug-ins",
            ("mailframe.backends", "mailframe.validators", "mailframe.extensions",
             "mailframe.policy"),
            (*GLUE, *WIRING, *OUTBOUND),
        )  # fmt: skip

    def test_outboundNeverImportsTheServer(self) -> None:
        """The client, routing, relay and queue do not import the inbound server."""
        self.check("outbound", OUTBOUND, (*GLUE, "mailframe.tap", "mailframe.workers"))

    def test_serverNeverImportsTheWiring(self) -> None:
        """The server glue does not know twistd, the queue or the client."""
        self.check("server", GLUE, (*WIRING, *OUTBOUND))
