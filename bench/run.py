#!/usr/bin/env python3
"""mailframe's benchmark: SMTP servers side by side under Postfix's smtp-source.

For every repetition, workload and server it starts the server as a process
on a free loopback port (a fresh process and scratch directory per run),
waits for its 220 banner, runs smtp-source, reads the server's CPU time and
peak memory from /proc, stops it, and checks that the server really took
every message smtp-source sent.  Inside a repetition the servers of one
workload run back to back in an order rotated from one repetition to the
next, so that ratios are taken between runs made close together; the report
gives medians over the repetitions.

    bench/setup.sh                                 # once: smtp-source, the venv
    bench/.venv/bin/python bench/run.py            # everything, 5 repetitions
    bench/.venv/bin/python bench/run.py --only mailframe,twisted.mail,aiosmtpd \\
        --workloads small,persist --reps 3         # a quicker look
    bench/.venv/bin/python bench/run.py --list     # the servers and workloads

Results go to bench/results/STAMP/: results.md (the tables), results.json
(every run), bench.png (the plot, if matplotlib is in the bench venv) and
logs/ (one log per server run).  The driver uses the standard library only
and never imports mailframe: every server is a separate process.

Servers print, or leave behind, a count of what they accepted:
  * the peers print "bench-sink: messages=N deliveries=D" on SIGTERM;
  * mailframe logs one "accepted from=... to=..." line per message (twistd -n
    writes its log to stdout, which goes to the run's log file);
  * mailframe-maildir leaves one file per message in Maildir/new.
A run whose count differs from what smtp-source sent counts as failed.
Only loopback addresses are accepted.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as _dt
import gzip
import hashlib
import ipaddress
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
CLK_TCK = os.sysconf("SC_CLK_TCK")


def default_venv() -> str:
    """The bench venv made by setup.sh: $BENCH_VENV, else bench/.venv."""
    return os.environ.get("BENCH_VENV") or os.path.join(HERE, ".venv")


# ---------------------------------------------------------------- servers

# --greet-delay 0: the peers have no pregreet wait either (mailframe's default
# makes a client's first connection wait 1 s)
MAILFRAME = (
    "{twistd} -n --pidfile= mailframe --listen tcp:{port}:interface={host} "
    "--hostname localhost --domain example.com --domain localhost --greet-delay 0"
)


@dataclasses.dataclass(frozen=True)
class Server:
    """One server the bench can run.

    @ivar command: the command line, with placeholders {port} {host} {python}
        {twistd} {here} {scratch} ({scratch}: the run's private temporary
        directory, also its working directory, removed afterwards).
    @ivar kind: C{null} (accepts and discards), C{durable} (250 only once the
        message is on disk) or C{reference} (a C program near the limit of
        the load generator).
    @ivar count: how the driver checks what the server took: C{sink} (a
        "bench-sink:" line on SIGTERM), C{mailframe-log} (mailframe's
        per-message log lines), C{mailframe-stop} (the "stopping: N messages"
        line of each mailframe process), C{maildir} (files in
        {scratch}/Maildir/new, one per message), or C{none}.
    @ivar default: run when no --only is given.
    @ivar placeholder: if set, the server cannot run yet; the text says why.
    """

    name: str
    command: str
    kind: str
    count: str
    description: str
    stopGrace: float = 10.0
    default: bool = True
    placeholder: str = ""


SERVERS = {
    s.name: s
    for s in [
        Server(
            "mailframe",
            MAILFRAME + " --quiet --deliver memory:keep=no",
            "null",
            "mailframe-stop",
            "twistd mailframe, memory backend dropping each message, no per-message log "
            "line (--quiet: the peers log none either)",
        ),
        Server(
            "mailframe-w2",
            MAILFRAME + " --quiet --workers 2 --deliver memory:keep=no",
            "null",
            "mailframe-stop",
            "the same with --workers 2 (two processes on one port, SO_REUSEPORT)",
        ),
        Server(
            "mailframe-logged",
            MAILFRAME + " --deliver memory:keep=no",
            "null",
            "mailframe-log",
            "twistd mailframe as it runs by default: its decision lines (connect, accepted, "
            "disconnect) to the run's log file, against mailframe's --quiet",
            default=False,
        ),
        Server(
            "mailframe-maildir",
            MAILFRAME + " --quiet --deliver maildir:{scratch}/Maildir",
            "durable",
            "maildir",
            "twistd mailframe, Maildir backend (file and new/ fsync'd before 250)",
        ),
        Server(
            "mailframe-spool",
            MAILFRAME + " --quiet --spool {scratch}/spool --deliver memory:keep=no",
            "durable",
            "mailframe-stop",
            "twistd mailframe with its durable spool (group commit, fsync), then delivered "
            "to memory",
        ),
        Server(
            "mailframe-spool-syncfs",
            MAILFRAME
            + " --quiet --spool {scratch}/spool --spool-sync syncfs --deliver memory:keep=no",
            "durable",
            "mailframe-stop",
            "the same with one syncfs(2) per group commit instead of fsyncs (Linux)",
            default=False,
        ),
        Server(
            "mailframe-spool-w2",
            MAILFRAME + " --quiet --workers 2 --spool {scratch}/spool --deliver memory:keep=no",
            "durable",
            "mailframe-stop",
            "the spool with --workers 2 (a spool per worker)",
        ),
        Server(
            "mailframe-pg",
            "{python} {here}/peers/postgres_queue.py --twistd {twistd} --host {host} -- "
            + MAILFRAME.replace("{twistd} ", "")
            + " --quiet --deliver memory:keep=no",
            "durable",
            "mailframe-stop",
            "twistd mailframe with its queue in a private PostgreSQL (group commit, "
            "synchronous_commit on), then delivered to memory; PostgreSQL's CPU counted too",
            stopGrace=60.0,
        ),
        Server(
            "mailframe-pg-w2",
            "{python} {here}/peers/postgres_queue.py --twistd {twistd} --host {host} -- "
            + MAILFRAME.replace("{twistd} ", "")
            + " --quiet --workers 2 --deliver memory:keep=no",
            "durable",
            "mailframe-stop",
            "two nodes (--workers 2: two processes on one port) sharing one PostgreSQL queue",
            stopGrace=60.0,
        ),
        Server(
            "mailframe-webhook",
            "{python} {here}/peers/webhook_receiver.py --twistd {twistd} --host {host} -- "
            + MAILFRAME.replace("{twistd} ", "")
            + " --quiet",
            "durable",
            "mailframe-stop",
            "twistd mailframe, webhook backend (format=json, unsigned) posting each message to "
            "a twisted.web receiver on loopback: 250 only after its 200",
        ),
        Server(
            "mailframe-webhook-raw",
            "{python} {here}/peers/webhook_receiver.py --twistd {twistd} --host {host} "
            "--webhook format=raw:secret={scratch}/key --make-secret {scratch}/key -- "
            + MAILFRAME.replace("{twistd} ", "")
            + " --quiet",
            "durable",
            "mailframe-stop",
            "the same with format=raw and a signature (HMAC-SHA256)",
            default=False,
        ),
        Server(
            "mailframe-amqp",
            "{python} {here}/peers/amqp_broker.py --twistd {twistd} --host {host} "
            "--dir {scratch} -- " + MAILFRAME.replace("{twistd} ", "") + " --quiet",
            "durable",
            "mailframe-stop",
            "twistd mailframe, amqp backend publishing each message to a private RabbitMQ "
            "(persistent, durable queue): 250 only after the broker's confirm",
            stopGrace=60.0,
        ),
        Server(
            "mailframe-relay",
            "{python} {here}/peers/relay_sink.py --host {host} --dir {scratch} -- "
            "{twistd} -n --pidfile= mailframe --listen tcp:{port}:interface={host} "
            "--hostname localhost --domain localhost --greet-delay 0 --quiet "
            "--spool {scratch}/spool --deliver memory:keep=no --relay-network 127.0.0.0/8 "
            "--relay-host [{host}]:{sink} --queue-destination-connections 20",
            "relay",
            "mailframe-stop",
            "twistd mailframe with its spool, relaying every message (example.com is not "
            "local) to Postfix's smtp-sink: measured until the sink has every message",
            stopGrace=90.0,
        ),
        Server(
            "postfix-relay",
            "{python} {here}/peers/relay_sink.py --host {host} --dir {scratch} -- "
            "{python} {here}/peers/postfix_durable.py --host {host} --port {port} "
            "--dir {scratch} --domain localhost --param relayhost=[{host}]:{sink} "
            "--param default_transport=smtp --param relay_transport=relay",
            "relay",
            "sink",
            "a private Postfix (queue file fsync'd before 250) relaying every message to "
            "smtp-sink with its smtp client: measured until the sink has every message",
            stopGrace=90.0,
        ),
        Server(
            "twisted.mail",
            "{python} {here}/peers/twisted_mail_sink.py --host {host} --port {port}",
            "null",
            "sink",
            "twisted.mail ESMTP, accept-all delivery, discarding IMessage",
        ),
        Server(
            "twisted-constant",
            "{python} {here}/peers/twisted_constant.py --host {host} --port {port}",
            "reference",
            "sink",
            "a Twisted Protocol answering constants: the floor of a Twisted SMTP server "
            "(bench/profile.py compares instructions per message with it)",
            default=False,
        ),
        Server(
            "aiosmtpd",
            "{python} {here}/peers/aiosmtpd_sink.py --host {host} --port {port}",
            "null",
            "sink",
            "aiosmtpd SMTP on asyncio, handle_DATA drops the message",
        ),
        Server(
            "smtp-sink",
            # smtp-sink refuses to run as root without -u
            "/usr/sbin/smtp-sink -u nobody {host}:{port} 1024",
            "reference",
            "none",
            "Postfix's smtp-sink (C): the limit of the load generator",
        ),
        Server(
            "postfix-durable",
            "{python} {here}/peers/postfix_durable.py --host {host} --port {port} --dir {scratch}",
            "durable",
            "sink",
            "a private Postfix: queue file fsync'd before 250, then discarded",
            stopGrace=60.0,
        ),
        Server(
            "twisted-mail-maildir",
            "{python} {here}/peers/twisted_mail_maildir.py --host {host} --port {port} "
            "--maildir {scratch}/Maildir",
            "durable",
            "sink",
            "twisted.mail writing a Maildir file per recipient with fsync (20 threads)",
        ),
        Server(
            "aiosmtpd-maildir",
            "{python} {here}/peers/aiosmtpd_maildir.py --host {host} --port {port} "
            "--maildir {scratch}/Maildir",
            "durable",
            "sink",
            "aiosmtpd writing a Maildir file per message with fsync (20 threads)",
        ),
        Server(
            "postfix-durable-noflow",
            "{python} {here}/peers/postfix_durable.py --host {host} --port {port} "
            "--dir {scratch} --param in_flow_delay=0",
            "durable",
            "sink",
            "postfix-durable without its inflow throttle (a sensitivity check)",
            stopGrace=60.0,
            default=False,
        ),
    ]
}

# --only also takes these names
PRESETS = {
    "null": ["mailframe", "mailframe-w2", "twisted.mail", "aiosmtpd", "smtp-sink"],
    "durable": [
        "mailframe-spool",
        "mailframe-spool-w2",
        "mailframe-pg",
        "mailframe-pg-w2",
        "mailframe-maildir",
        "postfix-durable",
        "twisted-mail-maildir",
        "aiosmtpd-maildir",
    ],
    "relay": ["mailframe-relay", "postfix-relay"],
}

# smtp-source flags (man smtp-source): -s parallel sessions, -m messages in
# all, -l message size in bytes, -r recipients per message, -d many messages
# per connection (the default is one message per connection, then QUIT).
# smtp-source never pipelines.
WORKLOADS = {
    "small": "-s 20 -m 2000 -l 1024",
    "persist": "-s 20 -m 2000 -l 1024 -d",
    "large": "-s 20 -m 2000 -l 102400",
    "rcpt50": "-s 20 -m 2000 -l 1024 -r 50",
}
WORKLOAD_NOTES = {
    "small": "1 KiB, 1 recipient, one message per connection",
    "persist": "1 KiB, 1 recipient, many messages per connection (-d)",
    "large": "100 KiB, 1 recipient, one message per connection",
    "rcpt50": "1 KiB, 50 recipients, one message per connection",
}
# durable and relay servers run these by default (a Maildir peer writes a file
# per recipient: rcpt50 would be 100,000 fsyncs)
DURABLE_WORKLOADS = ["small", "persist"]
SOURCE_COMMON = ["-M", "localhost", "-f", "sender@example.com", "-t", "rcpt@example.com"]

# issues 6 and 18's throughput targets: (server, peer, workloads, at least)
TARGETS = [
    ("mailframe", "twisted.mail", ["small", "persist"], 1.5),
    ("mailframe", "twisted.mail", ["large", "rcpt50"], 2.0),
    ("mailframe-logged", "mailframe", ["small", "persist"], 0.9),  # the log lines' cost
    ("mailframe-spool", "postfix-durable", ["small", "persist"], 2.0),
    ("mailframe-spool-w2", "postfix-durable", ["small", "persist"], 2.0),
    ("mailframe-maildir", "postfix-durable", ["small", "persist"], 1.5),
    ("mailframe-w2", "mailframe", ["small", "persist", "large", "rcpt50"], 1.6),
    ("mailframe-relay", "postfix-relay", ["small", "persist"], 1.5),
]

ACCEPTED_LINE = re.compile(rb" accepted from=\S* to=(\S+)")
STOP_LINE = re.compile(rb"stopping: (\d+) messages \((\d+) recipients\) accepted")
RELAY_SINK_LINE = re.compile(rb"relay-sink: messages=(\d+)")


# ---------------------------------------------------------------- /proc helpers


def free_port(host: str) -> int:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def check_loopback(host: str) -> None:
    if host != "localhost" and not ipaddress.ip_address(host).is_loopback:
        sys.exit(f"refusing non-loopback host {host!r}")


def wait_banner(host: str, port: int, proc: subprocess.Popen, timeout: float) -> float:
    """Connect until a 220 banner arrives, then QUIT; return the seconds taken."""
    t0 = time.monotonic()
    last: object = None
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early with rc={proc.returncode}")
        try:
            with socket.create_connection((host, port), timeout=2) as s:
                buf = b""
                while b"\n" not in buf:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    buf += chunk
                if buf.startswith(b"220"):
                    s.sendall(b"QUIT\r\n")
                    with contextlib.suppress(OSError):
                        s.recv(4096)
                    return time.monotonic() - t0
                last = buf
        except OSError as e:
            last = e
        time.sleep(0.05)
    raise RuntimeError(f"no 220 banner on {host}:{port} after {timeout}s ({last!r})")


def proc_stat(pid: int | str) -> tuple[int, float]:
    """(session id, CPU seconds incl. reaped children) of one process."""
    with open(f"/proc/{pid}/stat") as f:
        data = f.read()
    rest = data[data.rindex(")") + 2 :].split()
    # rest[0] is field 3 (state): session = 6, utime..cstime = 14..17
    return int(rest[3]), sum(int(x) for x in rest[11:15]) / CLK_TCK


def session_pids(sid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                if proc_stat(d)[0] == sid:
                    out.append(int(d))
    return out


def status_kb(pid: int, key: str) -> int:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1])
    return 0


def session_usage(sid: int, key: str = "VmHWM:") -> tuple[float, int, int]:
    """CPU seconds, summed peak (or current) RSS in KiB, and process count of a session."""
    cpu, kb, n = 0.0, 0, 0
    for pid in session_pids(sid):
        with contextlib.suppress(OSError, ValueError, IndexError):
            cpu += proc_stat(pid)[1]
            kb += status_kb(pid, key)
            n += 1
    return cpu, kb, n


def session_pss_kb(sid: int) -> int:
    """Summed proportional set size (shared pages split between processes) now."""
    tot = 0
    for pid in session_pids(sid):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    tot += int(line.split()[1])
                    break
    return tot


def machine_busy_s() -> float:
    """Non-idle CPU seconds of the whole machine so far (/proc/stat)."""
    with open("/proc/stat") as f:
        x = [int(v) for v in f.readline().split()[1:9]]
    # user nice system idle iowait irq softirq steal
    return (x[0] + x[1] + x[2] + x[5] + x[6] + x[7]) / CLK_TCK


def wait_quiet(limit_pct: float, max_wait: float, sample: float = 1.0) -> tuple[float, float]:
    """Wait until the machine's busy CPU over C{sample} seconds is below
    C{limit_pct} % of one core (other jobs: nothing of the bench runs now), or
    C{max_wait} seconds.  Returns (seconds waited, busy % of the last sample)."""
    t0 = time.monotonic()
    while True:
        b0 = machine_busy_s()
        time.sleep(sample)
        busy = 100 * (machine_busy_s() - b0) / sample
        waited = time.monotonic() - t0
        if busy < limit_pct or waited >= max_wait:
            return round(waited, 1), round(busy, 1)


def disk_flushes() -> int | None:
    """Cache flushes completed by the block devices so far (/proc/diskstats
    field 16, Linux >= 5.5): an fsync that reaches a device shows up here."""
    try:
        disks = set(os.listdir("/sys/block"))
        tot = 0
        with open("/proc/diskstats") as f:
            for line in f:
                x = line.split()
                if len(x) >= 19 and x[2] in disks and not x[2].startswith(("loop", "ram")):
                    tot += int(x[18])
        return tot
    except (OSError, ValueError):
        return None


def stop_group(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM the server's process group, SIGKILL it after C{grace} seconds."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def reap_session(sid: int, grace: float = 5.0) -> list[str]:
    """Stop (by pid) whatever is left in the server's session once it stopped.

    Every process in that session descends from the server the driver
    started (say, a daemon that outlived its wrapper).  Returns "pid(comm)"
    of each one found."""
    left = session_pids(sid)
    found = []
    for pid in left:
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/comm") as f:
                found.append(f"{pid}({f.read().strip()})")
            os.kill(pid, signal.SIGTERM)
    t0 = time.monotonic()
    while left and time.monotonic() - t0 < grace:
        time.sleep(0.1)
        left = session_pids(sid)
    for pid in left:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    return found


def flag(args: list[str], name: str, default: int) -> int:
    return int(args[args.index(name) + 1]) if name in args else default


def without(args: list[str], *names: str) -> list[str]:
    """args less each flag in names and the value after it."""
    out, skip = [], False
    for x in args:
        if skip:
            skip = False
        elif x in names:
            skip = True
        else:
            out.append(x)
    return out


def split_load(wl_args: str, k: int) -> tuple[list[list[str]], int, int]:
    """Split a workload over k smtp-source processes (dividing -m and -s).

    Returns the argument lists, the number of messages and of recipients each."""
    a = shlex.split(wl_args)
    m, s, r = flag(a, "-m", 1), flag(a, "-s", 1), flag(a, "-r", 1)
    rest = without(a, "-m", "-s")
    parts = [
        [*rest, "-m", str(m // k + (i < m % k)), "-s", str(max(1, s // k + (i < s % k)))]
        for i in range(k)
    ]
    return parts, m, r


# ---------------------------------------------------------------- counting


def count_mailframe_log(path: str) -> tuple[int, int]:
    """Messages and recipients in mailframe's "accepted from=... to=a,b" lines."""
    messages = deliveries = 0
    with open(path, "rb") as f:
        for line in f:
            mo = ACCEPTED_LINE.search(line)
            if mo:
                messages += 1
                deliveries += mo.group(1).count(b",") + 1
    return messages, deliveries


