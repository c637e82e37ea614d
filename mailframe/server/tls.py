"""
TLS for the server: L{ServerTLS}, a context factory (pyOpenSSL, through
Twisted's C{CertificateOptions}) with TLS 1.2 as the minimum, the server's
cipher preference, certificate chain files, several certificates chosen by
SNI, and reloading when the files change (a renewed Let's Encrypt
certificate is picked up without a restart); L{selfSignedCertificate}, the
development certificate made once for a host name; and L{implicitTLS}, which
wraps a server factory so that it speaks TLS from the first byte (RFC 8314).

A certificate file is PEM: the server's certificate first, then the
intermediate certificates (certbot's C{fullchain.pem}); the private key is
in its own file (C{privkey.pem}) or in the same one.

Owns: loading certificates and keys and building contexts.  Must not:
import mailframe.server; know SMTP; read files in the reactor thread more
than once per change (files are stat'ed at most once per C{checkInterval}).
"""

from __future__ import annotations

import datetime
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator, IProtocolFactory
from twisted.internet.ssl import CertificateOptions, TLSVersion
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

if TYPE_CHECKING:
    from cryptography import x509
    from OpenSSL.SSL import _NoOverlappingProtocols
    from twisted.protocols.tls import TLSMemoryBIOProtocol

    from mailframe.interfaces import TLSContextFactory

__all__ = [
    "MINIMUM_VERSION",
    "CertificatePair",
    "ServerTLS",
    "certificateNames",
    "implicitTLS",
    "loadCertificatePair",
    "selfSignedCertificate",
]

log = Logger(namespace="mailframe.tls")

MINIMUM_VERSION = TLSVersion.TLSv1_2
"""The oldest TLS version a client may use (RFC 8996 deprecates 1.0 and 1.1)."""

ALPN_PROTOCOL = b"smtp"
"""The ALPN protocol ID of SMTP (IANA's TLS ALPN registry)."""


def _selectALPN(
    connection: SSL.Connection, offered: list[bytes]
) -> bytes | _NoOverlappingProtocols:
    """
    Choose C{smtp} if the client offers it; otherwise negotiate no protocol
    and go on (as Postfix does: browsers' stacks offer only h2 and
    http/1.1).  Twisted's own callback answers an empty protocol when
    nothing overlaps, which OpenSSL turns into an internal_error alert.
    """
    return ALPN_PROTOCOL if ALPN_PROTOCOL in offered else SSL.NO_OVERLAPPING_PROTOCOLS


def _serverContext(options: CertificateOptions) -> SSL.Context:
    """The context of C{options}, with mailframe's ALPN choice (see L{_selectALPN})."""
    context = options.getContext()
    context.set_alpn_select_callback(_selectALPN)
    return context


@dataclass(frozen=True)
class CertificatePair:
    """A certificate file (with its chain) and its key file (None: the same file)."""

    certificate: str
    key: str | None = None

    @property
    def paths(self) -> tuple[str, ...]:
        return (self.certificate,) if self.key is None else (self.certificate, self.key)


@dataclass(frozen=True)
class _Loaded:
    options: CertificateOptions
    names: tuple[str, ...]
    notAfter: datetime.datetime


