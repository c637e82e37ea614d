"""
A consumer of mailframe's amqp backend in plain Python (pika's blocking
connection): it takes each message from a queue, prints its envelope and
Subject, and only then acknowledges it, so that a consumer that dies
mid-way leaves the message in the queue for the next one.

    python3 amqp_consumer.py amqp://guest:guest@127.0.0.1:5672/%2F mail

    twistd -n mailframe --spool spool \\
        --deliver 'amqp:amqp://guest:guest@127.0.0.1:5672/%2F:queue=mail'

A message may come twice (at least once: see "Handing mail to your
application"): this one remembers, in memory, the queue ID and recipients
of what it has seen and skips a repeat; a real one keeps them in its
database, in the transaction that stores the message.  With a count, it
stops after that many messages.
"""

from __future__ import annotations

import sys
from email.parser import BytesHeaderParser
from email.policy import default as policy

import pika


def describe(headers: dict[str, object], body: bytes) -> str:
    """One line: queue ID, sender, recipients and Subject."""
    subject = BytesHeaderParser(policy=policy).parsebytes(body).get("Subject", "")
    recipients = ", ".join(f"<{r}>" for r in headers.get("recipients", []))  # type: ignore[union-attr]
    return (
        f"{headers.get('queue-id')}: from <{headers.get('sender')}> to {recipients}"
        f" subject {subject!r}"
    )


def main(url: str, queue: str, count: int | None = None) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.queue_declare(queue, durable=True, passive=True)  # mailframe or you declared it
    channel.basic_qos(prefetch_count=10)
    seen: set[tuple[object, ...]] = set()
    messages = channel.consume(queue, inactivity_timeout=30)
    for taken, (method, properties, body) in enumerate(messages, 1):
        if method is None:
            break  # nothing for 30 seconds
        headers = properties.headers or {}
        key = (headers.get("queue-id"), *headers.get("recipients", []))
        if key not in seen:
            seen.add(key)
            print(describe(headers, body), flush=True)
        channel.basic_ack(method.delivery_tag)
        if count is not None and taken >= count:
            break
    channel.cancel()
    connection.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else None)
