"""
Tests for TLS reporting (L{mailframe.client.tlsrpt}, RFC 8460): the rua
record, counting per day and policy domain, the JSON report, its mail
form, sending once the day is over (by mail and HTTPS, kept for a retry,
given up after two days, kept across restarts) on a fake clock; and the
outbound TLS settings (L{mailframe.client.tlsconfig}, the settings of
C{twistd mailframe}) that build DANE, MTA-STS and reporting.
"""

from __future__ import annotations

import email
import gzip
import json
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web import resource, server

from mailframe.app.config import queueSpec
from mailframe.app.settings import convert
from mailframe.client.mtasts import STSPolicy
from mailframe.client.nexthop import Destination
from mailframe.client.relay import SMTPRelay
from mailframe.client.tlsconfig import _poster, daneTrusted, outboundFromConfig
from mailframe.client.tlspolicy import HostPlan
from mailframe.client.tlsrpt import TLSReporter, buildReport, parseRUA, reportMessage
from mailframe.policy._dns import makeResolver
from tests.interop._support import HOST
from tests.test_dane import TLSA

DAY = 86400.0
STS = STSPolicy("example.com", "enforce", ("mx.example.com",), 604800, "id1", 0.0)


def plan(kind: str = "sts", host: str = "mx.example.com", domain: str = "example.com") -> HostPlan:
    policy: Any = {"sts": STS, "tlsa": (TLSA(3, 1, 1, b"\x01" * 32),)}.get(kind)
    return HostPlan(Destination(host, "192.0.2.7"), policyType=kind, policyDomain=domain,
                    policy=policy)  # fmt: skip


class Sink:
    def __init__(self, ok: bool = True) -> None:
        self.ok = ok
        self.sent: list[tuple[Any, ...]] = []

    def mail(self, sender: str, to: str, data: bytes) -> Any:
        self.sent.append(("mail", sender, to, data))
        return defer.succeed(self.ok)

    def post(self, url: str, data: bytes) -> Any:
        self.sent.append(("post", url, data))
        return defer.succeed(self.ok)


class ReporterTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(20000 * DAY + 3600)  # 2024-10-04 01:00 UTC
        self.sink = Sink()
        self.records = [b"v=TLSRPTv1; rua=mailto:tlsrpt@example.com,https://r.example.com/t"]
        self.state = self.mktemp()

    def make(self) -> TLSReporter:
        return TLSReporter(self.clock, "Example Org", "postmaster@relay.test",
                           txt=lambda n: defer.succeed(self.records), sendMail=self.sink.mail,
                           post=self.sink.post, stateDirectory=self.state,
                           sendingIP="198.51.100.1")  # fmt: skip

    def test_rua(self) -> None:
        """The rua of the one TLSRPTv1 record: mailto and https only."""
        self.assertEqual(parseRUA([b"v=TLSRPTv1; rua=mailto:a@b.test, https://x.test/r"]),
                         ["mailto:a@b.test", "https://x.test/r"])  # fmt: skip
        self.assertEqual(parseRUA([b"v=TLSRPTv1;rua=ftp://x"]), [])
        self.assertEqual(parseRUA([b"v=spf1"]), [])
        self.assertEqual(
            parseRUA([b"v=TLSRPTv1; rua=mailto:a@b", b"v=TLSRPTv1; rua=mailto:c@d"]), []
        )

    def test_report(self) -> None:
        """Successes and failures by policy, the failure details, the policy strings."""
        reporter = self.make()
        for _ in range(3):
            reporter.record(plan(), None)
        reporter.record(plan(), "validation-failure")
        reporter.record(plan("tlsa"), "validation-failure")
        reporter.record(plan("no-policy-found"), None)
        reporter.record(HostPlan(Destination("h", "1.2.3.4")), None)  # no policy domain: ignored
        counts = reporter.counts("2024-10-04", "example.com")
        report = buildReport("2024-10-04", "example.com", counts, "Example Org", "c@x", "r1")
        self.assertEqual(report["date-range"]["start-datetime"], "2024-10-04T00:00:00Z")
        byType = {p["policy"]["policy-type"]: p for p in report["policies"]}
        sts = byType["sts"]
        self.assertEqual(sts["summary"], {"total-successful-session-count": 3,
                                          "total-failure-session-count": 1})  # fmt: skip
        self.assertEqual(sts["policy"]["policy-string"][1], "mode: enforce")
        self.assertEqual(sts["policy"]["mx-host"], ["mx.example.com"])
        self.assertEqual(sts["failure-details"], [{
            "result-type": "validation-failure", "sending-mta-ip": "198.51.100.1",
            "receiving-mx-hostname": "mx.example.com", "receiving-ip": "192.0.2.7",
            "failed-session-count": 1}])  # fmt: skip
        self.assertEqual(byType["tlsa"]["policy"]["policy-string"], ["3 1 1 " + "01" * 32])
        self.assertEqual(byType["no-policy-found"]["summary"]["total-successful-session-count"], 1)

    def test_sendingIP(self) -> None:
        """The address of the session, when the relay gives it, is the sending-mta-ip."""
        reporter = self.make()
        reporter.record(plan(), "validation-failure", sendingIP="203.0.113.9")
        reporter.stop()
        (policy,) = reporter.counts("2024-10-04", "example.com").values()
        (failure,) = policy["failures"].values()
        self.assertEqual(failure["sending"], "203.0.113.9")

    def test_sentNextDay(self) -> None:
        """Nothing is sent for today; after midnight, one report by mail and one by HTTPS."""
        reporter = self.make()
        reporter.record(plan(), None)
        self.assertEqual(self.successResultOf(defer.ensureDeferred(reporter.sendDue())), 0)
        reporter.stop()  # no hourly check: sendDue by hand
        self.clock.advance(DAY)
        self.assertEqual(self.successResultOf(defer.ensureDeferred(reporter.sendDue())), 1)
        kinds = [s[0] for s in self.sink.sent]
        self.assertEqual(kinds, ["mail", "post"])
        _, sender, to, data = self.sink.sent[0]
        self.assertEqual((sender, to), ("postmaster@relay.test", "tlsrpt@example.com"))
        mail = email.message_from_bytes(data)
        self.assertEqual(mail.get_content_type(), "multipart/report")
        self.assertEqual(mail.get_param("report-type"), "tlsrpt")
        self.assertEqual(mail["TLS-Report-Domain"], "example.com")
        attachment = mail.get_payload()[1]
        self.assertEqual(attachment.get_content_type(), "application/tlsrpt+gzip")
        self.assertTrue(attachment.get_filename().startswith("relay.test!example.com!"))
        report = json.loads(gzip.decompress(attachment.get_payload(decode=True)))
        self.assertEqual(report["organization-name"], "Example Org")
        posted = json.loads(gzip.decompress(self.sink.sent[1][2]))
        self.assertEqual(posted["policies"], report["policies"])
        self.assertEqual(self.successResultOf(defer.ensureDeferred(reporter.sendDue())), 0)

    def test_retryThenGiveUp(self) -> None:
        """A report not taken is kept and tried again; after two more days it is dropped."""
        self.sink.ok = False
        reporter = self.make()
        reporter.record(plan(), None)
        reporter.stop()
        self.clock.advance(DAY)
        self.successResultOf(defer.ensureDeferred(reporter.sendDue()))
        self.assertTrue(reporter.counts("2024-10-04", "example.com"))
        self.clock.advance(3 * DAY)
        self.successResultOf(defer.ensureDeferred(reporter.sendDue()))
        self.assertFalse(reporter.counts("2024-10-04", "example.com"))

    def test_noRecord(self) -> None:
        """A domain without a TLSRPT record gets nothing, and its counts go."""
        self.records = []
        reporter = self.make()
        reporter.record(plan(), None)
        reporter.stop()
        self.clock.advance(DAY)
        self.successResultOf(defer.ensureDeferred(reporter.sendDue()))
        self.assertEqual(self.sink.sent, [])
        self.assertFalse(reporter.counts("2024-10-04", "example.com"))

    def test_keptAcrossRestarts(self) -> None:
        """Counts are written to the state directory and read by the next reporter."""
        reporter = self.make()
        reporter.record(plan(), None)
        reporter.stop()
        again = self.make()
        self.clock.advance(DAY)
        self.assertEqual(self.successResultOf(defer.ensureDeferred(again.sendDue())), 1)

    def test_hourly(self) -> None:
        """Once counting, the reporter checks every hour by itself, until stopped."""
        reporter = self.make()
        reporter.record(plan(), None)
        self.clock.advance(DAY)
        self.assertEqual(len(self.sink.sent), 2)
        reporter.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_message(self) -> None:
        """The report's mail has the RFC 8460 header fields."""
        data = reportMessage(b"gz", "f.json.gz", "d.test", "a@s.test", "s.test", "r@d.test",
                             "id1@s.test", 0.0)  # fmt: skip
        mail = email.message_from_bytes(data)
        self.assertEqual(mail["TLS-Report-Submitter"], "s.test")
        self.assertIn("Report Domain: d.test Submitter: s.test", mail["Subject"])

    def test_needsBoth(self) -> None:
        """An organisation and a sender address are required."""
        self.assertRaises(ValueError, TLSReporter, self.clock, "", "a@b", txt=lambda n: None)
        self.assertRaises(ValueError, TLSReporter, self.clock, "Org", "nobody", txt=lambda n: None)


