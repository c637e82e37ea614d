"""
The direction of imports (DESIGN.md "Layout and the direction of imports"),
checked on the source, imports inside functions and under TYPE_CHECKING
included: every module belongs to a layer, and imports only from its own
layer or those below it; the sans-IO core imports nothing of twisted; and
no two modules import each other, directly or through others.
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


def runtimeImports(module: str) -> set[str]:
    """The mailframe modules C{module} imports when it runs (not under TYPE_CHECKING)."""
    path = os.path.join(os.path.dirname(ROOT), *module.split(".")) + ".py"
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and ast.unparse(node.test) in (
            "TYPE_CHECKING",
            "typing.TYPE_CHECKING",
        ):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("mailframe"))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mailframe"):
            found.add(node.module or "")
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def under(module: str, *prefixes: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


# The layers, lowest first: a module may import its own layer and those below.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("values", ("mailframe.reply", "mailframe.address")),
    ("core", ("mailframe.protocol",)),
    ("session values", ("mailframe.results", "mailframe.envelope", "mailframe.message",
                        "mailframe.trace", "mailframe.config", "mailframe.events")),
    ("interfaces", ("mailframe.interfaces",)),
    ("plug-ins", ("mailframe._deferreds", "mailframe._threads", "mailframe._eventlog",
                  "mailframe.plugins", "mailframe.auth",
                  "mailframe.extensions", "mailframe.validators", "mailframe.backends",
                  "mailframe.policy", "mailframe.milter")),
    ("server and client", ("mailframe.server", "mailframe.client")),
    ("queue", ("mailframe.queue",)),
    ("web", ("mailframe.web",)),
    ("application", ("mailframe.app", "mailframe.testing")),
)  # fmt: skip


def layerOf(module: str) -> int:
    if module == "mailframe":
        return 0
    for i, (_, prefixes) in enumerate(LAYERS):
        if under(module, *prefixes):
            return i
    raise AssertionError(f"{module} belongs to no layer of tests/test_layering.py")


class LayeringTests(SynchronousTestCase):
    def test_everyModuleHasALayer(self) -> None:
        """Every module of mailframe belongs to one layer."""
        for module, _ in modules():
            layerOf(module)

    def test_importsGoDown(self) -> None:
        """No module imports from a layer above its own."""
        bad = []
        for module, imported in modules():
            mine = layerOf(module)
            for name in imported:
                try:
                    theirs = layerOf(name)
                except AssertionError:
                    continue  # a name inside a module (from mailframe.x import name)
                if theirs > mine:
                    bad.append(
                        f"{module} ({LAYERS[mine][0]}) imports {name} ({LAYERS[theirs][0]})"
                    )
        self.assertEqual(bad, [])

    def test_serverAndClientApart(self) -> None:
        """The inbound server and the outbound client do not import each other."""
        for module, imported in modules():
            for a, b in (("mailframe.server", "mailframe.client"),
                         ("mailframe.client", "mailframe.server")):  # fmt: skip
                if under(module, a):
                    self.assertEqual([i for i in imported if under(i, b)], [], module)

    def test_valueTypes(self) -> None:
        """
        reply and address import nothing else of mailframe; interfaces
        imports the value types its signatures name, for type checking only.
        """
        for module, imported in modules():
            if module in ("mailframe.reply", "mailframe.address"):
                self.assertEqual({i for i in imported if i != "mailframe"}, set(), module)
            if module == "mailframe.interfaces":
                self.assertEqual(runtimeImports(module), set())
                below = [i for i in imported if layerOf(i) >= layerOf(module)]
                self.assertEqual(below, [], module)

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

    def test_noCircles(self) -> None:
        """No import circle among the modules of mailframe (Tarjan's strongly connected components)."""
        graph: dict[str, set[str]] = {}
        names = {module for module, _ in modules()}
        for module, imported in modules():
            targets = set()
            for name in imported:
                while name and name not in names:
                    name = name.rpartition(".")[0]
                # a package's __init__ importing its own modules is not a circle
                if (
                    name
                    and name != module
                    and not module.startswith(name + ".")
                    and name != "mailframe"
                ):
                    targets.add(name)
            graph[module] = targets
        self.assertEqual(circles(graph), [])


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    onStack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        onStack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in onStack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                onStack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found
