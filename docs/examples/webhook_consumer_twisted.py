"""
A consumer of mailframe's webhook, on twisted.web: it checks the signature,
keeps each message in a directory (once: a message posted again, after a
retry, is recognised by its queue ID and recipients), prints its envelope
and Subject, and only then answers 200.

    python webhook_consumer_twisted.py --port 8025 --secret-file webhook.key --store inbox

    twistd -n mailframe --spool spool \\
        --deliver 'webhook:http://127.0.0.1:8025/inbound:secret=webhook.key'

Both formats are understood: format=json (the default) is kept as KEY.json;
format=raw as KEY.eml (the message, byte for byte) and KEY.json (the
envelope).  KEY is the queue ID, a dash, and a digest of the recipients.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import sys
import time
from email.parser import BytesHeaderParser
from email.policy import default as policy

from twisted.internet import endpoints, reactor
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

TOLERANCE = 300  # seconds a signature stays good: older requests are refused (replays)


def verified(secret: bytes, header: bytes | None, signed: bytes) -> bool:
    """Check C{X-Mailframe-Signature: t=TIMESTAMP,v1=HEX} against HMAC-SHA256(t "." signed)."""
    if not header:
        return False
    fields = dict(item.split(b"=", 1) for item in header.split(b",") if b"=" in item)
    timestamp, signature = fields.get(b"t", b""), fields.get(b"v1", b"")
    if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > TOLERANCE:
        return False
    expected = hmac.new(secret, timestamp + b"." + signed, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode(), signature)


def keep(directory: str, name: str, data: bytes) -> None:
    """Write a file durably: a temporary name, fsync, rename, fsync the directory."""
    temporary = os.path.join(directory, f".{name}.tmp")
    with open(temporary, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.rename(temporary, os.path.join(directory, name))
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Inbound(Resource):
    isLeaf = True

    def __init__(self, secret: bytes, store: str | None) -> None:
        super().__init__()
        self.secret = secret
        self.store = store

    def render_POST(self, request: Request) -> bytes:
        body = request.content.read() if request.content is not None else b""
        headers = request.requestHeaders
        signature = (headers.getRawHeaders(b"x-mailframe-signature") or [b""])[0]
        if not verified(self.secret, signature, body):
            request.setResponseCode(401)
            return b"bad signature\n"
        kind = (headers.getRawHeaders(b"content-type") or [b""])[0]
        if kind.startswith(b"message/rfc822"):
            # the envelope is in a header, signed on its own
            encoded = (headers.getRawHeaders(b"x-mailframe-envelope") or [b""])[0]
            signature = (headers.getRawHeaders(b"x-mailframe-envelope-signature") or [b""])[0]
            if not verified(self.secret, signature, encoded):
                request.setResponseCode(401)
                return b"bad envelope signature\n"
            envelope = json.loads(encoded)
            subject = BytesHeaderParser(policy=policy).parsebytes(body)["subject"]
            files = [(".eml", body), (".json", encoded)]
        else:
            document = json.loads(body)
            envelope, subject = document["envelope"], document["subject"]
            files = [(".json", body)]
        recipients = [r["address"] for r in envelope["recipients"]]
        digest = hashlib.sha256("\n".join(recipients).encode()).hexdigest()[:16]
        key = f"{envelope['id']}-{digest}"
        if self.store is not None:
            if os.path.exists(os.path.join(self.store, key + ".json")):
                print(f"{key}: seen before, not kept again", flush=True)
                return b"duplicate\n"
            for suffix, data in files:  # the .json last: it marks the message complete
                keep(self.store, key + suffix, data)
        to = ", ".join(f"<{r}>" for r in recipients)
        print(f"{envelope['id']} from <{envelope['sender']}> to {to}: {subject}", flush=True)
        return b"ok\n"


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8025)
    parser.add_argument("--interface", default="127.0.0.1")
    parser.add_argument("--secret-file", required=True)
    parser.add_argument("--store", help="keep each message in this directory")
    options = parser.parse_args(argv)
    with open(options.secret_file, "rb") as f:
        secret = f.read().strip()
    site = Site(Inbound(secret, options.store))
    site.log = lambda request: None  # type: ignore[method-assign]
    endpoint = endpoints.TCP4ServerEndpoint(reactor, options.port, interface=options.interface)
    endpoint.listen(site).addCallback(
        lambda port: print(f"listening on {options.interface}:{options.port}", flush=True)
    )
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1:])
