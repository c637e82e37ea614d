"""
The plug-in factories of the security checks, chosen with C{--filter} (or
C{filter = [...]} in the config file): C{limits}, C{dnsbl}, C{helo},
C{spf}, C{dkim-verify}, C{dkim-sign}, C{dmarc}, C{authresults}.
L{mailframe.plugins} lists them among its built-ins.

Owns: the description syntax of each check and checking it.  Must not:
import a check's module, pyspf, dkimpy or the reactor at import time
(twistd imports the plug-in machinery while scanning for service makers);
providers are built inside C{build}.
"""

from __future__ import annotations

import ipaddress
import os
from typing import Any

from mailframe.interfaces import (
    IConnectionFilter,
    IHeloValidator,
    IMessageFilter,
    ISenderValidator,
)
from mailframe.plugins import PlugInFactory

__all__ = ["POLICY_FACTORIES"]


def _number(kwargs: dict[str, str], key: str, default: int) -> int:
    value = kwargs.get(key)
    if value is None:
        return default
    if not value.strip().isdigit():
        raise ValueError(f"{key} must be a whole number, not {value!r}")
    return int(value)


def _timeout(kwargs: dict[str, str], default: float = 10.0) -> float:
    value = kwargs.get("timeout")
    if value is None:
        return default
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds <= 300:
        raise ValueError(f"timeout must be a number of seconds (0 to 300), not {value!r}")
    return seconds


def _items(args: tuple[str, ...]) -> list[str]:
    return [n.strip() for arg in args for n in arg.split(",") if n.strip()]


def _dns(context: Any, timeout: float) -> Any:
    from mailframe.policy._dns import AsyncDNS, defaultResolver

    return AsyncDNS(defaultResolver(context.reactor), context.reactor, timeout)


class _Limits(PlugInFactory):
    prefix = "limits"
    provides = IConnectionFilter
    synopsis = "limits[:total=N][:client=N][:rate=N][:messages=N][:recipients=N][:exempt=NET,...]"
    description = (
        "Concurrent connections in all (total, 1000) and per client (client, 50); new "
        "connections (rate), messages (messages) and recipients (recipients) per client "
        "per minute (0: no limit, the default); over a limit, 421 4.7.0.  Clients in "
        "exempt networks (default: the relay networks) are limited only by total."
    )

    def checkArguments(self, *args: str, **kwargs: str) -> dict[str, Any]:
        self._noArguments(args)
        self._options(kwargs, ["total", "client", "rate", "messages", "recipients", "exempt"])
        exempt: list[Any] = []
        for net in (kwargs.get("exempt") or "").split(","):
            if net.strip():
                try:
                    exempt.append(ipaddress.ip_network(net.strip(), strict=False))
                except ValueError:
                    raise ValueError(f"exempt: not a network: {net.strip()!r}") from None
        return {
            "total": _number(kwargs, "total", 1000),
            "perClient": _number(kwargs, "client", 50),
            "connectionRate": _number(kwargs, "rate", 0),
            "messageRate": _number(kwargs, "messages", 0),
            "recipientRate": _number(kwargs, "recipients", 0),
            "exempt": exempt if "exempt" in kwargs else None,
        }

    def build(self, context: Any, **arguments: Any) -> Any:
        from mailframe.policy.limits import ConnectionLimits

        if arguments["exempt"] is None:
            arguments["exempt"] = context.config.relayNetworks
        return ConnectionLimits(context.reactor, **arguments)