def count_mailframe_stop(path: str) -> tuple[int, int]:
    """Messages and recipients from the line each mailframe process logs when
    it stops ("stopping: N messages (R recipients) accepted"), summed over
    the worker processes."""
    messages = deliveries = 0
    with open(path, "rb") as f:
        for mo in STOP_LINE.finditer(f.read()):
            messages += int(mo.group(1))
            deliveries += int(mo.group(2))
    return messages, deliveries


def check_counts(res: dict, server: Server, logpath: str, scratch: str) -> None:
    """Fill in what the server says it took; fail the run if it is not all."""
    expected_msgs, expected_dels = res.get("messages"), res.get("expected_deliveries")
    got: dict[str, float] = {}
    if server.count == "sink":
        with open(logpath, "rb") as f:
            text = f.read().decode(errors="replace")
        mo = re.search(r"bench-sink:(.*)", text)
        if mo:
            got = {k: float(v) for k, v in re.findall(r"(\w+)=(-?[\d.]+)", mo.group(1))}
            res["sink"] = got
        else:
            res["count_error"] = "no bench-sink: line"
    elif server.count == "mailframe-log":
        got["messages"], got["deliveries"] = count_mailframe_log(logpath)
    elif server.count == "mailframe-stop":
        got["messages"], got["deliveries"] = count_mailframe_stop(logpath)
    elif server.count == "maildir":
        box = os.path.join(scratch, "Maildir")
        try:
            got["messages"] = len(os.listdir(os.path.join(box, "new")))
            res["maildir_tmp_left"] = len(os.listdir(os.path.join(box, "tmp")))
        except OSError as e:
            res["count_error"] = f"no Maildir: {e}"
    else:
        res["counted"] = "not checked"
        return
    res["counted"] = {k: int(v) for k, v in got.items() if k in ("messages", "deliveries")}
    if not res["ok"]:
        return
    problem = res.get("count_error")
    if not problem and got.get("messages", -1) >= 0 and got.get("messages") != expected_msgs:
        problem = f"server took {got['messages']:.0f} messages, smtp-source sent {expected_msgs}"
    if not problem and "deliveries" in got and got["deliveries"] != expected_dels:
        problem = (
            f"server took {got['deliveries']:.0f} deliveries, expected {expected_dels} "
            f"(messages x recipients)"
        )
    if not problem and server.kind == "relay":
        with open(logpath, "rb") as f:
            mo = RELAY_SINK_LINE.search(f.read())
        relayed = int(mo.group(1)) if mo else -1
        res["relayed"] = relayed
        if relayed != expected_msgs:
            problem = f"the sink took {relayed} messages, smtp-source sent {expected_msgs}"
    if not problem and got.get("queue_left", 0) > 0:
        problem = f"{got['queue_left']:.0f} messages still queued after the drain"
    if problem:
        res["ok"] = False
        res["error"] = problem


