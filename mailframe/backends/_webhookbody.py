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
import contextlib
import email.header
import email.message
import email.policy
import hashlib
import hmac
import json
import re
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

# compat32: the parser that costs least; header fields are decoded here, and
# only those with encoded words (RFC 2047) go through email.header
_UNFOLD = re.compile(r"\r?\n(?=[ \t])")


def _fieldText(raw: str) -> str:
    """A header field's value unfolded and decoded (RFC 2047, UTF-8), as well as it can be."""
    value = _UNFOLD.sub("", raw).strip()
    if not value.isascii():  # octets the parser kept as surrogates
        value = value.encode("ascii", "surrogateescape").decode("utf-8", "replace")
    if "=?" in value:
        with contextlib.suppress(Exception):  # a broken encoded word: the field as it is
            value = str(email.header.make_header(email.header.decode_header(value)))
    return value


def _payload(part: email.message.Message) -> bytes:
    payload = part.get_payload(decode=True)
    return payload if isinstance(payload, bytes) else b""


def _text(part: email.message.Message) -> str:
    """A text part decoded to text, with LF line endings."""
    data = _payload(part)
    charset = part.get_content_charset() or "us-ascii"
    try:
        text = data.decode(charset)
    except (LookupError, UnicodeDecodeError):  # an unknown charset, or a wrong one
        text = data.decode("utf-8", "replace")
    return text.replace("\r\n", "\n")


def _attachment(part: email.message.Message) -> dict[str, Any]:
    if part.get_content_maintype() == "message" and part.is_multipart():
        inner = part.get_payload(0)
        content = inner.as_bytes() if isinstance(inner, email.message.Message) else b""
    else:
        content = _payload(part)
    filename = part.get_filename()
    contentID = part.get("Content-ID")
    return {
        "filename": None if filename is None else _fieldText(str(filename)),
        "contentType": part.get_content_type(),
        "disposition": part.get_content_disposition(),
        "contentId": None if contentID is None else _fieldText(str(contentID)),
        "size": len(content),
        "content": base64.b64encode(content).decode("ascii"),
    }


class _Parts:
    """The body of a message in text and HTML (the first of each that is not an
    attachment), and every other part as an attachment."""

    def __init__(self, message: email.message.Message) -> None:
        self.text: str | None = None
        self.html: str | None = None
        self.attachments: list[dict[str, Any]] = []
        self._visit(message, 0)

    def _visit(self, part: email.message.Message, depth: int) -> None:
        if part.get_content_maintype() == "multipart" and depth < 50:
            payload = part.get_payload()
            for sub in payload if isinstance(payload, list) else ():
                if isinstance(sub, email.message.Message):
                    self._visit(sub, depth + 1)
            return
        kind = part.get_content_type()
        inline = part.get_content_disposition() != "attachment"
        if inline and kind == "text/plain" and self.text is None:
            self.text = _text(part)
        elif inline and kind == "text/html" and self.html is None:
            self.html = _text(part)
        else:
            self.attachments.append(_attachment(part))


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
    parsed = BytesParser(policy=email.policy.compat32).parsebytes(data)
    headers = [[name, _fieldText(str(raw))] for name, raw in parsed.raw_items()]
    first: dict[str, str] = {}
    for name, value in headers:
        first.setdefault(name.lower(), value)
    parts = _Parts(parsed)
    document: dict[str, Any] = {
        "id": envelope.queueID,
        "envelope": envelopeDocument(envelope, recipients),
        "client": clientDocument(envelope.session),
        "authenticationResults": [v for n, v in headers if n.lower() == "authentication-results"],
        "headers": headers,
        "subject": first.get("subject"),
        "from": first.get("from"),
        "to": first.get("to"),
        "messageId": first.get("message-id"),
        "date": first.get("date"),
        "text": parts.text,
        "html": parts.html,
        "attachments": parts.attachments,
        "size": len(data),
    }
    if original:
        document["message"] = base64.b64encode(data).decode("ascii")
    return document


def encodeDocument(document: dict[str, Any]) -> bytes:
    """The JSON text of C{document}, in ASCII (other characters as JSON escapes)."""
    return json.dumps(document, separators=(",", ":"), ensure_ascii=True).encode("ascii")
