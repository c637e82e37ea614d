"""
L{RspamdFilter}: a message filter asking rspamd over its own HTTP protocol
(C{POST /checkv2}, the message as the body, the envelope and the client as
headers: C{IP}, C{Helo}, C{Hostname}, C{From}, C{Rcpt} (one per
recipient), C{Queue-Id}, C{User}, C{MTA-Name}, C{TLS-Version},
C{TLS-Cipher}), and applying its answer (JSON) as rspamd's own milter
proxy does:

  - C{reject}: 554 5.7.1 with rspamd's SMTP message ("Spam message
    rejected" if it gives none);
  - C{soft reject} and C{greylist}: 451 4.7.1 ("Try again later");
  - C{rewrite subject}: the Subject field becomes rspamd's C{subject};
  - C{add header}: C{X-Spam: Yes};
  - always: its C{milter.add_headers} and C{milter.remove_headers}, its
    C{dkim-signature} if it signed, and (C{header}) an C{X-Spamd-Result}
    field with the score and the symbols.

The server's own Received: field is not sent (rspamd sees the message as
the client sent it, with the client's facts in the headers), and keeps its
place.  When rspamd cannot be reached, answers an error or takes longer
than C{timeout}: C{failure} decides (accept, or tempfail with 451 4.7.1).

Owns: rspamd's protocol.  Must not: import the server; read the message in
the reactor thread beyond the header section and one copy of it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mailframe.envelope import Envelope, SessionInfo
from mailframe.interfaces import IMessageFilter
from mailframe.message import Message
from mailframe.milter.edits import Changes
from mailframe.reply import Reply

__all__ = ["RspamdFilter", "headerFieldsFromAnswer", "requestHeaders"]

log = Logger(namespace="mailframe.policy.rspamd")

REJECTED = Reply(554, (5, 7, 1), "Spam message rejected")
TRY_LATER = Reply(451, (4, 7, 1), "Try again later")
UNAVAILABLE = Reply(451, (4, 7, 1), "Service unavailable - try again later")
_MAX_TEXT = 200


def requestHeaders(
    session: SessionInfo, envelope: Envelope, hostname: str
) -> dict[bytes, list[bytes]]:
    """The HTTP headers that tell rspamd what the SMTP session knew."""

    def b(text: str) -> bytes:
        return text.encode("utf-8", "replace").replace(b"\r", b"").replace(b"\n", b"")

    headers: dict[bytes, list[bytes]] = {
        b"IP": [b(session.peerHost)] if session.peerHost else [],
        b"From": [b(str(envelope.mailFrom)) if not envelope.mailFrom.isNull else b"<>"],
        b"Rcpt": [b(str(r.address)) for r in envelope.recipients],
        b"Queue-Id": [b(envelope.queueID)],
        b"MTA-Name": [b(hostname)],
    }
    if session.heloName:
        headers[b"Helo"] = [b(session.heloName)]
    iprev = session.iprev
    if iprev is not None and iprev.result == "pass" and iprev.names:
        headers[b"Hostname"] = [b(iprev.names[0])]
    else:
        headers[b"Hostname"] = [b"unknown"]
    if session.authenticated:
        headers[b"User"] = [b(session.authenticated)]
    if session.tls is not None:
        headers[b"TLS-Version"] = [b(session.tls.version)]
        headers[b"TLS-Cipher"] = [b(session.tls.cipher)]
    return {k: v for k, v in headers.items() if v}


def _headerValues(value: Any) -> list[tuple[str, int | None]]:
    """rspamd's add_headers value: a string, a table with value and order, or a list of them."""
    items = value if isinstance(value, list) else [value]
    out: list[tuple[str, int | None]] = []
    for item in items:
        if isinstance(item, str):
            out.append((item, None))
        elif isinstance(item, Mapping) and isinstance(item.get("value"), str):
            order = item.get("order")
            out.append((item["value"], order if isinstance(order, int) else None))
    return out


def headerFieldsFromAnswer(answer: Mapping[str, Any], resultHeader: bool) -> list[tuple[str, str]]:
    """The fields rspamd's answer adds at the end (X-Spam, X-Spamd-Result), as (name, value)."""
    fields = []
    if answer.get("action") == "add header":
        fields.append(("X-Spam", "Yes"))
    if resultHeader and "score" in answer:
        spam = answer.get("action") in ("reject", "add header", "rewrite subject")
        lines = [
            f"default: {spam} [{float(answer.get('score', 0)):.2f} / "
            f"{float(answer.get('required_score', 0)):.2f}]"
        ]
        symbols = answer.get("symbols")
        if isinstance(symbols, Mapping):
            for name in sorted(symbols):
                symbol = symbols[name]
                score = symbol.get("score", 0) if isinstance(symbol, Mapping) else 0
                lines.append(f"{name}({float(score):.2f})")
        fields.append(("X-Spamd-Result", ";\n\t".join(lines)))
    return fields


