"""
AUTH (RFC 4954) as an IExtension provider, on twisted.cred.

The extension runs one SASL exchange per AUTH command with the mechanisms
of L{mailframe.auth.sasl}: the base64 layer, the C{*} cancel, the replies, and
counting failures are here; the credentials are checked by a Portal's
checkers (L{mailframe.auth.credentials.Authenticator}), which may answer later
(a Deferred): no check blocks the reactor.  The exchange in progress lives
in the session's state for this extension (L{SessionInfo.stateFor}), so
one extension serves every session.

Replies (RFC 4954 4 and 6): 334 for each challenge; 235 2.7.0 on success;
501 5.5.4 for bad syntax; 501 5.5.2 for bad base64 or a malformed response;
501 5.0.0 for a cancel; 503 5.5.1 for AUTH twice or during a transaction;
504 5.5.4 for a mechanism not offered; 535 5.7.8 for bad credentials;
534 5.7.9 when the user's checker cannot check that mechanism for them
(L{MechanismUnavailable}: the client should try another mechanism, RFC
4954 6; it is not counted as a failure, nor delayed, since no secret was
compared); 538 5.7.11 outside TLS; 454 4.7.0 when a checker fails; 421
4.7.0 (and the connection closes) after C{maxFailures} failures in a
session or when the client is over its limit (L{AuthFailureLimiter}).
The mechanisms offered are asked of the Authenticator at each EHLO: those
every checker in force can serve for all its users.  A line over 12288
octets gets 500 5.5.6 from the core.  Every other error leaves the session
usable.

Owns: the AUTH verb and the MAIL AUTH= parameter.  Must not: import
mailframe.server; log a password or a response; block.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.cred import error
from twisted.cred.credentials import ICredentials
from twisted.cred.portal import Portal
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mailframe import events
from mailframe.address import asciiUpper
from mailframe.auth import sasl
from mailframe.auth.credentials import (
    Authenticator,
    CramMD5Credentials,
    MechanismUnavailable,
    PasswordCredentials,
    ScramPasswordCredentials,
    ScramStoredCredentials,
)
from mailframe.envelope import Envelope, SessionInfo
from mailframe.extensions._base import Extension
from mailframe.interfaces import ISessionControl, IUnadvertisedCommands
from mailframe.policy.authlimits import AuthFailureLimiter
from mailframe.protocol import decodeXtext
from mailframe.reply import Reply, SMTPError

__all__ = [
    "AUTH_ALREADY",
    "AUTH_CANCELLED",
    "AUTH_FAILED",
    "AUTH_IN_TRANSACTION",
    "AUTH_OK",
    "AUTH_SYNTAX",
    "AUTH_TEMPORARY",
    "AUTH_TOO_MANY",
    "BAD_BASE64",
    "ENCRYPTION_REQUIRED",
    "MECHANISM_UNAVAILABLE",
    "UNKNOWN_MECHANISM",
    "Auth",
]

log = Logger(namespace="mailframe.auth")

AUTH_OK = Reply(235, (2, 7, 0), "Authentication successful")
AUTH_SYNTAX = Reply(501, (5, 5, 4), "Syntax: AUTH mechanism [initial-response]")
BAD_BASE64 = Reply(501, (5, 5, 2), "Cannot decode the response (base64)")
MALFORMED = Reply(501, (5, 5, 2), "Malformed authentication response")
AUTH_CANCELLED = Reply(501, (5, 0, 0), "Authentication cancelled")
AUTH_ALREADY = Reply(503, (5, 5, 1), "Already authenticated")
AUTH_IN_TRANSACTION = Reply(503, (5, 5, 1), "AUTH is not allowed during a mail transaction")
UNKNOWN_MECHANISM = Reply(504, (5, 5, 4), "Unrecognized authentication type")
AUTH_FAILED = Reply(535, (5, 7, 8), "Authentication credentials invalid")
MECHANISM_UNAVAILABLE = Reply(
    534, (5, 7, 9), "Authentication mechanism not available for this user, try another"
)
ENCRYPTION_REQUIRED = Reply(
    538, (5, 7, 11), "Encryption required for requested authentication mechanism"
)
AUTH_TEMPORARY = Reply(454, (4, 7, 0), "Temporary authentication failure")
AUTH_TOO_MANY = Reply(
    421, (4, 7, 0), "Too many failed authentication attempts, closing connection"
)
BAD_AUTH_PARAMETER = Reply(501, (5, 5, 4), "AUTH= needs an xtext value")


@dataclass
class _SessionState:
    """What AUTH keeps for one session: the exchange in progress, failures so far."""

    exchange: _Exchange | None = None
    failures: int = 0


@dataclass
class _Exchange:
    """One AUTH command's exchange in progress."""

    name: str
    mechanism: Any
    username: str = ""
    scramStored: bool = False
    scramCredentials: ScramStoredCredentials | ScramPasswordCredentials | None = None
    verified: str | None = None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _decode(text: bytes) -> bytes:
    """Strict base64 (RFC 4648, padding required); raises ValueError."""
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error as e:
        raise ValueError(str(e))


