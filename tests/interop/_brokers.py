"""
Private brokers for the tests of the C{amqp} and C{redis-stream} backends,
each from Debian's package, in a temporary directory of its own, on
127.0.0.1 and free ports only, never the system's instance:

  - L{PrivateRabbitMQ}: C{rabbitmq-server} (the script under
    /usr/lib/rabbitmq/bin, not the wrapper that switches users) with its
    own node name, Erlang distribution port, epmd (started by us, on a
    port of its own), Mnesia and log directories and configuration file;
    a start takes seconds, so a test module shares one (L{shared});
  - L{PrivateRedis}: C{redis-server} with a generated configuration:
    C{appendonly yes}, C{appendfsync always}, its directory in the
    temporary one.

Each can be stopped (SIGTERM, or SIGKILL: C{kill}) and started again on
the same data, to show that what it acknowledged survives.  Each start
waits until the server on the port is this one (a token of its own in its
configuration: RabbitMQ's cluster name, Redis's configuration file path),
not merely a server: under C{trial --jobs} another test's broker may have
taken a port L{freePort} gave.  Blocking
helpers, for a test's own thread; every wait has a deadline.  A missing
program is L{SkipTest}, or a failure with MAILFRAME_REQUIRE_INTEROP=1.
Processes are stopped by the ids of those the helper started, nothing else.

Owns: nothing of mailframe.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import smtplib
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from tests.interop._mailpeers import (
    HOST,
    freePort,
    listening,
    scratch,
    stopProcess,
    unavailable,
    waitFor,
)

RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
EPMD = shutil.which("epmd") or "/usr/bin/epmd"
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
RABBITMQ_START = 90.0
"""Seconds RabbitMQ may take to listen (it takes several on a busy machine)."""
REDIS_START = 20.0

__all__ = ["Load", "PrivateRabbitMQ", "PrivateRedis", "shared", "tokenOf"]


class _Server:
    directory: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    def _spawn(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        log = open(self.directory / "server.log", "ab")  # noqa: SIM115
        try:
            self.process = subprocess.Popen(
                argv, cwd=self.directory, env=env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        finally:
            log.close()

    def _waitUp(self, timeout: float, what: str) -> None:
        """Until the port answers and the server there is this one (L{_ours})."""
        process = self.process
        assert process is not None

        def up() -> bool:
            if process.poll() is not None:
                raise AssertionError(
                    f"{what} exited ({process.returncode}):\n{self.log()[-3000:]}"
                )
            return listening(self.port) and self._ours()

        waitFor(up, timeout, f"{what} (this one) to answer on {self.port}", 0.1)

    def _ours(self) -> bool:
        """Whether the server answering on the port is this one."""
        raise NotImplementedError

    def log(self) -> str:
        path = self.directory / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """SIGTERM (its process group), then SIGKILL what is left."""
        if self.process is not None:
            stopProcess(self.process)
            self.process = None
            self.waitDown()

    def kill(self) -> None:
        """SIGKILL its process group at once: no chance to write anything more."""
        process = self.process
        if process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(30)
            self.process = None
            self.waitDown()

    def waitDown(self) -> None:
        waitFor(lambda: not listening(self.port), 30, f"port {self.port} to close", 0.1)


class PrivateRabbitMQ(_Server):
    """RabbitMQ on 127.0.0.1:C{port}, user guest/guest, its data in C{directory}."""

    def __init__(self, directory: Path) -> None:
        for program in (RABBITMQ_SERVER, EPMD):
            if not os.path.exists(program):
                raise unavailable(f"{program} is missing (Debian package rabbitmq-server)")
        self.directory = directory
        self.port = freePort()
        self.epmdPort = freePort()
        self.distPort = freePort()
        self.token = uuid.uuid4().hex
        self.node = f"mailframe{self.token[:12]}@localhost"
        self.epmd: subprocess.Popen[bytes] | None = None
        (directory / "mnesia").mkdir()
        (directory / "log").mkdir()
        (directory / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = {HOST}:{self.port}\n"
            "loopback_users.guest = true\n"
            "disk_free_limit.absolute = 20MB\n"
            f"cluster_name = {self.token}\n"
            "log.console = true\nlog.console.level = warning\nlog.file = false\n"
        )
        (directory / "enabled_plugins").write_text("[].\n")

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@{HOST}:{self.port}/%2F"

    def environment(self) -> dict[str, str]:
        d = self.directory
        return {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "HOME": str(d),
            "LANG": "C.UTF-8",
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": HOST,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.distPort),
            "ERL_EPMD_PORT": str(self.epmdPort),
            "ERL_EPMD_ADDRESS": HOST,
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
            "RABBITMQ_LOG_BASE": str(d / "log"),
            "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(d / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(d / "rabbitmq.pid"),
            "RABBITMQ_CONF_ENV_FILE": str(d / "rabbitmq-env.conf"),
        }

    def start(self) -> None:
        if self.epmd is None or self.epmd.poll() is not None:
            # Our own epmd, so that nothing of this run outlives it (rabbitmq
            # would start a daemon epmd of its own otherwise).
            self.epmd = subprocess.Popen(
                [EPMD, "-port", str(self.epmdPort), "-address", HOST],
                cwd=self.directory, env={"PATH": "/usr/bin:/bin", "HOME": str(self.directory)},
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
            waitFor(lambda: listening(self.epmdPort), 10, "epmd to listen", 0.05)
        self._spawn([RABBITMQ_SERVER], self.environment())
        self._waitUp(RABBITMQ_START, "rabbitmq-server")

    def _ours(self) -> bool:
        """A connection is taken, by the broker with this one's cluster name."""
        try:
            connection = self.blocking()
        except Exception:
            return False
        try:
            properties = connection._impl.server_properties or {}
            name = properties.get("cluster_name", b"")
            return (name.decode() if isinstance(name, bytes) else name) == self.token
        finally:
            connection.close()

    def stopAll(self) -> None:
        self.stop()
        if self.epmd is not None:
            stopProcess(self.epmd)
            self.epmd = None

    def blocking(self) -> Any:
        """A pika BlockingConnection to the broker (the caller closes it)."""
        import pika

        parameters = pika.URLParameters(self.url)
        parameters.socket_timeout = 10
        parameters.blocked_connection_timeout = 30
        return pika.BlockingConnection(parameters)

    def drain(self, queue: str, limit: int = 1_000_000) -> list[tuple[Any, bytes]]:
        """Every message in C{queue}, taken and acknowledged: (properties, body)."""
        connection = self.blocking()
        try:
            channel = connection.channel()
            out = []
            while len(out) < limit:
                method, properties, body = channel.basic_get(queue, auto_ack=True)
                if method is None:
                    break
                out.append((properties, body))
            return out
        finally:
            connection.close()


