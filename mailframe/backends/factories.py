"""
The plug-in factories of the built-in delivery backends, chosen with
C{--deliver}: C{maildir}, C{mbox}, C{memory}.

Must not: import a backend's module at import time (twistd imports the
dropins while scanning for service makers); providers are built in C{build}.
"""

from __future__ import annotations

from typing import Any

from mailframe.interfaces import IDeliveryBackend
from mailframe.plugins import PlugInFactory

__all__ = ["BACKEND_FACTORIES", "maildirBackend", "mboxBackend", "memoryBackend"]


class _Maildir(PlugInFactory):
    prefix = "maildir"
    provides = IDeliveryBackend
    synopsis = "maildir:PATH[:layout=single|user|domain]"
    description = (
        "Deliver into Maildir folders under PATH: one for all mail (single), "
        "PATH/LOCALPART (user), or PATH/DOMAIN/LOCALPART (domain)."
    )

    def checkArguments(self, *args: str, **kwargs: str) -> dict[str, Any]:
        self._options(kwargs, ["layout"])
        layout = self._choice(kwargs, "layout", ("single", "user", "domain"))
        return {"path": self._path(args), "layout": layout}

    def build(self, context: Any, **arguments: Any) -> Any:
        from mailframe.backends.maildir import MaildirBackend

        return MaildirBackend(context.reactor, arguments["path"], layout=arguments["layout"])


class _Mbox(PlugInFactory):
    prefix = "mbox"
    provides = IDeliveryBackend
    synopsis = "mbox:PATH[:layout=single|user]"
    description = (
        "Append to mbox files: the file PATH for all mail (single), or PATH/LOCALPART (user)."
    )

    def checkArguments(self, *args: str, **kwargs: str) -> dict[str, Any]:
        self._options(kwargs, ["layout"])
        layout = self._choice(kwargs, "layout", ("single", "user"))
        return {"path": self._path(args), "layout": layout}

    def build(self, context: Any, **arguments: Any) -> Any:
        from mailframe.backends.mbox import MboxBackend

        return MboxBackend(context.reactor, arguments["path"], layout=arguments["layout"])


class _Memory(PlugInFactory):
    prefix = "memory"
    provides = IDeliveryBackend
    synopsis = "memory[:keep=yes|no]"
    description = "Keep messages in memory, lost at exit (for tests); keep=no only counts them."

    def checkArguments(self, *args: str, **kwargs: str) -> dict[str, Any]:
        self._noArguments(args)
        self._options(kwargs, ["keep"])
        return {"keep": self._flag(kwargs, "keep", True)}

    def build(self, context: Any, **arguments: Any) -> Any:
        from mailframe.backends.memory import MemoryBackend

        return MemoryBackend(keep=arguments["keep"])


maildirBackend = _Maildir()
mboxBackend = _Mbox()
memoryBackend = _Memory()

BACKEND_FACTORIES: tuple[PlugInFactory, ...] = (maildirBackend, mboxBackend, memoryBackend)
