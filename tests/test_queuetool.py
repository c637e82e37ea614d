"""
Tests for L{mailframe.queue.control}, L{mailframe.queue.offline} and
L{mailframe.app.queuetool}: the AMP commands against a runner on a
C{task.Clock} (client and server connected in memory), the tool's output
and exit status, its offline mode on the spool's files (and the lock that
keeps it away from a running server), the control service's lock and
socket, and one round trip over a real UNIX socket.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.internet.testing import MemoryReactorClock
from twisted.protocols import amp
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mailframe.app.queuetool import (
    connectControl,
    duration,
    formatEntry,
    headerLines,
    main,
    parser,
    run,
    spoolDirectories,
)
from mailframe.backends.memory import MemoryBackend
from mailframe.queue import LOCAL, QueueRunner, QueueService, ReportSettings, Spool
from mailframe.queue.control import (
    ControlledQueueService,
    ControlProtocol,
    DeleteEntry,
    ListQueue,
    LongJSON,
    NoSuchEntry,
    QueueControl,
    ShowEntry,
    SpoolBusy,
    lockHolder,
    lockSpool,
)
from mailframe.queue.entry import QueueEntry
from mailframe.reply import Reply
from tests.test_queue import LATER, OK, FakeRelay, QueueCase, envelope
from tests.test_spool import makeEntry, syncWorker

BODY = b"From: s@example.com\r\nSubject: caf\xc3\xa9\r\n\tfolded\r\n\r\nHello\r\n"


class ToolCase(QueueCase):
    """A runner on a Clock, and mailframe-queue talking to it in memory."""

    def setUp(self) -> None:
        super().setUp()
        self.pumps: list[iosim.IOPump] = []
        self.serverUp = True

    async def connect(self, clock: Any, path: str, timeout: float) -> amp.AMP | None:
        if not self.serverUp:
            return None
        server = ControlProtocol(self.runner)
        client = amp.AMP()
        pump = iosim.connect(
            server, iosim.makeFakeServer(server), client, iosim.makeFakeClient(client),
            greet=False,
        )  # fmt: skip
        self.pumps.append(pump)
        return client

    def tool(self, *argv: str, pump: bool = True) -> tuple[int, str, str]:
        """Run mailframe-queue: (exit status, stdout, stderr)."""
        args = parser().parse_args(["--spool", self.path, *argv])
        out, err = io.StringIO(), io.StringIO()
        d = defer.ensureDeferred(run(self.clock, args, out, err, connect=self.connect))
        for _ in range(100):
            if d.called or not pump:
                break
            for p in self.pumps:
                p.flush()
        return self.successResultOf(d), out.getvalue(), err.getvalue()

    def call(self, command: type[amp.Command], **kwargs: Any) -> Any:
        """One AMP command: a Deferred of the answer, or of the error."""
        client = self.successResultOf(defer.ensureDeferred(self.connect(None, "", 1)))
        assert client is not None
        d = client.callRemote(command, **kwargs)
        answers: list[Any] = []
        d.addBoth(answers.append)  # handled before it fires (or AMP drops the connection)
        self.pumps[-1].flush()
        [answer] = answers
        return defer.fail(answer) if isinstance(answer, Failure) else defer.succeed(answer)

    def deferred(self, body: bytes = BODY) -> QueueEntry:
        """A message whose first attempt got 451 (next attempt in 300 s)."""
        self.relay.answer = lambda a: LATER
        self.send(envelope("s@example.com", "a@remote.example", "b@remote.example"), body)
        return list(self.runner.entries.values())[-1]

    def onDisk(self, entryID: str) -> QueueEntry:
        with open(os.path.join(self.path, "queue", entryID + ".json"), "rb") as f:
            return QueueEntry.fromBytes(f.read())


class ControlProtocolTests(ToolCase):
    """The AMP commands, against the runner."""

    def test_listPages(self) -> None:
        """ListQueue gives pages, oldest first, with the server's clock."""
        for _ in range(3):
            self.deferred()
            self.clock.advance(1)
        first = self.successResultOf(self.call(ListQueue, limit=2))
        self.assertEqual((len(first["entries"]), first["more"]), (2, True))
        self.assertEqual(first["now"], self.clock.seconds())
        last = first["entries"][-1]
        rest = self.successResultOf(
            self.call(ListQueue, limit=2, afterArrival=last["arrival"], afterID=last["id"])
        )
        self.assertEqual((len(rest["entries"]), rest["more"]), (1, False))
        ids = [e["id"] for e in first["entries"] + rest["entries"]]
        byArrival = sorted(self.runner.entries.values(), key=lambda e: e.arrival)
        self.assertEqual(ids, [e.id for e in byArrival])
        entry = rest["entries"][0]
        self.assertEqual(entry["spool"], self.spool.path)
        self.assertEqual(entry["scheduled"], self.runner.scheduledAt(entry["id"]))
        self.assertFalse(entry["underWay"])
        self.assertEqual(entry["recipients"][0]["reply"], [451, "4.4.1", ["Try again later"]])

    def test_show(self) -> None:
        """ShowEntry gives the envelope and the message's first octets; an unknown id fails."""
        entry = self.deferred()
        answer = self.successResultOf(self.call(ShowEntry, id=entry.id))
        self.assertEqual(answer["entry"]["id"], entry.id)
        self.assertEqual(answer["head"], BODY)
        self.failureResultOf(self.call(ShowEntry, id="nope"), NoSuchEntry)
        self.failureResultOf(self.call(DeleteEntry, id="nope"), NoSuchEntry)

    def test_longJSON(self) -> None:
        """A JSON value larger than an AMP value (65535 octets) goes over several keys."""
        value = {"x": "é" * 100_000}
        box: dict[bytes, bytes] = {}
        LongJSON().toBox(b"v", box, {"v": value}, None)
        self.assertEqual(sorted(box), [b"v", b"v.1", b"v.2", b"v.3"])
        self.assertTrue(all(len(v) <= 65535 for v in box.values()))
        objects: dict[str, Any] = {}
        LongJSON().fromBox(b"v", dict(box), objects, None)
        self.assertEqual(objects["v"], value)

    def test_manyRecipients(self) -> None:
        """A message whose description is larger than one AMP value is listed whole."""
        rcpts = [f"r{i:04d}-{'x' * 40}@remote.example" for i in range(1500)]
        self.relay.answer = lambda a: LATER
        self.send(envelope("s@example.com", *rcpts))
        [entry] = self.successResultOf(self.call(ListQueue, limit=10))["entries"]
        self.assertEqual(len(entry["recipients"]), 1500)