# ---------------------------------------------------------------- one run


def run_one(server: Server, wl_name: str, wl_args: str, opt, log_dir: str, tag: str) -> dict:
    """Start C{server}, load it with smtp-source, stop it; return the measurements."""
    scratch = tempfile.mkdtemp(prefix="mailframe-bench-")
    try:
        return _run_in(scratch, server, wl_name, wl_args, opt, log_dir, tag)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _run_in(scratch: str, server: Server, wl_name, wl_args, opt, log_dir, tag) -> dict:
    host = opt.host
    port = free_port(host)
    cmd = opt.commands[server.name].replace("{sink}", "{{sink}}")  # relay_sink.py's
    cmd = cmd.format(
        port=port, host=host, python=opt.python, twistd=opt.twistd, here=HERE, scratch=scratch
    )
    argv = shlex.split(cmd)
    if opt.pin:
        argv = ["taskset", "-c", opt.server_cpus, *argv]
    res: dict = {"server": server.name, "workload": wl_name, "tag": tag, "cmd": cmd}
    res.update(ok=False, error=None)
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", server.name)
    logpath = os.path.join(log_dir, f"{tag}-{wl_name}-{safe}.log")
    with open(logpath, "wb") as logf:
        logf.write(f"# {cmd}\n".encode())
        logf.flush()
        srv = subprocess.Popen(
            argv,
            cwd=scratch,
            env=opt.server_env,
            stdout=logf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        cpu0 = None
        try:
            res["startup_s"] = round(wait_banner(host, port, srv, opt.start_timeout), 3)
            time.sleep(0.2)  # let the probe connection finish
            cpu0, rss0_kb, _ = session_usage(srv.pid, "VmRSS:")
            res["rss_idle_mib"] = round(rss0_kb / 1024, 1)
            parts, m, r = split_load(wl_args, opt.sources)
            res["messages"], res["expected_deliveries"] = m, m * r
            measure_load(res, srv, parts, cpu0, opt, host, port, scratch, server.kind)
        except Exception as e:  # recorded: the run counts as failed
            res["error"] = str(e)
        finally:
            stop_group(srv, max(opt.stop_grace, server.stopGrace))
            left = reap_session(srv.pid)
            if left:
                res["leftover_procs"] = left
                logf.write(f"# run.py: stopped leftover processes {left}\n".encode())
    check_counts(res, server, logpath, scratch)
    sink = res.get("sink", {})
    if "server_cpu_s" in res:
        # a queueing server works on after its last 250; it reports its total
        drained = sink["cpu_session_s"] - cpu0 if "cpu_session_s" in sink else None
        res["cpu_drained_s_per_1k"] = round(
            1000 * (drained if drained is not None else res["server_cpu_s"]) / res["messages"], 3
        )
    res["log"] = compress_log(logpath)
    return res


def measure_load(res, srv, parts, cpu0, opt, host, port, scratch="", kind_="null") -> None:
    """Run the smtp-source processes to the end and record what they cost.

    A relay server (C{kind_} relay) is measured end to end: until the sink
    behind it (peers/relay_sink.py, which writes {scratch}/sink-times) has
    every message; smtp-source runs with -c, so that the time of each 250
    is known, and each message's latency is estimated by order (the k-th
    message accepted against the k-th one the sink took)."""
    m = res["messages"]
    relay = kind_ == "relay"
    results: list = [None] * len(parts)
    accepted: list[list[float]] = [[] for _ in parts]
    fl0, busy0 = disk_flushes(), machine_busy_s()
    t_start = time.perf_counter()
    t_wall0 = time.time()
    srcs = []
    for p in parts:
        sargv = [opt.smtp_source, *SOURCE_COMMON, *(["-c"] if relay else []), *p]
        sargv.append(f"inet:{host}:{port}")
        if opt.pin:
            sargv = ["taskset", "-c", opt.source_cpus, *sargv]
        srcs.append(
            subprocess.Popen(
                sargv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        )

    def reap(i: int, sp: subprocess.Popen) -> None:
        if relay:  # -c: "N\r" at each message; each one timed as it arrives
            chunks = []
            seen = 0
            while True:
                chunk = os.read(sp.stdout.fileno(), 65536)
                if not chunk:
                    break
                now = time.time()
                chunks.append(chunk)
                for word in re.findall(rb"(\d+)\r", chunk):
                    n = int(word)
                    accepted[i].extend([now] * max(0, n - seen))
                    seen = max(seen, n)
            out = re.sub(rb"\d+\r", b"", b"".join(chunks))
        else:
            out = sp.stdout.read()  # until smtp-source closes it (never fills the pipe)
        _, status, ru = os.wait4(sp.pid, 0)
        sp.returncode = os.waitstatus_to_exitcode(status)
        results[i] = (time.perf_counter(), sp.returncode, ru.ru_utime + ru.ru_stime, out)

    threads = [threading.Thread(target=reap, args=x, daemon=True) for x in enumerate(srcs)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + opt.timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    if any(t.is_alive() for t in threads):
        for sp in srcs:
            if sp.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    sp.kill()  # only the smtp-source processes started here
        for t in threads:
            t.join(5)
        raise RuntimeError(f"smtp-source did not finish in {opt.timeout:.0f}s (--timeout)")
    wall = max(x[0] for x in results) - t_start
    if relay:
        res["accept_s"] = round(wall, 4)
        sunk = wait_sink(os.path.join(scratch, "sink-times"), m, deadline)
        if len(sunk) < m:
            raise RuntimeError(f"the sink has {len(sunk)} of {m} messages after --timeout")
        wall = sunk[m - 1] - t_wall0
        starts = sorted(x for xs in accepted for x in xs)
        if len(starts) == m:
            lat = sorted(max(0.0, b - a) for a, b in zip(starts, sunk[:m], strict=True))
            res["latency_p50_ms"] = round(1000 * lat[len(lat) // 2], 1)
            res["latency_p99_ms"] = round(1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))], 1)
    cpu1, hwm_kb, nproc = session_usage(srv.pid)
    busy1, fl1 = machine_busy_s(), disk_flushes()
    src_cpu = sum(x[2] for x in results)
    if fl0 is not None and fl1 is not None:
        res["disk_flushes_per_msg"] = round((fl1 - fl0) / m, 2)
    res["pss_mib"] = round(session_pss_kb(srv.pid) / 1024, 1)
    res.update(
        wall_s=round(wall, 4),
        msgs_per_s=round(m / wall, 1),
        server_cpu_s=round(cpu1 - cpu0, 3),
        server_cpu_pct=round(100 * (cpu1 - cpu0) / wall, 1),
        cpu_s_per_1k=round(1000 * (cpu1 - cpu0) / m, 3),
        peak_rss_mib=round(hwm_kb / 1024, 1),
        server_procs=nproc,
        source_cpu_pct=round(100 * src_cpu / wall, 1),
        # everything else on the machine (other jobs, kernel writeback): noise
        other_cpu_pct=round(100 * ((busy1 - busy0) - (cpu1 - cpu0) - src_cpu) / wall, 1),
    )
    out = b"".join(x[3] or b"" for x in results).decode(errors="replace").strip()
    if out:
        res["source_output"] = out[-2000:]
    rcs = [x[1] for x in results]
    if any(rcs):
        raise RuntimeError(f"smtp-source exit codes {rcs}: {out[-300:]!r}")
    res["ok"] = True


def wait_sink(path: str, m: int, deadline: float) -> list[float]:
    """The time (time.time()) the relay's sink took each message, once it has
    C{m} of them or at C{deadline} (time.monotonic()); one time per message."""
    times: list[float] = []
    while True:
        times = []
        with contextlib.suppress(OSError), open(path) as f:
            for line in f:
                when, _, n = line.partition(" ")
                with contextlib.suppress(ValueError):
                    times.extend([float(when)] * (int(n) - len(times)))
        if len(times) >= m or time.monotonic() > deadline:
            return times
        time.sleep(0.02)


def compress_log(path: str, limit: int = 256 * 1024) -> str:
    """gzip a large log (mailframe logs a line per message); return its path."""
    if os.path.getsize(path) <= limit:
        return path
    with open(path, "rb") as f, gzip.open(path + ".gz", "wb") as g:
        shutil.copyfileobj(f, g)
    os.unlink(path)
    return path + ".gz"


# ---------------------------------------------------------------- report


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, nd: int = 0) -> str:
    return "-" if x is None else f"{x:,.{nd}f}"


# a run is "quiet" if other jobs used less than this % of one core during it
QUIET_PCT = 20.0


def paired(
    runs: list[dict], wl: str, server: str, peer: str, key: str, quiet: bool = False
) -> list[float]:
    """Per repetition: server's key over peer's, for the repetitions where both
    ran (and, if C{quiet}, both ran while other jobs used < QUIET_PCT % CPU)."""
    by: dict[int, dict[str, float]] = {}
    for r in runs:
        if r["workload"] == wl and r["ok"] and r["server"] in (server, peer) and r.get(key):
            if quiet and not r.get("other_cpu_pct", 100) < QUIET_PCT:
                continue
            by.setdefault(r["rep"], {})[r["server"]] = r[key]
    return [d[server] / d[peer] for d in by.values() if server in d and peer in d]


def ratio(runs: list[dict], wl: str, server: str, peer: str) -> float | None:
    """Median over repetitions of server's msgs/s over peer's in the same repetition."""
    return med(paired(runs, wl, server, peer, "msgs_per_s"))


def cpu_ratio(runs: list[dict], wl: str, server: str, peer: str) -> float | None:
    """Median over repetitions of peer's CPU per message over server's (incl. drain):
    above 1, server spends less CPU per message.  Less sensitive than msgs/s to
    other load on the machine."""
    xs = paired(runs, wl, peer, server, "cpu_drained_s_per_1k")
    return med(xs)


def summarize(runs: list[dict], plan: dict[str, list[str]]) -> list[dict]:
    """One row per (workload, server): medians over the repetitions."""
    rows = []
    for wl, names in plan.items():
        for s in names:
            rs = [r for r in runs if r["workload"] == wl and r["server"] == s]
            ok = [r for r in rs if r["ok"]]
            rates = [r["msgs_per_s"] for r in ok]
            row = {
                "workload": wl,
                "server": s,
                "ok": len(ok),
                "failed": len(rs) - len(ok),
                "msgs_per_s": med(rates),
                "min": min(rates, default=None),
                "max": max(rates, default=None),
                "ratios": {p: ratio(runs, wl, s, p) for p in names if p != s},
            }
            for key in (
                "cpu_s_per_1k",
                "cpu_drained_s_per_1k",
                "server_cpu_pct",
                "peak_rss_mib",
                "rss_idle_mib",
                "pss_mib",
                "source_cpu_pct",
                "other_cpu_pct",
                "disk_flushes_per_msg",
                "accept_s",
                "latency_p50_ms",
                "latency_p99_ms",
            ):
                row[key] = med([r.get(key) for r in ok])
            rows.append(row)
    return rows


def kind(name: str) -> str:
    return SERVERS[name].kind if name in SERVERS else "null"


def comparisons(runs: list[dict], plan: dict[str, list[str]]) -> list[dict]:
    """Each mailframe server against each peer of its kind (the null ones also
    against the reference), in the same repetitions."""
    out = []
    for wl, names in plan.items():
        for s in names:
            if not s.startswith("mailframe"):
                continue
            kinds = {"null": ("null", "reference")}.get(kind(s), (kind(s),))
            for p in names:
                if p.startswith("mailframe") or kind(p) not in kinds:
                    continue
                xs = paired(runs, wl, s, p, "msgs_per_s")
                qs = paired(runs, wl, s, p, "msgs_per_s", quiet=True)
                other = [
                    med(
                        [
                            r.get("other_cpu_pct")
                            for r in runs
                            if r["ok"] and r["workload"] == wl and r["server"] == n
                        ]
                    )
                    for n in (s, p)
                ]
                out.append(
                    {"workload": wl, "server": s, "peer": p, "ratio": med(xs)}
                    | {"min": min(xs, default=None), "max": max(xs, default=None)}
                    | {"cpu_ratio": cpu_ratio(runs, wl, s, p), "reps": len(xs)}
                    | {"other_cpu_pct": other, "quiet_ratios": [round(x, 2) for x in qs]}
                )
    return out


def table(head: list[str], rows: list[list[str]], left: int = 2) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * left + "---:|" * (len(head) - left)]
    out += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(out)


