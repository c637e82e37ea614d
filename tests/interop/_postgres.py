"""
A private PostgreSQL cluster for the tests: C{initdb} in a temporary
directory, run as an unprivileged user (the C{postgres} system user, or
C{nobody}, when the tests run as root), listening on 127.0.0.1 and a
free port, its unix socket in that directory; never the system's
cluster.  Debian's binaries are in C{/usr/lib/postgresql/VERSION/bin}.

Blocking helpers (a test's own thread or a L{SynchronousTestCase});
every wait has a deadline (C{pg_ctl -w -t}).  A missing PostgreSQL is
L{SkipTest}, or a failure under MAILFRAME_REQUIRE_INTEROP=1 (CI).

Owns: nothing of mailframe.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.interop._mailpeers import freePort, unavailable

__all__ = ["PrivatePostgres", "postgresBinaries"]

START_TIMEOUT = 60


def postgresBinaries() -> Path | None:
    """The directory of initdb and pg_ctl (the newest Debian version), or None."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0,
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PrivatePostgres:
    """
    A cluster of its own: L{start}, L{restart} (a crash: immediate
    shutdown, then start), L{stop}; L{url} for mailframe's C{--spool}.
    """

    def __init__(self, database: str = "mail") -> None:
        binaries = postgresBinaries()
        if binaries is None:
            raise unavailable("PostgreSQL (initdb, pg_ctl) is not installed")
        self.bin = binaries
        self.database = database
        self.port = freePort()
        self.directory = Path(tempfile.mkdtemp(prefix="mailframe-pg-"))
        self.data = self.directory / "data"
        self.log = self.directory / "postgres.log"
        self.user: str | None = None
        if os.geteuid() == 0:
            for name in ("postgres", "nobody"):
                try:
                    pwd.getpwnam(name)
                except KeyError:
                    continue
                self.user = name
                break
            entry = pwd.getpwnam(self.user or "nobody")
            os.chown(self.directory, entry.pw_uid, entry.pw_gid)
        self.directory.chmod(0o700)
        self.running = False

    @property
    def url(self) -> str:
        return f"postgresql://mailframe@127.0.0.1:{self.port}/{self.database}"

    def _command(self, *args: str, timeout: float = START_TIMEOUT + 10) -> str:
        argv = list(args)
        if self.user is not None:
            argv = ["runuser", "-u", self.user, "--", *argv]
        result = subprocess.run(
            argv, capture_output=True, timeout=timeout, cwd=self.directory, check=False
        )
        if result.returncode != 0:
            raise AssertionError(
                f"{' '.join(args)} failed ({result.returncode}):\n"
                f"{result.stdout.decode(errors='replace')}{result.stderr.decode(errors='replace')}"
                f"\n{self.logText()}"
            )
        return result.stdout.decode(errors="replace")

    def logText(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def start(self) -> None:
        """initdb (the first time), start, and create the database (the first time)."""
        first = not self.data.exists()
        if first:
            self._command(
                str(self.bin / "initdb"), "-D", str(self.data), "-U", "mailframe",
                "--auth=trust", "-E", "UTF8", "--no-sync", "--no-instructions",
            )  # fmt: skip
        options = (
            f"-p {self.port} -h 127.0.0.1 -k {self.directory} -c max_connections=60 "
            "-c shared_buffers=32MB -c fsync=on -c synchronous_commit=on"
        )
        self._command(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options,
            "-w", "-t", str(START_TIMEOUT), "start",
        )  # fmt: skip
        self.running = True
        if first:
            import psycopg

            with psycopg.connect(
                f"postgresql://mailframe@127.0.0.1:{self.port}/postgres",
                autocommit=True,
                connect_timeout=10,
            ) as conn:
                conn.execute(f'CREATE DATABASE "{self.database}"')

    def stop(self, mode: str = "fast") -> None:
        """Stop it (C{fast}; C{immediate} is a crash: recovery at the next start)."""
        if not self.running:
            return
        self.running = False
        self._command(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "30",
            "stop",
        )  # fmt: skip

    def restart(self) -> None:
        """Crash it (immediate shutdown) and start it again."""
        self.stop("immediate")
        self.start()

    def cleanUp(self) -> None:
        """Stop it if it runs, and remove its directory."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)

    def connect(self):  # type: ignore[no-untyped-def]
        """A psycopg connection to the database (autocommit)."""
        import psycopg

        return psycopg.connect(self.url, autocommit=True, connect_timeout=10)
