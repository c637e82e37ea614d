"""
mailframe's sans-IO SMTP core: bytes in, events out; replies in, bytes out.

Standard library only.  It never imports twisted or zope, so it can be
driven by any I/O framework and tested without one.
"""

from mailframe.protocol._errors import CommandSyntaxError, LocalProtocolError, RemoteProtocolError
from mailframe.protocol._events import (
    NEED_DATA,
    PAUSED,
    Bdat,
    Command,
    ContinuationLine,
    Data,
    EndOfChunk,
    EndOfMessage,
    Event,
    Expn,
    ExtensionCommand,
    Hello,
    Help,
    MailFrom,
    MessageData,
    Noop,
    Quit,
    RcptTo,
    Rset,
    Sentinel,
    StartTLS,
    Vrfy,
)
from mailframe.protocol._parse import decodeXtext, encodeXtext
from mailframe.protocol._state import TRANSITIONS, State
from mailframe.protocol._write import dotStuff
from mailframe.protocol.client import GREETING, ClientConnection, ClientLimits, ServerReply
from mailframe.protocol.server import Limits, ServerConnection

__all__ = [
    "GREETING",
    "NEED_DATA",
    "PAUSED",
    "TRANSITIONS",
    "Bdat",
    "ClientConnection",
    "ClientLimits",
    "Command",
    "CommandSyntaxError",
    "ContinuationLine",
    "Data",
    "EndOfChunk",
    "EndOfMessage",
    "Event",
    "Expn",
    "ExtensionCommand",
    "Hello",
    "Help",
    "Limits",
    "LocalProtocolError",
    "MailFrom",
    "MessageData",
    "Noop",
    "Quit",
    "RcptTo",
    "RemoteProtocolError",
    "Rset",
    "Sentinel",
    "ServerConnection",
    "ServerReply",
    "StartTLS",
    "State",
    "Vrfy",
    "decodeXtext",
    "dotStuff",
    "encodeXtext",
]