class ToolTests(ToolCase):
    """mailframe-queue against a running server (in memory)."""

    def test_listLine(self) -> None:
        """list: one line per message: id, age, size, next attempt, sender, recipients' replies."""
        entry = self.deferred()
        self.clock.advance(75)
        status, out, err = self.tool("list")
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(
            out,
            f"{entry.id}  1m  {len(BODY)}  next in 3m  <s@example.com> -> "
            "<a@remote.example> 451 4.4.1 Try again later; "
            "<b@remote.example> 451 4.4.1 Try again later\n",
        )

    def test_listStates(self) -> None:
        """Recipients done show their state; held and untried messages say so."""
        answers = {"a@remote.example": OK, "b@remote.example": LATER}
        self.relay.answer = lambda a: answers[a]
        self.send(envelope("s@example.com", "a@remote.example", "b@remote.example"))
        [entry] = self.runner.entries.values()
        self.successResultOf(self.runner.hold(entry.id))
        self.runner.stop()
        self.send(envelope("", "c@remote.example"))
        _, out, _ = self.tool("list")
        first, second = out.splitlines()
        self.assertIn("  held  <s@example.com> -> <a@remote.example> relayed; <b@remote", first)
        self.assertIn("  next now  <> -> <c@remote.example> not tried yet", second)

    def test_listJSON(self) -> None:
        """list --json: one JSON object per message, with the server's clock."""
        entry = self.deferred()
        _, out, _ = self.tool("list", "--json")
        [line] = out.splitlines()
        data = json.loads(line)
        self.assertEqual(data["id"], entry.id)
        self.assertEqual(data["now"], self.clock.seconds())
        self.assertEqual(data["nextAttempt"], entry.nextAttempt)
        self.assertEqual(data["recipients"][1]["state"], "pending")
        self.assertFalse(data["held"])

    def test_replySanitised(self) -> None:
        """Control characters in a remote server's reply never reach the terminal."""
        self.relay.answer = lambda a: Reply(451, (4, 0, 0), "bad\x1b[2Jnews\x07")
        self.send(envelope("s@example.com", "a@remote.example"))
        _, out, _ = self.tool("list")
        self.assertIn("451 4.0.0 bad?[2Jnews?\n", out)

    def test_show(self) -> None:
        """show: the envelope field by field, a blank line, the first header lines."""
        entry = self.deferred()
        status, out, _ = self.tool("show", entry.id, "--lines", "3")
        self.assertEqual(status, 0)
        head, _, headers = out.partition("\n\n")
        self.assertEqual(headers.splitlines(), ["From: s@example.com", "Subject: café", " folded"])
        self.assertIn(f"id:          {entry.id}\n", head)
        self.assertIn("status:      next in 5m\n", head)
        self.assertIn("recipient:   <a@remote.example>\n  state:     pending\n", head)
        self.assertIn("  reply:     451 4.4.1 Try again later (from mx.remote [192.0.2.7])", head)
        _, out, _ = self.tool("show", entry.id, "--json")
        self.assertEqual(json.loads(out)["headers"][1], "Subject: café")

    def test_flush(self) -> None:
        """flush: every message tried now."""
        self.deferred()
        status, out, _ = self.tool("flush")
        self.assertEqual((status, out), (0, "1 message(s) to be tried now\n"))
        self.clock.advance(0)
        self.assertEqual(len(self.relay.calls), 2)

    def test_holdRelease(self) -> None:
        """hold and release go through the runner; the envelope on disk follows."""
        entry = self.deferred()
        self.assertEqual(self.tool("hold", entry.id)[:2], (0, f"held {entry.id}\n"))
        self.assertEqual(self.tool("hold", entry.id)[1], f"{entry.id} was held already\n")
        self.assertTrue(self.onDisk(entry.id).held)
        self.assertIsNone(self.runner.scheduledAt(entry.id))
        self.assertEqual(self.tool("release", entry.id)[1], f"released {entry.id}\n")
        self.assertFalse(self.runner.entries[entry.id].held)

    def test_delete(self) -> None:
        """delete ID and delete --all remove messages through the runner."""
        entry = self.deferred()
        self.deferred()
        self.assertEqual(self.tool("delete", entry.id)[:2], (0, f"deleted {entry.id}\n"))
        self.assertNotIn(entry.id, self.runner.entries)
        self.assertEqual(self.tool("delete", "--all")[:2], (0, "deleted 1 message(s)\n"))
        self.assertEqual((self.runner.entries, self.queued()), ({}, []))

    def test_unknownID(self) -> None:
        """An unknown id: exit status 1 and one line; the other ids are still done."""
        entry = self.deferred()
        status, out, err = self.tool("hold", "nope", entry.id)
        self.assertEqual(status, 1)
        self.assertEqual(err, "mailframe-queue: no message nope in the queue\n")
        self.assertEqual(out, f"held {entry.id}\n")

    def test_serverTimeout(self) -> None:
        """A server that does not answer: exit status 1 after --timeout, one line."""
        args = parser().parse_args(["--spool", self.path, "--timeout", "2", "list"])
        out, err = io.StringIO(), io.StringIO()
        d = defer.ensureDeferred(run(self.clock, args, out, err, connect=self.connect))
        self.assertNoResult(d)  # the pump is never flushed
        self.clock.advance(2)
        self.assertEqual(self.successResultOf(d), 1)
        self.assertEqual(
            err.getvalue(),
            f"mailframe-queue: {self.spool.path}: the server did not answer in 2 s\n",
        )


