"""
A capture server for test suites: an SMTP listener and the REST API of
capture mode (L{mailframe.web.api}) on free loopback ports, in this
process, so that a test can send mail (or let the application under test
send it) and wait for the message.

Two ways to run it:

  - In a trial test (the reactor runs): L{CaptureServer} with the running
    reactor, C{yield server.start()}, C{yield server.send(...)} (smtplib in
    a thread), C{yield server.waitForMessage("subject:hello", 10)}, and
    C{server.stop()} in a cleanup.
  - Anywhere else (pytest, unittest, a script): C{with captureServer() as
    server:}, which runs a private reactor in a thread; then
    C{server.send(...)} and C{server.waitForMessage(...)} block and return
    the message.

Owns: the test server's life.  Must not: touch the global reactor unless
given it, or listen anywhere but loopback.
"""

from __future__ import annotations

import contextlib
import smtplib
import threading
from collections.abc import Callable, Iterator, Sequence
from email.message import EmailMessage
from ipaddress import ip_network
from typing import Any

from twisted.internet import defer, threads
from twisted.internet.defer import TimeoutError as DeferredTimeout

from mailframe.config import ServerConfig
from mailframe.server import SMTPServerFactory
from mailframe.validators.basic import AnyRecipient
from mailframe.web.api import apiSite
from mailframe.web.capture import CapturedMessage, CaptureStore, Query

__all__ = ["HOST", "CaptureServer", "SyncCaptureServer", "captureServer", "sendMail"]

HOST = "127.0.0.1"


class CaptureServer:
    """
    SMTP on C{smtpPort} and the API on C{webPort} (both on 127.0.0.1, free
    ports chosen at L{start}), every message in C{store}.  Its methods
    returning Deferreds are for the reactor thread; L{captureServer} wraps
    them for other threads.
    """

    def __init__(self, reactor: Any, limit: int = 1000, mailbox: str = "auth") -> None:
        self.reactor = reactor
        self.store = CaptureStore(reactor, limit, mailbox)
        config = ServerConfig(
            hostname="localhost",
            relayNetworks=(ip_network("0.0.0.0/0"), ip_network("::/0")),
        )
        self.factory = SMTPServerFactory(config, self.store, [AnyRecipient()], clock=reactor)
        self._ports: list[Any] = []
        self.smtpPort = 0
        self.webPort = 0

    def start(self) -> defer.Deferred[CaptureServer]:
        """Listen (on free loopback ports); fires with this server."""
        smtp = self.reactor.listenTCP(0, self.factory, interface=HOST)
        web = self.reactor.listenTCP(0, apiSite(self.store, self.reactor), interface=HOST)
        self._ports = [smtp, web]
        self.smtpPort = smtp.getHost().port
        self.webPort = web.getHost().port
        return defer.succeed(self)

    def stop(self) -> defer.Deferred[None]:
        """Stop listening."""
        ports, self._ports = self._ports, []
        done = defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in ports])
        return done.addCallback(lambda _: None)

    @property
    def apiURL(self) -> str:
        """The base of the API (C{http://127.0.0.1:PORT/api/v1})."""
        return f"http://{HOST}:{self.webPort}/api/v1"

    def waitForMessage(
        self, query: str = "", timeout: float = 10.0, mailbox: str | None = None
    ) -> defer.Deferred[CapturedMessage]:
        """
        The newest message matching C{query} (see L{Query}), at once or when
        it arrives; fails with C{twisted.internet.defer.TimeoutError} after
        C{timeout} seconds.
        """
        d = self.store.wait(Query(query, mailbox))
        return d.addTimeout(timeout, self.reactor)

    def messages(self, query: str = "", mailbox: str | None = None) -> list[CapturedMessage]:
        """The messages matching C{query}, newest first."""
        return self.store.search(Query(query, mailbox))

    def send(
        self,
        sender: str,
        recipients: Sequence[str],
        message: bytes | str | EmailMessage,
        timeout: float = 30.0,
    ) -> defer.Deferred[None]:
        """Send C{message} with smtplib, in a thread; fires when the server has it."""
        port = self.smtpPort
        return threads.deferToThreadPool(
            self.reactor,
            self.reactor.getThreadPool(),
            sendMail,
            port,
            sender,
            recipients,
            message,
            timeout,
        )


def sendMail(
    port: int,
    sender: str,
    recipients: Sequence[str],
    message: bytes | str | EmailMessage,
    timeout: float = 30.0,
) -> None:
    """Send one message to 127.0.0.1:C{port} with smtplib (blocks)."""
    with smtplib.SMTP(HOST, port, timeout=timeout) as client:
        if isinstance(message, EmailMessage):
            client.send_message(message, sender, list(recipients))
        else:
            client.sendmail(sender, list(recipients), message)


def _blocking(reactor: Any, f: Callable[..., Any], *args: Any) -> Any:
    """C{f(*args)} called in C{reactor}'s thread; its result (or its Deferred's), here."""
    return threads.blockingCallFromThread(reactor, f, *args)


class SyncCaptureServer:
    """A L{CaptureServer} running in a private reactor's thread, used from others."""

    def __init__(self, server: CaptureServer) -> None:
        self.server = server
        self.store = server.store

    @property
    def smtpPort(self) -> int:
        return self.server.smtpPort

    @property
    def webPort(self) -> int:
        return self.server.webPort

    @property
    def apiURL(self) -> str:
        return self.server.apiURL

    def send(
        self,
        sender: str,
        recipients: Sequence[str],
        message: bytes | str | EmailMessage,
        timeout: float = 30.0,
    ) -> None:
        """Send C{message} with smtplib from this thread; returns when the server has it."""
        sendMail(self.server.smtpPort, sender, recipients, message, timeout)

    def waitForMessage(
        self, query: str = "", timeout: float = 10.0, mailbox: str | None = None
    ) -> CapturedMessage:
        """
        The newest message matching C{query}, at once or when it arrives.

        @raise TimeoutError: none came in C{timeout} seconds.
        """
        try:
            found: CapturedMessage = _blocking(
                self.server.reactor, self.server.waitForMessage, query, timeout, mailbox
            )
        except DeferredTimeout:
            raise TimeoutError(f"no message matching {query!r} in {timeout:g} s") from None
        return found

    def messages(self, query: str = "", mailbox: str | None = None) -> list[CapturedMessage]:
        """The messages matching C{query}, newest first."""
        found: list[CapturedMessage] = _blocking(
            self.server.reactor, lambda: defer.succeed(self.server.messages(query, mailbox))
        )
        return found

    def clear(self) -> int:
        """Forget every message; how many."""
        count: int = _blocking(self.server.reactor, lambda: defer.succeed(self.store.clear()))
        return count


@contextlib.contextmanager
def captureServer(limit: int = 1000, mailbox: str = "auth") -> Iterator[SyncCaptureServer]:
    """
    A capture server for synchronous tests (pytest, unittest): a private
    reactor runs in a thread until the block ends.  Not for code running in
    the reactor thread (trial tests use L{CaptureServer}).
    """
    from twisted.internet.selectreactor import SelectReactor

    reactor = SelectReactor()
    thread = threading.Thread(
        target=reactor.run,
        kwargs={"installSignalHandlers": False},
        name="mailframe.testing reactor",
        daemon=True,
    )
    server = CaptureServer(reactor, limit, mailbox)
    thread.start()
    try:
        _blocking(reactor, server.start)
        yield SyncCaptureServer(server)
    finally:
        try:
            _blocking(reactor, server.stop)
        finally:
            reactor.callFromThread(reactor.stop)
            thread.join(10)
