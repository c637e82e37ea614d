"""
The C{mailframe-queue} console script: C{mailframe-queue [--spool DIR]
COMMAND}, where COMMAND is C{list [--json]}, C{show ID [--json]
[--lines N]}, C{summary [--senders] [--minutes M] [--buckets N] [--json]},
C{flush}, C{delete ID...|--all}, C{hold ID...} or C{release ID...}.

C{summary} is Postfix's qshape: the recipients still to deliver, by
destination domain (or sender domain) and by age, in buckets that double
(5, 10, 20 ... minutes); held messages are counted apart.

It talks to the running server through the spool's control socket (AMP,
L{mailframe.queue.control}); with C{--workers} the spool holds one
C{worker-K} spool per process, and the tool asks each.  When no server
answers (no socket, or the connection is refused) it works on the files:
it reads them as they are, and changes them only while it holds the
spool's lock, which a running server never lets go of (so it never
touches a message a server owns): see L{mailframe.queue.offline}.

Exit status: 0 done; 1 an error (one line on stderr: an unknown id, a
spool that cannot be used, a server that does not answer in time); 2 a
usage error.

Owns: the command line, the client side of the control protocol, and
the offline mode.  Must not: change a spool's files without its lock;
import mailframe.server or mailframe.app.tap, or the reactor at import time.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import re
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from twisted.internet import defer, error, task
from twisted.internet.endpoints import UNIXClientEndpoint, connectProtocol
from twisted.internet.interfaces import IReactorTime, IReactorUNIX
from twisted.protocols import amp
from twisted.python.failure import Failure

from mailframe.app.qshape import formatShape, shape
from mailframe.queue._files import SpoolError
from mailframe.queue.control import (
    SOCKET,
    ControlError,
    DeleteAll,
    DeleteEntry,
    FlushQueue,
    HoldEntry,
    ListQueue,
    NoSuchEntry,
    ReleaseEntry,
    ShowEntry,
    SpoolBusy,
    lockSpool,
)
from mailframe.queue.location import LocationError, PostgresLocation, parseSpool
from mailframe.queue.offline import OfflineSpool
from mailframe.queue.pgtool import PostgresQueue, QueueDatabaseError

__all__ = ["ToolError", "formatEntry", "headerLines", "main", "run", "spoolDirectories"]

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
PAGE = 500
"""Messages per L{ListQueue} call."""
_ID_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*\Z")
_WORKER_RE = re.compile(r"worker-(\d+)\Z")


class ToolError(Exception):
    """An error the tool reports in one line (exit status 1)."""


def spoolDirectories(spool: str) -> list[str]:
    """
    The spools under C{spool}: itself (with C{queue/}) and its C{worker-K}
    spools, in worker order.  @raise ToolError: there is none.
    """
    spool = os.path.abspath(spool)
    found = [spool] if os.path.isdir(os.path.join(spool, "queue")) else []
    try:
        names = os.listdir(spool)
    except OSError as e:
        raise ToolError(f"cannot read the spool {spool}: {e.strerror or e}") from None
    workers = sorted((int(m.group(1)), n) for n in names if (m := _WORKER_RE.match(n)))
    found += [os.path.join(spool, n) for _, n in workers if os.path.isdir(os.path.join(spool, n))]
    if not found:
        raise ToolError(f"{spool} is not a mailframe spool (no queue/, no worker-K/)")
    return found


# -- the two ways to a spool: its server, or its files (OfflineSpool) ------------------


class Online:
    """A spool whose server answers on its control socket."""

    def __init__(
        self, path: str, protocol: amp.AMP, reactor: IReactorTime, timeout: float
    ) -> None:
        self.path = path
        self.protocol = protocol
        self.reactor = reactor
        self.timeout = timeout

    async def call(self, command: type[amp.Command], **kwargs: Any) -> Any:
        d = self.protocol.callRemote(command, **kwargs)
        d.addTimeout(self.timeout, self.reactor)
        try:
            return await d
        except defer.TimeoutError:
            raise ToolError(f"{self.path}: the server did not answer in {self.timeout:g} s")
        except ControlError as e:
            raise ToolError(str(e)) from None
        except (error.ConnectionDone, error.ConnectionLost):
            raise ToolError(f"{self.path}: the server closed the control connection")
        except amp.RemoteAmpError as e:
            raise ToolError(f"{self.path}: the server failed: {e}") from None

    async def list(self) -> tuple[list[dict[str, Any]], float]:
        entries: list[dict[str, Any]] = []
        after: dict[str, Any] = {}
        while True:
            page = await self.call(ListQueue, limit=PAGE, **after)
            entries += page["entries"]
            if not page["more"] or not page["entries"]:
                return entries, page["now"]
            last = page["entries"][-1]
            after = {"afterArrival": last["arrival"], "afterID": last["id"]}

    async def show(self, entryID: str) -> tuple[dict[str, Any], bytes, float] | None:
        try:
            answer = await self.call(ShowEntry, id=entryID)
        except NoSuchEntry:
            return None
        return answer["entry"], answer["head"], answer["now"]

    async def flush(self) -> int:
        return int((await self.call(FlushQueue))["count"])

    async def delete(self, entryID: str) -> bool:
        try:
            await self.call(DeleteEntry, id=entryID)
        except NoSuchEntry:
            return False
        return True

    async def deleteAll(self) -> int:
        return int((await self.call(DeleteAll))["count"])

    async def hold(self, entryID: str, held: bool) -> bool | None:
        try:
            answer = await self.call(HoldEntry if held else ReleaseEntry, id=entryID)
        except NoSuchEntry:
            return None
        return bool(answer["changed"])

    def close(self) -> None:
        transport = self.protocol.transport
        if transport is not None:
            transport.loseConnection()


async def connectControl(reactor: IReactorUNIX, path: str, timeout: float) -> amp.AMP | None:
    """An AMP connection to the server of the spool C{path}, or None if none answers."""
    socketPath = os.path.join(path, SOCKET)
    if not os.path.lexists(socketPath):
        return None
    endpoint = UNIXClientEndpoint(reactor, socketPath, timeout=timeout)
    try:
        return await connectProtocol(endpoint, amp.AMP())
    except (error.ConnectError, OSError):  # refused (a crash left the socket), gone ...
        return None


async def openSpool(
    reactor: Any, path: str, timeout: float, changes: bool, err: TextIO, connect: Any = None
) -> Online | OfflineSpool:
    """
    The server of C{path} if one answers; else its files, with the lock
    when the command C{changes} them.  A server that holds the lock and
    does not answer (starting, stopping) is waited for, up to C{timeout}.
    """
    connect = connect or connectControl

    def warn(line: str) -> None:
        print(f"mailframe-queue: {line}", file=err)

    deadline = reactor.seconds() + timeout
    while True:
        protocol = await connect(reactor, path, timeout)
        if protocol is not None:
            return Online(path, protocol, reactor, timeout)
        try:
            lockFD = lockSpool(path, "mailframe-queue")
        except SpoolBusy as e:
            if not changes:
                warn(f"{path}: {e.holder} holds the spool and does not answer on its "
                     "control socket; reading the files")  # fmt: skip
                return OfflineSpool(path, None, reactor, warn)
            if reactor.seconds() >= deadline:
                raise ToolError(
                    f"{path}: in use by {e.holder}, which does not answer on its control "
                    "socket (starting or stopping?); nothing changed"
                ) from None
            await task.deferLater(reactor, 0.1, lambda: None)
            continue
        except OSError as e:
            raise ToolError(f"{path}: cannot lock the spool: {e.strerror or e}") from None
        if not changes:
            os.close(lockFD)
            return OfflineSpool(path, None, reactor, warn)
        return OfflineSpool(path, lockFD, reactor, warn)


# -- formatting ----------------------------------------------------------------------


def _clean(text: str) -> str:
    """One printable line: tabs as spaces, other control characters (a remote reply's ...) '?'."""
    return "".join(c if c.isprintable() else " " if c == "\t" else "?" for c in text)


def duration(seconds: float) -> str:
    """C{45s}, C{12m}, C{2h13m}, C{3d4h}."""
    s = int(max(0.0, seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600}h"


def _reply(data: Any) -> str:
    if not data:
        return ""
    code, enhanced, lines = data
    return _clean(" ".join(str(p) for p in (code, enhanced, " / ".join(lines)) if p))


def _status(entry: dict[str, Any], now: float) -> str:
    if entry["held"]:
        return "held"
    if entry["underWay"]:
        return "sending"
    when = entry["scheduled"] if entry["scheduled"] is not None else entry["nextAttempt"]
    return "next now" if when <= now else f"next in {duration(when - now)}"


def _recipient(r: dict[str, Any]) -> str:
    state = r["state"]
    if state == "pending":
        text = _reply(r["reply"]) or "not tried yet"
    else:
        text = state + (f" {_reply(r['reply'])}" if state == "failed" and r["reply"] else "")
    return f"<{_clean(r['address'])}> {text}"


def formatEntry(entry: dict[str, Any], now: float) -> str:
    """One line: id, age, size, next attempt, sender, each recipient with its last reply."""
    recipients = "; ".join(_recipient(r) for r in entry["recipients"])
    nodes = ""
    if "acceptedBy" in entry:  # a queue shared by nodes (PostgreSQL)
        lease = entry.get("leaseOwner")
        nodes = f"  [{_clean(entry['acceptedBy'])}" + (
            f", lease {_clean(lease)}]" if lease else "]"
        )
    return (
        f"{entry['id']}  {duration(now - entry['arrival'])}  {entry['size']}  "
        f"{_status(entry, now)}  <{_clean(entry['sender'])}> -> {recipients}{nodes}"
    )


def headerLines(head: bytes, limit: int) -> list[str]:
    """The first C{limit} lines of the message's header section, printable."""
    lines: list[str] = []
    for raw in head.split(b"\n"):
        line = raw.rstrip(b"\r")
        if not line or len(lines) >= limit:
            break
        lines.append(_clean(line.decode("utf-8", "replace")))
    return lines


def _when(t: float | None, now: float) -> str:
    if t is None:
        return "-"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))
    return f"{stamp} ({duration(abs(now - t))} {'ago' if t <= now else 'from now'})"


