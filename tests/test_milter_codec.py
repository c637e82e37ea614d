"""
The milter codec (mailframe.milter.codec) on its own: framing under any
chunking (hypothesis), every response parsed, negotiation's rules, SMTP
replies of milters, and that it imports without twisted or zope.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from twisted.trial.unittest import SynchronousTestCase

import mailframe
from mailframe.milter import codec as C

try:
    settings.get_profile("ci")
except InvalidArgument:
    settings.register_profile(
        "ci",
        deadline=None,
        max_examples=200,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
PROFILE = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

_packets = st.lists(
    st.tuples(st.sampled_from([b"A", b"B", b"h", b"y", b"O"]), st.binary(max_size=300)),
    max_size=8,
)


class FramingTests(SynchronousTestCase):
    @PROFILE
    @given(_packets, st.data())
    def test_anyChunking(self, packets: list[tuple[bytes, bytes]], data: st.DataObject) -> None:
        """Packets come out whole and in order however the bytes are cut."""
        stream = b"".join(C.packet(c, d) for c, d in packets)
        cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
        reader = C.PacketReader()
        out = []
        last = 0
        for cut in [*cuts, len(stream)]:
            reader.feed(stream[last:cut])
            last = cut
            out.extend(reader)
        self.assertEqual(out, packets)
        self.assertEqual(reader.buffered, 0)

    @PROFILE
    @given(st.lists(st.binary(max_size=70000), max_size=4), st.integers(1, 70000))
    def test_bodyChunks(self, chunks: list[bytes], size: int) -> None:
        """bodyChunks re-cuts any stream into pieces of the size, the last shorter."""
        pieces = list(C.bodyChunks(chunks, size))
        self.assertEqual(b"".join(pieces), b"".join(chunks))
        self.assertTrue(all(len(p) == size for p in pieces[:-1]))
        self.assertTrue(all(0 < len(p) <= size for p in pieces))

    def test_badLength(self) -> None:
        """A length of 0, or beyond the limit, is a protocol error."""
        for length in (0, C.MAX_PACKET + 1):
            reader = C.PacketReader()
            reader.feed(struct.pack("!I", length) + b"c")
            self.assertRaises(C.MilterProtocolError, list, reader)

    def test_bodyChunkLimit(self) -> None:
        """A body packet holds at most 65535 octets."""
        self.assertEqual(len(C.encodeBody(b"x" * 65535)), 65535 + 5)
        self.assertRaises(ValueError, C.encodeBody, b"x" * 65536)


class CommandTests(SynchronousTestCase):
    def roundTrip(self, data: bytes) -> C.Received:
        reader = C.PacketReader()
        reader.feed(data)
        [(command, payload)] = list(reader)
        return C.parseCommand(command, payload)

    def test_options(self) -> None:
        """OPTNEG carries version 6, every action and the steps on offer."""
        received = self.roundTrip(C.encodeOptions())
        self.assertEqual(received.args, (6, 0x1FF, int(C.OFFERED_PROTOCOL)))
        self.assertFalse(C.OFFERED_PROTOCOL & C.Protocol.RCPT_REJ)
        self.assertTrue(C.OFFERED_PROTOCOL & C.Protocol.NR_BODY)

    def test_connect(self) -> None:
        """CONNECT: name, family, port in network order, address."""
        data = C.encodeConnect("[192.0.2.1]", b"4", 4321, "192.0.2.1")
        self.assertEqual(data[5:], b"[192.0.2.1]\x004\x10\xe1192.0.2.1\x00")
        self.assertEqual(self.roundTrip(data).args, ("[192.0.2.1]", b"4", 4321, "192.0.2.1"))
        unknown = C.encodeConnect("client", b"U")
        self.assertEqual(unknown[5:], b"client\x00U")

    def test_macros(self) -> None:
        """MACRO: the stage's command octet, then name and value pairs."""
        data = C.encodeMacros(C.Command.MAIL, [("i", "Q1"), ("{mail_addr}", "a@b")])
        self.assertEqual(data[4:], b"DMi\x00Q1\x00{mail_addr}\x00a@b\x00")
        self.assertEqual(self.roundTrip(data).args, (b"M", {"i": "Q1", "{mail_addr}": "a@b"}))

    def test_strings(self) -> None:
        """MAIL arguments are NUL-terminated strings; a NUL inside one is refused."""
        data = C.packet(C.Command.MAIL, C.encodeStrings(["<a@b>", "SIZE=10"]))
        self.assertEqual(self.roundTrip(data).args, ("<a@b>", "SIZE=10"))
        self.assertRaises(ValueError, C.encodeStrings, ["a\0b"])


