"""
Concurrent deliveries into one Maildir, against a real C{twistd -n
mailframe} on a loopback port, through smtplib: 20 clients, each sending
10 messages on one connection, so that deliveries overlap and share the
fsync of C{new/} (L{mailframe.backends._dirsync}).  Every C{250} must mean
the message is in C{Maildir/new} already: once the last client has its
last C{250}, without waiting for anything to settle, C{new/} holds every
message, once, whole.

Owns: nothing of mailframe.  Must not: run longer than its bounds (every
wait has a deadline, every socket a timeout).
"""

from __future__ import annotations

import re
import smtplib
import sys
import threading
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.interop.test_dropped_connections import HOST, TWISTD, Server

CLIENTS = 20
MESSAGES = 10
"""Messages per client, on one connection."""
TIMEOUT = 60.0


def message(token: str) -> bytes:
    lines = "".join(f"{token} line {i:03d}\r\n" for i in range(40))
    return f"From: sender@example.org\r\nSubject: {token}\r\n\r\n{lines}".encode()


class ConcurrentMaildirTests(SynchronousTestCase):
    def setUp(self) -> None:
        if not TWISTD.exists():
            raise self.skipTest(f"no twistd next to {sys.executable}")

    def test_everyAcceptedMessageIsInNew(self) -> None:
        """200 messages from 20 concurrent clients: each 250 is a whole file in new/."""
        directory = Path(self.mktemp()).resolve()
        directory.mkdir()
        server = Server(directory, "--greet-delay", "0")
        self.addCleanup(server.stop)
        errors: list[BaseException] = []
        accepted: list[str] = []
        lock = threading.Lock()

        def client(n: int) -> None:
            try:
                with smtplib.SMTP(HOST, server.port, timeout=TIMEOUT) as smtp:
                    for m in range(MESSAGES):
                        token = f"C{n:02d}M{m:02d}"
                        smtp.sendmail("sender@example.org", ["user@example.com"], message(token))
                        with lock:
                            accepted.append(token)
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(TIMEOUT)
            self.assertFalse(t.is_alive(), "a client did not finish")
        self.assertEqual(errors, [])
        self.assertEqual(len(accepted), CLIENTS * MESSAGES)
        # no settling: a 250 is only sent once the file is linked and new/ fsync'd
        files = sorted((directory / "Maildir" / "new").iterdir())
        tokens = []
        for path in files:
            data = path.read_bytes()
            found = re.search(rb"^Subject: (C\d\dM\d\d)\n", data, re.MULTILINE)
            self.assertIsNotNone(found, path.name)
            assert found is not None
            token = found.group(1).decode()
            self.assertTrue(data.endswith(message(token).replace(b"\r\n", b"\n")), token)
            tokens.append(token)
        self.assertEqual(sorted(tokens), sorted(accepted))
        self.assertNotIn(b"Traceback", server.log())
