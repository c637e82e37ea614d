"""
Tests for L{mailframe.app.systemd}: sd_notify(3) datagrams to
C{$NOTIFY_SOCKET}, and the unit files of docs/systemd checked with
C{systemd-analyze verify} (skipped where it is missing, but a failure with
C{MAILFRAME_REQUIRE_INTEROP=1}).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from twisted.logger import LogEvent, capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from mailframe.app.systemd import notify, reloading

REPO = Path(__file__).resolve().parents[1]
UNITS = REPO / "docs" / "systemd"
REQUIRED = bool(os.environ.get("MAILFRAME_REQUIRE_INTEROP"))


def listening(case: SynchronousTestCase, abstract: bool = False) -> tuple[socket.socket, str]:
    """A datagram socket where systemd would listen, and its NOTIFY_SOCKET value."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    case.addCleanup(sock.close)
    sock.settimeout(5)
    if abstract:
        name = f"mailframe-test-{os.getpid()}-{id(case)}"
        sock.bind("\0" + name)
        return sock, "@" + name
    path = os.path.join("/tmp", f"mfn-{os.getpid()}-{id(case)}")
    case.addCleanup(lambda: os.path.exists(path) and os.unlink(path))
    sock.bind(path)
    return sock, path


class NotifyTests(SynchronousTestCase):
    """notify sends one datagram, or nothing outside systemd."""

    def test_path(self) -> None:
        """A path socket gets the state as one datagram."""
        sock, address = listening(self)
        self.assertTrue(notify("READY=1\nSTATUS=serving", {"NOTIFY_SOCKET": address}))
        self.assertEqual(sock.recv(1024), b"READY=1\nSTATUS=serving")

    def test_abstract(self) -> None:
        """@name is a socket in the abstract namespace."""
        sock, address = listening(self, abstract=True)
        self.assertTrue(notify("STOPPING=1", {"NOTIFY_SOCKET": address}))
        self.assertEqual(sock.recv(1024), b"STOPPING=1")

    def test_notUnderSystemd(self) -> None:
        """Without NOTIFY_SOCKET nothing is sent."""
        self.assertFalse(notify("READY=1", {}))

    def test_nobodyListens(self) -> None:
        """A socket nobody listens on is one warning, not an exception."""
        events: list[LogEvent]
        with capturedLogs() as events:
            self.assertFalse(notify("READY=1", {"NOTIFY_SOCKET": "/nonexistent/notify"}))
        self.assertEqual(len(events), 1)

    def test_reloading(self) -> None:
        """RELOADING=1 carries the monotonic time systemd 253 wants."""
        lines = reloading().splitlines()
        self.assertEqual(lines[0], "RELOADING=1")
        self.assertTrue(lines[1].startswith("MONOTONIC_USEC="), lines)
        self.assertGreater(int(lines[1].split("=")[1]), 0)


class UnitFileTests(SynchronousTestCase):
    """docs/systemd/*: systemd-analyze verify finds nothing wrong."""

    def test_verify(self) -> None:
        """mailframe.service and mailframe.socket pass systemd-analyze verify."""
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            if REQUIRED:
                self.fail("systemd-analyze is missing (Debian package systemd)")
            raise self.skipTest("no systemd-analyze")
        units = sorted(str(p) for p in UNITS.glob("mailframe*.s*"))
        self.assertEqual([Path(u).name for u in units], ["mailframe.service", "mailframe.socket"])
        # verify wants the ExecStart program to exist: a stand-in on PATH
        bin = Path(self.mktemp()).absolute()
        bin.mkdir()
        (bin / "mailframe").symlink_to(sys.executable)
        directory = Path(self.mktemp()).absolute()
        directory.mkdir()
        for unit in units:
            text = (
                Path(unit).read_text().replace("/usr/local/bin/mailframe", str(bin / "mailframe"))
            )
            (directory / Path(unit).name).write_text(text)
        result = subprocess.run(
            [analyze, "verify", *(str(directory / Path(u).name) for u in units)],
            capture_output=True, text=True, timeout=60, check=False,
            env={**os.environ, "SYSTEMD_LOG_LEVEL": "warning"},
        )  # fmt: skip
        problems = [
            line for line in (result.stdout + result.stderr).splitlines()
            if "mailframe" in line  # not the host's own units
        ]  # fmt: skip
        self.assertEqual((result.returncode, problems), (0, []), result.stdout + result.stderr)