class SummaryTests(ToolCase):
    """summary: the queue by domain and age, like qshape."""

    def test_empty(self) -> None:
        """An empty queue says so."""
        status, out, err = self.tool("summary")
        self.assertEqual((status, out, err), (0, "The queue is empty.\n", ""))

    def test_table(self) -> None:
        """Pending recipients by domain (most first) and age bucket, a TOTAL row first."""
        self.relay.answer = lambda a: LATER
        self.send(envelope("s@example.com", "a@remote.example", "b@remote.example"))
        self.clock.advance(25 * 60)  # 25 minutes: the 40 bucket
        self.send(envelope("s@other.example", "c@Remote.Example", "d@far.example"))
        self.clock.advance(3 * 60)  # the second one is 3 minutes old: the 5 bucket
        status, out, _ = self.tool("summary")
        self.assertEqual(status, 0)
        lines = out.splitlines()
        self.assertEqual(lines[0].split(), ["T", "5", "10", "20", "40", "80", "160", "320", "640",
                                            "1280", "1280+"])  # fmt: skip
        self.assertEqual(lines[1].split(), ["TOTAL", "4", "2", "0", "0", "2"] + ["0"] * 6)
        self.assertEqual(lines[2].split(), ["remote.example", "3", "1", "0", "0", "2"] + ["0"] * 6)
        self.assertEqual(lines[3].split(), ["far.example", "1", "1"] + ["0"] * 9)
        self.assertEqual(lines[4], "2 message(s); ages in minutes, each column up to its head")
        self.assertEqual(len({len(line) for line in lines[:4]}), 1)  # aligned
        _, out, _ = self.tool("summary", "--senders", "--minutes", "10", "--buckets", "3")
        lines = out.splitlines()
        self.assertEqual(lines[0].split(), ["T", "10", "20", "20+"])
        self.assertEqual(lines[2].split(), ["example.com", "2", "0", "0", "2"])
        self.assertEqual(lines[3].split(), ["other.example", "2", "2", "0", "0"])

    def test_heldAndDone(self) -> None:
        """Held messages are counted apart; recipients already delivered are not counted."""
        answers = {"a@remote.example": OK, "b@remote.example": LATER}
        self.relay.answer = lambda a: answers[a]
        self.send(envelope("s@example.com", "a@remote.example", "b@remote.example"))
        [entry] = self.runner.entries.values()
        _, out, _ = self.tool("summary")
        self.assertEqual(out.splitlines()[2].split()[:2], ["remote.example", "1"])
        self.successResultOf(self.runner.hold(entry.id))
        _, out, _ = self.tool("summary")
        self.assertEqual(out, "The queue is empty (1 held message(s) not counted).\n")

    def test_json(self) -> None:
        """summary --json: one object with the buckets, the total and each domain's counts."""
        self.deferred()
        _, out, _ = self.tool("summary", "--json", "--buckets", "2")
        self.assertEqual(
            json.loads(out),
            {"buckets": [5], "total": [2, 2, 0], "domains": {"remote.example": [2, 2, 0]},
             "messages": 1, "held": 0},
        )  # fmt: skip

    def test_badBuckets(self) -> None:
        """--buckets and --minutes are whole numbers from 1."""
        self.patch(sys, "stderr", io.StringIO())
        for argv in (["--buckets", "0"], ["--minutes", "x"]):
            with self.assertRaises(SystemExit):
                parser().parse_args(["summary", *argv])


