"""The mailframe-webhook bench server: a twisted.web receiver answering 200
to every POST, and twistd mailframe delivering to it.

    webhook_receiver.py --twistd TWISTD -- MAILFRAME-ARGS...

The receiver listens on a free loopback port first; then twistd mailframe
starts as a child (same process group, same stdout) with MAILFRAME-ARGS and
`--deliver webhook:http://HOST:PORT/bench` plus the options in --webhook.
Each 250 mailframe gives waits for the receiver's 200, so mailframe's own
"stopping: N messages" line counts what got through; on SIGTERM the
receiver also prints "bench-webhook: posts=N octets=M".
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys

from twisted.internet import defer, reactor
from twisted.web.resource import Resource
from twisted.web.server import Request, Site


class Receiver(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.posts = 0
        self.octets = 0

    def render_POST(self, request: Request) -> bytes:
        if request.content is not None:
            self.octets += len(request.content.read())
        self.posts += 1
        return b"ok\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--twistd", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--webhook", default="", help="options of the webhook description")
    ap.add_argument("--make-secret", help="write a random key to this file first")
    ap.add_argument("mailframe", nargs=argparse.REMAINDER)
    opt = ap.parse_args()
    if opt.make_secret:
        with open(opt.make_secret, "wb") as f:
            f.write(os.urandom(32).hex().encode())
    receiver = Receiver()
    site = Site(receiver)
    site.log = lambda request: None  # type: ignore[method-assign]
    port = reactor.listenTCP(0, site, interface=opt.host)  # type: ignore[attr-defined]
    url = f"http://{opt.host}:{port.getHost().port}/bench"
    deliver = f"webhook:{url}" + (f":{opt.webhook}" if opt.webhook else "")
    args = [a for a in opt.mailframe if a != "--"]
    child = subprocess.Popen([opt.twistd, *args, "--deliver", deliver])

    def stopped() -> defer.Deferred[None]:
        """At shutdown (SIGTERM): stop mailframe first, then count."""
        done: defer.Deferred[None] = defer.Deferred()
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)

        def wait() -> None:
            if child.poll() is None:
                reactor.callLater(0.05, wait)  # type: ignore[attr-defined]
                return
            print(f"bench-webhook: posts={receiver.posts} octets={receiver.octets}", flush=True)
            done.callback(None)

        wait()
        return done

    def watch() -> None:
        if child.poll() is not None:  # mailframe ended on its own
            reactor.stop()  # type: ignore[attr-defined]
        else:
            reactor.callLater(1, watch)  # type: ignore[attr-defined]

    reactor.addSystemEventTrigger("before", "shutdown", stopped)  # type: ignore[attr-defined]
    watch()
    reactor.run()  # type: ignore[attr-defined]
    sys.exit(child.returncode or 0)


if __name__ == "__main__":
    main()
