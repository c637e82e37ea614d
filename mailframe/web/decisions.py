"""
L{DecisionLog}: the console's view of the decision events
(L{mailframe.events}): a twisted.logger observer that keeps the last
C{size} of them in a ring, numbered, for C{/api/v1/decisions} (filters,
newest first, and a long poll for newer ones), and counts them for the
statistics (L{mailframe.web.stats.Stats}).

The observer looks at every event of the global publisher; one that is
not a decision costs one dict lookup.  It also gets the decisions of
listeners whose lines are off (C{--quiet}), as the metrics do.

Owns: the ring and its waiters.  Must not: import mailframe.app; format an
event before someone asks for its text.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.logger import ILogObserver, LogPublisher, formatEvent, globalLogPublisher
from zope.interface import implementer

from mailframe import _eventlog
from mailframe.events import KEY

__all__ = ["DEFAULT_SIZE", "Decision", "DecisionFilter", "DecisionLog"]

DEFAULT_SIZE = 1000


def _text(value: object) -> str | None:
    return None if value is None else str(value)


@dataclass
class Decision:
    """One decision event as the console shows it; its C{text} is rendered on first use."""

    seq: int
    event: dict[str, Any] = field(repr=False)
    _text: str | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return str(self.event.get(KEY))

    @property
    def recipient(self) -> str | None:
        event = self.event
        one = event.get("recipient")
        if one is not None:
            return str(one)
        many = event.get("recipients")
        if isinstance(many, (list, tuple)):
            return ", ".join(str(r) for r in many)
        return None

    @property
    def text(self) -> str:
        if self._text is None:
            try:
                self._text = formatEvent(self.event)
            except Exception:  # formatEvent does not raise, but be sure
                self._text = str(self.event.get("log_format", ""))
        return self._text

    def toJSON(self) -> dict[str, Any]:
        event = self.event
        code = event.get("code")
        return {
            "seq": self.seq,
            "time": event.get("log_time"),
            "event": self.name,
            "sessionID": _text(event.get("sessionID")),
            "queueID": _text(event.get("queueID")),
            "listener": _text(event.get("listener")),
            "clientAddress": _text(event.get("clientAddress")),
            "clientName": _text(event.get("clientName")),
            "sender": _text(event.get("sender")),
            "recipient": self.recipient,
            "code": code if isinstance(code, int) else None,
            "reply": _text(event.get("reply")),
            "decider": _text(event.get("decider")),
            "stage": _text(event.get("stage")),
            "text": self.text,
        }


@dataclass(frozen=True)
class DecisionFilter:
    """
    C{q}: in the line (ignoring case); C{code}: a prefix of the reply code;
    C{client}: in the client's address or name; C{address}: in the sender
    or a recipient.  Empty matches everything.
    """

    q: str = ""
    code: str = ""
    client: str = ""
    address: str = ""

    def matches(self, decision: Decision) -> bool:
        event = decision.event
        if self.code:
            code = event.get("code")
            if code is None or not str(code).startswith(self.code):
                return False
        if self.client:
            wanted = self.client.lower()
            names = (event.get("clientAddress"), event.get("clientName"))
            if not any(n is not None and wanted in str(n).lower() for n in names):
                return False
        if self.address:
            wanted = self.address.lower()
            found = (event.get("sender"), decision.recipient)
            if not any(a is not None and wanted in str(a).lower() for a in found):
                return False
        return not self.q or self.q.lower() in decision.text.lower()


Counter = Callable[[str, dict[str, Any]], None]


@implementer(ILogObserver)
class DecisionLog:
    """
    The last C{size} decision events, numbered from 1 (C{seq}); C{counter}
    (if given) is told of each one, C{(name, event)}.
    """

    def __init__(self, size: int = DEFAULT_SIZE, counter: Counter | None = None) -> None:
        if size < 1:
            raise ValueError("web-decisions must be at least 1")
        self.size = size
        self.counter = counter
        self.last = 0
        self._ring: deque[Decision] = deque(maxlen=size)
        self._waiters: list[tuple[DecisionFilter, defer.Deferred[None]]] = []
        self._publisher: LogPublisher | None = None

    # -- the observer -----------------------------------------------------------------

    def __call__(self, event: dict[str, Any]) -> None:
        name = event.get(KEY)
        if name is None:
            return
        self.last += 1
        decision = Decision(self.last, event)
        self._ring.append(decision)
        if self.counter is not None:
            with contextlib.suppress(Exception):  # never let the console break the log
                self.counter(name, event)
        if self._waiters:
            waiting, self._waiters = self._waiters, []
            for wanted, d in waiting:
                if wanted.matches(decision):
                    d.callback(None)
                else:
                    self._waiters.append((wanted, d))

    def start(self, publisher: LogPublisher | None = None) -> None:
        """Observe C{publisher} (the global one by default), and the counted-only events."""
        if self._publisher is None:
            self._publisher = publisher if publisher is not None else globalLogPublisher
            self._publisher.addObserver(self)
            _eventlog.counting.append(self)

    def stop(self) -> None:
        """Stop observing; pending waits fire (their answers say nothing new)."""
        if self._publisher is not None:
            self._publisher.removeObserver(self)
            self._publisher = None
            if self in _eventlog.counting:
                _eventlog.counting.remove(self)
        waiting, self._waiters = self._waiters, []
        for _, d in waiting:
            d.callback(None)

    # -- questions --------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._ring)

    def newestFirst(self) -> Iterator[Decision]:
        return reversed(self._ring)

    def search(
        self, wanted: DecisionFilter = DecisionFilter(), limit: int = 100, after: int = 0
    ) -> list[Decision]:
        """At most C{limit} decisions matching C{wanted} and newer than C{after}, newest first."""
        found: list[Decision] = []
        for decision in self.newestFirst():
            if decision.seq <= after or len(found) >= limit:
                break
            if wanted.matches(decision):
                found.append(decision)
        return found

    def wait(self, wanted: DecisionFilter = DecisionFilter()) -> defer.Deferred[None]:
        """Fires when the next decision matching C{wanted} arrives; cancel it to stop waiting."""
        entry: list[tuple[DecisionFilter, defer.Deferred[None]]] = []

        def cancel(d: defer.Deferred[None]) -> None:
            if entry and entry[0] in self._waiters:
                self._waiters.remove(entry[0])

        d: defer.Deferred[None] = defer.Deferred(cancel)
        entry.append((wanted, d))
        self._waiters.append(entry[0])
        return d

    @property
    def waiting(self) -> int:
        return len(self._waiters)
