#!/usr/bin/env python3
"""Durable aiosmtpd peer: writes every message to a Maildir before answering 250.

Same recipe as twisted_mail_maildir.py (maildir_store.Maildir.deliver: write
to tmp/, fsync, rename into new/, fsync new/), one file per message (not per
recipient), "Return-Path: <sender>" prepended, CRLF stored as LF.  The
blocking write+fsync runs in a ThreadPoolExecutor (--threads, default 20)
via run_in_executor; --inline runs it on the event loop thread, --no-fsync
drops the fsyncs.  Plain asyncio server (no Controller thread), as in
aiosmtpd_sink.py; --uvloop runs it on uvloop.

On SIGTERM/SIGINT it prints:
    bench-sink: messages=N deliveries=D files=F
(deliveries = recipients of durably stored messages, F = entries in new/).

    python aiosmtpd_maildir.py --port 2525 --maildir DIR [--host 127.0.0.1]
"""

import argparse
import asyncio
import os
import signal
import sys
from concurrent.futures import ThreadPoolExecutor

from aiosmtpd.smtp import SMTP

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from maildir_store import Maildir


class MaildirHandler:
    def __init__(self, store, pool, inline):
        self.store = store
        self.pool = pool
        self.inline = inline
        self.messages = 0
        self.deliveries = 0

    async def handle_DATA(self, server, session, envelope):
        data = (
            b"Return-Path: <"
            + (envelope.mail_from or "").encode()
            + b">\n"
            + envelope.content.replace(b"\r\n", b"\n")
        )
        if self.inline:
            self.store.deliver(data)
        else:
            await asyncio.get_running_loop().run_in_executor(self.pool, self.store.deliver, data)
        self.messages += 1
        self.deliveries += len(envelope.rcpt_tos)
        return "250 OK"


async def serve(a):
    loop = asyncio.get_running_loop()
    store = Maildir(a.maildir, fsync=not a.no_fsync, host=a.hostname)
    pool = ThreadPoolExecutor(max_workers=a.threads, thread_name_prefix="maildir")
    handler = MaildirHandler(store, pool, a.inline)
    server = await loop.create_server(
        lambda: SMTP(handler, hostname=a.hostname, loop=loop),
        host=a.host,
        port=a.port,
        backlog=1024,
        reuse_address=True,
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(
        f"aiosmtpd_maildir listening on {a.host}:{a.port} maildir={store.root} "
        f"fsync={store.fsync} mode={'inline' if a.inline else f'threads={a.threads}'} "
        f"loop={type(loop).__module__}",
        flush=True,
    )
    await stop.wait()
    server.close()
    pool.shutdown(wait=True)
    print(
        f"bench-sink: messages={handler.messages} deliveries={handler.deliveries} "
        f"files={store.count_new()}",
        file=sys.stderr,
        flush=True,
    )


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--hostname", default="localhost")
    ap.add_argument("--maildir", default="Maildir", help="Maildir root (created)")
    ap.add_argument("--threads", type=int, default=20, help="executor size for write+fsync")
    ap.add_argument("--inline", action="store_true", help="write+fsync on the event loop thread")
    ap.add_argument("--no-fsync", action="store_true", help="skip both fsyncs (not durable)")
    ap.add_argument("--uvloop", action="store_true", help="run on uvloop")
    a = ap.parse_args()
    if a.uvloop:
        import uvloop

        uvloop.run(serve(a))
    else:
        asyncio.run(serve(a))


if __name__ == "__main__":
    main()
