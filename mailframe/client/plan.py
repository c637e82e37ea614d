"""
What to send for one message to one server, decided from the envelope,
the message and the server's EHLO capabilities: L{makePlan}.

Owns: the per-message protocol choices of the client: which recipients
cannot be sent at all (SMTPUTF8 missing: 553 5.6.7; over the peer's SIZE:
552 5.3.4; BINARYMIME, or bare CR/LF, without CHUNKING: 554 5.6.3), the
MAIL and RCPT parameters (SIZE, BODY, SMTPUTF8, and the DSN parameters
only where DSN is offered), DATA or BDAT, and pipelining.  Must not: do
I/O or import twisted.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

from mailframe.address import Address
from mailframe.envelope import Envelope, Recipient
from mailframe.message import Message
from mailframe.reply import Reply

if TYPE_CHECKING:
    from mailframe.client.options import ClientOptions
    from mailframe.protocol.client import ClientConnection

__all__ = ["NEEDS_BDAT", "NO_SMTPUTF8", "TOO_BIG", "Plan", "makePlan", "regroup", "scanMessage"]

NO_SMTPUTF8 = Reply(
    553, (5, 6, 7), "The message needs SMTPUTF8 and the next server does not offer it"
)
TOO_BIG = Reply(552, (5, 3, 4), "The message is larger than the next server accepts")
NEEDS_BDAT = Reply(
    554,
    (5, 6, 3),
    "A binary message needs CHUNKING and BINARYMIME; the next server lacks them",
)
BARE_NEEDS_BDAT = Reply(
    554, (5, 6, 3), "The message has a bare CR or LF; it can go only by BDAT, not offered here"
)
_DSN_MAIL = ("RET", "ENVID")
_DSN_RCPT = ("NOTIFY", "ORCPT")
_NO_PARAMS: Mapping[str, str | None] = MappingProxyType({})


@dataclass
class Plan:
    """The decisions for one message on one connection."""

    mailFrom: Address
    mailParams: Mapping[str, str | None]
    send: list[int]  # indices of the recipients to send RCPT for, in order
    rcptParams: dict[int, Mapping[str, str | None]]
    refused: dict[int, Reply] = field(default_factory=dict)
    bdat: bool = False
    pipelining: bool = False
    dsn: bool = False


def scanMessage(chunks: Iterable[bytes]) -> tuple[bool, bool]:
    """(has 8-bit octets, has a bare CR or LF), in bulk per chunk."""
    eightBit = bare = False
    heldCR = False
    for chunk in chunks:
        if not chunk:
            continue
        if heldCR:
            chunk = b"\r" + chunk
        heldCR = chunk[-1:] == b"\r"
        if heldCR:
            chunk = chunk[:-1]
        if not eightBit and not chunk.isascii():
            eightBit = True
        if not bare:
            crlf = chunk.count(b"\r\n")
            bare = chunk.count(b"\n") != crlf or chunk.count(b"\r") != crlf
        if eightBit and bare:
            break
    return eightBit, bare or heldCR


def _sizeLimit(extensions: Mapping[str, str]) -> int:
    value = extensions.get("SIZE", "").split(" ")[0]
    return int(value) if value.isdigit() and value.isascii() else 0


def makePlan(
    envelope: Envelope,
    recipients: Sequence[Recipient],
    message: Message,
    conn: ClientConnection,
    options: ClientOptions,
) -> Plan:
    """
    Decide how to send C{message} to C{recipients} over C{conn} (a
    L{ClientConnection} after EHLO/HELO) with C{options} (L{ClientOptions}).
    """
    ext: Mapping[str, str] = conn.extensions
    n = len(recipients)
    refused: dict[int, Reply] = {}
    utf8 = "SMTPUTF8" in ext
    needsUTF8 = envelope.smtputf8 or envelope.mailFrom.isUTF8
    if needsUTF8 and not utf8:
        refused = dict.fromkeys(range(n), NO_SMTPUTF8)
    elif not utf8:
        refused = {i: NO_SMTPUTF8 for i, r in enumerate(recipients) if r.address.isUTF8}
    send = [i for i in range(n) if i not in refused]
    plan = Plan(envelope.mailFrom, _NO_PARAMS, send, {}, refused)
    if not send:
        return plan

    def refuseAll(reply: Reply) -> Plan:
        plan.refused.update(dict.fromkeys(send, reply))
        plan.send = []
        return plan

    size = message.size
    limit = _sizeLimit(ext)
    if "SIZE" in ext and limit and size > limit:
        return refuseAll(TOO_BIG)
    body = envelope.body
    binary = body == "BINARYMIME"
    chunking = "CHUNKING" in ext
    if binary:
        if not (chunking and "BINARYMIME" in ext):
            return refuseAll(NEEDS_BDAT)
        eightBit, bare = True, False
        plan.bdat = True
    else:
        eightBit, bare = scanMessage(message.chunks())
        if bare:
            if not chunking:
                return refuseAll(BARE_NEEDS_BDAT)
            plan.bdat = True
        else:
            plan.bdat = chunking and options.chunking
    params: dict[str, str | None] = {}
    if "SIZE" in ext:
        params["SIZE"] = str(size)
    if binary or (bare and "BINARYMIME" in ext):
        params["BODY"] = "BINARYMIME"
    elif (body == "8BITMIME" or eightBit) and "8BITMIME" in ext:
        params["BODY"] = "8BITMIME"  # without 8BITMIME the octets go as they are
    if utf8 and (needsUTF8 or any(recipients[i].address.isUTF8 for i in send)):
        params["SMTPUTF8"] = None
    if options.requireTLS:  # the session checked that the server offers it (RFC 8689 4.2.1)
        params["REQUIRETLS"] = None
    plan.dsn = "DSN" in ext
    if plan.dsn:
        for name in _DSN_MAIL:
            value = envelope.mailParams.get(name)
            if value:
                params[name] = value
    plan.mailParams = MappingProxyType(params)
    for i in send:
        rcpt: dict[str, str | None] = {}
        if plan.dsn:
            for name in _DSN_RCPT:
                value = recipients[i].params.get(name)
                if value:
                    rcpt[name] = value
        plan.rcptParams[i] = MappingProxyType(rcpt) if rcpt else _NO_PARAMS
    plan.pipelining = options.pipelining and "PIPELINING" in ext
    return plan


def regroup(chunks: Iterable[bytes], size: int) -> Iterator[tuple[bytes, bool]]:
    """
    C{chunks} as pieces of at most C{size} octets, each with whether it is
    the last (an empty message is one empty last piece).
    """
    pending = bytearray()
    for chunk in chunks:
        pending += chunk
        while len(pending) > size:
            piece = bytes(pending[:size])
            del pending[:size]
            yield piece, False
    yield bytes(pending), True