def span(lo, hi, nd: int = 0) -> str:
    return "-" if lo is None else f"{fmt(lo, nd)}-{fmt(hi, nd)}"


def main_table(rows: list[dict]) -> str:
    head = [
        "workload",
        "server",
        "msgs/s",
        "min-max",
        "CPU s/1k msgs",
        "incl. drain",
        "server CPU %",
        "peak RSS MiB (idle)",
        "smtp-source CPU %",
        "other CPU %",
        "flushes/msg",
        "runs ok/failed",
    ]
    cells = [
        [
            r["workload"],
            r["server"],
            fmt(r["msgs_per_s"]),
            span(r["min"], r["max"]),
            fmt(r["cpu_s_per_1k"], 3),
            fmt(r["cpu_drained_s_per_1k"], 3),
            fmt(r["server_cpu_pct"]),
            f"{fmt(r['peak_rss_mib'], 1)} ({fmt(r['rss_idle_mib'], 1)})",
            fmt(r["source_cpu_pct"]),
            fmt(r["other_cpu_pct"]),
            fmt(r["disk_flushes_per_msg"], 2),
            f"{r['ok']}/{r['failed']}",
        ]
        for r in rows
    ]
    return table(head, cells)


def relay_table(rows: list[dict]) -> str:
    """The relay servers: end to end, with the delivery latency estimated by order."""
    head = ["workload", "server", "msgs/s end to end", "smtp-source done (s)",
            "latency p50 ms", "latency p99 ms", "CPU s/1k msgs"]  # fmt: skip
    cells = [
        [r["workload"], r["server"], fmt(r["msgs_per_s"]), fmt(r["accept_s"], 2),
         fmt(r["latency_p50_ms"]), fmt(r["latency_p99_ms"]), fmt(r["cpu_s_per_1k"], 3)]
        for r in rows
        if kind(r["server"]) == "relay"
    ]  # fmt: skip
    return table(head, cells)


