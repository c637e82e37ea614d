"""
asyncio_server: an SMTP server on asyncio, built on mailframe's sans-IO core
alone (C{mailframe.protocol} and C{mailframe.reply}: no Twisted, no zope).

It accepts mail for one domain and keeps each message in a list.  The core
does the protocol: parsing, the order of commands, line and size limits,
dot-unstuffing, BDAT framing.  This file does the I/O and the decisions:
which recipients to take and what to do with a message.

The loop in L{Session.run} is the whole contract with the core:

  - the greeting is sent first;
  - received bytes go in with C{receiveData}; C{nextEvent} gives events
    until it returns NEED_DATA;
  - every command is answered with C{send(reply)}, which returns the bytes
    to write (MessageData needs no answer);
  - a L{RemoteProtocolError} carries the reply the core wants sent instead;
  - the session ends once the state is CLOSED: after 221 or a 421.

The next command is parsed only once the current one has its reply, so
pipelined commands are answered in order even though answering may await;
the replies to what arrived together leave in one write.

Run it: C{python asyncio_server.py example.org 2525}
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from dataclasses import dataclass, field

from mailframe import reply as R
from mailframe.protocol import (
    NEED_DATA,
    PAUSED,
    Data,
    EndOfChunk,
    EndOfMessage,
    Event,
    Hello,
    MailFrom,
    MessageData,
    Noop,
    Quit,
    RcptTo,
    RemoteProtocolError,
    Rset,
    ServerConnection,
    State,
    Vrfy,
)

EXTENSIONS = ("PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES", "CHUNKING")


@dataclass
class Message:
    sender: str
    recipients: list[str] = field(default_factory=list)
    data: bytearray = field(default_factory=bytearray)


class MailServer:
    """Accepts mail for C{domain}; accepted messages go to C{messages}."""

    timeout = 300.0  # seconds of silence from the client before a 421

    def __init__(self, domain: str, hostname: str = "localhost", echo: bool = False) -> None:
        self.domain = domain
        self.hostname = hostname
        self.echo = echo
        self.messages: list[Message] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """The C{asyncio.start_server} callback: one SMTP session."""
        await Session(self, reader, writer).run()

    async def deliver(self, message: Message) -> R.Reply:
        """Make the message durable (here: a list), then say so."""
        self.messages.append(message)
        if self.echo:
            print(message, flush=True)
        return R.accepted(str(len(self.messages)))


class Session:
    """One connection: the loop that drives the core, and the transaction."""

    def __init__(
        self, server: MailServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.server, self.reader, self.writer = server, reader, writer
        self.conn = ServerConnection()
        self.out: list[bytes] = []  # replies not written yet
        self.message: Message | None = None  # the transaction under way

    async def run(self) -> None:
        conn = self.conn
        self.reply(R.greeting(self.server.hostname))
        try:
            while conn.state is not State.CLOSED:
                try:
                    event = conn.nextEvent()
                except RemoteProtocolError as e:  # the core refuses a command itself
                    self.reply(e.reply)
                    continue
                if event is NEED_DATA:
                    if not await self.receive():
                        return  # the client went away
                elif event is PAUSED:  # only if an event was left unanswered: a bug here
                    raise RuntimeError(f"no reply to {conn.pending}")
                else:
                    reply = await self.answer(event)
                    if reply is not None:  # None for MessageData
                        self.reply(reply)
        except ConnectionError:
            pass
        finally:
            if self.out and not self.writer.is_closing():
                self.writer.write(b"".join(self.out))  # the 221 or 421
            self.writer.close()
            with contextlib.suppress(ConnectionError):
                await self.writer.wait_closed()

    def reply(self, reply: R.Reply) -> None:
        self.out.append(self.conn.send(reply))
        if not self.conn.inTransaction:  # RSET, EHLO, the end of a message, a refusal
            self.message = None

    async def receive(self) -> bool:
        """Write the replies owed, in one write; wait for bytes.  False at EOF."""
        self.writer.write(b"".join(self.out))
        self.out.clear()
        await self.writer.drain()
        try:
            async with asyncio.timeout(self.server.timeout):
                data = await self.reader.read(65536)
        except TimeoutError:
            self.reply(R.TIMEOUT)  # a 421 no command asked for: the state is now CLOSED
            return True
        if not data:
            return False
        self.conn.receiveData(data)
        return True

    async def answer(self, event: Event) -> R.Reply | None:
        """The reply to one event: the decisions of this server."""
        message = self.message
        match event:
            case Hello(extended=True):
                return R.Reply(250, None, (self.server.hostname, *EXTENSIONS))
            case Hello():
                return R.Reply(250, None, self.server.hostname)
            case MailFrom(address, params):
                body = (params.get("BODY") or "7BIT").upper()
                if params.keys() - {"BODY"} or body not in ("7BIT", "8BITMIME"):
                    return R.UNKNOWN_PARAMETER
                self.message = Message(str(address))
                return R.SENDER_OK
            case RcptTo(address):  # a domain of None is <Postmaster>
                if address.domain is not None and address.domain != self.server.domain:
                    return R.RELAY_DENIED
                message.recipients.append(str(address))
                return R.RECIPIENT_OK
            case Data():
                return R.START_DATA
            case MessageData(data):
                message.data += data
                return None
            case EndOfChunk(size, data):  # a BDAT chunk but the last
                message.data += data
                return R.chunkReceived(size)
            case EndOfMessage(_, data):
                message.data += data
                return await self.server.deliver(message)
            case Rset():
                return R.RESET_OK
            case Noop():
                return R.OK
            case Vrfy():
                return R.CANNOT_VRFY
            case Quit():
                return R.closing(self.server.hostname)
        return R.NOT_IMPLEMENTED  # HELP, EXPN


async def main(domain: str, port: int) -> None:
    server = MailServer(domain, echo=True)
    listener = await asyncio.start_server(server.handle, "127.0.0.1", port)
    async with listener:
        await listener.serve_forever()


if __name__ == "__main__":
    args = sys.argv[1:]
    asyncio.run(main(args[0] if args else "example.org", int(args[1]) if args[1:] else 2525))
