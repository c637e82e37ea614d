"""
The C{mailframe} console script: C{mailframe route ...} is
L{mailframe.app.route} (what an address expands to, and where it goes);
C{mailframe simulate ...} is L{mailframe.app.simulate} (a session played
against the configured plug-ins, delivering nothing); anything else runs
the server, C{twistd -n mailframe ...} (L{mailframe.app.tap.run}), and
C{mailframe --version} prints mailframe's version.

Must not: import the reactor or the server at import time.
"""

from __future__ import annotations

import sys

__all__ = ["run"]


def run() -> None:
    """C{mailframe route ARGS}, C{mailframe simulate ARGS}, or C{twistd -n mailframe ARGS}."""
    if sys.argv[1:2] == ["route"]:
        from mailframe.app.route import main

        raise SystemExit(main(sys.argv[2:]))
    if sys.argv[1:2] == ["simulate"]:
        from mailframe.app.simulate import main as simulate

        raise SystemExit(simulate(sys.argv[2:]))
    from mailframe.app.tap import run as serve

    serve()
