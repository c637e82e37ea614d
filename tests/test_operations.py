"""
Running mailframe in production, end to end with C{twistd} in a child
process: errors of the command line and of listening are one line (and a
server that cannot listen leaves no ./Maildir); C{--version}; privileges
dropped after binding a privileged port as root (the Maildir and spool its
user's); systemd's readiness protocol and a reload on SIGHUP that keeps an
open session going; socket activation through C{systemd-socket-activate};
and the code of docs/embedding.rst.

Every wait is bounded (sockets have timeouts, polls a deadline, children a
timeout and a kill at cleanup).  Tests that need root, or systemd's tools,
skip without them (and fail with C{MAILFRAME_REQUIRE_INTEROP=1} when a tool
is missing).
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from twisted.trial.unittest import SynchronousTestCase

from mailframe import __version__

REPO = Path(__file__).resolve().parents[1]
TWISTD = Path(sys.executable).with_name("twistd")
HOST = "127.0.0.1"
TIMEOUT = 30.0
REQUIRED = bool(os.environ.get("MAILFRAME_REQUIRE_INTEROP"))
T = TypeVar("T")


def freePort() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def waitFor(what: str, check: Callable[[], T | None], timeout: float = TIMEOUT) -> T:
    """Poll C{check} every 50 ms until it returns something true; fail after C{timeout}."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out waiting for {what}")
        threading.Event().wait(0.05)


