"""
Tests for mailframe.backends.maildir (and the helpers of
mailframe.backends._files): the Maildir recipe, layouts, safe names,
fsync ordering and error replies.

Also holds the synchronous thread-pool fakes the other backend tests use.
"""

from __future__ import annotations

import errno
import mailbox
import os
import socket
import stat
from collections.abc import Callable, Iterator
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from mailframe.address import Address, Domain, parseMailbox
from mailframe.backends import _files
from mailframe.backends._files import safeName
from mailframe.backends.maildir import MaildirBackend
from mailframe.envelope import DeliveryResult, Envelope, Recipient
from mailframe.interfaces import IDeliveryBackend
from mailframe.message import Message
from mailframe.reply import Reply

MESSAGE = (
    b"Received: from client.example\r\n"
    b"From: alice@example.com\r\n"
    b"Subject: hello\r\n"
    b"\r\n"
    b"Line one\r\n"
    b"bare\rCR stays\r\n"
    b".\r\n"
)


class SynchronousThreadPool:
    """Runs the 'thread' work at once, in the calling thread."""

    def __init__(self) -> None:
        self.calls = 0

    def callInThreadWithCallback(
        self, onResult: Callable[[bool, Any], None], f: Callable[..., Any], *a: Any, **kw: Any
    ) -> None:
        self.calls += 1
        try:
            result = f(*a, **kw)
        except BaseException:
            onResult(False, Failure())
        else:
            onResult(True, result)


class SynchronousReactor:
    """Just enough of a reactor for a backend's thread work: everything is synchronous."""

    def __init__(self) -> None:
        self.pool = SynchronousThreadPool()

    def callFromThread(self, f: Callable[..., Any], *a: Any, **kw: Any) -> None:
        f(*a, **kw)


def makeMessage(data: bytes = MESSAGE, spill: int | None = None) -> Message:
    """A finished Message holding C{data}."""
    message = Message() if spill is None else Message(spillThreshold=spill)
    message.write(data)
    message.finish()
    return message


def makeEnvelope(sender: str, *recipients: str | Address) -> Envelope:
    """An envelope; recipients are mailbox strings or Address values."""
    return Envelope(
        "Q1",
        parseMailbox(sender) if sender else Address.null(),
        recipients=[
            Recipient(r if isinstance(r, Address) else parseMailbox(r)) for r in recipients
        ],
    )


class FailingMessage(Message):
    """A message whose reading fails with C{error} after some data."""

    def __init__(self, error: BaseException) -> None:
        super().__init__()
        self.error = error

    def chunks(self, size: int = 65536) -> Iterator[bytes]:
        yield b"Subject: partial\r\n\r\nsome data\r\n"
        raise self.error


def listFiles(path: str) -> list[str]:
    return sorted(os.listdir(path))


class MaildirTestsMixin:
    """Helpers: a backend on a temporary directory and a synchronous delivery."""

    def backend(self, layout: str = "single") -> MaildirBackend:
        self.reactor = SynchronousReactor()
        self.root = self.mktemp()  # type: ignore[attr-defined]
        return MaildirBackend(
            self.reactor,  # type: ignore[arg-type]
            self.root,
            layout,
            pool=self.reactor.pool,
        )

    def deliver(self, backend: MaildirBackend, envelope: Envelope, message: Message) -> Any:
        return self.successResultOf(backend.deliver(envelope, message))  # type: ignore[attr-defined]


