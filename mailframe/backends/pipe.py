"""
The C{pipe} backend: delivers each recipient's copy to a program, in the
spirit of Postfix's pipe(8): the message on its standard input, the
envelope in its arguments and environment, its exit status the outcome.

One process per recipient, at most C{processes} at once (the others wait
their turn); each is started with C{reactor.spawnProcess} (no blocking) and
given:

  - standard input: the message, with LF line endings (C{crlf=True}: as
    received, CRLF), after the header fields C{flags} asks for: C{R}
    C{Return-Path: <sender>}, C{D} C{Delivered-To: recipient}, C{O}
    C{X-Original-To: original recipient} (Postfix's flags of the same
    letters);
  - arguments: the program's own, with C{${name}} replaced by the
    recipient's values (L{MACROS}: C{${sender}}, C{${recipient}},
    C{${original_recipient}}, C{${user}}, C{${extension}}, C{${domain}},
    C{${client_address}}, C{${queue_id}} ...); an unknown name is refused
    when the backend is made;
  - environment: only C{PATH}, C{HOME}, C{USER}, C{LOGNAME}, C{SHELL} of
    the user it runs as, and the same values as C{SENDER}, C{RECIPIENT},
    C{ORIGINAL_RECIPIENT}, C{LOCAL}, C{DOMAIN}, C{EXTENSION},
    C{CLIENT_ADDRESS}, C{CLIENT_HOSTNAME}, C{CLIENT_HELO},
    C{CLIENT_PROTOCOL}, C{SASL_USERNAME}, C{QUEUE_ID}, C{SIZE} (nothing of
    mailframe's own environment).

The user.  The program never runs as root: when mailframe runs as root,
C{user} must name another user, and the child switches to it (its group and
supplementary groups, then C{setuid}) before it runs the program (Twisted's
C{spawnProcess} with C{uid}/C{gid}); without C{user}, or with C{user} naming
root, the backend is refused at start.  When mailframe is not root, the
program runs as mailframe's user, and C{user} may only name that one.  The
working directory is the user's home, or C{/}.

Outcome, per recipient (Postfix's table of sysexits.h):

  - exit 0: delivered (250);
  - 75 (EX_TEMPFAIL) and 71 (EX_OSERR, "system resource problem", which
    Postfix treats as temporary too): tried again later (4xx);
  - any other exit status: failed for good (5xx): 67 (EX_NOUSER) is
    C{550 5.1.1}, 77 (EX_NOPERM) C{5.7.0}, 65 (EX_DATAERR) C{5.6.0} ...,
    a status outside sysexits C{5.3.0};
  - killed by a signal, or by the time limit (C{timeout}): tried again (4xx);
  - the program missing or not executable, or the process not started:
    tried again (451 4.3.5, logged).

The reason in a failure reply is the program's first line of output
(standard output and error together; printable ASCII, 200 characters at
most), else the sysexits text.  Output beyond C{output} octets is read and
discarded.

The message is held (L{Message.retain}) until the last process has ended,
so its owner may close it meanwhile.  Its octets are written as the
program reads them (a pull producer), never buffered whole; a program that
exits without reading all of it is judged by its exit status alone.

Owns: running programs for delivery.  Must not: import mailframe.server;
block the reactor (no waiting for a process); run anything as root.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer, error
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mailframe.envelope import DeliveryResult, Envelope, Recipient
from mailframe.interfaces import IDeliveryBackend
from mailframe.message import Message, MessageClosed, toLF
from mailframe.reply import Reply, clientText

__all__ = ["MACROS", "SYSEXITS", "PipeBackend", "RunAs", "runAs"]

log = Logger(namespace="mailframe.backends")

#: The C{${name}} macros of the arguments.
MACROS = frozenset(
    {"sender", "recipient", "original_recipient", "user", "mailbox", "extension", "domain",
     "client_address", "client_hostname", "client_helo", "client_port", "client_protocol",
     "sasl_username", "queue_id", "size", "nexthop"}
)  # fmt: skip

#: Exit status -> (enhanced status, text), after Postfix's sys_exits.c.
SYSEXITS: Mapping[int, tuple[tuple[int, int, int], str]] = {
    64: ((5, 3, 0), "command line usage error"),
    65: ((5, 6, 0), "data format error"),
    66: ((5, 3, 0), "cannot open input"),
    67: ((5, 1, 1), "user unknown"),
    68: ((5, 1, 2), "host name unknown"),
    69: ((5, 3, 0), "service unavailable"),
    70: ((5, 3, 0), "internal software error"),
    71: ((4, 3, 0), "system resource problem"),
    72: ((5, 3, 0), "critical OS file missing"),
    73: ((5, 2, 0), "cannot create user output file"),
    74: ((5, 3, 0), "input/output error"),
    75: ((4, 3, 0), "temporary failure"),
    76: ((5, 5, 0), "remote error in protocol"),
    77: ((5, 7, 0), "permission denied"),
    78: ((5, 3, 5), "local configuration error"),
}

_MACRO_RE = re.compile(r"\$\{([A-Za-z_]+)\}")
_SETSID = shutil.which("setsid", path="/usr/bin:/bin")
"""util-linux's setsid(1), when there is one: the program then leads its own group."""
_FLAGS = frozenset("DOR")
_MAX_REASON = 200
_NOT_RUN = Reply(451, (4, 3, 5), "The delivery program cannot be run; will try again")


