"""
Private DNS for the outbound TLS tests, in a temporary directory, on
127.0.0.1 only: a zone signed in the test (ldns-keygen, ldns-signzone),
served by NSD, and a validating unbound with that zone's key as its trust
anchor and NSD as the zone's stub, so that the relay's resolver (pointed
at unbound) gets answers with the AD bit, as from a real validating
resolver.  Other zones may be served unsigned (unbound treats them as
insecure) or signed and then altered (bogus: unbound answers SERVFAIL).

Blocking helpers, for the test's set-up (each wait bounded).  A missing
program is L{SkipTest}, or a failure when MAILFRAME_REQUIRE_INTEROP=1.
Processes are stopped by the id of the process the helper started.

Owns: nothing of mailframe.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.interop._mailpeers import (
    HOST,
    START_TIMEOUT,
    freePort,
    stopProcess,
    unavailable,
    waitFor,
)

__all__ = ["PrivateDNS", "Zone"]

NSD = shutil.which("nsd") or "/usr/sbin/nsd"
UNBOUND = shutil.which("unbound") or "/usr/sbin/unbound"
KEYGEN = shutil.which("ldns-keygen") or "/usr/bin/ldns-keygen"
SIGNZONE = shutil.which("ldns-signzone") or "/usr/bin/ldns-signzone"
DIG = shutil.which("dig") or "/usr/bin/dig"
_COMMAND_TIMEOUT = 60


def _run(args: Sequence[str], cwd: Path) -> str:
    done = subprocess.run(args, cwd=cwd, capture_output=True, timeout=_COMMAND_TIMEOUT,
                          check=False)  # fmt: skip
    if done.returncode != 0:
        raise AssertionError(f"{args[0]} failed: {done.stderr.decode(errors='replace')}")
    return done.stdout.decode()


@dataclass
class Zone:
    """
    A zone: C{origin} (no trailing dot), C{records} (zone-file lines
    relative to the origin), C{signed}; C{corrupt}, record lines whose
    signed form is altered after signing (their RRSIGs then fail).
    """

    origin: str
    records: list[str]
    signed: bool = True
    corrupt: list[str] = field(default_factory=list)
    anchor: str | None = None  # the key file, once signed


class PrivateDNS:
    """NSD serving C{zones} and a validating unbound in front of it, in C{directory}."""

    def __init__(self, directory: Path, zones: Sequence[Zone]) -> None:
        for program, package in ((NSD, "nsd"), (UNBOUND, "unbound"), (KEYGEN, "ldnsutils"),
                                 (SIGNZONE, "ldnsutils")):  # fmt: skip
            if not Path(program).exists():
                raise unavailable(f"{program} is missing (Debian package {package})")
        self.directory = directory
        self.zones = list(zones)
        self.nsdPort = freePort()
        self.port = freePort()
        self._processes: list[subprocess.Popen[bytes]] = []
        # in every zone: a record no other instance serves, so that a start
        # can tell its own servers from another test's on a reused port
        self.token = uuid.uuid4().hex

    # -- the zones ---------------------------------------------------------------------

    def _writeZone(self, zone: Zone) -> Path:
        origin = zone.origin + "."
        lines = [
            f"$ORIGIN {origin}",
            "$TTL 60",
            f"@ IN SOA ns.{origin} hostmaster.{origin} 1 3600 600 86400 60",
            f"@ IN NS ns.{origin}",
            "ns IN A 127.0.0.1",
            f'{_MARKER} IN TXT "{self.token}"',
            *zone.records,
        ]
        path = self.directory / f"{zone.origin}.zone"
        path.write_text("\n".join(lines) + "\n")
        if not zone.signed:
            return path
        ksk = _run([KEYGEN, "-a", "ECDSAP256SHA256", "-k", origin], self.directory).strip()
        zsk = _run([KEYGEN, "-a", "ECDSAP256SHA256", origin], self.directory).strip()
        _run([SIGNZONE, "-n", str(path), zsk, ksk], self.directory)
        signed = Path(f"{path}.signed")
        zone.anchor = str(self.directory / f"{ksk}.key")
        if zone.corrupt:
            text = signed.read_text()
            for line in zone.corrupt:
                text = _alter(text, line)
            signed.write_text(text)
        return signed

    # -- the servers -------------------------------------------------------------------

    def start(self) -> None:
        """
        Sign the zones and start NSD and unbound.  freePort() only finds a
        port free for now: another test (trial --jobs) may take it before
        NSD or unbound binds it, and that server would then answer in its
        place.  So each start waits for this instance's own marker record,
        and a server that exits (its port taken) is started again, on new
        ports, at most three times.
        """
        files = {zone.origin: self._writeZone(zone) for zone in self.zones}
        for attempt in range(3):
            try:
                self._startServers(files)
                return
            except _Exited:
                self.stop()
                if attempt == 2:
                    raise
                self.nsdPort, self.port = freePort(), freePort()

    def _startServers(self, files: dict[str, Path]) -> None:
        nsdConf = self.directory / "nsd.conf"
        nsdConf.write_text(
            "server:\n"
            f"  ip-address: {HOST}@{self.nsdPort}\n"
            "  do-ip6: no\n  server-count: 1\n  username: \"\"\n  chroot: \"\"\n"
            f"  zonesdir: \"{self.directory}\"\n  database: \"\"\n"
            f"  pidfile: \"{self.directory}/nsd.pid\"\n"
            f"  xfrdfile: \"{self.directory}/xfrd.state\"\n"
            f"  zonelistfile: \"{self.directory}/zone.list\"\n"
            f"  xfrdir: \"{self.directory}\"\n"
            f"  logfile: \"{self.directory}/nsd.log\"\n  verbosity: 1\n"
            "remote-control:\n  control-enable: no\n"
            + "".join(f"zone:\n  name: \"{o}\"\n  zonefile: \"{p}\"\n" for o, p in files.items())
        )  # fmt: skip
        self._spawn([NSD, "-d", "-c", str(nsdConf)], "nsd.out")
        waitFor(lambda: self._answers(self.nsdPort, norec=True), START_TIMEOUT,
                "nsd to answer")  # fmt: skip
        anchors = "".join(f'  trust-anchor-file: "{z.anchor}"\n' for z in self.zones if z.anchor)
        insecure = "".join(f"  domain-insecure: \"{z.origin}\"\n" for z in self.zones
                           if not z.signed)  # fmt: skip
        # unbound answers special-use names (test., invalid. ...) itself unless told not to
        tops = sorted({z.origin.rsplit(".", 1)[-1] for z in self.zones})
        insecure += "".join(f'  local-zone: "{t}." nodefault\n' for t in tops)
        stubs = "".join(
            f'stub-zone:\n  name: "{z.origin}"\n  stub-addr: {HOST}@{self.nsdPort}\n'
            for z in self.zones
        )
        unboundConf = self.directory / "unbound.conf"
        unboundConf.write_text(
            "server:\n"
            f"  interface: {HOST}\n  port: {self.port}\n  do-ip6: no\n"
            "  do-daemonize: no\n  use-syslog: no\n  username: \"\"\n  chroot: \"\"\n"
            f"  directory: \"{self.directory}\"\n  pidfile: \"{self.directory}/unbound.pid\"\n"
            f"  logfile: \"{self.directory}/unbound.log\"\n  verbosity: 1\n"
            "  do-not-query-localhost: no\n  module-config: \"validator iterator\"\n"
            "  access-control: 127.0.0.0/8 allow\n  num-threads: 1\n"
            "  val-log-level: 2\n  harden-dnssec-stripped: yes\n"
            "  outgoing-range: 64\n  so-reuseport: no\n"
            f"{anchors}{insecure}"
            "remote-control:\n  control-enable: no\n"
            f"{stubs}"
        )  # fmt: skip
        _run([UNBOUND + "-checkconf", str(unboundConf)], self.directory)
        self._spawn([UNBOUND, "-d", "-c", str(unboundConf)], "unbound.out")
        waitFor(lambda: self._answers(self.port), START_TIMEOUT, "unbound to answer")

    def _spawn(self, args: list[str], output: str) -> None:
        with open(self.directory / output, "wb") as out:
            process = subprocess.Popen(args, cwd=self.directory, stdout=out,
                                       stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        self._processes.append(process)

        if process.poll() is not None:
            log = (self.directory / output).read_text(errors="replace")
            raise _Exited(f"{args[0]} exited ({process.returncode}): {log[-2000:]}")

    def _answers(self, port: int, norec: bool = False) -> bool:
        """True once C{port} gives this instance's marker (its own server answers)."""
        for process in self._processes:
            if process.poll() is not None:
                raise _Exited(f"{process.args!r} exited ({process.returncode})")
        name = f"{_MARKER}.{self.zones[0].origin}"
        if not Path(DIG).exists():
            return _udpAnswers(port, name, self.token)
        args = [DIG, f"@{HOST}", "-p", str(port), "+time=1", "+tries=1", "+short", name, "TXT"]
        if norec:
            args.insert(-2, "+norec")
        try:
            done = subprocess.run(args, capture_output=True, timeout=5, check=False)
        except subprocess.TimeoutExpired:
            return False
        return self.token.encode() in done.stdout

    def stop(self) -> None:
        for process in reversed(self._processes):
            stopProcess(process)
        self._processes = []

    @property
    def server(self) -> str:
        """The resolver's address, as the dns-server setting takes it."""
        return f"{HOST}:{self.port}"


_MARKER = "_mailframe-instance"


class _Exited(AssertionError):
    """A server of the start exited (most often: its port was taken meanwhile)."""


def _alter(text: str, owner: str) -> str:
    """Change the last hex digit of the TLSA data of C{owner} in a signed zone's text."""
    out = []
    for row in text.splitlines():
        words = row.split()
        if words and words[0] == owner and "TLSA" in words[1:4] and words[-1][-1:].isalnum():
            last = words[-1]
            words[-1] = last[:-1] + ("0" if last[-1] != "0" else "1")
            row = "\t".join(words)
        out.append(row)
    return "\n".join(out) + "\n"


def _udpAnswers(port: int, name: str, token: str) -> bool:  # pragma: no cover (dig in CI)
    import socket
    import struct

    query = struct.pack(">HHHHHH", 0x4D46, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        query += bytes([len(label)]) + label.encode()
    query += b"\0" + struct.pack(">HH", 16, 1)  # TXT
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(1)
        try:
            s.sendto(query, (HOST, port))
            data = s.recv(4096)
        except OSError:
            return False
    return len(data) > 12 and struct.unpack(">H", data[6:8])[0] > 0 and token.encode() in data
