"""
The C{mailframe-dkim} console script: C{mailframe-dkim keygen DOMAIN
SELECTOR [--type rsa|ed25519] [--bits N] [--directory DIR]} makes a DKIM
signing key, writes it to C{DIR/DOMAIN.SELECTOR.key} (mode 0600; PEM:
PKCS#1 for RSA, PKCS#8 for ed25519) and the record to publish to
C{DIR/DOMAIN.SELECTOR.txt}, and prints that DNS TXT record and the
C{--filter dkim-sign:...} option that uses the key.

Owns: key generation and the record's text.  Must not: overwrite a key
(unless C{--force}), or import twisted.
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
from collections.abc import Sequence

__all__ = ["dnsRecord", "generateKey", "main", "zoneLine"]


def generateKey(keyType: str = "rsa", bits: int = 2048) -> tuple[bytes, str]:
    """
    A new key: C{(private key PEM, public key base64 for p=)}.

    @raise ValueError: for an unknown type or an RSA size out of 1024..4096.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    if keyType == "rsa":
        if not 1024 <= bits <= 4096:
            raise ValueError("RSA keys for DKIM are 1024 to 4096 bits (2048 recommended)")
        key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        private = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        public = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    elif keyType == "ed25519":
        edKey = ed25519.Ed25519PrivateKey.generate()
        private = edKey.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        public = edKey.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )  # RFC 8463 3: the bare 32 octets
    else:
        raise ValueError(f"unknown key type {keyType!r} (rsa or ed25519)")
    return private, base64.b64encode(public).decode("ascii")


def dnsRecord(keyType: str, public: str) -> str:
    """The TXT record's text: C{v=DKIM1; k=rsa; p=...}."""
    return f"v=DKIM1; k={keyType}; p={public}"


def zoneLine(domain: str, selector: str, record: str) -> str:
    """The record as a zone file line, split into strings of at most 255 octets."""
    parts = [record[i : i + 250] for i in range(0, len(record), 250)]
    strings = " ".join(f'"{p}"' for p in parts)
    return f"{selector}._domainkey.{domain.rstrip('.')}. IN TXT ( {strings} )"


def _keygen(args: argparse.Namespace) -> int:
    from mailframe.address import Domain

    try:
        Domain.parse(args.domain)
    except ValueError:
        print(f"mailframe-dkim: not a domain: {args.domain!r}", file=sys.stderr)
        return 2
    selector = args.selector
    if not selector or not all(p.replace("-", "").isalnum() for p in selector.split(".")):
        print(f"mailframe-dkim: bad selector {selector!r}", file=sys.stderr)
        return 2
    directory = os.path.abspath(args.directory)
    base = os.path.join(directory, f"{args.domain.rstrip('.').lower()}.{selector}")
    keyPath, recordPath = base + ".key", base + ".txt"
    if os.path.exists(keyPath) and not args.force:
        print(f"mailframe-dkim: {keyPath} exists (--force replaces it)", file=sys.stderr)
        return 1
    try:
        private, public = generateKey(args.type, args.bits)
    except ValueError as e:
        print(f"mailframe-dkim: {e}", file=sys.stderr)
        return 2
    record = dnsRecord(args.type, public)
    line = zoneLine(args.domain, selector, record)
    try:
        os.makedirs(directory, exist_ok=True)
        if os.path.exists(keyPath):
            os.unlink(keyPath)
        fd = os.open(keyPath, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(private)
        with open(recordPath, "w", encoding="ascii") as f:
            f.write(line + "\n")
    except OSError as e:
        print(f"mailframe-dkim: cannot write {keyPath}: {e.strerror or e}", file=sys.stderr)
        return 1
    print(f"; the {args.type} key is in {keyPath}; publish this record in DNS:")
    print(line)
    print(f"; then sign with: --filter dkim-sign:{args.domain}:{selector}:{keyPath}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The console script; returns the exit status (C{sys.exit} is the caller's)."""
    parser = argparse.ArgumentParser(
        prog="mailframe-dkim", description="DKIM keys for mailframe's dkim-sign filter."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    keygen = commands.add_parser(
        "keygen", help="make a signing key and print the DNS TXT record to publish"
    )
    keygen.add_argument("domain", help="the signing domain (d=)")
    keygen.add_argument("selector", help="the selector (s=), e.g. 2026a")
    keygen.add_argument("--type", choices=("rsa", "ed25519"), default="rsa")
    keygen.add_argument("--bits", type=int, default=2048, help="RSA key size [2048]")
    keygen.add_argument("--directory", default=".", help="where to write the key [.]")
    keygen.add_argument("--force", action="store_true", help="replace an existing key")
    args = parser.parse_args(argv)
    return _keygen(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
