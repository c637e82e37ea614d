"""
Tests for L{mailframe.app.logformat}: the text and JSON renderings of
events, the buffered observer (on a fake clock), its installation as
twistd's observer, and C{twistd -n mailframe --log-format json} end to end
(a real twistd child process, smtplib, bounded waits).
"""

from __future__ import annotations

import io
import json
import smtplib
from pathlib import Path
from typing import Any

from twisted.application.service import Application
from twisted.internet import task
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import ILogObserver, LogEvent, LogLevel, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from mailframe import events
from mailframe.app import logformat
from mailframe.app.tap import Options
from tests.test_operations import HOST, TWISTD, Twistd, freePort


def event(fmt: str, level: LogLevel = LogLevel.info, **fields: Any) -> LogEvent:
    """An event as twisted.logger makes one."""
    return {"log_format": fmt, "log_level": level, "log_namespace": "mailframe.server",
            "log_time": 1_700_000_000.25, **fields}  # fmt: skip


REFUSED = event(
    "{sessionID} {queueID} refused {stage} from {clientName}[{clientAddress}] helo=<{helo}> "
    "from=<{sender}> to=<{recipient}>: {reply} (by {decider})",
    mfEvent=events.REFUSED, sessionID="S1", queueID="Q1", stage="rcpt", clientName="unknown",
    clientAddress="192.0.2.7", helo="client.example", sender="a@b.example",
    recipient="x@example.com", reply="550 5.1.1 No such user", code=550,
    decider="addresses:/etc/users",
)  # fmt: skip


class RenderTests(SynchronousTestCase):
    def test_sameAsFormatEvent(self) -> None:
        """The fast renderer gives what twisted's formatEvent gives, specs and keys included."""
        cases = [
            REFUSED,
            event("{a:.2f} {b!r} {c[x]:.1f} {{literal}} {d}", a=1.5, b="q", c={"x": 2}, d=None),
            event(
                "{queueID} to=<{recipient}> sent delays={delays[queued]:.2f}/"
                "{delays[transfer]:.2f}",
                queueID="Q",
                recipient="r",
                delays={"queued": 0.5, "transfer": 1.25},
            ),
            event("no fields"),
        ]
        for e in cases:
            self.assertEqual(logformat.render(e), formatEvent(e))

    def test_fallsBack(self) -> None:
        """Formats the renderer does not compile (attributes, missing fields) are twisted's."""
        e = event("{a.real} and {missing}", a=3)
        self.assertEqual(logformat.render(e), formatEvent(e))

    def test_textFallsBack(self) -> None:
        """A text line whose compiled format lacks a field is still a whole line, twisted's text."""
        e = event("{known} and {missing}", known=1)
        logformat.render(event("{known} and {missing}", known=2))  # compiled now
        line = logformat.eventAsText(e)
        self.assertRegex(line, r"^\d{4}-\d\d-\d\dT\S+ \[mailframe.server#info\] ")
        self.assertTrue(line.endswith(formatEvent(e) + "\n"), line)

    def test_text(self) -> None:
        """A text line is twistd's: time, [namespace#level], the text."""
        line = logformat.eventAsText(REFUSED)
        self.assertRegex(
            line, r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} \[mailframe.server#info\] "
        )
        self.assertTrue(line.endswith(" (by addresses:/etc/users)\n"))
        self.assertIn("S1 Q1 refused rcpt from unknown[192.0.2.7]", line)

    def test_json(self) -> None:
        """A decision event as JSON: time, level, namespace, text and every field."""
        obj = json.loads(logformat.eventAsJSON(REFUSED))
        self.assertEqual(obj["time"], "2023-11-14T22:13:20.250000+00:00")
        self.assertEqual((obj["level"], obj["namespace"]), ("info", "mailframe.server"))
        self.assertEqual(obj["text"], formatEvent(REFUSED))
        for key in ("mfEvent", "sessionID", "queueID", "stage", "clientAddress", "helo", "sender",
                    "recipient", "reply", "code", "decider"):  # fmt: skip
            self.assertEqual(obj[key], REFUSED[key])
        self.assertFalse([k for k in obj if k.startswith("log_")])

    def test_jsonOtherEvents(self) -> None:
        """Other events keep only the stable keys (and a failure's traceback)."""
        failure = Failure(ZeroDivisionError("division by zero"))
        e = event("oops {x}", LogLevel.critical, x=1, log_failure=failure)
        obj = json.loads(logformat.eventAsJSON(e))
        self.assertEqual(set(obj), {"time", "level", "namespace", "text", "failure"})
        self.assertIn("ZeroDivisionError", obj["failure"])

    def test_jsonOneLine(self) -> None:
        """Whatever the fields hold, an event is one line of JSON."""
        e = event("{x}", mfEvent=events.ACCEPTED, x="a\nb", obj=object(), s={1})
        text = logformat.eventAsJSON(e)
        self.assertEqual(text.count("\n"), 1)
        self.assertEqual(json.loads(text)["x"], "a\nb")


class BufferTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.out = io.StringIO()
        self.observer = logformat.observerFor("text", self.out, self.clock, interval=0.5)
        self.addCleanup(self.observer.stop)

    def test_buffered(self) -> None:
        """An info line waits for the timer; then everything goes in one write."""
        self.observer(REFUSED)
        self.observer(REFUSED)
        self.assertEqual(self.out.getvalue(), "")
        self.clock.advance(0.5)
        self.assertEqual(self.out.getvalue().count(" refused rcpt "), 2)

    def test_warningAtOnce(self) -> None:
        """A warning is written at once, with what waited before it."""
        self.observer(REFUSED)
        self.observer(event("trouble", LogLevel.warn))
        self.assertEqual(self.out.getvalue().count("\n"), 2)

    def test_announcementsAtOnce(self) -> None:
        """mailframe's own start-up, reload and stop lines are written at once."""
        self.observer(
            {**event("mailframe: reloaded: listening on ..."), "log_namespace": "mailframe"}
        )
        self.assertIn("reloaded", self.out.getvalue())

    def test_stop(self) -> None:
        """Stopping writes what is left, and cancels the timer."""
        self.observer(REFUSED)
        self.observer.stop()
        self.assertIn(" refused rcpt ", self.out.getvalue())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_chunks(self) -> None:
        """A full buffer is written at once, whole lines of at most PIPE_BUF octets per write."""
        writes: list[str] = []

        class Out:
            def write(self, data: str) -> None:
                writes.append(data)

            def flush(self) -> None:
                pass

        observer = logformat.observerFor("text", Out(), self.clock)  # type: ignore[arg-type]
        for _ in range(100):
            observer(REFUSED)
        self.assertGreater(len(writes), 3)
        self.assertTrue(all(len(w) <= 4096 and w.endswith("\n") for w in writes))
        self.clock.advance(0.5)
        self.assertEqual("".join(writes).count(" refused rcpt "), 100)

    def test_json(self) -> None:
        """The JSON observer writes one object per event."""
        observer = logformat.observerFor("json", self.out, None)
        observer(REFUSED)
        self.assertEqual(json.loads(self.out.getvalue())["decider"], "addresses:/etc/users")


class InstallTests(SynchronousTestCase):
    def test_replacesTwistds(self) -> None:
        """Under twistd the observer becomes the application's ILogObserver, writing to --logfile."""
        application = Application("mailframe")
        path = Path(self.mktemp())
        clock = MemoryReactorClock()
        observer = logformat.installFor(application, "json", {"logfile": str(path)}, clock)
        self.assertIs(application.getComponent(ILogObserver), observer)
        observer({**REFUSED, "log_level": LogLevel.error})
        observer.stop()
        self.assertEqual(json.loads(path.read_text())["mfEvent"], "refused")

    def test_twistdsOwnOptionsWin(self) -> None:
        """With --syslog or --logger (or a daemon told to log to stdout), twistd decides."""
        for twistd in ({"syslog": True}, {"logger": "x.y"}, {"logfile": "-"}):
            application = Application("mailframe")
            self.assertIsNone(
                logformat.installFor(application, "json", twistd, MemoryReactorClock())
            )
            self.assertIsNone(application.getComponent(ILogObserver, None))

    def test_setting(self) -> None:
        """log-format is a setting: text by default, json, and nothing else."""
        options = Options()
        options.parseOptions([])
        self.assertEqual(options.logFormat, "text")
        options = Options()
        options.parseOptions(["--log-format", "json"])
        self.assertEqual(options.logFormat, "json")
        from twisted.python import usage

        self.assertRaises(usage.UsageError, Options().parseOptions, ["--log-format", "xml"])