class _Collect(resource.Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.got: list[tuple[bytes, bytes]] = []

    def render_POST(self, request: Any) -> bytes:
        self.got.append((request.getHeader(b"content-type"), request.content.read()))
        return b"ok"


class PostTests(TestCase):
    @defer.inlineCallbacks
    def test_post(self) -> Any:
        """The HTTPS sender posts application/tlsrpt+gzip (here over plain HTTP on loopback)."""
        collect = _Collect()
        port = reactor.listenTCP(0, server.Site(collect), interface=HOST)  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        ok = yield defer.ensureDeferred(
            _poster(reactor)(f"http://{HOST}:{port.getHost().port}/r", b"data")
        )
        self.assertTrue(ok)
        self.assertEqual(collect.got, [(b"application/tlsrpt+gzip", b"data")])


class ConfigTests(SynchronousTestCase):
    def test_daneAuto(self) -> None:
        """dane auto: on with a resolver on loopback, off with one elsewhere."""
        local = makeResolver(reactor, [("127.0.0.1", 5353)], hosts=None)
        remote = makeResolver(reactor, [("192.0.2.53", 53)], hosts=None)
        self.assertTrue(daneTrusted(local))
        self.assertFalse(daneTrusted(remote))
        self.assertTrue(outboundFromConfig({}, reactor, local)[0].dane)
        self.assertFalse(outboundFromConfig({}, reactor, remote)[0].dane)
        self.assertTrue(outboundFromConfig({"dane": "yes"}, reactor, remote)[0].dane)
        self.assertFalse(outboundFromConfig({"dane": "no"}, reactor, local)[0].dane)
        self.assertRaises(ValueError, outboundFromConfig, {"dane": "maybe"}, reactor, local)

    def test_mtastsDefault(self) -> None:
        """MTA-STS is on by default, off with mta-sts = no; mta-sts-skip lists domains."""
        resolver = makeResolver(reactor, [("127.0.0.1", 5353)], hosts=None)
        engine, reporter = outboundFromConfig({"mtastsskip": ["a.test"]}, reactor, resolver)
        self.assertIsNotNone(engine.mtasts)
        self.assertFalse(engine.mtasts.enabledFor("x.a.test"))  # type: ignore[union-attr]
        self.assertIsNone(reporter)
        self.assertIsNone(outboundFromConfig({"mtasts": "no"}, reactor, resolver)[0].mtasts)

    def test_relayFromConfig(self) -> None:
        """The relay's table builds the reporter, which sends its mail through the relay."""
        resolver = makeResolver(reactor, [("127.0.0.1", 5353)], hosts=None)
        relay = SMTPRelay.fromConfig({"tlsrpt-org": "Org", "tlsrpt-sender": "a@relay.test",
                                      "tls-state": self.mktemp()}, reactor, "relay.test",
                                     resolver=resolver)  # fmt: skip
        self.assertIsNotNone(relay.reporter)
        self.assertEqual(relay.reporter.sendMail, relay.reportMail)
        self.assertTrue(relay.tlsPolicy.dane)
        self.assertRaises(ValueError, SMTPRelay.fromConfig, {"tlsrpt-org": "Org"}, reactor, "r",
                          resolver=resolver)  # fmt: skip

    def test_workers(self) -> None:
        """With several workers, each keeps its own state in tls-state/worker-K."""
        from mailframe.queue.wiring import QueueWiring

        spec = queueSpec({"spool": self.mktemp(), "mta-sts": True}, None)
        assert spec is not None
        wiring = QueueWiring(task.Clock(), spec, worker=1, workers=2)
        resolver = makeResolver(reactor, [("127.0.0.1", 5353)], hosts=None)
        wiring.finish("relay.test", resolver=resolver)
        assert wiring.relay is not None
        sts = wiring.relay.tlsPolicy.mtasts
        assert sts is not None and sts.stateDirectory is not None
        self.assertTrue(sts.stateDirectory.endswith("tls-state/worker-1"))

    def test_settings(self) -> None:
        """The settings reach the relay's table; tls-state defaults to the spool's."""
        spool = self.mktemp()
        command = {"spool": spool, "dane": convert("dane", "yes"),
                   "mta-sts": convert("mta-sts", "no"),
                   "tlsrpt-org": "Org", "tlsrpt-sender": "a@b.test"}  # fmt: skip
        spec = queueSpec(command, {"relay": {"mta-sts": True}})
        assert spec is not None
        self.assertEqual(spec.relay["dane"], "yes")
        self.assertIs(spec.relay["mta-sts"], False)
        self.assertTrue(spec.relay["tls-state"].endswith("tls-state"))
        from mailframe.plugins import SettingError

        self.assertRaises(SettingError, queueSpec, {"spool": spool, "tlsrpt-org": "Org"}, None)
