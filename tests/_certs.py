"""
A test certificate authority made in the test (cryptography): a root, an
intermediate and server certificates signed by it, written as PEM files the
way certbot writes them (C{fullchain.pem}: the server certificate, then the
intermediate; C{privkey.pem}).

Owns: nothing of mailframe.  Must not: touch the network.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = ["TestCA", "writeKeyAndCert"]

_NOW = datetime.datetime.now(datetime.UTC)


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _pem(key: Any) -> bytes:
    return key.private_bytes(  # type: ignore[no-any-return]
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _altName(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _certPem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass
class Issued:
    """A server certificate and its files."""

    fullchain: str
    privkey: str
    certOnly: str
    combined: str
    chain: str


class TestCA:
    """A root and an intermediate CA in C{directory}; C{issue} makes server certificates."""

    def __init__(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        self.directory = directory
        self.rootKey = ec.generate_private_key(ec.SECP256R1())
        self.root = self._sign(
            _name("mailframe test root"), self.rootKey.public_key(), _name("mailframe test root"),
            self.rootKey, ca=True,
        )  # fmt: skip
        self.intermediateKey = ec.generate_private_key(ec.SECP256R1())
        self.intermediate = self._sign(
            _name("mailframe test intermediate"), self.intermediateKey.public_key(),
            self.root.subject, self.rootKey, ca=True,
        )  # fmt: skip
        self.rootFile = os.path.join(directory, "root.pem")
        with open(self.rootFile, "wb") as f:
            f.write(_certPem(self.root))

    def _sign(
        self,
        subject: x509.Name,
        publicKey: Any,
        issuer: x509.Name,
        issuerKey: Any,
        ca: bool = False,
        names: tuple[str, ...] = (),
        notAfter: datetime.datetime | None = None,
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(publicKey)
            .serial_number(x509.random_serial_number())
            .not_valid_before(_NOW - datetime.timedelta(days=1))
            .not_valid_after(notAfter or _NOW + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if ca:
            builder = builder.add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
        if names:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([_altName(n) for n in names]), critical=False
            )
        return builder.sign(issuerKey, hashes.SHA256())

    def issue(self, label: str, *names: str, expired: bool = False) -> Issued:
        """A server certificate for C{names} (DNS names or IP addresses), signed by the intermediate."""
        key = ec.generate_private_key(ec.SECP256R1())
        notAfter = _NOW - datetime.timedelta(hours=1) if expired else None
        cert = self._sign(
            _name(names[0]), key.public_key(), self.intermediate.subject, self.intermediateKey,
            names=names, notAfter=notAfter,
        )  # fmt: skip
        base = os.path.join(self.directory, label)
        files = Issued(
            f"{base}-fullchain.pem",
            f"{base}-privkey.pem",
            f"{base}-cert.pem",
            f"{base}-all.pem",
            f"{base}-chain.pem",
        )
        contents = {
            files.fullchain: _certPem(cert) + _certPem(self.intermediate),
            files.privkey: _pem(key),
            files.certOnly: _certPem(cert),
            files.combined: _pem(key) + _certPem(cert) + _certPem(self.intermediate),
            files.chain: _certPem(self.intermediate),
        }
        for path, data in contents.items():
            with open(path, "wb") as f:
                f.write(data)
        return files


def writeKeyAndCert(directory: str, hostname: str) -> tuple[str, str]:
    """A self-signed certificate and key for C{hostname}: (cert path, key path)."""
    os.makedirs(directory, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(hostname)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_NOW - datetime.timedelta(days=1))
        .not_valid_after(_NOW + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    certPath = os.path.join(directory, "cert.pem")
    keyPath = os.path.join(directory, "key.pem")
    with open(certPath, "wb") as f:
        f.write(_certPem(cert))
    with open(keyPath, "wb") as f:
        f.write(_pem(key))
    return certPath, keyPath
