"""docs/milters.rst says what the code does: every key of a milter's table and every macro sent."""

from __future__ import annotations

from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from mailframe.milter.macros import DEFAULT_MACROS
from mailframe.milter.settings import TABLE_KEYS

DOC = Path(__file__).resolve().parents[1] / "docs" / "milters.rst"


class MilterDocsTests(SynchronousTestCase):
    def test_tableKeys(self) -> None:
        """Each key a milter's table takes is described."""
        text = DOC.read_text()
        for key in TABLE_KEYS:
            self.assertIn(f"``{key}``", text)

    def test_macros(self) -> None:
        """The stage/macro table lists every macro sent by default."""
        text = DOC.read_text()
        for names in DEFAULT_MACROS.values():
            for name in names:
                self.assertIn(f"``{name}``", text)
