"""In-memory transports shared by the server tests."""

from __future__ import annotations

from typing import Any

from twisted.internet.testing import StringTransport


class CountingTransport(StringTransport):
    """A StringTransport that counts write calls."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        super().write(data)


class TLSTransport(CountingTransport):
    """A transport that records startTLS; its handle tells a TLS version and cipher."""

    tlsContext: Any = None

    def startTLS(self, context: Any) -> None:
        self.tlsContext = context

    def getHandle(self) -> Any:
        class Handle:
            def get_protocol_version_name(self) -> str:
                return "TLSv1.3"

            def get_cipher_name(self) -> str:
                return "TLS_AES_256_GCM_SHA384"

            def get_cipher_bits(self) -> int:
                return 256

            def get_peer_certificate(self) -> None:
                return None

        return Handle()
