"""
Message ownership under a dropped connection (issue 10, item 1): the
owner closes the Message (as the server does when its client drops the
connection right after the final dot) at every step of a backend's thread
work, with Maildir, mbox and the spool, for a message in memory and one of
3 MB spilled to disk; the stored message is always whole, never cut short
or mixed with another's bytes, and nothing is logged as failed.

The thread work runs in a real thread stopped at every checkpoint
(tests/_stepping.py); the owner acts in the test's thread, which stands
for the reactor's.  After the close, other spilled messages are made, so
that a reader still using the closed message's descriptor number would
read their bytes.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from typing import Any

from twisted.internet import task
from twisted.internet.error import ConnectionLost
from twisted.internet.testing import StringTransport
from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from mailframe.address import parseMailbox
from mailframe.backends.maildir import MaildirBackend
from mailframe.backends.mbox import MboxBackend
from mailframe.config import ServerConfig
from mailframe.envelope import Envelope, Recipient
from mailframe.message import Message, toLF
from mailframe.queue.backend import SpoolBackend
from mailframe.queue.spool import Spool, threadWorker
from tests._stepping import SteppingPool, SteppingReactor, installCheckpoints

TRACE = b"Received: from client.example by mx.test; Thu, 1 Jan 1970 00:00:00 +0000\r\n"
RETURN_PATH = b"Return-Path: <a@example.com>\n"  # what a final delivery adds first
SMALL = b"From: a@example.com\r\nSubject: small\r\n\r\n" + b"a small body line\r\n" * 40
BIG = b"From: a@example.com\r\nSubject: big\r\n\r\n" + b"".join(
    b"line %07d of a message of three megabytes, all of it must arrive\r\n" % i
    for i in range(3 * 1024 * 1024 // 66)
)
SPILL = 1 << 16
"""The spill threshold of the tests: BIG goes to a temporary file."""

BAD_WORDS = ("Bad file descriptor", "closed file", "MessageClosed", "Traceback")


def finished(data: bytes, spill: int = SPILL) -> Message:
    message = Message(spillThreshold=spill)
    for i in range(0, len(data), 1 << 16):
        message.write(data[i : i + (1 << 16)])
    message.finish()
    message.prependTrace(TRACE)
    return message


def makeEnvelope(queueID: str) -> Envelope:
    return Envelope(
        queueID,
        parseMailbox("a@example.com"),
        recipients=[Recipient(parseMailbox("b@example.com"))],
    )


class _Other:
    """Spilled messages made after the close: their files may reuse its descriptor."""

    def __init__(self) -> None:
        self.messages = [finished(b"X" * (SPILL * 2)) for _ in range(4)]

    def close(self) -> None:
        for m in self.messages:
            m.close()


class OwnershipCase(SynchronousTestCase):
    def setUp(self) -> None:
        installCheckpoints(self)
        self.events: list[LogEvent] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.reactor = SteppingReactor()
        self.pool = SteppingPool()

    def assertNothingBadLogged(self) -> None:
        for event in self.events:
            text = formatEvent(event)
            failure = event.get("log_failure")
            if failure is not None:
                text += " " + failure.getTraceback()
            self.assertFalse(
                "log_failure" in event or any(w in text for w in BAD_WORDS),
                f"logged: {text}",
            )

    def dropAtEveryStep(
        self,
        data: bytes,
        spill: int,
        start: Callable[[str, Message], Any],
        stored: Callable[[str], bytes],
        expected: bytes,
    ) -> int:
        """
        Deliver once without interference to count the steps, then once
        with the owner closing the message before each step, and once after
        the thread but before its result is taken; every stored copy must
        be C{expected}.  Returns the number of steps.
        """
        steps = self.deliverOnce("Q0", data, spill, None, start, stored, expected)
        for closeAt in range(steps + 1):
            self.deliverOnce(f"Q{closeAt + 1}", data, spill, closeAt, start, stored, expected)
        self.assertNothingBadLogged()
        return steps

    def deliverOnce(
        self,
        queueID: str,
        data: bytes,
        spill: int,
        closeAt: int | None,
        start: Callable[[str, Message], Any],
        stored: Callable[[str], bytes],
        expected: bytes,
    ) -> int:
        message = finished(data, spill)
        self.assertEqual(message.inMemory, spill > len(data))
        jobs = len(self.pool.jobs)
        result = start(queueID, message)
        self.assertEqual(len(self.pool.jobs), jobs + 1, "the work did not go to the pool")
        job = self.pool.jobs[-1]
        others: list[_Other] = []
        step = 0
        while True:
            if step == closeAt:
                message.close()  # the owner: the client dropped the connection
                others.append(_Other())
            if not job.step():
                break
            step += 1
        if closeAt is not None and closeAt > step:  # after the thread, before its result
            message.close()
            others.append(_Other())
        self.pool.finishAll(self.reactor)
        self.assertTrue(result.called)
        self.assertEqual(stored(queueID), expected)
        message.close()
        self.assertTrue(message.closed)
        for other in others:
            other.close()
        return step


class BackendTests(OwnershipCase):
    """Maildir, mbox and the spool, the message closed at every step of their thread."""

    def maildir(self) -> tuple[Callable[[str, Message], Any], Callable[[str], bytes]]:
        root = self.mktemp()
        backend = MaildirBackend(self.reactor, root, pool=self.pool)  # type: ignore[arg-type]
        new = os.path.join(root, "new")

        def start(queueID: str, message: Message) -> Any:
            return backend.deliver(makeEnvelope(queueID), message)

        def stored(queueID: str) -> bytes:
            [name] = os.listdir(new)
            with open(os.path.join(new, name), "rb") as f:
                data = f.read()
            os.unlink(os.path.join(new, name))
            return data

        return start, stored

    def mbox(self) -> tuple[Callable[[str, Message], Any], Callable[[str], bytes]]:
        root = self.mktemp()
        os.mkdir(root)
        path = os.path.join(root, "mbox")
        backend = MboxBackend(self.reactor, path, pool=self.pool)  # type: ignore[arg-type]

        def start(queueID: str, message: Message) -> Any:
            return backend.deliver(makeEnvelope(queueID), message)

        def stored(queueID: str) -> bytes:
            with open(path, "rb") as f:
                data = f.read()
            os.truncate(path, 0)
            self.assertTrue(data.startswith(b"From a@example.com "))
            return data.split(b"\n", 1)[1]

        return start, stored

    def spool(
        self, keepInMemory: int = 0
    ) -> tuple[Callable[[str, Message], Any], Callable[[str], bytes]]:
        spool = Spool(self.mktemp(), None, threads=1, worker=threadWorker(self.reactor, self.pool))
        started = spool.start()
        self.pool.finishAll(self.reactor)
        self.successResultOf(started)
        backend = SpoolBackend(spool, task.Clock(), keepInMemory=keepInMemory)

        def start(queueID: str, message: Message) -> Any:
            return backend.deliver(makeEnvelope(queueID), message)

        def stored(queueID: str) -> bytes:
            with open(spool.dataPath(queueID), "rb") as f:
                data = f.read()
            spool.remove(queueID)
            self.pool.finishAll(self.reactor)
            return data

        return start, stored

    def test_maildirInMemory(self) -> None:
        """Maildir, a message in memory: whole whenever the owner closes it."""
        self.dropAtEveryStep(
            SMALL, 1 << 20, *self.maildir(), RETURN_PATH + toLFBytes(TRACE + SMALL)
        )

    def test_maildirSpilled(self) -> None:
        """Maildir, 3 MB on disk: whole whenever the owner closes it."""
        steps = self.dropAtEveryStep(
            BIG, SPILL, *self.maildir(), RETURN_PATH + toLFBytes(TRACE + BIG)
        )
        self.assertGreater(steps, 40)  # one or more per chunk read

    def test_mboxInMemory(self) -> None:
        """mbox, a message in memory."""
        self.dropAtEveryStep(
            SMALL, 1 << 20, *self.mbox(), RETURN_PATH + toLFBytes(TRACE + SMALL) + b"\n"
        )

    def test_mboxSpilled(self) -> None:
        """mbox, 3 MB on disk."""
        self.dropAtEveryStep(
            BIG, SPILL, *self.mbox(), RETURN_PATH + toLFBytes(TRACE + BIG) + b"\n"
        )

    def test_spoolInMemory(self) -> None:
        """The spool's group commit, a message in memory given as a Message."""
        self.dropAtEveryStep(SMALL, 1 << 20, *self.spool(), TRACE + SMALL)

    def test_spoolSpilled(self) -> None:
        """The spool's group commit, 3 MB on disk."""
        self.dropAtEveryStep(BIG, SPILL, *self.spool(keepInMemory=1 << 20), TRACE + BIG)