def formatShow(entry: dict[str, Any], head: bytes, now: float, lines: int) -> str:
    """The envelope, field by field, a blank line, then the first header lines."""
    params = " ".join(k if v is None else f"{k}={v}" for k, v in entry["mailParams"].items())
    received = entry["received"]
    out = [
        f"id:          {entry['id']}",
        f"spool:       {entry['spool']}",
        f"status:      {_status(entry, now)}",
        f"arrival:     {_when(entry['arrival'], now)}",
        f"sender:      <{_clean(entry['sender'])}>" + ("  (a delivery report)" * entry["report"]),
        f"size:        {entry['size']}",
        f"attempts:    {entry['attempts']}, the last {_when(entry['lastAttempt'], now)}",
        f"next:        {_when(entry['nextAttempt'], now)}",
    ]
    if "acceptedBy" in entry:
        out.append(
            f"accepted by: {_clean(entry['acceptedBy'])}, {_when(entry['acceptedAt'], now)}"
        )
        lease = entry.get("leaseOwner")
        until = f" until {_when(entry['leaseUntil'], now)}" if lease else ""
        out.append(f"lease:       {_clean(lease) if lease else 'none'}{until}")
    if params:
        out.append(f"parameters:  {_clean(params)}")
    if received:
        out.append("received:    " + _clean(" ".join(f"{k}={v}" for k, v in received.items())))
    for r in entry["recipients"]:
        rparams = " ".join(k if v is None else f"{k}={v}" for k, v in r["params"].items())
        out.append(f"recipient:   <{_clean(r['address'])}> {_clean(rparams)}".rstrip())
        out.append(f"  state:     {r['state']}")
        if r["reply"]:
            via = f" (from {_clean(r['remote'])})" if r["remote"] else ""
            out.append(f"  reply:     {_reply(r['reply'])}{via}")
            out.append(f"  at:        {_when(r['lastAttempt'], now)}")
    return "\n".join([*out, "", *headerLines(head, lines)])