class OfflineTests(ToolCase):
    """No server answers: the tool works on the files, under the spool's lock."""

    def setUp(self) -> None:
        super().setUp()
        self.serverUp = False

    def test_list(self) -> None:
        """list reads the envelopes; no lock is needed to read."""
        entry = self.deferred()
        self.runner.stop()
        self.addCleanup(os.close, lockSpool(self.path, "server"))
        status, out, err = self.tool("list")
        self.assertEqual(status, 0)
        self.assertTrue(out.startswith(f"{entry.id}  0s  {len(BODY)}  next in 5m  <s@example"))
        self.assertIn("holds the spool and does not answer on its control socket", err)

    def test_corruptEnvelope(self) -> None:
        """An envelope that cannot be read is a warning; the others are listed."""
        entry = self.deferred()
        for suffix in (".json", ".msg"):
            with open(os.path.join(self.path, "queue", "BAD" + suffix), "wb") as f:
                f.write(b"{not json")
        status, out, err = self.tool("list")
        self.assertEqual((status, out.split()[0]), (0, entry.id))
        self.assertIn("BAD: unreadable envelope: not JSON", err)

    def test_hold(self) -> None:
        """hold writes the envelope via tmp/ and a rename; a server then leaves it alone."""
        entry = self.deferred()
        self.runner.stop()
        self.assertEqual(self.tool("hold", entry.id)[:2], (0, f"held {entry.id}\n"))
        self.assertTrue(self.onDisk(entry.id).held)
        self.assertEqual(os.listdir(os.path.join(self.path, "tmp")), [])
        self.assertEqual(self.tool("hold", entry.id)[1], f"{entry.id} was held already\n")
        self.relay = FakeRelay()
        self.start()
        self.clock.advance(86400)
        self.assertEqual(self.relay.calls, [])
        self.runner.stop()
        self.assertEqual(self.tool("release", entry.id)[1], f"released {entry.id}\n")
        self.start()
        self.clock.advance(0)
        self.assertEqual(len(self.relay.calls), 1)

    def test_flush(self) -> None:
        """flush makes every message not held due, for the next start."""
        entry = self.deferred()
        self.runner.stop()
        self.assertEqual(
            self.tool("flush")[:2],
            (0, "1 message(s) to be tried now (when the server starts)\n"),
        )
        self.assertEqual(self.onDisk(entry.id).nextAttempt, self.clock.seconds())

    def test_delete(self) -> None:
        """delete removes both files; an unknown id is exit status 1."""
        entry = self.deferred()
        self.deferred()
        self.runner.stop()
        self.assertEqual(self.tool("delete", entry.id)[:2], (0, f"deleted {entry.id}\n"))
        self.assertEqual(len(self.queued()), 2)
        self.assertEqual(self.tool("delete", entry.id)[0], 1)
        self.assertEqual(self.tool("delete", "--all")[1], "deleted 1 message(s)\n")
        self.assertEqual(self.queued(), [])

    def test_serverHoldsLock(self) -> None:
        """A server that holds the lock and does not answer: waited for, then an error; nothing changed."""
        entry = self.deferred()
        before = self.onDisk(entry.id).toBytes()
        lock = lockSpool(self.path, "server")
        self.addCleanup(os.close, lock)
        args = parser().parse_args(["--spool", self.path, "--timeout", "1", "delete", entry.id])
        out, err = io.StringIO(), io.StringIO()
        d = defer.ensureDeferred(run(self.clock, args, out, err, connect=self.connect))
        self.clock.pump([0.1] * 9)
        self.assertNoResult(d)
        self.clock.pump([0.1] * 2)
        self.assertEqual(self.successResultOf(d), 1)
        self.assertEqual(
            err.getvalue(),
            f"mailframe-queue: {self.spool.path}: in use by pid {os.getpid()} (server), which "
            "does not answer on its control socket (starting or stopping?); nothing changed\n",
        )
        self.assertEqual(self.onDisk(entry.id).toBytes(), before)

    def test_lockWhileChanging(self) -> None:
        """While the tool changes files it holds the lock: a server cannot take it."""
        entry = self.deferred()
        seen: list[str] = []
        original = os.rename

        def rename(source: str, target: str) -> None:
            try:
                os.close(lockSpool(self.path, "server"))
            except SpoolBusy as e:
                seen.append(e.holder)
            original(source, target)

        self.patch(os, "rename", rename)
        self.tool("hold", entry.id)
        self.assertEqual(seen, [f"pid {os.getpid()} (mailframe-queue)"])
        os.close(lockSpool(self.path, "server"))  # and lets go after


