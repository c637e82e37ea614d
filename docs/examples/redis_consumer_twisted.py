"""
A consumer of mailframe's redis-stream backend on Twisted, with the small
Redis client that mailframe's backend uses (any Twisted Redis client would
do): it reads each entry of a stream in a consumer group, prints its
envelope and Subject, and only then acknowledges it (XACK), deleting the
message's own key at the same time when it was stored by reference.

    python3 redis_consumer_twisted.py redis://127.0.0.1:6379/0 mail

    twistd -n mailframe --spool spool \\
        --deliver 'redis-stream:redis://127.0.0.1:6379/0:stream=mail'

An entry may be added twice (at least once): deduplicate on the queue ID
and the recipients (here in memory; in your database in real life).  With
a count, it stops after that many entries.
"""

from __future__ import annotations

import json
import sys
from email.parser import BytesHeaderParser
from email.policy import default as policy
from typing import Any

from twisted.internet import defer, task

from mailframe.backends.redisstream import RedisURL, connectRedis

GROUP = "consumers"


def describe(fields: dict[bytes, bytes], message: bytes) -> str:
    """One line: queue ID, sender, recipients and Subject."""
    subject = BytesHeaderParser(policy=policy).parsebytes(message).get("Subject", "")
    recipients = ", ".join(f"<{r}>" for r in json.loads(fields[b"recipients"]))
    return (
        f"{fields[b'queue-id'].decode()}: from <{fields[b'sender'].decode()}> to {recipients}"
        f" subject {subject!r}"
    )


async def consume(reactor: Any, url: str, stream: str, count: int | None) -> None:
    redis = await connectRedis(reactor, RedisURL.parse(url), timeout=10)
    try:
        await redis.execute("XGROUP", "CREATE", stream, GROUP, "0", "MKSTREAM")
    except Exception as e:
        if "BUSYGROUP" not in str(e):
            raise
    seen: set[tuple[bytes, bytes]] = set()
    taken = 0
    start = "0"  # first what this consumer left pending, then new entries (">")
    while count is None or taken < count:
        reply = await redis.execute(
            "XREADGROUP", "GROUP", GROUP, "example", "COUNT", 10, "BLOCK", 30_000,
            "STREAMS", stream, start,
        )  # fmt: skip
        entries = reply[0][1] if reply else []
        if not entries:
            if start == "0":
                start = ">"
                continue
            break  # nothing for 30 seconds
        for entryID, flat in entries:
            fields = dict(zip(flat[::2], flat[1::2], strict=True))
            key = fields.get(b"message-key")
            message = await redis.execute("GET", key) if key else fields[b"message"]
            identity = (fields[b"queue-id"], fields[b"recipients"])
            if message is not None and identity not in seen:
                seen.add(identity)
                print(describe(fields, message), flush=True)
            done = [redis.execute("MULTI"), redis.execute("XACK", stream, GROUP, entryID)]
            if key:
                done.append(redis.execute("DEL", key))
            done.append(redis.execute("EXEC"))
            await defer.gatherResults(done)
            taken += 1
    redis.transport.loseConnection()


def main(reactor: Any, url: str, stream: str, count: str | None = None) -> defer.Deferred[None]:
    return defer.ensureDeferred(consume(reactor, url, stream, int(count) if count else None))


if __name__ == "__main__":
    task.react(main, sys.argv[1:])
