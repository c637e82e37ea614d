"""
SMTP TLS reporting (RFC 8460), the sending side: L{TLSReporter} counts the
outcome of each delivery attempt per day and policy domain (successful
sessions, and failures by result type, receiving MX and address), keeps
the counts in the state directory, and once a day is over sends each
policy domain that publishes a C{_smtp._tls} TXT record (C{v=TLSRPTv1;
rua=...}) its aggregate report: JSON (L{buildReport}), gzip-compressed, by
mail (C{mailto:}: a multipart/report with report-type=tlsrpt, through the
relay) or by HTTPS POST (C{https:}, with treq).  Off unless configured
with the reporting organisation's name and a sender address.

A report not sent (a 4xx, an HTTP failure) is tried again at the next hour,
for two days; a domain without a record gets none.

Owns: the counting, the report format and its delivery.  Must not: decide
policies (L{mailframe.client.tlspolicy} does) or read a message.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from email.utils import formatdate
from typing import Any

from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

__all__ = ["TLSReporter", "buildReport", "parseRUA", "reportMessage"]

log = Logger(namespace="mailframe.tlsrpt")

_KEEP_DAYS = 2
_FIELD = re.compile(r"\s*([A-Za-z0-9_-]+)\s*=\s*(.*?)\s*\Z")


def parseRUA(records: Iterable[bytes]) -> list[str]:
    """The rua URIs of the one C{v=TLSRPTv1} record (RFC 8460 3), else none."""
    found = [r for r in records if r.startswith(b"v=TLSRPTv1")]
    if len(found) != 1:
        return []
    text = found[0].decode("utf-8", "replace")
    for part in text.split(";"):
        match = _FIELD.match(part)
        if match and match.group(1) == "rua":
            uris = [u.strip() for u in match.group(2).split(",") if u.strip()]
            return [u for u in uris if u.lower().startswith(("mailto:", "https:"))]
    return []


def _policyKey(plan: Any) -> tuple[str, str, tuple[str, ...], tuple[str, ...]]:
    """(type, domain, policy strings, mx hosts) of a L{mailframe.client.tlspolicy.HostPlan}."""
    kind = plan.policyType
    policy = plan.policy
    host = plan.destination.hostname.rstrip(".").lower()
    if kind == "sts" and policy is not None:
        strings = ("version: STSv1", f"mode: {policy.mode}",
                   *(f"mx: {m}" for m in policy.mx), f"max_age: {policy.maxAge}")  # fmt: skip
        return kind, plan.policyDomain, strings, tuple(policy.mx)
    if kind == "tlsa" and policy:
        strings = tuple(f"{r.usage} {r.selector} {r.matching} {r.data.hex()}" for r in policy)
        return kind, plan.policyDomain, strings, (host,)
    return "no-policy-found", plan.policyDomain, (), ()


def buildReport(
    day: str,
    domain: str,
    policies: Mapping[str, Any],
    organization: str,
    contact: str,
    reportID: str,
) -> dict[str, Any]:
    """
    The JSON report (RFC 8460 4) for C{domain} on C{day} (YYYY-MM-DD) from
    the counts kept for it (as L{TLSReporter} keeps them).
    """
    out = []
    for data in policies.values():
        failures = [
            {"result-type": f["result"], "sending-mta-ip": f["sending"],
             "receiving-mx-hostname": f["mx"], "receiving-ip": f["ip"],
             "failed-session-count": f["count"]}
            for f in data["failures"].values()
        ]  # fmt: skip
        policy: dict[str, Any] = {"policy-type": data["type"], "policy-domain": domain}
        if data["strings"]:
            policy["policy-string"] = list(data["strings"])
        if data["mx"]:
            policy["mx-host"] = list(data["mx"])
        entry: dict[str, Any] = {
            "policy": policy,
            "summary": {
                "total-successful-session-count": data["success"],
                "total-failure-session-count": sum(f["count"] for f in data["failures"].values()),
            },
        }
        if failures:
            entry["failure-details"] = failures
        out.append(entry)
    return {
        "organization-name": organization,
        "date-range": {"start-datetime": f"{day}T00:00:00Z", "end-datetime": f"{day}T23:59:59Z"},
        "contact-info": contact,
        "report-id": reportID,
        "policies": out,
    }


def reportMessage(
    report: bytes,
    fileName: str,
    domain: str,
    sender: str,
    submitter: str,
    recipient: str,
    reportID: str,
    now: float,
) -> bytes:
    """The mail of one report (RFC 8460 5.3): multipart/report, report-type=tlsrpt."""
    import base64

    boundary = "tlsrpt-" + uuid.uuid4().hex
    body = base64.encodebytes(report).replace(b"\n", b"\r\n")
    head = (
        f"From: {sender}\r\nTo: {recipient}\r\nDate: {formatdate(now)}\r\n"
        f"Subject: Report Domain: {domain} Submitter: {submitter} Report-ID: <{reportID}>\r\n"
        f"TLS-Report-Domain: {domain}\r\nTLS-Report-Submitter: {submitter}\r\n"
        f"Message-ID: <{reportID}>\r\nMIME-Version: 1.0\r\n"
        f'Content-Type: multipart/report; report-type="tlsrpt"; boundary="{boundary}"\r\n\r\n'
        f"--{boundary}\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
        f"This is an aggregate TLS report from {submitter} for {domain}.\r\n\r\n"
        f"--{boundary}\r\nContent-Type: application/tlsrpt+gzip\r\n"
        "Content-Transfer-Encoding: base64\r\n"
        f'Content-Disposition: attachment; filename="{fileName}"\r\n\r\n'
    ).encode()
    return head + body + f"\r\n--{boundary}--\r\n".encode()


class TLSReporter:
    """
    Counts results and sends daily reports.  C{organization}: the
    reporting organisation's name; C{sender}: the address reports come
    from (its domain is the submitter); C{contact}: contact-info (the
    sender by default); C{stateDirectory}: where counts are kept (None:
    memory only); C{txt(name)}: a Deferred of TXT records; C{sendMail(sender,
    recipient, data)} and C{post(url, data)}: Deferreds of True when the
    report was taken; C{sendingIP}: our address as reported.
    """

    def __init__(
        self,
        clock: IReactorTime,
        organization: str,
        sender: str,
        *,
        txt: Callable[[str], Any],
        sendMail: Callable[[str, str, bytes], Any] | None = None,
        post: Callable[[str, bytes], Any] | None = None,
        stateDirectory: str | None = None,
        contact: str | None = None,
        sendingIP: str = "",
        interval: float = 3600.0,
    ) -> None:
        if not organization or "@" not in sender:
            raise ValueError("TLS reporting needs an organisation name and a sender address")
        self.clock = clock
        self.organization = organization
        self.sender = sender
        self.submitter = sender.rpartition("@")[2]
        self.contact = contact or sender
        self.txt = txt
        self.sendMail = sendMail
        self.post = post
        self.stateDirectory = stateDirectory
        self.sendingIP = sendingIP
        self.interval = interval
        self._days: dict[str, dict[str, dict[str, Any]]] = {}
        self._loop: task.LoopingCall | None = None
        self._dirty = False
        self._loaded = False
        self._sending: defer.Deferred[Any] | None = None

    # -- counting -------------------------------------------------------------------

    def _today(self) -> str:
        return datetime.fromtimestamp(self.clock.seconds(), UTC).strftime("%Y-%m-%d")

    def record(self, plan: Any, result: str | None, sendingIP: str | None = None) -> None:
        """
        One session (or a host not tried) of C{plan}: success (None) or an
        RFC 8460 result; C{sendingIP}: our address in it (else C{sendingIP}
        of the reporter).
        """
        if plan.policyDomain is None:
            return
        self._start()
        kind, domain, strings, mx = _policyKey(plan)
        day = self._days.setdefault(self._today(), {})
        policies = day.setdefault(domain, {})
        key = json.dumps([kind, strings, mx])
        fresh = {"type": kind, "strings": list(strings), "mx": list(mx), "success": 0,
                 "failures": {}}  # fmt: skip
        data = policies.setdefault(key, fresh)
        if result is None:
            data["success"] += 1
        else:
            host = plan.destination.hostname.rstrip(".").lower()
            ip = plan.destination.address
            fkey = f"{result} {host} {ip}"
            sending = sendingIP or self.sendingIP
            fkey += f" {sending}"
            blank = {"result": result, "mx": host, "ip": ip, "sending": sending,
                     "count": 0}  # fmt: skip
            failure = data["failures"].setdefault(fkey, blank)
            failure["count"] += 1
        self._dirty = True

    def counts(self, day: str, domain: str) -> dict[str, Any]:
        """The counts kept for C{domain} on C{day} (by policy)."""
        return self._days.get(day, {}).get(domain, {})

    # -- keeping --------------------------------------------------------------------------

    def _path(self) -> str | None:
        if self.stateDirectory is None:
            return None
        return os.path.join(self.stateDirectory, "tlsrpt.json")

    def _load(self) -> None:
        self._loaded = True
        path = self._path()
        if path is None:
            return
        try:
            with open(path, encoding="utf-8") as f:
                saved = json.load(f)
        except FileNotFoundError:
            return
        except (OSError, ValueError) as e:
            log.warn("TLS reports: ignoring {path}: {e}", path=path, e=e)
            return
        for day, domains in saved.items():
            mine = self._days.setdefault(day, {})
            for domain, policies in domains.items():
                mine.setdefault(domain, policies)

    def save(self) -> None:
        """Write the counts to the state directory (if any)."""
        path = self._path()
        self._dirty = False
        if path is None:
            return
        try:
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            temporary = f"{path}.{os.getpid()}.tmp"
            with open(temporary, "w", encoding="utf-8") as f:
                json.dump(self._days, f)
            os.replace(temporary, path)
        except OSError as e:
            log.warn("TLS reports: cannot keep the counts in {path}: {e}", path=path, e=e)

    def _start(self) -> None:
        if not self._loaded:
            self._load()
        if self._loop is None:
            self._loop = task.LoopingCall(self._tick)
            self._loop.clock = self.clock
            self._loop.start(self.interval, now=False).addErrback(
                lambda f: log.failure("TLS reports", f)
            )

    def stop(self) -> None:
        """Stop the hourly check and write the counts."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        if self._dirty:
            self.save()

    def _tick(self) -> defer.Deferred[None] | None:
        if self._dirty:
            self.save()
        if self._sending is None:
            sending: defer.Deferred[Any] = defer.ensureDeferred(self.sendDue())
            self._sending = sending
            self._sending.addErrback(lambda f: log.failure("sending TLS reports", f))
            self._sending.addBoth(self._sent)
        return None

    def _sent(self, result: object) -> None:
        self._sending = None

    # -- sending --------------------------------------------------------------------------

    async def sendDue(self) -> int:
        """Send the reports of every day before today; the number sent."""
        if not self._loaded:
            self._load()
        today = self._today()
        sent = 0
        oldest = (datetime.fromtimestamp(self.clock.seconds(), UTC)
                  - timedelta(days=_KEEP_DAYS + 1)).strftime("%Y-%m-%d")  # fmt: skip
        for day in sorted(d for d in self._days if d < today):
            domains = self._days[day]
            for domain in list(domains):
                if await self._sendOne(day, domain, domains[domain]):
                    sent += 1
                    del domains[domain]
                elif day < oldest:
                    log.info("TLS reports: giving up the report of {day} for {domain}",
                             day=day, domain=domain)  # fmt: skip
                    del domains[domain]
            if not domains:
                del self._days[day]
        self.save()
        return sent

    async def _sendOne(self, day: str, domain: str, policies: Mapping[str, Any]) -> bool:
        try:
            uris = parseRUA(await self.txt(f"_smtp._tls.{domain}"))
        except Exception as e:
            log.info("TLS reports: no _smtp._tls record for {domain} now: {e}", domain=domain, e=e)
            return False
        if not uris:
            return True  # nobody to tell: done with it
        start = int(datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC).timestamp())
        reportID = f"{day}.{domain}.{uuid.uuid4().hex[:12]}@{self.submitter}"
        report = buildReport(day, domain, policies, self.organization, self.contact, reportID)
        data = gzip.compress(json.dumps(report).encode(), mtime=0)
        fileName = f"{self.submitter}!{domain}!{start}!{start + 86399}.json.gz"
        done = False
        for uri in uris:
            try:
                if uri.lower().startswith("mailto:") and self.sendMail is not None:
                    to = uri[7:].split("?")[0]
                    mail = reportMessage(data, fileName, domain, self.sender, self.submitter, to,
                                         reportID, self.clock.seconds())  # fmt: skip
                    ok = await self.sendMail(self.sender, to, mail)
                elif uri.lower().startswith("https:") and self.post is not None:
                    ok = await self.post(uri, data)
                else:
                    continue
            except Exception as e:
                log.info("TLS reports: sending to {uri} failed: {e}", uri=uri, e=e)
                ok = False
            what = "sent" if ok else "not taken"
            log.info("TLS reports: report {id} for {domain} to {uri}: {what}",
                     id=reportID, domain=domain, uri=uri, what=what)  # fmt: skip
            done = done or bool(ok)
        return done