@dataclass(frozen=True)
class RunAs:
    """Who a program runs as: the user's name, home and shell; uid/gid when switching."""

    name: str
    home: str
    shell: str
    uid: int | None = None
    gid: int | None = None


def runAs(user: str | None, group: str | None = None, euid: int | None = None) -> RunAs:
    """
    The user programs run as (see the module docstring).

    @param euid: mailframe's effective uid (the process's, by default).
    @raise ValueError: one line: running as root, an unknown user, or a user
        mailframe cannot switch to.
    """
    euid = os.geteuid() if euid is None else euid
    if user is None:
        if euid == 0:
            raise ValueError(
                "refusing to run delivery programs as root: give user=NAME, an unprivileged user"
            )
        entry = pwd.getpwuid(euid)
        return RunAs(entry.pw_name, entry.pw_dir, entry.pw_shell)
    try:
        entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError:
        raise ValueError(f"no such user: {user!r}") from None
    if entry.pw_uid == 0:
        raise ValueError("refusing to run delivery programs as root: user= names root")
    gid = entry.pw_gid
    if group is not None:
        import grp

        try:
            gid = (
                grp.getgrgid(int(group)).gr_gid if group.isdigit() else grp.getgrnam(group).gr_gid
            )
        except KeyError:
            raise ValueError(f"no such group: {group!r}") from None
        if gid == 0:
            raise ValueError("refusing to run delivery programs in group root")
    if euid == 0:
        return RunAs(entry.pw_name, entry.pw_dir, entry.pw_shell, entry.pw_uid, gid)
    if entry.pw_uid != euid:
        raise ValueError(
            f"cannot run delivery programs as {entry.pw_name}: mailframe runs as uid {euid}, "
            "not root"
        )
    return RunAs(entry.pw_name, entry.pw_dir, entry.pw_shell)


def checkArguments(args: Sequence[str]) -> None:
    """@raise ValueError: for a C{${name}} that is not one of L{MACROS}."""
    for arg in args:
        for name in _MACRO_RE.findall(arg):
            if name.lower() not in MACROS:
                known = ", ".join(sorted(MACROS))
                raise ValueError(f"unknown macro ${{{name}}} (known: {known})")


def _values(envelope: Envelope, recipient: Recipient, size: int) -> dict[str, str]:
    """The macro values for one recipient."""
    address = recipient.address
    facts = envelope.session
    original = recipient.original or address
    return {
        "sender": str(envelope.mailFrom),
        "recipient": str(address),
        "original_recipient": str(original),
        "user": address.localPart,
        "mailbox": address.localPart,
        "extension": recipient.detail or "",
        "domain": address.domain.name if address.domain is not None else "",
        "client_address": facts.peerHost if facts is not None else "",
        "client_hostname": (facts.peerName or "") if facts is not None else "",
        "client_helo": (facts.heloName or "") if facts is not None else "",
        "client_port": str(facts.peerPort) if facts is not None else "",
        "client_protocol": facts.protocol if facts is not None else "",
        "sasl_username": (facts.authenticated or "") if facts is not None else "",
        "queue_id": envelope.queueID,
        "size": str(size),
        "nexthop": address.domain.name if address.domain is not None else "",
    }


