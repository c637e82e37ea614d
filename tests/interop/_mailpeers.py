"""
Private instances of the programs the LMTP tests talk to, each in a
temporary directory of its own, on loopback and unix sockets only, never
the system's: Dovecot (LMTP and IMAP, a passwd-file userdb), Postfix
(smtpd on a loopback port, a virtual domain delivered by its lmtp client),
and C{twistd -n mailframe} itself.

Blocking helpers, for a test's own thread (or L{SynchronousTestCase});
every wait has a deadline.  A missing program is L{SkipTest}, or a failure
when MAILFRAME_REQUIRE_INTEROP=1 (CI).  Processes are stopped by the id of
the process (and of its process group) the helper started, nothing else.

Owns: nothing of mailframe.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from twisted.trial.unittest import SkipTest

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parents[2]
TWISTD = Path(sys.executable).with_name("twistd")
REQUIRED = bool(os.environ.get("MAILFRAME_REQUIRE_INTEROP"))
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"
DOVECOT_PARTS = ("/usr/lib/dovecot/lmtp", "/usr/lib/dovecot/imap", "/usr/lib/dovecot/imap-login")
POSTFIX = "/usr/sbin/postfix"
POSTFIX_DAEMONS = "/usr/lib/postfix/sbin"


def unavailable(why: str) -> SkipTest:
    """Skip, or fail under MAILFRAME_REQUIRE_INTEROP=1."""
    if REQUIRED:
        raise AssertionError(f"{why} (MAILFRAME_REQUIRE_INTEROP is set)")
    return SkipTest(why)


def freePort() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def waitFor(condition: object, timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll C{condition()} until true, at most C{timeout} seconds (a thread's wait, no reactor)."""
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        threading.Event().wait(interval)


def listening(port: int) -> bool:
    try:
        socket.create_connection((HOST, port), timeout=1).close()
    except OSError:
        return False
    return True


def heldBy(pid: int, port: int) -> bool:
    """
    Whether process C{pid}, or a process of the session it leads (started
    with C{start_new_session}: a master's workers), holds the socket
    listening on C{HOST}:C{port} (Linux: /proc/net/tcp, /proc/PID/fd).  A
    port that answers may be another test's under C{trial --jobs}: the one
    L{freePort} gave can be taken before the server started here binds it
    (which then exits).
    """
    address = "".join(f"{int(part):02X}" for part in reversed(HOST.split(".")))
    wanted = f"{address}:{port:04X}"
    inodes = set()
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            if fields[1] == wanted and fields[3] == "0A":  # 0A: LISTEN
                inodes.add(f"socket:[{fields[9]}]")
    return bool(inodes) and any(_holds(p, inodes) for p in _session(pid))


