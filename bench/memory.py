#!/usr/bin/env python3
"""Memory of a running mailframe server: per idle connection, and while it
receives one large message (issue 6: under 10 KiB per idle connection; a
50 MiB message adds under 20 MiB).

The server runs exactly as a user starts it, in its own process:
``twistd -n --pidfile= mailframe --quiet --listen tcp:PORT --deliver maildir:DIR``.
This driver is the client; all figures are the server's own, read from
/proc/PID/status (VmRSS, and VmHWM after resetting it through
/proc/PID/clear_refs, which needs the same user or root).

    bench/.venv/bin/python bench/memory.py                 # 5000 idle, 50 MiB
    bench/.venv/bin/python bench/memory.py --idle 2000 --size 20

Loopback only; every wait is bounded.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time


def status(pid: int, key: str) -> int:
    """A /proc/PID/status field in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def wait_port(host: str, port: int, limit: float = 30) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=5) as s:
                s.recv(100)
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"the server did not listen on {host}:{port} within {limit} s")


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def reply(f) -> bytes:
    """One SMTP reply (multi-line aware) from a socket file."""
    while True:
        line = f.readline()
        if not line:
            raise SystemExit("the server closed the connection")
        if line[3:4] != b"-":
            return line


def idle(pid: int, host: str, port: int, count: int) -> dict[str, float]:
    """Open COUNT connections, let each get its greeting, measure the server."""
    base_fds = fds(pid)
    base = status(pid, "VmRSS")
    socks = []
    for i in range(count):
        s = socket.socket()
        s.settimeout(10)
        s.connect((host, port))
        socks.append(s)
        if i % 500 == 499:
            time.sleep(0.05)  # let the server accept
    for s in socks:
        s.recv(100)  # the greeting: the session exists and has spoken
    deadline = time.monotonic() + 20
    # every greeting arrived, so every session exists; wait for stragglers
    # (the base count may hold a connection that was closing)
    while fds(pid) < base_fds + count - 5 and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    after = status(pid, "VmRSS")
    for s in socks:
        s.close()
    return {
        "connections": count,
        "rss_before_kib": base,
        "rss_after_kib": after,
        "kib_per_connection": (after - base) / count,
    }


def large(pid: int, host: str, port: int, mib: int, bdat: bool) -> dict[str, float]:
    """Send one message of MIB MiB (DATA, or BDAT in 1 MiB chunks); the server's peak."""
    line = b"x" * 76 + b"\r\n"
    body = b"Subject: large\r\n\r\n" + line * ((mib << 20) // len(line))
    base = status(pid, "VmRSS")
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    with socket.create_connection((host, port), timeout=120) as s:
        f = s.makefile("rb")
        reply(f)
        s.sendall(b"EHLO bench.example\r\n")
        reply(f)
        s.sendall(b"MAIL FROM:<bench@example.com>\r\nRCPT TO:<big@localhost>\r\n")
        reply(f), reply(f)
        if bdat:
            step = 1 << 20
            for i in range(0, len(body), step):
                chunk = body[i : i + step]
                last = " LAST" if i + step >= len(body) else ""
                s.sendall(b"BDAT %d%s\r\n" % (len(chunk), last.encode()) + chunk)
                final = reply(f)
        else:
            s.sendall(b"DATA\r\n")
            reply(f)
            s.sendall(body + b".\r\n")  # no line starts with a dot: no stuffing needed
            final = reply(f)
        s.sendall(b"QUIT\r\n")
    if not final.startswith(b"250"):
        raise SystemExit(f"the large message was refused: {final!r}")
    peak = status(pid, "VmHWM")
    return {
        "mib": mib,
        "command": "BDAT" if bdat else "DATA",
        "rss_before_kib": base,
        "peak_kib": peak,
        "added_mib": (peak - base) / 1024,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--idle", type=int, default=5000, help="idle connections (default 5000)")
    ap.add_argument("--size", type=int, default=50, help="message size in MiB (default 50)")
    ap.add_argument("--host", default="127.0.0.1")
    default_twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    ap.add_argument("--twistd", default=default_twistd)
    opt = ap.parse_args()
    if not opt.host.startswith("127.") and opt.host != "::1":
        raise SystemExit("loopback addresses only")
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 2 * opt.idle + 200)
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))  # inherited by the server
    scratch = tempfile.mkdtemp(prefix="mailframe-memory-")
    port = free_port(opt.host)
    cmd = [
        opt.twistd, "-n", "--pidfile=", "mailframe", "--quiet",
        "--listen", f"tcp:{port}:interface={opt.host}:backlog=1024",
        "--hostname", "localhost", "--max-size", f"{opt.size + 10}M", "--greet-delay", "0",
        "--deliver", f"maildir:{scratch}/Maildir",
    ]  # fmt: skip
    server = subprocess.Popen(
        cmd, cwd=scratch, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    try:
        wait_port(opt.host, port)
        print(f"server pid {server.pid}, idle RSS {status(server.pid, 'VmRSS')} KiB")
        r = idle(server.pid, opt.host, port, opt.idle)
        print(
            f"{r['connections']} idle connections: RSS {r['rss_before_kib']} -> "
            f"{r['rss_after_kib']} KiB, {r['kib_per_connection']:.2f} KiB per connection "
            "(target: under 10)"
        )
        time.sleep(1)
        for bdat in (False, True):
            r2 = large(server.pid, opt.host, port, opt.size, bdat)
            print(
                f"one {r2['mib']} MiB message by {r2['command']}: RSS {r2['rss_before_kib']} "
                f"KiB, peak {r2['peak_kib']} KiB, +{r2['added_mib']:.1f} MiB (target: under 20)"
            )
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
