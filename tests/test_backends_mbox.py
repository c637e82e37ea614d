"""Tests for mailframe.backends.mbox: format, mboxrd escaping, locking, truncation."""

from __future__ import annotations

import errno
import mailbox
import os
import re
import stat
import subprocess
import sys
import time
from typing import Any

from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from mailframe.address import Address, parseMailbox
from mailframe.backends import mbox as mboxModule
from mailframe.backends.mbox import MboxBackend, escapeFrom, fromLine
from mailframe.envelope import Envelope
from mailframe.interfaces import IDeliveryBackend
from mailframe.message import Message
from tests.test_backends_maildir import (
    MESSAGE,
    FailingMessage,
    SynchronousReactor,
    makeEnvelope,
    makeMessage,
)

LF = MESSAGE.replace(b"\r\n", b"\n")
ESCAPE_BODY = (
    b"Subject: escapes\r\n\r\n"
    b"From here\r\n"
    b">From there\r\n"
    b">>From everywhere\r\n"
    b"Fromage\r\n"
    b" From indented\r\n"
    b"From"
)
_UNESCAPE_RE = re.compile(rb"^>(>*From )", re.MULTILINE)


def mboxrdUnescape(data: bytes) -> bytes:
    """What an mboxrd reader does to a message's lines."""
    return _UNESCAPE_RE.sub(rb"\1", data)


class MboxTestsMixin:
    """A backend on a temporary path, delivered to synchronously."""

    def backend(self, layout: str = "single", **kw: Any) -> MboxBackend:
        self.reactor = SynchronousReactor()
        self.root = self.mktemp()  # type: ignore[attr-defined]
        if layout == "single":
            os.mkdir(self.root)
            self.path = os.path.join(self.root, "mbox")
        else:
            self.path = self.root
        kw.setdefault("pool", self.reactor.pool)
        return MboxBackend(self.reactor, self.path, layout, **kw)  # type: ignore[arg-type]

    def deliver(self, backend: MboxBackend, envelope: Envelope, message: Message) -> Any:
        return self.successResultOf(backend.deliver(envelope, message))  # type: ignore[attr-defined]

    def read(self, path: str | None = None) -> bytes:
        with open(path or self.path, "rb") as f:
            return f.read()