def _session(pid: int) -> list[int]:
    """C{pid} and the processes whose session it leads."""
    found = [pid]
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != pid:
            try:
                with open(f"/proc/{name}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == pid:  # the session id, after state, ppid, pgrp
                found.append(int(name))
    return found


def _holds(pid: int, inodes: set[str]) -> bool:
    try:
        descriptors = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in descriptors:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                return True
        except OSError:
            continue
    return False


def stopProcess(process: subprocess.Popen[bytes], group: bool = True) -> None:
    """SIGTERM the process (and its own process group), then SIGKILL what is left."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(process.pid, signal.SIGTERM)
            else:
                process.terminate()
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL) if group else process.kill()
            process.wait(STOP_TIMEOUT)
    if group:  # children that outlived their parent, in the group we made
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)


def scratch(prefix: str) -> Path:
    """A fresh directory every user can traverse (the servers' own users must reach it)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


# -- twistd mailframe ------------------------------------------------------------------

ANNOUNCED = ("mailframe: listening on ", "mailframe: LMTP (RFC 2033) on ")
"""What mailframe logs once its own listeners are bound (a port in use: it exits instead)."""


def announced(log: str) -> bool:
    """
    Whether a twistd log (text) says mailframe's listeners are bound: a
    port that answers is not enough under C{trial --jobs}, where another
    test's server may have taken the port L{freePort} gave.
    """
    return any(line in log for line in ANNOUNCED)


def waitForTwistd(
    process: subprocess.Popen[bytes],
    log: Path,
    ready: Callable[[], bool] | None = None,
    timeout: float = START_TIMEOUT,
) -> None:
    """
    Wait (in a test's own thread or a worker thread, never the reactor's)
    until the twistd C{process}, its output in C{log}, has said that its
    listeners are bound (L{announced}) and C{ready()}, if given, is true; an
    AssertionError with the log's tail if it exits first or C{timeout}
    passes.  A port that answers is not enough: see L{announced}.
    """

    def text() -> str:
        return log.read_text(errors="replace")[-3000:] if log.exists() else ""

    deadline = time.monotonic() + timeout
    while not (announced(log.read_text(errors="replace") if log.exists() else "")
               and (ready is None or ready())):  # fmt: skip
        if process.poll() is not None:
            raise AssertionError(f"twistd exited ({process.returncode}):\n{text()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"twistd did not listen in {timeout:g} s:\n{text()}")
        threading.Event().wait(0.05)


class Twistd:
    """C{twistd -n mailframe ARGS} in C{directory}, its log in C{twistd.log} there."""

    def __init__(self, directory: Path, *args: str) -> None:
        self.directory = directory
        self.args = args
        self.log = directory / "twistd.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, ready: Callable[[], bool]) -> None:
        """
        Start, and wait until C{ready()} is true (a port listens, a socket
        exists) and this twistd said it listens: under C{trial --jobs}
        another test's server may have taken a port L{freePort} gave, and
        answer C{ready()} in its place (this one then exits: in use).
        """
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *sys.path])}
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [str(TWISTD), "-n", "--pidfile=", "--logfile=-", "mailframe", *self.args],
                cwd=self.directory, env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        waitForTwistd(self.process, self.log, ready)

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        if self.process is not None:
            stopProcess(self.process)


# -- Dovecot -----------------------------------------------------------------------------


