"""
Crash test of the queue: a real C{twistd -n mailframe --spool DIR --deliver
maildir:DIR} on a loopback port, smtplib clients sending in threads, the
server killed with SIGKILL at random moments (a bounded number of times,
within a bounded time) and restarted on the same spool each time.  In the
end every message that got a 250 is in the Maildir (delivered at least
once, at most twice) and the spool is empty.

Owns: nothing of mailframe.  Must not: run longer than its bounds (every
wait has a deadline, every socket a timeout).
"""

from __future__ import annotations

import os
import random
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.interop._mailpeers import waitForTwistd

REPO = Path(__file__).resolve().parents[2]
TWISTD = Path(sys.executable).with_name("twistd")
HOST = "127.0.0.1"
KILLS = 5
"""How many times the server is killed."""
CLIENTS = 8
"""Sending threads."""
RUN_LIMIT = 90.0
"""Seconds the kill-and-restart phase may take at most."""
START_TIMEOUT = 30.0
FIRST_ACK_TIMEOUT = 30.0
"""Seconds a restarted server may take to acknowledge its first message."""
DRAIN_TIMEOUT = 60.0
SOCKET_TIMEOUT = 10.0


def freePort() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class Server:
    """The twistd child process, started again on the same spool after each kill."""

    def __init__(self, directory: Path, port: int) -> None:
        self.directory = directory
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *sys.path])}

    def start(self) -> None:
        self.starts += 1
        logPath = self.directory / f"twistd-{self.starts}.log"
        log = open(logPath, "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            [str(TWISTD), "-n", "--pidfile=", "--logfile=-", "mailframe",
             "--listen", f"tcp:{self.port}:interface={HOST}", "--hostname", "mx.test",
             "--domain", "example.com", "--spool", "spool", "--deliver", "maildir:Maildir",
             "--greet-delay", "0", "--quiet"],
            cwd=self.directory, env=self.env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        # this run's own log: another test's server may take the port between two runs
        waitForTwistd(self.process, logPath, timeout=START_TIMEOUT)

    def logs(self) -> str:
        """The tail of each run's twistd log, for a failure's message."""
        return "\n".join(
            f"--- twistd-{n}.log\n"
            + (self.directory / f"twistd-{n}.log").read_text(errors="replace")[-2000:]
            for n in range(1, self.starts + 1)
        )

    def kill(self) -> None:
        assert self.process is not None
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


class Sender(threading.Thread):
    """Sends numbered messages until told to stop; remembers those that got 250."""

    def __init__(self, index: int, port: int, stop: threading.Event) -> None:
        super().__init__(name=f"sender-{index}", daemon=True)
        self.index = index
        self.port = port
        self.stopping = stop
        self.acknowledged: list[str] = []
        self.attempts = 0

    def run(self) -> None:
        n = 0
        while not self.stopping.is_set():
            try:
                with smtplib.SMTP(HOST, self.port, timeout=SOCKET_TIMEOUT) as client:
                    while not self.stopping.is_set():
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
                self.stopping.wait(0.05)  # the server is down or was killed: again


def delivered(maildir: Path) -> Counter[str]:
    """The Subject tokens of the messages in Maildir/new, with their counts."""
    found: Counter[str] = Counter()
    for path in (maildir / "new").iterdir():
        for line in path.read_bytes().split(b"\n"):
            if line.startswith(b"Subject: "):
                found[line[9:].decode().strip()] += 1
                break
    return found


class CrashTests(SynchronousTestCase):
    """SIGKILL at random moments loses no message that got a 250."""

    def setUp(self) -> None:
        if not TWISTD.exists():
            raise self.skipTest(f"no twistd next to {sys.executable}")

    def test_killedUnderLoad(self) -> None:
        """Killed 5 times under load and restarted: every acknowledged message is delivered."""
        directory = Path(self.mktemp()).resolve()
        directory.mkdir()
        server = Server(directory, freePort())
        self.addCleanup(server.stop)
        server.start()
        stop = threading.Event()
        senders = [Sender(i, server.port, stop) for i in range(CLIENTS)]
        for sender in senders:
            sender.start()
        self.addCleanup(stop.set)
        rng = random.Random()
        deadline = time.monotonic() + RUN_LIMIT
        kills = 0

        def acknowledgedSoFar() -> int:
            return sum(len(s.acknowledged) for s in senders)

        while kills < KILLS and time.monotonic() < deadline:
            # Each run acknowledges some mail before it dies: on a loaded
            # machine a fixed window could end before the first 250.
            before = acknowledgedSoFar()
            waitUntil = time.monotonic() + FIRST_ACK_TIMEOUT
            while acknowledgedSoFar() == before and time.monotonic() < waitUntil:
                stop.wait(0.02)
            if acknowledgedSoFar() == before:
                self.fail(f"run {server.starts} acknowledged nothing:\n{server.logs()}")
            stop.wait(rng.uniform(0.0, 1.2))  # load runs on for a random while
            server.kill()
            kills += 1
            server.start()
        stop.wait(1.0)
        stop.set()
        for sender in senders:
            sender.join(SOCKET_TIMEOUT * 2)
            self.assertFalse(sender.is_alive(), f"{sender.name} did not stop")
        acknowledged = [t for s in senders for t in s.acknowledged]
        self.assertEqual(kills, KILLS)
        self.assertGreater(len(acknowledged), 0)

        queue = directory / "spool" / "queue"
        maildir = directory / "Maildir"
        drainBy = time.monotonic() + DRAIN_TIMEOUT
        while any(queue.iterdir()) and time.monotonic() < drainBy:
            stop.wait(0.1)
        self.assertEqual(sorted(p.name for p in queue.iterdir()), [], "the spool did not drain")
        found = delivered(maildir)
        lost = sorted(set(acknowledged) - set(found))
        self.assertEqual(
            lost, [], f"{len(lost)} of {len(acknowledged)} acknowledged messages lost"
        )
        self.assertLessEqual(max(found.values()), 2, "a message delivered more than twice")
        self.assertTrue(set(found) <= {f"T{s.index}-{n}" for s in senders
                                       for n in range(1, s.attempts + 1)})  # fmt: skip
        server.stop()
        print(
            f"\n    {len(acknowledged)} acknowledged in {server.starts} runs, "
            f"{sum(found.values())} delivered ({sum(found.values()) - len(found)} twice), "
            f"{len(set(found) - set(acknowledged))} without a 250",
            file=sys.stderr,
        )