def comparison_table(cs: list[dict]) -> str:
    head = [
        "workload",
        "mailframe server",
        "peer",
        "x peer msgs/s",
        "min-max",
        "x peer by CPU/msg",
        "other CPU % (mailframe / peer)",
        f"x peer msgs/s, quiet reps (other < {QUIET_PCT:g} %)",
    ]
    cells = [
        [
            c["workload"],
            c["server"],
            c["peer"],
            fmt(c["ratio"], 2),
            span(c["min"], c["max"], 2),
            fmt(c["cpu_ratio"], 2),
            " / ".join(fmt(x) for x in c["other_cpu_pct"]),
            ", ".join(f"{x:.2f}" for x in c["quiet_ratios"]) or "-",
        ]
        for c in cs
    ]
    return table(head, cells, left=3)


def targets(runs: list[dict], plan: dict[str, list[str]]) -> list[dict]:
    """Issues 6 and 18's throughput targets, with the ratios measured in this run."""
    out = []
    for server, peer, wls, goal in TARGETS:
        for wl in wls:
            ran = server in plan.get(wl, []) and peer in plan.get(wl, [])
            x = ratio(runs, wl, server, peer) if ran else None
            if x is None:
                placeholder = server in SERVERS and SERVERS[server].placeholder
                verdict = "not measured" + (": no --spool yet" if placeholder else "")
            else:
                verdict = "met" if x >= goal else "missed"
            out.append(
                {"server": server, "peer": peer, "workload": wl, "target": goal, "measured": x}
                | {"cpu_ratio": cpu_ratio(runs, wl, server, peer) if ran else None}
                | {"verdict": verdict}
            )
    return out


