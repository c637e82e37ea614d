#!/usr/bin/env python3
"""The relay workload's far end: Postfix's smtp-sink, and a relaying server pointed at it.

    relay_sink.py --host 127.0.0.1 --dir SCRATCH -- SERVER COMMAND ... {sink} ...

Starts ``smtp-sink -c`` (C, Postfix's) on a free loopback port in a session
of its own (its CPU is the load's, as smtp-source's is, not the server's),
then the server command with ``{sink}`` replaced by that port, as a child in
this session (bench/run.py counts its CPU).  The server accepts the load of
smtp-source and relays each message to the sink.

A reader (this script with --read-counter, in a session of its own too:
its CPU is not the server's either) reads the sink's running counter
(``mesg=N``) and appends ``TIME N`` (time.time()) to SCRATCH/sink-times
whenever it grows: run.py
waits until it shows every message (end to end: the relay's queue empty at
the far end) and pairs the times with smtp-source's to estimate each
message's delivery latency.

SIGTERM/SIGINT: passed on to the server, which is waited for (its own
"stopping" or "bench-sink:" line goes to the log); then the sink is stopped
and ``relay-sink: messages=N`` printed.
"""

import argparse
import contextlib
import ipaddress
import os
import re
import signal
import socket
import subprocess
import sys
import time

SMTP_SINK = "/usr/sbin/smtp-sink"


def free_port(host):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def read_counter(path):
    """Append "TIME N" to C{path} each time smtp-sink's counter (on stdin) grows."""
    fd = sys.stdin.fileno()
    pattern = re.compile(rb"mesg=(\d+)")
    seen = 0
    with open(path, "w") as out:
        rest = b""
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                return seen
            now = time.time()
            parts = (rest + chunk).split(b"\r")
            rest = parts.pop()
            for part in reversed(parts):
                mo = pattern.search(part)
                if mo:
                    n = int(mo.group(1))
                    if n > seen:
                        seen = n
                        out.write(f"{now:.6f} {n}\n")
                        out.flush()
                    break


def main():
    if sys.argv[1:2] == ["--read-counter"]:
        read_counter(sys.argv[2])
        return 0
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--dir", required=True, help="scratch directory (sink-times goes there)")
    ap.add_argument("--backlog", type=int, default=1024)
    ap.add_argument("command", nargs=argparse.REMAINDER, help="-- the server command")
    a = ap.parse_args()
    if not ipaddress.ip_address(a.host).is_loopback:
        sys.exit(f"refusing non-loopback host {a.host!r}")
    command = a.command[1:] if a.command[:1] == ["--"] else a.command
    if not command:
        sys.exit("no server command")
    port = free_port(a.host)
    times_path = os.path.join(a.dir, "sink-times")
    sink = subprocess.Popen(
        [SMTP_SINK, "-c", "-u", "nobody", f"{a.host}:{port}", str(a.backlog)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # not the server's CPU
    )
    reader = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--read-counter", times_path],
        stdin=sink.stdout,
        stdout=subprocess.DEVNULL,
        start_new_session=True,  # not the server's CPU
    )
    sink.stdout.close()  # the reader holds it now
    server = None
    try:
        # the sink must answer before the server may relay to it
        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection((a.host, port), 1):
                break
            time.sleep(0.05)
        stop = {"sig": None}
        signal.signal(signal.SIGTERM, lambda n, f: stop.update(sig=n))
        signal.signal(signal.SIGINT, lambda n, f: stop.update(sig=n))
        server = subprocess.Popen([arg.replace("{sink}", str(port)) for arg in command])
        while stop["sig"] is None and server.poll() is None:
            time.sleep(0.1)
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(90)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(5)
    finally:
        if server is not None and server.poll() is None:
            server.kill()
        with contextlib.suppress(ProcessLookupError):
            sink.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            sink.wait(5)
        if sink.poll() is None:
            sink.kill()
        try:
            reader.wait(5)  # it ends at the sink's end of output
        except subprocess.TimeoutExpired:
            reader.kill()
            reader.wait(5)
    messages = 0
    with contextlib.suppress(OSError), open(times_path) as f:
        for line in f:
            with contextlib.suppress(ValueError):
                messages = max(messages, int(line.split()[1]))
    print(f"relay-sink: messages={messages}", file=sys.stderr, flush=True)
    return 0 if server is not None and server.returncode in (0, -signal.SIGTERM) else 1


if __name__ == "__main__":
    sys.exit(main())
