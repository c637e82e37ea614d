"""The mailframe-amqp bench server: a private RabbitMQ, and twistd mailframe
publishing every message to it (persistent, a durable queue, publisher
confirms).

    amqp_broker.py --twistd TWISTD --dir SCRATCH -- MAILFRAME-ARGS...

RabbitMQ (Debian's rabbitmq-server, the script under /usr/lib/rabbitmq/bin)
starts first in SCRATCH/rabbitmq with its own node name, epmd, ports on
loopback, Mnesia directory and configuration: never the system's.  Then
twistd mailframe starts with MAILFRAME-ARGS and
`--deliver amqp:URL:queue=bench`, so every 250 waits for the broker's
confirmation: mailframe's own "stopping: N messages" line counts what got
through.  On SIGTERM mailframe is stopped, the messages in the queue are
counted ("bench-amqp: queued=N"), and RabbitMQ and epmd are stopped.
Uses pika (a dependency of mailframe's amqp backend) to wait and count.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time

RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
EPMD = "/usr/bin/epmd"


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def listening(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
    except OSError:
        return False
    return True


def stop(process: subprocess.Popen, grace: float = 30.0) -> None:
    """SIGTERM the process group we made, then SIGKILL what is left."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(grace)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(5)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--twistd", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--dir", required=True)
    ap.add_argument("--amqp", default="queue=bench", help="options of the amqp description")
    ap.add_argument("mailframe", nargs=argparse.REMAINDER)
    opt = ap.parse_args()
    import pika

    home = os.path.join(opt.dir, "rabbitmq")
    os.makedirs(os.path.join(home, "mnesia"))
    os.makedirs(os.path.join(home, "log"))
    port, epmd_port, dist_port = (free_port(opt.host) for _ in range(3))
    with open(os.path.join(home, "rabbitmq.conf"), "w") as f:
        f.write(f"listeners.tcp.default = {opt.host}:{port}\nloopback_users.guest = true\n"
                "disk_free_limit.absolute = 20MB\nlog.console = true\n"
                "log.console.level = warning\nlog.file = false\n")  # fmt: skip
    with open(os.path.join(home, "enabled_plugins"), "w") as f:
        f.write("[].\n")
    env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "HOME": home,
        "LANG": "C.UTF-8",
        "RABBITMQ_NODENAME": f"bench{port}@localhost",
        "RABBITMQ_NODE_IP_ADDRESS": opt.host,
        "RABBITMQ_NODE_PORT": str(port),
        "RABBITMQ_DIST_PORT": str(dist_port),
        "ERL_EPMD_PORT": str(epmd_port),
        "ERL_EPMD_ADDRESS": opt.host,
        "RABBITMQ_MNESIA_BASE": os.path.join(home, "mnesia"),
        "RABBITMQ_LOG_BASE": os.path.join(home, "log"),
        "RABBITMQ_CONFIG_FILE": os.path.join(home, "rabbitmq.conf"),
        "RABBITMQ_ADVANCED_CONFIG_FILE": os.path.join(home, "advanced.config"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": os.path.join(home, "enabled_plugins"),
        "RABBITMQ_PID_FILE": os.path.join(home, "rabbitmq.pid"),
        "RABBITMQ_CONF_ENV_FILE": os.path.join(home, "rabbitmq-env.conf"),
    }
    log = open(os.path.join(home, "rabbitmq.log"), "wb")  # noqa: SIM115
    # Same session as this process (the bench counts the broker's CPU with
    # mailframe's), a process group of its own (to stop it alone).
    epmd = subprocess.Popen([EPMD, "-port", str(epmd_port), "-address", opt.host], env=env,
                            stdout=log, stderr=subprocess.STDOUT, process_group=0)  # fmt: skip
    broker = subprocess.Popen([RABBITMQ_SERVER], env=env, cwd=home, stdout=log,
                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                              process_group=0)  # fmt: skip
    url = f"amqp://guest:guest@{opt.host}:{port}/%2F"
    parameters = pika.URLParameters(url)
    parameters.socket_timeout = 10
    deadline = time.monotonic() + 120
    while True:
        if broker.poll() is not None or time.monotonic() > deadline:
            stop(epmd)
            sys.exit(f"bench-amqp: rabbitmq-server did not start (see {home}/rabbitmq.log)")
        if listening(opt.host, port):
            try:
                pika.BlockingConnection(parameters).close()
                break
            except Exception:
                pass
        time.sleep(0.2)
    args = [a for a in opt.mailframe if a != "--"]
    child = subprocess.Popen([opt.twistd, *args, "--deliver", f"amqp:{url}:{opt.amqp}"])

    def finish(signum: int, frame: object) -> None:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
        try:
            child.wait(60)
        except subprocess.TimeoutExpired:
            child.kill()
        queued = -1
        with contextlib.suppress(Exception):
            connection = pika.BlockingConnection(parameters)
            declared = connection.channel().queue_declare("bench", durable=True, passive=True)
            queued = declared.method.message_count
            connection.close()
        print(f"bench-amqp: queued={queued}", flush=True)
        stop(broker)
        stop(epmd)
        sys.exit(child.returncode or 0)

    signal.signal(signal.SIGTERM, finish)
    while child.poll() is None:
        time.sleep(0.5)
    finish(signal.SIGTERM, None)


if __name__ == "__main__":
    main()
