"""
The outbound SMTP client on Twisted: L{sendMessage} and
L{SMTPClientFactory} (in C{send}), the session over the sans-IO
L{mailframe.protocol.client.ClientConnection} (C{protocol},
C{transaction}, C{plan}), its settings (C{options}), and the relay that
routes mail to next hops (C{routing}, C{nexthop}, C{relay}).

Must not: import mailframe.server, mailframe.queue or mailframe.app.
"""

from mailframe.client.send import (
    TLS_NONE,
    TLS_OPPORTUNISTIC,
    TLS_POLICIES,
    TLS_REQUIRE,
    TLS_VERIFY,
    ClientLimits,
    ClientOptions,
    Credentials,
    SessionFailed,
    SMTPClientFactory,
    SMTPClientProtocol,
    SMTPResult,
    Timeouts,
    checkTLSPolicy,
    clientTLS,
    connectionFailed,
    messageFrom,
    sendMessage,
    temporary,
)

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
