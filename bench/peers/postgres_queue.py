"""The mailframe-pg bench servers: a private PostgreSQL, and twistd mailframe
with its queue in it (--spool postgresql://...).

    postgres_queue.py --twistd TWISTD [--host H] -- MAILFRAME-ARGS...

Debian's PostgreSQL (the newest /usr/lib/postgresql/*/bin) gets a cluster
of its own in a temporary directory (initdb, trust on loopback, fsync and
synchronous_commit on, as shipped otherwise), run as the postgres user when
this runs as root, on a free loopback port: never the system's cluster.
Its processes stay in this process's session, so the bench counts their
CPU with mailframe's.  Then twistd mailframe starts with MAILFRAME-ARGS and
`--spool postgresql://mailframe@HOST:PORT/mail --node-name bench` (with
--workers N: N nodes, bench-w0 ..., sharing the database), so every 250
waits for PostgreSQL's commit; mailframe's "stopping: N messages" line
counts what got through.  On SIGTERM mailframe is stopped, the messages
left in the queue are counted ("bench-pg: queued=N"), and PostgreSQL is
stopped (fast shutdown) and its directory removed.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def binaries() -> str:
    def version(path: str) -> int:
        part = path.split("/")[4]
        return int(part) if part.isdigit() else 0

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=version)
    if not found:
        sys.exit("bench-pg: PostgreSQL is not installed (apt-get install postgresql)")
    return os.path.dirname(found[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--twistd", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("mailframe", nargs=argparse.REMAINDER)
    opt = ap.parse_args()
    import psycopg

    bindir = binaries()
    home = tempfile.mkdtemp(prefix="bench-pg-")
    prefix: list[str] = []
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(home, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    data = os.path.join(home, "data")
    port = free_port(opt.host)
    subprocess.run([*prefix, f"{bindir}/initdb", "-D", data, "-U", "mailframe", "--auth=trust",
                    "-E", "UTF8", "--no-sync", "--no-instructions"], check=True, cwd=home,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    log = open(os.path.join(home, "postgres.log"), "wb")  # noqa: SIM115
    # the same session as this process (the bench counts PostgreSQL's CPU too)
    postgres = subprocess.Popen(
        [*prefix, f"{bindir}/postgres", "-D", data, "-p", str(port), "-h", opt.host, "-k", home],
        cwd=home, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    admin = f"postgresql://mailframe@{opt.host}:{port}/postgres"
    deadline = time.monotonic() + 60
    while True:
        if postgres.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"bench-pg: postgres did not start (see {home}/postgres.log)")
        try:
            with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
                conn.execute("CREATE DATABASE mail")
            break
        except psycopg.OperationalError:
            time.sleep(0.2)
    url = f"postgresql://mailframe@{opt.host}:{port}/mail"
    args = [a for a in opt.mailframe if a != "--"]
    child = subprocess.Popen([opt.twistd, *args, "--spool", url, "--node-name", "bench"])

    def postmaster() -> int | None:
        with (
            contextlib.suppress(OSError, ValueError),
            open(os.path.join(data, "postmaster.pid")) as f,
        ):
            return int(f.readline())
        return None

    def finish(signum: int, frame: object) -> None:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
        try:
            child.wait(60)
        except subprocess.TimeoutExpired:
            child.kill()
        queued = -1
        with contextlib.suppress(Exception), psycopg.connect(url, connect_timeout=5) as conn:
            row = conn.execute("SELECT count(*) FROM mailframe_message").fetchone()
            queued = int(row[0]) if row else -1
        print(f"bench-pg: queued={queued}", flush=True)
        pid = postmaster()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGINT)  # fast shutdown
        try:
            postgres.wait(30)
        except subprocess.TimeoutExpired:
            postgres.kill()
        shutil.rmtree(home, ignore_errors=True)
        sys.exit(child.returncode or 0)

    signal.signal(signal.SIGTERM, finish)
    while child.poll() is None:
        time.sleep(0.5)
    finish(signal.SIGTERM, None)


if __name__ == "__main__":
    main()