class ResponseTests(SynchronousTestCase):
    def parse(self, data: bytes) -> object:
        reader = C.PacketReader()
        reader.feed(data)
        [(command, payload)] = list(reader)
        return C.parseResponse(command, payload)

    def test_decisions(self) -> None:
        """The decisions without data."""
        for octet in (b"a", b"c", b"d", b"r", b"t", b"s", b"p", b"4", b"f"):
            self.assertEqual(self.parse(C.packet(octet)), C.Reply(octet))
        self.assertRaises(C.MilterProtocolError, C.parseResponse, b"c", b"x")

    def test_modifications(self) -> None:
        """Every modification, with its arguments."""
        R = C.Response
        cases = [
            (C.respond(R.ADDHEADER, "X-A", "1"), C.AddHeader("X-A", "1")),
            (C.respond(R.INSHEADER, 0, "X-B", "2"), C.InsertHeader(0, "X-B", "2")),
            (C.respond(R.CHGHEADER, 2, "Subject", ""), C.ChangeHeader(2, "Subject", "")),
            (C.respond(R.ADDRCPT, "<c@d>"), C.AddRecipient("<c@d>")),
            (C.respond(R.ADDRCPT_PAR, "<c@d>", "NOTIFY=NEVER"),
             C.AddRecipient("<c@d>", "NOTIFY=NEVER")),
            (C.respond(R.DELRCPT, "<c@d>"), C.DeleteRecipient("<c@d>")),
            (C.respond(R.CHGFROM, "<e@f>"), C.ChangeSender("<e@f>")),
            (C.respond(R.CHGFROM, "<e@f>", "SIZE=1"), C.ChangeSender("<e@f>", "SIZE=1")),
            (C.respond(R.REPLBODY, b"new\r\n"), C.ReplaceBody(b"new\r\n")),
            (C.respond(R.QUARANTINE, "why"), C.Quarantine("why")),
            (C.respond(R.REPLYCODE, "554 5.7.1 no"), C.ReplyCode("554 5.7.1 no")),
        ]  # fmt: skip
        for data, event in cases:
            self.assertEqual(self.parse(data), event)

    def test_malformed(self) -> None:
        """Malformed data is a protocol error, never a guess."""
        R = C.Response
        for data in (
            C.packet(R.ADDHEADER, b"X-A\x00no-nul"),
            C.packet(R.ADDHEADER, b"\x00v\x00"),
            C.packet(R.INSHEADER, b"\x00\x00"),
            C.respond(R.ADDRCPT, "<a@b>", "NOTIFY=NEVER"),
            C.respond(R.REPLYCODE, "250 ok"),
            C.packet(b"Z"),
        ):
            self.assertRaises(C.MilterProtocolError, self.parse, data)

    def test_replyText(self) -> None:
        """Milter replies: 4xx/5xx, the same code per line, continuation dashes."""
        good = ["550 5.7.1 Rejected", "451 try later", "550-a\r\n550 b", "554", "550 x\r\n"]
        bad = ["250 ok", "55 x", "550-a", "550-a\r\n551 b", "550 4.7.1 mixed", "550 a\nb"]
        for text in good:
            self.assertTrue(C.validReplyText(text), text)
        for text in bad:
            self.assertFalse(C.validReplyText(text), text)


class NegotiationTests(SynchronousTestCase):
    def test_answer(self) -> None:
        """The answer's numbers and macro lists are read."""
        data = C.respondOptions(
            C.Action.ADDHDRS, C.Protocol.NOHELO | C.Protocol.NR_HDR,
            macros=[(C.Stage.ENVFROM, "i {auth_authen}"), (C.Stage.CONNECT, "j _")],
        )  # fmt: skip
        [(command, payload)] = list(_read(data))
        answer = C.parseResponse(command, payload)
        assert isinstance(answer, C.Negotiated)
        self.assertEqual(answer.version, 6)
        self.assertEqual(answer.actions, C.Action.ADDHDRS)
        self.assertEqual(
            answer.macros,
            {C.Stage.ENVFROM: ("i", "{auth_authen}"), C.Stage.CONNECT: ("j", "_")},
        )

    def test_rules(self) -> None:
        """Versions 2 to 6 only; no action beyond the offer; unknown steps dropped."""
        offered = C.Action.ADDHDRS | C.Action.CHGBODY
        ok = C.negotiate(offered, 0x3FF, C.Negotiated(2, C.Action.ADDHDRS, C.Protocol(0xFFFF)))
        self.assertEqual(ok.protocol, C.Protocol(0x3FF))
        for answer in (
            C.Negotiated(7, C.Action(0), C.Protocol(0)),
            C.Negotiated(1, C.Action(0), C.Protocol(0)),
            C.Negotiated(6, C.Action.QUARANTINE, C.Protocol(0)),
        ):
            self.assertRaises(C.MilterProtocolError, C.negotiate, offered, 0x3FF, answer)


def _read(data: bytes) -> list[tuple[bytes, bytes]]:
    reader = C.PacketReader()
    reader.feed(data)
    return list(reader)


_CHILD = """
import json, sys
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("twisted", "zope"):
            raise ImportError("blocked: " + name)
        return None
for name in list(sys.modules):
    if name.partition(".")[0] in ("twisted", "zope"):
        del sys.modules[name]
sys.meta_path.insert(0, Blocker())
import mailframe.milter.codec
print(json.dumps(sorted(n for n in sys.modules if n.startswith("mailframe"))))
"""


class ImportTests(SynchronousTestCase):
    def test_noTwisted(self) -> None:
        """The codec imports with twisted and zope blocked, and pulls in no other module."""
        root = os.path.dirname(os.path.dirname(os.path.abspath(mailframe.__file__)))
        out = subprocess.run(
            [sys.executable, "-c", _CHILD],
            capture_output=True,
            text=True,
            cwd=root,
            env={**os.environ, "PYTHONPATH": root},
            timeout=60,
            check=True,
        )
        self.assertEqual(
            json.loads(out.stdout), ["mailframe", "mailframe.milter", "mailframe.milter.codec"]
        )
