"""
Helpers for driving the sans-IO core in tests: a L{Driver} that feeds bytes
and answers events with scripted replies.
"""

from __future__ import annotations

from collections.abc import Callable

from mailframe import reply as R
from mailframe.protocol import (
    NEED_DATA,
    PAUSED,
    Data,
    EndOfChunk,
    EndOfMessage,
    Event,
    Hello,
    Limits,
    MailFrom,
    MessageData,
    RcptTo,
    RemoteProtocolError,
    ServerConnection,
)

EHLO_REPLY = R.Reply(
    250,
    None,
    (
        "mx.test",
        "PIPELINING",
        "SIZE 1000000",
        "8BITMIME",
        "ENHANCEDSTATUSCODES",
        "SMTPUTF8",
        "CHUNKING",
        "BINARYMIME",
    ),
)


def defaultAnswer(event: Event) -> R.Reply | None:
    """The reply a permissive server gives each event (None: no reply due)."""
    if isinstance(event, Hello):
        return EHLO_REPLY if event.extended else R.Reply(250, None, "mx.test")
    if isinstance(event, MailFrom):
        return R.SENDER_OK
    if isinstance(event, RcptTo):
        return R.RECIPIENT_OK
    if isinstance(event, Data):
        return R.START_DATA
    if isinstance(event, EndOfChunk):
        return R.chunkReceived(event.size)
    if isinstance(event, EndOfMessage):
        return R.accepted("Q1")
    if isinstance(event, MessageData):
        return None
    if event.verb == "QUIT":  # type: ignore[attr-defined]
        return R.closing("mx.test")
    return R.OK


class Driver:
    """A ServerConnection, greeted, with a log of what went in and out."""

    def __init__(
        self,
        limits: Limits | None = None,
        answer: Callable[[Event], R.Reply | None] = defaultAnswer,
        extensionVerbs: frozenset[str] = frozenset(),
    ) -> None:
        self.conn = ServerConnection(limits, extensionVerbs)
        self.answer = answer
        self.output = self.conn.send(R.greeting("mx.test"))
        self.events: list[Event] = []
        self.errors: list[R.Reply] = []

    def feed(self, data: bytes) -> bytes:
        """Feed bytes, answer every event; return the bytes written."""
        self.conn.receiveData(data)
        out = []
        while True:
            try:
                event = self.conn.nextEvent()
            except RemoteProtocolError as e:
                self.errors.append(e.reply)
                out.append(self.conn.send(e.reply))
                continue
            if event is NEED_DATA or event is PAUSED:
                break
            self.events.append(event)  # type: ignore[arg-type]
            reply = self.answer(event)  # type: ignore[arg-type]
            if reply is not None:
                out.append(self.conn.send(reply))
        written = b"".join(out)
        self.output += written
        return written

    def body(self) -> bytes:
        """The message data delivered so far."""
        return b"".join(
            e.data for e in self.events if isinstance(e, MessageData | EndOfChunk | EndOfMessage)
        )

    def codes(self, written: bytes) -> list[str]:
        """Reply codes (with enhanced codes where present) of written bytes."""
        result = []
        for line in written.split(b"\r\n"):
            if line[3:4] == b" ":
                parts = line.decode().split(" ")
                code = parts[0]
                if len(parts) > 1 and parts[1][:1].isdigit() and "." in parts[1]:
                    code += " " + parts[1]
                result.append(code)
        return result

    def ehlo(self) -> None:
        self.feed(b"EHLO client.test\r\n")

    def transaction(self, rcpts: int = 1) -> None:
        self.ehlo()
        self.feed(b"MAIL FROM:<a@example.org>\r\n")
        for i in range(rcpts):
            self.feed(b"RCPT TO:<r%d@example.com>\r\n" % i)
