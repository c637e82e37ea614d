"""
The plug-in factories of the built-in delivery backends, chosen with
C{--deliver}: C{maildir}, C{mbox}, C{memory}, C{pipe}, C{lmtp}, C{webhook},
C{amqp}, C{redis-stream}.

Must not: import a backend's module at import time (twistd imports the
dropins while scanning for service makers); providers are built in C{build}.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mailframe.interfaces import IDeliveryBackend
from mailframe.plugins import Choice, Count, Duration, Option, PlugInFactory, Size, YesNo

if TYPE_CHECKING:
    from mailframe.config import ProviderContext

__all__ = [
    "BACKEND_FACTORIES",
    "amqpBackend",
    "lmtpBackend",
    "maildirBackend",
    "mboxBackend",
    "memoryBackend",
    "pipeBackend",
    "redisStreamBackend",
    "webhookBackend",
]


class _Maildir(PlugInFactory):
    prefix = "maildir"
    provides = IDeliveryBackend
    arguments = "PATH"
    options = (
        Option(
            "layout",
            Choice("single", "user", "domain"),
            "single",
            "One Maildir for all mail, one per local part, or one per domain and local part.",
        ),
    )
    description = (
        "Deliver into Maildir folders under PATH: one for all mail (single), "
        "PATH/LOCALPART (user), or PATH/DOMAIN/LOCALPART (domain)."
    )

    def checkArguments(self, *args: str, **kwargs: str) -> dict[str, Any]:
        options = self.parseOptions(kwargs)
        return {"path": self._path(args), "layout": options["layout"]}

    def build(self, context: ProviderContext, **arguments: Any) -> IDeliveryBackend:
        from mailframe.backends.maildir import MaildirBackend

        return MaildirBackend(context.reactor, arguments["path"], layout=arguments["layout"])


class _Mbox(PlugInFactory):
    prefix = "mbox"
    provides = IDeliveryBackend
    arguments = "PATH"
    options = (
        Option(
            "layout",
            Choice("single", "user"),
            "single",
            "The file PATH for all mail, or one file per local part.",
        ),
    )
    description = (
        "Append to mbox files: the file PATH for all mail (single), or PATH/LOCALPART (user)."
    )

    def checkArguments(self, *args: str, **kwargs: str) -> dict[str, Any]:
        options = self.parseOptions(kwargs)
        return {"path": self._path(args), "layout": options["layout"]}

    def build(self, context: ProviderContext, **arguments: Any) -> IDeliveryBackend:
        from mailframe.backends.mbox import MboxBackend

        return MboxBackend(context.reactor, arguments["path"], layout=arguments["layout"])


class _LMTP(PlugInFactory):
    prefix = "lmtp"
    provides = IDeliveryBackend
    arguments = "ENDPOINT"
    options = (
        Option("connections", Count(1, 1000), 10,
               "LMTP sessions at once; deliveries beyond wait for one."),
        Option("idle", Duration("a duration", zero=True), 30.0,
               "How long an idle session waits for the next message; 0 ends each after one."),
        Option("replies", Duration("a duration"), 300.0,
               "How long to wait for each reply, and for each block of data to be taken."),
        Option("final", Duration("a duration"), 600.0,
               "How long to wait for the replies after the data (the server is delivering)."),
        Option("chunking", YesNo(), True, "Send by BDAT when the server offers CHUNKING."),
        Option("lhlo", str, None, "Our name in LHLO.", shown="the hostname setting",
               metavar="NAME"),
    )  # fmt: skip
    description = (
        "Deliver to an LMTP server (Dovecot, Cyrus, another mailframe) at ENDPOINT, a "
        "client endpoint such as unix:/run/dovecot/lmtp or tcp:HOST:PORT; each recipient "
        "gets the server's own reply.  Other options (timeout=, bindAddress=) are the "
        "endpoint's."
    )

    def checkArguments(self, *args: str, **kwargs: str) -> dict[str, Any]:
        from mailframe.backends.lmtp import endpointString

        ours = {o.name for o in self.options}
        options = self.parseOptions({k: v for k, v in kwargs.items() if k in ours})
        if not args:
            raise ValueError(f"expected an ENDPOINT (usage: {self.synopsis})")
        endpoint = endpointString(args, {k: v for k, v in kwargs.items() if k not in ours})
        return {"endpoint": endpoint, **options}

    def build(self, context: ProviderContext, **arguments: Any) -> IDeliveryBackend:
        from twisted.internet.endpoints import clientFromString

        from mailframe.backends.lmtp import LMTPBackend

        description = arguments["endpoint"]
        return LMTPBackend(
            context.reactor,
            clientFromString(context.reactor, description),
            description,
            arguments["lhlo"] or context.config.hostname,
            connections=arguments["connections"],
            idle=arguments["idle"],
            replies=arguments["replies"],
            final=arguments["final"],
            chunking=arguments["chunking"],
        )


class _Statuses:
    """C{400,410,422}: HTTP statuses from 300 to 599 (C{none} or empty: none)."""

    metavar = "CODE,..."

    def __call__(self, value: object) -> frozenset[int]:
        if isinstance(value, (list, tuple, set, frozenset)):
            value = ",".join(map(str, value))
        text = str(value).strip()
        if text.lower() in ("", "none"):
            return frozenset()
        codes = set()
        for item in text.replace(" ", ",").split(","):
            if not item:
                continue
            if not item.isdigit() or not 300 <= int(item) <= 599:
                raise ValueError(f"expected HTTP statuses from 300 to 599, not {item!r}")
            codes.add(int(item))
        return frozenset(codes)

    def format(self, value: object) -> str:
        codes = sorted(value) if isinstance(value, (set, frozenset)) else []
        return ",".join(map(str, codes)) or "none"


class _Webhook(PlugInFactory):
    prefix = "webhook"
    provides = IDeliveryBackend
    arguments = "URL"
    options = (
        Option("format", Choice("json", "raw"), "json",
               "json: a JSON document (envelope, client, headers, text, HTML, attachments); "
               "raw: the message itself (message/rfc822), the envelope in headers."),
        Option("secret", str, None, "A file holding the key that signs each request "
               "(HMAC-SHA256 of the timestamp and the body).", shown="unsigned",
               metavar="PATH"),
        Option("timeout", Duration("a duration"), 30.0,
               "How long a request may take, answer included; then it is retried."),
        Option("refuse", _Statuses(), frozenset(),
               "HTTP statuses that fail the message for good (a bounce, or 5xx at the "
               "session); other statuses than 2xx are retried."),
        Option("each", YesNo(), False, "One request per recipient (no: one for all)."),
        Option("connections", Count(1, 1000), 10, "Requests at once; deliveries beyond wait."),
        Option("message", YesNo(), False, "json: the whole message in base64 too."),
    )  # fmt: skip
    description = (
        "Post each message to the application at URL (http or https): 2xx delivered, a "
        "status listed in refuse= failed, anything else (or no answer in time) retried."
    )

    def checkArguments(self, *args: str, **kwargs: str) -> dict[str, Any]:
        import os

        from mailframe.backends.webhook import checkURL

        options = self.parseOptions(kwargs)
        url = checkURL(":".join(args))
        secret = options["secret"]
        if secret is not None:
            secret = os.path.abspath(os.path.expanduser(secret))
            if not os.path.isfile(secret) or not os.access(secret, os.R_OK):
                raise ValueError(f"secret: {secret} is not a readable file")
        return {**options, "url": url, "secret": secret}

    def build(self, context: ProviderContext, **arguments: Any) -> IDeliveryBackend:
        from mailframe.backends.webhook import WebhookBackend, readSecret

        secret = arguments["secret"]
        return WebhookBackend(
            context.reactor,
            arguments["url"],
            format=arguments["format"],
            secret=None if secret is None else readSecret(secret),
            timeout=arguments["timeout"],
            refuse=arguments["refuse"],
            each=arguments["each"],
            connections=arguments["connections"],
            original=arguments["message"],
        )


class _OrNone:
    """A value of C{convert}, or C{none}."""

    def __init__(self, convert: Any) -> None:
        self.convert = convert
        self.metavar = getattr(convert, "metavar", "VALUE") + "|none"

    def __call__(self, value: object) -> Any:
        if value is None or (isinstance(value, str) and value.strip().lower() == "none"):
            return None
        return self.convert(value)

    def format(self, value: object) -> str:
        return "none" if value is None else str(self.convert.format(value))


class _AMQP(PlugInFactory):
    prefix = "amqp"
    provides = IDeliveryBackend
    arguments = "URL"
    options = (
        Option("exchange", str, "", "The exchange to publish to.", shown="the default exchange",
               metavar="NAME"),
        Option("key", str, None, "The routing key; {domain}, {recipient}, {local} and "
               "{sender} are the recipient's: one publication per distinct key.",
               shown="the queue's name on the default exchange, else {domain}",
               metavar="TEMPLATE"),
        Option("queue", str, None, "Declare this durable queue (bound by # to the exchange, "
               "declared as a durable topic exchange).", shown="declare nothing",
               metavar="NAME"),
        Option("quorum", YesNo(), False, "Declare the queue as a quorum queue."),
        Option("unroutable", Choice("retry", "refuse"), "retry",
               "A message no queue takes (returned): retried (451) or refused (550)."),
        Option("timeout", Duration("a duration"), 30.0,
               "How long to wait for a connection, and for each confirmation."),
    )  # fmt: skip
    description = (
        "Publish to RabbitMQ at URL (amqp://USER:PASS@HOST:PORT/VHOST, or amqps://), "
        "persistent, with publisher confirms: delivered once the broker confirmed it; "
        "the envelope in the headers."
    )

    def checkArguments(self, *args: str, **kwargs: str) -> dict[str, Any]:
        from mailframe.backends.amqp import amqpParameters, checkKey

        options = self.parseOptions(kwargs)
        url = ":".join(args)
        if not url:
            raise ValueError(f"expected a URL (usage: {self.synopsis})")
        amqpParameters(url)
        if options["quorum"] and not options["queue"]:
            raise ValueError("quorum=yes needs a queue= to declare")
        key = checkKey(options["exchange"], options["queue"], options["key"])
        return {**options, "url": url, "key": key}

    def build(self, context: ProviderContext, **arguments: Any) -> IDeliveryBackend:
        from mailframe.backends.amqp import AMQPBackend

        return AMQPBackend(
            context.reactor,
            arguments["url"],
            arguments["key"],
            exchange=arguments["exchange"],
            queue=arguments["queue"],
            quorum=arguments["quorum"],
            unroutable=arguments["unroutable"],
            timeout=arguments["timeout"],
        )


class _RedisStream(PlugInFactory):
    prefix = "redis-stream"
    provides = IDeliveryBackend
    arguments = "URL"
    options = (
        Option("stream", str, "mail", "The stream (key) to add to; {domain}, {recipient}, "
               "{local} and {sender} are the recipient's: one entry per distinct name.",
               metavar="TEMPLATE"),
        Option("maxlen", _OrNone(Count(1)), None,
               "Trim the stream to about this many entries (MAXLEN ~)."),
        Option("inline", _OrNone(Size()), None, "Store larger messages under a key of their "
               "own, named by the entry's message-key field."),
        Option("expire", _OrNone(Duration("a duration")), None,
               "The time to live of a message stored under its own key."),
        Option("replicas", Count(0, 100), 0,
               "Wait (WAIT) until this many replicas have each entry."),
        Option("timeout", Duration("a duration"), 30.0,
               "How long to wait for a connection, and for each answer."),
    )  # fmt: skip
    description = (
        "Add each message to a Redis stream (XADD) at URL (redis://[:PASSWORD@]HOST:PORT/DB, "
        "rediss://, unix:///PATH), the envelope as fields: delivered once Redis answered."
    )

    def checkArguments(self, *args: str, **kwargs: str) -> dict[str, Any]:
        from mailframe.backends._handoff import Template
        from mailframe.backends._redisclient import RedisURL

        options = self.parseOptions(kwargs)
        url = ":".join(args)
        if not url:
            raise ValueError(f"expected a URL (usage: {self.synopsis})")
        return {**options, "url": RedisURL.parse(url), "stream": Template(options["stream"])}

    def build(self, context: ProviderContext, **arguments: Any) -> IDeliveryBackend:
        from mailframe.backends.redisstream import RedisStreamBackend

        return RedisStreamBackend(
            context.reactor,
            arguments["url"],
            arguments["stream"],
            maxlen=arguments["maxlen"],
            inline=arguments["inline"],
            expire=arguments["expire"],
            replicas=arguments["replicas"],
            timeout=arguments["timeout"],
        )


class _Memory(PlugInFactory):
    prefix = "memory"
    provides = IDeliveryBackend
    options = (Option("keep", YesNo(), True, "Keep the messages (no: only count them)."),)
    description = "Keep messages in memory, lost at exit (for tests); keep=no only counts them."

    def checkArguments(self, *args: str, **kwargs: str) -> dict[str, Any]:
        self._noArguments(args)
        return self.parseOptions(kwargs)

    def build(self, context: ProviderContext, **arguments: Any) -> IDeliveryBackend:
        from mailframe.backends.memory import MemoryBackend

        return MemoryBackend(keep=arguments["keep"])


class _Pipe(PlugInFactory):
    prefix = "pipe"
    provides = IDeliveryBackend
    arguments = "PROGRAM[:ARG...]"
    options = (
        Option("user", str, None, "The user the program runs as (required when mailframe "
               "runs as root; never root).", shown="mailframe's user", metavar="NAME"),
        Option("group", str, None, "Its group.", shown="the user's", metavar="NAME"),
        Option("timeout", Duration("a duration"), 1000.0,
               "How long the program may run; then it is killed and the message retried."),
        Option("output", Size(), 4096, "Octets of its output kept (the first line is the "
               "reason of a failure)."),
        Option("processes", Count(1, 1000), 10, "Programs running at once."),
        Option("flags", str, "", "Header fields to add: D (Delivered-To), O (X-Original-To), "
               "R (Return-Path).", shown="none", metavar="DOR"),
        Option("crlf", YesNo(), False, "Keep CRLF line endings (no: LF)."),
    )  # fmt: skip
    description = (
        "Run PROGRAM once per recipient (as pipe(8) does) with the message on its input, "
        "${sender}, ${recipient}, ${original_recipient}, ${user}, ${extension}, ${domain}, "
        "${client_address}, ${queue_id} ... in its arguments and environment: exit 0 "
        "delivered, 75 retried, other statuses bounced with its first line of output."
    )

    def checkArguments(self, *args: str, **kwargs: str) -> dict[str, Any]:
        import os

        from mailframe.backends.pipe import checkArguments, runAs

        options = self.parseOptions(kwargs)
        if not args or not args[0]:
            raise ValueError(f"expected a PROGRAM (usage: {self.synopsis})")
        program = os.path.expanduser(args[0])
        if not os.path.isabs(program):
            raise ValueError(f"the program must be an absolute path, not {program!r}")
        if not os.path.isfile(program) or not os.access(program, os.X_OK):
            raise ValueError(f"{program} is not an executable file")
        checkArguments(args[1:])
        unknown = set(options["flags"]) - set("DOR")
        if unknown:
            raise ValueError(f"unknown flags {''.join(sorted(unknown))!r} (flags: D, O, R)")
        runAs(options["user"], options["group"])
        return {"program": program, "args": args[1:], **options}

    def build(self, context: ProviderContext, **arguments: Any) -> IDeliveryBackend:
        from mailframe.backends.pipe import PipeBackend

        return PipeBackend(
            context.reactor,
            arguments["program"],
            arguments["args"],
            user=arguments["user"],
            group=arguments["group"],
            timeout=arguments["timeout"],
            outputLimit=arguments["output"],
            processes=arguments["processes"],
            flags=arguments["flags"],
            crlf=arguments["crlf"],
        )


maildirBackend = _Maildir()
mboxBackend = _Mbox()
memoryBackend = _Memory()
pipeBackend = _Pipe()
lmtpBackend = _LMTP()
webhookBackend = _Webhook()
amqpBackend = _AMQP()
redisStreamBackend = _RedisStream()

BACKEND_FACTORIES: tuple[PlugInFactory, ...] = (
    maildirBackend,
    mboxBackend,
    memoryBackend,
    pipeBackend,
    lmtpBackend,
    webhookBackend,
    amqpBackend,
    redisStreamBackend,
)