def _clean(text: str) -> str:
    """A value fit for an argument, environment variable or header: no NUL, CR or LF."""
    return text.replace("\0", "").replace("\r", " ").replace("\n", " ")


def firstLine(output: bytes) -> str | None:
    """The first line of a program's output with text on it, fit for a reply."""
    for line in output.splitlines():
        text = clientText(line.decode("utf-8", "replace").strip(), _MAX_REASON)
        if text.strip():
            return text.strip()
    return None


def replyFor(exitCode: int | None, signalled: int | None, timedOut: bool, output: bytes) -> Reply:
    """The reply for how a program ended (see the module docstring)."""
    reason = firstLine(output)
    if timedOut:
        return Reply(451, (4, 3, 0), reason or "The delivery program timed out; will try again")
    if signalled is not None or exitCode is None:
        return Reply(451, (4, 3, 0), reason or f"The delivery program died (signal {signalled})")
    if exitCode == 0:
        return Reply(250, (2, 0, 0), "Delivered")
    enhanced, text = SYSEXITS.get(exitCode, ((5, 3, 0), f"exit status {exitCode}"))
    code = 451 if enhanced[0] == 4 else 550 if enhanced[:2] in ((5, 1), (5, 7)) else 554
    return Reply(code, enhanced, reason or f"The delivery program failed: {text}")


class _Feeder:
    """Writes a message to a process's standard input as it reads it (an IPullProducer)."""

    def __init__(self, transport: Any, chunks: Iterator[bytes]) -> None:
        self.transport = transport
        self.chunks = chunks
        self.done = False

    def resumeProducing(self) -> None:
        if self.done:
            return
        try:
            chunk = next(self.chunks)
        except StopIteration:
            self.finish()
            return
        except (OSError, MessageClosed):
            log.failure("reading the message for a delivery program")
            self.finish()
            return
        self.transport.write(chunk)

    def stopProducing(self) -> None:
        self.finish()

    def finish(self) -> None:
        if self.done:
            return
        self.done = True
        close = getattr(self.chunks, "close", None)
        if close is not None:
            close()
        self.transport.unregisterProducer()
        self.transport.closeStdin()


class _Run(ProcessProtocol):
    """
    One program run: feeds the message, keeps the output, knows how it
    ended.  With C{group}, the program leads a process group of its own
    (started through setsid(1)), and the time limit kills the whole group.
    Once the program has exited, its output pipes are closed after
    L{_DRAIN} seconds even if a child it left behind still holds them.
    """

    def __init__(self, chunks: Iterator[bytes], outputLimit: int, clock: Any, group: bool) -> None:
        self.chunks = chunks
        self.outputLimit = outputLimit
        self.clock = clock
        self.group = group
        self.output = bytearray()
        self.discarded = 0
        self.ended: defer.Deferred[tuple[int | None, int | None]] = defer.Deferred()
        self.timer: IDelayedCall | None = None
        self.drain: IDelayedCall | None = None
        self.timedOut = False
        self.exited = False
        self.feeder: _Feeder | None = None

    def connectionMade(self) -> None:
        transport: Any = self.transport
        self.feeder = _Feeder(transport, self.chunks)
        transport.registerProducer(self.feeder, False)

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        room = self.outputLimit - len(self.output)
        if room > 0:
            self.output += data[:room]
        self.discarded += max(0, len(data) - max(room, 0))

    def childConnectionLost(self, childFD: int) -> None:
        if childFD == 0:  # the program closed its input: stop writing
            self._stopFeeding()

    def _stopFeeding(self) -> None:
        if self.feeder is not None and not self.feeder.done:
            self.feeder.done = True
            close = getattr(self.chunks, "close", None)
            if close is not None:
                close()

    def kill(self) -> None:
        """The time limit: kill the program (and its group)."""
        self.timedOut = True
        transport: Any = self.transport
        pid = getattr(transport, "pid", None)
        if self.group and pid and not self.exited:
            with contextlib.suppress(OSError):
                os.killpg(pid, 9)
                return
        with contextlib.suppress(error.ProcessExitedAlready):
            transport.signalProcess("KILL")

    def processExited(self, reason: Failure) -> None:
        self.exited = True
        self.drain = self.clock.callLater(_DRAIN, self._close)

    def _close(self) -> None:
        transport: Any = self.transport
        transport.loseConnection()

    def processEnded(self, reason: Failure) -> None:
        for call in (self.timer, self.drain):
            if call is not None and call.active():
                call.cancel()
        self._stopFeeding()
        value = reason.value
        exitCode: int | None = getattr(value, "exitCode", None)
        signalled: int | None = getattr(value, "signal", None)
        self.ended.callback((exitCode, signalled))


