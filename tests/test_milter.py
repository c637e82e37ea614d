"""
The milter client (mailframe.milter) against scripted milters written on
the codec (tests/_milter.py), over 127.0.0.1 with a real mailframe server
and a blocking client in a thread: every stage and its macros, every answer
and modification, and every failure (down, closing mid-body, never
answering), each under both default actions.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from mailframe import interfaces as I
from mailframe.envelope import Envelope, SessionInfo
from mailframe.message import Message
from mailframe.milter import codec as C
from mailframe.milter.edits import BodyWriter, HeaderEditor, fieldBytes, splitField
from mailframe.milter.filter import Milter, replyFromText
from mailframe.milter.settings import MilterAddress, MilterSettings
from tests._milter import MilterServer, ScriptedMilter, milterFor, startMilterServer
from tests.interop._support import RawClient, inThread, splitReceived

R = C.Response
MESSAGE = (
    b"From: a@example.org\r\n"
    b"To: user@example.com\r\n"
    b"Subject: hello\r\n"
    b"\tthere\r\n"
    b"\r\n"
    b"body line\r\n"
)


def transaction(
    server: MilterServer,
    data: bytes = MESSAGE,
    recipients: tuple[str, ...] = ("user@example.com",),
    sender: str = "a@example.org",
    quit: bool = True,
) -> list[tuple[int, str]]:
    """One session: EHLO, MAIL, RCPTs, DATA; every reply as (code, first line), stopping at a refusal."""
    out: list[tuple[int, str]] = []
    with RawClient(server) as client:  # type: ignore[arg-type]
        out.append(client.replies(1)[0])
        if out[-1][0] != 220:
            return out
        for line in (b"EHLO client.test", f"MAIL FROM:<{sender}> SIZE=100".encode()):
            out.append(client.command(line))
            if out[-1][0] >= 400:
                return out
        accepted = 0
        for r in recipients:
            out.append(client.command(f"RCPT TO:<{r}>".encode()))
            accepted += out[-1][0] < 400
        if not accepted:
            return out
        out.append(client.command(b"DATA"))
        if out[-1][0] != 354:
            return out
        client.send(data + b".\r\n")
        out.append(client.replies(1)[0])
        if quit:
            out.append(client.command(b"QUIT"))
    return out


def codes(replies: list[tuple[int, str]]) -> list[int]:
    return [code for code, _ in replies]


class ProviderTests(SynchronousTestCase):
    def test_interfaces(self) -> None:
        """A Milter provides every stage's interface, verified."""
        milter = Milter(MilterSettings(MilterAddress.parse("inet:127.0.0.1:1")), None)
        for interface in (
            I.IConnectionFilter,
            I.IHeloValidator,
            I.ISenderValidator,
            I.IRecipientValidator,
            I.IMessageFilter,
            I.ISessionObserver,
            I.IUnknownCommandFilter,
        ):
            self.assertTrue(verifyObject(interface, milter))

    def test_addresses(self) -> None:
        """Postfix's inet:HOST:PORT, inet:[v6]:PORT, unix:PATH; anything else is refused."""
        self.assertEqual(MilterAddress.parse("inet:127.0.0.1:8891").port, 8891)
        self.assertEqual(MilterAddress.parse("inet:[::1]:11332").host, "::1")
        self.assertEqual(MilterAddress.parse("unix:/run/m.sock").path, "/run/m.sock")
        self.assertEqual(MilterAddress.parse("local:/run/m.sock").kind, "unix")
        for bad in ("inet:host", "tcp:1:2", "inet::99", "inet:h:70000", "unix:"):
            self.assertRaises(ValueError, MilterAddress.parse, bad)

    def test_settings(self) -> None:
        """default-action is accept or tempfail; time limits are positive."""
        address = MilterAddress.parse("inet:127.0.0.1:1")
        self.assertRaises(ValueError, MilterSettings, address, defaultAction="reject")
        self.assertRaises(ValueError, MilterSettings, address, commandTimeout=0)
        self.assertTrue(MilterSettings(address, listeners=("submission",)).appliesTo("submission"))
        self.assertFalse(MilterSettings(address, listeners=("submission",)).appliesTo("smtp"))

    def test_replyText(self) -> None:
        """A milter's reply text becomes a Reply, multi-line and enhanced codes kept."""
        reply = replyFromText("554-5.7.1 first\r\n554 5.7.1 100%% sure")
        self.assertEqual((reply.code, reply.enhanced), (554, (5, 7, 1)))
        self.assertEqual(reply.lines, ("first", "100% sure"))
        self.assertEqual(replyFromText("451 later").enhanced, None)


