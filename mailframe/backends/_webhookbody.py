"""
What the C{webhook} backend posts: the envelope as a JSON document, the
HTTP headers of the raw format, the JSON document of a whole message
(envelope, client, authentication results, header fields, text and HTML
parts, attachments in base64), and the signature.

The signature (documented in docs/handoff.rst, checked by the consumers in
docs/examples): C{HMAC-SHA256(secret, TIMESTAMP + "." + BODY)} in lower-case
hex, where TIMESTAMP is the decimal Unix time in the
C{X-Mailframe-Timestamp} header and BODY the octets of the request body as
sent; the C{X-Mailframe-Signature} header is C{t=TIMESTAMP,v1=HEX} (as
Stripe's).  The raw format's envelope, which travels in headers, is signed
the same way over C{TIMESTAMP + "." + X-Mailframe-Envelope}, in
C{X-Mailframe-Envelope-Signature: t=TIMESTAMP,v1=HEX}.

Owns: the wire format.  Must not: import twisted; do network or disk work
beyond reading the message it is given (the caller decides which thread).
"""

from __future__ import annotations

import base64
import email.message
import email.policy
import hashlib
import hmac
import json
from collections.abc import Iterable, Sequence
from email.parser import BytesParser
from typing import Any

from mailframe.envelope import Envelope, Recipient, SessionSnapshot

__all__ = [
    "CLIENT_FIELDS",
    "clientDocument",
    "encodeDocument",
    "envelopeDocument",
    "messageDocument",
    "rawHeaders",
    "sign",
    "signatureHeader",
]

CLIENT_FIELDS = ("address", "port", "name", "helo", "protocol", "tls", "authenticated")


def _address(address: object) -> str:
    return str(address)


def _params(params: Any) -> dict[str, str | None]:
    return {str(k): v for k, v in params.items()}


def _recipient(recipient: Recipient) -> dict[str, Any]:
    return {
        "address": _address(recipient.address),
        "original": _address(recipient.original) if recipient.original is not None else None,
        "detail": recipient.detail,
        "parameters": _params(recipient.params),
    }


def envelopeDocument(envelope: Envelope, recipients: Sequence[Recipient]) -> dict[str, Any]:
    """
    The envelope: C{id} (the queue ID), C{sender} (C{""} for C{<>}),
    C{parameters} (the MAIL parameters: SIZE, BODY, RET, ENVID, SMTPUTF8,
    AUTH), C{authIdentity}, and C{recipients} (each with its address, the
    address the client gave when an alias or subaddress changed it, the
    detail, and its RCPT parameters: NOTIFY, ORCPT).
    """
    return {
        "id": envelope.queueID,
        "sender": _address(envelope.mailFrom),
        "parameters": _params(envelope.mailParams),
        "authIdentity": envelope.authIdentity,
        "recipients": [_recipient(r) for r in recipients],
    }


def clientDocument(session: SessionSnapshot | None) -> dict[str, Any] | None:
    """
    What the session knew of the client (None when nothing is known):
    its address and port, its verified reverse name, HELO, protocol (the
    Received: with-clause: ESMTPS, ESMTPSA ...), TLS, the authenticated
    user and mechanism, the listener, and our side (hostname, address, port).
    """
    if session is None:
        return None
    tls = session.tls
    return {
        "address": session.peerHost or None,
        "port": session.peerPort or None,
        "name": session.peerName,
        "helo": session.heloName,
        "protocol": session.protocol,
        "tls": None if tls is None else {"version": tls.version, "cipher": tls.cipher},
        "authenticated": session.authenticated,
        "authMechanism": session.authMechanism,
        "listener": session.listener,
        "sessionID": session.sessionID or None,
        "server": {
            "hostname": session.hostname or None,
            "address": session.localHost or None,
            "port": session.localPort or None,
        },
    }


