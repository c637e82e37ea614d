"""
Delivery status notifications (RFC 3464, RFC 3461; RFC 6533 for
internationalised mail): L{buildReport} turns what became of some
recipients of a queued message into a C{multipart/report} from
MAILER-DAEMON, to be sent with the null reverse-path to the sender.

The report has three parts: a readable explanation (text/plain); the
C{message/delivery-status} fields (Reporting-MTA, Original-Envelope-Id,
Received-From-MTA, Arrival-Date, then per recipient Original-Recipient
(from ORCPT), Final-Recipient, Action, Status, Remote-MTA,
Diagnostic-Code, Last-Attempt-Date, Will-Retry-Until); and the returned
message: the whole of it when RET=FULL asked and it is at most
C{fullSize} octets, only its header section (text/rfc822-headers) for
RET=HDRS and for reports that are not failures, else its header section and
the first C{bodySize} octets of its body, cut at a line end.

Which recipients get a report (NOTIFY, the null sender) is the runner's
decision; L{wantsNotice} answers it from the RCPT parameters.

Owns: the report's format.  Must not: import twisted, read files or send
anything.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime

from mailframe.address import asciiUpper
from mailframe.extensions.dsn import decodeOrcpt, notifyKeywords
from mailframe.queue.entry import QueueEntry, RecipientState
from mailframe.reply import Reply

__all__ = [
    "DELAYED",
    "DELIVERED",
    "EXPANDED",
    "FAILED",
    "RELAYED",
    "ReportItem",
    "ReportSettings",
    "buildReport",
    "statusOf",
    "wantsNotice",
]

FAILED = "failed"
DELAYED = "delayed"
DELIVERED = "delivered"
RELAYED = "relayed"
EXPANDED = "expanded"

_NOTIFY_FOR = {FAILED: "FAILURE", DELAYED: "DELAY", DELIVERED: "SUCCESS", RELAYED: "SUCCESS",
               EXPANDED: "SUCCESS"}  # fmt: skip
_LABELS = {FAILED: "failed", DELAYED: "delayed", DELIVERED: "delivered",
           RELAYED: "relayed (no further notice)", EXPANDED: "expanded"}  # fmt: skip
_HEADER_END = re.compile(rb"\r?\n\r?\n")


@dataclass(frozen=True)
class ReportSettings:
    """
    C{hostname}: the Reporting-MTA and the From: domain.  C{bodySize}:
    octets of the body returned by default.  C{fullSize}: the largest
    message returned whole for RET=FULL.
    """

    hostname: str
    bodySize: int = 16 << 10
    fullSize: int = 1 << 20
    headerLimit: int = 256 << 10

    def readLimit(self, entry: QueueEntry, failure: bool) -> int:
        """How many octets of the original a report needs to read."""
        ret = _returned(entry)
        if ret == "FULL" and entry.size <= self.fullSize:
            return entry.size
        if ret == "HDRS" or not failure:
            return min(entry.size, self.headerLimit)
        return min(entry.size, self.headerLimit + self.bodySize)


def _returned(entry: QueueEntry) -> str:
    """
    What a report returns of the message: its RET; only the header section
    for mail sent with REQUIRETLS, whose content the report would carry
    without that protection (RFC 8689 5).
    """
    if "REQUIRETLS" in entry.mailParams:
        return "HDRS"
    return asciiUpper(entry.mailParams.get("RET") or "")


@dataclass(frozen=True)
class ReportItem:
    """One recipient in a report: its state, the action, and (delayed) until when."""

    recipient: RecipientState
    action: str
    willRetryUntil: float | None = None


def wantsNotice(recipient: RecipientState, action: str) -> bool:
    """
    Whether NOTIFY asks for a report of C{action}: without NOTIFY, failures
    and delays are reported and successes are not (RFC 3461 4.1).
    """
    keywords = notifyKeywords(recipient.params.get("NOTIFY"))
    if keywords is None:
        return action in (FAILED, DELAYED)
    return _NOTIFY_FOR[action] in keywords


def statusOf(reply: Reply | None, action: str) -> str:
    """The Status field: the reply's enhanced code, else one from its class."""
    if reply is not None and reply.enhanced is not None:
        return ".".join(map(str, reply.enhanced))
    if action in (DELIVERED, RELAYED, EXPANDED):
        return "2.0.0"
    if reply is None:
        return "4.0.0" if action == DELAYED else "5.0.0"
    return f"{reply.code // 100}.0.0"