class MboxFormatTests(MboxTestsMixin, TestCase):
    """What goes into the file, and that readers read it back."""

    def test_interface(self) -> None:
        """MboxBackend provides IDeliveryBackend."""
        self.assertTrue(verifyObject(IDeliveryBackend, self.backend()))

    def test_createsFile(self) -> None:
        """The single layout creates an empty mbox, mode 0600, at construction."""
        self.backend()
        self.assertEqual(self.read(), b"")
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)

    def test_badArguments(self) -> None:
        """An unknown layout or a directory as the mbox is a ValueError."""
        self.assertRaises(ValueError, MboxBackend, SynchronousReactor(), "x", "domain")
        d = self.mktemp()
        os.mkdir(d)
        e = self.assertRaises(ValueError, MboxBackend, SynchronousReactor(), d)
        self.assertIn("directory", str(e))

    def test_exactBytes(self) -> None:
        """One delivery is a From line, the LF message and a blank line."""
        backend = self.backend()
        self.patch(time, "time", lambda: 0.0)
        self.assertIsNone(
            self.deliver(backend, makeEnvelope("a@example.com", "b@example.com"), makeMessage())
        )
        self.assertEqual(
            self.read(),
            b"From a@example.com Thu Jan  1 00:00:00 1970\nReturn-Path: <a@example.com>\n"
            + LF
            + b"\n",
        )

    def test_severalMessages(self) -> None:
        """mailbox.mbox reads several messages back, with their senders."""
        backend = self.backend()
        senders = ["a@example.com", "", "c@example.org"]
        for i, sender in enumerate(senders):
            data = b"Subject: m%d\r\n\r\nbody %d\r\n" % (i, i)
            self.deliver(backend, makeEnvelope(sender, "r@example.com"), makeMessage(data))
        box = mailbox.mbox(self.path, create=False)
        messages = list(box)
        self.assertEqual([m["Subject"] for m in messages], ["m0", "m1", "m2"])
        self.assertEqual(
            [m.get_from().split()[0] for m in messages],
            ["a@example.com", "MAILER-DAEMON", "c@example.org"],
        )
        self.assertEqual(
            [m["Return-Path"] for m in messages], ["<a@example.com>", "<>", "<c@example.org>"]
        )
        self.assertEqual(box.get_bytes(box.keys()[1]), b"Return-Path: <>\nSubject: m1\n\nbody 1\n")

    def test_escapingRoundTrip(self) -> None:
        """From lines are mboxrd-escaped in the file and unescape to the original."""
        backend = self.backend()
        self.deliver(backend, makeEnvelope("a@example.com", "b@example.com"), makeMessage())
        self.deliver(
            backend, makeEnvelope("a@example.com", "b@example.com"), makeMessage(ESCAPE_BODY)
        )
        data = self.read()
        self.assertIn(b"\n>From here\n>>From there\n>>>From everywhere\nFromage\n From", data)
        box = mailbox.mbox(self.path, create=False)
        self.assertEqual(len(box), 2)
        original = b"Return-Path: <a@example.com>\n" + ESCAPE_BODY.replace(b"\r\n", b"\n") + b"\n"
        self.assertEqual(mboxrdUnescape(box.get_bytes(box.keys()[1])), original)

    def test_escapeAcrossChunks(self) -> None:
        """escapeFrom gives the same bytes however the input is split."""
        data = ESCAPE_BODY.replace(b"\r\n", b"\n") + b"\nFrom x\n>"
        whole = b"".join(escapeFrom([data]))
        self.assertEqual(mboxrdUnescape(whole), data)
        for i in range(len(data) + 1):
            self.assertEqual(b"".join(escapeFrom([data[:i], data[i:]])), whole, i)
        self.assertEqual(b"".join(escapeFrom(bytes([b]) for b in data)), whole)

    def test_noTrailingNewline(self) -> None:
        """A message not ending in a newline still ends with one, then a blank line."""
        backend = self.backend()
        self.deliver(backend, makeEnvelope("a@example.com", "b@example.com"), makeMessage(b"X: y"))
        self.assertTrue(self.read().endswith(b"\nX: y\n\n"))

    def test_separatorAdded(self) -> None:
        """An mbox not ending with a blank line gets one before the new message."""
        backend = self.backend()
        with open(self.path, "wb") as f:
            f.write(b"From x@example.com Thu Jan  1 00:00:00 1970\nSubject: old\n\nold")
        self.deliver(backend, makeEnvelope("a@example.com", "b@example.com"), makeMessage())
        box = mailbox.mbox(self.path, create=False)
        self.assertEqual([m["Subject"] for m in box], ["old", "hello"])

    def test_fromLine(self) -> None:
        """The From line uses asctime in UTC and makes the sender one word."""
        self.assertEqual(
            fromLine(parseMailbox("a@example.com"), 86400 * 40),
            b"From a@example.com Tue Feb 10 00:00:00 1970\n",
        )
        self.assertEqual(
            fromLine(parseMailbox('"john doe"@example.com'), 0),
            b'From "john_doe"@example.com Thu Jan  1 00:00:00 1970\n',
        )
        self.assertTrue(fromLine(Address.null(), 0).startswith(b"From MAILER-DAEMON Thu"))

    def test_userLayout(self) -> None:
        """The user layout appends to PATH/<local part> with Return-Path and Delivered-To; one copy per file."""
        backend = self.backend("user")
        envelope = makeEnvelope(
            "s@example.com", "alice@example.com", "Bob@example.com", "bob@example.org"
        )
        self.assertIsNone(self.deliver(backend, envelope, makeMessage()))
        self.assertEqual(sorted(os.listdir(self.root)), ["alice", "bob"])
        box = mailbox.mbox(os.path.join(self.root, "bob"), create=False)
        self.assertEqual(len(box), 1)
        self.assertTrue(
            box.get_bytes(box.keys()[0]).startswith(
                b"Return-Path: <s@example.com>\nDelivered-To: Bob@example.com\n"
            )
        )

    def test_userLayoutLockNames(self) -> None:
        """A local part ending in .lock is not another mailbox's lock file."""
        backend = self.backend("user")
        envelope = makeEnvelope("s@example.com", "bob@example.com", "bob.lock@example.com")
        self.assertIsNone(self.deliver(backend, envelope, makeMessage()))
        self.assertEqual(sorted(os.listdir(self.root)), ["bob", "bob%2Elock"])


