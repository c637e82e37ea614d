"""
XCLIENT (Postfix's extension, XCLIENT_README) as an IExtension provider:
a trusted front end (a proxy, a content filter, a test tool such as
``swaks --xclient``) names the client it speaks for, and the session goes
on as that client's.

    XCLIENT NAME=mail.example.org ADDR=192.0.2.7 PORT=40123 HELO=mail.example.org
    220 mx.example.com ESMTP mailframe
    EHLO mail.example.org

Attributes (values in xtext, RFC 3461): C{ADDR} (an IPv4 address, or
C{IPV6:} and an IPv6 one), C{PORT}, C{NAME} (the verified reverse name, or
C{[UNAVAILABLE]} / C{[TEMPUNAVAIL]}), C{HELO}, C{LOGIN} (the user the front
end authenticated; C{[UNAVAILABLE]} for none), C{PROTO} (C{SMTP} or
C{ESMTP}), C{DESTADDR} and C{DESTPORT} (the address the client reached),
and C{REVERSE_NAME} (the unverified reverse name: checked, not used).
The answer is our greeting, after which the session starts over: the
client sends EHLO again.  Everything decided per command from then on
(relay networks, SPF, HELO checks, rate limits, the Received field, logs,
the milters' macros) is about the named client; the checks of the
connection itself (connection limits, DNSBL at connect, a milter's connect
stage) ran for the front end and are not run again.

Only clients in C{networks} (the C{xclient-network} setting) see it in
EHLO or may use it, judged by the front end's own address (C{frontEnd}
after a first XCLIENT); the others get 550 5.7.0.  Not in a transaction
(503 5.5.1).

Owns: the attribute syntax and who may use it.  Must not: import
mailframe.server.
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network
from typing import TYPE_CHECKING, Any

from zope.interface import implementer

from mailframe.config import inNetworks
from mailframe.envelope import SessionInfo
from mailframe.extensions._base import Extension
from mailframe.interfaces import IUnadvertisedCommands
from mailframe.protocol import decodeXtext
from mailframe.reply import Reply
from mailframe.results import IPRevResult

if TYPE_CHECKING:
    from mailframe.interfaces import ISessionControl

__all__ = ["ATTRIBUTES", "XClient"]

ATTRIBUTES = (
    "NAME", "ADDR", "PORT", "PROTO", "HELO", "LOGIN", "DESTADDR", "DESTPORT", "REVERSE_NAME",
)  # fmt: skip
"""What XCLIENT may name, in the order EHLO lists them."""

NOT_AUTHORIZED = Reply(550, (5, 7, 0), "Not authorized to use XCLIENT")
IN_TRANSACTION = Reply(503, (5, 5, 1), "XCLIENT is not allowed in a mail transaction")
EHLO_FIRST = Reply(503, (5, 5, 1), "Send EHLO first: XCLIENT is offered in its reply")
SYNTAX = Reply(501, (5, 5, 4), "Syntax: XCLIENT attribute=value ...")

UNAVAILABLE = "[UNAVAILABLE]"
TEMPUNAVAIL = "[TEMPUNAVAIL]"
_MAX_VALUE = 255


def _bad(what: str) -> Reply:
    return Reply(501, (5, 5, 4), f"Bad XCLIENT {what}")


def _address(value: str) -> str | None:
    """An ADDR or DESTADDR value as an address string, or None if it is none."""
    text = value[5:] if value[:5].upper() == "IPV6:" else value
    try:
        address = ip_address(text)
    except ValueError:
        return None
    if (address.version == 6) != (text is not value):
        return None  # IPv6 only with its IPV6: prefix, IPv4 only without
    return str(address)


def _port(value: str) -> int | None:
    if not value.isdigit() or len(value) > 5 or int(value) > 65535:
        return None
    return int(value)


def _printable(value: str) -> bool:
    return 0 < len(value) <= _MAX_VALUE and all(33 <= ord(c) <= 126 for c in value)


def _hostname(value: str) -> bool:
    """A host name (one trailing dot allowed), not an address."""
    name = value[:-1] if value.endswith(".") else value
    if _address(name) is not None or _address("IPV6:" + name) is not None:
        return False
    return len(name) <= _MAX_VALUE and all(
        0 < len(label) <= 63
        and label.isascii()
        and label.replace("-", "").replace("_", "").isalnum()
        for label in name.split(".")
    )


@implementer(IUnadvertisedCommands)
class XClient(Extension):
    """
    XCLIENT for front ends in C{networks} (CIDR strings or network
    objects); offered and allowed to no one else.
    """

    keyword = "XCLIENT"
    verbs = frozenset({"XCLIENT"})
    commandLineIncrease = 512  # eight attributes of up to 255 octets fit in 2 KiB with AUTH's

    def __init__(self, networks: Iterable[str | IPv4Network | IPv6Network]) -> None:
        self.networks = tuple(
            n if isinstance(n, IPv4Network | IPv6Network) else ip_network(n, strict=False)
            for n in networks
        )

    def trusted(self, session: SessionInfo) -> bool:
        """Whether the session's front end (its own address) may use XCLIENT."""
        return inNetworks(session.frontEnd or session.peerHost, self.networks)

    def ehloParameters(self, session: SessionInfo) -> str | None:
        return " ".join(ATTRIBUTES) if self.trusted(session) else None

    def refuseCommand(self, control: ISessionControl, verb: str, argument: str) -> Reply:
        """Not offered: refused (550) to a stranger; a front end must send EHLO first."""
        return EHLO_FIRST if self.trusted(control.session) else NOT_AUTHORIZED

    def handleCommand(self, control: ISessionControl, verb: str, argument: str) -> Reply:
        if not self.trusted(control.session):
            return NOT_AUTHORIZED
        if control.inTransaction:
            return IN_TRANSACTION
        facts = self.parse(argument, control.session)
        if isinstance(facts, Reply):
            return facts
        return control.replaceClient(**facts)

    def parse(self, argument: str, session: SessionInfo) -> dict[str, Any] | Reply:
        """The keyword arguments of L{ISessionControl.replaceClient}, or a 501."""
        items = argument.split()
        if not items:
            return SYNTAX
        given: dict[str, str] = {}
        for item in items:
            name, equals, raw = item.partition("=")
            name = name.upper()
            if not equals or name not in ATTRIBUTES:
                return _bad(f"attribute {name[:20]!r}" if equals else "syntax")
            try:
                value = decodeXtext(raw)
            except (ValueError, UnicodeError):
                return _bad(f"{name} value")
            if not value or len(value) > _MAX_VALUE:
                return _bad(f"{name} value")
            given[name] = value
        facts: dict[str, Any] = {}
        addr = given.get("ADDR")
        if addr is not None and addr.upper() not in (UNAVAILABLE, TEMPUNAVAIL):
            host = _address(addr)
            if host is None:
                return _bad("ADDR value")
            facts["host"] = host
        for key, attribute in (("port", "PORT"), ("localPort", "DESTPORT")):
            text = given.get(attribute)
            if text is not None and text.upper() not in (UNAVAILABLE, TEMPUNAVAIL):
                port = _port(text)
                if port is None:
                    return _bad(f"{attribute} value")
                facts[key] = port
        dest = given.get("DESTADDR")
        if dest is not None and dest.upper() not in (UNAVAILABLE, TEMPUNAVAIL):
            local = _address(dest)
            if local is None:
                return _bad("DESTADDR value")
            facts["localHost"] = local
        clientName = given.get("NAME")
        if clientName is not None:
            address = facts.get("host", session.peerHost)
            if clientName.upper() == UNAVAILABLE:
                facts["iprev"] = IPRevResult("fail", address)
            elif clientName.upper() == TEMPUNAVAIL:
                facts["iprev"] = IPRevResult("temperror", address)
            elif _hostname(clientName):
                names = (clientName.removesuffix(".").lower(),)
                facts["iprev"] = IPRevResult("pass", address, names)
            else:
                return _bad("NAME value")
        helo = given.get("HELO")
        if helo is not None and helo.upper() not in (UNAVAILABLE, TEMPUNAVAIL):
            if not _printable(helo):
                return _bad("HELO value")
            facts["heloName"] = helo
        login = given.get("LOGIN")
        if login is not None and login.upper() not in (UNAVAILABLE, TEMPUNAVAIL):
            if not _printable(login):
                return _bad("LOGIN value")
            facts["login"] = login
        reverse = given.get("REVERSE_NAME")
        special = (UNAVAILABLE, TEMPUNAVAIL)
        if reverse is not None and reverse.upper() not in special and not _hostname(reverse):
            return _bad("REVERSE_NAME value")
        proto = given.get("PROTO")
        if proto is not None and proto.upper() not in ("SMTP", "ESMTP", UNAVAILABLE, TEMPUNAVAIL):
            return _bad("PROTO value")
        return facts
