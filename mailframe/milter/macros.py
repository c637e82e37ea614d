"""
The macros (Sendmail's "symbols") a milter is sent before each stage, as
Postfix sends them: the default list of each stage (a milter may ask for
others when it negotiates), and their values from what mailframe knows of
the session, the transaction and the recipient.

==========  ==================================================================
stage       macros sent by default
==========  ==================================================================
connect     ``j`` ``{daemon_name}`` ``{daemon_addr}`` ``v`` ``_``
            ``{client_addr}`` ``{client_name}`` ``{client_port}`` ``{client_ptr}``
helo        ``{tls_version}`` ``{cipher}`` ``{cipher_bits}`` ``{cert_subject}``
            ``{cert_issuer}``
mail        ``i`` ``{auth_type}`` ``{auth_authen}`` ``{auth_author}`` ``{mail_addr}``
            ``{mail_host}`` ``{mail_mailer}``
rcpt        ``i`` ``{rcpt_addr}`` ``{rcpt_host}`` ``{rcpt_mailer}``
data        ``i``
eoh         ``i`` (with each header field too)
eom         ``i`` (with each body chunk too)
==========  ==================================================================

A macro without a value (no TLS, no AUTH) is not sent.  Owns: the names and
their meaning.  Must not: import twisted.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from mailframe import __version__
from mailframe.envelope import Envelope, Recipient, SessionInfo
from mailframe.milter.codec import Stage

__all__ = ["DEFAULT_MACROS", "KNOWN_MACROS", "macroValues"]

DEFAULT_MACROS: Mapping[Stage, tuple[str, ...]] = {
    Stage.CONNECT: (
        "j", "{daemon_name}", "{daemon_addr}", "v", "_",
        "{client_addr}", "{client_name}", "{client_port}", "{client_ptr}",
    ),
    Stage.HELO: ("{tls_version}", "{cipher}", "{cipher_bits}", "{cert_subject}", "{cert_issuer}"),
    Stage.ENVFROM: (
        "i", "{auth_type}", "{auth_authen}", "{auth_author}",
        "{mail_addr}", "{mail_host}", "{mail_mailer}",
    ),
    Stage.ENVRCPT: ("i", "{rcpt_addr}", "{rcpt_host}", "{rcpt_mailer}"),
    Stage.DATA: ("i",),
    Stage.EOH: ("i",),
    Stage.EOM: ("i",),
}  # fmt: skip


def _clientPointer(session: SessionInfo) -> str:
    iprev = session.iprev
    return iprev.names[0] if iprev is not None and iprev.names else "unknown"


def _certificate(session: SessionInfo, which: str) -> str:
    tls = session.tls
    cert = tls.peerCertificate if tls is not None else None
    if cert is None:
        return ""
    try:
        name = cert.get_subject() if which == "subject" else cert.get_issuer()
        return str(name.commonName or "")
    except Exception:
        return ""


_Source = Callable[[SessionInfo, "Envelope | None", "Recipient | None", Callable[..., bool]], str]

_SOURCES: dict[str, _Source] = {
    "j": lambda s, e, r, local: s.hostname,
    "{daemon_name}": lambda s, e, r, local: s.listener,
    "{daemon_addr}": lambda s, e, r, local: s.localHost,
    "{daemon_port}": lambda s, e, r, local: str(s.localPort) if s.localPort else "",
    "v": lambda s, e, r, local: f"mailframe {__version__}",
    "_": lambda s, e, r, local: f"{s.verifiedName or 'unknown'} [{s.peerHost}]",
    "{client_addr}": lambda s, e, r, local: s.peerHost,
    "{client_port}": lambda s, e, r, local: str(s.peerPort) if s.peerPort else "",
    "{client_name}": lambda s, e, r, local: s.verifiedName or "unknown",
    "{client_ptr}": lambda s, e, r, local: _clientPointer(s),
    "{client_resolve}": lambda s, e, r, local: "OK" if s.verifiedName else "FAIL",
    "s": lambda s, e, r, local: s.heloName or "",
    "{tls_version}": lambda s, e, r, local: s.tls.version if s.tls is not None else "",
    "{cipher}": lambda s, e, r, local: s.tls.cipher if s.tls is not None else "",
    "{cipher_bits}": lambda s, e, r, local: str(s.tls.bits) if s.tls and s.tls.bits else "",
    "{cert_subject}": lambda s, e, r, local: _certificate(s, "subject"),
    "{cert_issuer}": lambda s, e, r, local: _certificate(s, "issuer"),
    "{auth_type}": lambda s, e, r, local: s.authMechanism or "",
    "{auth_authen}": lambda s, e, r, local: s.authenticated or "",
    "{auth_author}": lambda s, e, r, local: (e.authIdentity or "") if e is not None else "",
    "i": lambda s, e, r, local: e.queueID if e is not None else "",
    "{mail_addr}": lambda s, e, r, local: str(e.mailFrom) if e is not None else "",
    "{mail_host}": lambda s, e, r, local: (
        e.mailFrom.domain.name if e is not None and e.mailFrom.domain is not None else ""
    ),
    "{mail_mailer}": lambda s, e, r, local: "smtp" if e is not None else "",
    "{rcpt_addr}": lambda s, e, r, local: str(r.address) if r is not None else "",
    "{rcpt_host}": lambda s, e, r, local: (
        r.address.domain.name if r is not None and r.address.domain is not None else ""
    ),
    "{rcpt_mailer}": lambda s, e, r, local: (
        ("local" if local(r.address.domain) else "smtp") if r is not None else ""
    ),
}

#: Every macro mailframe can send.
KNOWN_MACROS = frozenset(_SOURCES)


def _alwaysLocal(domain: object) -> bool:
    return True


def macroValues(
    names: tuple[str, ...],
    session: SessionInfo,
    envelope: Envelope | None = None,
    recipient: Recipient | None = None,
    isLocal: Callable[..., bool] = _alwaysLocal,
) -> list[tuple[str, str]]:
    """
    The (name, value) pairs of C{names} that have a value now; a name may
    be given with or without braces (C{daemon_name} is C{{daemon_name}}).
    """
    out = []
    for name in names:
        key = name if name in _SOURCES or len(name) == 1 else f"{{{name.strip('{}')}}}"
        source = _SOURCES.get(key)
        if source is None:
            continue
        value = source(session, envelope, recipient, isLocal)
        if value:
            out.append((name, value))
    return out