class EditTests(SynchronousTestCase):
    def fields(self) -> list[bytes]:
        return [
            b"X-Above: 1\r\n",
            b"Received: by us\r\n",
            b"Subject: a\r\n",
            b"X-Tag: 1\r\n",
            b"X-Tag: 2\r\n",
        ]

    def test_traceKeepsItsPlace(self) -> None:
        """Inserts count the fields a filter sees; the trace field stays where it was."""
        editor = HeaderEditor(self.fields(), b"Received: by us\r\n")
        editor.insert(0, "X-First", "f")
        editor.add("X-Last", "l")
        self.assertEqual(
            editor.result(),
            [
                b"X-First: f\r\n",
                b"Received: by us\r\n",
                b"X-Above: 1\r\n",
                b"Subject: a\r\n",
                b"X-Tag: 1\r\n",
                b"X-Tag: 2\r\n",
                b"X-Last: l\r\n",
            ],
        )

    def test_change(self) -> None:
        """change: the nth of a name (case-insensitive), deletes with an empty value, adds a missing one."""
        editor = HeaderEditor(self.fields(), None)
        editor.change(2, "x-tag", "two")
        editor.change(1, "Subject", "")
        editor.change(3, "X-Tag", "")  # not there: nothing
        editor.change(1, "X-New", "multi\n\tline")
        self.assertEqual(
            editor.result(),
            [
                b"X-Above: 1\r\n",
                b"Received: by us\r\n",
                b"X-Tag: 1\r\n",
                b"x-tag: two\r\n",
                b"X-New: multi\r\n\tline\r\n",
            ],
        )

    def test_remove(self) -> None:
        """remove (rspamd's remove_headers): all (0), the nth, the nth from the end."""
        for index, left in ((0, []), (1, [b"X-Tag: 2\r\n"]), (-1, [b"X-Tag: 1\r\n"])):
            editor = HeaderEditor(self.fields(), None)
            editor.remove("X-Tag", index)
            self.assertEqual([f for f in editor.result() if f.startswith(b"X-Tag")], left)

    def test_fieldForms(self) -> None:
        """A field as a milter is sent it and as it comes back: LF inside, one space after the colon."""
        raw = b"Subject: hello\r\n\tthere\r\n"
        self.assertEqual(splitField(raw), ("Subject", "hello\n\tthere"))
        self.assertEqual(splitField(raw, leadingSpace=True), ("Subject", " hello\n\tthere"))
        self.assertEqual(fieldBytes("Subject", "hello\n\tthere"), raw)
        self.assertEqual(fieldBytes("Subject", " hello\r\n\tthere", leadingSpace=True), raw)

    def test_bodyWriter(self) -> None:
        """Bare LFs become CRLF across pieces; the body ends with CRLF; a limit holds."""
        message = Message()
        message.write(b"S: x\r\n\r\nold\r\n")
        message.finish()
        writer = BodyWriter(message.bodyReplacement())
        for piece in (b"a\n", b"b\r", b"\nc\r", b"d"):
            writer.write(piece)
        writer.finish()
        message.replaceBody(writer.replacement)
        self.assertEqual(message.getvalue(), b"S: x\r\n\r\na\r\nb\r\nc\rd\r\n")
        limited = BodyWriter(message.bodyReplacement(), limit=10)
        self.assertRaises(ValueError, limited.write, b"x" * 11)
        limited.discard()


