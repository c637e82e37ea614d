"""
The Received: trace header field (RFC 5321 4.4) and its with-clause
protocol names (RFC 3848, RFC 6531 3.7.3).

Owns: the text of the field.  Must not: import twisted or zope; look anything
up (no reverse DNS here: the field names what the session knew).
"""

from __future__ import annotations

import functools
import re
from datetime import UTC, datetime
from email.utils import format_datetime

from mailframe.envelope import Envelope, SessionInfo

__all__ = ["protocolName", "receivedHeader"]

_UNSAFE = re.compile(r"[^\x21-\x7e\u0080-\U0010ffff]|[()\\]")


def protocolName(
    session: SessionInfo, envelope: Envelope | None = None, lmtp: bool = False
) -> str:
    """
    The with-clause keyword: SMTP, ESMTP, ESMTPS, ESMTPA, ESMTPSA, LMTP ...,
    or UTF8SMTP and its variants when the transaction used SMTPUTF8.
    """
    if lmtp:
        base = "UTF8LMTP" if envelope is not None and envelope.smtputf8 else "LMTP"
    elif envelope is not None and envelope.smtputf8:
        base = "UTF8SMTP"
    elif session.esmtp:
        base = "ESMTP"
    else:
        return "SMTP"  # RFC 3848 has no SMTPS/SMTPA: those need EHLO
    suffix = ("S" if session.tls is not None else "") + ("A" if session.authenticated else "")
    return base + suffix


@functools.lru_cache(maxsize=512)
def _clean(text: str) -> str:
    return _UNSAFE.sub("_", text)[:255]


@functools.lru_cache(maxsize=4)
def _date(second: int) -> str:
    """RFC 5322 date in UTC; computed once per second however many messages."""
    return format_datetime(datetime.fromtimestamp(second, UTC))


def receivedHeader(
    session: SessionInfo, envelope: Envelope, when: float, lmtp: bool = False
) -> str:
    """
    The value of a Received: field (folded, without the field name), e.g.::

        from client.example ([192.0.2.1])
                by mx.example (mailframe) with ESMTPS id 3F2A9C
                (TLSv1.3 TLS_AES_256_GCM_SHA384)
                for <user@example.org>; Sat, 28 Nov 2026 22:54:18 +0000

    C{lmtp}: the message came over LMTP (with LMTP, LMTPS ...).
    """
    head = _head(
        session.heloName or "unknown",
        session.peerHost,
        session.hostname,
        protocolName(session, envelope, lmtp),
    )
    date = _date(int(when))
    tls = session.tls
    tail = "" if tls is None else f"\r\n\t({_clean(tls.version)} {_clean(tls.cipher)})"
    if len(envelope.recipients) == 1:
        path = _clean(envelope.recipients[0].address.toPath())
        return f"{head}{envelope.queueID}{tail}\r\n\tfor {path}; {date}"
    return f"{head}{envelope.queueID}{tail};\r\n\t{date}"


@functools.lru_cache(maxsize=256)
def _head(helo: str, peerHost: str, hostname: str, protocol: str) -> str:
    """The field up to the queue ID: the same for every message of a client."""
    return f"from {_clean(helo)} ([{peerHost}])\r\n\tby {hostname} (mailframe) with {protocol} id "
