"""
A consumer of mailframe's redis-stream backend in plain Python (redis-py):
it reads each entry of a stream in a consumer group, prints its envelope
and Subject, and only then acknowledges it (XACK), deleting the message's
own key at the same time when it was stored by reference (inline=), so
nothing is left behind.

    python3 redis_consumer.py redis://127.0.0.1:6379/0 mail

    twistd -n mailframe --spool spool \\
        --deliver 'redis-stream:redis://127.0.0.1:6379/0:stream=mail'

An entry not acknowledged (the consumer died) stays pending in the group
and is read again with XAUTOCLAIM by a consumer that starts later.  An entry
may also be added twice (at least once): deduplicate on the queue ID and
the recipients (here in memory; in your database in real life).  With a
count, it stops after that many entries.
"""

from __future__ import annotations

import json
import sys
from email.parser import BytesHeaderParser
from email.policy import default as policy

import redis

GROUP = "consumers"


def describe(fields: dict[bytes, bytes], message: bytes) -> str:
    """One line: queue ID, sender, recipients and Subject."""
    subject = BytesHeaderParser(policy=policy).parsebytes(message).get("Subject", "")
    recipients = ", ".join(f"<{r}>" for r in json.loads(fields[b"recipients"]))
    return (
        f"{fields[b'queue-id'].decode()}: from <{fields[b'sender'].decode()}> to {recipients}"
        f" subject {subject!r}"
    )


def main(url: str, stream: str, count: int | None = None) -> None:
    client = redis.Redis.from_url(url, socket_timeout=60)
    try:
        client.xgroup_create(stream, GROUP, id="0", mkstream=True)  # from the first entry
    except redis.ResponseError as e:
        if "BUSYGROUP" not in str(e):
            raise
    seen: set[tuple[object, ...]] = set()
    taken = 0
    # First what this consumer left pending (it died before XACK), then new entries.
    start = "0"
    while count is None or taken < count:
        reply = client.xreadgroup(GROUP, "example", {stream: start}, count=10, block=30_000)
        entries = reply[0][1] if reply else []
        if not entries:
            if start == "0":
                start = ">"
                continue
            break  # nothing for 30 seconds
        for entryID, fields in entries:
            key = fields.get(b"message-key")
            message = client.get(key) if key else fields[b"message"]
            identity = (fields[b"queue-id"], fields[b"recipients"])
            if message is not None and identity not in seen:
                seen.add(identity)
                print(describe(fields, message), flush=True)
            with client.pipeline(transaction=True) as done:  # MULTI: XACK and DEL together
                done.xack(stream, GROUP, entryID)
                if key:
                    done.delete(key)
                done.execute()
            taken += 1


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else None)