class PrivateRedis(_Server):
    """
    redis-server on 127.0.0.1:C{port}, AOF with fsync at every write, its
    data in C{directory}; C{extra}: more configuration lines (C{replicaof ...}).
    """

    def __init__(
        self, directory: Path, password: str | None = None, extra: tuple[str, ...] = ()
    ) -> None:
        if not os.path.exists(REDIS_SERVER):
            raise unavailable(f"{REDIS_SERVER} is missing (Debian package redis-server)")
        self.directory = directory
        self.port = freePort()
        self.password = password
        lines = [
            f"port {self.port}",
            f"bind {HOST}",
            f"dir {directory}",
            "daemonize no",
            'logfile ""',
            "appendonly yes",
            "appendfsync always",
            'save ""',
            "protected-mode yes",
        ]
        if password:
            lines.append(f"requirepass {password}")
        lines += extra
        (directory / "redis.conf").write_text("\n".join(lines) + "\n")

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{HOST}:{self.port}/0"

    def start(self) -> None:
        self._spawn([REDIS_SERVER, str(self.directory / "redis.conf")])
        self._waitUp(REDIS_START, "redis-server")

    def _ours(self) -> bool:
        """The server answering is the one reading this one's configuration file."""
        try:
            info = self.client().info("server")
        except Exception:
            return False
        return bool(info.get("config_file") == str(self.directory / "redis.conf"))

    def stopAll(self) -> None:
        self.stop()

    def client(self) -> Any:
        """A redis-py client (sync) with bounded socket timeouts."""
        import redis

        return redis.Redis.from_url(self.url, socket_timeout=15, socket_connect_timeout=5)


_shared: dict[str, Any] = {}


