"""
testssl.sh (Debian's package) against mailframe over 127.0.0.1: the whole
default run on a STARTTLS listener and the client simulations on an
implicit-TLS listener.  Every simulated client whose TLS stack has TLS 1.2
connects (TLS 1.2 stays the floor: the stacks without it are named below and
must fail), and no finding is rated MEDIUM or worse except those about the
test certificate itself (its trust chain, name and revocation information).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Generator
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, TestCase

from mailframe.backends.memory import MemoryBackend
from mailframe.config import ServerConfig
from mailframe.extensions import defaultExtensions
from mailframe.extensions.starttls import StartTLS
from mailframe.server import SMTPServerFactory
from mailframe.server.tls import CertificatePair, ServerTLS, implicitTLS
from tests._certs import TestCA
from tests.interop._support import HOST, AcceptLocal, RunningServer, _shutdown

TESTSSL = shutil.which("testssl") or shutil.which("testssl.sh")
_TIMEOUT = shutil.which("timeout") or "/usr/bin/timeout"

PRE_TLS12 = frozenset(
    {"ie_6_xp", "ie_7_vista", "ie_8_win7", "ie_8_xp", "java_6u45", "java_7u25", "android_23",
     "android_403", "android_41", "android_442", "safari_51_osx_1075"}
)  # fmt: skip
"""testssl's simulated clients whose stacks (as simulated) offer nothing newer than TLS 1.1."""

SEVERE = frozenset({"MEDIUM", "HIGH", "CRITICAL"})


def _findings(path: str) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)  # type: ignore[no-any-return]


class TestSSLTests(TestCase):
    timeout = 400

    def setUp(self) -> None:
        if TESTSSL is None:
            if os.environ.get("MAILFRAME_REQUIRE_INTEROP"):
                self.fail("testssl.sh is not installed (Debian package testssl.sh)")
            raise SkipTest("testssl.sh is not installed")
        self.ca = TestCA(self.mktemp())
        issued = self.ca.issue("server", "mx.test", "localhost", HOST)
        tls = ServerTLS([CertificatePair(issued.fullchain, issued.privkey)])
        self.ports = {}
        for kind in ("starttls", "implicit"):
            extensions = [*defaultExtensions(1 << 20)]
            if kind == "starttls":
                extensions.append(StartTLS(tls))
            backend = MemoryBackend()
            factory = SMTPServerFactory(
                ServerConfig(hostname="mx.test", localDomains=frozenset({"example.com"})),  # type: ignore[arg-type]
                backend, [AcceptLocal()], extensions=extensions, clock=reactor,  # type: ignore[arg-type]
            )  # fmt: skip
            listening: Any = implicitTLS(tls, factory) if kind == "implicit" else factory
            port = reactor.listenTCP(0, listening, interface=HOST)  # type: ignore[attr-defined]
            self.addCleanup(_shutdown, RunningServer(factory, backend, port))
            self.ports[kind] = port.getHost().port

    def runTestssl(self, jsonFile: str, *args: str) -> defer.Deferred[Any]:
        argv = ["-s", "KILL", "360", TESTSSL, "--quiet", "--color", "0", "--warnings", "batch",
                "--jsonfile", jsonFile, *args]  # fmt: skip
        env = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "HOME": self.mktemp(), "LANG": "C"}
        os.mkdir(env["HOME"])
        return getProcessOutputAndValue(_TIMEOUT, argv, env=env, reactor=reactor)

    def checkSimulations(self, findings: list[dict[str, Any]]) -> None:
        simulations = {
            f["id"].removeprefix("clientsimulation-"): f["finding"]
            for f in findings
            if f["id"].startswith("clientsimulation-")
        }
        self.assertGreater(len(simulations), 10, simulations)
        failed = {name for name, finding in simulations.items() if "No connection" in finding}
        self.assertEqual(failed - PRE_TLS12, set(), simulations)
        for name in failed & PRE_TLS12:  # and the floor holds
            self.assertIn("No connection", simulations[name])
        for name, finding in simulations.items():
            if name not in failed:
                self.assertRegex(finding, r"TLSv1\.[23] ", name)

    @defer.inlineCallbacks
    def test_starttlsAndImplicit(self) -> Generator[Any, Any, None]:
        """Full run on STARTTLS, client simulations on implicit TLS, both at once."""
        starttls, implicit = self.mktemp() + ".json", self.mktemp() + ".json"
        results = yield defer.gatherResults([
            self.runTestssl(starttls, "--starttls", "smtp", f"{HOST}:{self.ports['starttls']}"),
            self.runTestssl(implicit, "-c", f"{HOST}:{self.ports['implicit']}"),
        ])  # fmt: skip
        for (out, err, code), path in zip(results, (starttls, implicit), strict=True):
            self.assertTrue(os.path.exists(path), (code, out[-2000:], err[-2000:]))
        findings = _findings(starttls)
        severe = [
            (f["severity"], f["id"], f["finding"])
            for f in findings
            if f["severity"] in SEVERE and not f["id"].startswith("cert_")
        ]
        self.assertEqual(severe, [])
        self.checkSimulations(findings)
        self.checkSimulations(_findings(implicit))
