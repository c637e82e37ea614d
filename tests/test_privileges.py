"""
Tests for running as an unprivileged user: what mailframe creates at start
is handed to the user twistd switches to (L{mailframe.backends._files.setOwner},
L{mailframe.app.privileges.runAs}), and the directories made at start are
noted so that a server that cannot listen leaves none behind.

The end-to-end test (port 25-style privileged port bound as root, the
process then running as C{nobody}, the Maildir and spool its) is in
tests/test_operations.py.
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from mailframe.app.privileges import runAs
from mailframe.backends import _files
from mailframe.backends.maildir import MaildirBackend
from mailframe.backends.mbox import MboxBackend
from tests.test_backends_maildir import SynchronousReactor

NOBODY = pwd.getpwnam("nobody")


class OwnerTests(SynchronousTestCase):
    """setOwner: directories (and an mbox file) made from then on are the user's."""

    def setUp(self) -> None:
        if os.geteuid() != 0:
            raise self.skipTest("only root can give files away")
        self.addCleanup(_files.setOwner, None, None)
        _files.setOwner(NOBODY.pw_uid, NOBODY.pw_gid)

    def test_maildir(self) -> None:
        """A Maildir made at start, its parents made with it, are the user's; existing ones are not touched."""
        root = Path(self.mktemp())
        root.mkdir()
        MaildirBackend(SynchronousReactor(), str(root / "a" / "Maildir"))  # type: ignore[arg-type]
        for path in (root / "a", root / "a" / "Maildir", root / "a" / "Maildir" / "new"):
            self.assertEqual((path.stat().st_uid, path.stat().st_gid),
                             (NOBODY.pw_uid, NOBODY.pw_gid), path)  # fmt: skip
        self.assertEqual(root.stat().st_uid, 0)

    def test_mbox(self) -> None:
        """An mbox file made at start is the user's."""
        root = Path(self.mktemp())
        MboxBackend(SynchronousReactor(), str(root / "mbox"))  # type: ignore[arg-type]
        self.assertEqual((root / "mbox").stat().st_uid, NOBODY.pw_uid)
        self.assertEqual(root.stat().st_uid, NOBODY.pw_uid)

    def test_groupOnly(self) -> None:
        """With a group only, the owner stays."""
        _files.setOwner(None, NOBODY.pw_gid)
        path = Path(self.mktemp())
        _files.makeDirectory(str(path))
        self.assertEqual((path.stat().st_uid, path.stat().st_gid), (0, NOBODY.pw_gid))

    def test_off(self) -> None:
        """setOwner(None, None) stops it."""
        _files.setOwner(None, None)
        path = Path(self.mktemp())
        _files.makeDirectory(str(path))
        self.assertEqual(path.stat().st_uid, 0)


class NotedTests(SynchronousTestCase):
    """noteCreated and removeCreated."""

    def test_removeWhatWasMade(self) -> None:
        """The directories made are noted; those still empty are removed, parents after children."""
        root = Path(self.mktemp()).absolute()
        root.mkdir()
        (root / "kept").mkdir()
        with _files.noteCreated() as created:
            MaildirBackend(SynchronousReactor(), str(root / "new" / "Maildir"))  # type: ignore[arg-type]
            _files.makeDirectory(str(root / "kept" / "full"))
        self.assertEqual(created[:2], [str(root / "new"), str(root / "new" / "Maildir")])
        (root / "kept" / "full" / "mail").write_text("not ours to remove")
        _files.makeDirectory(str(root / "later"))  # not noted: made after
        _files.removeCreated(created)
        self.assertEqual(sorted(p.name for p in root.iterdir()), ["kept", "later"])
        self.assertTrue((root / "kept" / "full" / "mail").exists())


class RunAsTests(SynchronousTestCase):
    """runAs reads twistd's --uid and --gid (the parent options)."""

    class Options(dict):  # type: ignore[type-arg]
        parent: dict[str, object] | None = None

    def options(self, **parent: object) -> Options:
        options = self.Options()
        options.parent = parent
        return options

    def test_values(self) -> None:
        """uid and gid as given; the user's group with --uid alone; None without either."""
        if os.geteuid() != 0:
            raise self.skipTest("runAs is None unless root")
        self.assertEqual(runAs(self.options(uid=NOBODY.pw_uid, gid=5)), (NOBODY.pw_uid, 5))
        self.assertEqual(runAs(self.options(uid=NOBODY.pw_uid, gid=None)),
                         (NOBODY.pw_uid, NOBODY.pw_gid))  # fmt: skip
        self.assertEqual(runAs(self.options(uid=None, gid=7)), (None, 7))
        self.assertIsNone(runAs(self.options(uid=None, gid=None)))

    def test_notUnderTwistd(self) -> None:
        """Options parsed by code (no twistd parent) hand nothing over."""
        self.assertIsNone(runAs(self.Options()))
