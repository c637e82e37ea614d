"""
L{SMTPRelay}, the L{IRelay} provider: hands a message on to the next
server.  It asks the L{Router} where the recipients' domain goes, then
tries each destination in turn (MX hosts by preference, each of their
addresses): a connection failure, a refused greeting or EHLO/HELO, a
timeout, TLS that the policy requires and the server lacks, or a 421
before MAIL moves on to the next one; once a server has answered MAIL, its
replies are the result (a 5xx to RCPT fails that recipient only).  When no
destination takes the message: if every one tried refused the session for
good (a 5xx greeting, or a 5xx to HELO after EHLO), the last one's own 5xx
fails it; otherwise the result is a 4xx (try later): the last failure's
own reply, or ours quoting the server's 5xx.  With the
opportunistic policy, a failed TLS handshake is retried on the same host
without TLS (RFC 7435).  Idle sessions may be kept for the next message to
the same address (C{keepAlive} seconds).

Owns: trying destinations, the per-destination client settings, and the
cache of idle sessions.  Must not: queue, retry later or bounce (the queue
does), or parse replies (the client does).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet import error as netError
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.ssl import Certificate
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mailframe import events
from mailframe.client import (
    TLS_NONE,
    TLS_OPPORTUNISTIC,
    ClientOptions,
    Credentials,
    SessionFailed,
    SMTPClientFactory,
    SMTPClientProtocol,
    Timeouts,
    clientTLS,
    connectionFailed,
    temporary,
)
from mailframe.client.routing import Destination, Router, RoutingError
from mailframe.client.tlspolicy import HostPlan, OutboundTLS, requirementOf
from mailframe.envelope import DeliveryResult, Envelope, Recipient
from mailframe.interfaces import IRelay
from mailframe.message import Message
from mailframe.reply import Reply

if TYPE_CHECKING:
    from twisted.internet._sslverify import IOpenSSLTrustRoot  # not exported, for typing only

_PoolKey = tuple[str, int, str, str | None, Credentials | None, str, bool]
"""
Idle sessions are kept by address, port, TLS policy, TLS name, credentials,
the mechanism that made TLS mandatory, and REQUIRETLS.
"""

__all__ = ["SMTPRelay", "withEnhanced"]

log = Logger(namespace="mailframe.relay")

_NO_DESTINATION = Reply(451, (4, 4, 1), "No destination could be reached")
_INTERNAL = Reply(451, (4, 3, 0), "Local error while relaying; will try again")
_CONNECT_BUG = Reply(451, (4, 3, 0), "Local error connecting to the next server; will try again")

_CONNECTION_TROUBLE = (
    netError.ConnectError,  # refused, timed out, no route ...
    netError.ConnectingCancelledError,
    netError.ConnectionClosed,
    defer.CancelledError,
    defer.TimeoutError,
    OSError,  # the network, and DNSLookupError of a host name endpoint
)
"""What a connection attempt fails with when the network or the peer is at fault."""


def withEnhanced(reply: Reply) -> Reply:
    """C{reply} with a generic enhanced status code (x.0.0) if the server gave none."""
    if reply.enhanced is not None or reply.code // 100 not in (2, 4, 5):
        return reply
    return Reply(reply.code, (reply.code // 100, 0, 0), reply.text)


def _timeouts(data: Mapping[str, Any]) -> Timeouts:
    names = {"greeting", "mail", "rcpt", "datainit", "datablock", "dataend", "command",
             "handshake"}  # fmt: skip
    fields = {n.lower(): n for n in Timeouts.__dataclass_fields__}
    values = {}
    for key, value in data.items():
        k = key.lower().replace("-", "").replace("_", "")
        if k not in names:
            raise ValueError(f"unknown timeout {key!r}")
        values[fields[k]] = float(value)
    return Timeouts(**values)


@implementer(IRelay)
class SMTPRelay:
    """
    Relays with C{router}.  C{reactor} connects and times (a clock in
    tests); C{heloName} is our name in EHLO; C{timeouts} the RFC 5321
    timeouts of each session; C{connectTimeout} the seconds to wait for a
    TCP connection; C{maxAttempts} the most destinations (addresses) tried
    per message; C{trustRoot} the CAs for the C{verify} policy (None: the
    platform's); C{keepAlive} the seconds an idle session waits for another
    message to the same address (0: QUIT after each message; by default 2,
    as long as Postfix's connection cache keeps one: a queue relaying many
    messages to one host pays one connection, greeting and EHLO for them);
    C{maxMessages} the messages per connection before it is closed;
    C{endpointFor}, C{(destination) -> IStreamClientEndpoint}, by default
    TCP to its address and port.  C{tlsPolicy}: the L{OutboundTLS} that
    applies DANE, MTA-STS and REQUIRETLS (by default one with DANE and
    MTA-STS off, which still keeps REQUIRETLS mail off unverified TLS);
    C{reporter}, if given, is told each result for TLS reports
    (L{mailframe.client.tlsrpt.TLSReporter.record}).
    """

    def __init__(
        self,
        router: Router,
        reactor: Any,
        heloName: str,
        *,
        timeouts: Timeouts | None = None,
        connectTimeout: float = 30.0,
        maxAttempts: int = 10,
        trustRoot: IOpenSSLTrustRoot | Certificate | None = None,
        keepAlive: float = 2.0,
        maxMessages: int = 100,
        pipelining: bool = True,
        chunking: bool = True,
        transcript: bool = False,
        endpointFor: Callable[[Destination], Any] | None = None,
        tlsPolicy: OutboundTLS | None = None,
        reporter: Any = None,
    ) -> None:
        self.router = router
        self.tlsPolicy = tlsPolicy or OutboundTLS(reactor)
        self.reporter = reporter
        self.reactor = reactor
        self.heloName = heloName
        self.timeouts = timeouts or Timeouts()
        self.connectTimeout = connectTimeout
        self.maxAttempts = maxAttempts
        self.trustRoot = trustRoot
        self.keepAlive = keepAlive
        self.maxMessages = maxMessages
        self.pipelining = pipelining
        self.chunking = chunking
        self.transcript = transcript
        self.endpointFor: Callable[[Destination], Any] = endpointFor or self._tcpEndpoint
        self._idle: dict[_PoolKey, list[SMTPClientProtocol]] = {}

    @classmethod
    def fromConfig(
        cls,
        config: Mapping[str, Any],
        reactor: Any,
        heloName: str,
        resolver: Any = None,
        **kwargs: Any,
    ) -> SMTPRelay:
        """
        A relay and its router from plain data: the routing keys of
        L{Router.fromConfig} plus C{connect-timeout}, C{max-attempts},
        C{keep-alive}, C{max-messages}, C{ca-file} (PEM CAs for
        C{verify}), C{pipelining}, C{chunking}, C{transcript} and
        C{timeouts} (a table: greeting, mail, rcpt, data-init, data-block,
        data-end, command, handshake; seconds), and the outbound TLS keys of
        L{mailframe.client.tlsconfig} (C{dane}, C{mta-sts}, C{mta-sts-skip},
        C{tls-state}, C{tlsrpt-org}, C{tlsrpt-sender}).

        @raise ValueError: one line saying what is wrong.
        """
        from mailframe.client.tlsconfig import KEYS, outboundFromConfig

        mine = {"connecttimeout", "maxattempts", "keepalive", "maxmessages", "cafile",
                "pipelining", "chunking", "transcript", "timeouts", *KEYS}  # fmt: skip
        own: dict[str, Any] = {}
        routing: dict[str, Any] = {}
        for key, value in config.items():
            k = key.lower().replace("-", "").replace("_", "")
            (own if k in mine else routing)[k] = value
        router = Router.fromConfig(routing, resolver=resolver, random=kwargs.pop("random", None))
        trustRoot = kwargs.pop("trustRoot", None)
        if own.get("cafile"):
            try:
                with open(own["cafile"], "rb") as f:
                    trustRoot = Certificate.loadPEM(f.read())
            except (OSError, ValueError) as e:
                raise ValueError(f"ca-file {own['cafile']}: {e}") from None
        tlsPolicy, reporter = outboundFromConfig(own, reactor, resolver, trustRoot)
        kwargs.setdefault("tlsPolicy", tlsPolicy)
        kwargs.setdefault("reporter", reporter)
        relay = cls(
            router,
            reactor,
            heloName,
            timeouts=_timeouts(own.get("timeouts") or {}),
            connectTimeout=float(own.get("connecttimeout", 30.0)),
            maxAttempts=int(own.get("maxattempts", 10)),
            trustRoot=trustRoot,
            keepAlive=float(own.get("keepalive", 2.0)),
            maxMessages=int(own.get("maxmessages", 100)),
            pipelining=bool(own.get("pipelining", True)),
            chunking=bool(own.get("chunking", True)),
            transcript=bool(own.get("transcript", False)),
            **kwargs,
        )
        if relay.reporter is not None and getattr(relay.reporter, "sendMail", 0) is None:
            relay.reporter.sendMail = relay.reportMail
        return relay

    def reportMail(self, sender: str, recipient: str, data: bytes) -> defer.Deferred[bool]:
        """Send one TLS report by mail through this relay: fires True if it was taken."""
        from mailframe.address import parseMailbox

        envelope = Envelope("tlsrpt", parseMailbox(sender), {},
                            [Recipient(parseMailbox(recipient))])  # fmt: skip
        message = Message()
        message.write(data)
        message.finish()
        d = self.relay(envelope, envelope.recipients, message)

        def taken(result: DeliveryResult) -> bool:
            message.close()
            return all(200 <= r.code < 300 for r in result.replies)

        return d.addCallback(taken)

    # -- IRelay ---------------------------------------------------------------

    def relay(
        self, envelope: Envelope, recipients: Sequence[Recipient], message: Message
    ) -> defer.Deferred[DeliveryResult]:
        """Send to C{recipients} (one destination); one reply each; never fails."""
        rcpts = tuple(recipients)
        d = defer.ensureDeferred(self._relay(envelope, rcpts, message))

        def failed(reason: Failure) -> DeliveryResult:
            log.failure("relaying {id} failed", reason, id=envelope.queueID)
            return DeliveryResult(tuple(_INTERNAL for _ in rcpts), tuple(None for _ in rcpts))

        return d.addErrback(failed)

    def closeIdle(self) -> None:
        """QUIT every idle session (at shutdown); the TLS reporter keeps its counts."""
        if self.reporter is not None and hasattr(self.reporter, "stop"):
            self.reporter.stop()
        idle, self._idle = self._idle, {}
        for sessions in idle.values():
            for session in sessions:
                session.quit()

    # -- attempts ---------------------------------------------------------------

    async def _relay(
        self, envelope: Envelope, rcpts: tuple[Recipient, ...], message: Message
    ) -> DeliveryResult:
        if not rcpts:
            return DeliveryResult(())
        domain = rcpts[0].address.domain
        try:
            if domain is None:
                raise RoutingError(Reply(550, (5, 1, 3), "A recipient without a domain"))
            destinations = await self.router.destinations(domain)
        except RoutingError as e:
            return self._all(rcpts, e.reply, None)
        engine = self.tlsPolicy
        checks = engine.dane or engine.mtasts is not None
        requirement = requirementOf(envelope, message if checks else None)
        plans = await engine.plan(destinations[: self.maxAttempts], requirement, envelope.queueID)
        last: SessionFailed | None = None
        lastRemote: str | None = None
        allRefused = True  # every destination tried refused the session for good
        allTLS = True  # every destination failed for want of TLS as required
        for plan in plans:
            destination = plan.destination
            if plan.skip is not None:
                last = SessionFailed(plan.skip, tlsResult=plan.skipResult)
                lastRemote = destination.remote
                allRefused = False
                self._report(plan, plan.skipResult)
                continue
            policies = [destination.tls]
            if destination.tls == TLS_OPPORTUNISTIC and not destination.implicitTLS:
                policies.append(TLS_NONE)  # RFC 7435: a failed handshake, then in clear
            for policy in policies:
                seen: dict[str, Any] = {}
                try:
                    result = await self._attempt(destination, policy, envelope, rcpts, message,
                                                 plan, seen)  # fmt: skip
                except SessionFailed as e:
                    last, lastRemote = e, destination.remote
                    log.info("{id}: {remote}: {reply}", id=envelope.queueID,
                             remote=destination.remote, reply=str(e.reply))  # fmt: skip
                    if e.tlsFailed and policy == TLS_OPPORTUNISTIC:
                        continue
                    if e.tlsResult is not None:
                        self._report(plan, e.tlsResult, seen.get("local"))
                        log.info("{queueID}: {remote}: TLS as required failed: {result}",
                                 mfEvent=events.OUTBOUND_TLS, queueID=envelope.queueID,
                                 remote=destination.remote, domain=plan.policyDomain,
                                 mechanism=plan.label or "TLS policy", decision="failed",
                                 tls=policy, result=e.tlsResult, reply=str(e.reply))  # fmt: skip
                    break
                self._reportSession(plan, seen.get("tls"), seen.get("local"), seen.get("verdict"))
                replies = tuple(withEnhanced(r) for r in result.replies)
                tls = seen.get("tls")
                version = getattr(tls, "version", None) if tls is not None else None
                return replace(result, replies=replies, tls=version)  # remote and dsn kept
            # the host's last attempt decides (a failed handshake, then a refusal in clear)
            allRefused = allRefused and last is not None and last.permanent
            allTLS = allTLS and last is not None and last.tlsResult is not None
            if last is not None and not last.tryNext:
                break
        if last is None:
            return self._all(rcpts, _NO_DESTINATION, None)
        if requirement.required and allTLS and last.tlsResult is not None:
            # RFC 8689 4.2.1: no host could take it as REQUIRETLS demands
            text = " ".join(last.reply.lines).removeprefix("REQUIRETLS: ")
            reply = Reply(550, (5, 7, 10), f"REQUIRETLS: {text}"[:400])
            return self._all(rcpts, reply, lastRemote)
        # every host was tried (RFC 5321 5.1): if each refused for good, so does the message
        reply = last.reply if allRefused else temporary(last.reply)
        return self._all(rcpts, reply, lastRemote)

    def _report(self, plan: HostPlan, result: str | None, local: str | None = None) -> None:
        """
        Tell the TLS reporter one session's outcome (C{result} None: success);
        C{local}: our address in that session.
        """
        if self.reporter is None or plan.policyDomain is None:
            return
        try:
            if local:
                self.reporter.record(plan, result, sendingIP=local)
            else:
                self.reporter.record(plan, result)
        except Exception:
            log.failure("recording a TLS report result")

    def _reportSession(
        self, plan: HostPlan, tls: object, local: str | None = None, verdict: str | None = None
    ) -> None:
        """A delivered message: success, unless an MTA-STS policy in testing mode would fail."""
        result = plan.policyError
        if plan.testing and not plan.mxMatched:
            result = "validation-failure"
        elif plan.testing and tls is None:
            result = "starttls-not-supported"
        elif plan.testing and verdict is not None:
            result = verdict  # the certificate would not have passed
        self._report(plan, result, local)

    def _all(self, rcpts: Sequence[Recipient], reply: Reply, remote: str | None) -> DeliveryResult:
        reply = withEnhanced(reply)
        return DeliveryResult(tuple(reply for _ in rcpts), tuple(remote for _ in rcpts))

    def _options(
        self, destination: Destination, policy: str, plan: HostPlan | None = None
    ) -> ClientOptions:
        return ClientOptions(
            heloName=self.heloName,
            tls=policy,
            tlsHostname=destination.tlsHostname or destination.hostname.strip("[]"),
            trustRoot=self.trustRoot,
            credentials=destination.credentials,
            authPlaintext=destination.authPlaintext,
            timeouts=self.timeouts,
            pipelining=self.pipelining,
            chunking=self.chunking,
            keepAlive=self.keepAlive,
            transcript=self.transcript,
            implicitTLS=destination.implicitTLS,
            dane=plan.dane if plan is not None else None,
            tlsProbe=_probe(destination, plan, self.trustRoot),
            tlsLabel=plan.label if plan is not None else "",
            requireTLS=plan.requireTLS if plan is not None else False,
        )

    def _poolKey(
        self, destination: Destination, policy: str, plan: HostPlan | None = None
    ) -> _PoolKey:
        label = plan.label if plan is not None else ""
        requireTLS = plan.requireTLS if plan is not None else False
        return (destination.address, destination.port, policy, destination.tlsHostname,
                destination.credentials, label, requireTLS)  # fmt: skip

    async def _attempt(
        self,
        destination: Destination,
        policy: str,
        envelope: Envelope,
        rcpts: tuple[Recipient, ...],
        message: Message,
        plan: HostPlan | None = None,
        seen: dict[str, Any] | None = None,
    ) -> DeliveryResult:
        seen = {} if seen is None else seen
        key = self._poolKey(destination, policy, plan)
        pool = self._idle.get(key, [])
        while pool:
            session = pool.pop()
            if session.idle:
                seen["tls"] = session.tls
                seen["verdict"] = session.tlsVerdict
                seen["local"] = _localAddress(session)
                return await session.deliver(envelope, rcpts, message)
        options = self._options(destination, policy, plan)
        factory = SMTPClientFactory(options, self.reactor, destination.remote)
        try:
            endpoint = self.endpointFor(replace(destination, tls=policy))
            session = await endpoint.connect(factory)
        except _CONNECTION_TROUBLE as e:
            raise SessionFailed(connectionFailed(e)) from None
        except Exception:
            # a bug of ours (or a bad setting): the same for every host, so none is tried
            log.failure("connecting to {remote}", remote=destination.remote)
            raise SessionFailed(_CONNECT_BUG, tryNext=False) from None
        if self.keepAlive:
            session.onIdle = lambda s: self._keep(key, s)
            session.onEnd = lambda s: self._forget(key, s)
        seen["local"] = _localAddress(session)
        result = await session.deliver(envelope, rcpts, message)
        seen["tls"] = session.tls
        seen["verdict"] = session.tlsVerdict
        return result

    def _keep(self, key: _PoolKey, session: SMTPClientProtocol) -> None:
        if session.messagesSent >= self.maxMessages:
            session.quit()
            return
        pool = self._idle.setdefault(key, [])
        if session not in pool:
            pool.append(session)

    def _forget(self, key: _PoolKey, session: SMTPClientProtocol) -> None:
        pool = self._idle.get(key)
        if pool and session in pool:
            pool.remove(session)
            if not pool:
                del self._idle[key]

    def _tcpEndpoint(self, destination: Destination) -> IStreamClientEndpoint:
        """TCP to the destination's address; wrapped in TLS for implicit TLS."""
        kind = TCP6ClientEndpoint if ":" in destination.address else TCP4ClientEndpoint
        endpoint = kind(
            self.reactor, destination.address, destination.port, timeout=self.connectTimeout
        )
        if not destination.implicitTLS:
            return endpoint
        hostname = destination.tlsHostname or destination.hostname.strip("[]")
        return wrapClientTLS(clientTLS(destination.tls, hostname, self.trustRoot), endpoint)


def _probe(destination: Destination, plan: HostPlan | None, trustRoot: Any) -> Any:
    """The certificate check whose verdict MTA-STS testing mode reports, or None."""
    if plan is None or not plan.testing or not plan.mxMatched:
        return None
    from mailframe.client.pkix import PKIXProbe

    return PKIXProbe(destination.hostname, trustRoot)


def _localAddress(session: SMTPClientProtocol) -> str | None:
    """Our address in C{session} (for TLS reports), if the transport tells."""
    try:
        return str(session.transport.getHost().host)
    except Exception:
        return None