class MaildirSingleTests(MaildirTestsMixin, TestCase):
    """The single (catch-all) layout and the Maildir recipe."""

    def test_interface(self) -> None:
        """MaildirBackend provides IDeliveryBackend."""
        self.assertTrue(verifyObject(IDeliveryBackend, self.backend()))

    def test_createsMaildirAtConstruction(self) -> None:
        """The single layout creates PATH/tmp, new and cur with mode 0700."""
        self.backend()
        for sub in ("tmp", "new", "cur"):
            mode = os.stat(os.path.join(self.root, sub)).st_mode
            self.assertTrue(stat.S_ISDIR(mode))
            self.assertEqual(stat.S_IMODE(mode), 0o700)

    def test_badLayout(self) -> None:
        """An unknown layout is a ValueError naming the choices."""
        e = self.assertRaises(ValueError, MaildirBackend, SynchronousReactor(), "x", "mbox")
        self.assertIn("single, user or domain", str(e))

    def test_uncreatablePath(self) -> None:
        """A PATH that cannot be created is a one-line ValueError."""
        blocker = self.mktemp()
        with open(blocker, "w"):
            pass
        path = os.path.join(blocker, "Maildir")
        e = self.assertRaises(ValueError, MaildirBackend, SynchronousReactor(), path)
        self.assertIn(path, str(e))
        self.assertNotIn("\n", str(e))

    def test_exactBytes(self) -> None:
        """The message lands in new/ with LF line endings, byte for byte; tmp/ is empty."""
        backend = self.backend()
        result = self.deliver(
            backend, makeEnvelope("a@example.com", "b@example.com"), makeMessage()
        )
        self.assertIsNone(result)
        self.assertEqual(listFiles(os.path.join(self.root, "tmp")), [])
        [name] = listFiles(os.path.join(self.root, "new"))
        with open(os.path.join(self.root, "new", name), "rb") as f:
            data = f.read()
        self.assertEqual(data, b"Return-Path: <a@example.com>\n" + MESSAGE.replace(b"\r\n", b"\n"))
        self.assertIn(b"bare\rCR", data)
        self.assertEqual(
            stat.S_IMODE(os.stat(os.path.join(self.root, "new", name)).st_mode), 0o600
        )

    def test_largeMessageOnDisk(self) -> None:
        """A message spilled to a temporary file is written whole, CRLFs split across chunks included."""
        body = b"".join(b"line %d\r\n" % i for i in range(30000))
        backend = self.backend()
        self.deliver(
            backend, makeEnvelope("a@example.com", "b@example.com"), makeMessage(body, 1000)
        )
        [name] = listFiles(os.path.join(self.root, "new"))
        with open(os.path.join(self.root, "new", name), "rb") as f:
            self.assertEqual(
                f.read(), b"Return-Path: <a@example.com>\n" + body.replace(b"\r\n", b"\n")
            )

    def test_nameFormat(self) -> None:
        """The file name is <sec>.M<usec>P<pid>Q<n>.<host>,S=<size>, host escaped."""
        self.patch(socket, "gethostname", lambda: "mx/1:a")
        backend = self.backend()
        self.deliver(backend, makeEnvelope("a@example.com", "b@example.com"), makeMessage())
        [name] = listFiles(os.path.join(self.root, "new"))
        size = len(b"Return-Path: <a@example.com>\n" + MESSAGE.replace(b"\r\n", b"\n"))
        pattern = rf"\d+\.M\d{{1,6}}P{os.getpid()}Q\d+\.mx\\0571\\072a,S={size}"
        self.assertRegex(name, "^" + pattern + "$")

    def test_pythonMaildirReads(self) -> None:
        """Python's mailbox.Maildir reads the delivered message back."""
        backend = self.backend()
        self.deliver(backend, makeEnvelope("a@example.com", "b@example.com"), makeMessage())
        box = mailbox.Maildir(self.root, factory=None, create=False)
        [key] = box.keys()
        self.assertEqual(box[key]["Subject"], "hello")
        self.assertEqual(box[key].get_subdir(), "new")
        self.assertEqual(box[key]["Return-Path"], "<a@example.com>")
        self.assertEqual(
            box.get_bytes(key), b"Return-Path: <a@example.com>\n" + MESSAGE.replace(b"\r\n", b"\n")
        )

    def test_uniqueNames(self) -> None:
        """Many deliveries in a row give as many distinct files."""
        backend = self.backend()
        envelope = makeEnvelope("a@example.com", "b@example.com")
        for _ in range(300):
            self.deliver(backend, envelope, makeMessage())
        self.assertEqual(len(set(listFiles(os.path.join(self.root, "new")))), 300)

    def test_returnPathOfAReport(self) -> None:
        """A delivery report (the null sender) starts with Return-Path: <> (RFC 5321 4.4)."""
        from mailframe.queue.bounce import FAILED, ReportItem, ReportSettings, buildReport
        from mailframe.queue.entry import QueueEntry, RecipientState

        entry = QueueEntry(
            id="Q1", sender="a@example.com", recipients=[RecipientState("x@remote.example")],
            arrival=0.0, size=len(MESSAGE),
        )  # fmt: skip
        items = [ReportItem(entry.recipients[0], FAILED)]
        report, _ = buildReport(entry, items, MESSAGE, ReportSettings("mx.test"), 0.0, "R1")
        self.assertNotIn(b"Return-Path", report)  # only a final delivery adds it
        backend = self.backend()
        self.deliver(backend, makeEnvelope("", "a@example.com"), makeMessage(report))
        [name] = listFiles(os.path.join(self.root, "new"))
        with open(os.path.join(self.root, "new", name), "rb") as f:
            data = f.read()
        self.assertTrue(data.startswith(b"Return-Path: <>\nFrom: Mail Delivery System"), data[:80])
        self.assertEqual(data.count(b"Return-Path:"), 1)

    def test_oneFileForAllRecipients(self) -> None:
        """In the single layout, several recipients share one file, without Delivered-To."""
        backend = self.backend()
        envelope = makeEnvelope("a@example.com", "b@example.com", "c@example.org")
        self.assertIsNone(self.deliver(backend, envelope, makeMessage()))
        [name] = listFiles(os.path.join(self.root, "new"))
        with open(os.path.join(self.root, "new", name), "rb") as f:
            self.assertNotIn(b"Delivered-To", f.read())

    def test_fsyncBeforeFiring(self) -> None:
        """The file is fsync'd, then new/, all before the Deferred fires."""
        backend = self.backend()
        synced: list[str] = []
        realFsync = os.fsync

        def fsync(fd: int) -> None:
            synced.append(os.readlink(f"/proc/self/fd/{fd}"))
            realFsync(fd)

        self.patch(os, "fsync", fsync)
        seen: list[list[str]] = []
        d = backend.deliver(makeEnvelope("a@example.com", "b@example.com"), makeMessage())
        d.addCallback(lambda _: seen.append(list(synced)))
        self.successResultOf(d)
        newDir = os.path.realpath(os.path.join(self.root, "new"))
        tmpDir = os.path.realpath(os.path.join(self.root, "tmp"))
        [fileSync, dirSync] = seen[0]
        self.assertEqual(os.path.dirname(fileSync), tmpDir)
        self.assertEqual(dirSync, newDir)

    def test_recreatesMissingMaildir(self) -> None:
        """If tmp/ was removed after start, it is created again."""
        backend = self.backend()
        os.rmdir(os.path.join(self.root, "tmp"))
        self.assertIsNone(
            self.deliver(backend, makeEnvelope("a@example.com", "b@example.com"), makeMessage())
        )
        self.assertEqual(len(listFiles(os.path.join(self.root, "new"))), 1)

    def test_usesThePool(self) -> None:
        """The blocking work runs through the pool given, one job per delivery."""
        backend = self.backend()
        self.deliver(backend, makeEnvelope("a@example.com", "b@example.com"), makeMessage())
        self.assertEqual(self.reactor.pool.calls, 1)


