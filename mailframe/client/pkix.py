"""
L{PKIXProbe}: a certificate check that never fails a session, for MTA-STS
in C{testing} mode (RFC 8461 5.2): the delivery goes on as without a
policy, and the relay reports (RFC 8460) whether the server's chain would
have passed: valid for the MX host name and chaining to a trusted CA.

Owns: the check, with cryptography's X.509 verification.  Must not: end a
session or decide a policy.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from typing import Any

from cryptography import x509

__all__ = ["PKIXProbe", "trustStore"]

_STORES: dict[int, tuple[Any, Any]] = {}
_EXPIRED = 10  # X509_V_ERR_CERT_HAS_EXPIRED


def trustStore(trustRoot: Any) -> Any:
    """
    The OpenSSL C{X509Store} of C{trustRoot} (a Twisted C{Certificate};
    None: the platform's CA file), kept: the same check as the C{verify}
    policy's handshake.
    """
    from OpenSSL import crypto

    key = id(trustRoot)
    kept = _STORES.get(key)
    if kept is not None and kept[0] is trustRoot:
        return kept[1]
    store = crypto.X509Store()
    if trustRoot is None:
        paths = ssl.get_default_verify_paths()
        store.load_locations(paths.cafile, paths.capath)
    else:
        original = getattr(trustRoot, "original", None)
        if original is None:
            raise ValueError(f"cannot read CAs from {trustRoot!r}")
        store.add_cert(original)
    _STORES[key] = (trustRoot, store)
    return store


class PKIXProbe:
    """Would a chain pass for C{hostname} with the CAs of C{trustRoot}? (L{verify})"""

    def __init__(self, hostname: str, trustRoot: Any = None) -> None:
        self.hostname = hostname.rstrip(".").lower()
        self.trustRoot = trustRoot

    def verify(self, chain: Sequence[x509.Certificate]) -> str | None:
        """None if the chain is valid for the host; else the RFC 8460 result type."""
        from OpenSSL import crypto
        from service_identity import CertificateError, VerificationError
        from service_identity.cryptography import verify_certificate_hostname

        if not chain:
            return "certificate-not-trusted"
        try:
            store = trustStore(self.trustRoot)
        except (OSError, ValueError):
            return "validation-failure"
        leaf = crypto.X509.from_cryptography(chain[0])
        untrusted = [crypto.X509.from_cryptography(c) for c in chain[1:]]
        try:
            crypto.X509StoreContext(store, leaf, untrusted).verify_certificate()
        except crypto.X509StoreContextError as e:
            code = e.errors[0] if getattr(e, "errors", None) else None
            return "certificate-expired" if code == _EXPIRED else "certificate-not-trusted"
        try:
            verify_certificate_hostname(chain[0], self.hostname)
        except (VerificationError, CertificateError, ValueError):
            return "certificate-host-mismatch"
        return None