class SpoolDirectoryTests(SynchronousTestCase):
    """Where the spools are: the directory itself, or one per worker."""

    def test_workers(self) -> None:
        """worker-K spools in worker order; the tool asks each; ids are found in any."""
        base = self.mktemp()
        for k in (10, 2):
            spool = Spool(os.path.join(base, f"worker-{k}"), None, worker=syncWorker)
            self.successResultOf(spool.start())
            self.successResultOf(spool.add(makeEntry(f"W{k}", arrival=float(k)), b"x\r\n"))
        os.makedirs(os.path.join(base, "worker-x", "queue"))
        self.assertEqual(
            spoolDirectories(base),
            [os.path.abspath(os.path.join(base, w)) for w in ("worker-2", "worker-10")],
        )
        out, err = io.StringIO(), io.StringIO()
        args = parser().parse_args(["--spool", base, "list"])
        self.assertEqual(
            self.successResultOf(defer.ensureDeferred(run(task.Clock(), args, out, err))), 0
        )
        self.assertEqual([line.split()[0] for line in out.getvalue().splitlines()], ["W2", "W10"])
        args = parser().parse_args(["hold", "W10", "--spool", base])
        self.assertEqual(
            self.successResultOf(defer.ensureDeferred(run(task.Clock(), args, out, err))), 0
        )
        self.assertIn("held W10\n", out.getvalue())

    def test_notASpool(self) -> None:
        """A directory that is no spool, or none at all: exit status 1, one line."""
        for path in (self.mktemp(), os.path.dirname(os.path.abspath(self.mktemp()))):
            out, err = io.StringIO(), io.StringIO()
            args = parser().parse_args(["--spool", path, "list"])
            d = defer.ensureDeferred(run(task.Clock(), args, out, err))
            self.assertEqual(self.successResultOf(d), 1)
            self.assertEqual(len(err.getvalue().splitlines()), 1)
            self.assertTrue(err.getvalue().startswith("mailframe-queue: "))