class MaildirErrorTests(MaildirTestsMixin, TestCase):
    """Failures map to 4xx replies and leave nothing behind."""

    def test_closedMessage(self) -> None:
        """A message its owner closed before deliver was called: 451, logged, no file."""
        from twisted.logger import LogEvent, globalLogPublisher

        events: list[LogEvent] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        backend = self.backend()
        message = makeMessage()
        message.close()
        result = self.deliver(backend, makeEnvelope("a@example.com", "b@example.com"), message)
        self.assertEqual([r.code for r in result.replies], [451])
        self.assertEqual(listFiles(os.path.join(self.root, "new")), [])
        self.assertEqual(self.reactor.pool.calls, 0)
        self.assertTrue(any("closed before delivery" in str(e.get("log_format")) for e in events))

    def test_heldWhileWriting(self) -> None:
        """The message is held while the thread writes: closing it then changes nothing."""
        backend = self.backend()
        message = makeMessage(MESSAGE * 100, spill=64)
        seen: list[tuple[bool, bool]] = []
        real = backend.deliverFile

        def deliverFile(folder: str, prefix: bytes, m: Message) -> str:
            m.close()  # what the server does when its client goes away
            seen.append((m.closing, m.closed))
            return real(folder, prefix, m)

        backend.deliverFile = deliverFile  # type: ignore[method-assign]
        self.assertIsNone(
            self.deliver(backend, makeEnvelope("a@b.example", "c@d.example"), message)
        )
        self.assertEqual(seen, [(True, False)])
        self.assertTrue(message.closed)
        [name] = listFiles(os.path.join(self.root, "new"))
        with open(os.path.join(self.root, "new", name), "rb") as f:
            self.assertEqual(
                f.read(), b"Return-Path: <a@b.example>\n" + (MESSAGE * 100).replace(b"\r\n", b"\n")
            )

    def failFsync(self, code: int) -> None:
        def fsync(fd: int) -> None:
            raise OSError(code, os.strerror(code))

        self.patch(os, "fsync", fsync)

    def assertNothingLeft(self) -> None:
        self.assertEqual(listFiles(os.path.join(self.root, "tmp")), [])
        self.assertEqual(listFiles(os.path.join(self.root, "new")), [])

    def test_enospc(self) -> None:
        """ENOSPC gives 452 4.3.1 for every recipient and leaves no tmp file."""
        backend = self.backend()
        self.failFsync(errno.ENOSPC)
        envelope = makeEnvelope("sender@example.com", "b@example.com", "c@example.com")
        result = self.deliver(backend, envelope, makeMessage())
        self.assertIsInstance(result, DeliveryResult)
        self.assertEqual([(r.code, r.enhanced) for r in result.replies], [(452, (4, 3, 1))] * 2)
        self.assertNothingLeft()

    def test_edquot(self) -> None:
        """EDQUOT gives 452 4.2.2."""
        backend = self.backend()
        self.failFsync(errno.EDQUOT)
        result = self.deliver(
            backend, makeEnvelope("a@example.com", "b@example.com"), makeMessage()
        )
        self.assertEqual(result.replies[0].enhanced, (4, 2, 2))
        self.assertEqual(result.replies[0].code, 452)
        self.assertNothingLeft()

    def test_otherOSError(self) -> None:
        """Any other OSError gives 451 4.3.0 with a short text."""
        backend = self.backend()
        self.failFsync(errno.EIO)
        result = self.deliver(
            backend, makeEnvelope("a@example.com", "b@example.com"), makeMessage()
        )
        reply = result.replies[0]
        self.assertEqual((reply.code, reply.enhanced), (451, (4, 3, 0)))
        self.assertNotIn(self.root, str(reply))
        self.assertNothingLeft()

    def test_directoryFsyncFails(self) -> None:
        """If new/ cannot be fsync'd, the reply is 4xx and the file is removed from new/."""
        backend = self.backend()
        realFsync = os.fsync

        def fsync(fd: int) -> None:
            if os.path.isdir(f"/proc/self/fd/{fd}"):
                raise OSError(errno.EIO, "I/O error")
            realFsync(fd)

        self.patch(os, "fsync", fsync)
        result = self.deliver(
            backend, makeEnvelope("a@example.com", "b@example.com"), makeMessage()
        )
        self.assertEqual(result.replies[0].code, 451)
        self.assertNothingLeft()

    def test_readFailure(self) -> None:
        """A message that cannot be read gives 451 and a logged failure, no file."""
        backend = self.backend()
        message = FailingMessage(RuntimeError("boom"))
        result = self.deliver(backend, makeEnvelope("a@example.com", "b@example.com"), message)
        self.assertEqual(result.replies[0].code, 451)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertNothingLeft()

    def test_partialFailure(self) -> None:
        """In the user layout one broken Maildir fails only its own recipients, in order."""
        backend = self.backend("user")
        with open(os.path.join(self.root, "bob"), "w"):
            pass  # a file where bob's Maildir should be
        envelope = makeEnvelope(
            "s@example.com", "alice@example.com", "bob@example.com", "carol@example.com"
        )
        result = self.deliver(backend, envelope, makeMessage())
        self.assertEqual([r.code for r in result.replies], [250, 451, 250])
        self.assertEqual(len(listFiles(os.path.join(self.root, "alice", "new"))), 1)
        self.assertEqual(len(listFiles(os.path.join(self.root, "carol", "new"))), 1)


