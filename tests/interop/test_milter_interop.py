"""
Milters and rspamd that sites run, started by the tests from Debian's
packages with private configurations in temporary directories, listening
on 127.0.0.1 (never the system's instances), as the current user:

  - OpenDKIM signs the mail of a submission listener; mailframe's own
    dkim-verify and a second OpenDKIM in verify mode both pass it;
  - clamav-milter with clamd and a one-line signature database made here
    (the EICAR test file's MD5; no download) refuses an EICAR attachment
    with its own reply and lets a clean message through;
  - rspamd, through its milter proxy worker and through its HTTP protocol,
    refuses a GTUBE message and adds its headers to a clean one.

Each daemon starts once per test class; every wait is bounded.  A missing
program skips its class, or fails it when MAILFRAME_REQUIRE_INTEROP=1.
"""

from __future__ import annotations

import atexit
import base64
import getpass
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Generator, Sequence
from typing import Any, ClassVar

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from mailframe.milter.filter import Milter
from tests._milter import milterFor, startMilterServer
from tests.interop._mailpeers import heldBy
from tests.interop._support import HOST, inThread
from tests.test_milter import transaction

REQUIRE = bool(os.environ.get("MAILFRAME_REQUIRE_INTEROP"))
START_TIMEOUT = 60.0
"""Seconds a daemon may take to listen."""
STOP_TIMEOUT = 10.0

EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


