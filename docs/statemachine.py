"""
Draw the server session state machine from mailframe.protocol._state.

Writes docs/_generated/statemachine.inc (a reST table and a Graphviz dot
source) so the documentation can never disagree with the code.  Run by
docs/conf.py at build time; ``python docs/statemachine.py`` prints it.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from mailframe.protocol._state import CLEAR, SAME, TRANSITIONS, State


def _target(t: object) -> str:
    if t is SAME:
        return "(same)"
    if t == CLEAR:
        return "READY (or CONNECTED before HELO)"
    return t.name  # type: ignore[attr-defined]


def render() -> str:
    rows = [("event", "allowed in", "after 2xx/3xx", "after 4xx/5xx", "otherwise")]
    for kind, t in TRANSITIONS.items():
        allowed = ", ".join(s.name for s in State if s in t.allowed)
        rows.append(
            (
                f"``{kind.__name__}``",
                allowed,
                _target(t.positive),
                _target(t.negative),
                f"``{t.refusal.code}`` {t.refusal.lines[0]}",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    sep = "  ".join("=" * w for w in widths)
    out = [sep, "  ".join(c.ljust(w) for c, w in zip(rows[0], widths, strict=True)), sep]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows[1:]]
    out.append(sep)
    dot = ["digraph smtp {", "  rankdir=LR;"]
    for kind, t in TRANSITIONS.items():
        if t.positive is SAME:
            continue
        for s in State:
            if s in t.allowed:
                target = "READY" if t.positive == CLEAR else t.positive.name  # type: ignore[union-attr]
                dot.append(f'  {s.name} -> {target} [label="{kind.__name__}"];')
    dot.append("}")
    return (
        "\n".join(out)
        + "\n\nThe same as a Graphviz graph (positive replies only):\n\n.. code-block:: dot\n\n"
        + "\n".join("   " + line for line in dot)
        + "\n"
    )


def write(directory: str) -> str:
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "statemachine.inc")
    with open(path, "w", encoding="utf-8") as f:
        f.write(render())
    return path


if __name__ == "__main__":
    print(render())
