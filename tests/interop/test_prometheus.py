"""
C{twistd -n mailframe --metrics ...} scraped over loopback while smtplib
sends mail: by a plain HTTP GET (what C{curl 127.0.0.1:PORT/metrics}
shows), parsed with prometheus-client's parser, and by a real Prometheus
server (Debian's C{prometheus}) started with a private configuration and
storage in a temporary directory, listening on 127.0.0.1 only, scraping
every second; its HTTP API (C{/api/v1/query}) is asked until the counters
are seen.  Every wait is bounded.
"""

from __future__ import annotations

import json
import shutil
import smtplib
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import SynchronousTestCase

from tests.interop._mailpeers import (
    HOST,
    Twistd,
    freePort,
    listening,
    scratch,
    stopProcess,
    unavailable,
    waitFor,
)

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
WAIT = 60.0


def get(url: str, accept: str | None = None) -> bytes:
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(request, timeout=10) as response:
        body: bytes = response.read()
        return body


def scraped(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of mailframe's /metrics, as curl would show it, parsed."""
    text = get(f"http://{HOST}:{port}/metrics").decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sendMail(port: int, recipients: list[str]) -> dict[str, Any]:
    with smtplib.SMTP(HOST, port, timeout=30) as client:
        refused = client.sendmail(
            "sender@example.org", recipients, b"Subject: metrics\r\n\r\nhello\r\n"
        )
    return refused


class PrivatePrometheus:
    """Prometheus with its own configuration and storage in C{directory}, on 127.0.0.1."""

    def __init__(self, directory: Path, target: int) -> None:
        self.directory = directory
        self.port = freePort()
        self.log = directory / "prometheus.log"
        self.config = directory / "prometheus.yml"
        self.config.write_text(
            "global:\n"
            "  scrape_interval: 1s\n"
            "  scrape_timeout: 1s\n"
            "  evaluation_interval: 1s\n"
            "scrape_configs:\n"
            "  - job_name: mailframe\n"
            "    static_configs:\n"
            f"      - targets: ['{HOST}:{target}']\n"
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [PROMETHEUS, f"--config.file={self.config}",
                 f"--storage.tsdb.path={self.directory / 'data'}",
                 f"--web.listen-address={HOST}:{self.port}"],
                cwd=self.directory, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        process = self.process

        def ready() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"prometheus exited ({process.returncode}):\n{self.text()}")
            try:
                return get(f"http://{HOST}:{self.port}/-/ready").startswith(b"Prometheus")
            except OSError:
                return False

        waitFor(ready, WAIT, "Prometheus to be ready")

    def query(self, expression: str) -> list[dict[str, Any]]:
        """The result of an instant query (a vector)."""
        url = f"http://{HOST}:{self.port}/api/v1/query?" + urllib.parse.urlencode(
            {"query": expression}
        )
        answer = json.loads(get(url))
        if answer.get("status") != "success":
            raise AssertionError(f"query {expression!r} failed: {answer}")
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def value(self, expression: str) -> float | None:
        result = self.query(expression)
        return float(result[0]["value"][1]) if result else None

    def targets(self) -> list[dict[str, Any]]:
        answer = json.loads(get(f"http://{HOST}:{self.port}/api/v1/targets"))
        targets: list[dict[str, Any]] = answer["data"]["activeTargets"]
        return targets

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        if self.process is not None:
            stopProcess(self.process)


class PrometheusTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = scratch("mailframe-prometheus-")
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.smtp, self.metrics = freePort(), freePort()
        self.twistd = Twistd(
            self.directory,
            "--listen", f"tcp:{self.smtp}:interface={HOST}",
            "--metrics", f"tcp:{self.metrics}:interface={HOST}",
            "--domain", "example.com", "--deliver", "maildir:./Maildir",
            "--greet-delay", "0", "--hostname", "mx.example.com",
        )  # fmt: skip
        self.addCleanup(self.twistd.stop)
        self.twistd.start(lambda: listening(self.smtp) and listening(self.metrics))

    def accepted(self) -> float:
        return scraped(self.metrics).get(
            ("mailframe_messages_accepted_total", frozenset({("listener", "smtp")})), 0.0
        )

    def test_countersMove(self) -> None:
        """/metrics over loopback: the counters move as smtplib sends mail."""
        self.assertEqual(self.accepted(), 0.0)
        smtp = ("listener", "smtp")
        connections = ("mailframe_connections_total", frozenset({smtp}))
        before = scraped(self.metrics)[connections]  # the start-up probe connected
        refused = sendMail(self.smtp, ["user@example.com", "someone@elsewhere.example"])
        self.assertEqual(list(refused), ["someone@elsewhere.example"])
        # the session's counters come with its disconnect: wait for it
        waitFor(
            lambda: scraped(self.metrics).get(
                (
                    "mailframe_commands_total",
                    frozenset({("listener", "smtp"), ("command", "quit")}),
                )
            ),
            WAIT,
            "the session's end to be counted",
        )
        samples = scraped(self.metrics)
        self.assertEqual(samples[("mailframe_messages_accepted_total", frozenset({smtp}))], 1)
        self.assertEqual(samples[("mailframe_recipients_accepted_total", frozenset({smtp}))], 1)
        self.assertEqual(
            samples[("mailframe_recipients_refused_total", frozenset({smtp, ("code", "550")}))],
            1,
        )
        self.assertEqual(samples[connections], before + 1)
        self.assertEqual(samples[("mailframe_connections_open", frozenset({smtp}))], 0)
        self.assertEqual(
            samples[("mailframe_commands_total", frozenset({smtp, ("command", "rcpt")}))], 2
        )
        sendMail(self.smtp, ["user@example.com"])
        self.assertEqual(self.accepted(), 2)
        openMetrics = get(
            f"http://{HOST}:{self.metrics}/metrics", "application/openmetrics-text;version=1.0.0"
        )
        self.assertTrue(openMetrics.endswith(b"# EOF\n"))

    def test_prometheusScrapes(self) -> None:
        """A real Prometheus scrapes the metrics and sees the accepted-messages counter move."""
        if not Path(PROMETHEUS).exists():
            raise unavailable("Prometheus is not installed (Debian package prometheus)")
        prometheus = PrivatePrometheus(self.directory, self.metrics)
        self.addCleanup(prometheus.stop)
        prometheus.start()
        waitFor(
            lambda: prometheus.value('up{job="mailframe"}') == 1,
            WAIT,
            "Prometheus to scrape mailframe",
            interval=0.25,
        )
        [target] = prometheus.targets()
        self.assertEqual((target["health"], target["lastError"]), ("up", ""))
        accepted = 'mailframe_messages_accepted_total{listener="smtp"}'
        sendMail(self.smtp, ["user@example.com"])
        waitFor(lambda: prometheus.value(accepted) == 1, WAIT, "Prometheus to see 1", 0.25)
        sendMail(self.smtp, ["user@example.com", "other@example.com"])
        waitFor(lambda: prometheus.value(accepted) == 2, WAIT, "Prometheus to see 2", 0.25)
        recipients = prometheus.value('mailframe_recipients_accepted_total{listener="smtp"}')
        self.assertEqual(recipients, 3)
        queue = prometheus.query("mailframe_plugin_seconds_count")
        self.assertTrue(queue, "no plug-in latency series in Prometheus")