def shared(kind: str) -> Any:
    """
    The one running broker of this kind (C{"rabbitmq"} or C{"redis"}) of the
    test process, started on first use and stopped at exit; started again
    if a test left it stopped.
    """
    server = _shared.get(kind)
    if server is None:
        directory = scratch(f"mailframe-{kind}-")
        server = PrivateRabbitMQ(directory) if kind == "rabbitmq" else PrivateRedis(directory)

        def cleanup() -> None:
            server.stopAll()
            shutil.rmtree(directory, True)

        atexit.register(cleanup)
        _shared[kind] = server
    if not server.running:
        server.start()
    return server


# -- load: many messages through twistd mailframe ----------------------------------------


class Load:
    """
    Sends C{count} numbered messages to 127.0.0.1:C{port} over C{threads}
    smtplib sessions at once (each message's Subject is its token, also in
    its Message-ID), and records each one's final reply code: 250, a 4xx
    or 5xx, or 0 for no reply (the connection failed: then the session is
    made again).  Never resends: the caller may L{resend} the others.
    """

    def __init__(self, port: int, count: int, threads: int = 4, size: int = 600) -> None:
        self.port = port
        self.tokens = [f"L{i:05d}" for i in range(count)]
        self.threads = threads
        self.size = size
        self.codes: dict[str, int] = {}
        self._lock = threading.Lock()
        self._next = 0
        self._workers: list[threading.Thread] = []
        self.deadline = 0.0

    @staticmethod
    def body(token: str, size: int = 600) -> bytes:
        lines = [f"line {i} of {token}\r\n".encode() for i in range(max(1, size // 20))]
        return (
            f"From: load@example.org\r\nTo: user@example.com\r\nSubject: {token}\r\n"
            f"Message-ID: <{token}@load.example>\r\n\r\n"
        ).encode() + b"".join(lines)

    @property
    def done(self) -> int:
        return len(self.codes)

    def accepted(self) -> set[str]:
        with self._lock:
            return {t for t, code in self.codes.items() if code == 250}

    def start(self, tokens: list[str] | None = None, timeout: float = 150.0) -> None:
        self._queue = list(tokens if tokens is not None else self.tokens)
        self._next = 0
        self.deadline = time.monotonic() + timeout
        self._workers = [
            threading.Thread(target=self._run, name=f"load-{i}", daemon=True)
            for i in range(self.threads)
        ]
        for worker in self._workers:
            worker.start()

    def join(self) -> None:
        for worker in self._workers:
            worker.join(max(1.0, self.deadline - time.monotonic() + 30))
            if worker.is_alive():
                raise AssertionError("a load thread did not end in time")

    def resend(self, timeout: float = 120.0) -> None:
        """Send again, until each has its 250, those that got none (a client retrying)."""
        deadline = time.monotonic() + timeout
        while True:
            others = [t for t in self.tokens if self.codes.get(t) != 250]
            if not others:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(others)} messages still refused: {others[:5]}")
            self.start(others, timeout=deadline - time.monotonic())
            self.join()

    def _take(self) -> str | None:
        with self._lock:
            if self._next >= len(self._queue) or time.monotonic() > self.deadline:
                return None
            token = self._queue[self._next]
            self._next += 1
            return token

    def _run(self) -> None:
        client: smtplib.SMTP | None = None
        token = self._take()
        while token is not None:
            code = 0
            try:
                if client is None:
                    client = smtplib.SMTP(HOST, self.port, timeout=30)
                    client.ehlo("load.example")
                client.sendmail(
                    "load@example.org", ["user@example.com"], self.body(token, self.size)
                )
                code = 250
            except smtplib.SMTPResponseException as e:
                code = e.smtp_code
            except smtplib.SMTPRecipientsRefused as e:
                code = next(iter(e.recipients.values()))[0]
            except (OSError, smtplib.SMTPException):
                code = 0
            if code == 0 or code >= 500 or code == 421:
                if client is not None:
                    with contextlib.suppress(Exception):
                        client.close()
                client = None
                if code == 0:
                    threading.Event().wait(0.2)  # twistd is being restarted
            else:
                with contextlib.suppress(Exception):
                    if code != 250:
                        client.rset()  # type: ignore[union-attr]
            with self._lock:
                self.codes[token] = code
            token = self._take()
        if client is not None:
            with contextlib.suppress(Exception):
                client.quit()


def tokenOf(data: bytes) -> str:
    """The Subject token of a message the load sent (or "" if none)."""
    at = data.find(b"\r\nSubject: ")
    if at < 0:
        return ""
    end = data.index(b"\r\n", at + 2)
    return data[at + 11 : end].decode()