class TwistdTests(SynchronousTestCase):
    """C{twistd -n mailframe --log-format json}: a real child process and smtplib."""

    def setUp(self) -> None:
        if not TWISTD.exists():
            raise self.skipTest("no twistd next to this Python")
        self.cwd = Path(self.mktemp()).absolute()
        self.cwd.mkdir()

    def session(self, *args: str) -> Twistd:
        port = freePort()
        server = Twistd(self, self.cwd, "--listen", f"tcp:{port}:interface={HOST}",
                        "--hostname", "mx.test", "--domain", "example.com",
                        "--deliver", "memory", "--validate", "addresses:users",
                        "--greet-delay", "0", *args)  # fmt: skip
        server.waitForLog("mailframe: listening on ")  # its own: the port may be another's
        with smtplib.SMTP(HOST, port, "client.example", timeout=30) as client:
            client.ehlo("client.example")
            client.mail("alice@sender.example")
            self.assertEqual(client.rcpt("nobody@example.com")[0], 550)
            self.assertEqual(client.rcpt("bob@example.com")[0], 250)
            self.assertEqual(client.data(b"Subject: hi\r\n\r\nHello\r\n")[0], 250)
        server.waitForLog("disconnect from")
        server.stop()
        return server

    def test_json(self) -> None:
        """One JSON object per line; the refused and the accepted recipient, with their fields."""
        (self.cwd / "users").write_text("bob@example.com\n")
        log = self.session("--log-format", "json").log()
        objects = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
        self.assertEqual(len(objects), len(log.splitlines()))  # every line is JSON
        byEvent: dict[str, list[dict[str, Any]]] = {}
        for obj in objects:
            self.assertLessEqual({"time", "level", "namespace", "text"}, set(obj))
            if "mfEvent" in obj:
                byEvent.setdefault(obj["mfEvent"], []).append(obj)
        [refused] = byEvent["refused"]
        [accepted] = byEvent["accepted"]
        self.assertEqual(
            {k: refused[k] for k in ("stage", "clientAddress", "helo", "sender", "recipient", "code")},
            {"stage": "rcpt", "clientAddress": HOST, "helo": "client.example",
             "sender": "alice@sender.example", "recipient": "nobody@example.com", "code": 550},
        )  # fmt: skip
        self.assertTrue(refused["reply"].startswith("550 5.1.1 "))
        self.assertEqual(refused["decider"], "mailframe")  # no validator knew nobody@
        self.assertEqual(accepted["recipients"], ["bob@example.com"])
        self.assertEqual((accepted["clientAddress"], accepted["helo"]), (HOST, "client.example"))
        self.assertEqual(refused["sessionID"], accepted["sessionID"])
        [gone] = byEvent["disconnect"]
        self.assertEqual(gone["commands"]["rcpt"], 2)
        self.assertEqual(gone["failed"], {"rcpt": 1})
        self.assertIn("stopping: 1 messages (1 recipients) accepted, 1 refused", log)

    def test_text(self) -> None:
        """By default twistd's text lines, a readable line per decision."""
        (self.cwd / "users").write_text("bob@example.com\n")
        log = self.session().log()
        self.assertRegex(log, r"\[mailframe.server#info\] \S+ \S+ refused rcpt from unknown\[127.0.0.1\] "
                              r"helo=<client.example> from=<alice@sender.example> to=<nobody@example.com>: "
                              r"550 5.1.1 .* \(by mailframe\)\n")  # fmt: skip
        self.assertRegex(
            log, r" accepted from=<alice@sender.example> to=bob@example.com size=\d+ "
        )
        self.assertRegex(log, r" disconnect from unknown\[127.0.0.1\] ehlo=1 mail=1 rcpt=1/2 data=1 "
                              r"quit=1 commands=5/6 ")  # fmt: skip
        self.assertIn("Server Shut Down.", log)  # the buffer is written at the very end
