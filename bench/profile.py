#!/usr/bin/env python3
"""Instructions and CPU per message of one server under one smtp-source load.

Wall time on a shared machine is noise; instruction counts are not.  This
starts a server (a run.py server name, or any command) under valgrind's
callgrind with instrumentation off (start-up is not counted), turns it on
once the 220 banner answers, runs smtp-source, dumps the counters and
prints the user-space instructions per message; with --cpu it runs the
server natively instead and prints its CPU seconds per 1,000 messages;
with --py-spy it records a py-spy profile (speedscope or flame graph).

    bench/profile.py mailframe persist                 # callgrind, 400 messages
    bench/profile.py twisted-constant persist -m 1000
    bench/profile.py mailframe small --cpu -m 4000     # CPU s / 1k messages, native
    bench/profile.py mailframe persist --py-spy out.svg -m 20000
    bench/profile.py mailframe persist --keep DIR      # keep callgrind.out.* for
                                                       # callgrind_annotate

The server runs as run.py runs it (the bench venv's twistd, no PYTHONPATH
unless --pythonpath), in a scratch directory removed afterwards.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import run


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("server", help="a run.py server name (run.py --list) or a command")
    ap.add_argument("workload", help="a run.py workload name, or smtp-source flags")
    ap.add_argument("-m", type=int, default=400, help="messages (default 400)")
    ap.add_argument("-s", type=int, default=None, help="sessions (default: the workload's)")
    ap.add_argument("--cpu", action="store_true", help="native run: CPU s per 1k messages")
    ap.add_argument("--py-spy", metavar="OUT", help="record with py-spy into OUT (.svg/.json)")
    ap.add_argument("--keep", metavar="DIR", help="copy callgrind's output files here")
    ap.add_argument("--python", default=None, help="the venv's python (default: run.py's)")
    ap.add_argument("--pythonpath", default=None, help="PYTHONPATH for the server")
    ap.add_argument("--host", default="127.0.0.1")
    opt = ap.parse_args(argv)

    venv = run.default_venv()
    python = opt.python or (
        os.path.join(venv, "bin", "python")
        if os.path.exists(os.path.join(venv, "bin", "python"))
        else sys.executable
    )
    twistd = os.path.join(os.path.dirname(python), "twistd")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    if opt.pythonpath:
        env["PYTHONPATH"] = opt.pythonpath
    wl = run.WORKLOADS.get(opt.workload, opt.workload)
    args = [*run.without(shlex.split(wl), "-m"), "-m", str(opt.m)]
    if opt.s:
        args = [*run.without(args, "-s"), "-s", str(opt.s)]
    rcpts = run.flag(args, "-r", 1)

    scratch = tempfile.mkdtemp(prefix="mailframe-profile-")
    try:
        template = run.SERVERS[opt.server].command if opt.server in run.SERVERS else opt.server
        port = run.free_port(opt.host)
        cmd = template.format(
            port=port, host=opt.host, python=python, twistd=twistd, here=run.HERE, scratch=scratch
        )
        argv_ = shlex.split(cmd)
        mode = "cpu" if opt.cpu else "py-spy" if opt.py_spy else "callgrind"
        if mode == "callgrind":
            argv_ = [
                "valgrind",
                "--tool=callgrind",
                "--instr-atstart=no",
                f"--callgrind-out-file={scratch}/callgrind.out.%p",
                *argv_,
            ]
        log = open(os.path.join(scratch, "server.log"), "wb")  # noqa: SIM115 (closed below)
        srv = subprocess.Popen(
            argv_, cwd=scratch, env=env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        spy = None
        try:
            run.wait_banner(opt.host, port, srv, 300 if mode == "callgrind" else 30)
            time.sleep(0.3)
            if mode == "callgrind":
                subprocess.run(["callgrind_control", "-i", "on", str(srv.pid)], check=True,
                               capture_output=True)  # fmt: skip
                subprocess.run(["callgrind_control", "-z", str(srv.pid)], check=True,
                               capture_output=True)  # fmt: skip
            elif mode == "py-spy":
                fmt = {".json": "speedscope", ".txt": "raw"}.get(
                    os.path.splitext(opt.py_spy)[1], "flamegraph"
                )
                spy = subprocess.Popen(
                    ["py-spy", "record", "-p", str(srv.pid), "-o", opt.py_spy, "-r", "500",
                     "--nonblocking", "-f", fmt],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
                time.sleep(1.0)
            cpu0, _, _ = run.session_usage(srv.pid, "VmRSS:")
            t0 = time.perf_counter()
            src = subprocess.run(
                ["/usr/sbin/smtp-source", *run.SOURCE_COMMON, *args, f"inet:{opt.host}:{port}"],
                capture_output=True,
                timeout=3600,
            )
            wall = time.perf_counter() - t0
            cpu1, _, _ = run.session_usage(srv.pid, "VmRSS:")
            if src.returncode:
                print(f"smtp-source failed: {src.stdout[-500:]!r}", file=sys.stderr)
                return 1
            result = {
                "server": opt.server,
                "workload": opt.workload,
                "messages": opt.m,
                "recipients": rcpts,
                "wall_s": round(wall, 2),
                "cpu_s_per_1k": round(1000 * (cpu1 - cpu0) / opt.m, 3),
            }
            if mode == "callgrind":
                subprocess.run(["callgrind_control", "-d", str(srv.pid)], check=True,
                               capture_output=True)  # fmt: skip
                total = 0
                files = sorted(glob.glob(f"{scratch}/callgrind.out.*"))
                for path in files:
                    with open(path, "rb") as f:
                        for line in f:
                            mo = re.match(rb"(?:summary|totals): (\d+)", line)
                            if mo:
                                total += int(mo.group(1))
                                break
                result["instructions_per_msg"] = round(total / opt.m)
                if opt.keep:
                    os.makedirs(opt.keep, exist_ok=True)
                    for path in files:
                        shutil.copy(path, opt.keep)
        except Exception:
            log.flush()
            with open(os.path.join(scratch, "server.log"), "rb") as f:
                sys.stderr.write(f.read()[-3000:].decode(errors="replace"))
            raise
        finally:
            if spy is not None:
                spy.send_signal(2)
                spy.wait(60)
            run.stop_group(srv, 30)
            run.reap_session(srv.pid)
            log.close()
        print(" ".join(f"{k}={v}" for k, v in result.items()), flush=True)
        return 0
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
