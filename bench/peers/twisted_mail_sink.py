#!/usr/bin/env python3
"""Null-delivery SMTP peer built on twisted.mail (ESMTP protocol, epoll reactor).

An IMessageDelivery that accepts every sender and recipient and an IMessage
whose lineReceived discards the line; eomReceived counts one delivery.
Note twisted.mail's model: one IMessage per *recipient*, and every DATA line
is handed to each of them (that is the library's cost, kept on purpose).

Per-message log.msg() ("Receiving message for delivery ...") is switched off
(protocol.noisy = False) so that, like aiosmtpd with unconfigured logging,
nothing is logged per message; pass --noisy to keep Twisted's default.

On SIGTERM/SIGINT it prints:  bench-sink: messages=-1 deliveries=D

    python twisted_mail_sink.py --port 2525 [--host 127.0.0.1] [--noisy]
"""

import argparse
import sys

from twisted.internet import epollreactor

epollreactor.install()

from twisted.internet import defer, reactor  # noqa: E402
from twisted.mail import smtp  # noqa: E402
from zope.interface import implementer  # noqa: E402

STATS = {"deliveries": 0}


@implementer(smtp.IMessage)
class NullMessage:
    __slots__ = ()

    def lineReceived(self, line):
        pass

    def eomReceived(self):
        STATS["deliveries"] += 1
        return defer.succeed(None)

    def connectionLost(self):
        pass


@implementer(smtp.IMessageDelivery)
class NullDelivery:
    def receivedHeader(self, helo, origin, recipients):
        return None  # no Received: header (aiosmtpd's sink adds none either)

    def validateFrom(self, helo, origin):
        return origin

    def validateTo(self, user):
        return NullMessage  # a no-arg callable returning an IMessage


class QuietESMTP(smtp.ESMTP):
    noisy = False


class NullSMTPFactory(smtp.SMTPFactory):
    protocol = QuietESMTP
    noisy = False

    def __init__(self, domain, noisy_proto=False):
        smtp.SMTPFactory.__init__(self)
        self.domain = domain
        self.delivery = NullDelivery()
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
    ap.add_argument(
        "--noisy", action="store_true", help="keep twisted.mail's per-message log.msg()"
    )
    a = ap.parse_args()
    factory = NullSMTPFactory(a.hostname.encode("ascii"), noisy_proto=a.noisy)
    reactor.listenTCP(a.port, factory, backlog=1024, interface=a.host)
    print(
        f"twisted_mail_sink listening on {a.host}:{a.port} reactor={type(reactor).__name__}",
        flush=True,
    )
    reactor.run()  # SIGTERM/SIGINT stop the reactor
    print(f"bench-sink: messages=-1 deliveries={STATS['deliveries']}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
