"""
The decision events: what mailframe tells its log observers, one
twisted.logger event per decision, with stable field names.

Every decision event carries the key C{mfEvent} (one of the names below)
and the fields listed with it.  The text log renders the event's format
(one greppable line); C{--log-format json} writes the fields as one JSON
object; the Prometheus metrics (C{--metrics}) count the same events.  So a
field named here is part of mailframe's public interface: add fields
freely, never rename or remove one.

Common fields, wherever they apply:

  - C{sessionID}: the session (process-unique, printed first in every line);
  - C{queueID}: the message, once it has one;
  - C{listener}: the listener's name (C{smtp}, C{submission}, C{lmtp} ...);
  - C{clientAddress}, C{clientName} (the verified reverse name or
    C{unknown}), C{helo} (the HELO/EHLO/LHLO name or C{None});
  - C{sender} (the reverse path, C{""} for the null one) and C{recipient};
  - C{reply}: the whole reply as sent, its lines joined by a space;
    C{code}: its code (an int);
  - C{decider}: the plug-in (its class or factory name) that decided, or
    C{mailframe} for the server's own rules.

Must not: import anything (the names are plain strings so that every
layer, the sans-IO core excepted, may name them).
"""

from __future__ import annotations

__all__ = [
    "ACCEPTED",
    "AUTH",
    "CONNECT",
    "DISCONNECT",
    "EVENTS",
    "KEY",
    "QUEUE_BOUNCED",
    "QUEUE_DEFERRED",
    "QUEUE_DELETED",
    "QUEUE_EXPIRED",
    "QUEUE_HELD",
    "QUEUE_QUEUED",
    "QUEUE_RELEASED",
    "QUEUE_SENT",
    "REFUSED",
    "TLS",
]

KEY = "mfEvent"
"""The key of a decision event's name in a twisted.logger event."""

CONNECT = "connect"
"""A session began: C{sessionID listener clientAddress clientName} (+ C{proxied}: bool)."""

TLS = "tls"
"""TLS established: C{sessionID clientAddress tlsVersion cipher}."""

AUTH = "auth"
"""
AUTH ended: C{sessionID clientAddress mechanism user success} (bool); on
failure also C{reply code}.  Never the password.
"""

REFUSED = "refused"
"""
A command refused (4xx or 5xx) at any stage: C{sessionID queueID stage}
(C{connect helo mail rcpt data bdat auth starttls unknown ...})
C{clientAddress clientName helo sender recipient reply code decider}.
"""

ACCEPTED = "accepted"
"""
A message accepted after its data: C{sessionID queueID clientAddress
clientName helo sender recipients} (a list) C{size} (octets) C{reply}.
"""

DISCONNECT = "disconnect"
"""
A session ended: C{sessionID clientAddress clientName duration} (seconds)
C{commands} (a dict: lower-case verb to the count sent) C{failed} (verb to
the count answered 4xx or 5xx) C{replies} (C{"verb:class"}, as C{"rcpt:5"},
to a count) C{bytesIn} (octets of message data received).
"""

QUEUE_QUEUED = "queue.queued"
"""Put in the queue: C{queueID sender recipients size}."""

QUEUE_DEFERRED = "queue.deferred"
"""
An attempt failed for now: C{queueID recipient relay} (the host tried, or
the backend) C{reply code nextAttempt} (a POSIX time) C{attempts kind}
(as in L{QUEUE_SENT}: the metrics count deliveries by it).
"""

QUEUE_SENT = "queue.sent"
"""
Delivered: C{queueID recipient relay tls} (the TLS version or C{None})
C{delay} (seconds since queued) C{delays} (a dict: C{queued} waiting
before the attempt, C{transfer} during it) C{dsn} (the status, as
C{2.0.0}) C{reply kind} (C{relay}, C{local}, ...).
"""

QUEUE_BOUNCED = "queue.bounced"
"""Failed for good: C{queueID recipient relay reply code dsn kind}."""

QUEUE_EXPIRED = "queue.expired"
"""
Given up after the queue's lifetime: C{queueID recipient reply kind} (as
in L{QUEUE_SENT}).
"""

QUEUE_HELD = "queue.held"
"""Held (by an operator or a filter's quarantine): C{queueID reason}."""

QUEUE_RELEASED = "queue.released"
"""Released from hold: C{queueID}."""

QUEUE_DELETED = "queue.deleted"
"""Deleted by an operator: C{queueID}."""

EVENTS: frozenset[str] = frozenset(
    {
        CONNECT,
        TLS,
        AUTH,
        REFUSED,
        ACCEPTED,
        DISCONNECT,
        QUEUE_QUEUED,
        QUEUE_DEFERRED,
        QUEUE_SENT,
        QUEUE_BOUNCED,
        QUEUE_EXPIRED,
        QUEUE_HELD,
        QUEUE_RELEASED,
        QUEUE_DELETED,
    }
)
"""Every decision event's name."""
