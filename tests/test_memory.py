"""
The memory bounds of issue 6, checked on a real server process: under 10 KiB
per idle connection (5,000 of them), and a 50 MiB message (DATA and BDAT)
adding under 20 MiB.  Uses bench/memory.py's measuring functions.
"""

from __future__ import annotations

import importlib.util
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile

from twisted.trial.unittest import SynchronousTestCase

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location(
    "benchmemory", os.path.join(HERE, "bench", "memory.py")
)
assert _spec is not None and _spec.loader is not None
memory = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(memory)


class ServerMemoryTests(SynchronousTestCase):
    IDLE = 5000

    def setUp(self) -> None:
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard < 2 * self.IDLE + 200:
            raise self.skipTest(f"the file descriptor limit ({hard}) is too low")
        old = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (2 * self.IDLE + 200, hard))
        self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, old)
        scratch = tempfile.mkdtemp(prefix="mailframe-test-memory-")
        self.addCleanup(shutil.rmtree, scratch, True)
        self.port = memory.free_port("127.0.0.1")
        env = dict(os.environ, PYTHONPATH=HERE)
        self.server = subprocess.Popen(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
             "-n", "--pidfile=", "mailframe", "--quiet",
             "--listen", f"tcp:{self.port}:interface=127.0.0.1:backlog=1024",
             "--hostname", "localhost", "--max-size", "60M", "--greet-delay", "0",
             "--deliver", f"maildir:{scratch}/Maildir"],
            cwd=scratch, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.addCleanup(self.stop)
        memory.wait_port("127.0.0.1", self.port)

    def stop(self) -> None:
        self.server.send_signal(signal.SIGTERM)
        try:
            self.server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.server.kill()
            self.server.wait(timeout=10)

    def test_idleConnections(self) -> None:
        """5,000 idle connections cost the server under 10 KiB each."""
        r = memory.idle(self.server.pid, "127.0.0.1", self.port, self.IDLE)
        self.assertLess(r["kib_per_connection"], 10, r)

    def test_largeMessage(self) -> None:
        """Receiving a 50 MiB message, by DATA and by BDAT, adds under 20 MiB."""
        for bdat in (False, True):
            r = memory.large(self.server.pid, "127.0.0.1", self.port, 50, bdat)
            self.assertLess(r["added_mib"], 20, r)