def toLFBytes(data: bytes) -> bytes:
    return b"".join(toLF(iter([data])))


class ServerTests(OwnershipCase):
    """
    The real server in memory: the connection is lost (C{connectionLost})
    after the final dot, at every step of the backend's thread work.
    """

    def session(self, backend: Any, data: bytes) -> tuple[Any, StringTransport]:
        from mailframe.server import SMTPServerFactory
        from mailframe.validators.basic import AnyRecipient

        factory = SMTPServerFactory(
            ServerConfig(
                hostname="mx.test", localDomains=frozenset({"example.com"}), spillThreshold=SPILL
            ),
            backend,
            [AnyRecipient()],
            clock=task.Clock(),
        )
        proto = factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        proto.dataReceived(
            b"EHLO client.example\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n"
            b"DATA\r\n"
        )
        return proto, transport

    def dropEverywhere(
        self, backend: Any, data: bytes, stored: Callable[[], bytes | None]
    ) -> None:
        def deliver(closeAt: int | None) -> int:
            proto, transport = self.session(backend, data)
            jobs = len(self.pool.jobs)
            proto.dataReceived(data + b".\r\n")
            self.assertEqual(len(self.pool.jobs), jobs + 1, transport.value())
            job = self.pool.jobs[-1]
            others: list[_Other] = []
            step = 0
            while True:
                if step == closeAt:
                    transport.loseConnection()
                    proto.connectionLost(Failure(ConnectionLost("reset by peer")))
                    others.append(_Other())
                if not job.step():
                    break
                step += 1
            if closeAt is not None and closeAt > step:
                proto.connectionLost(Failure(ConnectionLost("reset by peer")))
                others.append(_Other())
            self.pool.finishAll(self.reactor)
            copy = stored()
            self.assertIsNotNone(copy, "nothing stored")
            assert copy is not None
            self.assertTrue(copy.endswith(data.split(b"\r\n\r\n", 1)[1].replace(b"\r\n", b"\n")) or
                            copy.endswith(data.split(b"\r\n\r\n", 1)[1]), "cut short")  # fmt: skip
            for other in others:
                other.close()
            return step

        steps = deliver(None)
        for closeAt in range(steps + 1):
            deliver(closeAt)
        self.assertNothingBadLogged()

    def test_maildir(self) -> None:
        """The server and Maildir, a 3 MB message: whole, whenever the client drops."""
        root = self.mktemp()
        backend = MaildirBackend(self.reactor, root, pool=self.pool)  # type: ignore[arg-type]
        new = os.path.join(root, "new")

        def stored() -> bytes | None:
            names = os.listdir(new)
            self.assertLessEqual(len(names), 1)
            if not names:
                return None
            with open(os.path.join(new, names[0]), "rb") as f:
                data = f.read()
            os.unlink(os.path.join(new, names[0]))
            return data

        self.dropEverywhere(backend, BIG, stored)

    def test_spool(self) -> None:
        """The server and the spool, a 3 MB message: queued whole, whenever the client drops."""
        path = self.mktemp()
        spool = Spool(path, None, threads=1, worker=threadWorker(self.reactor, self.pool))
        started = spool.start()
        self.pool.finishAll(self.reactor)
        self.successResultOf(started)
        backend = SpoolBackend(spool, task.Clock())

        def stored() -> bytes | None:
            names = [n for n in os.listdir(spool.queue) if n.endswith(".msg")]
            self.assertLessEqual(len(names), 1)
            if not names:
                return None
            with open(os.path.join(spool.queue, names[0]), "rb") as f:
                data = f.read()
            spool.remove(names[0][:-4])
            self.pool.finishAll(self.reactor)
            return data

        self.dropEverywhere(backend, BIG, stored)
        shutil.rmtree(path)