def _oneLine(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text[:200] if text else type(error).__name__


def certificateNames(certificate: x509.Certificate) -> tuple[str, ...]:
    """The DNS names a C{cryptography} certificate is for (SAN, else the CN), lowercased."""
    from cryptography import x509

    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names = san.value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = [
            str(a.value) for a in certificate.subject.get_attributes_for_oid(x509.OID_COMMON_NAME)
        ]
    return tuple(n.lower().rstrip(".") for n in names)


def loadCertificatePair(pair: CertificatePair) -> _Loaded:
    """
    Load a certificate chain and its key into C{CertificateOptions}.

    @raise ValueError: one line naming the file: missing, not PEM, no
        certificate, no key, or a key that does not match.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        with open(pair.certificate, "rb") as f:
            certData = f.read()
        keyData = certData
        if pair.key is not None:
            with open(pair.key, "rb") as f:
                keyData = f.read()
    except OSError as e:
        raise ValueError(f"cannot read {e.filename}: {e.strerror}")
    try:
        chain = x509.load_pem_x509_certificates(certData)
    except ValueError:
        raise ValueError(f"{pair.certificate}: no PEM certificate in it")
    keyFile = pair.key or pair.certificate
    if b"PRIVATE KEY-----" not in keyData:
        raise ValueError(f"{keyFile}: no PEM private key in it")
    try:
        key = serialization.load_pem_private_key(keyData, password=None)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{keyFile}: cannot load the private key ({_oneLine(e)})")
    options = CertificateOptions(
        privateKey=key,  # type: ignore[arg-type]
        certificate=chain[0],  # type: ignore[arg-type]
        extraCertChain=list(chain[1:]),  # type: ignore[arg-type]
        raiseMinimumTo=MINIMUM_VERSION,
    )
    try:
        options.getContext()  # checks that the key matches the certificate
    except SSL.Error as e:
        raise ValueError(
            f"{keyFile}: the private key does not match {pair.certificate} ({_oneLine(e)})"
        )
    return _Loaded(options, certificateNames(chain[0]), chain[0].not_valid_after_utc)


def _signature(paths: Sequence[str]) -> tuple[tuple[int, int, int], ...]:
    out = []
    for path in paths:
        st = os.stat(path)
        out.append((st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(out)


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLS:
    """
    A server TLS context factory for C{startTLS} and for implicit TLS.

    The first certificate is the default; with several, the client's SNI
    name chooses (an exact name first, then a wildcard name for its parent
    domain).
    The files are stat'ed at most once per C{checkInterval} seconds when a
    handshake starts; if they changed they are loaded again, and if that
    fails the previous certificates stay in use and an error is logged.

    @raise ValueError: at construction, for files that cannot be loaded.
    """

    def __init__(
        self,
        pairs: Sequence[CertificatePair],
        checkInterval: float = 60.0,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        if not pairs:
            raise ValueError("no certificate given")
        self.pairs = tuple(pairs)
        self.checkInterval = checkInterval
        self._now = now
        self._problem: str | None = None
        self._load()
        self._checked = now()

    def _load(self) -> None:
        paths = [p for pair in self.pairs for p in pair.paths]
        try:
            signature = _signature(paths)
        except OSError as e:
            raise ValueError(f"cannot read {e.filename}: {e.strerror}")
        loaded = [loadCertificatePair(pair) for pair in self.pairs]
        byName: dict[str, CertificateOptions] = {}
        for item in loaded:
            for name in item.names:
                byName.setdefault(name, item.options)
        default = _serverContext(loaded[0].options)
        for item in loaded[1:]:
            _serverContext(item.options)
        if len(loaded) > 1:
            default.set_tlsext_servername_callback(self._chooseContext)
        self._signature = signature
        self._loaded = loaded
        self._byName = byName
        self._default = default
        self._defaultOptions = loaded[0].options
        now = datetime.datetime.now(datetime.UTC)
        for pair, item in zip(self.pairs, loaded, strict=True):
            if item.notAfter < now:
                log.warn("TLS certificate {path} expired on {date}", path=pair.certificate,
                         date=item.notAfter.isoformat())  # fmt: skip

    @property
    def names(self) -> tuple[str, ...]:
        """The names of every certificate, in order."""
        return tuple(n for item in self._loaded for n in item.names)

    def _chooseContext(self, connection: SSL.Connection) -> None:
        raw = connection.get_servername()
        if not raw:
            return
        name = raw.decode("ascii", "replace").lower().rstrip(".")
        options = self._byName.get(name)
        if options is None and "." in name:
            options = self._byName.get("*." + name.split(".", 1)[1])
        if options is not None and options is not self._defaultOptions:
            connection.set_context(options.getContext())

    def _maybeReload(self) -> None:
        now = self._now()
        if now - self._checked < self.checkInterval:
            return
        self._checked = now
        try:
            changed = _signature([p for pair in self.pairs for p in pair.paths]) != self._signature
            if changed:
                self._load()
                self._problem = None
                log.info("TLS certificates reloaded: {names}", names=", ".join(self.names))
        except (OSError, ValueError) as e:
            problem = _oneLine(e)
            if problem != self._problem:
                self._problem = problem
                log.error("TLS certificates not reloaded, the previous ones stay in use: "
                          "{problem}", problem=problem)  # fmt: skip

    def getContext(self) -> SSL.Context:
        """The default context (old-style context factory interface)."""
        self._maybeReload()
        return self._default

    def serverConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        return SSL.Connection(self.getContext(), None)


def implicitTLS(tls: TLSContextFactory, factory: IProtocolFactory) -> TLSMemoryBIOFactory:
    """
    C{factory} wrapped so that each connection is TLS from its first byte
    (RFC 8314), with C{tls} (a L{ServerTLS} or any server context factory).
    """
    return TLSMemoryBIOFactory(tls, False, factory)


def selfSignedCertificate(directory: str, hostname: str, days: int = 397) -> str:
    """
    The path of a PEM file (key and certificate) with a self-signed
    certificate for C{hostname}, made in C{directory} the first time (or
    when the one there has expired) and logged with a warning each time.
    """
    path = os.path.join(os.path.abspath(directory), f"mailframe-selfsigned-{hostname}.pem")
    try:
        with open(path, "rb") as f:
            from cryptography import x509

            cert = x509.load_pem_x509_certificate(f.read())
        fresh = cert.not_valid_after_utc > datetime.datetime.now(datetime.UTC)
    except (OSError, ValueError):
        fresh = False
    if not fresh:
        _writeSelfSigned(path, hostname, days)
    log.warn(
        "TLS uses the self-signed certificate {path} for {hostname}: clients cannot verify it; "
        "give --tls-cert and --tls-key for real use",
        path=path,
        hostname=hostname,
    )
    return path


def _writeSelfSigned(path: str, hostname: str, days: int) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ) + cert.public_bytes(serialization.Encoding.PEM)
    temp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temp, path)
