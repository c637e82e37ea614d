"""
LMTP (issue 11) with programs someone else wrote, each started by the
test with a private configuration in a temporary directory, on loopback
and unix sockets only:

  - Python's smtplib.LMTP against C{twistd -n mailframe --lmtp unix:PATH}:
    one reply per accepted recipient after the data, a bad recipient in
    the middle refused at RCPT and another one after the data;
  - C{twistd -n mailframe --deliver lmtp:unix:PATH} in front of a private
    Dovecot: a message to three recipients, one unknown to Dovecot, reaches
    the two mailboxes once each (fetched byte for byte with imaplib), and
    the third gets its own refusal: 550 at the SMTP session, or with
    C{--spool} a report to the sender;
  - a private Postfix whose virtual domain goes to mailframe's LMTP server
    (C{virtual_transport = lmtp:inet:127.0.0.1:PORT}): one recipient
    refused at RCPT, one after the data, the others delivered, as Postfix's
    log and queue and mailframe's backend show.

A missing program skips its test, or fails it with MAILFRAME_REQUIRE_INTEROP=1.
Every wait is bounded; nothing sleeps in the reactor thread.
"""

from __future__ import annotations

import email
import shutil
import smtplib
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from mailframe import reply as R
from mailframe.backends.memory import MemoryBackend
from mailframe.config import ServerConfig
from mailframe.envelope import DeliveryResult, Envelope, Recipient, SessionInfo
from mailframe.interfaces import IDeliveryBackend, IRecipientValidator
from mailframe.message import Message
from mailframe.server import SMTPServerFactory
from tests.interop._mailpeers import (
    HOST,
    PrivateDovecot,
    PrivatePostfix,
    Twistd,
    freePort,
    listening,
    scratch,
    waitFor,
)
from tests.interop._support import inThread

TIMEOUT = 120
SOCKET_TIMEOUT = 15
MESSAGE = (
    b"From: Sender <user1@example.com>\r\nTo: several@example.com\r\n"
    b"Subject: LMTP interop\r\nMessage-ID: <lmtp-interop@example.com>\r\n\r\n"
    b".a line that starts with a dot\r\nSecond line\r\n\r\nLast line\r\n"
)