class CommandLineTests(SynchronousTestCase):
    """Usage errors are exit status 2; the formatting helpers."""

    def usage(self, *argv: str) -> str:
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        e = self.assertRaises(SystemExit, main, list(argv))
        self.assertEqual(e.code, 2)
        return stderr.getvalue()

    def test_usage(self) -> None:
        """Bad ids, delete without ids or --all, an unknown command: exit status 2."""
        self.assertIn("not a queue id: '../x'", self.usage("delete", "../x"))
        self.assertIn("give message ids or --all", self.usage("delete"))
        self.assertIn("give message ids or --all", self.usage("delete", "--all", "A"))
        self.usage("frobnicate")
        self.usage("hold")
        self.usage("--timeout", "0", "list")

    def test_optionsAfterCommand(self) -> None:
        """--spool and --timeout work before and after the command; defaults otherwise."""
        args = parser().parse_args(["list", "--spool", "s", "--timeout", "3"])
        self.assertEqual((args.spool, args.timeout), ("s", 3.0))
        args = parser().parse_args(["--spool", "t", "list"])
        self.assertEqual((args.spool, args.timeout), ("t", 10.0))
        self.assertEqual(parser().parse_args(["flush"]).spool, "./spool")

    def test_helpers(self) -> None:
        """Durations, header lines (tabs kept as spaces, at most N), one-line entries."""
        self.assertEqual([duration(s) for s in (-1, 59, 61, 7980, 273600)],
                         ["0s", "59s", "1m", "2h13m", "3d4h"])  # fmt: skip
        self.assertEqual(headerLines(b"A: 1\r\n\tb\r\nC: \x1b\r\n\r\nbody", 5),
                         ["A: 1", " b", "C: ?"])  # fmt: skip
        self.assertEqual(headerLines(b"A: 1\nB: 2\nC: 3\n", 2), ["A: 1", "B: 2"])
        entry = makeEntry("E1", arrival=100.0).toJSON()
        entry.update(scheduled=None, underWay=True, spool="/s")
        self.assertEqual(formatEntry(entry, 160.0),
                         "E1  1m  0  sending  <sender@example.org> -> "
                         "<rcpt@example.com> not tried yet")  # fmt: skip

    def test_script(self) -> None:
        """python -m mailframe.app.queuetool runs main: offline list of an empty spool, exit 0."""
        spool = self.mktemp()
        os.makedirs(os.path.join(spool, "queue"))
        result = subprocess.run(
            [sys.executable, "-m", "mailframe.app.queuetool", "--spool", spool, "list"],
            capture_output=True, timeout=60, check=False,
        )  # fmt: skip
        self.assertEqual((result.returncode, result.stdout, result.stderr), (0, b"", b""))
        result = subprocess.run(
            [sys.executable, "-m", "mailframe.app.queuetool", "--spool", spool, "show", "X"],
            capture_output=True, timeout=60, check=False,
        )  # fmt: skip
        self.assertEqual(result.returncode, 1)
        self.assertEqual(result.stderr, b"mailframe-queue: no message X in the queue\n")