class _DNSBL(PlugInFactory):
    prefix = "dnsbl"
    provides = IConnectionFilter
    synopsis = "dnsbl:ZONE[,ZONE...][:allow=ZONE,...][:timeout=SECONDS][:refuse=yes|no]"
    description = (
        "Refuse clients listed in these DNS block lists with 554 5.7.1 and the list's "
        "text; clients on an allow list (DNSWL) are not checked.  ZONE=127.0.0.2;127.0.0.3 "
        "counts only those answers.  refuse=no only logs."
    )

    def checkArguments(self, *args: str, **kwargs: str) -> dict[str, Any]:
        from mailframe.policy.dnsbl import Zone

        self._options(kwargs, ["allow", "timeout", "refuse"])
        zones = [Zone.parse(z) for z in _items(args)]
        allow = [Zone.parse(z) for z in _items((kwargs.get("allow", ""),))]
        if not zones:
            raise ValueError(f"expected at least one zone (usage: {self.synopsis})")
        return {
            "zones": zones,
            "allow": allow,
            "timeout": _timeout(kwargs, 5.0),
            "refuse": self._flag(kwargs, "refuse", True),
        }

    def build(self, context: Any, **arguments: Any) -> Any:
        from mailframe.policy.dnsbl import DNSBL

        dns = _dns(context, arguments.pop("timeout"))
        return DNSBL(dns, config=context.config, **arguments)


class _Helo(PlugInFactory):
    prefix = "helo"
    provides = IHeloValidator
    synopsis = "helo[:fqdn=yes|no][:literal=yes|no][:fcrdns=no|record|require][:timeout=S]"
    description = (
        "Refuse HELO names that are not fully qualified (504 5.5.2) and address literals "
        "that are not the client's (550 5.7.1); fcrdns=record notes the client's "
        "forward-confirmed reverse DNS, fcrdns=require refuses without it (550 5.7.25)."
    )

    def checkArguments(self, *args: str, **kwargs: str) -> dict[str, Any]:
        self._noArguments(args)
        self._options(kwargs, ["fqdn", "literal", "fcrdns", "timeout"])
        return {
            "fqdn": self._flag(kwargs, "fqdn", True),
            "literal": self._flag(kwargs, "literal", True),
            "fcrdns": self._choice(kwargs, "fcrdns", ("no", "record", "require")),
            "timeout": _timeout(kwargs),
        }

    def build(self, context: Any, **arguments: Any) -> Any:
        from mailframe.policy.helo import HeloCheck

        dns = _dns(context, arguments.pop("timeout"))
        return HeloCheck(dns, config=context.config, **arguments)


_SPF_RESULTS = ("pass", "fail", "softfail", "neutral", "none", "temperror", "permerror")


class _SPF(PlugInFactory):
    prefix = "spf"
    provides = ISenderValidator
    synopsis = "spf[:RESULT=accept|reject|defer ...][:timeout=S]"
    description = (
        "Check SPF at MAIL FROM (HELO for the null sender) and record the result.  By "
        "default fail=reject (550 5.7.23), temperror=defer (451 4.4.3), the others accept."
    )

    def checkArguments(self, *args: str, **kwargs: str) -> dict[str, Any]:
        self._noArguments(args)
        self._options(kwargs, [*_SPF_RESULTS, "timeout"])
        policy = {}
        for result in _SPF_RESULTS:
            if result in kwargs:
                policy[result] = self._choice(kwargs, result, ("accept", "reject", "defer"))
        return {"policy": policy, "timeout": _timeout(kwargs)}

    def build(self, context: Any, **arguments: Any) -> Any:
        from mailframe.policy.spf import SPFCheck

        dns = _dns(context, arguments["timeout"])
        return SPFCheck(dns, context.config, arguments["policy"])


class _DKIMVerify(PlugInFactory):
    prefix = "dkim-verify"
    provides = IMessageFilter
    synopsis = "dkim-verify[:timeout=S]"
    description = (
        "Verify the DKIM signatures of inbound mail and record the results (for dmarc "
        "and authresults); never refuses."
    )

    def checkArguments(self, *args: str, **kwargs: str) -> dict[str, Any]:
        self._noArguments(args)
        self._options(kwargs, ["timeout"])
        return {"timeout": _timeout(kwargs)}

    def build(self, context: Any, **arguments: Any) -> Any:
        from mailframe.policy.dkim import DKIMVerifier, threadRunner

        dns = _dns(context, arguments["timeout"])
        return DKIMVerifier(dns, threadRunner(context.reactor), context.config)


