"""
DMARC (RFC 7489): L{DMARCCheck}, an L{IMessageFilter}, finds the policy of
the RFC5322.From domain (C{_dmarc.DOMAIN}, else that of its organizational
domain, found with the Public Suffix List through C{publicsuffixlist}),
and judges the message by SPF and DKIM with identifier alignment:
C{pass} if SPF passed for an aligned MAIL FROM (or HELO, for the null
sender) domain, or a DKIM signature of an aligned domain verified;
C{fail} otherwise.  Alignment is relaxed (same organizational domain) or
strict (the same name), as the record's C{aspf} and C{adkim} say.

What a failure does: the policy (C{p}, or C{sp} for a subdomain whose
record is the organizational domain's), sampled by C{pct}.  C{reject} is
enforced with C{550 5.7.1} and C{quarantine} adds the header field
C{X-Mailframe-Quarantine}, unless told otherwise (C{reject=no} then
quarantines instead; C{quarantine=no} only records).  A DNS failure
(C{temperror}) accepts the message unless C{temperror=defer}
(C{451 4.7.1}).  A broken record (C{permerror}) is recorded, not enforced.
The outcome is a L{DMARCResult} in C{envelope.dmarc}.

The SPF and DKIM results are those the C{spf} and C{dkim-verify} checks
recorded; when they did not run, this check computes them itself, so
C{dmarc} alone is a complete check.

Owns: record discovery, parsing, alignment and disposition.  Must not:
block (DNS is asynchronous), or send reports (C{rua}/C{ruf} are ignored).
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from mailframe.envelope import Envelope, SessionInfo
from mailframe.interfaces import IMessageFilter
from mailframe.policy import isTrusted
from mailframe.policy._dns import AsyncDNS, DNSTemporaryError
from mailframe.policy.dkim import DKIMVerifier, Runner, fromDomain
from mailframe.reply import Reply, SMTPError
from mailframe.results import DKIMResult, DMARCResult, SPFResult

if TYPE_CHECKING:
    from twisted.python.failure import Failure

    from mailframe.config import ServerConfig
    from mailframe.message import Message

__all__ = [
    "QUARANTINE_HEADER",
    "DMARCCheck",
    "aligned",
    "organizationalDomain",
    "parseRecord",
]

log = Logger(namespace="mailframe.dmarc")

QUARANTINE_HEADER = "X-Mailframe-Quarantine"
_POLICIES = ("none", "quarantine", "reject")
_WEAKER = {"reject": "quarantine", "quarantine": "none", "none": "none"}


@functools.lru_cache(maxsize=1)
def _psl() -> Any:
    from publicsuffixlist import PublicSuffixList

    return PublicSuffixList()


def organizationalDomain(domain: str) -> str:
    """The organizational domain of C{domain} (RFC 7489 3.2): one label below its public suffix."""
    domain = domain.rstrip(".").lower()
    found = _psl().privatesuffix(domain)
    return str(found) if found else domain


def aligned(identifier: str, fromDomain: str, mode: str) -> bool:
    """Identifier alignment (RFC 7489 3.1): C{s} strict, C{r} relaxed."""
    a, b = identifier.rstrip(".").lower(), fromDomain.rstrip(".").lower()
    if a == b:
        return True
    return mode != "s" and organizationalDomain(a) == organizationalDomain(b)


def parseRecord(text: str) -> dict[str, str]:
    """
    The tags of a DMARC record, checked (RFC 7489 6.3, 6.6.3).

    @raise ValueError: for a record that is not valid (a permerror).
    """
    tags: dict[str, str] = {}
    parts = [p.strip() for p in text.split(";")]
    for part in parts:
        if not part:
            continue
        name, equals, value = part.partition("=")
        if not equals:
            raise ValueError(f"not a tag: {part[:40]!r}")
        tags.setdefault(name.strip().lower(), value.strip())
    if not parts or parts[0].replace(" ", "") != "v=DMARC1":
        raise ValueError("the record does not start with v=DMARC1")
    policy = tags.get("p", "").lower()
    if policy not in _POLICIES:
        if "rua" in tags:  # RFC 7489 6.6.3: as if p=none
            tags["p"] = "none"
        else:
            raise ValueError(f"bad or missing policy p={tags.get('p', '')!r}")
    else:
        tags["p"] = policy
    if "sp" in tags:
        tags["sp"] = tags["sp"].lower()
        if tags["sp"] not in _POLICIES:
            raise ValueError(f"bad subdomain policy sp={tags['sp']!r}")
    for name in ("adkim", "aspf"):
        tags[name] = tags.get(name, "r").lower()
        if tags[name] not in ("r", "s"):
            raise ValueError(f"bad alignment mode {name}={tags[name]!r}")
    pct = tags.get("pct", "100")
    if not pct.isdigit() or int(pct) > 100:
        raise ValueError(f"bad pct={pct!r}")
    tags["pct"] = str(int(pct))
    return tags


@implementer(IMessageFilter)
class DMARCCheck:
    """
    @param dns: an L{AsyncDNS}.
    @param config: the L{ServerConfig} (trusted sessions are not checked).
    @param runner: where DKIM verification runs, if this check does it.
    @param reject: enforce C{p=reject} with 550 5.7.1 (else quarantine).
    @param quarantine: mark C{p=quarantine} mail with a header field.
    @param deferTemporary: answer C{451 4.7.1} when DNS fails for now.
    @param sample: a random number in [0, 100) for C{pct} (tests fix it).
    """

    def __init__(
        self,
        dns: AsyncDNS,
        config: ServerConfig | None = None,
        runner: Runner | None = None,
        reject: bool = True,
        quarantine: bool = True,
        deferTemporary: bool = False,
        sample: Callable[[], float] | None = None,
    ) -> None:
        self.dns = dns
        self.config = config
        self.reject = reject
        self.quarantine = quarantine
        self.deferTemporary = deferTemporary
        self.sample = sample or (lambda: random.random() * 100)
        self.dkim = DKIMVerifier(dns, runner, config)
        _psl()  # read the Public Suffix List now, not during the first message

    # -- discovery ---------------------------------------------------------------

    def policy(self, domain: str) -> defer.Deferred[tuple[dict[str, str] | None, bool]]:
        """
        The record that applies to mail from C{domain}: C{(tags or None,
        found at the organizational domain)}.  Fails with
        L{DNSTemporaryError}, or ValueError for a broken record.
        """
        org = organizationalDomain(domain)

        def pick(records: list[bytes], atOrg: bool) -> Any:
            texts = [r.decode("utf-8", "replace") for r in records]
            texts = [t for t in texts if t.replace(" ", "").startswith("v=DMARC1")]
            if len(texts) == 1:
                return parseRecord(texts[0]), atOrg
            if len(texts) > 1:
                return None, atOrg  # RFC 7489 6.6.3: several records, no policy
            if not atOrg and org != domain:
                return self.dns.txt(f"_dmarc.{org}").addCallback(pick, True)
            return None, atOrg

        return self.dns.txt(f"_dmarc.{domain}").addCallback(pick, False)

    # -- evaluation ----------------------------------------------------------------

    def evaluate(
        self,
        fromDomain: str,
        spf: SPFResult | None,
        dkim: list[DKIMResult],
    ) -> defer.Deferred[DMARCResult]:
        """The DMARC result for a From: domain, given the SPF and DKIM results."""

        def judge(found: tuple[dict[str, str] | None, bool]) -> DMARCResult:
            tags, atOrg = found
            if tags is None:
                return DMARCResult("none", fromDomain, reason="no DMARC record")
            policy = tags["p"]
            if atOrg and "sp" in tags and organizationalDomain(fromDomain) != fromDomain:
                policy = tags["sp"]
            spfOK = (
                spf is not None
                and spf.result == "pass"
                and aligned(spf.domain, fromDomain, tags["aspf"])
            )
            dkimOK = any(
                r.result == "pass" and aligned(r.domain, fromDomain, tags["adkim"]) for r in dkim
            )
            if spfOK or dkimOK:
                how = "SPF" if spfOK else "DKIM"
                return DMARCResult("pass", fromDomain, policy, "none", f"aligned {how} pass")
            disposition = policy
            if disposition != "none" and self.sample() >= int(tags["pct"]):
                disposition = _WEAKER[disposition]
            return DMARCResult(
                "fail", fromDomain, policy, disposition, "no aligned SPF or DKIM pass"
            )

        def failed(reason: Failure) -> DMARCResult:
            if reason.check(DNSTemporaryError):
                return DMARCResult("temperror", fromDomain, reason=reason.getErrorMessage())
            reason.trap(ValueError)
            return DMARCResult("permerror", fromDomain, reason=reason.getErrorMessage()[:100])

        return self.policy(fromDomain).addCallback(judge).addErrback(failed)

    # -- the plug point ---------------------------------------------------------------

    def filterMessage(
        self, session: SessionInfo, envelope: Envelope, message: Message
    ) -> defer.Deferred[Reply | None] | None:
        """IMessageFilter: evaluate, record, and enforce the domain's policy."""
        if isTrusted(session, self.config):
            return None
        domain = fromDomain(message.headers())
        if domain is None:
            envelope.dmarc = DMARCResult("permerror", "", reason="not exactly one From: domain")
            return None
        d: defer.Deferred[Any] = self._spf(session, envelope)
        d.addCallback(
            lambda spf: self.dkim.results(envelope, message).addCallback(
                lambda dkim: self.evaluate(domain, spf, dkim)
            )
        )
        return d.addCallback(self._apply, session, envelope, message)

    def _spf(self, session: SessionInfo, envelope: Envelope) -> defer.Deferred[SPFResult]:
        if envelope.spf is not None:
            return defer.succeed(envelope.spf)
        from mailframe.policy.spf import SPFCheck

        return SPFCheck(self.dns, self.config).check(session, envelope)

    def _apply(
        self, result: DMARCResult, session: SessionInfo, envelope: Envelope, message: Message
    ) -> None:
        disposition = result.disposition
        if disposition == "reject" and not self.reject:
            disposition = "quarantine"
        if disposition == "quarantine" and not self.quarantine:
            disposition = "none"
        if result.result != "fail":
            disposition = "none"
        if disposition != result.disposition:
            result = DMARCResult(
                result.result, result.fromDomain, result.policy, disposition, result.reason
            )
        envelope.dmarc = result
        if result.result == "temperror" and self.deferTemporary:
            raise SMTPError(
                Reply(
                    451,
                    (4, 7, 1),
                    f"DMARC policy of {result.fromDomain} unknown for now; try again later",
                )
            )
        if disposition == "none":
            return None
        log.info(
            "{id} {peer} DMARC {result} for {domain}: {disposition}",
            id=session.sessionID,
            peer=session.peer,
            result=result.result,
            domain=result.fromDomain,
            disposition=disposition,
        )
        if disposition == "reject":
            raise SMTPError(
                Reply(
                    550,
                    (5, 7, 1),
                    f"Rejected by the DMARC policy of {result.fromDomain}: "
                    "no aligned SPF or DKIM pass",
                )
            )
        message.prependHeader(QUARANTINE_HEADER, f"DMARC policy of {result.fromDomain}")
        return None
