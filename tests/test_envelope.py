"""
Tests for the values plug points see (L{mailframe.envelope}): the frozen
session snapshot, plug-ins' own state by owner, and the documented fields
of L{DeliveryResult}.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from twisted.trial.unittest import SynchronousTestCase

from mailframe import reply as R
from mailframe.address import parseMailbox
from mailframe.envelope import (
    DeliveryResult,
    Envelope,
    Recipient,
    SessionInfo,
    SessionSnapshot,
    TLSInfo,
)
from mailframe.results import IPRevResult


def session() -> SessionInfo:
    return SessionInfo("S1", "192.0.2.9", 4000, "192.0.2.1", 25, "mx.test", heloName="c.test")


@dataclass
class Counter:
    n: int = 0


class SnapshotTests(SynchronousTestCase):
    def test_facts(self) -> None:
        """A snapshot holds the session's facts and cannot be changed."""
        s = session()
        s.tls = TLSInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384")
        s.authenticated, s.authMechanism = "alice", "PLAIN"
        s.iprev = IPRevResult("pass", "192.0.2.9", ("c.example",))
        snap = s.snapshot("ESMTPSA")
        self.assertEqual(
            (snap.peerHost, snap.heloName, snap.protocol, snap.authenticated, snap.peerName),
            ("192.0.2.9", "c.test", "ESMTPSA", "alice", "c.example"),
        )
        self.assertEqual(snap.authMechanism, "PLAIN")
        self.assertRaises(dataclasses.FrozenInstanceError, setattr, snap, "peerHost", "x")
        s.heloName = "other"
        self.assertEqual(snap.heloName, "c.test")  # a copy, not a view

    def test_unverifiedNameNotKept(self) -> None:
        """Only a verified reverse name (iprev pass) becomes peerName."""
        s = session()
        s.iprev = IPRevResult("fail", "192.0.2.9", ("liar.example",))
        self.assertIsNone(s.snapshot().peerName)
        self.assertEqual(s.snapshot().protocol, "SMTP")

    def test_envelopeCarriesIt(self) -> None:
        """An envelope carries the snapshot; made outside a session it has none."""
        env = Envelope("Q1", parseMailbox("a@b.example"))
        self.assertIsNone(env.session)
        env.session = SessionSnapshot(peerHost="192.0.2.9")
        self.assertEqual(env.session.peerHost, "192.0.2.9")


class StateTests(SynchronousTestCase):
    def test_perOwner(self) -> None:
        """Each owner gets its own state, made once, the same object after."""
        s = session()
        a, b = object(), object()
        s.stateFor(a, Counter).n += 1
        s.stateFor(a, Counter).n += 1
        self.assertEqual(s.stateFor(a, Counter).n, 2)
        self.assertEqual(s.stateFor(b, Counter).n, 0)
        s.dropState(a)
        self.assertEqual(s.stateFor(a, Counter).n, 0)

    def test_envelopeState(self) -> None:
        """A transaction's state is its own: a new envelope starts empty."""
        owner = object()
        first = Envelope("Q1", parseMailbox("a@b.example"))
        first.stateFor(owner, Counter).n = 5
        second = Envelope("Q2", parseMailbox("a@b.example"))
        self.assertEqual(second.stateFor(owner, Counter).n, 0)

    def test_deadOwnerNotConfused(self) -> None:
        """State is keyed by the owner object, not by a reused id()."""
        s = session()
        s.stateFor(Counter(), Counter).n = 7  # the owner is garbage right after
        self.assertEqual(s.stateFor(Counter(), Counter).n, 0)


class DeliveryResultTests(SynchronousTestCase):
    def test_fields(self) -> None:
        """dsn and queueID default to empty; allDelivered answers every recipient."""
        env = Envelope("Q1", parseMailbox("a@b.example"))
        env.recipients += [
            Recipient(parseMailbox("x@y.example")),
            Recipient(parseMailbox("z@y.example")),
        ]
        result = DeliveryResult.allDelivered(env, R.OK)
        self.assertEqual((result.dsn, result.queueID), ((), None))
        self.assertTrue(result.delivered)
        self.assertEqual(len(result.replies), 2)
