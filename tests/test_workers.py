"""Tests for L{mailframe.app.workers}: SO_REUSEPORT listeners and the worker pool."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mailframe.app import workers
from mailframe.app.workers import ReusePortService, WorkerPool, reusePortEndpoint, workerArgv

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EndpointTests(SynchronousTestCase):
    def test_tcp(self) -> None:
        """tcp: and tcp6: endpoints give their family, interface, port and backlog."""
        self.assertEqual(
            reusePortEndpoint("tcp:2525:interface=127.0.0.1:backlog=7"),
            (socket.AF_INET, "127.0.0.1", 2525, 7),
        )
        self.assertEqual(reusePortEndpoint("tcp6:25")[0], socket.AF_INET6)

    def test_refused(self) -> None:
        """Other endpoint kinds and port 0 are refused with a clear message."""
        e = self.assertRaises(ValueError, reusePortEndpoint, "unix:/tmp/x")
        self.assertIn("tcp: or tcp6:", str(e))
        e = self.assertRaises(ValueError, reusePortEndpoint, "tcp:0")
        self.assertIn("fixed port", str(e))


class ReusePortTests(TestCase):
    @defer.inlineCallbacks
    def test_twoListenersOnePort(self) -> Any:
        """Two services bind the same port (as two workers would) and both accept."""
        port = freePort()
        factory = Factory.forProtocol(Protocol)
        a = ReusePortService(reactor, f"tcp:{port}:interface=127.0.0.1", factory)
        b = ReusePortService(reactor, f"tcp:{port}:interface=127.0.0.1", factory)
        a.startService()
        b.startService()
        try:
            self.assertEqual(a.listeningPort.getHost().port, port)
            self.assertEqual(b.listeningPort.getHost().port, port)
            with socket.create_connection(("127.0.0.1", port), timeout=5):
                pass
        finally:
            yield a.stopService()
            yield b.stopService()
        self.assertIsNone(a.listeningPort)


class FakeTransport:
    def __init__(self) -> None:
        self.signals: list[int] = []

    def signalProcess(self, sig: int) -> None:
        self.signals.append(sig)


class FakeReactor(Clock):
    """A clock that records spawnProcess calls."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[tuple[Any, list[str]]] = []

    def spawnProcess(self, proto: Any, executable: str, args: list[str], **kwargs: Any) -> None:
        proto.transport = FakeTransport()
        self.spawned.append((proto, args))


class PoolTests(SynchronousTestCase):
    def test_spawns(self) -> None:
        """Workers 1..N-1 start with the same command line and their index."""
        r = FakeReactor()
        pool = WorkerPool(r, 3, ["python", "x"], env={})
        pool.startService()
        self.assertEqual(
            [a for _, a in r.spawned],
            [["python", "x", "--worker", "1"], ["python", "x", "--worker", "2"]],
        )

    def test_restart(self) -> None:
        """A worker that dies is restarted a second later, a few times a minute at most."""
        r = FakeReactor()
        pool = WorkerPool(r, 2, ["python"], env={})
        pool.startService()
        for n in range(workers.RESTARTS_PER_MINUTE + 1):
            proto, _ = r.spawned[-1]
            proto.processEnded(Failure(Exception("boom")))
            r.advance(1)
            expected = n + 2 if n < workers.RESTARTS_PER_MINUTE else n + 1
            self.assertEqual(len(r.spawned), expected)
        self.flushLoggedErrors()

    def test_stop(self) -> None:
        """Stopping sends SIGTERM, then SIGKILL to a worker still there, and waits for all."""
        r = FakeReactor()
        pool = WorkerPool(r, 2, ["python"], env={})
        pool.startService()
        proto, _ = r.spawned[0]
        d = pool.stopService()
        r.advance(workers.TERM_DELAY)
        self.assertEqual(proto.transport.signals, [signal.SIGTERM])
        r.advance(workers.STOP_GRACE)
        self.assertEqual(proto.transport.signals, [signal.SIGTERM, signal.SIGKILL])
        self.assertNoResult(d)
        proto.processEnded(Failure(Exception("killed")))
        self.successResultOf(d)
        r.advance(5)
        self.assertEqual(len(r.spawned), 1)  # no restart while stopping

    def test_argv(self) -> None:
        """A worker runs twistd -n mailframe with the parsed options."""
        argv = workerArgv(["--listen", "tcp:25", "--workers", "2"])
        self.assertEqual(argv[0], sys.executable)
        self.assertEqual(
            argv[3:], ["-n", "--pidfile=", "mailframe", "--listen", "tcp:25", "--workers", "2"]
        )


class TwistdWorkersTests(SynchronousTestCase):
    def test_twoProcesses(self) -> None:
        """twistd mailframe --workers 2 runs two serving processes and stops both."""
        port = freePort()
        workdir = self.mktemp()
        os.makedirs(workdir)
        env = dict(os.environ, PYTHONPATH=HERE)
        proc = subprocess.Popen(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n",
             "--pidfile=", "mailframe", "--workers", "2", "--deliver", "memory",
             "--listen", f"tcp:{port}:interface=127.0.0.1"],
            cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while _listening(port) < 2 and time.monotonic() < deadline:
                time.sleep(0.2)
            self.assertEqual(_listening(port), 2)  # two sockets on one port
            self.assertEqual(len(_children(proc.pid)), 1)
            for _ in range(20):  # served, whichever worker the kernel picks
                with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                    s.settimeout(5)
                    self.assertTrue(s.recv(200).startswith(b"220 "))
                    s.sendall(b"QUIT\r\n")
                    self.assertTrue(s.recv(200).startswith(b"221 "))
        finally:
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=30)
        self.assertIn(proc.returncode, (0, -signal.SIGTERM), out)  # twistd re-raises SIGTERM
        self.assertIn(b"2 worker processes share the listening ports", out)
        self.assertEqual(out.count(b"mailframe: listening on"), 2)
        self.assertNotIn(b"Traceback", out)
        self.assertEqual(_children(proc.pid), set())


def _listening(port: int) -> int:
    """Sockets in LISTEN state on 127.0.0.1:port (from /proc/net/tcp)."""
    with open("/proc/net/tcp") as f:
        rows = [line.split() for line in f.readlines()[1:]]
    return sum(1 for r in rows if r[1] == f"0100007F:{port:04X}" and r[3] == "0A")


def _children(pid: int) -> set[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return {int(p) for p in f.read().split()}
    except OSError:
        return set()