class PrivateDovecot:
    """
    Dovecot's LMTP (a unix socket, C{lmtpSocket}) and IMAP (C{imapPort} on
    127.0.0.1), users from a passwd-file (C{users}: name -> password),
    Maildirs under C{directory}/mail.  Run as the current user; as root
    (which Dovecot does not deliver mail as) with Debian's dovecot and
    dovenull users for its processes and nobody's uid for the mail.
    """

    def __init__(self, directory: Path, users: dict[str, str]) -> None:
        for program in (DOVECOT, *DOVECOT_PARTS):
            if not os.path.exists(program):
                raise unavailable(
                    f"{program} is missing (Debian packages dovecot-core, dovecot-lmtpd, "
                    "dovecot-imapd)"
                )
        self.directory = directory
        self.users = users
        self.lmtpSocket = directory / "lmtp"
        self.imapPort = freePort()
        self.config = directory / "dovecot.conf"
        self.logPath = directory / "dovecot.log"
        self.process: subprocess.Popen[bytes] | None = None

    def _accounts(self) -> tuple[str, str, str, int, int]:
        """(internal user, its group, login user, mail uid, mail gid)."""
        if os.getuid() != 0:
            me = pwd.getpwuid(os.getuid())
            group = _groupName(os.getgid())
            return me.pw_name, group, me.pw_name, os.getuid(), os.getgid()
        for name in ("dovecot", "dovenull", "nobody"):
            try:
                pwd.getpwnam(name)
            except KeyError:
                raise unavailable(
                    f"user {name} is missing (Debian package dovecot-core)"
                ) from None
        nobody = pwd.getpwnam("nobody")
        return (
            "dovecot",
            _groupName(pwd.getpwnam("dovecot").pw_gid),
            "dovenull",
            nobody.pw_uid,
            nobody.pw_gid,
        )

    def start(self) -> None:
        d = self.directory
        internal, group, login, uid, gid = self._accounts()
        mail = d / "mail"
        mail.mkdir()
        os.chown(mail, uid, gid)
        passwd = d / "passwd"
        passwd.write_text("".join(
            f"{name}:{{PLAIN}}{secret}:{uid}:{gid}::{mail}/{name}\n"
            for name, secret in self.users.items()
        ))  # fmt: skip
        self.config.write_text(f"""\
base_dir = {d}/run
state_dir = {d}/state
instance_name = mailframe-test-{os.getpid()}-{self.imapPort}
log_path = {self.logPath}
ssl = no
disable_plaintext_auth = no
listen = {HOST}
protocols = imap lmtp
default_internal_user = {internal}
default_internal_group = {group}
default_login_user = {login}
auth_username_format = %Ln
mail_location = maildir:{mail}/%n
mail_fsync = always
passdb {{
  driver = passwd-file
  args = {passwd}
}}
userdb {{
  driver = passwd-file
  args = {passwd}
}}
service lmtp {{
  unix_listener {self.lmtpSocket} {{
    mode = 0666
  }}
}}
service imap-login {{
  inet_listener imap {{
    address = {HOST}
    port = {self.imapPort}
  }}
  inet_listener imaps {{
    port = 0
  }}
  chroot =
}}
service anvil {{
  chroot =
}}
""")
        with open(d / "dovecot.stderr", "wb") as stderr:
            self.process = subprocess.Popen(
                [DOVECOT, "-F", "-c", str(self.config)], cwd=d, stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True,
            )  # fmt: skip
        process = self.process

        def up() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"dovecot exited ({process.returncode}): {self.text()}")
            return self.lmtpSocket.exists() and heldBy(process.pid, self.imapPort)

        waitFor(up, START_TIMEOUT, "Dovecot to listen")

    def text(self) -> str:
        out = ""
        for name in ("dovecot.stderr", "dovecot.log"):
            path = self.directory / name
            if path.exists():
                out += path.read_text(errors="replace")
        return out

    def stop(self) -> None:
        if self.process is not None:
            stopProcess(self.process)

    def fetchAll(self, user: str) -> list[bytes]:
        """Every message of C{user}'s INBOX, as IMAP gives it (RFC822, byte for byte)."""
        import imaplib

        imap = imaplib.IMAP4(HOST, self.imapPort, timeout=15)
        try:
            imap.login(user, self.users[user])
            status, data = imap.select("INBOX", readonly=True)
            assert status == "OK", (status, data)
            count = int(data[0] or b"0")
            messages = []
            for i in range(1, count + 1):
                status, parts = imap.fetch(str(i), "(BODY.PEEK[])")
                assert status == "OK", (status, parts)
                messages.append(parts[0][1])  # type: ignore[index]
            imap.logout()
        finally:
            with contextlib.suppress(Exception):
                imap.shutdown()
        return messages


def _groupName(gid: int) -> str:
    import grp

    return grp.getgrgid(gid).gr_name


# -- Postfix ------------------------------------------------------------------------------

SYSLOG_NAME = "postfix-mailframe-test"
_QUEUES = ("maildrop", "incoming", "active", "deferred", "defer", "hold", "bounce")