# -- the commands ----------------------------------------------------------------------


async def run(
    reactor: Any, args: argparse.Namespace, out: TextIO, err: TextIO, connect: Any = None
) -> int:
    """Carry out the command of C{args}; the exit status."""
    changes = args.command not in ("list", "show", "summary")
    sessions: list[Online | OfflineSpool | PostgresQueue] = []
    try:
        location = parseSpool(args.spool)
        if isinstance(location, PostgresLocation):  # the whole cluster's queue
            sessions.append(_database(location, args, reactor, err))
        else:
            for path in spoolDirectories(location):
                sessions.append(
                    await openSpool(reactor, path, args.timeout, changes, err, connect)
                )
        return await _command(args, sessions, out, err)
    except LocationError as e:
        print(f"mailframe-queue: {e}", file=err)
        return EXIT_USAGE
    except (ToolError, SpoolError, QueueDatabaseError) as e:
        print(f"mailframe-queue: {e}", file=err)
        return EXIT_ERROR
    except OSError as e:
        print(f"mailframe-queue: {e.filename or args.spool}: {e.strerror or e}", file=err)
        return EXIT_ERROR
    except Exception as e:
        if not type(e).__module__.startswith("psycopg"):
            raise
        print(f"mailframe-queue: {args.spool}: {' '.join(str(e).split())}", file=err)
        return EXIT_ERROR
    finally:
        for session in sessions:
            session.close()