def _date(when: float) -> str:
    return format_datetime(datetime.fromtimestamp(when, UTC))


def _fold(name: str, value: str) -> str:
    """A header field, folded at spaces to lines of at most 78 characters where it can be."""
    words = value.split(" ")
    lines: list[str] = []
    line = f"{name}:"
    for word in words:
        if len(line) + 1 + len(word) > 78 and line.strip() != f"{name}:":
            lines.append(line)
            line = " "
        line = f"{line} {word}" if line != " " else f" {word}"
    lines.append(line)
    return "\r\n".join(lines) + "\r\n"


def _clean(text: str) -> str:
    return "".join(c if c.isprintable() else " " for c in text)


def _addressType(address: str) -> str:
    return "rfc822" if address.isascii() else "utf-8"


def _remoteMTA(remote: str) -> str:
    """C{mx.example.org [192.0.2.7]} -> C{mx.example.org}; C{[192.0.2.7]} as is."""
    first = remote.split()[0] if remote.split() else remote
    return _clean(first)


def _split(original: bytes) -> tuple[bytes, bytes]:
    match = _HEADER_END.search(original)
    if match is None:
        return original, b""
    return original[: match.start()] + b"\r\n", original[match.end() :]


def _cutAtLine(body: bytes, size: int) -> bytes:
    if len(body) <= size:
        return body
    cut = body.rfind(b"\n", 0, size)
    return body[: cut + 1] if cut >= 0 else body[:size]


def _explanation(entry: QueueEntry, items: Sequence[ReportItem], settings: ReportSettings,
                 returned: str) -> tuple[str, str]:  # fmt: skip
    actions = {i.action for i in items}
    if FAILED in actions:
        subject = "Undelivered Mail Returned to Sender"
        opening = (
            "I'm sorry to have to inform you that your message could not be delivered "
            "to one or more recipients."
        )
    elif DELAYED in actions:
        subject = "Delayed Mail (still being retried)"
        opening = (
            "Your message could not be delivered yet to one or more recipients. "
            "It will be tried again; you do not need to send it again."
        )
    else:
        subject = "Successful Mail Delivery Report"
        opening = "Your message was delivered to the recipients listed below."
    lines = [f"This is the mail system at host {settings.hostname}.", "", opening, ""]
    for item in items:
        r = item.recipient
        why = ""
        if item.action in (FAILED, DELAYED) and r.reply is not None:
            said = _clean(" ".join(_replyText(r.reply)))
            why = f": host {_clean(r.remote)} said: {said}" if r.remote else f": {said}"
        label = _LABELS[item.action]
        lines.append(f"<{_clean(r.address)}>: {label}{why}")
        if item.action == DELAYED and item.willRetryUntil is not None:
            lines.append(f"    tried until {_date(item.willRetryUntil)}")
    lines += ["", returned, ""]
    return subject, "\r\n".join(lines)