def targets_table(ts: list[dict]) -> str:
    head = ["target", "workload", "measured (msgs/s)", "by CPU/msg", "verdict"]
    cells = [
        [
            f"{t['server']} >= {t['target']:g} x {t['peer']}",
            t["workload"],
            fmt(t["measured"], 2),
            fmt(t.get("cpu_ratio"), 2),
            t["verdict"],
        ]
        for t in ts
    ]
    return table(head, cells)


def write_report(res_dir: str, meta: dict, runs: list[dict], opt) -> int:
    """Write results.json, bench.png and results.md for these runs; print the tables."""
    plan = meta["plan"]
    env = meta["environment"]
    rows = summarize(runs, plan)
    cs = comparisons(runs, plan)
    ts = targets(runs, plan)
    other = [r["other_cpu_pct"] for r in runs if r.get("other_cpu_pct") is not None]
    noise = {
        "other_cpu_pct_median": med(other),
        "other_cpu_pct_max": max(other, default=None),
        "runs_over_25pct_other": sum(1 for x in other if x > 25),
        "runs": len(other),
        "waited_s": round(sum(r.get("waited_s", 0) for r in runs), 1),
        "elapsed_s": meta.get("elapsed_s"),
    }
    data = {"meta": meta, "noise": noise, "runs": runs, "summary": rows}
    data |= {"comparisons": cs, "targets": ts}
    with open(os.path.join(res_dir, "results.json"), "w") as f:
        json.dump(data, f, indent=1)
    png = None if opt.no_plot else plot(opt, res_dir)
    wls = meta["workloads"]
    md = [
        f"# mailframe bench {meta['started']}",
        "",
        f"mailframe: {env.get('mailframe_installed_from', '?')}; machine: {env['cpu']}, "
        f"{env['nproc']} CPUs, {env['memory_gib']} GiB, Linux {env['kernel']}, fsync of "
        f"1 KiB {env['fsync_ms']} ms; Python {env['server_python']}; Postfix {env['postfix']}",
        "",
        f"{meta['reps']} repetitions, medians; smtp-source {' '.join(SOURCE_COMMON)} plus: "
        + "; ".join(f"{n} `{a}`" for n, a in wls.items()),
        "",
        f"Noise: other CPU % (other jobs on the machine during the load, % of one core): "
        f"median {fmt(noise['other_cpu_pct_median'])}, max {fmt(noise['other_cpu_pct_max'])}; "
        f"{noise['runs_over_25pct_other']} of {noise['runs']} runs above 25 %. "
        f"Elapsed {fmt(meta.get('elapsed_s'))} s"
        + (f", of which {noise['waited_s']:.0f} s waiting for quiet" if noise["waited_s"] else "")
        + ".",
        "",
        main_table(rows),
        "",
    ]
    if any(kind(r["server"]) == "relay" for r in rows):
        md += [
            "## Relay: accepted, queued and relayed to smtp-sink, end to end",
            "",
            "msgs/s: until the sink has every message.  Latency: the k-th 250 that "
            "smtp-source got against the k-th message the sink took (an estimate by "
            "order, not by message).",
            "",
            relay_table(rows),
            "",
        ]
    md += [
        "## mailframe against its peers (same repetitions)",
        "",
        comparison_table(cs),
        "",
        "## Targets (issues 6 and 18)",
        "",
        targets_table(ts),
        "",
    ]
    if png:
        md += ["![msgs/s per workload and server](bench.png)", ""]
    with open(os.path.join(res_dir, "results.md"), "w") as f:
        f.write("\n".join(md))
    print("\n" + "\n".join(md))
    print(
        f"results: {res_dir}/results.md  raw: results.json" + ("  plot: bench.png" if png else "")
    )
    return 0 if runs and all(r["ok"] for r in runs) else 1


# ---------------------------------------------------------------- environment