class MboxLockingTests(MboxTestsMixin, TestCase):
    """Dotlock and lockf."""

    def test_lockRemoved(self) -> None:
        """The dotlock is gone after a delivery."""
        backend = self.backend()
        self.deliver(backend, makeEnvelope("a@example.com", "b@example.com"), makeMessage())
        self.assertEqual(os.listdir(self.root), ["mbox"])

    def test_dotlockHeld(self) -> None:
        """A fresh foreign dotlock makes delivery give up with 451 4.2.0, lock left alone."""
        backend = self.backend(lockTimeout=0)
        with open(self.path + ".lock", "w"):
            pass
        result = self.deliver(
            backend, makeEnvelope("a@example.com", "b@example.com"), makeMessage()
        )
        self.assertEqual((result.replies[0].code, result.replies[0].enhanced), (451, (4, 2, 0)))
        self.assertTrue(os.path.exists(self.path + ".lock"))
        self.assertEqual(self.read(), b"")

    def test_staleDotlock(self) -> None:
        """A dotlock older than 10 minutes is removed and the delivery goes through."""
        backend = self.backend(lockTimeout=0)
        lock = self.path + ".lock"
        with open(lock, "w"):
            pass
        old = time.time() - 601
        os.utime(lock, (old, old))
        self.assertIsNone(
            self.deliver(backend, makeEnvelope("a@example.com", "b@example.com"), makeMessage())
        )
        self.assertFalse(os.path.exists(lock))
        self.assertEqual(len(mailbox.mbox(self.path, create=False)), 1)

    def test_lockfHeld(self) -> None:
        """An fcntl lock held by another process makes delivery give up with 451 4.2.0."""
        backend = self.backend(lockTimeout=0)
        holder = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import fcntl, sys\n"
                "f = open(sys.argv[1], 'r+b')\n"
                "fcntl.lockf(f, fcntl.LOCK_EX)\n"
                "print('locked', flush=True)\n"
                "sys.stdin.read()\n",
                self.path,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        try:
            assert holder.stdout is not None
            self.assertEqual(holder.stdout.readline(), b"locked\n")
            result = self.deliver(
                backend, makeEnvelope("a@example.com", "b@example.com"), makeMessage()
            )
        finally:
            holder.communicate(b"")
        self.assertEqual((result.replies[0].code, result.replies[0].enhanced), (451, (4, 2, 0)))
        self.assertFalse(os.path.exists(self.path + ".lock"))
        self.assertEqual(self.read(), b"")


class MboxErrorTests(MboxTestsMixin, TestCase):
    """A failed append leaves the mbox as it was."""

    def setUpOld(self) -> tuple[MboxBackend, bytes]:
        backend = self.backend()
        self.deliver(backend, makeEnvelope("a@example.com", "b@example.com"), makeMessage())
        return backend, self.read()

    def test_failedWriteTruncates(self) -> None:
        """A read error after part of the message was written truncates the file back."""
        backend, old = self.setUpOld()
        message = FailingMessage(OSError(errno.EIO, "I/O error"))
        result = self.deliver(backend, makeEnvelope("a@example.com", "b@example.com"), message)
        self.assertEqual((result.replies[0].code, result.replies[0].enhanced), (451, (4, 3, 0)))
        self.assertEqual(self.read(), old)
        self.assertFalse(os.path.exists(self.path + ".lock"))

    def test_enospcTruncates(self) -> None:
        """ENOSPC on fsync gives 452 4.3.1 and the file is truncated back."""
        backend, old = self.setUpOld()

        def fsync(fd: int) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        self.patch(os, "fsync", fsync)
        result = self.deliver(
            backend, makeEnvelope("a@example.com", "b@example.com"), makeMessage()
        )
        self.assertEqual((result.replies[0].code, result.replies[0].enhanced), (452, (4, 3, 1)))
        self.assertEqual(self.read(), old)

    def test_edquot(self) -> None:
        """EDQUOT while writing gives 452 4.2.2."""
        backend, old = self.setUpOld()
        realWrite = os.write

        def write(fd: int, data: Any) -> int:
            if fd > 2 and bytes(data).startswith(b"From "):
                realWrite(fd, bytes(data)[:10])
                raise OSError(errno.EDQUOT, "Disk quota exceeded")
            return realWrite(fd, data)

        self.patch(mboxModule.os, "write", write)
        result = self.deliver(
            backend, makeEnvelope("a@example.com", "b@example.com"), makeMessage()
        )
        self.assertEqual((result.replies[0].code, result.replies[0].enhanced), (452, (4, 2, 2)))
        self.assertEqual(self.read(), old)

    def test_fsyncBeforeFiring(self) -> None:
        """The mbox is fsync'd before the Deferred fires."""
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
        self.assertEqual(seen, [[os.path.realpath(self.path)]])

    def test_newFileDirectorySynced(self) -> None:
        """A mailbox file created by the delivery also has its directory fsync'd."""
        backend = self.backend("user")
        synced: list[str] = []
        realFsync = os.fsync

        def fsync(fd: int) -> None:
            synced.append(os.readlink(f"/proc/self/fd/{fd}"))
            realFsync(fd)

        self.patch(os, "fsync", fsync)
        self.deliver(backend, makeEnvelope("a@example.com", "b@example.com"), makeMessage())
        root = os.path.realpath(self.root)
        self.assertEqual(synced, [os.path.join(root, "b"), root])
