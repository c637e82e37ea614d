"""
Tests for L{mailframe.server.commands}: what the command handlers echo of the
client's words, through the whole server in memory.  Every reply line is at
most 512 octets with its CRLF (RFC 5321 4.5.3.1.5) and printable ASCII.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mailframe.backends.memory import MemoryBackend
from mailframe.config import ServerConfig
from mailframe.protocol import Limits
from mailframe.server import SMTPServerFactory, SMTPServerProtocol
from tests._transports import CountingTransport
from tests.test_fuzz_commands import assertWireSafe, lines
from tests.test_properties import PROFILE


def connect() -> tuple[SMTPServerProtocol, CountingTransport]:
    """
    A server session over a StringTransport, greeted.  Its command lines may
    be 2,048 octets long, as extensions may make them.
    """
    factory = SMTPServerFactory(
        ServerConfig(
            hostname="mx.test",
            localDomains=frozenset({"example.com"}),
            limits=Limits(commandLine=2048),
        ),
        MemoryBackend(),
        clock=MemoryReactorClock(),
    )
    proto = factory.buildProtocol(None)
    transport = CountingTransport()
    proto.makeConnection(transport)
    transport.clear()
    return proto, transport


def talk(proto: SMTPServerProtocol, transport: CountingTransport, data: bytes) -> bytes:
    transport.clear()
    proto.dataReceived(data)
    return transport.value()


class EchoTests(SynchronousTestCase):
    def test_longEhloName(self) -> None:
        """EHLO with a 1,050-octet name: the greets line is cut, the extensions follow intact."""
        proto, t = connect()
        out = talk(proto, t, b"EHLO " + b"a" * 1050 + b"\r\n")
        assertWireSafe(self, out)
        first, *rest = out.split(b"\r\n")
        self.assertTrue(first.startswith(b"250-mx.test greets aaaa"), first)
        self.assertTrue(first.endswith(b"..."), first)
        self.assertIn(b"250-PIPELINING", rest)
        self.assertEqual(proto.session.heloName, "a" * 1050)  # the session keeps the name

    def test_ehloNameEscaped(self) -> None:
        """Non-ASCII characters in the EHLO name are echoed as escapes; a control one is refused."""
        proto, t = connect()
        out = talk(proto, t, "EHLO red\u00fc\r\n".encode())
        assertWireSafe(self, out)
        self.assertTrue(out.startswith(b"250-mx.test greets red\\xfc\r\n"), out)
        out = talk(proto, t, b"EHLO \x1b[31mred\r\n")
        assertWireSafe(self, out)
        self.assertTrue(out.startswith(b"501 "), out)
        self.assertNotIn(b"\x1b", out)

    def test_unknownParameter(self) -> None:
        """An unknown MAIL or RCPT parameter of 1,000 octets is named, cut short, in the 555."""
        proto, t = connect()
        talk(proto, t, b"EHLO c\r\n")
        out = talk(proto, t, b"MAIL FROM:<a@b.example> X" + b"Y" * 999 + b"\r\n")
        assertWireSafe(self, out)
        self.assertTrue(out.startswith(b"555 5.5.4 Unsupported parameter XYYY"), out)
        self.assertLess(len(out), 120)
        talk(proto, t, b"MAIL FROM:<a@b.example>\r\n")
        out = talk(proto, t, b"RCPT TO:<user@example.com> X" + b"Y" * 999 + b"\r\n")
        assertWireSafe(self, out)
        self.assertTrue(out.startswith(b"555 5.5.4 Unsupported parameter XYYY"), out)


class ServerReplyFuzz(TestCase):
    """Whatever a client sends, the whole server's replies are short printable ASCII lines."""

    @settings(PROFILE)
    @given(
        st.lists(
            st.one_of(
                lines,
                st.builds(
                    lambda verb, c, n: verb + c * n,
                    st.sampled_from([b"EHLO ", b"HELO ", b"MAIL FROM:<a@b.c> X", b"VRFY "]),
                    st.sampled_from([b"a", b"\x1b", "\u00fc".encode(), b"\x7f"]),
                    st.integers(100, 2000),
                ),
            ),
            max_size=10,
        )
    )
    def test_repliesAreWireSafe(self, sent: list[bytes]) -> None:
        """EHLO first, then any lines: every reply line is at most 512 octets of printable ASCII."""
        proto, t = connect()
        wire = talk(proto, t, b"EHLO client.test\r\n")
        for line in sent:
            if t.disconnecting:
                break
            wire += talk(proto, t, line + b"\r\n")
        if wire:
            assertWireSafe(self, wire)
