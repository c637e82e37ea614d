"""
greylist: a greylisting plug-in for mailframe, written the way a third
party would write one (it imports only mailframe's interfaces and replies).

Greylisting (RFC 6647) answers the first delivery attempt of an unknown
(client network, sender, recipient) triplet with a temporary error.  A
real mail server retries after a while and is let through; much spam
software never retries.  Here:

  - the triplet is the client's /24 (IPv4) or /64 (IPv6), the sender and
    the recipient, both lowercased;
  - a triplet seen for the first time, or retried before C{delay} seconds
    (5 minutes), is answered C{450 4.7.1};
  - a retry after C{delay} and before C{expiry} (4 hours) passes, and the
    triplet then passes without delay for C{lifetime} (35 days) after its
    last use;
  - authenticated sessions are never greylisted.

State lives in a small SQLite file, used through C{twisted.enterprise.adbapi}
so that the reactor never waits on the disk (one connection in the thread
pool, so SQLite sees one writer).  Times come from the clock given, so the
tests can move time.

It is an L{ISenderValidator} (to note, once per transaction, whether the
session is trusted) and an L{IRecipientValidator} (to judge each
recipient); it has no opinion on a recipient it lets through, so list it
before the validators that accept addresses.  Choose it with
C{twistd mailframe --filter greylist:/var/lib/mailframe/greylist.sqlite}
once the dropin below is installed.
"""

from __future__ import annotations

import ipaddress
import math
from typing import Any

from twisted.enterprise import adbapi
from twisted.internet import defer
from twisted.plugin import IPlugin
from zope.interface import implementer

from mailframe.interfaces import IPlugInFactory, IRecipientValidator, ISenderValidator
from mailframe.reply import Reply, SMTPError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS triplets (
    network TEXT NOT NULL, sender TEXT NOT NULL, recipient TEXT NOT NULL,
    first REAL NOT NULL, last REAL NOT NULL, passed INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (network, sender, recipient)
)
"""


def network(host: str) -> str:
    """The client's /24 or /64: retries often come from another host of a pool."""
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return host
    prefix = 24 if address.version == 4 else 64
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


@implementer(ISenderValidator, IRecipientValidator)
class Greylist:
    """
    @param clock: the reactor (or a Clock in tests), for the time.
    @param path: the SQLite file (created if missing).
    """

    def __init__(
        self,
        clock: Any,
        path: str,
        delay: float = 300.0,
        expiry: float = 4 * 3600.0,
        lifetime: float = 35 * 86400.0,
    ) -> None:
        self.clock = clock
        self.delay = delay
        self.expiry = expiry
        self.lifetime = lifetime
        self.pool = adbapi.ConnectionPool(
            "sqlite3", path, check_same_thread=False, cp_min=1, cp_max=1, cp_noisy=False
        )
        self.ready = self.pool.runOperation(_SCHEMA)
        self.checks = 0

    def close(self) -> None:
        """Close the database (the pool's thread)."""
        self.pool.close()

    # -- ISenderValidator ---------------------------------------------------------

    def validateSender(self, session: Any, envelope: Any) -> None:
        """No opinion on the sender: the triplet is judged at each recipient."""

    # -- IRecipientValidator ----------------------------------------------------------

    def validateRecipient(self, session: Any, envelope: Any, recipient: Any) -> Any:
        """None (no opinion: let the next validator decide) or 450 4.7.1."""
        if session.authenticated is not None:
            return None  # authenticated sessions are not greylisted
        triplet = (
            network(session.peerHost),
            str(envelope.mailFrom).lower(),
            str(recipient.address).lower(),
        )
        now = self.clock.seconds()
        self.checks += 1
        d = self.ready.addCallback(lambda _: None)
        if self.checks % 1000 == 0:
            d.addCallback(lambda _: self.cleanup())
        d.addCallback(lambda _: self.pool.runInteraction(self._judge, triplet, now))
        return d.addCallback(self._answer)

    def _judge(self, cursor: Any, triplet: tuple[str, str, str], now: float) -> float:
        """In the pool's thread: how many seconds the client must still wait (0: pass)."""
        cursor.execute(
            "SELECT first, passed FROM triplets WHERE network=? AND sender=? AND recipient=?",
            triplet,
        )
        row = cursor.fetchone()
        if row is not None and row[1]:
            cursor.execute(
                "UPDATE triplets SET last=? WHERE network=? AND sender=? AND recipient=?",
                (now, *triplet),
            )
            return 0.0
        if row is None or now - row[0] > self.expiry:  # new, or retried too late
            cursor.execute(
                "INSERT OR REPLACE INTO triplets VALUES (?, ?, ?, ?, ?, 0)", (*triplet, now, now)
            )
            return self.delay
        waited = now - row[0]
        if waited < self.delay:
            return self.delay - waited
        cursor.execute(
            "UPDATE triplets SET passed=1, last=? WHERE network=? AND sender=? AND recipient=?",
            (now, *triplet),
        )
        return 0.0

    def _answer(self, wait: float) -> None:
        if wait > 0:
            raise SMTPError(
                Reply(450, (4, 7, 1), f"Greylisted, please try again in {math.ceil(wait)} seconds")
            )
        return None

    def cleanup(self) -> defer.Deferred[Any]:
        """Forget triplets never retried in time, and passed ones unused for C{lifetime}."""
        now = self.clock.seconds()
        return self.pool.runOperation(
            "DELETE FROM triplets WHERE (passed=0 AND first<?) OR (passed=1 AND last<?)",
            (now - self.expiry, now - self.lifetime),
        )


@implementer(IPlugin, IPlugInFactory)
class GreylistFactory:
    """The C{greylist:PATH[:delay=S][:expiry=S][:lifetime=S]} description."""

    prefix = "greylist"
    provides = ISenderValidator
    synopsis = "greylist:PATH[:delay=SECONDS][:expiry=SECONDS][:lifetime=SECONDS]"
    description = (
        "Greylist unknown (client /24, sender, recipient) triplets with 450 4.7.1 for "
        "delay seconds (300); state in the SQLite file PATH."
    )

    def makeProvider(self, context: Any, *args: str, **kwargs: str) -> Greylist:
        """C{context.reactor} is the clock; raise ValueError for bad arguments."""
        unknown = set(kwargs) - {"delay", "expiry", "lifetime"}
        if len(args) != 1 or not args[0] or unknown:
            raise ValueError(f"usage: {self.synopsis}")
        try:
            times = [float(kwargs.get(k, d)) for k, d in
                     (("delay", 300), ("expiry", 14400), ("lifetime", 3024000))]  # fmt: skip
        except ValueError:
            raise ValueError("delay, expiry and lifetime are numbers of seconds") from None
        if not 0 < times[0] < times[1]:
            raise ValueError("delay must be positive and shorter than expiry")
        path = args[0]
        return Greylist(context.reactor, path, *times)


greylistFactory = GreylistFactory()
