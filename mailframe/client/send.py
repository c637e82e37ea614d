"""
The SMTP client on Twisted: L{sendMessage}, L{SMTPClientFactory}, and the
settings (L{ClientOptions}, L{Timeouts}, L{Credentials}, the TLS policies).

C{sendMessage(endpoint, envelope, message, options)} connects, sends one
message and fires with a L{DeliveryResult}: one reply per recipient (2xx
accepted by the server, 4xx try again later, 5xx refused for good).  It
never fails.  A reply from the server is reported as the server sent it;
a failure of our own (no connection, a timeout, a broken reply) is a 4xx
whose text says what happened.  For several messages over one connection, connect an
L{SMTPClientFactory} and call C{protocol.deliver(...)} for each (the relay
in L{mailframe.client.relay} does that, with routing and retries over MX hosts).

Owns: the public face of the client.  The session itself is
L{mailframe.client.protocol.SMTPClientProtocol} over the sans-IO
L{mailframe.protocol.client.ClientConnection}.  Must not: route (that is
L{mailframe.client.routing}), queue or retry.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet import defer
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import IAddress, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailframe.client.options import (
    TLS_NONE,
    TLS_OPPORTUNISTIC,
    TLS_POLICIES,
    TLS_REQUIRE,
    TLS_VERIFY,
    ClientOptions,
    Credentials,
    SessionFailed,
    Timeouts,
    checkTLSPolicy,
    clientTLS,
    temporary,
)
from mailframe.client.protocol import SMTPClientProtocol
from mailframe.client.transaction import SMTPResult
from mailframe.envelope import DeliveryResult, Envelope, Recipient
from mailframe.message import Message
from mailframe.protocol.client import ClientLimits
from mailframe.reply import Reply

__all__ = [
    "TLS_NONE",
    "TLS_OPPORTUNISTIC",
    "TLS_POLICIES",
    "TLS_REQUIRE",
    "TLS_VERIFY",
    "ClientLimits",
    "ClientOptions",
    "Credentials",
    "SMTPClientFactory",
    "SMTPClientProtocol",
    "SMTPResult",
    "SessionFailed",
    "Timeouts",
    "checkTLSPolicy",
    "clientTLS",
    "connectionFailed",
    "messageFrom",
    "sendMessage",
    "temporary",
]

log = Logger(namespace="mailframe.client")


class SMTPClientFactory(Factory):
    """
    Builds an L{SMTPClientProtocol} with C{options}, timed by C{clock}.
    C{name} names the server in results and logs (C{"mx.example.org
    [192.0.2.7]"}).
    """

    noisy = False

    def __init__(self, options: ClientOptions, clock: IReactorTime, name: str = "") -> None:
        self.options = options
        self.clock = clock
        self.name = name

    def buildProtocol(self, addr: IAddress | None) -> SMTPClientProtocol:
        p = SMTPClientProtocol(self.options, self.clock, self.name)
        p.factory = self
        return p


def connectionFailed(reason: object) -> Reply:
    """The 4xx for a connection that could not be made (4.4.1)."""
    value = getattr(reason, "value", reason)
    text = " ".join(str(value).split())[:200] or type(value).__name__
    return Reply(421, (4, 4, 1), f"Connection failed: {text}")


def messageFrom(data: bytes | Message) -> Message:
    """A finished L{Message} holding C{data} (or C{data} itself if it is one)."""
    if isinstance(data, Message):
        return data
    message = Message()
    message.write(data)
    message.finish()
    return message


def sendMessage(
    endpoint: IStreamClientEndpoint | str,
    envelope: Envelope,
    message: bytes | Message,
    options: ClientOptions | None = None,
    *,
    recipients: Sequence[Recipient] | None = None,
    reactor: Any = None,
    clock: IReactorTime | None = None,
    name: str = "",
) -> defer.Deferred[DeliveryResult]:
    """
    Connect to C{endpoint} (an C{IStreamClientEndpoint}, or an endpoint
    string parsed with C{reactor}), send C{message} from
    C{envelope.mailFrom} to C{recipients} (default: the envelope's), QUIT.

    @return: a Deferred firing a L{DeliveryResult} with one reply per
        recipient; it never fails (a connection or session failure is a
        4xx for every recipient, except a 5xx greeting or a 5xx to HELO
        after EHLO was refused: the server's own 5xx).
    """
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    options = options or ClientOptions()
    clock = clock or reactor
    rcpts = tuple(envelope.recipients if recipients is None else recipients)
    point = clientFromString(reactor, endpoint) if isinstance(endpoint, str) else endpoint
    msg = messageFrom(message)
    factory = SMTPClientFactory(options, clock, name)

    def connected(protocol: SMTPClientProtocol) -> defer.Deferred[DeliveryResult]:
        return protocol.deliver(envelope, rcpts, msg)

    def failed(reason: Failure) -> DeliveryResult:
        error = reason.value
        if isinstance(error, SessionFailed):
            reply = error.reply
        else:
            reply = connectionFailed(reason)
        return DeliveryResult(tuple(reply for _ in rcpts), tuple(name or None for _ in rcpts))

    d: defer.Deferred[Any] = point.connect(factory)
    d.addCallback(connected)
    d.addErrback(failed)
    return d
