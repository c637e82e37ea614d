#!/usr/bin/env python3
"""The floor of any Twisted SMTP server: a Protocol answering constants.

Every command line gets a fixed reply chosen by its first four octets; in
DATA the input is scanned in bulk for CRLF.CRLF (as mailframe scans it),
which gets "250 OK"; the replies to one read leave in one write.  No parsing, no
addresses, no limits, no trace field: what an SMTP server on Twisted costs
before it does any of an SMTP server's work (Twisted's reactor and
transport, and a line split).  bench/profile.py compares mailframe's instructions per
message with it.  Not a correct SMTP server: never use it for anything else.

On SIGTERM/SIGINT it prints:  bench-sink: messages=M deliveries=D

    python twisted_constant.py --port 2525 [--host 127.0.0.1]
"""

import argparse
import sys

from twisted.internet import epollreactor

epollreactor.install()

from twisted.internet import reactor  # noqa: E402
from twisted.internet.protocol import Factory, Protocol  # noqa: E402

STATS = {"messages": 0, "deliveries": 0}
ANSWERS = {
    b"EHLO": b"250-localhost\r\n250-PIPELINING\r\n250 8BITMIME\r\n",
    b"HELO": b"250 localhost\r\n",
    b"MAIL": b"250 OK\r\n",
    b"RCPT": b"250 OK\r\n",
    b"DATA": b"354 go ahead\r\n",
    b"RSET": b"250 OK\r\n",
    b"NOOP": b"250 OK\r\n",
    b"QUIT": b"221 bye\r\n",
}


class Constant(Protocol):
    """Lines found with bytes.find, DATA scanned in bulk for CRLF.CRLF, one write per read."""

    inData = False
    rcpts = 0

    def connectionMade(self):
        self.buf = b""
        self.transport.write(b"220 localhost ESMTP\r\n")

    def dataReceived(self, data):
        buf = self.buf + data if self.buf else data
        out = []
        pos = 0
        while True:
            if self.inData:
                end = buf.find(b"\r\n.\r\n", pos - 2 if pos >= 2 else pos)
                if end < 0:
                    pos = max(pos, len(buf) - 4)
                    break
                pos = end + 5
                self.inData = False
                STATS["messages"] += 1
                STATS["deliveries"] += self.rcpts
                self.rcpts = 0
                out.append(b"250 OK\r\n")
                continue
            end = buf.find(b"\r\n", pos)
            if end < 0:
                break
            verb = buf[pos : pos + 4].upper()
            pos = end + 2
            out.append(ANSWERS.get(verb, b"500 what\r\n"))
            if verb == b"RCPT":
                self.rcpts += 1
            elif verb == b"DATA":
                self.inData = True
                pos -= 2  # the CRLF before a first line "." counts
            elif verb == b"QUIT":
                self.transport.write(b"".join(out))
                self.transport.loseConnection()
                return
        self.buf = buf[pos:]
        if out:
            self.transport.write(b"".join(out))


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    a = ap.parse_args()
    factory = Factory.forProtocol(Constant)
    factory.noisy = False
    reactor.listenTCP(a.port, factory, backlog=1024, interface=a.host)
    print(f"twisted_constant listening on {a.host}:{a.port}", flush=True)
    reactor.run()
    print(
        f"bench-sink: messages={STATS['messages']} deliveries={STATS['deliveries']}",
        file=sys.stderr,
        flush=True,
    )


if __name__ == "__main__":
    main()
