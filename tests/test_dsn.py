"""
Tests for L{mailframe.extensions.dsn}: the DSN extension's parameters
(RET, ENVID, NOTIFY, ORCPT) through the real server in memory, and the
helpers the queue reads them with.
"""

from __future__ import annotations

from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from mailframe.backends.memory import MemoryBackend
from mailframe.config import ServerConfig
from mailframe.extensions import defaultExtensions
from mailframe.extensions.dsn import DSN, decodeOrcpt, notifyKeywords
from mailframe.interfaces import IExtension
from mailframe.server import SMTPServerFactory, SMTPServerProtocol
from mailframe.validators.basic import AnyRecipient


def lastCode(data: bytes) -> str:
    """The code and enhanced code of the last reply line."""
    line = data.rstrip(b"\r\n").split(b"\r\n")[-1].decode()
    words = line[4:].split(" ")
    return f"{line[:3]} {words[0]}" if words[0].count(".") == 2 else line[:3]


class DSNServerCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.backend = MemoryBackend()

    def connect(self, dsn: bool = True) -> tuple[SMTPServerProtocol, StringTransport]:
        extensions = defaultExtensions(1 << 20) + ([DSN()] if dsn else [])
        factory = SMTPServerFactory(
            ServerConfig(hostname="mx.test", localDomains=frozenset({"example.com"})),
            self.backend,
            [AnyRecipient()],
            extensions=extensions,
            clock=MemoryReactorClock(),
        )
        proto = factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        self.talk(proto, transport, b"EHLO client.test\r\n")
        return proto, transport

    def talk(self, proto: SMTPServerProtocol, transport: StringTransport, data: bytes) -> bytes:
        transport.clear()
        proto.dataReceived(data)
        return transport.value()

    def mail(self, params: str) -> str:
        proto, t = self.connect()
        return lastCode(self.talk(proto, t, f"MAIL FROM:<s@example.org> {params}\r\n".encode()))

    def rcpt(self, params: str) -> str:
        proto, t = self.connect()
        self.talk(proto, t, b"MAIL FROM:<s@example.org>\r\n")
        return lastCode(self.talk(proto, t, f"RCPT TO:<u@example.com> {params}\r\n".encode()))


class AdvertiseTests(DSNServerCase):
    def test_interface(self) -> None:
        """DSN provides IExtension and owns RET, ENVID, NOTIFY and ORCPT."""
        dsn = DSN()
        self.assertTrue(verifyObject(IExtension, dsn))
        self.assertEqual(dsn.mailParameters, {"RET", "ENVID"})
        self.assertEqual(dsn.rcptParameters, {"NOTIFY", "ORCPT"})

    def test_ehlo(self) -> None:
        """EHLO lists DSN when the extension is given, and not otherwise."""
        proto, t = self.connect()
        self.assertIn(b"250 DSN\r\n", self.talk(proto, t, b"EHLO again\r\n"))
        proto, t = self.connect(dsn=False)
        self.assertNotIn(b"DSN", self.talk(proto, t, b"EHLO again\r\n"))

    def test_withoutExtension(self) -> None:
        """Without DSN, RET and NOTIFY are unsupported parameters (555 5.5.4)."""
        proto, t = self.connect(dsn=False)
        self.assertEqual(
            lastCode(self.talk(proto, t, b"MAIL FROM:<s@x.org> RET=FULL\r\n")), "555 5.5.4"
        )