class Twistd:
    """C{twistd -n mailframe ARGS} in a child process, its output in a file; stopped at cleanup."""

    def __init__(self, case: SynchronousTestCase, directory: Path, *args: str,
                 twistdArgs: tuple[str, ...] = (), env: dict[str, str] | None = None,
                 prefix: tuple[str, ...] = ()) -> None:  # fmt: skip
        self.directory = directory
        self.logPath = directory / "twistd.log"
        environ = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *sys.path])}
        environ.pop("NOTIFY_SOCKET", None)
        with open(self.logPath, "wb") as log:
            self.process = subprocess.Popen(
                [*prefix, str(TWISTD), "-n", "--pidfile=", "--logfile=-", *twistdArgs,
                 "mailframe", *args],
                cwd=directory, env={**environ, **(env or {})}, stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        case.addCleanup(self.stop)

    def log(self) -> str:
        return self.logPath.read_text(errors="replace")

    def waitForLog(self, text: str) -> str:
        def found() -> str | None:
            if self.process.poll() is not None:
                raise AssertionError(f"twistd exited with {self.process.returncode}: {self.log()}")
            log = self.log()
            return log if text in log else None

        return waitFor(f"{text!r} in the log", found)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(TIMEOUT)


def twistd(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """C{twistd -n mailframe ARGS}, to its end (it should fail at once)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *sys.path])}
    return subprocess.run(
        [str(TWISTD), "-n", "--pidfile=", "mailframe", *args], cwd=cwd, env=env,
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


class RoughEdgeTests(SynchronousTestCase):
    """What a new user hits first: errors are one line, --version is mailframe's."""

    def setUp(self) -> None:
        if not TWISTD.exists():
            raise self.skipTest(f"no twistd next to {sys.executable}")
        self.cwd = Path(self.mktemp()).absolute()
        self.cwd.mkdir()

    def test_usageErrorOneLine(self) -> None:
        """An unknown option or a bad value: one line in all, not the help first."""
        for args, words in [
            (("--bogus",), "mailframe: option --bogus not recognized"),
            (("--max-size", "lots"), "mailframe: --max-size: "),
            (("--listen", "tcp:x"), "mailframe: --listen: bad endpoint 'tcp:x'"),
        ]:
            result = twistd(self.cwd, *args)
            output = (result.stdout + result.stderr).splitlines()
            self.assertNotEqual(result.returncode, 0)
            self.assertEqual(len(output), 1, output)
            self.assertTrue(output[0].startswith(words), output)

    def test_portInUse(self) -> None:
        """A port in use: one line naming it, no traceback, and no ./Maildir or spool left."""
        with socket.socket() as taken:
            taken.bind((HOST, 0))
            taken.listen()
            port = taken.getsockname()[1]
            result = twistd(self.cwd, "--listen", f"tcp:{port}:interface={HOST}", "--spool",
                            "spool")  # fmt: skip
        output = result.stdout + result.stderr
        self.assertNotEqual(result.returncode, 0)
        self.assertNotIn("Traceback", output)
        lines = [line for line in output.splitlines() if "mailframe" in line]
        self.assertEqual(len(lines), 1, output)
        self.assertTrue(lines[0].endswith(f"mailframe: cannot listen on tcp:{port}:interface="
                                          f"{HOST}: Address already in use"), lines)  # fmt: skip
        self.assertEqual(list(self.cwd.iterdir()), [])

    def test_badInterface(self) -> None:
        """An address this machine does not have: one line."""
        result = twistd(self.cwd, "--listen", "tcp:2526:interface=192.0.2.77")
        output = result.stdout + result.stderr
        self.assertNotIn("Traceback", output)
        [line] = [line for line in output.splitlines() if "mailframe" in line]
        self.assertIn("mailframe: cannot listen on tcp:2526:interface=192.0.2.77: ", line)
        self.assertFalse((self.cwd / "Maildir").exists())

    def test_version(self) -> None:
        """twistd mailframe --version and mailframe --version print mailframe's version."""
        result = twistd(self.cwd, "--version")
        self.assertEqual(result.returncode, 0)
        self.assertTrue(result.stdout.startswith(f"mailframe {__version__} (Twisted "), result)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *sys.path])}
        code = "import sys; from mailframe.app.main import run; sys.argv[0] = 'mailframe'; run()"
        result = subprocess.run([sys.executable, "-c", code, "--version"], env=env,
                                capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertTrue(result.stdout.startswith(f"mailframe {__version__} (Twisted "), result)


def privilegedPort() -> int:
    """A free port below 1024 on 127.0.0.1 (port 25 if it is free)."""
    for port in (25, *range(600, 1024)):
        with socket.socket() as s:
            try:
                s.bind((HOST, port))
            except OSError:
                continue
            return port
    raise AssertionError("no free privileged port")


class PrivilegeDropTests(SynchronousTestCase):
    """As root: bind a privileged port, run as nobody; the Maildir and the spool are nobody's."""

    def setUp(self) -> None:
        if os.geteuid() != 0:
            raise self.skipTest("needs root (to bind a privileged port and change user)")
        if not TWISTD.exists():
            raise self.skipTest(f"no twistd next to {sys.executable}")
        self.nobody = pwd.getpwnam("nobody")
        # a directory root owns and nobody can go through: the server makes the rest
        self.directory = Path(tempfile.mkdtemp(prefix="mfpriv", dir="/tmp"))
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.directory.chmod(0o755)

    def test_runsAsNobody(self) -> None:
        """twistd --uid/--gid: port bound as root, served as nobody, files nobody's, mail delivered."""
        port = privilegedPort()
        maildir, spool = self.directory / "Maildir", self.directory / "spool"
        server = Twistd(
            self, self.directory, "--listen", f"tcp:{port}:interface={HOST}", "--hostname",
            "mx.test", "--domain", "example.com", "--deliver", f"maildir:{maildir}",
            "--spool", str(spool), "--greet-delay", "0",
            twistdArgs=("--uid", "nobody", "--gid", str(self.nobody.pw_gid)),
        )  # fmt: skip
        server.waitForLog("mailframe: listening on")
        status = Path(f"/proc/{server.process.pid}/status").read_text()
        [uids] = [line.split()[1:] for line in status.splitlines() if line.startswith("Uid:")]
        self.assertEqual(set(uids), {str(self.nobody.pw_uid)})
        with smtplib.SMTP(HOST, port, timeout=15) as client:
            client.sendmail("a@example.org", ["b@example.com"], b"Subject: dropped\r\n\r\nhi\r\n")
        new = maildir / "new"
        [delivered] = waitFor("the delivery", lambda: new.is_dir() and list(new.iterdir()))
        for path in (maildir, new, delivered, spool, spool / "queue", spool / "lock",
                     spool / "control.sock"):  # fmt: skip
            info = path.stat()
            self.assertEqual((info.st_uid, info.st_gid),
                             (self.nobody.pw_uid, self.nobody.pw_gid), path)  # fmt: skip
        self.assertTrue(delivered.read_bytes().startswith(b"Return-Path: <a@example.org>\n"))


def notifySocket(case: SynchronousTestCase) -> tuple[socket.socket, str]:
    """Where systemd listens for sd_notify datagrams: a socket and its NOTIFY_SOCKET."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    case.addCleanup(sock.close)
    path = f"/tmp/mfnotify-{os.getpid()}-{id(case)}"
    sock.bind(path)
    case.addCleanup(os.unlink, path)
    sock.settimeout(TIMEOUT)
    return sock, path


class SystemdReloadTests(SynchronousTestCase):
    """
    Under a stand-in for systemd: READY=1 once it listens; SIGHUP picks up a
    new address file (RELOADING=1, READY=1) while an open session goes on;
    a bad configuration is refused; STOPPING=1 at SIGTERM.
    """

    def setUp(self) -> None:
        if not TWISTD.exists():
            raise self.skipTest(f"no twistd next to {sys.executable}")
        self.directory = Path(self.mktemp()).absolute()
        self.directory.mkdir()
        self.users = self.directory / "users"
        self.users.write_text("alice@example.com\n")
        self.config = self.directory / "mailframe.toml"
        self.port = freePort()
        self.writeConfig()

    def writeConfig(self, extra: str = "") -> None:
        self.config.write_text(
            f'listen = ["tcp:{self.port}:interface={HOST}"]\nhostname = "mx.test"\n'
            f'domain = ["example.com"]\ndeliver = "maildir:{self.directory / "Maildir"}"\n'
            f'validate = ["addresses:{self.users}"]\ngreet-delay = "0"\n{extra}'
        )

    def test_reload(self) -> None:
        """A new address file for new sessions; the open session finishes with the old one."""
        notify, path = notifySocket(self)
        server = Twistd(self, self.directory, "--config", str(self.config),
                        env={"NOTIFY_SOCKET": path})  # fmt: skip
        # the port (freePort) may be another test's under trial --jobs: this twistd's own
        # listening line first (it exits at once if the port is taken; READY=1 waits)
        server.waitForLog("mailframe: listening on ")
        self.assertEqual(notify.recv(4096), b"READY=1\nSTATUS=serving 1 listener(s)")
        old = smtplib.SMTP(HOST, self.port, timeout=15)
        self.addCleanup(old.close)
        old.ehlo("client.example")
        self.assertEqual(old.mail("s@example.org")[0], 250)

        self.users.write_text("alice@example.com\nbob@example.com\n")
        server.process.send_signal(signal.SIGHUP)
        self.assertTrue(notify.recv(4096).startswith(b"RELOADING=1\nMONOTONIC_USEC="))
        self.assertEqual(notify.recv(4096), b"READY=1\nSTATUS=configuration reloaded")
        self.assertIn("mailframe: reloaded: listening on", server.log())

        with smtplib.SMTP(HOST, self.port, timeout=15) as new:
            new.ehlo("client.example")
            new.mail("s@example.org")
            self.assertEqual(new.rcpt("bob@example.com")[0], 250)
        self.assertEqual(old.rcpt("bob@example.com")[0], 550)  # its rules are the old ones
        self.assertEqual(old.rcpt("alice@example.com")[0], 250)
        self.assertEqual(old.data(b"Subject: across a reload\r\n\r\nhi\r\n")[0], 250)
        old.quit()

        self.config.write_text("listen = 'tcp:1'\nflavour = 'mint'\n")
        server.process.send_signal(signal.SIGHUP)
        notify.recv(4096)  # RELOADING=1
        self.assertTrue(notify.recv(4096).startswith(b"READY=1\nSTATUS=reload refused: "))
        refused = [line for line in server.log().splitlines() if "reload refused" in line]
        self.assertEqual(len(refused), 1, refused)
        self.assertIn("unknown key 'flavour'", refused[0])
        with smtplib.SMTP(HOST, self.port, timeout=15) as still:
            self.assertEqual(still.noop()[0], 250)

        server.process.send_signal(signal.SIGTERM)
        self.assertEqual(notify.recv(4096), b"STOPPING=1")
        # twistd ends by the signal that stopped its reactor, as systemd expects
        self.assertIn(server.process.wait(TIMEOUT), (0, -signal.SIGTERM))


class SocketActivationTests(SynchronousTestCase):
    """systemd-socket-activate binds the port; mailframe adopts it (systemd:domain=INET:name=smtp)."""

    def test_activated(self) -> None:
        """The first connection starts the server, which greets on the inherited socket."""
        activate = shutil.which("systemd-socket-activate")
        if activate is None:
            if REQUIRED:
                self.fail("systemd-socket-activate is missing (Debian package systemd)")
            raise self.skipTest("no systemd-socket-activate")
        if not TWISTD.exists():
            raise self.skipTest(f"no twistd next to {sys.executable}")
        directory = Path(self.mktemp()).absolute()
        directory.mkdir()
        port = freePort()
        notify, path = notifySocket(self)
        server = Twistd(
            self, directory, "--listen", "systemd:domain=INET:name=smtp", "--hostname",
            "mx.test", "--deliver", "memory", "--greet-delay", "0",
            prefix=(activate, "--listen", f"{HOST}:{port}", "--fdname", "smtp",
                    "-E", "PYTHONPATH", "-E", "NOTIFY_SOCKET"),  # it passes no other variable
            env={"NOTIFY_SOCKET": path},
        )  # fmt: skip
        # the port (freePort) may be another test's under trial --jobs: the greeting
        # counts once systemd-socket-activate said it holds it (it exits if it cannot)
        server.waitForLog(f"Listening on {HOST}:{port} ")
        with smtplib.SMTP(timeout=15) as client:
            waitFor("the activating socket", lambda: _connects(client, port))
            server.waitForLog("mailframe: listening on ")
            self.assertEqual(client.ehlo("c")[0], 250)
        self.assertEqual(notify.recv(4096)[:8], b"READY=1\n")
        self.assertIn("listening on systemd:domain=INET:name=smtp as mx.test", server.log())


def _connects(client: smtplib.SMTP, port: int) -> bool:
    try:
        code, _ = client.connect(HOST, port)
    except OSError:
        return False
    return code == 220


class EmbeddingDocTests(SynchronousTestCase):
    """docs/embedding.rst: its table holds, and its code runs."""

    def test_defaultsDiffer(self) -> None:
        """What the table says twistd mailframe turns on and ServerConfig leaves off."""
        from mailframe.app.settings import DEFAULTS
        from mailframe.config import ServerConfig

        config = ServerConfig(hostname="mx.test")
        self.assertEqual((config.enforceSync, config.greetDelay), (False, 0.0))
        [spec] = _parse().listeners
        self.assertEqual((spec.config.enforceSync, spec.config.greetDelay), (True, 1.0))
        self.assertEqual((spec.limits, DEFAULTS["auth-failure-delay"]), ("", 1.0))

    def test_code(self) -> None:
        """The code that turns the protections on builds a working factory."""
        text = (REPO / "docs" / "embedding.rst").read_text()
        blocks = re.findall(r"\.\. code-block:: python\n\n((?:    .*\n|\n)+)", text)
        [code] = [b for b in blocks if "ConnectionLimits" in b]
        namespace: dict[str, Any] = {}
        exec(compile("\n".join(line[4:] for line in code.splitlines()), "embedding.rst", "exec"),
             namespace)  # fmt: skip
        factory, limits = namespace["factory"], namespace["limits"]
        self.assertTrue(factory.config.enforceSync)
        self.assertEqual(factory.config.greetDelay, 1.0)
        self.assertIn(limits, factory.connectionFilters)
        self.assertIn(limits, factory.observers)
        self.assertIs(factory.validators[0], limits)  # a recipient rate: asked at RCPT
        self.assertEqual(factory.senderValidators, (limits,))
        self.assertEqual(factory.messageFilters, (limits,))


def _parse() -> Any:
    from mailframe.app import tap

    options = tap.Options()
    options.parseOptions([])
    return options
