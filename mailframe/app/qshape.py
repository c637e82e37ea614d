"""
C{mailframe-queue summary}, like Postfix's qshape(1): the recipients still
to deliver, by destination domain (or by sender domain) and by the age of
their message, in buckets that double (5, 10, 20 ... minutes, then the
older ones).  Held messages are counted apart.  An empty queue says so.

Owns: L{shape} (from listed entries, as the control socket or the offline
spool gives them) and L{formatShape}.  Must not: read the spool or talk to
the server (L{mailframe.app.queuetool} does).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Shape", "formatShape", "shape"]


def _clean(text: str) -> str:
    """One printable word (a domain from the spool, whatever its octets)."""
    return "".join(c if c.isprintable() and not c.isspace() else "?" for c in text)


@dataclass
class Shape:
    """
    The queue's shape: recipients still to deliver by domain and age.
    C{limits} are the upper bounds of the age buckets in minutes (a last
    bucket holds the older ones); each row is the total, then one count per
    bucket.  C{held}: held messages, not counted.
    """

    limits: tuple[int, ...]
    rows: dict[str, list[int]] = field(default_factory=dict)
    total: list[int] = field(default_factory=list)
    messages: int = 0
    held: int = 0

    def toJSON(self) -> dict[str, object]:
        return {"buckets": list(self.limits), "total": self.total, "domains": self.rows,
                "messages": self.messages, "held": self.held}  # fmt: skip


def _domain(address: str) -> str:
    _, at, domain = address.rpartition("@")
    return domain.lower() if at else "(no domain)"


def shape(
    entries: Sequence[tuple[dict[str, Any], float]],
    senders: bool = False,
    minutes: int = 5,
    buckets: int = 10,
) -> Shape:
    """
    The L{Shape} of listed entries (with each one's C{now}): pending
    recipients by recipient domain (C{senders}: by the sender's, the null
    sender as C{MAILER-DAEMON}), in C{buckets} age buckets of C{minutes},
    twice that, four times ... and older.
    """
    limits = tuple(minutes << i for i in range(buckets - 1))
    result = Shape(limits, total=[0] * (buckets + 1))
    for entry, now in entries:
        if entry["held"]:
            result.held += 1
            continue
        pending = [r for r in entry["recipients"] if r["state"] == "pending"]
        if not pending:
            continue
        result.messages += 1
        age = max(0.0, now - entry["arrival"]) / 60
        column = 1 + next((i for i, limit in enumerate(limits) if age <= limit), len(limits))
        if senders:
            keys = [_domain(entry["sender"]) if entry["sender"] else "MAILER-DAEMON"] * len(
                pending
            )
        else:
            keys = [_domain(r["address"]) for r in pending]
        for key in keys:
            row = result.rows.setdefault(_clean(key), [0] * (buckets + 1))
            for counts in (row, result.total):
                counts[0] += 1
                counts[column] += 1
    result.rows = dict(sorted(result.rows.items(), key=lambda kv: (-kv[1][0], kv[0])))
    return result


def formatShape(result: Shape) -> str:
    """qshape's table: a TOTAL row, then a row per domain, most recipients first."""
    if not result.messages:
        held = f" ({result.held} held message(s) not counted)" if result.held else ""
        return f"The queue is empty{held}."
    heads = ["T", *map(str, result.limits), f"{result.limits[-1]}+" if result.limits else "all"]
    rows = [("TOTAL", result.total), *result.rows.items()]
    name = min(max(len(n) for n, _ in rows), 40)
    widths = [max(len(h), *(len(str(c[i])) for _, c in rows)) for i, h in enumerate(heads)]
    lines = [" " * name + "".join(f" {h:>{w}}" for h, w in zip(heads, widths, strict=True))]
    for domain, counts in rows:
        shown = domain if len(domain) <= name else "..." + domain[-(name - 3) :]
        lines.append(
            f"{shown:>{name}}" + "".join(f" {c:>{w}}" for c, w in zip(counts, widths, strict=True))
        )
    lines.append(
        f"{result.messages} message(s); ages in minutes, each column up to its head"
        + (f"; {result.held} held message(s) not counted" if result.held else "")
    )
    return "\n".join(lines)
