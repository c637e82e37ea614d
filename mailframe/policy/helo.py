"""
L{HeloCheck}: optional checks of the name a client gives in HELO/EHLO, an
L{IHeloValidator}.  Off unless configured (C{--filter helo}).

  - C{fqdn}: a name must be a fully qualified domain name (two labels or
    more, valid syntax, not a bare IP address); otherwise C{504 5.5.2}
    (Postfix's reject_non_fqdn_helo_hostname).
  - C{literal}: an address literal (C{[192.0.2.1]}, C{[IPv6:2001:db8::1]})
    must be the client's own address; otherwise C{550 5.7.1}.
  - C{fcrdns}: forward-confirmed reverse DNS of the client (a PTR name of
    its address resolves back to it, RFC 8601 3.2 "iprev").  C{record}
    only records the result (for Authentication-Results); C{require}
    also refuses a client without one: C{550 5.7.25}, or C{451 4.7.25}
    when DNS fails for now (RFC 7372).

The client may try HELO again after a refusal.  Trusted clients
(authenticated, or in the relay networks) are not checked.

Owns: these checks.  Must not: block (DNS is asynchronous), or refuse
anything while its options are off.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from mailframe.address import Domain
from mailframe.envelope import SessionInfo
from mailframe.interfaces import IHeloValidator
from mailframe.policy import isTrusted
from mailframe.policy._dns import AsyncDNS, DNSTemporaryError
from mailframe.reply import Reply, SMTPError
from mailframe.results import IPRevResult

if TYPE_CHECKING:
    from twisted.python.failure import Failure

    from mailframe.config import ServerConfig

__all__ = ["FCRDNS_CHOICES", "HeloCheck", "forwardConfirmed"]

log = Logger(namespace="mailframe.helo")

FCRDNS_CHOICES = ("no", "record", "require")
_MAX_NAMES = 10  # PTR names followed (as SPF's ptr mechanism limits them)


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    address = ipaddress.ip_address(text.partition("%")[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def forwardConfirmed(dns: AsyncDNS, host: str) -> defer.Deferred[IPRevResult]:
    """
    The iprev result of the client at C{host}: C{pass} with the names that
    resolve back to it, C{fail} (no PTR, or none resolves back),
    C{temperror} (DNS failed for now), C{permerror} (not an IP address).
    """
    try:
        address = _address(host)
    except ValueError:
        return defer.succeed(IPRevResult("permerror", host))
    qtype = "A" if address.version == 4 else "AAAA"

    def forward(names: list[str]) -> Any:
        names = names[:_MAX_NAMES]
        if not names:
            return IPRevResult("fail", str(address))
        lookups = [dns.addresses(n, qtype) for n in names]
        return defer.gatherResults(lookups, consumeErrors=True).addCallback(
            lambda results: confirm(names, results)
        )

    def confirm(names: list[str], results: list[list[str]]) -> IPRevResult:
        good = tuple(
            n for n, found in zip(names, results, strict=True)
            if any(_same(a, address) for a in found)
        )  # fmt: skip
        return IPRevResult("pass" if good else "fail", str(address), good or tuple(names))

    def failed(reason: Failure) -> IPRevResult:
        if isinstance(reason.value, defer.FirstError):
            reason = reason.value.subFailure
        reason.trap(DNSTemporaryError)
        return IPRevResult("temperror", str(address))

    return dns.pointers(str(address)).addCallback(forward).addErrback(failed)


def _same(text: str, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    try:
        return _address(text) == address
    except ValueError:
        return False


@implementer(IHeloValidator)
class HeloCheck:
    """
    @param dns: an L{AsyncDNS}, needed only for C{fcrdns}.
    @param fqdn: refuse names that are not fully qualified.
    @param literal: refuse address literals that are not the client's.
    @param fcrdns: C{no}, C{record} or C{require}.
    @param config: the L{ServerConfig}, for its relay networks (optional).
    """

    def __init__(
        self,
        dns: AsyncDNS | None = None,
        fqdn: bool = True,
        literal: bool = True,
        fcrdns: str = "no",
        config: ServerConfig | None = None,
    ) -> None:
        if fcrdns not in FCRDNS_CHOICES:
            raise ValueError(f"fcrdns must be one of {', '.join(FCRDNS_CHOICES)}")
        if fcrdns != "no" and dns is None:
            raise ValueError("fcrdns needs a resolver")
        self.dns = dns
        self.fqdn = fqdn
        self.literal = literal
        self.fcrdns = fcrdns
        self.config = config

    def validateHelo(
        self, session: SessionInfo, name: str, extended: bool
    ) -> Reply | defer.Deferred[Reply | None] | None:
        """None to accept, a Deferred for the reverse DNS check, or raise SMTPError."""
        if isTrusted(session, self.config):
            return None
        if name.startswith("["):
            if self.literal:
                self._checkLiteral(session, name)
        elif self.fqdn:
            self._checkName(name)
        if self.fcrdns == "no":
            return None
        known = session.iprev
        if known is not None:
            return self._judge(known, session)
        assert self.dns is not None
        d = forwardConfirmed(self.dns, session.peerHost)
        return d.addCallback(self._judge, session)

    def _checkName(self, name: str) -> None:
        refused = SMTPError(
            504, (5, 5, 2), f"<{name[:100]}>: HELO name must be a fully qualified domain name"
        )
        try:
            ipaddress.ip_address(name)
        except ValueError:
            pass
        else:
            raise SMTPError(
                504, (5, 5, 2), f"<{name[:100]}>: an IP address in HELO goes in brackets"
            )
        try:
            Domain.parse(name)
        except ValueError:
            raise refused from None
        labels = name.rstrip(".").split(".")
        if len(labels) < 2 or labels[-1].isdigit():
            raise refused

    def _checkLiteral(self, session: SessionInfo, name: str) -> None:
        inner = name[1:-1] if name.endswith("]") else ""
        if inner[:5].lower() == "ipv6:":
            inner = inner[5:]
        try:
            claimed = _address(inner)
            actual = _address(session.peerHost)
        except ValueError:
            raise SMTPError(550, (5, 7, 1), f"{name[:60]}: not an address literal") from None
        if claimed != actual:
            raise SMTPError(
                550, (5, 7, 1), f"HELO {name[:60]} is not your address [{session.peerHost}]"
            )

    def _judge(self, result: IPRevResult, session: SessionInfo) -> Reply | None:
        session.iprev = result
        if self.fcrdns != "require" or result.result in ("pass", "permerror"):
            return None
        log.info(
            "{id} {peer} reverse DNS check: {result}",
            id=session.sessionID,
            peer=session.peer,
            result=result.result,
        )
        if result.result == "temperror":
            raise SMTPError(
                Reply(451, (4, 7, 25), "Reverse DNS validation failed for now; try again later")
            )
        raise SMTPError(
            Reply(
                550,
                (5, 7, 25),
                f"Reverse DNS validation failed: no name of [{session.peerHost}] "
                "resolves back to it",
            )
        )
