"""
Outbound TLS an attacker on the path cannot strip: for each destination the
router found, L{OutboundTLS.plan} decides how the relay talks to it
(L{HostPlan}): DANE (RFC 7672) where the MX and address records are
DNSSEC-validated and usable TLSA records exist, else the domain's MTA-STS
policy (RFC 8461), else the relay's own policy; and for a message with
REQUIRETLS (RFC 8689) only hosts it may go to, authenticated.

The order, per MX host (DANE first: RFC 8461 2, "MTA-STS must not override
a failing DANE validation"):

  1. DANE on, the host DNSSEC-secure: its TLSA lookup decides if it finds
     records (usable: TLS and a matching certificate; unusable: TLS, not
     checked; lookup failed: the host is not tried);
  2. an MTA-STS policy in C{enforce} mode: a host it does not name is not
     tried; one it names needs TLS with a certificate valid for its name;
     in C{testing} mode the relay goes on as without a policy and the
     results are reported;
  3. otherwise the relay's policy for MX delivery (opportunistic).

A message with REQUIRETLS goes only to a host with DANE, one an MTA-STS
policy names (either mode), or one whose MX records are DNSSEC-validated,
and then over TLS with a certificate verified (PKIX, or DANE), to a server
that offers REQUIRETLS; a configured route or smarthost must have the
C{verify} policy.  A message with C{TLS-Required: No} (and no REQUIRETLS)
ignores DANE and MTA-STS (RFC 8689 5): opportunistic TLS.

Every decision is logged on C{mailframe.tls} with the queue ID, the
mechanism and the host.

Owns: the choice of policy per host.  Must not: connect (the relay does),
retry later or bounce (the queue does).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from mailframe import events
from mailframe.client.dane import DANECheck, TLSALookup, lookupTLSA
from mailframe.client.mtasts import ENFORCE, TESTING, STSLookup
from mailframe.client.nexthop import Destination
from mailframe.client.options import TLS_OPPORTUNISTIC, TLS_REQUIRE, TLS_VERIFY
from mailframe.envelope import Envelope
from mailframe.message import Message
from mailframe.reply import Reply

if TYPE_CHECKING:
    from mailframe.client.mtasts import MTASTS

__all__ = [
    "DANE",
    "MTA_STS",
    "REQUIRETLS",
    "HostPlan",
    "OutboundTLS",
    "TLSRequirement",
    "requirementOf",
]

log = Logger(namespace="mailframe.tls")

DANE = "DANE"
MTA_STS = "MTA-STS"
REQUIRETLS = "REQUIRETLS"


@dataclass(frozen=True)
class TLSRequirement:
    """
    What the message asks: C{required} (REQUIRETLS on MAIL, RFC 8689 4) or
    C{optional} (a C{TLS-Required: No} header field without REQUIRETLS,
    RFC 8689 5).
    """

    required: bool = False
    optional: bool = False


def requirementOf(envelope: Envelope, message: Message | None) -> TLSRequirement:
    """The L{TLSRequirement} of a message: its REQUIRETLS, else its TLS-Required field."""
    if "REQUIRETLS" in envelope.mailParams:
        return TLSRequirement(required=True)
    if message is None:
        return TLSRequirement()
    try:
        fields = message.headerFields()
    except Exception:  # an unfinished message, or a spool file gone: no opinion
        return TLSRequirement()
    for field in fields:
        name, colon, value = field.partition(b":")
        if colon and name.strip().lower() == b"tls-required":
            return TLSRequirement(optional=value.strip().lower() == b"no")
    return TLSRequirement()


@dataclass(frozen=True)
class HostPlan:
    """
    How to deliver to one destination: C{destination} (its C{tls} policy as
    decided), C{dane} (the certificate check, with DANE), C{label} (the
    mechanism that makes TLS mandatory, named in failures), C{requireTLS}
    (pass REQUIRETLS on); C{skip}, a reply saying why the host is not
    tried at all, with C{skipResult} its RFC 8460 result type; C{policyType}
    (C{tlsa}, C{sts} or C{no-policy-found}) and C{policyDomain} for TLS
    reporting; C{testing}: an MTA-STS policy in testing mode applies
    (C{mxMatched} says whether it names the host); C{policyError}: the
    domain's MTA-STS policy could not be had (its RFC 8460 result type).
    """

    destination: Destination
    dane: DANECheck | None = None
    label: str = ""
    requireTLS: bool = False
    skip: Reply | None = None
    skipResult: str | None = None
    policyType: str = "no-policy-found"
    policyDomain: str | None = None
    policy: Any = None
    testing: bool = False
    mxMatched: bool = True
    policyError: str | None = None


def _logPlan(plan: HostPlan, queueID: str) -> None:
    """The decision event of a plan with a mechanism, a skip or a testing policy."""
    d = plan.destination
    if plan.skip is not None:
        decision, what = "skipped", " ".join(plan.skip.lines)
    elif plan.testing:
        decision = "testing"
        what = f"MTA-STS testing, the host {'named' if plan.mxMatched else 'not named'}"
    else:
        decision, what = "required", f"{plan.label}, TLS {d.tls}"
    mechanism = plan.label or ("MTA-STS" if plan.policyType == "sts" else "DANE")
    log.info("{queueID}: {remote}: {what}", mfEvent=events.OUTBOUND_TLS, queueID=queueID,
             remote=d.remote, domain=plan.policyDomain, mechanism=mechanism, decision=decision,
             tls=d.tls, result=plan.skipResult, what=what)  # fmt: skip


def _skip(d: Destination, text: str, result: str, **kw: Any) -> HostPlan:
    code, enhanced = (451, (4, 7, 10)) if kw.get("requireTLS") else (451, (4, 7, 5))
    return HostPlan(d, skip=Reply(code, enhanced, text), skipResult=result, **kw)


class OutboundTLS:
    """
    The policy engine of one relay.  C{resolver}: the process's resolver
    (its answers carrying the AD bit); C{dane}: look TLSA records up (only
    right when that resolver validates and the path to it is trusted: one
    on loopback); C{mtasts}: an L{MTASTS} (None: MTA-STS off); C{clock}
    for the lookups' time limits.  C{description}: a line for the start-up
    log.
    """

    def __init__(
        self,
        clock: IReactorTime,
        resolver: Any = None,
        *,
        dane: bool = False,
        mtasts: MTASTS | None = None,
        daneTimeout: float = 10.0,
    ) -> None:
        self.clock = clock
        self.resolver = resolver
        self.dane = dane and resolver is not None
        self.mtasts = mtasts
        self.daneTimeout = daneTimeout
        self.description = (
            f"outbound TLS: DANE {'on' if self.dane else 'off'}, "
            f"MTA-STS {'on' if mtasts is not None else 'off'}"
        )

    async def plan(
        self,
        destinations: Sequence[Destination],
        requirement: TLSRequirement = TLSRequirement(),
        queueID: str = "",
    ) -> list[HostPlan]:
        """One L{HostPlan} per destination, in order."""
        tlsa: dict[str, TLSALookup] = {}
        sts: dict[str, STSLookup] = {}
        plans = []
        for d in destinations:
            plan = await self._planOne(d, requirement, tlsa, sts)
            if plan.label or plan.skip or plan.testing:
                _logPlan(plan, queueID)
            plans.append(plan)
        return plans

    async def stsFor(self, domain: str, found: dict[str, STSLookup]) -> STSLookup:
        if self.mtasts is None:
            return STSLookup(None)
        if domain not in found:
            found[domain] = await self.mtasts.policyFor(domain)
        return found[domain]

    async def _planOne(
        self,
        d: Destination,
        requirement: TLSRequirement,
        tlsa: dict[str, TLSALookup],
        sts: dict[str, STSLookup],
    ) -> HostPlan:
        required = requirement.required
        domain = d.policyDomain
        if domain is None:  # a configured route, a smarthost, an address literal
            if not required:
                return HostPlan(d)
            if d.tls == TLS_VERIFY:
                return HostPlan(d, label=REQUIRETLS, requireTLS=True)
            return _skip(d, f"REQUIRETLS: the route to {d.hostname} does not verify certificates",
                         "validation-failure", requireTLS=True)  # fmt: skip
        if requirement.optional:  # TLS-Required: No (RFC 8689 5)
            return HostPlan(replace(d, tls=TLS_OPPORTUNISTIC), policyDomain=domain)
        host = d.hostname.rstrip(".").lower()
        if self.dane and d.dnssec:
            if host not in tlsa:
                tlsa[host] = await lookupTLSA(self.resolver, host, self.clock, 25,
                                              self.daneTimeout)  # fmt: skip
            found = tlsa[host]
            common: dict[str, Any] = {"policyType": "tlsa", "policyDomain": domain,
                                      "policy": found.records, "requireTLS": required}  # fmt: skip
            if found.state == "usable":
                check = DANECheck(found.usableRecords, (host, domain), self.clock)
                return HostPlan(replace(d, tls=TLS_REQUIRE, tlsHostname=host), check, DANE,
                                **common)  # fmt: skip
            if found.state == "unusable":
                tls = TLS_VERIFY if required else TLS_REQUIRE
                return HostPlan(replace(d, tls=tls, tlsHostname=host), None, DANE, **common)
            if found.state == "failed":
                return _skip(d, f"DANE: {found.reason}; not using {host}", "tlsa-invalid",
                             **common)  # fmt: skip
        stsFound = await self.stsFor(domain, sts)
        policy = stsFound.policy
        if policy is not None and policy.mode in (ENFORCE, TESTING):
            matched = policy.matches(host)
            stsCommon: dict[str, Any] = {"policyType": "sts", "policyDomain": domain,
                                         "policy": policy, "requireTLS": required}  # fmt: skip
            if policy.mode == ENFORCE or required:
                if not matched:
                    return _skip(
                        d, f"MTA-STS: {host} is not an MX host of the policy of {domain} "
                        f"({' '.join(policy.mx)})", "validation-failure", **stsCommon,
                    )  # fmt: skip
                label = REQUIRETLS if required and policy.mode == TESTING else MTA_STS
                return HostPlan(replace(d, tls=TLS_VERIFY, tlsHostname=host), None, label,
                                **stsCommon)  # fmt: skip
            return HostPlan(d, testing=True, mxMatched=matched, **stsCommon)
        if required:
            if d.dnssec:
                return HostPlan(replace(d, tls=TLS_VERIFY, tlsHostname=host), None, REQUIRETLS,
                                requireTLS=True, policyDomain=domain)  # fmt: skip
            return _skip(d, f"REQUIRETLS: the MX records of {domain} are neither DNSSEC-signed "
                         "nor named by an MTA-STS policy", "validation-failure", requireTLS=True,
                         policyDomain=domain)  # fmt: skip
        if stsFound.errorType is not None:
            return HostPlan(d, policyDomain=domain, policyType="sts",
                            policyError=stsFound.errorType)  # fmt: skip
        return HostPlan(d, policyDomain=domain, policyType="no-policy-found")