def big(n: int = 2_500_000) -> bytes:
    """A message larger than one BDAT chunk, every line numbered."""
    head = b"From: user1@example.com\r\nSubject: large\r\nMessage-ID: <big@example.com>\r\n\r\n"
    lines = [b"line %07d of a large message delivered over LMTP\r\n" % i for i in range(n // 50)]
    return head + b"".join(lines)


def maildirFiles(path: Path) -> list[bytes]:
    new = path / "new"
    return [f.read_bytes() for f in sorted(new.iterdir())] if new.exists() else []


class SmtplibLMTPTests(SynchronousTestCase):
    """smtplib.LMTP against C{twistd -n mailframe --lmtp unix:PATH}."""

    def test_oneReplyPerRecipient(self) -> None:
        """Each accepted recipient gets its own reply after the data; refused ones none."""
        home = scratch("mailframe-lmtp-")
        self.addCleanup(shutil.rmtree, home, True)
        (home / "users").write_text("ann@example.com\nbob@example.com\ncarol@example.com\n")
        maildir = home / "Maildir"
        maildir.mkdir()
        (maildir / "carol").write_text("a file where carol's Maildir would be\n")
        socketPath = home / "lmtp.sock"
        server = Twistd(home, "--lmtp", f"unix:{socketPath}", "--hostname", "mx.test",
                        "--domain", "example.com", "--validate", f"addresses:{home}/users",
                        "--deliver", f"maildir:{maildir}:layout=user")  # fmt: skip
        self.addCleanup(server.stop)
        server.start(socketPath.exists)
        client = smtplib.LMTP(str(socketPath), timeout=SOCKET_TIMEOUT)
        try:
            code, lines = client.ehlo("client.test")  # LHLO, as smtplib.LMTP sends it
            self.assertEqual(code, 250, lines)
            self.assertTrue(client.has_extn("pipelining"))
            self.assertEqual(client.mail("sender@example.org")[0], 250)
            replies = [client.rcpt(f"{name}@example.com")[0]
                       for name in ("ann", "nobody", "carol", "bob")]  # fmt: skip
            self.assertEqual(replies, [250, 550, 250, 250])
            after = [client.data(MESSAGE), client.getreply(), client.getreply()]
            client.quit()
        finally:
            client.close()
        self.assertEqual([code for code, _ in after], [250, 451, 250], after)
        self.assertIn(b"<ann@example.com>", after[0][1])
        self.assertIn(b"<bob@example.com>", after[2][1])
        for name in ("ann", "bob"):
            [stored] = maildirFiles(maildir / name)
            self.assertTrue(stored.replace(b"\n", b"\r\n").endswith(MESSAGE), stored[:300])
            self.assertIn(b" with LMTP id ", stored)


class DovecotTests(SynchronousTestCase):
    """C{--deliver lmtp:unix:PATH} in front of a private Dovecot; IMAP reads the result."""

    users = {"user1": "secret one", "user2": "secret two"}
    recipients = ["user1@example.com", "ghost@example.com", "user2@example.com"]

    def start(self, *args: str) -> tuple[PrivateDovecot, Path, int]:
        home = scratch("mailframe-dovecot-")
        self.addCleanup(shutil.rmtree, home, True)
        (home / "dovecot").mkdir()
        (home / "dovecot").chmod(0o755)
        dovecot = PrivateDovecot(home / "dovecot", self.users)
        self.addCleanup(dovecot.stop)
        dovecot.start()
        port = freePort()
        server = Twistd(home, "--listen", f"tcp:{port}:interface={HOST}", "--hostname",
                        "mx.test", "--domain", "example.com", "--deliver",
                        f"lmtp:unix:{dovecot.lmtpSocket}:idle=2", *args)  # fmt: skip
        self.addCleanup(server.stop)
        server.start(lambda: listening(port))
        self.server = server
        return dovecot, home, port

    def received(self, dovecot: PrivateDovecot, user: str, data: bytes) -> bytes:
        """The one copy of C{data} in the user's INBOX (Dovecot's and mailframe's fields above it)."""
        copies = [m for m in dovecot.fetchAll(user) if m.endswith(data)]
        self.assertEqual(len(copies), 1, f"{user}: {len(copies)} copies")
        head = copies[0][: -len(data)]
        self.assertEqual(head.count(b"by mx.test (mailframe) with ESMTP"), 1, head)
        self.assertIn(b"with LMTP", head)  # Dovecot's own Received: field
        return copies[0]

    def test_withoutSpool(self) -> None:
        """Two mailboxes get the message once each; the SMTP client gets the unknown one's 550."""
        dovecot, _, port = self.start()
        with smtplib.SMTP(HOST, port, timeout=SOCKET_TIMEOUT) as client:
            client.ehlo("client.test")
            with self.assertRaises(smtplib.SMTPDataError) as caught:
                client.sendmail("sender@example.org", self.recipients, MESSAGE)
            self.assertEqual(caught.exception.smtp_code, 550)
            self.assertIn(b"ghost", caught.exception.smtp_error)
            large = big()
            self.assertEqual(
                client.sendmail("sender@example.org", self.recipients[::2], large), {}
            )
        for user in self.users:
            self.received(dovecot, user, MESSAGE)
            self.received(dovecot, user, large)
            self.assertEqual(len(dovecot.fetchAll(user)), 2)

    def test_withSpool(self) -> None:
        """With --spool: 250; two mailboxes get it once each; the sender gets a report on ghost."""
        dovecot, home, port = self.start("--spool", "spool")
        with smtplib.SMTP(HOST, port, timeout=SOCKET_TIMEOUT) as client:
            refused = client.sendmail("user1@example.com", self.recipients, MESSAGE)
        self.assertEqual(refused, {})

        def reported() -> bool:
            return len(dovecot.fetchAll("user1")) >= 2

        waitFor(reported, 60, "the report on ghost@example.com in user1's INBOX", 0.2)
        self.received(dovecot, "user1", MESSAGE)
        self.received(dovecot, "user2", MESSAGE)
        self.assertEqual(len(dovecot.fetchAll("user2")), 1)
        [report] = [m for m in dovecot.fetchAll("user1") if not m.endswith(MESSAGE)]
        parsed = email.message_from_bytes(report)
        self.assertEqual(parsed.get_content_type(), "multipart/report")
        text = report.decode("utf-8", "replace")
        self.assertIn("ghost@example.com", text)
        self.assertIn("5.1.1", text)
        self.assertNotIn("user2@example.com", text.split("Content-Type: message/")[0])
        queue = home / "spool" / "queue"
        waitFor(lambda: not any(queue.iterdir()), 30, "the spool to empty", 0.2)


@implementer(IRecipientValidator)
class Known:
    """Accepts the listed local parts; no opinion on the others (550 5.1.1)."""

    def __init__(self, *names: str) -> None:
        self.names = names

    def validateRecipient(
        self, session: SessionInfo, envelope: Envelope, recipient: Recipient
    ) -> Any:
        return R.RECIPIENT_OK if recipient.address.localPart in self.names else None


@implementer(IDeliveryBackend)
class RefusesBob:
    """Keeps every message (MemoryBackend), answering bob 550 5.2.1 after the data."""

    def __init__(self) -> None:
        self.memory = MemoryBackend()

    def deliver(self, envelope: Envelope, message: Message) -> DeliveryResult:
        self.memory.deliver(envelope, message)
        disabled = R.Reply(550, (5, 2, 1), "Mailbox disabled")
        return DeliveryResult(tuple(
            disabled if r.address.localPart == "bob" else R.OK for r in envelope.recipients
        ))  # fmt: skip


class PostfixTests(TestCase):
    """A private Postfix delivering a virtual domain through mailframe's LMTP server."""

    timeout = TIMEOUT

    @defer.inlineCallbacks
    def test_virtualTransport(self) -> Any:
        """Postfix's lmtp client gets one reply per recipient; refused ones bounce, the rest go."""
        backend = RefusesBob()
        config = ServerConfig(hostname="mx.test", localDomains=frozenset({"virt.test"}),
                              lmtp=True)  # fmt: skip
        factory = SMTPServerFactory(config, backend, [Known("alice", "bob", "carol",
                                                            "postmaster")])  # fmt: skip
        port = reactor.listenTCP(0, factory, interface=HOST)  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        lmtpPort = port.getHost().port
        home = scratch("mailframe-postfix-")
        self.addCleanup(shutil.rmtree, home, True)
        users = ["alice", "bob", "carol", "dave", "postmaster"]
        postfix = PrivatePostfix(home, [
            "virtual_mailbox_domains = virt.test",
            f"virtual_mailbox_maps = texthash:{home}/etc/vmailbox",
            f"virtual_transport = lmtp:inet:{HOST}:{lmtpPort}",
        ], {"vmailbox": "".join(f"{u}@virt.test ok\n" for u in users)})  # fmt: skip
        self.addCleanup(inThread, postfix.stop)
        yield inThread(postfix.start)

        def send() -> dict[str, Any]:
            with smtplib.SMTP(HOST, postfix.smtpPort, timeout=SOCKET_TIMEOUT) as client:
                to = ["alice@virt.test", "bob@virt.test", "carol@virt.test", "dave@virt.test"]
                return client.sendmail("postmaster@virt.test", to, MESSAGE)

        self.assertEqual((yield inThread(send)), {})
        deadline = reactor.seconds() + 60  # type: ignore[attr-defined]
        while len(backend.memory.messages) < 2 or postfix.queued():
            if reactor.seconds() > deadline:  # type: ignore[attr-defined]
                self.fail(f"Postfix did not finish in time:\n{postfix.log()}")
            yield task.deferLater(reactor, 0.2, lambda: None)  # type: ignore[arg-type]
        status = postfix.deliveries()
        self.assertTrue(status["alice@virt.test"].startswith("sent (250 2.0.0 <alice@virt.test>"),
                        status)  # fmt: skip
        self.assertTrue(status["carol@virt.test"].startswith("sent (250 "), status)
        self.assertIn("said: 550 5.2.1 Mailbox disabled (in reply to end of DATA command)",
                      status["bob@virt.test"])  # fmt: skip
        self.assertTrue(status["bob@virt.test"].startswith("bounced "), status)
        self.assertIn("(in reply to RCPT TO command)", status["dave@virt.test"])
        self.assertTrue(status["dave@virt.test"].startswith("bounced "), status)
        self.assertTrue(status["postmaster@virt.test"].startswith("sent "), status)
        original, report = backend.memory.messages
        self.assertEqual([str(r.address) for r in original.envelope.recipients],
                         ["alice@virt.test", "bob@virt.test", "carol@virt.test"])  # fmt: skip
        self.assertTrue(original.data.endswith(MESSAGE.split(b"\r\n\r\n", 1)[1]), original.data)
        self.assertIn(b"with LMTP id ", original.data)
        self.assertTrue(report.envelope.mailFrom.isNull)
        for refused in (b"bob@virt.test", b"dave@virt.test"):
            self.assertIn(refused, report.data)
        self.assertEqual(postfix.queued(), 0)