def _database(
    location: PostgresLocation, args: argparse.Namespace, reactor: Any, err: TextIO
) -> PostgresQueue:
    """The PostgreSQL queue, with the password of --password-file if given."""
    if getattr(args, "password_file", None):
        with open(args.password_file, encoding="utf-8") as f:
            location = location.withPassword(f.readline().rstrip("\r\n"))

    def warn(line: str) -> None:
        print(f"mailframe-queue: {line}", file=err)

    return PostgresQueue(location, reactor.seconds, warn, args.timeout)


async def _answer(result: Any) -> Any:
    """The control client's methods are coroutines, the offline spool's are not."""
    return await result if inspect.isawaitable(result) else result


async def _command(
    args: argparse.Namespace,
    sessions: list[Online | OfflineSpool | PostgresQueue],
    out: TextIO,
    err: TextIO,
) -> int:
    command = args.command
    if command in ("list", "summary"):
        listed = []
        for session in sessions:
            entries, now = await _answer(session.list())
            listed += [(e, now) for e in entries]
        if command == "summary":
            result = shape(listed, args.senders, args.minutes, args.buckets)
            if args.json:
                print(json.dumps(result.toJSON(), ensure_ascii=False), file=out)
            else:
                print(formatShape(result), file=out)
            return EXIT_OK
        for entry, now in sorted(listed, key=lambda x: (x[0]["arrival"], x[0]["id"])):
            if args.json:
                print(json.dumps({**entry, "now": now}, ensure_ascii=False), file=out)
            else:
                print(formatEntry(entry, now), file=out)
        return EXIT_OK
    if command == "flush":
        count = sum([await _answer(s.flush()) for s in sessions])
        offline = any(isinstance(s, OfflineSpool) for s in sessions)
        note = " (when the server starts)" if offline else ""
        print(f"{count} message(s) to be tried now{note}", file=out)
        return EXIT_OK
    if command == "delete" and args.all:
        count = sum([await _answer(s.deleteAll()) for s in sessions])
        print(f"deleted {count} message(s)", file=out)
        return EXIT_OK
    status = EXIT_OK
    for entryID in args.ids:
        if not await _one(args, sessions, entryID, out):
            print(f"mailframe-queue: no message {entryID} in the queue", file=err)
            status = EXIT_ERROR
    return status


async def _one(
    args: argparse.Namespace,
    sessions: list[Online | OfflineSpool | PostgresQueue],
    entryID: str,
    out: TextIO,
) -> bool:
    """C{show}, C{delete}, C{hold} or C{release} one message; False if no spool has it."""
    for session in sessions:
        if args.command == "show":
            found = await _answer(session.show(entryID))
            if found is None:
                continue
            entry, head, now = found
            if args.json:
                shown = {**entry, "headers": headerLines(head, args.lines), "now": now}
                print(json.dumps(shown, ensure_ascii=False), file=out)
            else:
                print(formatShow(entry, head, now, args.lines), file=out)
            return True
        if args.command == "delete":
            if await _answer(session.delete(entryID)):
                print(f"deleted {entryID}", file=out)
                return True
            continue
        held = args.command == "hold"
        changed = await _answer(session.hold(entryID, held))
        if changed is None:
            continue
        word = "held" if held else "released"
        print(f"{word} {entryID}" if changed else f"{entryID} was {word} already", file=out)
        return True
    return False


