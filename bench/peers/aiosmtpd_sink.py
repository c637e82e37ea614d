#!/usr/bin/env python3
"""Null-delivery SMTP peer built on aiosmtpd.

Accepts every sender and recipient (aiosmtpd's default RCPT behaviour, no
handle_RCPT hook), and handle_DATA counts the message then drops it and
answers '250 OK'.  Listens on a plain asyncio server (no Controller thread),
optionally on uvloop.

On SIGTERM/SIGINT it prints one line that the bench driver checks:
    bench-sink: messages=N deliveries=D
(deliveries = sum of recipients over all accepted messages).

    python aiosmtpd_sink.py --port 2525 [--host 127.0.0.1] [--uvloop]
"""

import argparse
import asyncio
import signal
import sys

from aiosmtpd.smtp import SMTP


class NullHandler:
    def __init__(self):
        self.messages = 0
        self.deliveries = 0

    async def handle_DATA(self, server, session, envelope):
        # envelope.content holds the whole message in memory; just drop it.
        self.messages += 1
        self.deliveries += len(envelope.rcpt_tos)
        return "250 OK"


async def serve(host, port, hostname):
    loop = asyncio.get_running_loop()
    handler = NullHandler()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname=hostname, loop=loop),
        host=host,
        port=port,
        backlog=1024,
        reuse_address=True,
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"aiosmtpd_sink listening on {host}:{port} loop={type(loop).__module__}", flush=True)
    await stop.wait()
    server.close()
    print(
        f"bench-sink: messages={handler.messages} deliveries={handler.deliveries}",
        file=sys.stderr,
        flush=True,
    )


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument(
        "--hostname",
        default="localhost",
        help="name in the banner (avoids a getfqdn() per connection)",
    )
    ap.add_argument("--uvloop", action="store_true", help="run on uvloop")
    a = ap.parse_args()
    coro = serve(a.host, a.port, a.hostname)
    if a.uvloop:
        import uvloop

        uvloop.run(coro)
    else:
        asyncio.run(coro)


if __name__ == "__main__":
    main()