class _DKIMSign(PlugInFactory):
    prefix = "dkim-sign"
    provides = IMessageFilter
    synopsis = "dkim-sign:DOMAIN:SELECTOR:KEYFILE[:all=yes|no]"
    description = (
        "Sign outbound mail (authenticated or relay-network clients; all=yes: any) whose "
        "From: is DOMAIN or a subdomain, with the RSA or ed25519 key in KEYFILE "
        "(mailframe-dkim keygen makes one).  Repeat for more domains."
    )

    def checkArguments(self, *args: str, **kwargs: str) -> dict[str, Any]:
        from mailframe.address import Domain

        self._options(kwargs, ["all"])
        if len(args) != 3 or not all(args):
            raise ValueError(f"expected DOMAIN:SELECTOR:KEYFILE (usage: {self.synopsis})")
        domain, selector, path = args
        Domain.parse(domain)
        if not all(part.isalnum() or part == "" for part in selector.replace("-", "").split(".")):
            raise ValueError(f"bad selector {selector!r}")
        path = os.path.abspath(os.path.expanduser(path))
        if not os.path.isfile(path):
            raise ValueError(f"no such key file: {path}")
        return {
            "domain": domain,
            "selector": selector,
            "path": path,
            "signAll": self._flag(kwargs, "all", False),
        }

    def build(self, context: Any, **arguments: Any) -> Any:
        from mailframe.policy.dkim import DKIMSigner, threadRunner

        with open(arguments["path"], "rb") as f:
            key = f.read()
        return DKIMSigner(
            arguments["domain"],
            arguments["selector"],
            key,
            runner=threadRunner(context.reactor),
            config=context.config,
            signAll=arguments["signAll"],
        )


class _DMARC(PlugInFactory):
    prefix = "dmarc"
    provides = IMessageFilter
    synopsis = "dmarc[:reject=yes|no][:quarantine=yes|no][:temperror=accept|defer][:timeout=S]"
    description = (
        "Evaluate the From: domain's DMARC policy against SPF and DKIM with alignment: "
        "p=reject is refused with 550 5.7.1 (reject=no: quarantined), p=quarantine adds "
        "X-Mailframe-Quarantine (quarantine=no: only recorded)."
    )

    def checkArguments(self, *args: str, **kwargs: str) -> dict[str, Any]:
        self._noArguments(args)
        self._options(kwargs, ["reject", "quarantine", "temperror", "timeout"])
        return {
            "reject": self._flag(kwargs, "reject", True),
            "quarantine": self._flag(kwargs, "quarantine", True),
            "deferTemporary": self._choice(kwargs, "temperror", ("accept", "defer")) == "defer",
            "timeout": _timeout(kwargs),
        }

    def build(self, context: Any, **arguments: Any) -> Any:
        from mailframe.policy.dkim import threadRunner
        from mailframe.policy.dmarc import DMARCCheck

        dns = _dns(context, arguments.pop("timeout"))
        return DMARCCheck(dns, context.config, threadRunner(context.reactor), **arguments)


class _AuthResults(PlugInFactory):
    prefix = "authresults"
    provides = IMessageFilter
    synopsis = "authresults[:id=AUTHSERV-ID]"
    description = (
        "Add an Authentication-Results field (RFC 8601) with the results of the checks "
        "above, naming this server (id, default the host name); remove received ones "
        "that name it."
    )

    def checkArguments(self, *args: str, **kwargs: str) -> dict[str, Any]:
        self._noArguments(args)
        self._options(kwargs, ["id"])
        name = kwargs.get("id")
        if name is not None and (not name or any(c.isspace() or c in ';()"\\' for c in name)):
            raise ValueError(f"id must be one word, not {name!r}")
        return {"authservID": name}

    def build(self, context: Any, **arguments: Any) -> Any:
        from mailframe.policy.authresults import AuthenticationResults

        return AuthenticationResults(arguments["authservID"], context.config)


#: The security checks' factories, in the order --help lists them.
POLICY_FACTORIES: tuple[PlugInFactory, ...] = (
    _Limits(),
    _DNSBL(),
    _Helo(),
    _SPF(),
    _DKIMVerify(),
    _DMARC(),
    _AuthResults(),
    _DKIMSign(),
)