def buildReport(
    entry: QueueEntry,
    items: Sequence[ReportItem],
    original: bytes,
    settings: ReportSettings,
    now: float,
    messageID: str,
) -> tuple[bytes, dict[str, str | None]]:
    """
    The report (CRLF line endings) about C{items} of C{entry}, and the MAIL
    parameters to send it with (BODY=8BITMIME when it holds 8-bit text,
    SMTPUTF8 when addresses need it).

    @param original: the start of the queued message, as much as
        L{ReportSettings.readLimit} asked for (the whole of it if shorter).

    @param messageID: a unique left-hand side for the Message-ID field.
    """
    failure = any(i.action == FAILED for i in items)
    utf8 = (
        "SMTPUTF8" in entry.mailParams
        or not entry.sender.isascii()
        or any(not i.recipient.address.isascii() for i in items)
    )
    ret = _returned(entry)
    head, body = _split(original)
    if ret == "FULL" and entry.size <= settings.fullSize and len(original) >= entry.size:
        kind, content = "message", original
        returned = "The message is attached."
    elif ret == "HDRS" or not failure:
        kind, content = "headers", head
        returned = "The header section of the message is attached."
    else:
        cut = _cutAtLine(body, settings.bodySize)
        kind, content = "message", head + b"\r\n" + cut
        whole = len(original) >= entry.size and len(cut) == len(body)
        returned = (
            "The message is attached."
            if whole
            else f"The header section of the message and the first {len(cut)} octets of "
            "its body are attached."
        )
    subject, text = _explanation(entry, items, settings, returned)
    boundary = f"{messageID}/{settings.hostname}"
    eightBit = not content.isascii()
    parts: list[bytes] = []
    top = [
        f"From: Mail Delivery System <MAILER-DAEMON@{settings.hostname}>\r\n",
        _fold("To", f"<{entry.sender}>"),
        f"Subject: {subject}\r\n",
        f"Date: {_date(now)}\r\n",
        f"Message-ID: <{messageID}@{settings.hostname}>\r\n",
        "Auto-Submitted: auto-replied\r\n",
        "MIME-Version: 1.0\r\n",
        "Content-Type: multipart/report; report-type=delivery-status;\r\n",
        f'\tboundary="{boundary}"\r\n',
        "\r\n",
        "This is a MIME-encapsulated message.\r\n",
        "\r\n",
    ]
    parts.append("".join(top).encode())
    parts.append(
        (
            f"--{boundary}\r\n"
            "Content-Description: Notification\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n"
            f"Content-Transfer-Encoding: {'7bit' if text.isascii() else '8bit'}\r\n"
            "\r\n"
            f"{text}\r\n"
        ).encode()
    )
    parts.append(
        (
            f"--{boundary}\r\n"
            "Content-Description: Delivery report\r\n"
            f"Content-Type: message/{'global-' if utf8 else ''}delivery-status\r\n"
            "\r\n"
            f"{_statusFields(entry, items, settings)}"
        ).encode()
    )
    if kind == "message":
        contentType = "message/global" if utf8 else "message/rfc822"
        description = "Undelivered Message" if failure else "Message"
    else:
        contentType = "message/global-headers" if utf8 else "text/rfc822-headers"
        description = "Message Headers"
    parts.append(
        (
            f"--{boundary}\r\n"
            f"Content-Description: {description}\r\n"
            f"Content-Type: {contentType}\r\n"
            f"Content-Transfer-Encoding: {'8bit' if eightBit else '7bit'}\r\n"
            "\r\n"
        ).encode()
    )
    parts.append(content if content.endswith(b"\r\n") or not content else content + b"\r\n")
    parts.append(f"\r\n--{boundary}--\r\n".encode())
    params: dict[str, str | None] = {}
    if eightBit or not text.isascii():
        params["BODY"] = "8BITMIME"
    if utf8 and not entry.sender.isascii():
        params["SMTPUTF8"] = None
    return b"".join(parts), params


def _statusFields(entry: QueueEntry, items: Sequence[ReportItem], settings: ReportSettings) -> str:
    fields = [f"Reporting-MTA: dns; {settings.hostname}\r\n"]
    envid = entry.mailParams.get("ENVID")
    if envid:
        fields.append(_fold("Original-Envelope-Id", envid))
    helo = entry.received.get("helo")
    peer = entry.received.get("peer")
    if helo or peer:
        fields.append(_fold("Received-From-MTA", f"dns; {_clean(helo or 'unknown')} ([{peer}])"))
    fields.append(f"Arrival-Date: {_date(entry.arrival)}\r\n")
    for item in items:
        r = item.recipient
        fields.append("\r\n")
        orcpt = decodeOrcpt(r.params.get("ORCPT"))
        if orcpt is not None:
            fields.append(_fold("Original-Recipient", f"{orcpt[0]}; {_clean(orcpt[1])}"))
        fields.append(_fold("Final-Recipient", f"{_addressType(r.address)}; {_clean(r.address)}"))
        fields.append(f"Action: {item.action}\r\n")
        fields.append(f"Status: {statusOf(r.reply, item.action)}\r\n")
        if r.remote:
            fields.append(f"Remote-MTA: dns; {_remoteMTA(r.remote)}\r\n")
        if r.reply is not None and item.action != DELIVERED:
            fields.append(
                _fold("Diagnostic-Code", "smtp; " + _clean(" ".join(_replyText(r.reply))))
            )
        if r.lastAttempt is not None:
            fields.append(f"Last-Attempt-Date: {_date(r.lastAttempt)}\r\n")
        if item.willRetryUntil is not None:
            fields.append(f"Will-Retry-Until: {_date(item.willRetryUntil)}\r\n")
    return "".join(fields)


def _replyText(reply: Reply) -> list[str]:
    enhanced = ".".join(map(str, reply.enhanced)) + " " if reply.enhanced else ""
    return [f"{reply.code} {enhanced}{' '.join(reply.lines)}".strip()]