def which(program: str) -> str | None:
    return shutil.which(program, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


def missing(*programs: str) -> str | None:
    """A skip reason if one of C{programs} is not installed (none when CI requires them)."""
    absent = [p for p in programs if which(p) is None]
    if absent and not REQUIRE:
        return f"not installed: {', '.join(absent)} (Debian packages, see .ci/run)"
    return None


def freePort() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class Daemons:
    """The processes a test class started, each stopped at the end (TERM, then KILL)."""

    def __init__(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="mailframe-milter-")
        self.processes: list[tuple[str, subprocess.Popen[bytes]]] = []

    def path(self, *parts: str) -> str:
        return os.path.join(self.directory, *parts)

    def write(self, name: str, text: str | bytes) -> str:
        path = self.path(name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(text.encode() if isinstance(text, str) else text)
        return path

    def start(self, name: str, argv: Sequence[str]) -> subprocess.Popen[bytes]:
        program = which(argv[0])
        if program is None:
            raise RuntimeError(f"{argv[0]} is not installed (MAILFRAME_REQUIRE_INTEROP is set)")
        log = open(self.path(f"{name}.out"), "wb")  # noqa: SIM115 (the child writes it)
        process = subprocess.Popen(
            [program, *argv[1:]],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.directory,
            start_new_session=True,
            preexec_fn=_dieWithParent,
        )
        log.close()
        self.processes.append((name, process))
        return process

    def output(self, name: str) -> str:
        try:
            with open(self.path(f"{name}.out"), "rb") as f:
                return f.read()[-2000:].decode("utf-8", "replace")
        except OSError:
            return ""

    def holding(self, name: str, port: int) -> Callable[[], bool]:
        """
        Whether daemon C{name} (or a worker of its session) listens on
        C{port}: not merely some server, which under C{trial --jobs} may be
        another test's on a port L{freePort} gave.
        """
        process = dict(self.processes)[name]
        return lambda: heldBy(process.pid, port)

    def waitFor(self, name: str, ready: Any, timeout: float = START_TIMEOUT) -> None:
        """Wait (bounded) until C{ready()} is true; fail with the daemon's output if it exits."""
        process = dict(self.processes)[name]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited ({process.returncode}): {self.output(name)}")
            time.sleep(0.1)
        raise RuntimeError(f"{name} did not start in {timeout:g} s: {self.output(name)}")

    def stop(self) -> None:
        for _, process in reversed(self.processes):
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
        deadline = time.monotonic() + STOP_TIMEOUT
        for _, process in self.processes:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(STOP_TIMEOUT)
        shutil.rmtree(self.directory, ignore_errors=True)


def _dieWithParent() -> None:
    """In the child: SIGTERM when the test process ends, however it ends (Linux)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def message(subject: str, body: bytes, extra: bytes = b"") -> bytes:
    return (
        b"From: Alice <alice@example.org>\r\n"
        b"To: User <user@example.com>\r\n"
        b"Subject: " + subject.encode() + b"\r\n"
        b"Date: Thu, 03 Dec 2026 12:00:00 +0000\r\n"
        b"Message-ID: <" + subject.replace(" ", ".").encode() + b"@example.org>\r\n"
        + extra + b"\r\n" + body
    )  # fmt: skip


class DaemonTestCase(TestCase):
    """
    Starts its daemons (L{startDaemons}) before its first test and stops them
    after its last one (trial has no setUpClass), or when the process exits.
    A class whose daemons cannot start fails every test.
    """

    timeout = 120
    daemons: ClassVar[Daemons | None] = None
    startError: ClassVar[BaseException | None] = None
    finished: ClassVar[int] = 0

    @classmethod
    def startDaemons(cls) -> None:
        raise NotImplementedError

    @classmethod
    def stopDaemons(cls) -> None:
        if cls.daemons is not None:
            cls.daemons.stop()
            cls.daemons = None

    def setUp(self) -> None:
        cls = type(self)
        self.addCleanup(self._finished)
        if cls.startError is not None:
            raise RuntimeError(f"the daemons did not start: {cls.startError}")
        if cls.daemons is None:
            atexit.register(cls.stopDaemons)
            try:
                cls.startDaemons()
            except BaseException as e:
                cls.startError = e
                cls.stopDaemons()
                raise

    def _finished(self) -> None:
        cls = type(self)
        cls.finished += 1
        if cls.finished >= len([n for n in dir(cls) if n.startswith("test_")]):
            cls.stopDaemons()


# -- ClamAV ------------------------------------------------------------------------


class ClamAVMilterTests(DaemonTestCase):
    """clamav-milter with clamd and a signature database of one line."""

    skip = missing("clamd", "clamav-milter")

    @classmethod
    def startDaemons(cls) -> None:
        d = cls.daemons = Daemons()
        user = getpass.getuser()
        os.makedirs(d.path("db"))
        os.makedirs(d.path("tmp"))
        d.write(
            "db/mailframe.hdb",
            f"{hashlib.md5(EICAR).hexdigest()}:{len(EICAR)}:Mailframe.Test.EICAR\n",
        )
        d.write(
            "clamd.conf",
            f"LocalSocket {d.path('clamd.sock')}\nDatabaseDirectory {d.path('db')}\n"
            f"TemporaryDirectory {d.path('tmp')}\nForeground yes\nUser {user}\n"
            f"LogFile {d.path('clamd.log')}\nPidFile {d.path('clamd.pid')}\n",
        )
        cls.port = freePort()
        d.write(
            "clamav-milter.conf",
            f"MilterSocket inet:{cls.port}@{HOST}\nClamdSocket unix:{d.path('clamd.sock')}\n"
            f"Foreground yes\nUser {user}\nPidFile {d.path('milter.pid')}\n"
            "OnInfected Reject\nOnFail Defer\nRejectMsg Virus found: %v\n"
            "AddHeader Replace\n"
            f"LogFile {d.path('milter.log')}\n",
        )
        d.start("clamd", ["clamd", "-c", d.path("clamd.conf")])
        d.waitFor("clamd", lambda: os.path.exists(d.path("clamd.sock")))
        d.start("clamav-milter", ["clamav-milter", "-c", d.path("clamav-milter.conf")])
        d.waitFor("clamav-milter", d.holding("clamav-milter", cls.port))

    def milter(self) -> Milter:
        return milterFor(f"inet:{HOST}:{self.port}", defaultAction="tempfail", eomTimeout=30.0)

    @defer.inlineCallbacks
    def test_eicarRefused(self) -> Generator[Any, Any, None]:
        """An EICAR attachment gets clamav-milter's own 5xx; nothing is delivered."""
        attachment = base64.encodebytes(EICAR).replace(b"\n", b"\r\n")
        body = (
            b"--b1\r\nContent-Type: text/plain\r\n\r\nSee the attachment.\r\n"
            b"--b1\r\nContent-Type: application/octet-stream; name=\"eicar.com\"\r\n"
            b"Content-Transfer-Encoding: base64\r\n"
            b"Content-Disposition: attachment; filename=\"eicar.com\"\r\n\r\n"
            + attachment + b"--b1--\r\n"
        )  # fmt: skip
        data = message(
            "eicar",
            body,
            b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b1"\r\n',
        )
        server = startMilterServer(self, [self.milter()])
        replies = yield inThread(transaction, server, data)
        code, text = replies[-2]
        self.assertTrue(500 <= code < 600, replies)
        self.assertIn("Virus found: Mailframe.Test.EICAR", text)
        self.assertEqual(server.backend.messages, [])

    @defer.inlineCallbacks
    def test_cleanDelivered(self) -> Generator[Any, Any, None]:
        """A clean message is delivered, with clamav-milter's X-Virus-Status field."""
        server = startMilterServer(self, [self.milter()])
        replies = yield inThread(transaction, server, message("clean", b"Nothing here.\r\n"))
        self.assertEqual(replies[-2][0], 250, replies)
        [stored] = server.backend.messages
        self.assertTrue(stored.data.startswith(b"Received: "))
        self.assertIn(b"X-Virus-Status: Clean", stored.data)


# -- OpenDKIM ------------------------------------------------------------------------


def _dkimKey() -> tuple[bytes, str]:
    """A new RSA key: its PEM, and the TXT record of its public half."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem, "v=DKIM1; k=rsa; p=" + base64.b64encode(public).decode()


class OpenDKIMTests(DaemonTestCase):
    """OpenDKIM signing a submission listener's mail, and another verifying it."""

    skip = missing("opendkim")
    SELECTOR = "mftest"

    @classmethod
    def startDaemons(cls) -> None:
        d = cls.daemons = Daemons()
        user = getpass.getuser()
        pem, cls.record = _dkimKey()
        keyFile = d.write("keys/mftest.private", pem)
        os.chmod(keyFile, 0o600)
        name = f"{cls.SELECTOR}._domainkey.example.org"
        dnsData = d.write("keys/dns", f"{name} {cls.record}\n")
        cls.signPort, cls.verifyPort = freePort(), freePort()
        common = f"Syslog no\nBackground no\nUserID {user}\nUMask 007\nRequireSafeKeys false\n"
        d.write(
            "sign.conf",
            common + f"Mode s\nDomain example.org\nSelector {cls.SELECTOR}\n"
            f"KeyFile {keyFile}\nSocket inet:{cls.signPort}@{HOST}\n"
            f"PidFile {d.path('sign.pid')}\nCanonicalization relaxed/simple\n"
            "InternalHosts 127.0.0.1\n",
        )
        d.write(
            "verify.conf",
            common + f"Mode v\nSocket inet:{cls.verifyPort}@{HOST}\n"
            f"PidFile {d.path('verify.pid')}\nTestDNSData file:{dnsData}\n"
            "AuthservID verifier.test\nInternalHosts 192.0.2.1\n"
            "AlwaysAddARHeader yes\n",
        )
        d.start("opendkim-sign", ["opendkim", "-f", "-x", d.path("sign.conf")])
        d.start("opendkim-verify", ["opendkim", "-f", "-x", d.path("verify.conf")])
        d.waitFor("opendkim-sign", d.holding("opendkim-sign", cls.signPort))
        d.waitFor("opendkim-verify", d.holding("opendkim-verify", cls.verifyPort))

    @defer.inlineCallbacks
    def test_signedAndVerified(self) -> Generator[Any, Any, None]:
        """Signed on submission; mailframe's dkim-verify and OpenDKIM in verify mode both pass it."""
        from mailframe.policy._dns import AsyncDNS
        from mailframe.policy.dkim import DKIMVerifier, inlineRunner
        from mailframe.policy.testing import MemoryResolver, makeMessage

        signer = milterFor(f"inet:{HOST}:{self.signPort}", defaultAction="tempfail")
        submission = startMilterServer(self, [signer], listener="submission")
        original = message("signed", b"Hello,\r\n\r\nsigned by OpenDKIM.\r\n")
        replies = yield inThread(transaction, submission, original)
        self.assertEqual(replies[-2][0], 250, replies)
        [stored] = submission.backend.messages
        self.assertTrue(stored.data.startswith(b"Received: "), stored.data[:200])
        self.assertIn(b"DKIM-Signature: ", stored.data)
        self.assertIn(b"s=mftest", stored.data)

        # mailframe's own verifier, with the key in a resolver of its own
        resolver = MemoryResolver()
        resolver.add(f"{self.SELECTOR}._domainkey.example.org", "TXT", self.record)
        verifier = DKIMVerifier(AsyncDNS(resolver, reactor), inlineRunner)
        results = yield verifier.verify(makeMessage(stored.data))
        self.assertEqual([r.result for r in results], ["pass"])

        # OpenDKIM verifying: the signed message relayed to a second server
        checker = milterFor(f"inet:{HOST}:{self.verifyPort}", defaultAction="tempfail")
        inbound = startMilterServer(self, [checker])
        signed = stored.data.partition(b"\r\n")[2]
        while signed[:1] in (b" ", b"\t"):  # the rest of our Received: field
            signed = signed.partition(b"\r\n")[2]
        replies = yield inThread(transaction, inbound, signed)
        self.assertEqual(replies[-2][0], 250, replies)
        [verified] = inbound.backend.messages
        results = [
            line for line in verified.data.split(b"\r\n\r\n")[0].split(b"\r\n")
            if b"dkim=" in line
        ]  # fmt: skip
        self.assertTrue(results, verified.data[:1500])
        self.assertIn(b"dkim=pass", b" ".join(results))


# -- rspamd --------------------------------------------------------------------------

_RSPAMD_CONF = """\
.include "$CONFDIR/common.conf"
options {{
    pidfile = "$RUNDIR/rspamd.pid";
    .include "$CONFDIR/options.inc"
    .include(priority=10) "{directory}/options-override.inc"
}}
logging {{
    type = "file";
    filename = "$LOGDIR/rspamd.log";
    level = "info";
}}
worker "normal" {{
    bind_socket = "{host}:{normal}";
    .include "$CONFDIR/worker-normal.inc"
    count = 1;
}}
worker "rspamd_proxy" {{
    bind_socket = "{host}:{proxy}";
    milter = yes;
    timeout = 120s;
    count = 1;
    upstream "local" {{ default = yes; self_scan = yes; }}
    spam_header = "X-Spam";
    reject_message = "Spam message rejected";
}}
"""

# a small list of top-level domains (the whole list takes rspamd 20 s to
# compile), no hyperscan cache to build, and no DNS server but a dead one
_RSPAMD_OPTIONS = """\
url_tld = "{directory}/tld.dat";
disable_hyperscan = true;
dns {{ nameserver = ["127.0.0.1:9"]; timeout = 0.5s; retransmits = 1; }}
"""

_RSPAMD_HEADERS = """\
extended_spam_headers = true;
skip_local = false;
skip_authenticated = false;
"""


class RspamdTests(DaemonTestCase):
    """rspamd's milter proxy worker and its HTTP protocol."""

    skip = missing("rspamd")

    @classmethod
    def startDaemons(cls) -> None:
        d = cls.daemons = Daemons()
        for sub in ("db", "run", "log", "local.d"):
            os.makedirs(d.path(sub))
        cls.normal, cls.proxy = freePort(), freePort()
        d.write("tld.dat", "com\norg\nnet\nexample\ntest\n")
        d.write("options-override.inc", _RSPAMD_OPTIONS.format(directory=d.directory))
        d.write("local.d/milter_headers.conf", _RSPAMD_HEADERS)
        conf = d.write(
            "rspamd.conf",
            _RSPAMD_CONF.format(
                directory=d.directory, host=HOST, normal=cls.normal, proxy=cls.proxy
            ),
        )
        user = getpass.getuser()
        argv = ["rspamd", "-f", "-c", conf, "-u", user, "-g", _group()]
        if os.geteuid() == 0:
            argv.append("-i")  # rspamd refuses root workers without it
        for name, sub in (
            ("LOCAL_CONFDIR", ""),
            ("DBDIR", "db"),
            ("RUNDIR", "run"),
            ("LOGDIR", "log"),
        ):
            argv.append(f"--var={name}={d.path(sub) if sub else d.directory}")
        d.start("rspamd", argv)
        normal, proxy = d.holding("rspamd", cls.normal), d.holding("rspamd", cls.proxy)
        d.waitFor("rspamd", lambda: normal() and proxy())

    def milterServer(self) -> Any:
        return startMilterServer(
            self, [milterFor(f"inet:{HOST}:{self.proxy}", defaultAction="tempfail")]
        )

    def httpServer(self) -> Any:
        from mailframe.policy.rspamd import RspamdFilter

        check = RspamdFilter(
            f"http://{HOST}:{self.normal}", reactor, "mx.test", failure="tempfail"
        )
        return startMilterServer(self, [], messageFilters=[check])

    @defer.inlineCallbacks
    def test_milterGTUBE(self) -> Generator[Any, Any, None]:
        """Through the milter proxy, GTUBE is refused with rspamd's 5xx."""
        server = self.milterServer()
        replies = yield inThread(transaction, server, message("gtube", GTUBE + b"\r\n"))
        self.assertTrue(500 <= replies[-2][0] < 600, replies)
        self.assertEqual(server.backend.messages, [])

    @defer.inlineCallbacks
    def test_milterClean(self) -> Generator[Any, Any, None]:
        """Through the milter proxy, a clean message is delivered with rspamd's fields."""
        server = self.milterServer()
        replies = yield inThread(transaction, server, message("clean", b"Hello there.\r\n"))
        self.assertEqual(replies[-2][0], 250, replies)
        [stored] = server.backend.messages
        self.assertTrue(stored.data.startswith(b"Received: "))
        self.assertIn(b"X-Spamd-Result: ", stored.data)

    @defer.inlineCallbacks
    def test_httpGTUBE(self) -> Generator[Any, Any, None]:
        """Over HTTP (/checkv2), GTUBE is refused: 554 5.7.1 with rspamd's message."""
        server = self.httpServer()
        replies = yield inThread(transaction, server, message("gtube", GTUBE + b"\r\n"))
        self.assertEqual(replies[-2][0], 554, replies)
        self.assertEqual(server.backend.messages, [])

    @defer.inlineCallbacks
    def test_httpClean(self) -> Generator[Any, Any, None]:
        """Over HTTP, a clean message is delivered with X-Spamd-Result; Received: stays first."""
        server = self.httpServer()
        replies = yield inThread(transaction, server, message("clean", b"Hello there.\r\n"))
        self.assertEqual(replies[-2][0], 250, replies)
        [stored] = server.backend.messages
        self.assertTrue(stored.data.startswith(b"Received: "))
        self.assertIn(b"X-Spamd-Result: default: ", stored.data)


def _group() -> str:
    import grp

    return grp.getgrgid(os.getgid()).gr_name
