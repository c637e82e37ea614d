"""
The C{redis-stream} backend with a real Redis (Debian's redis-server,
started by the test with a private configuration: 127.0.0.1, a free port,
C{appendonly yes}, C{appendfsync always}) behind C{twistd -n mailframe}:

  - swaks and smtplib send; every entry read back with redis-py holds the
    message byte for byte (after mailframe's Received: field) and its
    envelope: sender, recipients per stream, DSN parameters, client;
    a large message goes by reference;
  - Redis killed (SIGKILL) and started again twice under a load of
    messages: every message answered 250 is in the stream;
  - twistd with C{--spool} killed (SIGKILL) under load and started again:
    every message answered 250 reaches the stream.

A missing program skips, or fails with MAILFRAME_REQUIRE_INTEROP=1.  Every
wait is bounded.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import smtplib
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.interop._brokers import Load, PrivateRedis, shared, tokenOf
from tests.interop._mailpeers import HOST, Twistd, freePort, listening, scratch, waitFor
from tests.interop._support import SWAKS, splitReceived

MESSAGE = (
    b"From: Sender <sender@example.org>\r\nTo: ann@example.com\r\n"
    b"Subject: Redis interop\r\nMessage-ID: <redis-interop@example.org>\r\n\r\n"
    b".a line that starts with a dot\r\n\xc3\xa9 eight bit\r\n\r\nLast line\r\n"
)


def entries(client: Any, stream: str) -> list[dict[str, bytes]]:
    return [{k.decode(): v for k, v in fields.items()} for _, fields in client.xrange(stream)]


class RedisTests(SynchronousTestCase):
    """twistd mailframe --deliver redis-stream:URL with a private redis-server."""

    def twistd(self, redis: PrivateRedis, *args: str) -> tuple[Twistd, int, Path]:
        home = scratch("mailframe-redis-")
        self.addCleanup(shutil.rmtree, home, True)
        port = freePort()
        server = Twistd(home, "--listen", f"tcp:{port}:interface={HOST}", "--hostname",
                        "mx.test", "--domain", "example.com", "--domain", "example.net",
                        *args)  # fmt: skip
        self.addCleanup(server.stop)
        server.start(lambda: listening(port))
        return server, port, home

    def test_endToEnd(self) -> None:
        """swaks and smtplib -> mailframe -> one entry per domain, byte for byte, with the envelope."""
        redis = shared("redis")
        stream = f"e2e{freePort()}"
        # With --spool: DSN is offered (the queue can report), and entries come from the queue.
        _, port, home = self.twistd(
            redis, "--spool", "spool",
            "--deliver", f"redis-stream:{redis.url}:stream={stream}.{{domain}}:inline=1M",
        )  # fmt: skip
        swaks = subprocess.run(
            [SWAKS, "--server", f"{HOST}:{port}", "--from", "sender@example.org", "--to",
             "ann@example.com", "--helo", "client.test", "--header", "Subject: from swaks",
             "--timeout", "20"],
            capture_output=True, timeout=60, env={"PATH": "/usr/bin:/bin", "HOME": str(home)},
        )  # fmt: skip
        self.assertEqual(swaks.returncode, 0, swaks.stdout[-2000:])
        with smtplib.SMTP(HOST, port, timeout=20) as client:
            client.ehlo("smtplib.test")
            self.assertIn("dsn", client.esmtp_features)
            refused = client.sendmail(
                "sender@example.org", ["ann@example.com", "bob@example.net", "cy@example.com"],
                MESSAGE, mail_options=["RET=HDRS", "ENVID=env-1", "BODY=8BITMIME"],
                rcpt_options=["NOTIFY=FAILURE,DELAY"],
            )  # fmt: skip
            self.assertEqual(refused, {})
            large = MESSAGE + b"x" * 76 + b"\r\n" * 1 + (b"y" * 998 + b"\r\n") * 2100
            client.sendmail("sender@example.org", ["big@example.net"], large)
        client = redis.client()
        waitFor(lambda: len(entries(client, f"{stream}.example.com")) == 2
                and len(entries(client, f"{stream}.example.net")) == 2, 60,
                "the entries", 0.1)  # fmt: skip
        first, second = entries(client, f"{stream}.example.com")
        self.assertIn(b"Subject: from swaks", first["message"])
        self.assertEqual(json.loads(first["recipients"]), ["ann@example.com"])
        self.assertEqual(first["helo"], b"client.test")
        self.assertEqual(first["client-address"], HOST.encode())
        received, rest = splitReceived(second["message"])
        self.assertEqual(rest, MESSAGE)
        self.assertIn(b"by mx.test (mailframe)", received)
        self.assertEqual(json.loads(second["recipients"]), ["ann@example.com", "cy@example.com"])
        self.assertEqual(json.loads(second["notify"]), ["FAILURE,DELAY"] * 2)
        self.assertEqual((second["sender"], second["ret"], second["envid"], second["body"]),
                         (b"sender@example.org", b"HDRS", b"env-1", b"8BITMIME"))  # fmt: skip
        self.assertEqual(int(second["size"]), len(second["message"]))
        self.assertTrue(second["queue-id"])
        [net, big] = entries(client, f"{stream}.example.net")
        self.assertEqual(splitReceived(net["message"])[1], MESSAGE)
        self.assertEqual(net["queue-id"], second["queue-id"])
        self.assertNotIn("message", big)
        stored = client.get(big["message-key"])
        self.assertEqual(splitReceived(stored)[1], large)

    def test_redisKilledUnderLoad(self) -> None:
        """Redis SIGKILLed and restarted twice under load: every 250 is in the stream."""
        home = scratch("mailframe-redis-own-")
        self.addCleanup(shutil.rmtree, home, True)
        redis = PrivateRedis(home, password="s3cret")
        self.addCleanup(redis.stopAll)
        redis.start()
        _, port, _ = self.twistd(
            redis, "--deliver", f"redis-stream:{redis.url}:stream=load:timeout=5"
        )
        load = Load(port, 1500, threads=4)
        load.start()
        for kill in (1, 2):
            target = len(load.accepted()) + 250
            waitFor(lambda t=target: len(load.accepted()) >= t or load.done == 1500, 120,
                    f"250 more messages before kill {kill}", 0.02)  # fmt: skip
            redis.kill()
            time.sleep(0.5)  # the load meets a Redis that is down
            redis.start()
        load.join()
        accepted = load.accepted()
        found = {tokenOf(e["message"]) for e in entries(redis.client(), "load")}
        self.assertGreater(len(accepted), 600)
        self.assertEqual(accepted - found, set(), "answered 250 but not in the stream")
        load.resend()  # what got 451 goes through once Redis is back
        found = {tokenOf(e["message"]) for e in entries(redis.client(), "load")}
        self.assertEqual(set(load.tokens) - found, set())

    def test_mailframeKilledWithSpool(self) -> None:
        """twistd --spool SIGKILLed under load and started again: every 250 reaches the stream."""
        redis = shared("redis")
        stream = f"spool{freePort()}"
        server, port, home = self.twistd(
            redis, "--spool", "spool", "--deliver", f"redis-stream:{redis.url}:stream={stream}"
        )
        load = Load(port, 600, threads=4)
        load.start()
        waitFor(lambda: len(load.accepted()) >= 200, 60, "200 messages accepted", 0.02)
        assert server.process is not None
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(30)
        server.start(lambda: listening(port))
        load.join()
        accepted = load.accepted()
        client = redis.client()

        def arrived() -> bool:
            found = {tokenOf(e["message"]) for e in entries(client, stream)}
            return accepted <= found

        waitFor(arrived, 90, "every message answered 250 in the stream", 0.25)
        queue = home / "spool" / "queue"
        waitFor(lambda: not any(queue.iterdir()), 60, "the spool to empty", 0.25)

    def test_waitForReplica(self) -> None:
        """replicas=1: 250 once a replica has the entry; with the replica gone, 451, not 250."""
        home = scratch("mailframe-redis-replica-")
        self.addCleanup(shutil.rmtree, home, True)
        (home / "primary").mkdir()
        (home / "replica").mkdir()
        primary = PrivateRedis(home / "primary")
        self.addCleanup(primary.stopAll)
        primary.start()
        replica = PrivateRedis(home / "replica", extra=(f"replicaof {HOST} {primary.port}",))
        self.addCleanup(replica.stopAll)
        replica.start()
        waitFor(lambda: replica.client().info("replication").get("master_link_status") == "up",
                30, "the replica to be in sync", 0.1)  # fmt: skip
        _, port, _ = self.twistd(
            primary, "--deliver", f"redis-stream:{primary.url}:stream=r:replicas=1:timeout=3"
        )
        with smtplib.SMTP(HOST, port, timeout=30) as client:
            self.assertEqual(client.sendmail("s@example.org", ["ann@example.com"], MESSAGE), {})
            [entry] = entries(replica.client(), "r")
            self.assertEqual(splitReceived(entry["message"])[1], MESSAGE)
            replica.kill()
            with self.assertRaises(smtplib.SMTPDataError) as caught:
                client.sendmail("s@example.org", ["ann@example.com"], MESSAGE)
            self.assertEqual(caught.exception.smtp_code, 451)
            self.assertIn(b"0 of 1", caught.exception.smtp_error)
        self.assertEqual(len(entries(primary.client(), "r")), 2)  # written, not confirmed

    def test_downWithSpool(self) -> None:
        """Redis down, --spool: messages answered 250, held, and all in the stream once it is back."""
        home = scratch("mailframe-redis-down-")
        self.addCleanup(shutil.rmtree, home, True)
        redis = PrivateRedis(home)
        self.addCleanup(redis.stopAll)
        _, port, spoolHome = self.twistd(
            redis, "--spool", "spool", "--retry-initial", "1s", "--retry-max", "2s",
            "--deliver", f"redis-stream:{redis.url}:stream=held:timeout=2",
        )  # fmt: skip
        with smtplib.SMTP(HOST, port, timeout=30) as client:
            for i in range(20):
                client.sendmail("s@example.org", ["ann@example.com"], Load.body(f"H{i:02d}"))
        queue = spoolHome / "spool" / "queue"
        self.assertTrue(any(queue.iterdir()), "the spool holds the messages")
        redis.start()
        client = redis.client()
        waitFor(lambda: len(entries(client, "held")) >= 20, 60, "the held messages", 0.2)
        found = sorted(tokenOf(e["message"]) for e in entries(client, "held"))
        self.assertEqual(sorted(set(found)), [f"H{i:02d}" for i in range(20)])
        waitFor(lambda: not any(queue.iterdir()), 30, "the spool to empty", 0.2)


def swaks(port: int, home: Path, recipient: str, subject: str) -> None:
    """One message by swaks (the done-when of issue 14: swaks -> mailframe -> a consumer)."""
    done = subprocess.run(
        [SWAKS, "--server", f"{HOST}:{port}", "--from", "sender@example.org", "--to", recipient,
         "--helo", "client.test", "--header", f"Subject: {subject}", "--timeout", "20"],
        capture_output=True, timeout=60, env={"PATH": "/usr/bin:/bin", "HOME": str(home)},
    )  # fmt: skip
    if done.returncode:
        raise AssertionError(done.stdout[-2000:])


EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"


class ExampleTests(SynchronousTestCase):
    """swaks and smtplib -> twistd mailframe -> the consumers of docs/examples, which clean up."""

    def runExample(self, name: str, *args: str) -> str:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(EXAMPLES.parents[1]), *sys.path])}
        done = subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True,
                              timeout=90, env=env)  # fmt: skip
        self.assertEqual(done.returncode, 0, done.stderr.decode(errors="replace")[-3000:])
        return done.stdout.decode()

    def test_consumers(self) -> None:
        """redis_consumer.py and redis_consumer_twisted.py print envelope and Subject, XACK, DEL."""
        redis = shared("redis")
        stream = f"ex{freePort()}"
        home = scratch("mailframe-redis-ex-")
        self.addCleanup(shutil.rmtree, home, True)
        port = freePort()
        server = Twistd(home, "--listen", f"tcp:{port}:interface={HOST}", "--hostname", "mx.test",
                        "--domain", "example.com", "--deliver",
                        f"redis-stream:{redis.url}:stream={stream}.{{local}}:inline=200k")  # fmt: skip
        self.addCleanup(server.stop)
        server.start(lambda: listening(port))
        big = MESSAGE + (b"z" * 998 + b"\r\n") * 300
        with smtplib.SMTP(HOST, port, timeout=20) as client:
            for name in ("plain", "twisted"):
                client.sendmail("sender@example.org", [f"{name}@example.com"], MESSAGE)
                client.sendmail("sender@example.org", [f"{name}@example.com"], big)
        for name in ("plain", "twisted"):
            swaks(port, home, f"{name}@example.com", "Redis interop")
        client = redis.client()
        for name, example in (("plain", "redis_consumer.py"),
                              ("twisted", "redis_consumer_twisted.py")):  # fmt: skip
            output = self.runExample(example, redis.url, f"{stream}.{name}", "3")
            lines = output.splitlines()
            self.assertEqual(len(lines), 3, output)
            for line in lines:
                self.assertIn(f"from <sender@example.org> to <{name}@example.com>", line)
                self.assertIn("subject 'Redis interop'", line)
            pending = client.xpending(f"{stream}.{name}", "consumers")
            self.assertEqual(pending["pending"], 0)
        self.assertEqual(client.keys(f"{stream}.*:message:*"), [])
