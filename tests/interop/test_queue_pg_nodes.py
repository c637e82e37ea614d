"""
Several C{twistd -n mailframe} nodes sharing one PostgreSQL queue (a
private cluster, tests/interop/_postgres.py), each on its own loopback
port, delivering into one Maildir (the sink): mail given to any node is
delivered once; under load, nodes SIGKILLed and restarted at random and
PostgreSQL crashed and restarted once lose nothing that got a 250, and a
node killed for good has its messages delivered by the others once its
leases expire.  Duplicates are allowed, counted and reported.

Owns: nothing of mailframe.  Must not: run longer than its bounds (every
wait has a deadline, every socket a timeout).
"""

from __future__ import annotations

import os
import random
import signal
import smtplib
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.interop._mailpeers import (
    HOST,
    REPO,
    TWISTD,
    freePort,
    unavailable,
    waitForTwistd,
)
from tests.interop._postgres import PrivatePostgres

START_TIMEOUT = 30.0
SOCKET_TIMEOUT = 10.0
DRAIN_TIMEOUT = 60.0
LEASE = 3.0
"""The nodes' queue-lease: short, so that a dead node's messages move soon."""
TARGET = 600
"""Acknowledged messages the crash test aims at under load."""
LOAD_LIMIT = 50.0
"""Seconds the load phase may take at most."""
KILLS = 6
"""Nodes killed (and restarted) during the load."""


