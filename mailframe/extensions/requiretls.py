"""
The REQUIRETLS extension (RFC 8689), receiving side: advertised only in a
session under TLS, it owns the MAIL parameter C{REQUIRETLS} (no value),
which then stays in C{envelope.mailParams}: the queue keeps it with the
message, and the relay (L{mailframe.client.tlspolicy}) hands such mail on
only over TLS with a verified certificate (DANE, an MTA-STS policy, or
PKIX where the MX records are DNSSEC-signed; a route or smarthost with
the C{verify} policy), to a server that offers REQUIRETLS too; failing
that, the recipients fail with 550 5.7.10.

Offer it only where the relay honours it: C{twistd mailframe} does when
the queue is on, as it does DSN.

Owns: the syntax of the parameter and when it may be given.  Must not:
import mailframe.server or the queue.
"""

from __future__ import annotations

from mailframe import reply as R
from mailframe.envelope import Envelope, SessionInfo
from mailframe.extensions._base import Extension
from mailframe.reply import SMTPError

__all__ = ["RequireTLS", "requiresTLS"]

NOT_IN_TLS = R.Reply(530, (5, 7, 10), "REQUIRETLS needs a session under TLS")
_NO_VALUE = R.Reply(501, (5, 5, 4), "REQUIRETLS takes no value")


def requiresTLS(envelope: Envelope) -> bool:
    """True if the message was sent with REQUIRETLS."""
    return "REQUIRETLS" in envelope.mailParams


class RequireTLS(Extension):
    """REQUIRETLS: the MAIL parameter, accepted only under TLS (RFC 8689 4.1)."""

    keyword = "REQUIRETLS"
    mailParameters = frozenset({"REQUIRETLS"})

    def ehloParameters(self, session: SessionInfo) -> str | None:
        return "" if session.tls is not None else None

    def mailParameter(
        self, session: SessionInfo, envelope: Envelope, name: str, value: str | None
    ) -> None:
        if value is not None:
            raise SMTPError(_NO_VALUE)
        if session.tls is None:  # not advertised here; a server refusing it anyway is explicit
            raise SMTPError(NOT_IN_TLS)
