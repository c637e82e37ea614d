"""
Dropped connections after the final dot, against a real C{twistd -n
mailframe} on a loopback port: clients send 3 MB messages and reset the
connection (SO_LINGER 0, then close: an RST) a random 0 to 40 ms after the
final dot.  Every message in Maildir/new must be whole (never cut short,
never holding another message's bytes), with and without C{--spool}, and
the server's log must show no C{Bad file descriptor}, no C{closed file}
and no traceback.

Owns: nothing of mailframe.  Must not: run longer than its bounds (every
wait has a deadline, every socket a timeout).
"""

from __future__ import annotations

import os
import random
import re
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.interop._mailpeers import waitForTwistd

REPO = Path(__file__).resolve().parents[2]
TWISTD = Path(sys.executable).with_name("twistd")
HOST = "127.0.0.1"
MESSAGES = 20
"""Messages sent, each reset after its final dot."""
CLIENTS = 2
"""Sending threads."""
SIZE = 3 * 1024 * 1024
START_TIMEOUT = 30.0
SETTLE_TIMEOUT = 60.0
SOCKET_TIMEOUT = 15.0
BAD = (b"Bad file descriptor", b"closed file", b"Traceback", b"MessageClosed", b"Unhandled")


def freePort() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def body(token: str) -> bytes:
    """About 3 MB, every line naming its message, so that a mixed copy shows."""
    head = f"From: sender@example.org\r\nSubject: {token}\r\n\r\n".encode()
    line = f"{token} line %07d of a message that must arrive whole or not at all\r\n"
    lines = [(line % i).encode() for i in range(SIZE // len(line))]
    return head + b"".join(lines)


def expect(sock: socket.socket, code: bytes) -> bytes:
    data = b""
    while not re.search(rb"(^|\r\n)\d{3} [^\r\n]*\r\n$", data):
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError(f"closed while waiting for {code!r}: {data!r}")
        data += chunk
    if not data.splitlines()[-1].startswith(code):
        raise AssertionError(f"expected {code!r}, got {data!r}")
    return data


def sendAndReset(port: int, token: str, delay: float) -> None:
    """One transaction, reset C{delay} seconds after the final dot."""
    sock = socket.create_connection((HOST, port), timeout=SOCKET_TIMEOUT)
    try:
        expect(sock, b"220")
        sock.sendall(b"EHLO client.example\r\n")
        expect(sock, b"250")
        sock.sendall(b"MAIL FROM:<sender@example.org>\r\n")
        expect(sock, b"250")
        sock.sendall(b"RCPT TO:<user@example.com>\r\n")
        expect(sock, b"250")
        sock.sendall(b"DATA\r\n")
        expect(sock, b"354")
        sock.sendall(body(token) + b".\r\n")
        time.sleep(delay)
    finally:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()


class Server:
    def __init__(self, directory: Path, *args: str) -> None:
        self.directory = directory
        self.port = freePort()
        self.logPath = directory / "twistd.log"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *sys.path])}
        with open(self.logPath, "wb") as log:
            self.process = subprocess.Popen(
                [str(TWISTD), "-n", "--pidfile=", "--logfile=-", "mailframe",
                 "--listen", f"tcp:{self.port}:interface={HOST}", "--hostname", "mx.test",
                 "--domain", "example.com", "--deliver", "maildir:Maildir", *args],
                cwd=directory, env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            waitForTwistd(self.process, self.logPath, timeout=START_TIMEOUT)
        except AssertionError:
            self.stop()
            raise

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(SOCKET_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(SOCKET_TIMEOUT)

    def log(self) -> bytes:
        return self.logPath.read_bytes()


class DroppedConnectionTests(SynchronousTestCase):
    """Resets 0 to 40 ms after the final dot never leave a truncated or mixed message."""

    def setUp(self) -> None:
        if not TWISTD.exists():
            raise self.skipTest(f"no twistd next to {sys.executable}")

    def run20(self, *args: str) -> tuple[Path, Server, dict[str, bytes]]:
        directory = Path(self.mktemp()).resolve()
        directory.mkdir()
        server = Server(directory, *args)
        self.addCleanup(server.stop)
        rng = random.Random()
        tokens = [f"T{i:02d}" for i in range(MESSAGES)]
        delays = {t: rng.uniform(0.0, 0.040) for t in tokens}
        errors: list[BaseException] = []
        lock = threading.Lock()

        def client() -> None:
            while True:
                with lock:
                    if not tokens:
                        return
                    token = tokens.pop()
                try:
                    sendAndReset(server.port, token, delays[token])
                except BaseException as e:
                    errors.append(e)

        threads = [threading.Thread(target=client, daemon=True) for _ in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(SETTLE_TIMEOUT)
            self.assertFalse(t.is_alive(), "a client did not finish")
        self.assertEqual(errors, [])
        return directory, server, {f"T{i:02d}": body(f"T{i:02d}") for i in range(MESSAGES)}

    def settled(self, directory: Path, spool: bool) -> list[Path]:
        """The files in Maildir/new once nothing changes (and the spool is empty)."""
        new = directory / "Maildir" / "new"
        queue = directory / "spool" / "queue"
        deadline = time.monotonic() + SETTLE_TIMEOUT
        last: object = None
        while time.monotonic() < deadline:
            time.sleep(0.5)
            files = sorted(new.iterdir()) if new.exists() else []
            state = [(p.name, p.stat().st_size) for p in files]
            busy = spool and queue.exists() and any(queue.iterdir())
            if state == last and not busy:
                return files
            last = state
        raise AssertionError("the Maildir did not settle")

    def check(self, files: list[Path], sent: dict[str, bytes], server: Server) -> None:
        seen = []
        for path in files:
            data = path.read_bytes()
            match = re.search(rb"^Subject: (T\d\d)\n", data, re.MULTILINE)
            self.assertIsNotNone(match, f"{path.name}: no Subject ({len(data)} octets)")
            assert match is not None
            token = match.group(1).decode()
            seen.append(token)
            expected = sent[token].replace(b"\r\n", b"\n")
            self.assertTrue(
                data.endswith(expected),
                f"{path.name} ({token}): {len(data)} octets, not the whole message",
            )
            self.assertEqual(data.count(b"\nT"), expected.count(b"\nT"), f"{token} mixed")
        log = server.log()
        for word in BAD:
            self.assertNotIn(word, log)
        print(
            f"\n    {len(seen)} of {len(sent)} reset messages stored, all whole",
            file=sys.stderr,
        )

    def test_maildir(self) -> None:
        """Maildir: every stored message is whole."""
        directory, server, sent = self.run20()
        self.check(self.settled(directory, False), sent, server)

    def test_spool(self) -> None:
        """With --spool: what the spool delivers into the Maildir is whole, and once."""
        directory, server, sent = self.run20("--spool", "spool")
        files = self.settled(directory, True)
        self.check(files, sent, server)
        tokens = [re.search(rb"Subject: (T\d\d)", p.read_bytes()).group(1) for p in files]  # type: ignore[union-attr]
        self.assertEqual(len(tokens), len(set(tokens)), "a message delivered twice")
