"""
L{QueueEntry} and L{RecipientState}: what the queue knows about one message
and each of its recipients, and their JSON form (the spool's envelope file).

The JSON is a flat object with a C{"version"} number; unknown keys are
ignored when read, so a newer mailframe can add some.  Never pickle: an
envelope file is data anyone may read, and a corrupt or hostile one can
only fail to load (L{EntryError}), never run code.

Owns: the envelope format and the per-recipient states (C{pending},
C{delivered}, C{relayed}, C{failed}).  Must not: import twisted, touch the
file system, or decide anything (the runner does).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mailframe.address import Address, AddressError, parseMailbox
from mailframe.envelope import Envelope, Recipient, SessionSnapshot
from mailframe.reply import Reply

__all__ = [
    "DELIVERED",
    "FAILED",
    "PENDING",
    "RELAYED",
    "EntryError",
    "QueueEntry",
    "RecipientState",
    "addressFromText",
    "replyFromJSON",
    "replyToJSON",
]

VERSION = 1

PENDING = "pending"
"""Not delivered yet: the next attempt tries it."""
DELIVERED = "delivered"
"""Taken by the local delivery backend."""
RELAYED = "relayed"
"""Accepted by the next hop (an IRelay)."""
FAILED = "failed"
"""Failed for good (a 5xx, or given up); a report was sent if one was due."""

_STATES = frozenset({PENDING, DELIVERED, RELAYED, FAILED})


class EntryError(ValueError):
    """An envelope file that is not a valid queue entry."""


@functools.lru_cache(maxsize=4096)
def addressFromText(text: str) -> Address:
    """An L{Address} from its C{str()}: C{""} is the null path, no C{@} a bare name."""
    if not text:
        return Address.null()
    if "@" not in text:
        return Address(text, None)
    return parseMailbox(text)


def replyToJSON(reply: Reply | None) -> list[object] | None:
    """C{[code, "x.y.z" or null, [lines]]}."""
    if reply is None:
        return None
    enhanced = ".".join(map(str, reply.enhanced)) if reply.enhanced else None
    return [reply.code, enhanced, list(reply.lines)]


def replyFromJSON(data: Any) -> Reply | None:
    if data is None:
        return None
    code, enhanced, lines = data
    parts = tuple(int(p) for p in enhanced.split(".")) if enhanced else None
    return Reply(int(code), parts, tuple(str(line) for line in lines))  # type: ignore[arg-type]


@dataclass(eq=False)
class RecipientState:
    """
    One recipient: its address (C{str(Address)}), its RCPT parameters as
    received (NOTIFY, ORCPT ...), and what has become of it.  For a target
    of an alias or virtual map: C{original}, the RCPT address it came from
    (a target of another domain is a forwarded copy: see
    L{mailframe.queue.srs}), and C{detail}, its subaddress.
    """

    address: str
    params: dict[str, str | None] = field(default_factory=dict)
    state: str = PENDING
    reply: Reply | None = None
    remote: str | None = None
    lastAttempt: float | None = None
    original: str | None = None
    detail: str | None = None

    @property
    def pending(self) -> bool:
        return self.state == PENDING

    def toRecipient(self) -> Recipient:
        """The L{Recipient} a backend or relay is given."""
        if self.original is None and self.detail is None:
            return Recipient(addressFromText(self.address), dict(self.params))
        original = addressFromText(self.original) if self.original is not None else None
        return Recipient(
            addressFromText(self.address), dict(self.params), None, original, self.detail
        )

    def toJSON(self) -> dict[str, object]:
        data: dict[str, object] = {
            "address": self.address,
            "params": self.params,
            "state": self.state,
            "reply": replyToJSON(self.reply),
            "remote": self.remote,
            "lastAttempt": self.lastAttempt,
        }
        if self.original is not None:
            data["original"] = self.original
        if self.detail is not None:
            data["detail"] = self.detail
        return data

    @classmethod
    def fromJSON(cls, data: Mapping[str, Any]) -> RecipientState:
        state = data.get("state", PENDING)
        if state not in _STATES:
            raise EntryError(f"unknown recipient state {state!r}")
        address = data["address"]
        addressFromText(address)  # must parse
        original = data.get("original")
        if original is not None:
            addressFromText(original)
        detail = data.get("detail")
        return cls(
            address=address,
            params=_params(data.get("params") or {}),
            state=state,
            reply=replyFromJSON(data.get("reply")),
            remote=data.get("remote"),
            lastAttempt=_time(data.get("lastAttempt")),
            original=original,
            detail=detail if isinstance(detail, str) else None,
        )


@dataclass(eq=False)
class QueueEntry:
    """
    One queued message.  C{id} names its files in the spool; C{sender} is
    C{str(Address)} (C{""} for the null path); C{mailParams} the MAIL
    parameters (SIZE, BODY, SMTPUTF8, RET, ENVID ...); C{arrival} and
    C{nextAttempt} are clock seconds.  C{received} holds the session facts a
    report names (C{helo}, C{peer}, C{protocol}); C{listener} the listener
    that took it (whose local backend delivers it); C{report} is true for
    the delivery status notifications the queue made itself; C{held} for a
    message put on hold (C{mailframe-queue hold}): never attempted until
    released.
    """

    id: str
    sender: str
    recipients: list[RecipientState]
    arrival: float
    size: int = 0
    mailParams: dict[str, str | None] = field(default_factory=dict)
    attempts: int = 0
    nextAttempt: float = 0.0
    lastAttempt: float | None = None
    listener: str = "smtp"
    received: dict[str, str] = field(default_factory=dict)
    auth: str | None = None
    delayWarned: bool = False
    report: bool = False
    held: bool = False

    @classmethod
    def fromEnvelope(
        cls, queueID: str, envelope: Envelope, arrival: float, size: int, listener: str = "smtp"
    ) -> QueueEntry:
        """A new entry for an accepted message: every recipient pending."""
        facts = envelope.session
        return cls(
            id=queueID,
            sender=str(envelope.mailFrom),
            recipients=[
                RecipientState(
                    str(r.address),
                    dict(r.params),
                    original=str(r.original) if r.original is not None else None,
                    detail=r.detail,
                )
                for r in envelope.recipients
            ],
            arrival=arrival,
            size=size,
            mailParams=dict(envelope.mailParams),
            nextAttempt=arrival,
            listener=listener,
            received=(
                {"helo": facts.heloName or "", "peer": facts.peerHost, "protocol": facts.protocol}
                if facts is not None
                else {}
            ),
            auth=envelope.authIdentity,
        )

    @property
    def senderAddress(self) -> Address:
        return addressFromText(self.sender)

    @property
    def pending(self) -> list[RecipientState]:
        return [r for r in self.recipients if r.state == PENDING]

    @property
    def done(self) -> bool:
        """True when no recipient is pending: the entry can be removed."""
        return not any(r.state == PENDING for r in self.recipients)

    def envelopeFor(self, recipients: list[RecipientState]) -> Envelope:
        """An L{Envelope} for an attempt to C{recipients}."""
        received = self.received
        return Envelope(
            self.id,
            self.senderAddress,
            dict(self.mailParams),
            [r.toRecipient() for r in recipients],
            session=SessionSnapshot(
                peerHost=received.get("peer", ""),
                heloName=received.get("helo") or None,
                protocol=received.get("protocol", "SMTP"),
                listener=self.listener,
            ),
            authIdentity=self.auth,
        )

    def toJSON(self) -> dict[str, object]:
        return {
            "version": VERSION,
            "id": self.id,
            "sender": self.sender,
            "mailParams": self.mailParams,
            "recipients": [r.toJSON() for r in self.recipients],
            "arrival": self.arrival,
            "size": self.size,
            "attempts": self.attempts,
            "nextAttempt": self.nextAttempt,
            "lastAttempt": self.lastAttempt,
            "listener": self.listener,
            "received": self.received,
            "auth": self.auth,
            "delayWarned": self.delayWarned,
            "report": self.report,
            "held": self.held,
        }

    def toBytes(self) -> bytes:
        """The envelope file's contents: compact JSON, UTF-8, one line."""
        return json.dumps(self.toJSON(), ensure_ascii=False, separators=(",", ":")).encode()

    @classmethod
    def fromJSON(cls, data: Any) -> QueueEntry:
        """@raise EntryError: for anything that is not a valid entry."""
        try:
            if not isinstance(data, dict) or data.get("version") != VERSION:
                raise EntryError(f"not a version {VERSION} queue entry")
            recipients = [RecipientState.fromJSON(r) for r in data["recipients"]]
            sender = data["sender"]
            addressFromText(sender)
            entry = cls(
                id=_word(data["id"]),
                sender=sender,
                recipients=recipients,
                arrival=float(data["arrival"]),
                size=int(data.get("size", 0)),
                mailParams=_params(data.get("mailParams") or {}),
                attempts=int(data.get("attempts", 0)),
                nextAttempt=float(data.get("nextAttempt") or data["arrival"]),
                lastAttempt=_time(data.get("lastAttempt")),
                listener=str(data.get("listener", "smtp")),
                received={str(k): str(v) for k, v in (data.get("received") or {}).items()},
                auth=data.get("auth") if isinstance(data.get("auth"), str) else None,
                delayWarned=bool(data.get("delayWarned", False)),
                report=bool(data.get("report", False)),
                held=bool(data.get("held", False)),
            )
        except EntryError:
            raise
        except (KeyError, TypeError, ValueError, AddressError, AttributeError) as e:
            raise EntryError(f"bad queue entry: {type(e).__name__}: {e}") from None
        if not recipients:
            raise EntryError("a queue entry without recipients")
        return entry

    @classmethod
    def fromBytes(cls, data: bytes) -> QueueEntry:
        try:
            parsed = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise EntryError(f"not JSON: {e}") from None
        return cls.fromJSON(parsed)


def _params(data: object) -> dict[str, str | None]:
    if not isinstance(data, dict):
        raise EntryError("parameters must be an object")
    out: dict[str, str | None] = {}
    for key, value in data.items():
        if not isinstance(key, str) or not (value is None or isinstance(value, str)):
            raise EntryError("parameters are names and strings (or null)")
        out[key] = value
    return out


def _time(value: Any) -> float | None:
    return None if value is None else float(value)


def _word(value: object) -> str:
    text = str(value)
    if not text or not all(c.isalnum() or c in "-_." for c in text) or text[0] == ".":
        raise EntryError(f"bad queue id {text!r}")
    return text