class TransactionTests(DSNServerCase):
    def test_recorded(self) -> None:
        """Accepted values stay, as sent, in the envelope's and recipients' parameters."""
        proto, t = self.connect()
        out = self.talk(
            proto,
            t,
            b"MAIL FROM:<s@example.org> RET=HDRS ENVID=QQ314159+2Bx\r\n"
            b"RCPT TO:<a@example.com> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;A+40example.com\r\n"
            b"RCPT TO:<b@example.com> NOTIFY=NEVER\r\n"
            b"RCPT TO:<c@example.com>\r\n"
            b"DATA\r\n",
        )
        self.assertEqual(out.count(b"250 2.1."), 4)
        self.talk(proto, t, b"Subject: x\r\n\r\nbody\r\n.\r\n")
        [stored] = self.backend.messages
        envelope = stored.envelope
        self.assertEqual(dict(envelope.mailParams), {"RET": "HDRS", "ENVID": "QQ314159+2Bx"})
        params = [dict(r.params) for r in envelope.recipients]
        self.assertEqual(
            params,
            [
                {"NOTIFY": "SUCCESS,DELAY", "ORCPT": "rfc822;A+40example.com"},
                {"NOTIFY": "NEVER"},
                {},
            ],
        )
        self.assertEqual(notifyKeywords(params[0]["NOTIFY"]), {"SUCCESS", "DELAY"})
        self.assertEqual(decodeOrcpt(params[0]["ORCPT"]), ("rfc822", "A@example.com"))

    def test_ret(self) -> None:
        """RET takes FULL or HDRS, in any case; anything else is 501 5.5.4."""
        for good in ("RET=FULL", "RET=hdrs", "RET=Full"):
            self.assertEqual(self.mail(good), "250 2.1.0", good)
        for bad in ("RET=ALL", "RET", "RET=FULL,HDRS"):
            self.assertEqual(self.mail(bad), "501 5.5.4", bad)

    def test_envid(self) -> None:
        """ENVID is xtext of printable ASCII, at most 100 characters."""
        self.assertEqual(self.mail("ENVID=" + "a" * 100), "250 2.1.0")
        self.assertEqual(self.mail("ENVID=a+20b"), "250 2.1.0")
        for bad in ("ENVID=" + "a" * 101, "ENVID", "ENVID=a+zz", "ENVID=a+0Ab", "ENVID=a+"):
            self.assertEqual(self.mail(bad), "501 5.5.4", bad)

    def test_duplicate(self) -> None:
        """A parameter given twice is refused."""
        self.assertEqual(self.mail("RET=FULL RET=HDRS"), "501 5.5.4")

    def test_notify(self) -> None:
        """NOTIFY is NEVER alone, or SUCCESS/FAILURE/DELAY without repeats."""
        for good in (
            "NOTIFY=NEVER",
            "NOTIFY=SUCCESS",
            "NOTIFY=failure,delay",
            "NOTIFY=DELAY,SUCCESS,FAILURE",
        ):
            self.assertEqual(self.rcpt(good), "250 2.1.5", good)
        for bad in (
            "NOTIFY=NEVER,SUCCESS",
            "NOTIFY=SOMETIMES",
            "NOTIFY=SUCCESS,SUCCESS",
            "NOTIFY",
            "NOTIFY=SUCCESS,",
        ):
            self.assertEqual(self.rcpt(bad), "501 5.5.4", bad)

    def test_orcpt(self) -> None:
        """ORCPT is addr-type;xtext, at most 500 characters, printable once decoded."""
        for good in (
            "ORCPT=rfc822;u+40example.com",
            "ORCPT=RFC822;u@example.com",
            "ORCPT=utf-8;j\\x{F6}rg@example.com",
        ):
            self.assertEqual(self.rcpt(good), "250 2.1.5", good)
        for bad in (
            "ORCPT=rfc822",
            "ORCPT=rfc822;",
            "ORCPT=;u@x",
            "ORCPT=rfc822;a+zz",
            "ORCPT=rfc822;a+0Db",
            "ORCPT",
            "ORCPT=rfc822;" + "a" * 500,
            "ORCPT=rfc(822);u@x",
        ):
            self.assertEqual(self.rcpt(bad), "501 5.5.4", bad)

    def test_longCommandLine(self) -> None:
        """A RCPT line with a 480-character ORCPT and NOTIFY fits in the raised line limit."""
        self.assertEqual(
            self.rcpt("NOTIFY=SUCCESS,FAILURE,DELAY ORCPT=rfc822;" + "a" * 480), "250 2.1.5"
        )


class HelperTests(SynchronousTestCase):
    def test_notifyKeywords(self) -> None:
        """None without NOTIFY, the empty set for NEVER, else the keywords (uppercase)."""
        self.assertIsNone(notifyKeywords(None))
        self.assertEqual(notifyKeywords("never"), frozenset())
        self.assertEqual(notifyKeywords("Success,DELAY"), {"SUCCESS", "DELAY"})
        self.assertRaises(ValueError, notifyKeywords, "NEVER,DELAY")

    def test_decodeOrcpt(self) -> None:
        """ORCPT values decode (xtext, and RFC 6533 escapes for utf-8); bad ones give None."""
        self.assertEqual(decodeOrcpt("rfc822;a+2Bb@x"), ("rfc822", "a+b@x"))
        self.assertEqual(decodeOrcpt("UTF-8;j\\x{F6}rg@x"), ("utf-8", "jörg@x"))
        for bad in (None, "", "rfc822", "rfc822;", "rfc822;a+q"):
            self.assertIsNone(decodeOrcpt(bad))


class ASCIIKeywordValueTests(SynchronousTestCase):
    def test_valuesComparedAsASCII(self) -> None:
        """NOTIFY, RET and BODY values match only as ASCII, never after Unicode case mapping."""
        from mailframe.address import asciiUpper
        from mailframe.extensions.dsn import notifyKeywords

        self.assertEqual(asciiUpper("8bitmime"), "8BITMIME")
        self.assertNotEqual(asciiUpper("8bitm\u0131me"), "8BITMIME")
        self.assertRaises(ValueError, notifyKeywords, "\u017fuccess")
