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
    "OUTBOUND_TLS",
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
"""
A session began: C{sessionID listener clientAddress clientName} (+
C{proxied}: bool, where a PROXY header named the client), and C{clientPort
localAddress localPort}.  Emitted once the greeting is decided (after the
connection filters, so a reverse name they found is in it), or as the
session ends if it ends before.
"""

TLS = "tls"
"""
TLS established: C{sessionID clientAddress tlsVersion cipher} (+
C{listener clientName bits}).
"""

AUTH = "auth"
"""
AUTH ended: C{sessionID clientAddress mechanism user success} (bool); on
failure also C{reply code} (+ C{why}, C{failures}: the count in this
session).  Never the password.  (+ C{listener clientName}.)  A failed AUTH
is also a C{refused} event at stage C{auth} (its reply).
"""

REFUSED = "refused"
"""
A command refused (4xx or 5xx) at any stage: C{sessionID queueID stage}
(C{connect helo mail rcpt data bdat auth starttls unknown ...})
C{clientAddress clientName helo sender recipient reply code decider}.
Also C{listener user}; after the data (stage C{data} or C{bdat}: the
message refused) C{recipients} (a list), C{to} (the same, comma-joined, as
the text line shows it) and C{size}.  LMTP: a recipient refused after the
data is its own event, at stage C{data}, with its C{recipient}.  Fields
that do not apply are None.  A 4xx/5xx reply of every kind is one: policy
refusals, syntax errors, sequence errors, the 421 of a timeout (stage
C{timeout}).
"""

ACCEPTED = "accepted"
"""
A message accepted after its data: C{sessionID queueID clientAddress
clientName helo sender recipients} (a list) C{size} (octets) C{reply}.
Also C{listener code user to} (the recipients as the text line shows
them) C{notes} (the text line's extras) C{discarded quarantined} (a
filter's reason, or None); LMTP: C{recipients} are the delivered ones and
C{results} lists every recipient's C{{recipient, code, reply}}.
"""

DISCONNECT = "disconnect"
"""
A session ended: C{sessionID clientAddress clientName duration} (seconds)
C{commands} (a dict: lower-case verb to the count sent) C{failed} (verb to
the count answered 4xx or 5xx) C{replies} (C{"verb:class"}, as C{"rcpt:5"},
to a count) C{bytesIn} (octets of message data received).  Also
C{listener messages} (accepted in the session) C{counts} (the text line's
C{ehlo=1 mail=1 rcpt=1/2 ... commands=5/6}: a verb's successes/attempts when
some failed).  The greeting's reply counts as C{connect:2}; a 3xx reply
(354, 334) is not a failure.
"""

QUEUE_QUEUED = "queue.queued"
"""
Put in the queue: C{queueID sender recipients size} (+ C{nrcpt listener
report}: true for a DSN the queue made).
"""

QUEUE_DEFERRED = "queue.deferred"
"""
An attempt failed for now: C{queueID recipient relay} (the host tried, or
the backend) C{reply code nextAttempt} (a POSIX time) C{attempts kind}
(as in L{QUEUE_SENT}: the metrics count deliveries by it) (+ C{wait}:
seconds until the next attempt).
"""

QUEUE_SENT = "queue.sent"
"""
Delivered: C{queueID recipient relay tls} (the TLS version of the relay's
session, or C{None}: in clear, or delivered locally) C{delay} (seconds since
queued) C{delays} (a dict: C{queued} waiting before the attempt,
C{transfer} during it) C{dsn} (the status, as C{2.0.0}) C{reply kind}
(C{relay}, C{local}, ...) (+ C{status}: C{delivered} or C{relayed}, C{code
attempts}).
"""

QUEUE_BOUNCED = "queue.bounced"
"""Failed for good: C{queueID recipient relay reply code dsn kind} (+ C{attempts sender})."""

QUEUE_EXPIRED = "queue.expired"
"""
Given up after the queue's lifetime: C{queueID recipient reply kind} (as
in L{QUEUE_SENT}) (+ C{relay code age attempts sender}).
"""

QUEUE_HELD = "queue.held"
"""Held (by an operator or a filter's quarantine): C{queueID reason}."""

QUEUE_RELEASED = "queue.released"
"""Released from hold: C{queueID}."""

QUEUE_DELETED = "queue.deleted"
"""Deleted by an operator: C{queueID}."""

OUTBOUND_TLS = "outbound.tls"
"""
A TLS policy decided how (or whether) the relay goes to a host, or a
session failed the TLS it required: C{queueID remote} (C{host
[address]}) C{domain} (the recipient domain) C{mechanism} (C{DANE},
C{MTA-STS}, C{REQUIRETLS}) C{decision} (C{required}: TLS mandatory, as
C{tls} says, C{none}/C{verify}/C{require}; C{skipped}: the host is not
tried; C{testing}: an MTA-STS policy in testing mode; C{failed}: the
session did not get TLS as required) (+ C{result}: the RFC 8460 result
type of a skip or failure, C{reply}).
"""

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
        OUTBOUND_TLS,
    }
)
"""Every decision event's name."""