class ServiceTests(SynchronousTestCase):
    """ControlledQueueService: the lock before the spool is read, the socket after."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.path = os.path.abspath(self.mktemp())

    def service(self, lockWait: float = 0.0) -> ControlledQueueService:
        spool = Spool(self.path, self.reactor, worker=syncWorker)
        runner = QueueRunner(self.reactor, spool, MemoryBackend(), None, lambda a: LOCAL,
                             ReportSettings("x"))  # fmt: skip
        return ControlledQueueService(runner, QueueControl(self.reactor, self.path, lockWait))

    def test_startStop(self) -> None:
        """The lock at privileged start, the 0600 socket once the runner runs; both go at stop."""
        service = self.service()
        self.assertIsInstance(service, QueueService)
        service.privilegedStartService()
        self.assertEqual(lockHolder(self.path), f"pid {os.getpid()} (server)")
        self.assertRaises(SpoolBusy, lockSpool, self.path, "mailframe-queue")
        self.assertEqual(self.reactor.unixServers, [])
        service.startService()
        [(address, factory, _, mode, _)] = self.reactor.unixServers
        self.assertEqual((address, mode), (os.path.join(self.path, "control.sock"), 0o600))
        self.assertIsInstance(factory.buildProtocol(None), ControlProtocol)
        service.stopService()
        os.close(lockSpool(self.path, "mailframe-queue"))

    def test_secondServer(self) -> None:
        """A second server on a spool in use exits with one line."""
        first = self.service()
        first.privilegedStartService()
        self.addCleanup(first.control.unlock)
        e = self.assertRaises(SystemExit, self.service().privilegedStartService)
        self.assertEqual(
            e.code,
            f"mailframe: cannot use the spool: the spool {self.path} is in use by "
            f"pid {os.getpid()} (server)",
        )

    def test_noSocket(self) -> None:
        """A socket that cannot be made (a path too long ...) is a warning; the queue runs."""
        self.path = os.path.join(os.path.abspath(self.mktemp()), "x" * 120)
        service = self.service()
        service.control.reactor = reactor
        service.startService()
        self.addCleanup(service.stopService)
        self.assertTrue(service.runner.running)  # type: ignore[union-attr]
        self.assertIsNone(service.control.port)
        self.flushLoggedErrors()


class RealSocketTests(TestCase):
    """The control socket over a real UNIX socket, in the trial reactor."""

    def setUp(self) -> None:
        self.path = tempfile.mkdtemp(prefix="mfq", dir="/tmp")  # a short socket path
        self.addCleanup(shutil.rmtree, self.path, True)

    def staleSocket(self) -> str:
        """The socket file a crash leaves behind: connecting to it is refused."""
        path = os.path.join(self.path, "control.sock")
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(path)
        stale.close()
        return path

    @defer.inlineCallbacks
    def test_staleSocket(self) -> Any:
        """A socket no server listens on means no server (the offline mode)."""
        self.staleSocket()
        protocol = yield defer.ensureDeferred(connectControl(reactor, self.path, 5))
        self.assertIsNone(protocol)

    @defer.inlineCallbacks
    def test_roundTrip(self) -> Any:
        """A stale socket is replaced; list and hold work over the socket; it goes at stop."""
        self.staleSocket()
        first = Spool(self.path, None, worker=syncWorker)
        self.successResultOf(first.start())
        entry = makeEntry("R1", arrival=reactor.seconds())  # type: ignore[attr-defined]
        self.successResultOf(first.add(entry, b"Subject: x\r\n\r\n"))
        spool = Spool(self.path, reactor, worker=syncWorker)
        runner = QueueRunner(reactor, spool, MemoryBackend(), None, lambda a: "mx remote",
                             ReportSettings("x"))  # fmt: skip
        service = ControlledQueueService(runner, QueueControl(reactor, self.path, 0))
        service.startService()
        try:
            sock = os.path.join(self.path, "control.sock")
            self.assertEqual(os.stat(sock).st_mode & 0o777, 0o600)
            for argv, expected in ((["list"], "R1  "), (["hold", "R1"], "held R1\n")):
                out, err = io.StringIO(), io.StringIO()
                args = parser().parse_args(["--spool", self.path, *argv])
                status = yield defer.ensureDeferred(run(reactor, args, out, err))
                self.assertEqual((status, err.getvalue()), (0, ""))
                self.assertTrue(out.getvalue().startswith(expected), out.getvalue())
            self.assertTrue(runner.entries["R1"].held)
        finally:
            yield service.stopService()
        self.assertFalse(os.path.exists(sock))