_DRAIN = 1.0
"""Seconds the output pipes stay open after the program has exited."""


@implementer(IDeliveryBackend)
class PipeBackend:
    """
    Delivers each recipient's copy to C{program} (see the module docstring).

    @param reactor: an C{IReactorProcess} and C{IReactorTime}.
    @param program: the program's absolute path.
    @param args: its arguments (after its name), with C{${name}} macros.
    @param user: the name (or uid) to run as; C{group} likewise.
    @param timeout: seconds a program may run, then it is killed (4xx).
    @param outputLimit: octets of output kept (for the reason of a failure).
    @param processes: programs running at once.
    @param flags: header fields to add: C{D}, C{O}, C{R}.
    @param crlf: keep CRLF line endings (else LF).
    @raise ValueError: one line, for a program that cannot be run, a bad
        macro or flag, or a user the rules refuse.
    """

    def __init__(
        self,
        reactor: Any,
        program: str,
        args: Sequence[str] = (),
        user: str | None = None,
        group: str | None = None,
        timeout: float = 1000.0,
        outputLimit: int = 4096,
        processes: int = 10,
        flags: str = "",
        crlf: bool = False,
        euid: int | None = None,
    ) -> None:
        if not os.path.isabs(program):
            raise ValueError(f"the program must be an absolute path, not {program!r}")
        if not os.path.isfile(program) or not os.access(program, os.X_OK):
            raise ValueError(f"{program} is not an executable file")
        checkArguments(args)
        unknown = set(flags) - _FLAGS
        if unknown:
            raise ValueError(f"unknown flags {''.join(sorted(unknown))!r} (flags: D, O, R)")
        if timeout <= 0 or processes < 1 or outputLimit < 0:
            raise ValueError("timeout and processes must be positive")
        self.reactor = reactor
        self.program = program
        self.args = tuple(args)
        self.user = runAs(user, group, euid)
        self.timeout = timeout
        self.outputLimit = outputLimit
        self.flags = flags
        self.crlf = crlf
        self.slots = defer.DeferredSemaphore(processes)

    def deliver(
        self, envelope: Envelope, message: Message
    ) -> defer.Deferred[DeliveryResult | None]:
        """Run the program once per recipient; one reply each, when all have ended."""
        hold = message.retain()
        runs = [self._deliverOne(envelope, r, message) for r in envelope.recipients]
        d = defer.gatherResults(runs, consumeErrors=True)
        d.addBoth(hold.passThrough)
        return d.addCallback(_result)

    def _deliverOne(
        self, envelope: Envelope, recipient: Recipient, message: Message
    ) -> defer.Deferred[Reply]:
        d = self.slots.run(self._run, envelope, recipient, message)

        def failed(reason: Failure) -> Reply:
            log.failure(
                "{queueID}: the delivery program {program} for <{recipient}> failed",
                reason,
                queueID=envelope.queueID,
                program=self.program,
                recipient=recipient.address,
            )
            return _NOT_RUN

        return d.addErrback(failed)

    def _run(
        self, envelope: Envelope, recipient: Recipient, message: Message
    ) -> defer.Deferred[Reply]:
        if not os.access(self.program, os.X_OK):
            log.error(
                "{queueID}: {program} is not executable; <{recipient}> waits",
                queueID=envelope.queueID,
                program=self.program,
                recipient=recipient.address,
            )
            return defer.succeed(_NOT_RUN)
        values = {k: _clean(v) for k, v in _values(envelope, recipient, message.size).items()}
        argv = [self.program, *(_expand(a, values) for a in self.args)]
        run = _Run(self._input(values, message), self.outputLimit, self.reactor, bool(_SETSID))
        user = self.user
        home = user.home if os.path.isdir(user.home) else "/"
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": home,
            "USER": user.name,
            "LOGNAME": user.name,
            "SHELL": user.shell or "/bin/sh",
            **{_ENVIRONMENT[k]: v for k, v in values.items() if k in _ENVIRONMENT},
        }
        executable = self.program
        if _SETSID:  # a process group of its own, which the time limit kills whole
            executable, argv = _SETSID, [_SETSID, *argv]
        try:
            process = self.reactor.spawnProcess(
                run, executable, argv, env=env, path=home, uid=user.uid, gid=user.gid,
                childFDs={0: "w", 1: "r", 2: "r"},
            )  # fmt: skip
        except OSError as e:
            log.error(
                "{queueID}: cannot start {program}: {error}",
                queueID=envelope.queueID,
                program=self.program,
                error=e.strerror or str(e),
            )
            return defer.succeed(_NOT_RUN)
        run.timer = self.reactor.callLater(self.timeout, run.kill)
        return run.ended.addCallback(self._ended, run, envelope, recipient, process)

    def _input(self, values: Mapping[str, str], message: Message) -> Iterator[bytes]:
        head = b""
        if "R" in self.flags:
            head += f"Return-Path: <{values['sender']}>\n".encode()
        if "D" in self.flags:
            head += f"Delivered-To: {values['recipient']}\n".encode()
        if "O" in self.flags:
            head += f"X-Original-To: {values['original_recipient']}\n".encode()
        if self.crlf:
            head = head.replace(b"\n", b"\r\n")
            body = message.chunks()
        else:
            body = toLF(message.chunks())
        return _prefixed(head, body)

    def _ended(
        self,
        how: tuple[int | None, int | None],
        run: _Run,
        envelope: Envelope,
        recipient: Recipient,
        process: Any,
    ) -> Reply:
        exitCode, signalled = how
        reply = replyFor(exitCode, signalled, run.timedOut, bytes(run.output))
        if reply.code >= 400:
            if run.timedOut:
                ended = "timed out"
            else:
                ended = f"signal {signalled}" if signalled is not None else f"exit {exitCode}"
            log.info(
                "{queueID}: {program} for <{recipient}>: {ended}: {reply}",
                queueID=envelope.queueID,
                program=self.program,
                recipient=recipient.address,
                ended=ended,
                reply=reply,
            )
        if run.discarded:
            log.info(
                "{queueID}: {program} wrote {n} octets more than output={limit}; discarded",
                queueID=envelope.queueID,
                program=self.program,
                n=run.discarded,
                limit=self.outputLimit,
            )
        return reply

    def __repr__(self) -> str:
        return f"PipeBackend({self.program!r}, user={self.user.name!r})"


_ENVIRONMENT = {
    "sender": "SENDER",
    "recipient": "RECIPIENT",
    "original_recipient": "ORIGINAL_RECIPIENT",
    "mailbox": "LOCAL",
    "domain": "DOMAIN",
    "extension": "EXTENSION",
    "client_address": "CLIENT_ADDRESS",
    "client_hostname": "CLIENT_HOSTNAME",
    "client_helo": "CLIENT_HELO",
    "client_protocol": "CLIENT_PROTOCOL",
    "sasl_username": "SASL_USERNAME",
    "queue_id": "QUEUE_ID",
    "size": "SIZE",
}


def _result(replies: list[Reply]) -> DeliveryResult | None:
    return DeliveryResult(tuple(replies))


def _expand(arg: str, values: Mapping[str, str]) -> str:
    return _MACRO_RE.sub(lambda m: values[m.group(1).lower()], arg)


def _prefixed(head: bytes, body: Iterator[bytes]) -> Iterator[bytes]:
    """C{head}, then C{body}'s chunks; closing it closes C{body}."""
    try:
        if head:
            yield head
        yield from body
    finally:
        close = getattr(body, "close", None)
        if close is not None:
            close()
