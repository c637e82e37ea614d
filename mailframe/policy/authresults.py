"""
L{AuthenticationResults}: the C{Authentication-Results} header field of
RFC 8601, written with C{authres}, an L{IMessageFilter}.

It reports what the checks before it recorded: C{iprev} (the HELO check's
reverse DNS), C{auth} (the AUTH identity of the session), C{spf},
C{dkim} (one result per signature), C{dmarc}; or C{none}.  The
authserv-id is this server's host name unless configured.  First it
removes every Authentication-Results field of the received message that
carries our authserv-id (RFC 8601 5: such a field was not written by us
and must not be believed downstream); fields of other authserv-ids stay.

Where it runs: after C{spf}, C{dkim-verify} and C{dmarc} (C{twistd
mailframe} puts it after them whatever the order of the options: see
L{orderFilters}), and before C{dkim-sign}.

Owns: the field's content and the removal of forged ones.  Must not:
compute any result itself, or remove fields of other servers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, TypeVar

import authres
from authres.core import AuthenticationResult, AuthenticationResultProperty
from twisted.logger import Logger
from zope.interface import implementer

from mailframe.envelope import Envelope, SessionInfo
from mailframe.interfaces import IMessageFilter
from mailframe.results import (
    DKIMResult,
    DMARCResult,
    IPRevResult,
    SPFResult,
)

if TYPE_CHECKING:
    from mailframe.config import ServerConfig
    from mailframe.message import Message

__all__ = ["FIELD", "AuthenticationResults", "authservID", "orderFilters"]

log = Logger(namespace="mailframe.authresults")

_T = TypeVar("_T")

FIELD = "Authentication-Results"
_COMMENT_RE = re.compile(r"\((?:[^()\\]|\\.)*\)")
_SAFE_RE = re.compile(r"[^A-Za-z0-9 .,:_@/+=-]")


def authservID(value: str) -> str | None:
    """The authserv-id of an Authentication-Results value, lowercase; None if unreadable."""
    try:
        found = authres.AuthenticationResultsHeader.parse_value(value).authserv_id
        return str(found).lower() if found else None
    except Exception:  # a forgery need not parse: read its first token by hand
        text = value
        while True:
            stripped = _COMMENT_RE.sub(" ", text)
            if stripped == text:
                break
            text = stripped
        token = text.strip().split(";", 1)[0].split()
        return token[0].lower() if token else None


def _safe(text: str, limit: int = 80) -> str:
    return _SAFE_RE.sub(" ", text)[:limit].strip()


def _prop(ptype: str, name: str, value: str) -> AuthenticationResultProperty:
    return AuthenticationResultProperty(ptype, name, value)


def _spf(result: SPFResult) -> AuthenticationResult:
    if result.scope == "helo":
        prop = _prop("smtp", "helo", _safe(result.identity, 255) or "unknown")
    else:
        prop = _prop("smtp", "mailfrom", _safe(result.identity, 320))
    return AuthenticationResult("spf", result=result.result, properties=[prop])


def _dkim(result: DKIMResult) -> AuthenticationResult:
    props = []
    if result.domain:
        props.append(_prop("header", "d", _safe(result.domain, 255)))
    if result.selector:
        props.append(_prop("header", "s", _safe(result.selector, 64)))
    if result.headerB:
        props.append(_prop("header", "b", _safe(result.headerB, 8)))
    reason = _safe(result.reason) if result.result != "pass" and result.reason else None
    return AuthenticationResult("dkim", result=result.result, reason=reason, properties=props)


def _dmarc(result: DMARCResult) -> AuthenticationResult:
    props = []
    if result.fromDomain:
        props.append(_prop("header", "from", _safe(result.fromDomain, 255)))
    if result.result in ("pass", "fail"):
        props.append(_prop("policy", "dmarc", result.disposition))
    comment = f"p={result.policy} dis={result.disposition}" if result.result == "fail" else None
    reason = _safe(result.reason) if result.result not in ("pass", "fail") else None
    return AuthenticationResult(
        "dmarc", result=result.result, result_comment=comment, reason=reason, properties=props
    )


def _iprev(result: IPRevResult) -> AuthenticationResult:
    comment = _safe(result.names[0], 255) if result.result == "pass" and result.names else None
    return AuthenticationResult(
        "iprev",
        result=result.result,
        properties=[AuthenticationResultProperty("policy", "iprev", result.address, comment)],
    )


def results(session: SessionInfo, envelope: Envelope) -> list[AuthenticationResult]:
    """The result clauses for a transaction, in the order the checks ran."""
    out = []
    iprev = session.iprev
    if iprev is not None:
        out.append(_iprev(iprev))
    if session.authenticated is not None:
        out.append(
            AuthenticationResult(
                "auth",
                result="pass",
                properties=[_prop("smtp", "auth", _safe(session.authenticated, 255))],
            )
        )
    spf = envelope.spf
    if spf is not None:
        out.append(_spf(spf))
    dkim = envelope.dkim
    if dkim is not None:
        out.extend(_dkim(r) for r in dkim) if dkim else out.append(
            AuthenticationResult("dkim", result="none")
        )
    dmarc = envelope.dmarc
    if dmarc is not None:
        out.append(_dmarc(dmarc))
    return out


@implementer(IMessageFilter)
class AuthenticationResults:
    """
    Adds one Authentication-Results field naming C{authservID} (default:
    the server's host name) and removes received ones that carry it.

    @param config: the L{ServerConfig}, for the host name.
    """

    def __init__(self, authservID: str | None = None, config: ServerConfig | None = None) -> None:
        name = authservID or (config.hostname if config is not None else None)
        if not name or any(c.isspace() or c in ';()"\\' for c in name):
            raise ValueError("the authserv-id must be one word (a host name)")
        self.authservID = name.lower()

    def value(self, session: SessionInfo, envelope: Envelope) -> str:
        """The field's value, folded after each clause."""
        header = authres.AuthenticationResultsHeader(
            authserv_id=self.authservID, results=results(session, envelope)
        )
        text = str(header.header_value())
        return text.replace("; ", ";\r\n\t") if header.results else text

    def removeForged(self, message: Message) -> int:
        """Drop received Authentication-Results fields with our authserv-id."""
        ours = self.authservID
        return int(
            message.removeHeaderFields(
                lambda name, value: (
                    name.lower() == "authentication-results" and authservID(value) == ours
                )
            )
        )

    def filterMessage(self, session: SessionInfo, envelope: Envelope, message: Message) -> None:
        """IMessageFilter: remove forged fields, add ours."""
        removed = self.removeForged(message)
        if removed:
            log.info(
                "{id} removed {count} forged Authentication-Results field(s) naming {authserv}",
                id=session.sessionID,
                count=removed,
                authserv=self.authservID,
            )
        message.prependHeader(FIELD, self.value(session, envelope))


def orderFilters(filters: Iterable[_T]) -> list[_T]:
    """
    Message filters in the order they must run: every other filter in the
    given order, then L{AuthenticationResults} (it reports the others'
    results), then DKIM signers (a signature covers what came before).
    """
    from mailframe.policy.dkim import DKIMSigner

    items: Sequence[_T] = list(filters)

    def rank(f: object) -> int:
        if isinstance(f, DKIMSigner):
            return 2
        return 1 if isinstance(f, AuthenticationResults) else 0

    return sorted(items, key=rank)
