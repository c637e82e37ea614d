"""
DKIM (RFC 6376) with dkimpy: L{DKIMVerifier} checks the signatures of
inbound mail and records a L{DKIMResult} per signature; L{DKIMSigner}
signs outbound mail of one domain with one selector and key (RSA or
ed25519, RFC 8463).  Both are L{IMessageFilter}s.

How the reactor never blocks: the public keys are fetched first, in the
reactor thread, with twisted.names (one TXT lookup per signature, all at
once, each with a timeout).  The cryptography (hashing the whole message,
RSA or ed25519) then runs through a C{runner}: by default the reactor's
DKIM thread pool (L{mailframe._threads.DKIM}, bounded, apart from the disk
and password-hashing pools), where dkimpy gets a C{dnsfunc} that only reads
the keys already fetched, so no thread ever waits on DNS either.  Tests
pass a runner that calls in place.

The message is read in the thread through a reader made in the reactor
thread (L{mailframe.message.Message.chunks}), which keeps what it reads:
the session may end, and the server close the message, while the thread
runs, and the thread still reads this message whole.

Results: C{pass}; C{fail} (the signature or body hash does not verify);
C{permerror} (no key published, a bad key, a key too small, a malformed
signature); C{temperror} (the key lookup failed for now); C{neutral} (a
signature whose tags cannot be read).

Owns: verifying, signing, and loading keys.  Must not: block the reactor
thread, or look anything up from a worker thread.
"""

from __future__ import annotations

import base64
import email.message
import email.utils
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import dkim as _dkim
from dkim.util import parse_tag_value
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from mailframe.envelope import Envelope, SessionInfo
from mailframe.interfaces import IMessageFilter
from mailframe.policy import isTrusted
from mailframe.policy._dns import AsyncDNS, DNSTemporaryError
from mailframe.results import DKIMResult

if TYPE_CHECKING:
    from mailframe.config import ServerConfig
    from mailframe.message import Message
    from mailframe.reply import Reply

__all__ = [
    "DKIMSigner",
    "DKIMVerifier",
    "Runner",
    "fromDomain",
    "inlineRunner",
    "loadKey",
    "threadRunner",
]

log = Logger(namespace="mailframe.dkim")
_quiet = logging.getLogger("mailframe.dkimpy")  # dkimpy logs through the stdlib
_quiet.addHandler(logging.NullHandler())
_quiet.propagate = False

Runner = Callable[..., "defer.Deferred[Any]"]