class PrivatePostfix:
    """
    A Postfix instance of its own (config, queue, data and log under
    C{directory}): smtpd on 127.0.0.1:C{smtpPort}; C{main} lines added to
    main.cf (the virtual domain and its transport).  Postfix's master must
    run as root: other users skip (or fail, under MAILFRAME_REQUIRE_INTEROP).
    """

    def __init__(self, directory: Path, main: Sequence[str], files: dict[str, str]) -> None:
        if not os.path.exists(POSTFIX) or not os.path.exists(f"{POSTFIX_DAEMONS}/master"):
            raise unavailable(f"{POSTFIX} is missing (Debian package postfix)")
        if os.getuid() != 0:
            raise unavailable("a private Postfix instance needs root (its master runs as root)")
        try:
            pwd.getpwnam("postfix")
        except KeyError:
            raise unavailable("user postfix is missing (Debian package postfix)") from None
        self.directory = directory
        self.smtpPort = freePort()
        self.etc = directory / "etc"
        self.queue = directory / "spool"
        self.maillog = directory / "log" / "maillog"
        self.main = main
        self.files = files
        self.env = {**os.environ, "MAIL_CONFIG": str(self.etc)}
        self.master: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        for d in (self.etc, self.queue, self.maillog.parent):
            d.mkdir(parents=True)
            d.chmod(0o755)
        for name, text in self.files.items():
            (self.etc / name).write_text(text)
        (self.etc / "main.cf").write_text("\n".join([
            "compatibility_level = 3.6",
            f"queue_directory = {self.queue}",
            f"data_directory = {self.directory}/data",
            "command_directory = /usr/sbin",
            f"daemon_directory = {POSTFIX_DAEMONS}",
            "meta_directory = /etc/postfix",
            "shlib_directory = /usr/lib/postfix",
            "mail_owner = postfix",
            "setgid_group = postdrop",
            f"syslog_name = {SYSLOG_NAME}",
            f"maillog_file = {self.maillog}",
            f"maillog_file_prefixes = {self.maillog.parent}",
            f"inet_interfaces = {HOST}",
            "inet_protocols = ipv4",
            "mynetworks = 127.0.0.0/8",
            "myhostname = postfix.test",
            "mydomain = postfix.test",
            "mydestination =",
            "relayhost =",
            "relay_domains =",
            "alias_maps =",
            "alias_database =",
            "default_transport = error:no mail leaves a test",
            "relay_transport = error:no mail leaves a test",
            "smtpd_relay_restrictions = permit_mynetworks, reject",
            "smtpd_tls_security_level =",
            "smtp_tls_security_level =",
            "lmtp_tls_security_level =",
            *self.main,
        ]) + "\n")  # fmt: skip
        (self.etc / "master.cf").write_text("\n".join([
            f"{HOST}:{self.smtpPort} inet n - n - - smtpd",
            "pickup     unix  n - n 60   1 pickup",
            "cleanup    unix  n - n -    0 cleanup",
            "qmgr       unix  n - n 300  1 qmgr",
            "rewrite    unix  - - n -    - trivial-rewrite",
            "bounce     unix  - - n -    0 bounce",
            "defer      unix  - - n -    0 bounce",
            "trace      unix  - - n -    0 bounce",
            "verify     unix  - - n -    1 verify",
            "flush      unix  n - n 1000? 0 flush",
            "proxymap   unix  - - n -    - proxymap",
            "showq      unix  n - n -    - showq",
            "error      unix  - - n -    - error",
            "retry      unix  - - n -    - error",
            "discard    unix  - - n -    - discard",
            "lmtp       unix  - - n -    - lmtp",
            "anvil      unix  - - n -    1 anvil",
            "scache     unix  - - n -    1 scache",
            "postlog    unix-dgram n - n - 1 postlogd",
        ]) + "\n")  # fmt: skip
        check = subprocess.run(
            [POSTFIX, "-c", str(self.etc), "check"], env=self.env, stdin=subprocess.DEVNULL,
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        if check.returncode:
            raise AssertionError(f"postfix check failed: {check.stdout}{check.stderr}")
        with open(self.directory / "master.stderr", "wb") as stderr:
            self.master = subprocess.Popen(
                [f"{POSTFIX_DAEMONS}/master", "-c", str(self.etc), "-d", "-e", "600"],
                env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=stderr, start_new_session=True,
            )  # fmt: skip
        master = self.master

        def up() -> bool:
            if master.poll() is not None:
                raise AssertionError(f"Postfix's master exited ({master.returncode})")
            return heldBy(master.pid, self.smtpPort)

        waitFor(up, START_TIMEOUT, "Postfix's smtpd to listen")

    def log(self) -> str:
        return self.maillog.read_text(errors="replace") if self.maillog.exists() else ""

    def deliveries(self) -> dict[str, str]:
        """Recipient -> the status= part of its last delivery line in the maillog."""
        found = {}
        for m in re.finditer(r"to=<([^>]*)>,.* status=(\S+ \(.*\))$", self.log(), re.M):
            found[m.group(1)] = m.group(2)
        return found

    def queued(self) -> int:
        """Files in the queue (0: every message has left it)."""
        count = 0
        for name in _QUEUES:
            top = self.queue / name
            if top.exists():
                count += sum(len(files) for _, _, files in os.walk(top))
        return count

    def stop(self) -> None:
        master = self.master
        if master is None:
            return
        if master.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                subprocess.run([POSTFIX, "-c", str(self.etc), "stop"], env=self.env,
                               stdin=subprocess.DEVNULL, capture_output=True,
                               timeout=STOP_TIMEOUT)  # fmt: skip
        stopProcess(master)