class Node:
    """One C{twistd -n mailframe} node on the shared queue; started again after a kill."""

    def __init__(self, directory: Path, name: str, url: str, maildir: Path) -> None:
        self.directory = directory / name
        self.directory.mkdir()
        self.name = name
        self.url = url
        self.maildir = maildir
        self.port = freePort()
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *sys.path])}
        logPath = self.directory / f"twistd-{self.starts}.log"
        with open(logPath, "wb") as log:
            self.process = subprocess.Popen(
                [str(TWISTD), "-n", "--pidfile=", "--logfile=-", "mailframe",
                 "--listen", f"tcp:{self.port}:interface={HOST}", "--hostname", f"{self.name}.test",
                 "--domain", "example.com", "--spool", self.url, "--node-name", self.name,
                 "--queue-lease", str(LEASE), "--deliver", f"maildir:{self.maildir}", "--quiet"],
                cwd=self.directory, env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        waitForTwistd(self.process, logPath, timeout=START_TIMEOUT)  # this run's own log

    def logs(self) -> str:
        return "".join(
            p.read_text(errors="replace")[-3000:] for p in sorted(self.directory.glob("*.log"))
        )

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(SOCKET_TIMEOUT)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(SOCKET_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(SOCKET_TIMEOUT)


def send(port: int, token: str) -> None:
    body = f"From: s@example.org\r\nSubject: {token}\r\n\r\nmessage {token}\r\n".encode()
    with smtplib.SMTP(HOST, port, timeout=SOCKET_TIMEOUT) as client:
        client.sendmail("s@example.org", ["user@example.com"], body)


def delivered(maildir: Path) -> Counter[str]:
    """The Subject tokens of the messages in the Maildir, with their counts."""
    found: Counter[str] = Counter()
    new = maildir / "new"
    if not new.exists():
        return found
    for path in new.iterdir():
        for line in path.read_bytes().split(b"\n"):
            if line.startswith(b"Subject: "):
                found[line[9:].decode().strip()] += 1
                break
    return found


class Sender(threading.Thread):
    """Sends numbered messages to random nodes until told to stop; keeps those that got 250."""

    def __init__(self, index: int, nodes: list[Node], stop: threading.Event) -> None:
        super().__init__(name=f"sender-{index}", daemon=True)
        self.index = index
        self.nodes = nodes
        self.stopping = stop
        self.acknowledged: list[str] = []
        self.attempts = 0
        self.rng = random.Random(index)

    def run(self) -> None:
        n = 0
        while not self.stopping.is_set():
            node = self.rng.choice(self.nodes)
            try:
                with smtplib.SMTP(HOST, node.port, timeout=SOCKET_TIMEOUT) as client:
                    for _ in range(self.rng.randint(1, 10)):
                        if self.stopping.is_set():
                            break
                        n += 1
                        token = f"T{self.index}-{n}"
                        self.attempts += 1
                        body = (
                            f"From: s{self.index}@example.org\r\nSubject: {token}\r\n\r\n"
                            + f"message {token}\r\n" * 20
                        ).encode()
                        client.sendmail(f"s{self.index}@example.org", ["user@example.com"], body)
                        self.acknowledged.append(token)  # the 250 came
            except (OSError, smtplib.SMTPException):
                self.stopping.wait(0.05)  # the node is down, or PostgreSQL is: again


class SharedQueueTests(SynchronousTestCase):
    """Three nodes, one PostgreSQL queue."""

    def setUp(self) -> None:
        if not TWISTD.exists():
            raise unavailable(f"no twistd next to {sys.executable}")
        self.postgres = PrivatePostgres()
        self.addCleanup(self.postgres.cleanUp)
        self.postgres.start()
        self.directory = Path(self.mktemp()).resolve()
        self.directory.mkdir()
        self.maildir = self.directory / "Maildir"
        self.nodes = [
            Node(self.directory, f"node{i}", self.postgres.url, self.maildir) for i in (1, 2, 3)
        ]
        for node in self.nodes:
            self.addCleanup(node.stop)
            node.start()

    def queued(self) -> int:
        with self.postgres.connect() as conn:
            row = conn.execute("SELECT count(*) FROM mailframe_message").fetchone()
        return int(row[0]) if row else -1

    def drain(self) -> None:
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while (left := self.queued()) and time.monotonic() < deadline:
            threading.Event().wait(0.2)
        if left:
            logs = "\n".join(node.logs()[-2000:] for node in self.nodes)
            raise AssertionError(f"the queue did not drain: {left} left\n{logs}")

    def test_deliveredOnce(self) -> None:
        """Mail given to each of three nodes is delivered once each into the sink."""
        tokens = [f"N{node.name}-{i}" for node in self.nodes for i in range(10)]
        for token in tokens:
            send(self.nodes[int(token[5]) - 1].port, token)
        self.drain()
        found = delivered(self.maildir)
        self.assertEqual(sorted(found), sorted(tokens))
        self.assertEqual(set(found.values()), {1})

    def test_postgresStopped(self) -> None:
        """With PostgreSQL stopped a session gets 451 4.3.0, never 250; started again, 250."""
        self.postgres.stop()
        with self.assertRaises(smtplib.SMTPDataError) as caught:
            send(self.nodes[0].port, "AWAY")
        self.assertEqual(caught.exception.smtp_code, 451)
        self.assertIn(b"4.3.0", caught.exception.smtp_error)
        self.postgres.start()
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while True:
            try:
                send(self.nodes[1].port, "BACK")
                break
            except smtplib.SMTPDataError:
                if time.monotonic() > deadline:
                    raise
                threading.Event().wait(0.5)
        self.drain()
        self.assertEqual(sorted(delivered(self.maildir)), ["BACK"])

    def test_crashes(self) -> None:
        """
        Nodes killed and restarted at random under load, PostgreSQL crashed
        once, a node killed for good: every message that got a 250 arrives.
        """
        stop = threading.Event()
        self.addCleanup(stop.set)
        senders = [Sender(i, self.nodes, stop) for i in range(6)]
        for sender in senders:
            sender.start()
        rng = random.Random()
        started = time.monotonic()
        deadline = started + LOAD_LIMIT
        kills = 0
        postgresRestarted = False

        def acknowledged() -> int:
            return sum(len(s.acknowledged) for s in senders)

        while time.monotonic() < deadline and (kills < KILLS or acknowledged() < TARGET):
            stop.wait(rng.uniform(0.5, 2.0))  # load runs for a random while
            if not postgresRestarted and kills == KILLS // 2:
                self.postgres.restart()  # a crash of PostgreSQL: immediate, then start
                postgresRestarted = True
                continue
            if kills < KILLS:
                node = rng.choice(self.nodes)
                node.kill()
                kills += 1
                node.start()
        self.nodes[2].kill()  # killed for good: its leases must expire to the others
        stop.wait(1.0)
        stop.set()
        for sender in senders:
            sender.join(SOCKET_TIMEOUT * 2)
            self.assertFalse(sender.is_alive(), f"{sender.name} did not stop")
        self.assertEqual(kills, KILLS)
        self.assertTrue(postgresRestarted)
        tokens = [t for s in senders for t in s.acknowledged]
        self.assertGreater(len(tokens), 0)
        self.drain()
        found = delivered(self.maildir)
        lost = sorted(set(tokens) - set(found))
        self.assertEqual(lost, [], f"{len(lost)} of {len(tokens)} acknowledged messages lost")
        sent = {f"T{s.index}-{n}" for s in senders for n in range(1, s.attempts + 1)}
        self.assertTrue(set(found) <= sent)
        duplicates = sum(found.values()) - len(found)
        print(
            f"\n    {len(tokens)} acknowledged in {time.monotonic() - started:.0f} s, "
            f"{KILLS} node kills, PostgreSQL crashed once, node3 killed for good: "
            f"{sum(found.values())} delivered, {duplicates} duplicate(s), "
            f"{len(set(found) - set(tokens))} without a 250",
            file=sys.stderr,
        )