def threadRunner(reactor: Any) -> Runner:
    """Run a function in the reactor's DKIM thread pool."""
    from mailframe._threads import DKIM, threadPools

    pools = threadPools(reactor)

    def run(f: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        return pools.run(DKIM, f, *args)

    return run


def _contents(message: Message) -> Callable[[], bytes]:
    """A reader of the message made now, in the reactor thread; call it in any thread."""
    chunks = message.chunks()
    return lambda: b"".join(chunks)


def inlineRunner(f: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
    """Run a function now, in this thread (tests, tiny messages)."""
    return defer.maybeDeferred(f, *args)


def fromDomain(headers: email.message.Message) -> str | None:
    """The domain of the single RFC5322.From address, lowercase; None if not exactly one."""
    values = headers.get_all("From") or []
    if len(values) != 1:
        return None
    addresses = email.utils.getaddresses([str(values[0])])
    domains = {a.rpartition("@")[2].strip().rstrip(".").lower() for _, a in addresses if "@" in a}
    if len(domains) != 1:
        return None
    domain = domains.pop()
    return domain or None


def _keyName(selector: str, domain: str) -> str:
    return f"{selector}._domainkey.{domain}".rstrip(".").lower()


# -- verifying ---------------------------------------------------------------------


def _signatures(headers: email.message.Message, limit: int) -> list[dict[str, str] | None]:
    """The tags of each DKIM-Signature (None for one that cannot be read)."""
    out: list[dict[str, str] | None] = []
    for value in (headers.get_all("DKIM-Signature") or [])[:limit]:
        try:
            tags = parse_tag_value(str(value).encode("utf-8", "replace"))
            out.append({k.decode(): v.decode("utf-8", "replace") for k, v in tags.items()})
        except Exception:
            out.append(None)
    return out


def _verifyAll(
    data: bytes,
    signatures: Sequence[dict[str, str] | None],
    keys: dict[str, bytes | DNSTemporaryError | None],
    minKeyBits: int,
) -> list[DKIMResult]:
    """Verify each signature (in a worker thread): no DNS, keys are given."""
    results = []
    verifier: Any = None
    for i, tags in enumerate(signatures):
        if tags is None or "d" not in tags or "s" not in tags:
            results.append(DKIMResult("neutral", "", "", reason="unreadable signature"))
            continue
        domain, selector = tags["d"].lower(), tags["s"]
        headerB = "".join(tags.get("b", "").split())[:8]
        algorithm = tags.get("a", "")

        def result(outcome: str, reason: str = "") -> DKIMResult:
            return DKIMResult(outcome, domain, selector, headerB, algorithm, reason)  # noqa: B023

        name = _keyName(selector, domain)
        key = keys.get(name)
        if isinstance(key, DNSTemporaryError):
            results.append(result("temperror", "key lookup failed"))
            continue
        if not key:
            results.append(result("permerror", "no key for signature"))
            continue
        try:
            _dkim.evaluate_pk(name.encode(), key)
        except Exception as e:
            results.append(result("permerror", f"bad key: {e}"[:100]))
            continue
        if verifier is None:
            verifier = _dkim.DKIM(data, logger=_quiet, minkey=minKeyBits)

        def dnsfunc(qname: bytes | str, timeout: float = 5) -> bytes | None:
            text = qname.decode() if isinstance(qname, bytes) else str(qname)
            found = keys.get(text.rstrip(".").lower())
            return found if isinstance(found, bytes) else None

        try:
            good = verifier.verify(idx=i, dnsfunc=dnsfunc)
        except _dkim.ValidationError as e:
            results.append(result("fail", str(e)[:100]))
            continue
        except _dkim.DKIMException as e:
            results.append(result("permerror", str(e)[:100]))
            continue
        results.append(result("pass") if good else result("fail", "signature did not verify"))
    return results


@implementer(IMessageFilter)
class DKIMVerifier:
    """
    Verifies up to C{maxSignatures} DKIM signatures of each inbound message
    and records the results (L{DKIMResult}s) in C{envelope.dkim}.
    It never refuses a message: DMARC decides what a failure means.

    @param dns: an L{AsyncDNS}.
    @param runner: where the cryptography runs (L{threadRunner} by default).
    @param config: the L{ServerConfig}: trusted sessions are not checked.
    """

    def __init__(
        self,
        dns: AsyncDNS,
        runner: Runner | None = None,
        config: ServerConfig | None = None,
        maxSignatures: int = 5,
        minKeyBits: int = 1024,
    ) -> None:
        self.dns = dns
        self.runner = runner or threadRunner(dns.clock)
        self.config = config
        self.maxSignatures = maxSignatures
        self.minKeyBits = minKeyBits

    def verify(self, message: Message) -> defer.Deferred[list[DKIMResult]]:
        """Verify the signatures of a L{Message}; fires a list (empty: unsigned)."""
        signatures = _signatures(message.headers(), self.maxSignatures)
        if not signatures:
            return defer.succeed([])
        names = sorted(
            {_keyName(t["s"], t["d"]) for t in signatures if t and "s" in t and "d" in t}
        )
        keys: dict[str, bytes | DNSTemporaryError | None] = {}

        def got(found: list[bytes], name: str) -> None:
            keys[name] = found[0] if found else None

        def failed(reason: Any, name: str) -> None:
            reason.trap(DNSTemporaryError)
            keys[name] = reason.value

        lookups = [
            self.dns.txt(n).addCallbacks(got, failed, callbackArgs=(n,), errbackArgs=(n,))
            for n in names
        ]

        def verifyAll(_: object) -> defer.Deferred[list[DKIMResult]]:
            if getattr(message, "closed", False):  # the session ended during the lookups
                return defer.succeed([])
            data = _contents(message)
            return self.runner(lambda: _verifyAll(data(), signatures, keys, self.minKeyBits))

        return defer.gatherResults(lookups, consumeErrors=True).addCallback(verifyAll)

    def results(self, envelope: Envelope, message: Message) -> defer.Deferred[list[DKIMResult]]:
        """The recorded results, verifying first if nothing has recorded them."""
        if envelope.dkim is not None:
            return defer.succeed(list(envelope.dkim))

        def record(results: list[DKIMResult]) -> list[DKIMResult]:
            envelope.dkim = tuple(results)
            return results

        return self.verify(message).addCallback(record)

    def filterMessage(
        self, session: SessionInfo, envelope: Envelope, message: Message
    ) -> defer.Deferred[Reply | None] | None:
        """IMessageFilter: verify and record; never refuses."""
        if isTrusted(session, self.config):
            return None
        return self.results(envelope, message).addCallback(lambda _: None)


# -- signing -------------------------------------------------------------------------


def loadKey(data: bytes) -> tuple[bytes, bytes]:
    """
    A private key for dkimpy from a key file's bytes: C{(algorithm, key)}.
    Accepts RSA keys in PEM (PKCS#1 or PKCS#8), ed25519 keys in PEM
    (PKCS#8), and dkimpy's ed25519 form (the base64 32-octet seed).

    @raise ValueError: for anything else.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    text = data.strip()
    if b"PRIVATE KEY" in text:
        try:
            key = serialization.load_pem_private_key(text, password=None)
        except (ValueError, TypeError) as e:
            raise ValueError(f"cannot read the private key: {e}") from None
        if isinstance(key, rsa.RSAPrivateKey):
            if key.key_size < 1024:
                raise ValueError(f"an RSA key of {key.key_size} bits is too small (1024 at least)")
            pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
            return b"rsa-sha256", pem
        if isinstance(key, ed25519.Ed25519PrivateKey):
            raw = key.private_bytes(
                serialization.Encoding.Raw,
                serialization.PrivateFormat.Raw,
                serialization.NoEncryption(),
            )
            return b"ed25519-sha256", base64.b64encode(raw)
        raise ValueError("the key is neither RSA nor ed25519")
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise ValueError("not a PEM private key, nor a base64 ed25519 seed of 32 octets")
    return b"ed25519-sha256", text


_SIGNED = (
    "From", "Sender", "Reply-To", "Subject", "Date", "Message-ID", "To", "Cc",
    "MIME-Version", "Content-Type", "Content-Transfer-Encoding", "In-Reply-To", "References",
)  # fmt: skip


@implementer(IMessageFilter)
class DKIMSigner:
    """
    Signs outbound mail whose From: domain is C{domain} or one of its
    subdomains, with C{selector} and the private key C{key} (the bytes of a
    key file, see L{loadKey}).  Outbound means a trusted session
    (authenticated, or a client in the relay networks) unless C{signAll}.
    Canonicalization relaxed/relaxed; the common header fields are signed
    (those present, From always).
    """

    def __init__(
        self,
        domain: str,
        selector: str,
        key: bytes,
        runner: Runner | None = None,
        config: ServerConfig | None = None,
        signAll: bool = False,
        clock: Any = None,
    ) -> None:
        self.domain = domain.rstrip(".").lower()
        self.selector = selector
        if not self.domain or not selector:
            raise ValueError("give a domain and a selector")
        self.algorithm, self.key = loadKey(key)
        if runner is None:
            if clock is None:
                raise ValueError("give a runner or the reactor (clock)")
            runner = threadRunner(clock)
        self.runner = runner
        self.config = config
        self.signAll = signAll

    def wants(self, session: SessionInfo, message: Message) -> bool:
        """True if this message is ours to sign."""
        if not self.signAll and not isTrusted(session, self.config):
            return False
        domain = fromDomain(message.headers())
        return domain is not None and (domain == self.domain or domain.endswith("." + self.domain))

    def sign(self, data: bytes) -> bytes:
        """The DKIM-Signature field (name, value, CRLF) for a message (any thread)."""
        present = {
            line.split(b":", 1)[0].strip().lower()
            for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
            if line[:1] not in (b" ", b"\t") and b":" in line
        }
        include = [h.lower().encode() for h in _SIGNED if h.lower().encode() in present]
        if b"from" not in include:
            include.append(b"from")
        return _dkim.sign(
            data,
            self.selector.encode(),
            self.domain.encode(),
            self.key,
            signature_algorithm=self.algorithm,
            canonicalize=(b"relaxed", b"relaxed"),
            include_headers=include,
            logger=_quiet,
        )

    def filterMessage(
        self, session: SessionInfo, envelope: Envelope, message: Message
    ) -> defer.Deferred[Reply | None] | None:
        """IMessageFilter: prepend a DKIM-Signature to outbound mail of our domain."""
        if not self.wants(session, message):
            return None
        data = _contents(message)
        d = self.runner(lambda: self.sign(data()))
        return d.addCallback(self._prepend, message, session)

    def _prepend(self, field: bytes, message: Message, session: SessionInfo) -> None:
        name, _, value = field.decode("ascii").partition(":")
        message.prependHeader(name, value.strip(" ").removesuffix("\r\n"))
        log.debug(
            "{id} signed with DKIM d={domain} s={selector}",
            id=session.sessionID,
            domain=self.domain,
            selector=self.selector,
        )
