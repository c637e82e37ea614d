"""
Tests for L{mailframe.protocol._errors}: one module holds the core's
protocol errors, and the places they were first defined still export them.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

import mailframe.protocol as protocol
from mailframe import reply as R
from mailframe.protocol import _errors, _parse, client, server


class ErrorModuleTests(SynchronousTestCase):
    def test_oneClassEach(self) -> None:
        """The package, the server core and the parser export the classes of _errors."""
        for name in ("RemoteProtocolError", "LocalProtocolError", "CommandSyntaxError"):
            cls = getattr(_errors, name)
            self.assertIs(getattr(protocol, name), cls)
            self.assertEqual(cls.__module__, "mailframe.protocol._errors")
        self.assertIs(server.RemoteProtocolError, _errors.RemoteProtocolError)
        self.assertIs(server.LocalProtocolError, _errors.LocalProtocolError)
        self.assertIs(_parse.CommandSyntaxError, _errors.CommandSyntaxError)

    def test_syntaxErrorIsRemote(self) -> None:
        """A syntax error is the peer's error: one except clause catches every one of them."""
        e = _errors.CommandSyntaxError(R.UNRECOGNIZED)
        self.assertIsInstance(e, _errors.RemoteProtocolError)
        self.assertIs(e.reply, R.UNRECOGNIZED)
        self.assertEqual(str(e), str(R.UNRECOGNIZED))

    def test_bothRolesRaiseTheSameTypes(self) -> None:
        """The client core raises the same two types as the server core."""
        conn = client.ClientConnection()
        self.assertRaises(_errors.LocalProtocolError, conn.send, protocol.Quit())
        conn.receiveData(b"hello\r\n")
        self.assertRaises(_errors.RemoteProtocolError, conn.nextEvent)