def tree_digest(root: str) -> str | None:
    """A digest of the .py files under root/mailframe (to compare installs)."""
    base = os.path.join(root, "mailframe")
    if not os.path.isdir(base):
        return None
    h = hashlib.sha256()
    for d, dirs, files in sorted(os.walk(base)):
        dirs[:] = sorted(x for x in dirs if x != "__pycache__")
        for name in sorted(files):
            if name.endswith(".py"):
                p = os.path.join(d, name)
                h.update(os.path.relpath(p, base).encode() + b"\0")
                with open(p, "rb") as f:
                    h.update(f.read())
    return h.hexdigest()


def run_text(argv: list[str], **kw) -> str:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=60, **kw)
        return r.stdout.strip()
    except (OSError, subprocess.SubprocessError) as e:
        return f"? ({e})"


def fsync_ms(directory: str, n: int = 20) -> float:
    """Median time of writing 1 KiB and fsyncing it, in directory, in ms."""
    times = []
    fd, path = tempfile.mkstemp(dir=directory)
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            os.write(fd, b"x" * 1024)
            os.fsync(fd)
            times.append(time.perf_counter() - t0)
    finally:
        os.close(fd)
        os.unlink(path)
    return round(1000 * statistics.median(times), 3)


def environment(opt) -> dict:
    """What the results depend on: the machine, the versions, the mailframe code."""
    cpu = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gib = None
    with contextlib.suppress(OSError, ValueError), open("/proc/meminfo") as f:
        mem_gib = round(int(f.readline().split()[1]) / 1024**2, 1)
    versions = run_text(
        [
            opt.python,
            "-c",
            "import sys, importlib.metadata as m, importlib.util as u, os;"
            "print(sys.version.split()[0], *[f'{p}={m.version(p)}' for p in "
            "('mailframe','twisted','aiosmtpd','matplotlib') if u.find_spec(p)]);"
            "s = u.find_spec('mailframe');"
            "print(os.path.dirname(os.path.dirname(s.origin)) if s else '')",
        ],
        env=opt.server_env,
    ).splitlines()
    installed_root = versions[1] if len(versions) > 1 else ""
    env = {
        "cpu": cpu,
        "nproc": os.cpu_count(),
        "memory_gib": mem_gib,
        "kernel": platform.release(),
        "loadavg_at_start": os.getloadavg(),
        "fsync_ms": fsync_ms(tempfile.gettempdir()),
        "server_python": versions[0] if versions else "?",
        "postfix": run_text(["dpkg-query", "-W", "-f=${Version}", "postfix"]),
        "git_head": run_text(["git", "-C", REPO, "rev-parse", "HEAD"]),
        "git_dirty": bool(
            run_text(["git", "-C", REPO, "status", "--porcelain", "--", "mailframe", "twisted"])
        ),
    }
    src = os.path.join(os.path.dirname(os.path.dirname(opt.python)), "mailframe-source.txt")
    with contextlib.suppress(OSError), open(src) as f:
        env["mailframe_installed_from"] = f.read().strip()
    if installed_root:
        env["mailframe_matches_worktree"] = tree_digest(installed_root) == tree_digest(REPO)
    return env


# ---------------------------------------------------------------- main


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--only",
        help="comma list of servers (or the presets null, durable); default: every "
        "server marked default (see --list)",
    )
    ap.add_argument(
        "--server",
        action="append",
        default=[],
        metavar="NAME=CMD",
        help="add a server, or replace a built-in's command; may repeat",
    )
    ap.add_argument(
        "--workloads",
        default=",".join(WORKLOADS),
        help="comma list of workloads, or NAME='smtp-source flags' for a new one",
    )
    ap.add_argument(
        "--durable-workloads",
        default=",".join(DURABLE_WORKLOADS),
        help="the workloads durable servers run (default: %(default)s; 'all': every one)",
    )
    ap.add_argument("--reps", type=int, default=5, help="repetitions (default 5)")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every -m by this")
    ap.add_argument(
        "--sources", type=int, default=1, help="smtp-source processes per run (split -m, -s)"
    )
    ap.add_argument("--host", default="127.0.0.1", help="a loopback address")
    ap.add_argument(
        "--python",
        default=None,
        help="the bench venv's python (default: $BENCH_VENV or bench/.venv)",
    )
    ap.add_argument("--smtp-source", default="/usr/sbin/smtp-source")
    ap.add_argument("--timeout", type=float, default=180, help="smtp-source limit per run (s)")
    ap.add_argument("--start-timeout", type=float, default=30, help="server start limit (s)")
    ap.add_argument("--stop-grace", type=float, default=10, help="SIGTERM to SIGKILL (s)")
    ap.add_argument(
        "--budget", type=float, default=3600, help="start no new run after this many seconds"
    )
    ap.add_argument("--no-warmup", action="store_true", help="skip the unrecorded warm-up")
    ap.add_argument(
        "--wait-quiet",
        type=float,
        default=0,
        metavar="PCT",
        help="before each run, wait until other jobs use less than PCT %% of one core "
        "(on a shared machine; default: do not wait)",
    )
    ap.add_argument(
        "--wait-max", type=float, default=60, help="the longest --wait-quiet wait per run (s)"
    )
    ap.add_argument(
        "--pin", action="store_true", help="taskset: server on --server-cpus, load on the rest"
    )
    ap.add_argument("--server-cpus", default="0")
    ap.add_argument("--source-cpus", default="1")
    ap.add_argument("--no-plot", action="store_true", help="do not draw bench.png")
    ap.add_argument("--out", default=os.path.join(HERE, "results"), help="results directory")
    ap.add_argument("--list", action="store_true", help="list servers and workloads, then exit")
    ap.add_argument(
        "--report",
        metavar="DIR",
        help="rewrite results.md and bench.png of an earlier run from its results.json",
    )
    return ap.parse_args(argv)


def list_all() -> None:
    print("servers (* = run by default):")
    for s in SERVERS.values():
        mark = "*" if s.default else " "
        print(f" {mark} {s.name:24s} {s.kind:9s} {s.description}")
        if s.placeholder:
            print(f"   {'':24s} placeholder: {s.placeholder}")
    print("workloads (smtp-source flags; common: " + " ".join(SOURCE_COMMON) + "):")
    for n, a in WORKLOADS.items():
        print(f"   {n:10s} {a:32s} {WORKLOAD_NOTES[n]}")
    print(f"durable servers run: {', '.join(DURABLE_WORKLOADS)} (--durable-workloads)")


def mailframe_has_spool(opt) -> bool:
    return "--spool" in run_text([opt.twistd, "mailframe", "--help"], env=opt.server_env)


