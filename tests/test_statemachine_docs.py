"""
Tests for C{docs/statemachine.py}: the state machine page draws every row of
the server's and the client's tables, so the documentation cannot leave a
transition out.
"""

from __future__ import annotations

import importlib.util
import os
from types import ModuleType

from twisted.trial.unittest import SynchronousTestCase

from mailframe.protocol import _clientstate as C
from mailframe.protocol import _state as S

_SCRIPT = os.path.join(os.path.dirname(__file__), "..", "docs", "statemachine.py")


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("statemachine", _SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class DrawingTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.script = _script()

    def test_server(self) -> None:
        """Every command row, guard, fact, greeting code and refusal is on the page."""
        text = self.script.renderServer()
        for kind, row in S.TRANSITIONS.items():
            self.assertIn(f"``{kind.__name__}``", text)
            self.assertIn(row.refusal.lines[0], text)
        for guards in S.GUARDS.values():
            for guard in guards:
                self.assertIn(f"*{guard.fact}*", text)
                self.assertIn(guard.reply.lines[0], text)
        for fact, when in S.FACTS.items():
            self.assertIn(f"*{fact}*", text)
            self.assertIn(when, text)
        for code, state in S.GREETING_REPLIES.items():
            self.assertIn(f"``{code}`` to {state.name}", text)
        for reply in S.REFUSALS.values():
            self.assertIn(reply.lines[0], text)
        self.assertIn("TLS -> CONNECTED", text)

    def test_client(self) -> None:
        """Every state, every reply rule and the handshake of the client are on the page."""
        text = self.script.renderClient()
        for state in C.CLIENT_STATES:
            self.assertIn(state, text)
        for kind, rules in C.REPLIES.items():
            for target in rules.values():
                self.assertIn(target, text)
            if kind is not C.E.Greeting:
                self.assertIn(f"``{kind.__name__}``", text)
        self.assertIn("digraph smtp_client", text)

    def test_dialects(self) -> None:
        """What LMTP changes, for the server and the client, is on the page."""
        server, client = self.script.renderServer(), self.script.renderClient()
        for dialect in S.DIALECTS:
            self.assertIn(dialect.name, server)
            for verb in dialect.hello:
                self.assertIn(f"``{verb}``", server)
        self.assertIn("ENHANCEDSTATUSCODES, PIPELINING", server)
        for cd in C.CLIENT_DIALECTS:
            for verb in cd.hello.values():
                self.assertIn(f"``{verb}``", client)
        self.assertIn("the last ``Bdat``, ``EndOfMessage``", client)

    def test_write(self) -> None:
        """write() leaves both include files where docs/statemachine.rst looks."""
        directory = self.mktemp()
        self.script.write(directory)
        self.assertEqual(sorted(os.listdir(directory)), ["clientstate.inc", "statemachine.inc"])