def _printable(name: str) -> str:
    return repr(name[:64])


@implementer(IUnadvertisedCommands)
class Auth(Extension):
    """
    AUTH with the mechanisms the Portal's checkers can serve.

    @param authenticator: a L{Portal} (see L{mailframe.auth.credentials.makePortal})
        or an L{Authenticator}.

    @param clock: the reactor (or a Clock), for C{failureDelay}.

    @param allowPlaintext: offer AUTH outside TLS too (tests on localhost).

    @param limiter: counts failures per client across sessions, or None.

    @param maxFailures: failures in one session before 421 and close.

    @param failureDelay: seconds before a 535 is sent (slows guessing).

    @param mechanisms: restrict the mechanisms offered (default: all that
        every checker can serve).
    """

    keyword = "AUTH"
    verbs = frozenset({"AUTH"})
    mailParameters = frozenset({"AUTH"})
    commandLineIncrease = 500  # RFC 4954 3 (6): the AUTH= parameter of MAIL

    def __init__(
        self,
        authenticator: Authenticator | Portal,
        clock: IReactorTime,
        *,
        allowPlaintext: bool = False,
        limiter: AuthFailureLimiter | None = None,
        maxFailures: int = 3,
        failureDelay: float = 0.0,
        mechanisms: Sequence[str] | None = None,
        randomBytes: Callable[[int], bytes] = os.urandom,
        scramNonce: Callable[[], str] | None = None,
    ) -> None:
        if isinstance(authenticator, Portal):
            authenticator = Authenticator(authenticator, mechanisms, randomBytes)
        elif mechanisms is not None:
            raise ValueError("pass mechanisms to the Authenticator")
        if maxFailures < 1 or failureDelay < 0:
            raise ValueError("maxFailures must be >= 1 and failureDelay >= 0")
        self.authenticator = authenticator
        self.clock = clock
        self.allowPlaintext = allowPlaintext
        self.limiter = limiter
        self.maxFailures = maxFailures
        self.failureDelay = failureDelay
        self._random = randomBytes
        self._scramNonce = scramNonce

    @property
    def mechanisms(self) -> tuple[str, ...]:
        """The mechanisms offered now (they follow the checkers' users)."""
        return self.authenticator.mechanisms

    def _inTLS(self, session: SessionInfo) -> bool:
        return session.tls is not None or self.allowPlaintext

    def _state(self, session: SessionInfo) -> _SessionState:
        return session.stateFor(self, _SessionState)

    def ehloParameters(self, session: SessionInfo) -> str | None:
        return (" ".join(self.mechanisms) or None) if self._inTLS(session) else None

    # -- MAIL FROM:<...> AUTH=<mailbox> (RFC 4954 5) --------------------------------

    def mailParameter(
        self, session: SessionInfo, envelope: Envelope, name: str, value: str | None
    ) -> None:
        if not value:
            raise SMTPError(BAD_AUTH_PARAMETER)
        try:
            mailbox = decodeXtext(value)
        except (ValueError, UnicodeError):
            raise SMTPError(BAD_AUTH_PARAMETER)
        # only an authenticated (trusted) session may name the submitter
        envelope.authIdentity = mailbox if session.authenticated is not None else "<>"

    # -- the AUTH command -------------------------------------------------------------

    def refuseCommand(self, control: ISessionControl, verb: str, argument: str) -> Reply | None:
        """IUnadvertisedCommands: AUTH outside TLS is 538 5.7.11, not 500."""
        if not self._inTLS(control.session) and self.mechanisms:
            return ENCRYPTION_REQUIRED
        return None

    def handleCommand(
        self, control: ISessionControl, verb: str, argument: str
    ) -> Reply | defer.Deferred[Reply]:
        session = control.session
        self._state(session).exchange = None
        if session.authenticated is not None:
            return AUTH_ALREADY
        if control.inTransaction:
            return AUTH_IN_TRANSACTION
        mechanisms = self.mechanisms
        if not mechanisms or not self._inTLS(session):
            return ENCRYPTION_REQUIRED
        if self.limiter is not None and self.limiter.isBlocked(session.peerHost):
            return AUTH_TOO_MANY
        parts = argument.split(" ")
        if not parts[0] or len(parts) > 2:
            return AUTH_SYNTAX
        name = asciiUpper(parts[0])
        if name not in mechanisms:
            return UNKNOWN_MECHANISM
        initial: bytes | None = None
        if len(parts) == 2:
            if parts[1] == "*":
                return AUTH_CANCELLED
            if parts[1] == "=":
                initial = b""
            else:
                try:
                    initial = _decode(parts[1].encode("ascii"))
                except (ValueError, UnicodeEncodeError):
                    return BAD_BASE64
        exchange = _Exchange(name, self._mechanism(name, session))
        try:
            outcome = exchange.mechanism.start(initial)
        except sasl.SASLError as e:
            return self._saslError(control, exchange, e)
        return self._advance(control, exchange, outcome)

    def continueCommand(
        self, control: ISessionControl, verb: str, line: bytes
    ) -> Reply | defer.Deferred[Reply]:
        session = control.session
        state = self._state(session)
        exchange, state.exchange = state.exchange, None
        if exchange is None:
            return Reply(503, (5, 5, 1), "No authentication exchange in progress")
        if line == b"*":
            return AUTH_CANCELLED
        try:
            data = _decode(line)
        except ValueError:
            return BAD_BASE64
        try:
            outcome = exchange.mechanism.respond(data)
        except sasl.SASLError as e:
            return self._saslError(control, exchange, e)
        return self._advance(control, exchange, outcome)

    def _mechanism(
        self, name: str, session: SessionInfo
    ) -> sasl.Plain | sasl.Login | sasl.CramMD5 | sasl.ScramSha256:
        if name == "PLAIN":
            return sasl.Plain()
        if name == "LOGIN":
            return sasl.Login()
        if name == "CRAM-MD5":
            return sasl.CramMD5(session.hostname, self._random)
        return sasl.ScramSha256(self._scramNonce)

    def _advance(
        self, control: ISessionControl, exchange: _Exchange, outcome: sasl.Outcome
    ) -> Any:
        """The reply (or a Deferred of it) to one step of the mechanism."""
        if isinstance(outcome, sasl.Challenge):
            self._state(control.session).exchange = exchange
            return Reply(334, None, _b64(outcome.data))
        if isinstance(outcome, sasl.PasswordResponse):
            exchange.username = outcome.username
            creds = PasswordCredentials(outcome.username, outcome.password)
            return self._login(control, exchange, creds)
        if isinstance(outcome, sasl.CramMD5Response):
            exchange.username = outcome.username
            return self._login(control, exchange, CramMD5Credentials(outcome))
        if isinstance(outcome, sasl.ScramLookup):
            exchange.username = outcome.username
            d = defer.maybeDeferred(self.authenticator.scramParameters, outcome.username)
            d.addCallback(self._scramFirst, control, exchange)
            return d.addErrback(self._temporary, control, exchange)
        if isinstance(outcome, sasl.ScramResponse):
            cls = ScramStoredCredentials if exchange.scramStored else ScramPasswordCredentials
            exchange.scramCredentials = cls(outcome)
            return self._login(control, exchange, exchange.scramCredentials)
        if isinstance(outcome, sasl.Finished) and exchange.verified is not None:
            return self._succeed(control, exchange, exchange.verified)
        raise AssertionError(f"unexpected SASL outcome {outcome!r}")

    def _scramFirst(
        self, found: tuple[bytes, int, bool], control: ISessionControl, ex: _Exchange
    ) -> Any:
        salt, iterations, ex.scramStored = found
        return self._advance(control, ex, ex.mechanism.serverFirst(salt, iterations))

    def _login(
        self, control: ISessionControl, exchange: _Exchange, credentials: ICredentials
    ) -> defer.Deferred[Reply]:
        d = defer.maybeDeferred(self.authenticator.login, credentials)
        return d.addCallbacks(
            self._loggedIn,
            self._loginFailed,
            callbackArgs=(control, exchange),
            errbackArgs=(control, exchange),
        )

    def _loggedIn(self, name: str, control: ISessionControl, exchange: _Exchange) -> Any:
        if exchange.scramCredentials is not None:
            serverKey = exchange.scramCredentials.serverKey
            if serverKey is None:  # a checker accepted without looking at the proof
                log.error(
                    "{id} SCRAM checker accepted {user} without checking the proof",
                    id=control.session.sessionID,
                    user=_printable(exchange.username),
                )
                return AUTH_TEMPORARY
            exchange.verified = name
            return self._advance(control, exchange, exchange.mechanism.serverFinal(serverKey))
        return self._succeed(control, exchange, name)

    def _succeed(self, control: ISessionControl, exchange: _Exchange, name: str) -> Reply:
        self._state(control.session).exchange = None
        control.authenticate(name, exchange.name)
        return AUTH_OK

    def _loginFailed(
        self, reason: Failure, control: ISessionControl, exchange: _Exchange
    ) -> Reply | Failure | defer.Deferred[Reply]:
        if reason.check(MechanismUnavailable):
            return self._unavailable(control, exchange)
        if reason.check(error.UnauthorizedLogin, error.LoginFailed):
            return self._fail(control, exchange, "bad credentials")
        if reason.check(defer.CancelledError):
            return reason
        return self._temporary(reason, control, exchange)

    def _temporary(
        self, reason: Failure, control: ISessionControl, exchange: _Exchange
    ) -> Reply | Failure:
        if reason.check(defer.CancelledError):
            return reason
        log.failure("{id} AUTH {mechanism}: checking credentials failed", reason,
                    id=control.session.sessionID, mechanism=exchange.name)  # fmt: skip
        self._state(control.session).exchange = None
        return AUTH_TEMPORARY

    def _saslError(
        self, control: ISessionControl, exchange: _Exchange, e: sasl.SASLError
    ) -> Reply | defer.Deferred[Reply]:
        if isinstance(e, sasl.AuthorizationRefused):
            return self._fail(control, exchange, "authorization identity refused")
        log.info("{id} AUTH {mechanism} malformed response from {peer}: {why}",
                 id=control.session.sessionID, mechanism=exchange.name,
                 peer=control.session.peer, why=str(e))  # fmt: skip
        return MALFORMED

    def _unavailable(self, control: ISessionControl, exchange: _Exchange) -> Reply:
        """534 5.7.9 at once, not counted: the client could not have passed with this mechanism."""
        session = control.session
        self._state(session).exchange = None
        log.info(
            "{id} AUTH {mechanism} for {user} not possible from {peer}: the user's checker "
            "cannot check it (not counted as a failure)",
            id=session.sessionID,
            mechanism=exchange.name,
            user=_printable(exchange.username),
            peer=session.peer,
        )
        return MECHANISM_UNAVAILABLE

    def _fail(
        self, control: ISessionControl, exchange: _Exchange, why: str
    ) -> Reply | defer.Deferred[Reply]:
        session = control.session
        self._state(session).exchange = None
        state = self._state(session)
        state.failures += 1
        failures = state.failures
        blocked = self.limiter.recordFailure(session.peerHost) if self.limiter else False
        reply = AUTH_TOO_MANY if blocked or failures >= self.maxFailures else AUTH_FAILED
        iprev = session.iprev
        log.info(  # the decision event (mailframe.events.AUTH); never the password
            "{sessionID} auth failed user={user!r} mechanism={mechanism} "
            "client={clientName}[{clientAddress}]: {why}, {failures} in this session",
            mfEvent=events.AUTH,
            sessionID=session.sessionID,
            listener=session.listener,
            clientAddress=session.peerHost,
            clientName=iprev.names[0]
            if iprev is not None and iprev.result == "pass" and iprev.names
            else "unknown",
            mechanism=exchange.name,
            user=exchange.username,  # the text line shows it quoted (!r): no forged lines
            success=False,
            why=why,
            failures=failures,
            reply=str(reply).replace("\r\n", " "),
            code=reply.code,
        )
        if self.failureDelay > 0:
            return task.deferLater(self.clock, self.failureDelay, lambda: reply)
        return reply