def _headerValue(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape").replace(b"\r", b" ").replace(b"\n", b" ")


def rawHeaders(
    envelope: Envelope, recipients: Sequence[Recipient]
) -> tuple[dict[bytes, list[bytes]], bytes]:
    """
    The headers of the raw format, and the value of C{X-Mailframe-Envelope}
    (compact JSON, ASCII, of L{envelopeDocument} with C{client}: the exact
    envelope, for any address).  C{X-Mailframe-Sender} (empty for C{<>})
    and C{X-Mailframe-Recipients} (the addresses, C{", "} between them) are
    conveniences for the common addresses; the signature covers the
    envelope only through C{X-Mailframe-Envelope}.
    """
    document = envelopeDocument(envelope, recipients)
    document["client"] = clientDocument(envelope.session)
    encoded = json.dumps(document, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    session = envelope.session
    headers: dict[bytes, list[bytes]] = {
        b"Content-Type": [b"message/rfc822"],
        b"X-Mailframe-Queue-Id": [_headerValue(envelope.queueID)],
        b"X-Mailframe-Sender": [_headerValue(_address(envelope.mailFrom))],
        b"X-Mailframe-Recipients": [
            _headerValue(", ".join(_address(r.address) for r in recipients))
        ],
        b"X-Mailframe-Envelope": [encoded],
    }
    if session is not None and session.peerHost:
        headers[b"X-Mailframe-Client-Address"] = [_headerValue(session.peerHost)]
    if session is not None and session.heloName:
        headers[b"X-Mailframe-Client-Helo"] = [_headerValue(session.heloName)]
    return headers, encoded


def sign(secret: bytes, timestamp: int, body: bytes | Iterable[bytes]) -> str:
    """C{HMAC-SHA256(secret, TIMESTAMP "." BODY)} in hex; C{body} may be a series of chunks."""
    mac = hmac.new(secret, b"%d." % timestamp, hashlib.sha256)
    if isinstance(body, bytes):
        mac.update(body)
    else:
        for chunk in body:
            mac.update(chunk)
    return mac.hexdigest()


def signatureHeader(timestamp: int, signature: str) -> bytes:
    """C{t=TIMESTAMP,v1=HEX}."""
    return f"t={timestamp},v1={signature}".encode("ascii")


# -- the JSON format -------------------------------------------------------------

_POLICY = email.policy.default.clone(raise_on_defect=False)


def _fieldText(message: email.message.Message, name: str, raw: str) -> str:
    """A header field's value decoded (RFC 2047), or as it is if it cannot be."""
    try:
        return str(_POLICY.header_fetch_parse(name, raw))
    except Exception:
        return raw.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _text(part: email.message.Message) -> str:
    """A text part decoded, with LF line endings."""
    try:
        content = part.get_content()  # type: ignore[attr-defined]
    except Exception:  # an unknown charset, a broken transfer encoding
        content = None
    if not isinstance(content, str):
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        content = data.decode("utf-8", "replace")
    return content.replace("\r\n", "\n")


def _partBytes(part: email.message.Message) -> bytes:
    if part.is_multipart() or part.get_content_maintype() == "message":
        inner = part.get_payload()
        if isinstance(inner, list) and len(inner) == 1 and hasattr(inner[0], "as_bytes"):
            return bytes(inner[0].as_bytes(policy=_POLICY))
        return part.as_bytes(policy=_POLICY)
    payload = part.get_payload(decode=True)
    return payload if isinstance(payload, bytes) else b""


def _attachments(
    part: email.message.Message, bodies: Sequence[email.message.Message]
) -> Iterable[dict[str, Any]]:
    if part.get_content_maintype() == "multipart":
        for sub in part.iter_parts():  # type: ignore[attr-defined]
            yield from _attachments(sub, bodies)
        return
    if any(part is b for b in bodies):
        return
    content = _partBytes(part)
    yield {
        "filename": part.get_filename(),
        "contentType": part.get_content_type(),
        "disposition": part.get_content_disposition(),
        "contentId": part.get("Content-ID"),
        "size": len(content),
        "content": base64.b64encode(content).decode("ascii"),
    }


def messageDocument(
    envelope: Envelope,
    recipients: Sequence[Recipient],
    data: bytes,
    *,
    original: bool = False,
) -> dict[str, Any]:
    """
    The JSON document of a message (see docs/handoff.rst): C{envelope},
    C{client}, C{authenticationResults} (the values of the
    Authentication-Results fields, ours first), C{headers} (every field as
    C{[name, value]}, decoded, in order), C{subject}, C{from}, C{to},
    C{messageId}, C{date}, C{text} and C{html} (the message's body in
    each form, or null), C{attachments} (every other part, with its
    content in base64), C{size}, and with C{original} the whole message
    in base64 as C{message}.
    """
    parsed = BytesParser(policy=_POLICY).parsebytes(data)
    headers = [[name, _fieldText(parsed, name, raw)] for name, raw in parsed.raw_items()]

    def first(name: str) -> str | None:
        lower = name.lower()
        return next((v for n, v in headers if n.lower() == lower), None)

    bodies: list[email.message.Message] = []
    text = html = None
    for subtype in ("plain", "html"):
        try:
            part = parsed.get_body(preferencelist=(subtype,))
        except Exception:
            part = None
        if part is None or part.get_content_subtype() != subtype:
            continue
        bodies.append(part)
        if subtype == "plain":
            text = _text(part)
        else:
            html = _text(part)
    if not parsed.is_multipart() and not bodies:
        attachments = list(_attachments(parsed, ()))
    else:
        attachments = list(_attachments(parsed, bodies))
    document: dict[str, Any] = {
        "id": envelope.queueID,
        "envelope": envelopeDocument(envelope, recipients),
        "client": clientDocument(envelope.session),
        "authenticationResults": [v for n, v in headers if n.lower() == "authentication-results"],
        "headers": headers,
        "subject": first("Subject"),
        "from": first("From"),
        "to": first("To"),
        "messageId": first("Message-ID"),
        "date": first("Date"),
        "text": text,
        "html": html,
        "attachments": attachments,
        "size": len(data),
    }
    if original:
        document["message"] = base64.b64encode(data).decode("ascii")
    return document


def encodeDocument(document: dict[str, Any]) -> bytes:
    """The JSON text of C{document}, in ASCII (other characters as JSON escapes)."""
    return json.dumps(document, separators=(",", ":"), ensure_ascii=True).encode("ascii")
