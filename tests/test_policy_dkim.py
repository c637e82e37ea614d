"""
Tests for L{mailframe.policy.dkim}: dkimpy's signatures verified by our
verifier, our signatures (RSA and ed25519) verified by dkimpy's own
C{dkim.verify}, every verification result from keys the in-memory resolver
serves, and the cryptography run in the reactor's real thread pool.
"""

from __future__ import annotations

import base64
from typing import Any

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from mailframe.config import ServerConfig
from mailframe.interfaces import IMessageFilter
from mailframe.policy._dns import AsyncDNS
from mailframe.policy.dkim import (
    DKIMSigner,
    DKIMVerifier,
    fromDomain,
    inlineRunner,
    loadKey,
    threadRunner,
)
from mailframe.policy.testing import (
    NEVER,
    SERVFAIL,
    MemoryResolver,
    makeEnvelope,
    makeMessage,
    makeSession,
)

BODY = (
    b"From: Alice <alice@example.org>\r\n"
    b"To: bob@example.com\r\n"
    b"Subject: DKIM test\r\n"
    b"Date: Sat, 28 Nov 2026 12:00:00 +0000\r\n"
    b"Message-ID: <1@example.org>\r\n"
    b"\r\n"
    b"Hello Bob.\r\n"
    b".. a line with a dot\r\n"
)

_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_PEM = _RSA.private_bytes(
    serialization.Encoding.PEM,
    serialization.PrivateFormat.TraditionalOpenSSL,
    serialization.NoEncryption(),
)
RSA_PKCS8 = _RSA.private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
)
RSA_PUBLIC = base64.b64encode(
    _RSA.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
).decode()
_ED = ed25519.Ed25519PrivateKey.generate()
ED_SEED = base64.b64encode(
    _ED.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
)
ED_PEM = _ED.private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
)
ED_PUBLIC = base64.b64encode(
    _ED.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
).decode()

KEYS = {
    "rsa._domainkey.example.org": f"v=DKIM1; k=rsa; p={RSA_PUBLIC}",
    "ed._domainkey.example.org": f"v=DKIM1; k=ed25519; p={ED_PUBLIC}",
    "broken._domainkey.example.org": "v=DKIM1; k=rsa; p=bm90IGEga2V5",
}


def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
    """dkimpy's dnsfunc over KEYS."""
    record = KEYS.get(name.decode().rstrip("."))
    return record.encode() if record else None


def resolver() -> MemoryResolver:
    r = MemoryResolver({"temp._domainkey.example.org": SERVFAIL})
    r.failures["slow._domainkey.example.org"] = NEVER
    for name, record in KEYS.items():
        r.add(name, "TXT", record)
    return r


def dkimpySigned(selector: bytes, key: bytes, body: bytes = BODY, **kw: Any) -> bytes:
    """A message signed by dkimpy itself."""
    algorithm = b"ed25519-sha256" if selector == b"ed" else b"rsa-sha256"
    signature = dkim.sign(body, selector, b"example.org", key, signature_algorithm=algorithm, **kw)
    return signature + body


