"""
A consumer of mailframe's amqp backend on Twisted, with pika's Twisted
adapter (the client mailframe itself uses): it takes each message from a
queue, prints its envelope and Subject, and only then acknowledges it.

    python3 amqp_consumer_twisted.py amqp://guest:guest@127.0.0.1:5672/%2F mail

    twistd -n mailframe --spool spool \\
        --deliver 'amqp:amqp://guest:guest@127.0.0.1:5672/%2F:queue=mail'

A message may come twice (at least once): deduplicate on the queue ID and
the recipients in the headers (here in memory; in your database in real
life).  With a count, it stops after that many messages.
"""

from __future__ import annotations

import sys
from email.parser import BytesHeaderParser
from email.policy import default as policy
from typing import Any

import pika
from pika.adapters.twisted_connection import TwistedProtocolConnection
from twisted.internet import defer, task
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.protocol import Factory


def describe(headers: dict[str, Any], body: bytes) -> str:
    """One line: queue ID, sender, recipients and Subject."""
    subject = BytesHeaderParser(policy=policy).parsebytes(body).get("Subject", "")
    recipients = ", ".join(f"<{r}>" for r in headers.get("recipients", []))
    return (
        f"{headers.get('queue-id')}: from <{headers.get('sender')}> to {recipients}"
        f" subject {subject!r}"
    )


async def consume(reactor: Any, url: str, queue: str, count: int | None) -> None:
    parameters = pika.URLParameters(url)
    endpoint = HostnameEndpoint(reactor, parameters.host, parameters.port, timeout=10)
    factory = Factory.forProtocol(lambda: TwistedProtocolConnection(parameters))
    connection = await endpoint.connect(factory)
    await connection.ready
    channel = await connection.channel()
    await channel.queue_declare(queue=queue, durable=True, passive=True)
    await channel.basic_qos(prefetch_count=10)
    messages, tag = await channel.basic_consume(queue=queue)
    seen: set[tuple[Any, ...]] = set()
    taken = 0
    while count is None or taken < count:
        try:
            ch, method, properties, body = await messages.get().addTimeout(30, reactor)
        except defer.TimeoutError:
            break  # nothing for 30 seconds
        headers = properties.headers or {}
        key = (headers.get("queue-id"), *headers.get("recipients", []))
        if key not in seen:
            seen.add(key)
            print(describe(headers, body), flush=True)
        ch.basic_ack(delivery_tag=method.delivery_tag)
        taken += 1
    await channel.basic_cancel(tag)
    await connection.close()


def main(reactor: Any, url: str, queue: str, count: str | None = None) -> defer.Deferred[None]:
    return defer.ensureDeferred(consume(reactor, url, queue, int(count) if count else None))


if __name__ == "__main__":
    task.react(main, sys.argv[1:])