class MaildirLayoutTests(MaildirTestsMixin, TestCase):
    """The user and domain layouts, Delivered-To, and safe directory names."""

    def readAll(self, maildir: str) -> list[bytes]:
        new = os.path.join(self.root, maildir, "new")
        out = []
        for name in listFiles(new):
            with open(os.path.join(new, name), "rb") as f:
                out.append(f.read())
        return out

    def test_userLayout(self) -> None:
        """Each recipient gets PATH/<local part>/, lowercased, with Return-Path and Delivered-To first."""
        backend = self.backend("user")
        envelope = makeEnvelope("s@example.com", "alice@example.com", "Bob@example.com")
        self.assertIsNone(self.deliver(backend, envelope, makeMessage()))
        self.assertEqual(listFiles(self.root), ["alice", "bob"])
        lf = MESSAGE.replace(b"\r\n", b"\n")
        head = b"Return-Path: <s@example.com>\n"
        self.assertEqual(self.readAll("alice"), [head + b"Delivered-To: alice@example.com\n" + lf])
        self.assertEqual(self.readAll("bob"), [head + b"Delivered-To: Bob@example.com\n" + lf])
        for sub in ("tmp", "new", "cur"):
            mode = os.stat(os.path.join(self.root, "alice", sub)).st_mode
            self.assertEqual(stat.S_IMODE(mode), 0o700)

    def test_sameMaildirOneFile(self) -> None:
        """Recipients that map to one Maildir share one file."""
        backend = self.backend("user")
        envelope = makeEnvelope("s@example.com", "bob@a.example", "BOB@b.example")
        self.assertIsNone(self.deliver(backend, envelope, makeMessage()))
        [data] = self.readAll("bob")
        self.assertTrue(
            data.startswith(b"Return-Path: <s@example.com>\nDelivered-To: bob@a.example\n")
        )

    def test_domainLayout(self) -> None:
        """The domain layout is PATH/<domain A-label>/<local part>/."""
        backend = self.backend("domain")
        envelope = makeEnvelope("s@example.com", "alice@Example.COM", "x@bücher.example")
        self.assertIsNone(self.deliver(backend, envelope, makeMessage()))
        self.assertEqual(listFiles(self.root), ["example.com", "xn--bcher-kva.example"])
        self.assertEqual(len(self.readAll(os.path.join("example.com", "alice"))), 1)
        self.assertEqual(len(self.readAll(os.path.join("xn--bcher-kva.example", "x"))), 1)

    def test_pathEscapes(self) -> None:
        """Local parts like ../x, .hidden, a/b, .. and "" stay inside PATH, encoded."""
        backend = self.backend("user")
        locals_ = ["../x", ".hidden", "a/b", "..", "", "%2E", "ctl\x01"]
        envelope = makeEnvelope(
            "s@example.com", *(Address(lp, Domain("example.com")) for lp in locals_)
        )
        self.assertIsNone(self.deliver(backend, envelope, makeMessage()))
        names = listFiles(self.root)
        self.assertEqual(
            sorted(names),
            sorted(["%2E.%2Fx", "%2Ehidden", "a%2Fb", "%2E.", "%", "%252e", "ctl%01"]),
        )
        root = os.path.realpath(self.root)
        for dirpath, _dirs, files in os.walk(self.root):
            for f in files:
                self.assertTrue(os.path.realpath(os.path.join(dirpath, f)).startswith(root + "/"))
        self.assertFalse(os.path.exists(os.path.join(os.path.dirname(self.root), "x")))

    def test_quotedLocalPartFromTheWire(self) -> None:
        """A quoted local part parsed from RCPT TO ("../../etc"@example.com) cannot escape."""
        backend = self.backend("domain")
        envelope = makeEnvelope("s@example.com", '"../../etc"@example.com')
        self.assertIsNone(self.deliver(backend, envelope, makeMessage()))
        self.assertEqual(listFiles(os.path.join(self.root, "example.com")), ["%2E.%2F..%2Fetc"])

    def test_literalDomain(self) -> None:
        """An address literal with a slash is a safe directory name too."""
        backend = self.backend("domain")
        envelope = makeEnvelope("s@example.com", "a@[x-tag:a/b]", "b@[192.0.2.1]")
        self.assertIsNone(self.deliver(backend, envelope, makeMessage()))
        self.assertEqual(listFiles(self.root), ["[192.0.2.1]", "[x-tag:a%2Fb]"])


