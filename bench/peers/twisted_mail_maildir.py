#!/usr/bin/env python3
"""Durable twisted.mail peer: ESMTP server that writes every message to a Maildir.

The fair Python counterpart of bench's postfix-durable peer: the 250 reply to
DATA is sent only after the message is on disk (maildir_store.Maildir.deliver:
write to tmp/, fsync, rename into new/, fsync new/).  twisted.mail gives one
IMessage per recipient (every DATA line is handed to each); each IMessage
buffers its lines and, at end of data, writes its own Maildir file, as a
local MDA would per mailbox.

By default the blocking write+fsync runs in the reactor's thread pool
(--threads, default 20 = smtp-source's -s 20), so fsyncs of concurrent
sessions overlap as they do across Postfix's cleanup processes; --inline
does it in the reactor thread instead (one fsync at a time), --no-fsync
drops both fsyncs (page-cache only).

Each file starts with "Return-Path: <sender>"; lines are stored with LF.
Per-message log.msg() is off, as in twisted_mail_sink.py (--noisy: on).

On SIGTERM/SIGINT it prints:
    bench-sink: messages=-1 deliveries=D files=F
(D = fsynced Maildir files written, F = entries in new/ at exit).

    python twisted_mail_maildir.py --port 2525 --maildir DIR [--host 127.0.0.1]
"""

import argparse
import os
import sys

from twisted.internet import epollreactor

epollreactor.install()

from twisted.internet import defer, reactor, threads  # noqa: E402
from twisted.mail import smtp  # noqa: E402
from zope.interface import implementer  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from maildir_store import Maildir  # noqa: E402


@implementer(smtp.IMessage)
class MaildirMessage:
    __slots__ = ("inline", "lines", "store")

    def __init__(self, store, inline):
        self.store = store
        self.inline = inline
        self.lines = []

    def lineReceived(self, line):
        self.lines.append(line)

    def eomReceived(self):
        self.lines.append(b"")
        data = b"\n".join(self.lines)
        self.lines = None
        if self.inline:
            try:
                return defer.succeed(self.store.deliver(data))
            except Exception:
                return defer.fail()
        return threads.deferToThread(self.store.deliver, data)

    def connectionLost(self):
        self.lines = None  # aborted transaction: nothing was written


@implementer(smtp.IMessageDelivery)
class MaildirDelivery:
    def __init__(self, store, inline):
        self.store = store
        self.inline = inline

    def receivedHeader(self, helo, origin, recipients):
        return b"Return-Path: <" + str(origin).encode() + b">"

    def validateFrom(self, helo, origin):
        return origin

    def validateTo(self, user):
        store, inline = self.store, self.inline
        return lambda: MaildirMessage(store, inline)


class QuietESMTP(smtp.ESMTP):
    noisy = False


class MaildirSMTPFactory(smtp.SMTPFactory):
    protocol = QuietESMTP
    noisy = False

    def __init__(self, domain, delivery, noisy_proto=False):
        smtp.SMTPFactory.__init__(self)
        self.domain = domain
        self.delivery = delivery
        if noisy_proto:
            self.protocol = smtp.ESMTP

    def buildProtocol(self, addr):
        p = smtp.SMTPFactory.buildProtocol(self, addr)
        p.delivery = self.delivery
        return p


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--hostname", default="localhost")
    ap.add_argument("--maildir", default="Maildir", help="Maildir root (created)")
    ap.add_argument("--threads", type=int, default=20, help="thread pool size for write+fsync")
    ap.add_argument("--inline", action="store_true", help="write+fsync in the reactor thread")
    ap.add_argument("--no-fsync", action="store_true", help="skip both fsyncs (not durable)")
    ap.add_argument(
        "--noisy", action="store_true", help="keep twisted.mail's per-message log.msg()"
    )
    a = ap.parse_args()
    store = Maildir(a.maildir, fsync=not a.no_fsync, host=a.hostname)
    reactor.suggestThreadPoolSize(a.threads)
    factory = MaildirSMTPFactory(
        a.hostname.encode("ascii"), MaildirDelivery(store, a.inline), noisy_proto=a.noisy
    )
    reactor.listenTCP(a.port, factory, backlog=1024, interface=a.host)
    print(
        f"twisted_mail_maildir listening on {a.host}:{a.port} maildir={store.root} "
        f"fsync={store.fsync} mode={'inline' if a.inline else f'threads={a.threads}'} "
        f"reactor={type(reactor).__name__}",
        flush=True,
    )
    reactor.run()  # SIGTERM/SIGINT stop the reactor (and join the thread pool)
    print(
        f"bench-sink: messages=-1 deliveries={store.delivered} files={store.count_new()}",
        file=sys.stderr,
        flush=True,
    )


if __name__ == "__main__":
    main()
