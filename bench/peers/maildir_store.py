"""Durable Maildir delivery shared by the *_maildir peers.

deliver(data) is blocking and thread-safe: it
  1. creates tmp/<unique> (O_EXCL), writes the whole message, fsync()s it,
  2. renames it into new/<unique>,
  3. fsync()s the new/ directory so the entry itself is on disk,
and only then returns, so the caller can answer 250 for a message that is
on stable storage (as far as the kernel/device honour fsync).  This is the
qmail/Dovecot Maildir recipe, and slightly stricter than Postfix's queue,
which fsync()s the queue file but not its directory.

Unique names follow the Maildir convention: <sec>.M<usec>P<pid>Q<n>.<host>.
"""

import itertools
import os
import threading
import time


class Maildir:
    def __init__(self, root, fsync=True, host="localhost"):
        self.root = os.path.abspath(root)
        self.fsync = fsync
        self.host = host
        self.pid = os.getpid()
        self._seq = itertools.count()
        self._lock = threading.Lock()
        for sub in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(self.root, sub), mode=0o700, exist_ok=True)
        self.tmp = os.path.join(self.root, "tmp")
        self.new = os.path.join(self.root, "new")
        self._new_fd = os.open(self.new, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        if fsync:  # make the tree itself durable once
            for d in (self.root, os.path.dirname(self.root)):
                fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        self.delivered = 0

    def unique(self):
        t = time.time()
        with self._lock:
            n = next(self._seq)
        sec = int(t)
        return f"{sec}.M{int((t - sec) * 1e6)}P{self.pid}Q{n}.{self.host}"

    def deliver(self, data):
        """Write data (bytes) as one Maildir message; blocking; returns the name."""
        name = self.unique()
        tmp = os.path.join(self.tmp, name)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(data)
            for _ in range(1 + len(view) // 4096):  # bounded: each write >= 1 byte
                if not view:
                    break
                view = view[os.write(fd, view) :]
            if view:
                raise OSError(f"short write on {tmp}")
            if self.fsync:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
        os.close(fd)
        os.rename(tmp, os.path.join(self.new, name))
        if self.fsync:
            os.fsync(self._new_fd)
        with self._lock:
            self.delivered += 1
        return name

    def count_new(self):
        return len(os.listdir(self.new))

    def close(self):
        os.close(self._new_fd)