class SafeNameTests(TestCase):
    """The local part / domain to file name mapping."""

    def test_examples(self) -> None:
        """Unsafe characters are %XX-encoded, others kept, case folded to lower."""
        self.assertEqual(safeName("Bob"), "bob")
        self.assertEqual(safeName("a.b+c"), "a.b+c")
        self.assertEqual(safeName("jörg"), "jörg")
        self.assertEqual(safeName("a/b"), "a%2Fb")
        self.assertEqual(safeName("a\x00b"), "a%00b")
        self.assertEqual(safeName("\x7f\x85"), "%7F%C2%85")
        self.assertEqual(safeName("."), "%2E")
        self.assertEqual(safeName("a.."), "a..")
        self.assertEqual(safeName("100%"), "100%25")
        self.assertEqual(safeName(""), "%")

    def test_injective(self) -> None:
        """Distinct lowercased inputs never share a name."""
        inputs = ["", "%", "%25", ".", "%2e", "a/b", "a%2Fb", "..", ".%2E", "x\x00", "x%00"]
        names = [safeName(i) for i in inputs]
        self.assertEqual(len(set(names)), len(inputs))
        for name in names:
            self.assertNotIn("/", name)
            self.assertNotIn(name, ("", ".", ".."))
            self.assertFalse(name.startswith("."))