def _text(answer: Mapping[str, Any]) -> str | None:
    messages = answer.get("messages")
    text = messages.get("smtp_message") if isinstance(messages, Mapping) else None
    if not isinstance(text, str):
        return None
    text = "".join(c if 32 <= ord(c) < 127 else " " for c in text).strip()
    return text[:_MAX_TEXT] or None


@implementer(IMessageFilter)
class RspamdFilter:
    """
    Asks rspamd at C{url} about each message (see the module docstring).

    @param request: makes the HTTP request (C{treq.request} by default).
    """

    def __init__(
        self,
        url: str,
        reactor: Any,
        hostname: str,
        timeout: float = 20.0,
        failure: str = "accept",
        resultHeader: bool = True,
        request: Any = None,
    ) -> None:
        self.url = url.rstrip("/") + "/checkv2"
        self.reactor = reactor
        self.hostname = hostname
        self.timeout = timeout
        self.failure = failure
        self.resultHeader = resultHeader
        if request is None:
            import treq

            request = treq.request
        self._request = request

    def __repr__(self) -> str:
        return f"<RspamdFilter {self.url}>"

    def filterMessage(
        self, session: SessionInfo, envelope: Envelope, message: Message
    ) -> defer.Deferred[Reply | None]:
        hold = message.retain()
        d = defer.ensureDeferred(self._check(session, envelope, message))
        d.addErrback(self._failed, envelope)
        return d.addBoth(hold.passThrough)

    async def _check(
        self, session: SessionInfo, envelope: Envelope, message: Message
    ) -> Reply | None:
        trace = message.traceField
        fields = [f for f in message.headerFields() if f != trace]
        body = b"".join([*fields, b"\r\n", *message.bodyChunks()])
        response = await self._request(
            "POST",
            self.url,
            data=body,
            headers=requestHeaders(session, envelope, self.hostname),
            timeout=self.timeout,
            reactor=self.reactor,
        )
        content = await response.content()
        if response.code != 200:
            raise ValueError(f"rspamd answered HTTP {response.code}")
        answer = json.loads(content)
        if not isinstance(answer, Mapping):
            raise ValueError("rspamd's answer is not a JSON object")
        return self._apply(answer, envelope, message)

    def _apply(
        self, answer: Mapping[str, Any], envelope: Envelope, message: Message
    ) -> Reply | None:
        action = answer.get("action")
        text = _text(answer)
        log.info(
            "{queueID}: rspamd {action} ({score})",
            queueID=envelope.queueID,
            action=action,
            score=answer.get("score"),
        )
        if action == "reject":
            return REJECTED.withText(text) if text else REJECTED
        if action in ("soft reject", "greylist"):
            return TRY_LATER.withText(text) if text else TRY_LATER
        changes = Changes()
        editor = changes.headerEditor(message)
        milter = answer.get("milter")
        if isinstance(milter, Mapping):
            removals = milter.get("remove_headers")
            if isinstance(removals, Mapping):
                for name, index in removals.items():
                    editor.remove(str(name), index if isinstance(index, int) else 0)
            additions = milter.get("add_headers")
            if isinstance(additions, Mapping):
                for name, value in additions.items():
                    for text_, order in _headerValues(value):
                        if order is None:
                            editor.add(str(name), text_)
                        else:
                            editor.insert(order, str(name), text_)
        if action == "rewrite subject" and isinstance(answer.get("subject"), str):
            editor.change(1, "Subject", answer["subject"])
        signature = answer.get("dkim-signature")
        if isinstance(signature, str):
            if signature.lower().startswith("dkim-signature:"):
                signature = signature.partition(":")[2]
            editor.insert(0, "DKIM-Signature", signature.strip())
        for name, value in headerFieldsFromAnswer(answer, self.resultHeader):
            editor.add(name, value)
        changes.apply(message, envelope)
        return None

    def _failed(self, reason: Failure, envelope: Envelope) -> Reply | None:
        if reason.check(defer.CancelledError):
            reason.raiseException()
        error = reason.value
        text = str(error).splitlines()[0] if str(error) else type(error).__name__
        log.warn(
            "{queueID}: rspamd at {url} failed: {why}; {failure}",
            queueID=envelope.queueID,
            url=self.url,
            why=text,
            failure=self.failure,
        )
        return None if self.failure == "accept" else UNAVAILABLE