def _queueID(text: str) -> str:
    if not _ID_RE.match(text):
        raise argparse.ArgumentTypeError(f"not a queue id: {text!r}")
    return text


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 86400:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, not {text!r}")
    return value


def _count(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) <= 1000:
        raise argparse.ArgumentTypeError(f"expected a whole number from 1 to 1000, not {text!r}")
    return int(text)


def parser() -> argparse.ArgumentParser:
    """The command line (C{--spool} and C{--timeout} also after the command)."""

    def common(spool: str, timeout: float | str) -> argparse.ArgumentParser:
        options = argparse.ArgumentParser(add_help=False)
        options.add_argument(
            "--spool", default=spool, help="the spool, or postgresql://USER@HOST/DB [./spool]"
        )
        options.add_argument(
            "--password-file", default=argparse.SUPPRESS, metavar="FILE",
            help="PostgreSQL: a file holding the password (or PGPASSWORD, PGPASSFILE)",
        )  # fmt: skip
        options.add_argument("--timeout", type=_positive, default=timeout,
                             help="seconds to wait for the server [10]")  # fmt: skip
        return options

    top = argparse.ArgumentParser(
        prog="mailframe-queue",
        description="List and manage mailframe's queue: through the running server's "
        "control socket, or on the spool's files when no server runs.",
        epilog="Exit status: 0 done, 1 an error, 2 a usage error.",
        parents=[common("./spool", 10.0)],
    )
    after = common(argparse.SUPPRESS, argparse.SUPPRESS)  # a subcommand's: only when given
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    listing = commands.add_parser("list", parents=[after], help="one line per message")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    show = commands.add_parser("show", parents=[after], help="a message's envelope and headers")
    show.add_argument("ids", nargs=1, type=_queueID, metavar="ID")
    show.add_argument("--json", action="store_true", help="one JSON object")
    show.add_argument("--lines", type=int, default=20, help="header lines to show [20]")
    summary = commands.add_parser(
        "summary", parents=[after], help="recipients by domain and age, like qshape"
    )
    summary.add_argument("--senders", action="store_true", help="by sender domain")
    summary.add_argument(
        "--minutes", type=_count, default=5, help="the first age bucket in minutes, doubling [5]"
    )
    summary.add_argument("--buckets", type=_count, default=10, help="age buckets [10]")
    summary.add_argument("--json", action="store_true", help="one JSON object")
    commands.add_parser("flush", parents=[after], help="try every message now (not held ones)")
    delete = commands.add_parser("delete", parents=[after], help="delete messages, no report")
    delete.add_argument("ids", nargs="*", type=_queueID, metavar="ID")
    delete.add_argument("--all", action="store_true", help="every message")
    for name, text in (("hold", "never try these until released"), ("release", "undo hold")):
        held = commands.add_parser(name, parents=[after], help=text)
        held.add_argument("ids", nargs="+", type=_queueID, metavar="ID")
    return top


def main(argv: Sequence[str] | None = None) -> int:
    """The console script; returns the exit status (C{sys.exit} is the caller's)."""
    top = parser()
    args = top.parse_args(argv)
    if args.command == "delete" and bool(args.ids) == bool(args.all):
        top.error("delete: give message ids or --all (not both)")
    from twisted.internet import reactor

    status: list[int | Failure] = []

    def start() -> None:
        d = defer.ensureDeferred(run(reactor, args, sys.stdout, sys.stderr))
        d.addBoth(status.append).addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(start)
    reactor.run()
    result = status[0] if status else EXIT_ERROR
    if not isinstance(result, int):
        print(f"mailframe-queue: {result.getErrorMessage()}", file=sys.stderr)
        return EXIT_ERROR
    return result


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