class VerifierTests(SynchronousTestCase):
    """DKIMVerifier over keys served by the in-memory resolver."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.verifier = DKIMVerifier(AsyncDNS(resolver(), self.clock, timeout=5), inlineRunner)

    def verify(self, data: bytes) -> list[Any]:
        d = self.verifier.verify(makeMessage(data))
        self.clock.advance(6)
        return self.successResultOf(d)

    def test_verifyObject(self) -> None:
        """DKIMVerifier provides IMessageFilter."""
        self.assertTrue(verifyObject(IMessageFilter, self.verifier))

    def test_dkimpyRSA(self) -> None:
        """An RSA signature made by dkimpy passes, with d=, s= and the start of b=."""
        [result] = self.verify(dkimpySigned(b"rsa", RSA_PEM))
        self.assertEqual(
            (result.result, result.domain, result.selector), ("pass", "example.org", "rsa")
        )
        self.assertEqual(len(result.headerB), 8)
        self.assertEqual(result.algorithm, "rsa-sha256")

    def test_dkimpyEd25519(self) -> None:
        """An ed25519 signature made by dkimpy passes (RFC 8463)."""
        [result] = self.verify(dkimpySigned(b"ed", ED_SEED))
        self.assertEqual((result.result, result.algorithm), ("pass", "ed25519-sha256"))

    def test_simpleCanonicalization(self) -> None:
        """A simple/simple signature passes too."""
        signed = dkimpySigned(b"rsa", RSA_PEM, canonicalize=(b"simple", b"simple"))
        self.assertEqual(self.verify(signed)[0].result, "pass")

    def test_bodyChanged(self) -> None:
        """A body changed after signing fails (body hash mismatch)."""
        signed = dkimpySigned(b"rsa", RSA_PEM).replace(b"Hello Bob", b"Hello Eve")
        [result] = self.verify(signed)
        self.assertEqual(result.result, "fail")
        self.assertIn("body hash", result.reason)

    def test_headerChanged(self) -> None:
        """A signed header changed after signing fails."""
        signed = dkimpySigned(b"ed", ED_SEED).replace(b"Subject: DKIM test", b"Subject: Win")
        self.assertEqual(self.verify(signed)[0].result, "fail")

    def test_noKey(self) -> None:
        """A selector with no key published is a permerror."""
        signed = dkimpySigned(b"missing", RSA_PEM)
        self.assertEqual(self.verify(signed)[0].result, "permerror")

    def test_badKey(self) -> None:
        """A key record that is not a key is a permerror."""
        self.assertEqual(self.verify(dkimpySigned(b"broken", RSA_PEM))[0].result, "permerror")

    def test_temperror(self) -> None:
        """SERVFAIL or a timeout on the key is a temperror."""
        self.assertEqual(self.verify(dkimpySigned(b"temp", RSA_PEM))[0].result, "temperror")
        self.assertEqual(self.verify(dkimpySigned(b"slow", RSA_PEM))[0].result, "temperror")

    def test_unreadableSignature(self) -> None:
        """A DKIM-Signature whose tags cannot be read is neutral."""
        [result] = self.verify(b"DKIM-Signature: garbage without tags\r\n" + BODY)
        self.assertEqual(result.result, "neutral")

    def test_unsigned(self) -> None:
        """An unsigned message has no results (and no lookups)."""
        self.assertEqual(self.verify(BODY), [])

    def test_twoSignatures(self) -> None:
        """Each signature gets its own result, in order."""
        once = dkimpySigned(b"ed", ED_SEED)
        twice = dkim.sign(once, b"rsa", b"example.org", RSA_PEM) + once
        results = self.verify(twice)
        self.assertEqual(
            [(r.selector, r.result) for r in results], [("rsa", "pass"), ("ed", "pass")]
        )

    def test_filterRecords(self) -> None:
        """As a filter it records the results and never refuses."""
        envelope = makeEnvelope("alice@example.org", "bob@example.com")
        message = makeMessage(dkimpySigned(b"rsa", RSA_PEM).replace(b"Bob.", b"Eve."))
        self.assertIsNone(
            self.successResultOf(self.verifier.filterMessage(makeSession(), envelope, message))
        )
        self.assertEqual(envelope.dkim[0].result, "fail")

    def test_trustedNotVerified(self) -> None:
        """Mail of an authenticated session is not verified."""
        envelope = makeEnvelope()
        message = makeMessage(dkimpySigned(b"rsa", RSA_PEM))
        self.assertIsNone(
            self.verifier.filterMessage(makeSession(authenticated="u"), envelope, message)
        )
        self.assertIsNone(envelope.dkim)


class SignerTests(SynchronousTestCase):
    """DKIMSigner: our signatures, checked by dkimpy's own dkim.verify."""

    def sign(self, key: bytes, selector: str, session: Any = None, data: bytes = BODY) -> bytes:
        signer = DKIMSigner("example.org", selector, key, runner=inlineRunner)
        message = makeMessage(data)
        session = session or makeSession(authenticated="alice")
        self.assertIsNone(self.successResultOf(defer.maybeDeferred(
            signer.filterMessage, session, makeEnvelope(), message
        )))  # fmt: skip
        return bytes(message.getvalue())

    def test_verifyObject(self) -> None:
        """DKIMSigner provides IMessageFilter."""
        signer = DKIMSigner("example.org", "rsa", RSA_PEM, runner=inlineRunner)
        self.assertTrue(verifyObject(IMessageFilter, signer))

    def test_rsaVerifiedByDkimpy(self) -> None:
        """An RSA signature of ours verifies with dkimpy's dkim.verify."""
        signed = self.sign(RSA_PEM, "rsa")
        self.assertTrue(
            signed.startswith(b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed;")
        )
        self.assertTrue(dkim.verify(signed, dnsfunc=dnsfunc))

    def test_pkcs8Key(self) -> None:
        """A PKCS#8 RSA key (openssl genpkey's) is converted for dkimpy."""
        self.assertTrue(dkim.verify(self.sign(RSA_PKCS8, "rsa"), dnsfunc=dnsfunc))

    def test_ed25519VerifiedByDkimpy(self) -> None:
        """An ed25519 signature of ours (PEM or dkimpy's seed) verifies with dkimpy."""
        self.assertTrue(dkim.verify(self.sign(ED_PEM, "ed"), dnsfunc=dnsfunc))
        self.assertTrue(dkim.verify(self.sign(ED_SEED, "ed"), dnsfunc=dnsfunc))

    def test_ourSignatureOurVerifier(self) -> None:
        """Our verifier passes our signature."""
        clock = Clock()
        verifier = DKIMVerifier(AsyncDNS(resolver(), clock), inlineRunner)
        results = self.successResultOf(verifier.verify(makeMessage(self.sign(ED_PEM, "ed"))))
        self.assertEqual([r.result for r in results], ["pass"])

    def test_subdomainSigned(self) -> None:
        """Mail From: a subdomain of the signing domain is signed too."""
        data = BODY.replace(b"alice@example.org", b"alice@news.example.org")
        self.assertTrue(self.sign(RSA_PEM, "rsa", data=data).startswith(b"DKIM-Signature"))

    def test_otherDomainNotSigned(self) -> None:
        """Mail From: another domain (or a lookalike) is not signed."""
        for sender in (b"alice@example.net", b"alice@badexample.org"):
            data = BODY.replace(b"alice@example.org", sender)
            self.assertEqual(self.sign(RSA_PEM, "rsa", data=data), data)

    def test_inboundNotSigned(self) -> None:
        """Mail of an untrusted session is not signed unless signAll."""
        self.assertEqual(self.sign(RSA_PEM, "rsa", session=makeSession()), BODY)
        config = ServerConfig(hostname="mx.example.com", relayNetworks=("192.0.2.0/24",))
        signer = DKIMSigner("example.org", "rsa", RSA_PEM, runner=inlineRunner, config=config)
        self.assertTrue(signer.wants(makeSession("192.0.2.1"), makeMessage(BODY)))
        signer = DKIMSigner("example.org", "rsa", RSA_PEM, runner=inlineRunner, signAll=True)
        self.assertTrue(signer.wants(makeSession("203.0.113.1"), makeMessage(BODY)))

    def test_loadKey(self) -> None:
        """Keys are read as RSA or ed25519; anything else is a ValueError."""
        self.assertEqual(loadKey(RSA_PKCS8)[0], b"rsa-sha256")
        self.assertEqual(loadKey(ED_PEM), (b"ed25519-sha256", ED_SEED))
        self.assertEqual(loadKey(ED_SEED + b"\n")[0], b"ed25519-sha256")
        for bad in (b"not a key", b"-----BEGIN PRIVATE KEY-----\nxx\n-----END PRIVATE KEY-----"):
            self.assertRaises(ValueError, loadKey, bad)

    def test_fromDomain(self) -> None:
        """The From: domain, or None for no From: or several addresses."""
        self.assertEqual(fromDomain(makeMessage(BODY).headers()), "example.org")
        two = b"From: a@x.example, b@y.example\r\n\r\n"
        self.assertIsNone(fromDomain(makeMessage(two).headers()))
        self.assertIsNone(fromDomain(makeMessage(b"To: a@x.example\r\n\r\n").headers()))


class ThreadTests(TestCase):
    """The default runner: the reactor's thread pool, really."""

    def test_signAndVerifyInThreads(self) -> None:
        """Signing and verifying through threadRunner give the same results."""
        from twisted.internet import reactor

        run = threadRunner(reactor)
        signer = DKIMSigner("example.org", "rsa", RSA_PEM, runner=run)
        verifier = DKIMVerifier(AsyncDNS(resolver(), reactor), run)
        message = makeMessage(BODY)

        def signed(_: object) -> Any:
            return verifier.verify(makeMessage(message.getvalue()))

        d = signer.filterMessage(makeSession(authenticated="a"), makeEnvelope(), message)
        d.addCallback(signed)
        d.addCallback(lambda results: self.assertEqual([r.result for r in results], ["pass"]))
        return d