def choose_servers(opt) -> list[str]:
    opt.commands = {n: s.command for n, s in SERVERS.items()}
    for spec in opt.server:
        name, sep, cmd = spec.partition("=")
        if not sep:
            sys.exit(f"--server wants NAME=CMD, got {spec!r}")
        name = name.strip()
        opt.commands[name] = cmd.strip()
        if name not in SERVERS:
            SERVERS[name] = Server(name, cmd.strip(), "null", "none", "given with --server")
        elif SERVERS[name].placeholder:  # the user supplies the real command
            SERVERS[name] = dataclasses.replace(SERVERS[name], placeholder="")
    if opt.only:
        names: list[str] = []
        for n in opt.only.split(","):
            for x in PRESETS.get(n.strip(), [n.strip()]):
                if x not in names:
                    names.append(x)
    else:
        names = [n for n, s in SERVERS.items() if s.default]
        names += [spec.partition("=")[0].strip() for spec in opt.server]
        names = list(dict.fromkeys(names))
    for n in names:
        if n not in SERVERS:
            sys.exit(f"unknown server {n!r}; known: {', '.join(SERVERS)}")
        if SERVERS[n].placeholder and not (n == "mailframe-spool" and mailframe_has_spool(opt)):
            sys.exit(f"{n} cannot run yet: {SERVERS[n].placeholder}")
    return names


def choose_workloads(opt, names: list[str]) -> tuple[dict[str, str], dict[str, list[str]]]:
    wls: dict[str, str] = {}
    for w in opt.workloads.split(","):
        n, sep, a = w.partition("=")
        if sep:
            wls[n.strip()] = a
        elif w in WORKLOADS:
            wls[w] = WORKLOADS[w]
        else:
            sys.exit(f"unknown workload {w!r}; known: {', '.join(WORKLOADS)}")
    if opt.scale != 1.0:
        for n, a in wls.items():
            b = shlex.split(a)
            m = max(1, int(flag(b, "-m", 1) * opt.scale))
            wls[n] = " ".join([*without(b, "-m"), "-m", str(m)])
    durable = list(wls) if opt.durable_workloads == "all" else opt.durable_workloads.split(",")
    plan = {
        wl: [n for n in names if SERVERS[n].kind not in ("durable", "relay") or wl in durable]
        for wl in wls
    }
    return wls, {wl: ns for wl, ns in plan.items() if ns}


def plot(opt, res_dir: str) -> str | None:
    """Draw bench.png with plot.py in the bench venv (which has matplotlib)."""
    png = os.path.join(res_dir, "bench.png")
    r = subprocess.run(
        [opt.python, os.path.join(HERE, "plot.py"), os.path.join(res_dir, "results.json"), png],
        capture_output=True,
        text=True,
        env=opt.server_env,
    )
    if r.returncode != 0:
        print(f"no plot: {(r.stderr or r.stdout).strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    return png


def main(argv=None) -> int:
    opt = parse_args(argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # clean up as on ^C
    if opt.list:
        list_all()
        return 0
    if opt.report:
        return report_again(opt)
    check_loopback(opt.host)
    venv = default_venv()
    opt.python = opt.python or (
        os.path.join(venv, "bin", "python")
        if os.path.exists(os.path.join(venv, "bin", "python"))
        else sys.executable
    )
    opt.twistd = os.path.join(os.path.dirname(opt.python), "twistd")
    # the servers run as a user runs them: from the venv, no PYTHONPATH
    opt.server_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    if not os.access(opt.smtp_source, os.X_OK):
        sys.exit(f"{opt.smtp_source} is missing: run bench/setup.sh")
    names = choose_servers(opt)
    if any(n.startswith("mailframe") for n in names) and not os.access(opt.twistd, os.X_OK):
        sys.exit(f"{opt.twistd} is missing: run bench/setup.sh (or pass --python)")
    wls, plan = choose_workloads(opt, names)

    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    res_dir = os.path.join(opt.out, stamp)
    log_dir = os.path.join(res_dir, "logs")
    os.makedirs(log_dir, exist_ok=True)
    env = environment(opt)
    meta = {
        "started": stamp,
        "argv": sys.argv[1:] if argv is None else argv,
        "servers": {n: opt.commands[n] for n in names},
        "workloads": wls,
        "plan": plan,
        "source_common": SOURCE_COMMON,
        "reps": opt.reps,
        "sources": opt.sources,
        "pin": opt.pin,
        "environment": env,
    }
    print(json.dumps(env), flush=True)
    if env.get("mailframe_matches_worktree") is False:
        print(
            "note: the installed mailframe differs from this work tree "
            f"(installed from: {env.get('mailframe_installed_from', '?')}); "
            "re-run bench/setup.sh to measure the work tree",
            file=sys.stderr,
        )

    t_begin = time.monotonic()
    if not opt.no_warmup:  # one small unrecorded run each: caches, bytecode
        for n in names:
            r = run_one(SERVERS[n], "warmup", "-s 5 -m 100 -l 1024", opt, log_dir, "w")
            print(f"warm-up {n:22s} ok={r['ok']} {r.get('error') or ''}", flush=True)
            if not r["ok"]:
                print(f"  see {r['log']}", flush=True)

    runs: list[dict] = []
    try:
        measure_all(opt, names, wls, plan, runs, log_dir, t_begin)
    except KeyboardInterrupt:
        print("interrupted: reporting the runs made so far", file=sys.stderr)
    meta["elapsed_s"] = round(time.monotonic() - t_begin, 1)
    return write_report(res_dir, meta, runs, opt)


def measure_all(opt, names, wls, plan, runs, log_dir, t_begin) -> None:
    """Every repetition of every workload on every server of its plan; appends to runs."""
    for rep in range(opt.reps):
        for wl, args in wls.items():
            order = plan.get(wl, [])
            k = rep % len(order) if order else 0
            for n in order[k:] + order[:k]:  # rotated: no server always goes first
                if time.monotonic() - t_begin > opt.budget:
                    print("budget exhausted, stopping", file=sys.stderr)
                    break
                quiet = wait_quiet(opt.wait_quiet, opt.wait_max) if opt.wait_quiet else None
                r = run_one(SERVERS[n], wl, args, opt, log_dir, f"r{rep}")
                r["rep"] = rep
                if quiet:
                    r["waited_s"], r["busy_before_pct"] = quiet
                runs.append(r)
                g = r.get
                print(
                    f"rep{rep} {wl:8s} {n:22s} ok={r['ok']!s:5s}",
                    f"{fmt(g('msgs_per_s')):>7s} msgs/s",
                    f"srvCPU={g('server_cpu_pct', '-')}%",
                    f"srcCPU={g('source_cpu_pct', '-')}%",
                    f"rss={g('peak_rss_mib', '-')}MiB",
                    f"other={g('other_cpu_pct', '-')}%",
                    g("error") or "",
                    flush=True,
                )


def report_again(opt) -> int:
    """--report: rewrite the tables and the plot of an earlier run."""
    path = opt.report
    res_dir = path if os.path.isdir(path) else os.path.dirname(path)
    with open(os.path.join(res_dir, "results.json")) as f:
        data = json.load(f)
    venv = default_venv()
    opt.python = opt.python or os.path.join(venv, "bin", "python")
    opt.server_env = dict(os.environ)
    if "elapsed_s" not in data["meta"]:
        data["meta"]["elapsed_s"] = (data.get("noise") or {}).get("elapsed_s")
    return write_report(res_dir, data["meta"], data["runs"], opt)


if __name__ == "__main__":
    sys.exit(main())