class ReplyMappingTests(TestCase):
    """The OS error to SMTP reply mapping shared by the file backends."""

    def test_mapping(self) -> None:
        """ENOSPC, EDQUOT, locks and the rest map to their replies."""
        cases: list[tuple[BaseException, Reply]] = [
            (OSError(errno.ENOSPC, "full"), Reply(452, (4, 3, 1))),
            (OSError(errno.EDQUOT, "quota"), Reply(452, (4, 2, 2))),
            (_files.MailboxLocked("x"), Reply(451, (4, 2, 0))),
            (OSError(errno.EACCES, "denied"), Reply(451, (4, 3, 0))),
            (ValueError("bug"), Reply(451, (4, 3, 0))),
        ]
        for error, expected in cases:
            reply = _files.replyForError(error)
            self.assertEqual((reply.code, reply.enhanced), (expected.code, expected.enhanced))


class RealThreadPoolTests(TestCase):
    """The backend with the real reactor and its disk thread pool."""

    def test_realReactor(self) -> Deferred[None]:
        """Delivery through the disk pool fires None once the file is in new/."""
        from twisted.internet import reactor

        from mailframe._threads import DISK, threadPools

        root = self.mktemp()
        backend = MaildirBackend(reactor, root)  # type: ignore[arg-type]
        threads: list[str] = []
        real = backend.deliverFile

        def deliverFile(folder: str, prefix: bytes, message: Message) -> str:
            import threading

            threads.append(threading.current_thread().name)
            return real(folder, prefix, message)

        backend.deliverFile = deliverFile  # type: ignore[method-assign]
        d = backend.deliver(makeEnvelope("a@example.com", "b@example.com"), makeMessage())

        def check(result: object) -> None:
            self.assertIsNone(result)
            self.assertEqual(len(os.listdir(os.path.join(root, "new"))), 1)
            pool = threadPools(reactor).pool(DISK)
            self.assertIsNot(pool, reactor.getThreadPool())
            self.assertEqual(len(threads), 1)
            self.assertIn(f"mailframe-{DISK}", threads[0])

        return d.addCallback(check)


__all__ = [
    "FailingMessage",
    "SynchronousReactor",
    "SynchronousThreadPool",
    "makeEnvelope",
    "makeMessage",
]
