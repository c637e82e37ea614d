"""
L{RoutedDelivery}: per-domain delivery backends in front of a listener's
own (C{deliver-routes}: mail for C{lists.example.com} to a C{pipe:}
program, the rest to the Maildir).

Each recipient goes to the backend of its domain (the exact domain, else
the nearest C{.parent} entry, as C{routes} matches), or to the default
backend; each backend is given an envelope with its own recipients, all at
once, and their answers are put back in the order of the recipients (a
backend that fails answers its own recipients with its L{SMTPError}'s
reply, or 451, and the others keep theirs).  An
envelope whose recipients all go to one backend goes to it as it is.  The
message is the same for all (each holds it while it reads, as every backend
does).  With the queue, this is the local backend the runner delivers with,
so each recipient is retried or reported on its own.

Owns: choosing a backend by domain.  Must not: import mailframe.server;
deliver anything itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mailframe._deferreds import settled
from mailframe.address import Domain
from mailframe.envelope import DeliveryResult, Envelope, Recipient
from mailframe.interfaces import IDeliveryBackend
from mailframe.message import Message
from mailframe.reply import Reply, SMTPError

__all__ = ["RoutedDelivery"]

log = Logger(namespace="mailframe.backends")

_DELIVERED = Reply(250, (2, 0, 0), "Delivered")
_LOCAL_ERROR = Reply(451, (4, 3, 0), "Local error in delivery; try again later")


@implementer(IDeliveryBackend)
class RoutedDelivery:
    """
    Delivers with C{routes[domain]} (a domain, or C{.domain} for its
    subdomains), else with C{default}.
    """

    def __init__(self, default: IDeliveryBackend, routes: Mapping[str, IDeliveryBackend]) -> None:
        self.default = default
        self.routes: dict[str, IDeliveryBackend] = {}
        for name, backend in routes.items():
            key = name.strip().lower()
            prefix = "." if key.startswith(".") else ""
            self.routes[prefix + Domain(key.lstrip(".")).key] = backend

    def backendFor(self, domain: Domain | None) -> IDeliveryBackend:
        """The backend of a recipient's domain."""
        if domain is None or not self.routes:
            return self.default
        key = domain.key
        found = self.routes.get(key)
        if found is not None:
            return found
        labels = key.split(".")
        for i in range(1, len(labels)):
            found = self.routes.get("." + ".".join(labels[i:]))
            if found is not None:
                return found
        return self.default

    def deliver(self, envelope: Envelope, message: Message) -> Any:
        groups: dict[int, tuple[IDeliveryBackend, list[int]]] = {}
        for i, r in enumerate(envelope.recipients):
            backend = self.backendFor(r.address.domain)
            groups.setdefault(id(backend), (backend, []))[1].append(i)
        if len(groups) == 1:
            [(backend, _)] = groups.values()
            return backend.deliver(envelope, message)
        count = len(envelope.recipients)
        parts: list[tuple[list[int], Any]] = []
        for backend, indices in groups.values():
            recipients: list[Recipient] = [envelope.recipients[i] for i in indices]
            try:
                answer = settled(
                    backend.deliver(replace(envelope, recipients=recipients), message)
                )
            except Exception:
                answer = _failed(Failure(), len(indices), backend)
            if isinstance(answer, defer.Deferred):
                answer.addErrback(_failed, len(indices), backend)
            parts.append((indices, answer))
        if not any(isinstance(a, defer.Deferred) for _, a in parts):
            return _merge([a for _, a in parts], [i for i, _ in parts], count)
        waiting = [a if isinstance(a, defer.Deferred) else defer.succeed(a) for _, a in parts]
        d = defer.gatherResults(waiting, consumeErrors=True)
        return d.addCallback(_merge, [i for i, _ in parts], count)

    def __repr__(self) -> str:
        return f"RoutedDelivery({self.default!r}, {sorted(self.routes)!r})"


def _failed(reason: Failure, count: int, backend: IDeliveryBackend) -> DeliveryResult:
    """A backend that failed: its recipients get its SMTPError's reply, else 451 (logged)."""
    error = reason.value
    if isinstance(error, SMTPError):
        return DeliveryResult((error.reply,) * count)
    log.failure("the delivery backend {backend!r} failed", reason, backend=backend)
    return DeliveryResult((_LOCAL_ERROR,) * count)


def _merge(
    answers: list[DeliveryResult | None], groups: list[list[int]], count: int
) -> DeliveryResult | None:
    """One result for the whole envelope, from each backend's for its recipients."""
    if all(a is None for a in answers):
        return None
    replies: list[Reply] = [_DELIVERED] * count
    remote: list[str | None] = [None] * count
    dsn = [False] * count
    queueID = None
    for answer, indices in zip(answers, groups, strict=True):
        if answer is None:
            continue
        n = len(indices)
        if len(answer.replies) != n:
            raise ValueError(f"a backend answered {len(answer.replies)} replies for {n}")
        queueID = queueID or answer.queueID
        theirs = tuple(answer.remote) + (None,) * n
        flags = tuple(answer.dsn) + (False,) * n
        for j, i in enumerate(indices):
            replies[i], remote[i], dsn[i] = answer.replies[j], theirs[j], flags[j]
    return DeliveryResult(tuple(replies), tuple(remote), tuple(dsn), queueID=queueID)
