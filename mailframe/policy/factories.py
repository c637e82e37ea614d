"""
The plug-in factories of the security checks, chosen with C{--filter} (or
C{filter = [...]} in the config file): C{limits}, C{dnsbl}, C{helo},
C{spf}, C{dkim-verify}, C{dkim-sign}, C{dmarc}, C{authresults}, C{rspamd}.
L{mailframe.plugins} lists them among its built-ins.

Owns: the description syntax of each check and checking it.  Must not:
import a check's module, pyspf, dkimpy or the reactor at import time
(twistd imports the plug-in machinery while scanning for service makers);
providers are built inside C{build}.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from mailframe.interfaces import (
    IConnectionFilter,
    IHeloValidator,
    IMessageFilter,
    ISenderValidator,
)
from mailframe.plugins import (
    Choice,
    Count,
    Duration,
    Networks,
    Option,
    PlugInFactory,
    SettingError,
    YesNo,
    splitItems,
)

if TYPE_CHECKING:
    from mailframe.config import ProviderContext
    from mailframe.policy._dns import AsyncDNS
    from mailframe.policy.dnsbl import Zone

__all__ = ["POLICY_FACTORIES"]

#: The longest a check waits for its DNS answers.
MAX_DNS_TIMEOUT = 300.0


def _timeout(default: float) -> Option:
    return Option(
        "timeout",
        Duration(maximum=MAX_DNS_TIMEOUT),
        default,
        "How long to wait for the DNS answers, at most 5m.",
    )


def _zones(value: str) -> list[Zone]:
    from mailframe.policy.dnsbl import Zone

    return [Zone.parse(z) for z in splitItems((value,))]


def _word(value: str) -> str:
    if not value or any(c.isspace() or c in ';()"\\' for c in value):
        raise SettingError(f"must be one word, not {value!r}")
    return value


def _dns(context: ProviderContext, timeout: float) -> AsyncDNS:
    """Lookups through the process's resolver (C{context.resolver}, else the system's)."""
    from mailframe.policy._dns import AsyncDNS, defaultResolver

    resolver = context.resolver
    if resolver is None:
        resolver = defaultResolver(context.reactor)
    return AsyncDNS(resolver, context.reactor, timeout)


class _Limits(PlugInFactory):
    prefix = "limits"
    provides = IConnectionFilter
    options = (
        Option("total", Count(), 1000, "Concurrent connections in all."),
        Option("client", Count(), 50, "Concurrent connections of one client."),
        Option("rate", Count(), 0, "New connections per client per minute (0: no limit)."),
        Option("messages", Count(), 0, "Messages per client per minute (0: no limit)."),
        Option("recipients", Count(), 0, "Recipients per client per minute (0: no limit)."),
        Option(
            "exempt",
            Networks(empty=True),
            None,
            "Networks limited only by total.",
            shown="the relay networks",
        ),
    )
    description = (
        "Concurrent connections in all (total) and per client (client); new "
        "connections (rate), messages (messages) and recipients (recipients) per client "
        "per minute; over a limit, 421 4.7.0.  Clients in exempt networks are limited "
        "only by total."
    )

    def checkArguments(self, *args: str, **kwargs: str) -> dict[str, Any]:
        self._noArguments(args)
        options = self.parseOptions(kwargs)
        return {
            "total": options["total"],
            "perClient": options["client"],
            "connectionRate": options["rate"],
            "messageRate": options["messages"],
            "recipientRate": options["recipients"],
            "exempt": options["exempt"],
        }

    def build(self, context: ProviderContext, **arguments: Any) -> IConnectionFilter:
        from mailframe.policy.limits import ConnectionLimits

        if arguments["exempt"] is None:
            arguments["exempt"] = context.config.relayNetworks
        return ConnectionLimits(context.reactor, **arguments)


class _DNSBL(PlugInFactory):
    prefix = "dnsbl"
    provides = IConnectionFilter
    arguments = "ZONE[,ZONE...]"
    options = (
        Option(
            "allow",
            _zones,
            (),
            "Allow lists (DNSWL): their clients are not checked.",
            metavar="ZONE,...",
        ),
        _timeout(5.0),
        Option("refuse", YesNo(), True, "Refuse listed clients (no: only log them)."),
    )
    description = (
        "Refuse clients listed in these DNS block lists with 554 5.7.1 and the list's "
        "text; clients on an allow list (DNSWL) are not checked.  ZONE=127.0.0.2;127.0.0.3 "
        "counts only those answers.  refuse=no only logs."
    )

    def checkArguments(self, *args: str, **kwargs: str) -> dict[str, Any]:
        from mailframe.policy.dnsbl import Zone

        options = self.parseOptions(kwargs)
        zones = [Zone.parse(z) for z in splitItems(args)]
        if not zones:
            raise ValueError(f"expected at least one zone (usage: {self.synopsis})")
        return {
            "zones": zones,
            "allow": list(options["allow"]),
            "timeout": options["timeout"],
            "refuse": options["refuse"],
        }

    def build(self, context: ProviderContext, **arguments: Any) -> IConnectionFilter:
        from mailframe.policy.dnsbl import DNSBL

        dns = _dns(context, arguments.pop("timeout"))
        return DNSBL(dns, config=context.config, **arguments)


class _Helo(PlugInFactory):
    prefix = "helo"
    provides = IHeloValidator
    options = (
        Option("fqdn", YesNo(), True, "Refuse names that are not fully qualified."),
        Option("literal", YesNo(), True, "Refuse address literals that are not the client's."),
        Option(
            "fcrdns",
            Choice("no", "record", "require"),
            "no",
            "Note the client's forward-confirmed reverse DNS (record), or refuse without "
            "it (require).",
        ),
        _timeout(10.0),
    )
    description = (
        "Refuse HELO names that are not fully qualified (504 5.5.2) and address literals "
        "that are not the client's (550 5.7.1); fcrdns=record notes the client's "
        "forward-confirmed reverse DNS, fcrdns=require refuses without it (550 5.7.25)."
    )

    def checkArguments(self, *args: str, **kwargs: str) -> dict[str, Any]:
        self._noArguments(args)
        return self.parseOptions(kwargs)

    def build(self, context: ProviderContext, **arguments: Any) -> IHeloValidator:
        from mailframe.policy.helo import HeloCheck

        dns = _dns(context, arguments.pop("timeout"))
        return HeloCheck(dns, config=context.config, **arguments)


_SPF_RESULTS = ("pass", "fail", "softfail", "neutral", "none", "temperror", "permerror")


def _spfDefault(result: str) -> str:
    from mailframe.policy.spf import DEFAULT_POLICY

    return DEFAULT_POLICY[result]


def _spfResult(result: str) -> Option:
    return Option(
        result,
        Choice("accept", "reject", "defer"),
        None,
        f"What an SPF {result} does.",
        shown=lambda: _spfDefault(result),
    )


class _SPF(PlugInFactory):
    prefix = "spf"
    provides = ISenderValidator
    synopsis = "spf[:RESULT=accept|reject|defer ...][:timeout=SECONDS]"
    options = (*(_spfResult(r) for r in _SPF_RESULTS), _timeout(10.0))
    description = (
        "Check SPF at MAIL FROM (HELO for the null sender) and record the result; what "
        "each RESULT does (pass, fail, softfail, neutral, none, temperror, permerror): "
        "accept, reject (550 5.7.23) or defer (451 4.4.3)."
    )

    def checkArguments(self, *args: str, **kwargs: str) -> dict[str, Any]:
        self._noArguments(args)
        options = self.parseOptions(kwargs)
        policy = {r: options[r] for r in _SPF_RESULTS if options[r] is not None}
        return {"policy": policy, "timeout": options["timeout"]}

    def build(self, context: ProviderContext, **arguments: Any) -> ISenderValidator:
        from mailframe.policy.spf import SPFCheck

        dns = _dns(context, arguments["timeout"])
        return SPFCheck(dns, context.config, arguments["policy"])


class _DKIMVerify(PlugInFactory):
    prefix = "dkim-verify"
    provides = IMessageFilter
    options = (_timeout(10.0),)
    description = (
        "Verify the DKIM signatures of inbound mail and record the results (for dmarc "
        "and authresults); never refuses."
    )

    def checkArguments(self, *args: str, **kwargs: str) -> dict[str, Any]:
        self._noArguments(args)
        return self.parseOptions(kwargs)

    def build(self, context: ProviderContext, **arguments: Any) -> IMessageFilter:
        from mailframe.policy.dkim import DKIMVerifier, threadRunner

        dns = _dns(context, arguments["timeout"])
        return DKIMVerifier(dns, threadRunner(context.reactor), context.config)


class _DKIMSign(PlugInFactory):
    prefix = "dkim-sign"
    provides = IMessageFilter
    arguments = "DOMAIN:SELECTOR:KEYFILE"
    options = (
        Option(
            "all",
            YesNo(),
            False,
            "Sign the mail of any client, not only authenticated and relay-network ones.",
        ),
    )
    description = (
        "Sign outbound mail (authenticated or relay-network clients; all=yes: any) whose "
        "From: is DOMAIN or a subdomain, with the RSA or ed25519 key in KEYFILE "
        "(mailframe-dkim keygen makes one).  Repeat for more domains."
    )

    def checkArguments(self, *args: str, **kwargs: str) -> dict[str, Any]:
        from mailframe.address import Domain

        options = self.parseOptions(kwargs)
        if len(args) != 3 or not all(args):
            raise ValueError(f"expected DOMAIN:SELECTOR:KEYFILE (usage: {self.synopsis})")
        domain, selector, path = args
        Domain.parse(domain)
        if not all(part.isalnum() or part == "" for part in selector.replace("-", "").split(".")):
            raise ValueError(f"bad selector {selector!r}")
        path = os.path.abspath(os.path.expanduser(path))
        if not os.path.isfile(path):
            raise ValueError(f"no such key file: {path}")
        return {"domain": domain, "selector": selector, "path": path, "signAll": options["all"]}

    def build(self, context: ProviderContext, **arguments: Any) -> IMessageFilter:
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
    options = (
        Option("reject", YesNo(), True, "Refuse mail of p=reject (no: quarantine it)."),
        Option("quarantine", YesNo(), True, "Mark mail of p=quarantine (no: only record it)."),
        Option(
            "temperror",
            Choice("accept", "defer"),
            "accept",
            "What a DNS failure does: accept, or defer with 451.",
        ),
        _timeout(10.0),
    )
    description = (
        "Evaluate the From: domain's DMARC policy against SPF and DKIM with alignment: "
        "p=reject is refused with 550 5.7.1 (reject=no: quarantined), p=quarantine adds "
        "X-Mailframe-Quarantine (quarantine=no: only recorded)."
    )

    def checkArguments(self, *args: str, **kwargs: str) -> dict[str, Any]:
        self._noArguments(args)
        options = self.parseOptions(kwargs)
        return {
            "reject": options["reject"],
            "quarantine": options["quarantine"],
            "deferTemporary": options["temperror"] == "defer",
            "timeout": options["timeout"],
        }

    def build(self, context: ProviderContext, **arguments: Any) -> IMessageFilter:
        from mailframe.policy.dkim import threadRunner
        from mailframe.policy.dmarc import DMARCCheck

        dns = _dns(context, arguments.pop("timeout"))
        return DMARCCheck(dns, context.config, threadRunner(context.reactor), **arguments)


class _AuthResults(PlugInFactory):
    prefix = "authresults"
    provides = IMessageFilter
    options = (
        Option(
            "id",
            _word,
            None,
            "The name of this server in the field (authserv-id).",
            shown="the host name",
            metavar="AUTHSERV-ID",
        ),
    )
    description = (
        "Add an Authentication-Results field (RFC 8601) with the results of the checks "
        "above, naming this server (id); remove received ones that name it."
    )

    def checkArguments(self, *args: str, **kwargs: str) -> dict[str, Any]:
        self._noArguments(args)
        return {"authservID": self.parseOptions(kwargs)["id"]}

    def build(self, context: ProviderContext, **arguments: Any) -> IMessageFilter:
        from mailframe.policy.authresults import AuthenticationResults

        return AuthenticationResults(arguments["authservID"], context.config)


def _url(value: str) -> str:
    if not value.startswith(("http://", "https://")) or len(value) < 8:
        raise SettingError(f"expected an http:// or https:// URL, not {value!r}")
    return value


class _Rspamd(PlugInFactory):
    prefix = "rspamd"
    provides = IMessageFilter
    options = (
        Option("url", _url, "http://127.0.0.1:11333", "rspamd's normal worker.", metavar="URL"),
        Option("timeout", Duration(maximum=MAX_DNS_TIMEOUT), 20.0, "How long to wait for it."),
        Option(
            "failure",
            Choice("accept", "tempfail"),
            "accept",
            "What happens when rspamd is down or fails: accept, or 451 4.7.1.",
        ),
        Option("header", YesNo(), True, "Add X-Spamd-Result (the score and the symbols)."),
    )
    description = (
        "Ask rspamd about each message over its HTTP protocol (/checkv2) and apply its "
        "action: reject (554 5.7.1), soft reject and greylist (451 4.7.1), rewrite subject, "
        "add header (X-Spam: Yes), and its milter header changes."
    )

    def checkArguments(self, *args: str, **kwargs: str) -> dict[str, Any]:
        self._noArguments(args)
        return self.parseOptions(kwargs)

    def build(self, context: ProviderContext, **arguments: Any) -> IMessageFilter:
        from mailframe.policy.rspamd import RspamdFilter

        return RspamdFilter(
            arguments["url"],
            context.reactor,
            context.config.hostname,
            timeout=arguments["timeout"],
            failure=arguments["failure"],
            resultHeader=arguments["header"],
        )


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
    _Rspamd(),
)
