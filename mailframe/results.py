"""
What the authentication checks find, for the checks after them (DMARC),
the Authentication-Results header and the queue: L{SPFResult},
L{DKIMResult}, L{DMARCResult} (typed fields of the envelope) and
L{IPRevResult} (a typed field of the session).

Owns: these values.  Must not: import twisted, anything of mailframe, or
the libraries that compute them.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "DKIMResult",
    "DMARCResult",
    "IPRevResult",
    "SPFResult",
]


@dataclass(frozen=True)
class SPFResult:
    """
    An SPF check (RFC 7208): C{result} is pass, fail, softfail, neutral,
    none, temperror or permerror; C{scope} C{mailfrom} or C{helo}; C{domain}
    the domain checked; C{identity} the address or name checked.
    """

    result: str
    scope: str
    domain: str
    identity: str
    explanation: str = ""


@dataclass(frozen=True)
class DKIMResult:
    """
    One DKIM signature checked (RFC 6376): C{result} is pass, fail, neutral,
    temperror or permerror; C{domain} and C{selector} the signature's d= and
    s=; C{headerB} the first characters of its b= (RFC 6008).
    """

    result: str
    domain: str
    selector: str
    headerB: str = ""
    algorithm: str = ""
    reason: str = ""


@dataclass(frozen=True)
class DMARCResult:
    """
    A DMARC evaluation (RFC 7489): C{result} is pass, fail, none, temperror
    or permerror; C{fromDomain} the RFC5322.From domain; C{policy} the
    policy found (none, quarantine, reject) and C{disposition} what was
    applied (none, quarantine, reject).
    """

    result: str
    fromDomain: str
    policy: str = "none"
    disposition: str = "none"
    reason: str = ""


@dataclass(frozen=True)
class IPRevResult:
    """Forward-confirmed reverse DNS of the client (RFC 8601 3.2 iprev): pass, fail, temperror."""

    result: str
    address: str
    names: tuple[str, ...] = ()