class StageTests(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_everyStage(self) -> Generator[Any, Any, None]:
        """Every stage in order, with Postfix's macros; the server's Received: field is not shown."""
        milter = ScriptedMilter(self)
        server = startMilterServer(self, [milterFor(milter.address)])
        replies = yield inThread(transaction, server)
        self.assertEqual(codes(replies), [220, 250, 250, 250, 354, 250, 221])
        yield _settle()
        B = C.Command
        self.assertEqual(
            milter.commands(),
            [B.OPTNEG, B.CONNECT, B.HELO, B.MAIL, B.RCPT, B.DATA]
            + [B.HEADER] * 3
            + [B.EOH, B.BODY, B.BODYEOB, B.QUIT],
        )
        macros = milter.macrosOf()
        self.assertEqual(macros[B.CONNECT]["j"], "mx.test")
        self.assertEqual(macros[B.CONNECT]["{daemon_name}"], "smtp")
        self.assertEqual(macros[B.CONNECT]["{client_addr}"], "127.0.0.1")
        self.assertEqual(macros[B.CONNECT]["_"], "unknown [127.0.0.1]")
        self.assertEqual(macros[B.MAIL]["{mail_addr}"], "a@example.org")
        self.assertEqual(macros[B.RCPT]["{rcpt_addr}"], "user@example.com")
        self.assertEqual(macros[B.RCPT]["{rcpt_mailer}"], "local")
        self.assertEqual(macros[B.BODYEOB]["i"], macros[B.MAIL]["i"])
        [connect] = milter.received(B.CONNECT)
        self.assertEqual(connect.args[:2], ("[127.0.0.1]", b"4"))
        self.assertEqual(milter.received(B.MAIL)[0].args, ("<a@example.org>", "SIZE=100"))
        headers = [r.args for r in milter.received(B.HEADER)]
        self.assertEqual(
            headers,
            [("From", "a@example.org"), ("To", "user@example.com"), ("Subject", "hello\n\tthere")],
        )
        self.assertEqual(milter.received(B.BODY)[0].args, (b"body line\r\n",))
        self.assertEqual(len(server.backend.messages), 1)

    @defer.inlineCallbacks
    def test_leftOutAndUnanswered(self) -> Generator[Any, Any, None]:
        """Steps the milter leaves out are not sent; those it leaves unanswered are not waited for."""
        P = C.Protocol
        milter = ScriptedMilter(
            self,
            protocol=P.NOHELO | P.NODATA | P.NR_CONN | P.NR_RCPT | P.NR_HDR | P.NR_BODY
            | P.NOEOH | P.HDR_LEADSPC,
            macros=[(C.Stage.ENVFROM, "{mail_addr} {auth_type}")],
        )  # fmt: skip
        server = startMilterServer(self, [milterFor(milter.address)])
        replies = yield inThread(transaction, server)
        self.assertEqual(codes(replies), [220, 250, 250, 250, 354, 250, 221])
        yield _settle()
        B = C.Command
        self.assertEqual(
            milter.commands(),
            [B.OPTNEG, B.CONNECT, B.MAIL, B.RCPT, *[B.HEADER] * 3, B.BODY, B.BODYEOB, B.QUIT],
        )
        self.assertEqual(milter.macrosOf()[B.MAIL], {"{mail_addr}": "a@example.org"})
        self.assertEqual(milter.received(B.HEADER)[0].args, ("From", " a@example.org"))

    @defer.inlineCallbacks
    def test_bodyChunks(self) -> Generator[Any, Any, None]:
        """A large body goes in chunks of at most 65535 octets, whole."""
        milter = ScriptedMilter(self)
        server = startMilterServer(self, [milterFor(milter.address)])
        body = b"".join(b"%07d %s\r\n" % (i, b"y" * 70) for i in range(3000))
        replies = yield inThread(transaction, server, b"Subject: big\r\n\r\n" + body)
        self.assertEqual(codes(replies)[-2:], [250, 221])
        chunks = [r.args[0] for r in milter.received(C.Command.BODY)]
        self.assertTrue(all(len(c) <= 65535 for c in chunks))  # type: ignore[arg-type]
        self.assertEqual(len(chunks[0]), 65535)  # type: ignore[arg-type]
        self.assertEqual(b"".join(chunks), body)  # type: ignore[arg-type]

    @defer.inlineCallbacks
    def test_skipBody(self) -> Generator[Any, Any, None]:
        """SMFIR_SKIP to a body chunk: no more body, then end of message."""
        milter = ScriptedMilter(
            self,
            handlers={C.Command.BODY: lambda r, side: C.respond(R.SKIP)},
            protocol=C.Protocol.SKIP,
        )
        server = startMilterServer(self, [milterFor(milter.address)])
        body = (b"z" * 98 + b"\r\n") * 2000
        replies = yield inThread(transaction, server, b"S: 1\r\n\r\n" + body)
        self.assertEqual(codes(replies)[-2:], [250, 221])
        self.assertEqual(len(milter.received(C.Command.BODY)), 1)
        self.assertEqual(len(milter.received(C.Command.BODYEOB)), 1)

    @defer.inlineCallbacks
    def test_abortBeforeNextMail(self) -> Generator[Any, Any, None]:
        """A transaction that ends without its message is aborted before the next MAIL; QUIT at the end."""
        milter = ScriptedMilter(self)
        server = startMilterServer(self, [milterFor(milter.address)])

        def client() -> list[tuple[int, str]]:
            with RawClient(server) as c:  # type: ignore[arg-type]
                out = [c.replies(1)[0]]
                for line in (b"EHLO c", b"MAIL FROM:<a@b.example>", b"RCPT TO:<user@example.com>",
                             b"RSET", b"MAIL FROM:<a@b.example>", b"QUIT"):  # fmt: skip
                    out.append(c.command(line))
                return out

        replies = yield inThread(client)
        self.assertEqual(codes(replies), [220, 250, 250, 250, 250, 250, 221])
        yield _settle()
        B = C.Command
        self.assertEqual(
            milter.commands(),
            [B.OPTNEG, B.CONNECT, B.HELO, B.MAIL, B.RCPT, B.ABORT, B.MAIL, B.ABORT, B.QUIT],
        )


class AnswerTests(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_unknownCommand(self) -> Generator[Any, Any, None]:
        """A command the server does not know goes to the milter, whose refusal replaces the 500."""

        def unknown(r: C.Received, side: Any) -> bytes:
            if "QUIET" in str(r.args[0]):
                return C.respond(R.CONTINUE)
            return C.respond(R.REPLYCODE, "550 5.5.1 Not that, ever")

        milter = ScriptedMilter(self, handlers={C.Command.UNKNOWN: unknown})
        server = startMilterServer(self, [milterFor(milter.address)])

        def client() -> list[tuple[int, str]]:
            with RawClient(server) as c:  # type: ignore[arg-type]
                c.greetAndEhlo()
                return [c.command(b"XYZZY magic"), c.command(b"QUIET please"), c.command(b"NOOP")]

        replies = yield inThread(client)
        self.assertEqual(
            replies,
            [
                (550, "5.5.1 Not that, ever"),
                (500, "5.5.1 Command unrecognized"),
                (250, "2.0.0 OK"),
            ],
        )
        self.assertEqual(
            [r.args for r in milter.received(C.Command.UNKNOWN)],
            [("XYZZY magic",), ("QUIET please",)],
        )

    @defer.inlineCallbacks
    def test_refusedAtConnect(self) -> Generator[Any, Any, None]:
        """Reject at connect greets with 554 and serves only QUIT; the milter is let go."""
        milter = ScriptedMilter(
            self, handlers={C.Command.CONNECT: lambda r, s: C.respond(R.REJECT)}
        )
        server = startMilterServer(self, [milterFor(milter.address)])
        replies = yield inThread(transaction, server)
        self.assertEqual(replies, [(554, "Command rejected")])  # no enhanced codes before EHLO

    @defer.inlineCallbacks
    def test_refusedAtHelo(self) -> Generator[Any, Any, None]:
        """A refusal at HELO answers HELO and every command after it (Postfix's REJECT_CON)."""
        milter = ScriptedMilter(
            self,
            handlers={C.Command.HELO: lambda r, s: C.respond(R.REPLYCODE, "550 5.7.0 go away")},
        )
        server = startMilterServer(self, [milterFor(milter.address)])

        def client() -> list[tuple[int, str]]:
            with RawClient(server) as c:  # type: ignore[arg-type]
                c.replies(1)
                return [c.command(b"EHLO c"), c.command(b"EHLO again")]

        replies = yield inThread(client)
        self.assertEqual(replies, [(550, "go away"), (550, "go away")])
        self.assertEqual(milter.commands().count(C.Command.HELO), 1)

    @defer.inlineCallbacks
    def test_senderAndRecipients(self) -> Generator[Any, Any, None]:
        """Tempfail at MAIL; at RCPT a refusal refuses, continue leaves it to the validators."""

        def rcpt(r: C.Received, side: Any) -> bytes:
            if "refused" in str(r.args[0]):
                return C.respond(R.REPLYCODE, "553 5.1.3 not here")
            return C.respond(R.CONTINUE)

        milter = ScriptedMilter(self, handlers={C.Command.RCPT: rcpt})
        server = startMilterServer(self, [milterFor(milter.address)])
        replies = yield inThread(
            transaction,
            server,
            recipients=("refused@example.com", "nobody@example.com", "user@example.com"),
        )
        self.assertEqual(
            replies[3:6],
            [
                (553, "5.1.3 not here"),
                (550, "5.1.1 No such user here"),
                (250, "2.1.5 Recipient OK"),
            ],
        )
        tempfail = ScriptedMilter(
            self, handlers={C.Command.MAIL: lambda r, s: C.respond(R.TEMPFAIL)}
        )
        server = startMilterServer(self, [milterFor(tempfail.address)])
        replies = yield inThread(transaction, server)
        self.assertEqual(replies[-1], (451, "4.7.1 Service unavailable - try again later"))

    @defer.inlineCallbacks
    def test_pipelinedRefusalsInOrder(self) -> Generator[Any, Any, None]:
        """A pipelined group's replies come in order, a milter's refusal in its place."""

        def rcpt(r: C.Received, side: Any) -> bytes:
            return C.respond(R.REJECT if "b@" in str(r.args[0]) else R.CONTINUE)

        milter = ScriptedMilter(self, handlers={C.Command.RCPT: rcpt})
        server = startMilterServer(self, [milterFor(milter.address)])

        def client() -> list[tuple[int, str]]:
            with RawClient(server) as c:  # type: ignore[arg-type]
                c.greetAndEhlo()
                c.send(
                    b"MAIL FROM:<x@y.example>\r\nRCPT TO:<a@example.com>\r\n"
                    b"RCPT TO:<b@example.com>\r\nRCPT TO:<user@example.com>\r\nDATA\r\n"
                )
                return c.replies(5)

        replies = yield inThread(client)
        self.assertEqual(codes(replies), [250, 250, 550, 250, 354])

    @defer.inlineCallbacks
    def test_refusedMessage(self) -> Generator[Any, Any, None]:
        """The milter's reply to the end of the message refuses it; nothing is delivered."""
        milter = ScriptedMilter(
            self,
            handlers={C.Command.BODYEOB: lambda r, s: C.respond(R.REPLYCODE, "554 5.7.1 Virus")},
        )
        server = startMilterServer(self, [milterFor(milter.address)])
        replies = yield inThread(transaction, server)
        self.assertEqual(replies[-2], (554, "5.7.1 Virus"))
        self.assertEqual(server.backend.messages, [])

    @defer.inlineCallbacks
    def test_discard(self) -> Generator[Any, Any, None]:
        """Discard: the client gets 250, the backend never sees the message."""
        milter = ScriptedMilter(
            self, handlers={C.Command.BODYEOB: lambda r, s: C.respond(R.DISCARD)}
        )
        server = startMilterServer(self, [milterFor(milter.address)])
        replies = yield inThread(transaction, server)
        self.assertEqual(codes(replies)[-2:], [250, 221])
        self.assertEqual(server.backend.messages, [])

    @defer.inlineCallbacks
    def test_acceptAtMail(self) -> Generator[Any, Any, None]:
        """Accept at MAIL: nothing more of this message reaches the milter; it is delivered."""
        milter = ScriptedMilter(self, handlers={C.Command.MAIL: lambda r, s: C.respond(R.ACCEPT)})
        server = startMilterServer(self, [milterFor(milter.address)])
        replies = yield inThread(transaction, server)
        self.assertEqual(codes(replies), [220, 250, 250, 250, 354, 250, 221])
        yield _settle()
        B = C.Command
        self.assertEqual(milter.commands(), [B.OPTNEG, B.CONNECT, B.HELO, B.MAIL, B.ABORT, B.QUIT])
        self.assertEqual(len(server.backend.messages), 1)

    @defer.inlineCallbacks
    def test_everyModification(self) -> Generator[Any, Any, None]:
        """Every change at the end of a message is applied; the Received: field stays first."""

        def eom(r: C.Received, side: Any) -> bytes:
            return b"".join(
                [
                    C.respond(R.PROGRESS),
                    C.respond(R.ADDHEADER, "X-Added", "at the end"),
                    C.respond(R.INSHEADER, 0, "X-Inserted", "on top"),
                    C.respond(R.CHGHEADER, 1, "Subject", "changed"),
                    C.respond(R.CHGHEADER, 1, "To", ""),
                    C.respond(R.ADDRCPT, "<added@example.net>"),
                    C.respond(R.ADDRCPT_PAR, "<param@example.net>", "NOTIFY=NEVER"),
                    C.respond(R.DELRCPT, "<user@example.com>"),
                    C.respond(R.CHGFROM, "<new@example.org>", "RET=HDRS"),
                    C.respond(R.QUARANTINE, "looks odd"),
                    C.respond(R.REPLBODY, b"new body\nsecond "),
                    C.respond(R.REPLBODY, b"line\r\n"),
                    C.respond(R.CONTINUE),
                ]
            )

        milter = ScriptedMilter(self, handlers={C.Command.BODYEOB: eom})
        server = startMilterServer(self, [milterFor(milter.address)])
        replies = yield inThread(transaction, server)
        self.assertEqual(codes(replies)[-2:], [250, 221])
        [stored] = server.backend.messages
        head, _, body = stored.data.partition(b"\r\n\r\n")
        fields = head.split(b"\r\n")
        self.assertTrue(fields[0].startswith(b"Received: "), fields)
        names = [f.split(b":")[0] for f in fields if not f.startswith((b" ", b"\t"))]
        self.assertEqual(names, [b"Received", b"X-Inserted", b"From", b"Subject", b"X-Added"])
        self.assertIn(b"Subject: changed", fields)
        self.assertEqual(body, b"new body\r\nsecond line\r\n")
        envelope = stored.envelope
        self.assertEqual(str(envelope.mailFrom), "new@example.org")
        self.assertEqual(dict(envelope.mailParams), {"RET": "HDRS"})
        self.assertEqual(
            [(str(r.address), dict(r.params)) for r in envelope.recipients],
            [("added@example.net", {}), ("param@example.net", {"NOTIFY": "NEVER"})],
        )
        self.assertEqual(envelope.quarantine, "looks odd")

    @defer.inlineCallbacks
    def test_notNegotiated(self) -> Generator[Any, Any, None]:
        """A change the milter did not negotiate is a protocol error: default action, nothing changed."""
        milter = ScriptedMilter(
            self,
            actions=C.Action.ADDHDRS,
            handlers={
                C.Command.BODYEOB: lambda r, s: (
                    C.respond(R.ADDHEADER, "X-A", "1")
                    + C.respond(R.REPLBODY, b"x")
                    + C.respond(R.CONTINUE)
                )
            },
        )
        server = startMilterServer(self, [milterFor(milter.address, defaultAction="accept")])
        replies = yield inThread(transaction, server)
        self.assertEqual(codes(replies)[-2:], [250, 221])
        [stored] = server.backend.messages
        self.assertNotIn(b"X-A:", stored.data)
        self.assertTrue(stored.data.endswith(b"\r\n\r\nbody line\r\n"))

    @defer.inlineCallbacks
    def test_largeBodyReplaced(self) -> Generator[Any, Any, None]:
        """A 10 MB message's body replaced by another 10 MB, sent in chunks: delivered whole."""
        line = b"r" * 98 + b"\r\n"
        replacement = line * 100000

        def eom(r: C.Received, side: Any) -> bytes:
            parts = [
                C.respond(R.REPLBODY, replacement[i : i + 65535])
                for i in range(0, len(replacement), 65535)
            ]
            return b"".join([*parts, C.respond(R.ACCEPT)])

        milter = ScriptedMilter(self, handlers={C.Command.BODYEOB: eom})
        server = startMilterServer(self, [milterFor(milter.address)], limits=_bigLimits())
        original = b"Subject: big\r\n\r\n" + b"o" * 98 + b"\r\n" * 1
        original += (b"o" * 98 + b"\r\n") * 100000
        replies = yield inThread(transaction, server, original)
        self.assertEqual(codes(replies)[-2:], [250, 221])
        [stored] = server.backend.messages
        self.assertEqual(stored.data.partition(b"\r\n\r\n")[2], replacement)


class FailureTests(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_down(self) -> Generator[Any, Any, None]:
        """Nothing listening: accept serves as if there were no milter; tempfail greets 421."""
        gone = ScriptedMilter(self)
        address = gone.address
        yield gone.stop()
        server = startMilterServer(self, [milterFor(address, defaultAction="accept")])
        replies = yield inThread(transaction, server)
        self.assertEqual(codes(replies), [220, 250, 250, 250, 354, 250, 221])
        server = startMilterServer(self, [milterFor(address, defaultAction="tempfail")])
        replies = yield inThread(transaction, server)
        self.assertEqual(replies, [(421, "Service unavailable - try again later")])

    @defer.inlineCallbacks
    def test_closesMidBody(self) -> Generator[Any, Any, None]:
        """A milter that closes in the middle of the body: accept delivers unchanged, tempfail 451."""

        def body(r: C.Received, side: Any) -> bytes | None:
            side.transport.loseConnection()
            return None

        big = b"Subject: x\r\n\r\n" + (b"q" * 98 + b"\r\n") * 2000
        for action, expected in (("accept", 250), ("tempfail", 451)):
            milter = ScriptedMilter(
                self,
                handlers={
                    C.Command.BODY: body,
                    C.Command.BODYEOB: lambda r, s: (
                        C.respond(R.ADDHEADER, "X-No", "1") + C.respond(R.CONTINUE)
                    ),
                },
            )
            server = startMilterServer(self, [milterFor(milter.address, defaultAction=action)])
            replies = yield inThread(transaction, server, big)
            self.assertEqual(replies[-2][0], expected)
            delivered = server.backend.messages
            if expected == 250:
                self.assertEqual(splitReceived(delivered[0].data)[1], big)
            else:
                self.assertEqual(delivered, [])

    @defer.inlineCallbacks
    def test_neverAnswers(self) -> Generator[Any, Any, None]:
        """A milter that never answers RCPT: after command-timeout, default-action decides."""
        for action, expected in (("tempfail", 451), ("accept", 250)):
            milter = ScriptedMilter(self, handlers={C.Command.RCPT: lambda r, s: None})
            server = startMilterServer(
                self, [milterFor(milter.address, defaultAction=action, commandTimeout=0.3)]
            )
            replies = yield inThread(transaction, server)
            self.assertEqual(replies[3][0], expected)
            if expected == 250:
                self.assertEqual(codes(replies)[-2:], [250, 221])

    @defer.inlineCallbacks
    def test_badPacket(self) -> Generator[Any, Any, None]:
        """Garbage from the milter is a protocol error: default action."""
        milter = ScriptedMilter(self, handlers={C.Command.HELO: lambda r, s: b"\0\0\0\0"})
        server = startMilterServer(self, [milterFor(milter.address, defaultAction="tempfail")])
        replies = yield inThread(transaction, server)
        self.assertEqual(replies[1], (451, "Service unavailable - try again later"))

    @defer.inlineCallbacks
    def test_oldVersionRefused(self) -> Generator[Any, Any, None]:
        """A milter answering with a version mailframe does not speak: default action."""
        milter = ScriptedMilter(self, version=7)
        server = startMilterServer(self, [milterFor(milter.address, defaultAction="accept")])
        replies = yield inThread(transaction, server)
        self.assertEqual(codes(replies), [220, 250, 250, 250, 354, 250, 221])


class ServerDiscardTests(TestCase):
    """The server's part: a message filter's discard and quarantine (no milter involved)."""

    timeout = 30

    @defer.inlineCallbacks
    def test_discardAndQuarantine(self) -> Generator[Any, Any, None]:
        """envelope.discard: 250, not delivered; envelope.quarantine alone: delivered."""

        class Marking:
            def __init__(self, field: str) -> None:
                self.field = field

            def filterMessage(
                self, session: SessionInfo, envelope: Envelope, message: Any
            ) -> None:
                setattr(envelope, self.field, "test")

        from zope.interface import directlyProvides

        for field, delivered in (("discard", 0), ("quarantine", 1)):
            marking = Marking(field)
            directlyProvides(marking, I.IMessageFilter)
            server = startMilterServer(self, [], messageFilters=[marking])
            replies = yield inThread(transaction, server)
            self.assertEqual(codes(replies)[-2:], [250, 221])
            self.assertEqual(len(server.backend.messages), delivered)


def _bigLimits() -> Any:
    from mailframe.protocol import Limits

    return Limits(messageSize=64 << 20)


def _settle() -> defer.Deferred[None]:
    """Let the last packets (ABORT, QUIT) reach the scripted milter."""
    from twisted.internet import reactor, task

    return task.deferLater(reactor, 0.1, lambda: None)  # type: ignore[arg-type]
