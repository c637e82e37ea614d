"""
A consumer of mailframe's webhook in plain Python (the standard library's
http.server): it checks the signature, keeps each message in a directory
(once: a message posted again, after a retry, is recognised by its queue
ID and recipients), prints its envelope and Subject, and only then answers
200.

    python3 webhook_consumer.py --port 8025 --secret-file webhook.key --store inbox

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
import threading
import time
from email.parser import BytesHeaderParser
from email.policy import default as policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOLERANCE = 300  # seconds a signature stays good: older requests are refused (replays)


def verified(secret: bytes, header: str | None, signed: bytes) -> bool:
    """Check C{X-Mailframe-Signature: t=TIMESTAMP,v1=HEX} against HMAC-SHA256(t "." signed)."""
    if not header:
        return False
    fields = dict(item.split("=", 1) for item in header.split(",") if "=" in item)
    timestamp, signature = fields.get("t", ""), fields.get("v1", "")
    if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > TOLERANCE:
        return False
    expected = hmac.new(secret, timestamp.encode() + b"." + signed, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, signature)


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


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep connections alive, as mailframe does
    secret = b""
    store: str | None = None
    lock = threading.Lock()  # one message kept at a time: the duplicate check holds

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if not verified(self.secret, self.headers.get("X-Mailframe-Signature"), body):
            return self.answer(401, b"bad signature\n")
        if self.headers.get("Content-Type", "").startswith("message/rfc822"):
            # the envelope is in a header, signed on its own
            encoded = self.headers.get("X-Mailframe-Envelope", "").encode()
            signature = self.headers.get("X-Mailframe-Envelope-Signature")
            if not verified(self.secret, signature, encoded):
                return self.answer(401, b"bad envelope signature\n")
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
            with self.lock:
                if os.path.exists(os.path.join(self.store, key + ".json")):
                    print(f"{key}: seen before, not kept again", flush=True)
                    return self.answer(200, b"duplicate\n")
                for suffix, data in files:  # the .json last: it marks the message complete
                    keep(self.store, key + suffix, data)
        to = ", ".join(f"<{r}>" for r in recipients)
        print(f"{envelope['id']} from <{envelope['sender']}> to {to}: {subject}", flush=True)
        return self.answer(200, b"ok\n")

    def answer(self, code: int, text: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(text)))
        self.end_headers()
        self.wfile.write(text)

    def log_message(self, format: str, *args: object) -> None:
        pass  # one line per message is printed above


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8025)
    parser.add_argument("--interface", default="127.0.0.1")
    parser.add_argument("--secret-file", required=True)
    parser.add_argument("--store", help="keep each message in this directory")
    options = parser.parse_args(argv)
    with open(options.secret_file, "rb") as f:
        Handler.secret = f.read().strip()
    Handler.store = options.store
    server = ThreadingHTTPServer((options.interface, options.port), Handler)
    print(f"listening on {options.interface}:{options.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1:])
