"""
The exceptions of the sans-IO core, for both roles.

Owns: the two kinds of protocol error.  L{RemoteProtocolError}: the peer
broke a rule; it carries the reply to send (server) or to report (client).
L{CommandSyntaxError}, one of those, is a command line that cannot be
parsed.  L{LocalProtocolError}: our own side misused the connection (a
reply nobody asked for, a command in the wrong state), a bug in the caller.
Must not: import twisted or zope, or anything of the core but the replies.
"""

from __future__ import annotations

from mailframe import reply as R

__all__ = ["CommandSyntaxError", "LocalProtocolError", "RemoteProtocolError"]


class RemoteProtocolError(Exception):
    """
    The peer broke a protocol rule; C{reply} says how.  A server sends it
    next (with C{ServerConnection.send}), and the session stays usable
    unless it is a 421.  A client reports it (a 4xx); the session is over.
    """

    def __init__(self, reply: R.Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply


class CommandSyntaxError(RemoteProtocolError):
    """A command line that cannot be parsed; C{reply} is what to answer."""


class LocalProtocolError(Exception):
    """Our own side misused the connection (a reply nobody asked for, ...)."""
