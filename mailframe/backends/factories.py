"""
The plug-in factories of the built-in delivery backends, chosen with
C{--deliver}: C{maildir}, C{mbox}, C{memory}.

Must not: import a backend's module at import time (twistd imports the
dropins while scanning for service makers); providers are built in C{build}.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mailframe.interfaces import IDeliveryBackend
from mailframe.plugins import Choice, Option, PlugInFactory, YesNo

if TYPE_CHECKING:
    from mailframe.config import ProviderContext

__all__ = ["BACKEND_FACTORIES", "maildirBackend", "mboxBackend", "memoryBackend"]


class _Maildir(PlugInFactory):
    prefix = "maildir"
    provides = IDeliveryBackend
    arguments = "PATH"
    options = (
        Option(
            "layout",
            Choice("single", "user", "domain"),
            "single",
            "One Maildir for all mail, one per local part, or one per domain and local part.",
        ),
    )
    description = (
        "Deliver into Maildir folders under PATH: one for all mail (single), "
        "PATH/LOCALPART (user), or PATH/DOMAIN/LOCALPART (domain)."
    )

    def checkArguments(self, *args: str, **kwargs: str) -> dict[str, Any]:
        options = self.parseOptions(kwargs)
        return {"path": self._path(args), "layout": options["layout"]}

    def build(self, context: ProviderContext, **arguments: Any) -> IDeliveryBackend:
        from mailframe.backends.maildir import MaildirBackend

        return MaildirBackend(context.reactor, arguments["path"], layout=arguments["layout"])


class _Mbox(PlugInFactory):
    prefix = "mbox"
    provides = IDeliveryBackend
    arguments = "PATH"
    options = (
        Option(
            "layout",
            Choice("single", "user"),
            "single",
            "The file PATH for all mail, or one file per local part.",
        ),
    )
    description = (
        "Append to mbox files: the file PATH for all mail (single), or PATH/LOCALPART (user)."
    )

    def checkArguments(self, *args: str, **kwargs: str) -> dict[str, Any]:
        options = self.parseOptions(kwargs)
        return {"path": self._path(args), "layout": options["layout"]}

    def build(self, context: ProviderContext, **arguments: Any) -> IDeliveryBackend:
        from mailframe.backends.mbox import MboxBackend

        return MboxBackend(context.reactor, arguments["path"], layout=arguments["layout"])


class _Memory(PlugInFactory):
    prefix = "memory"
    provides = IDeliveryBackend
    options = (Option("keep", YesNo(), True, "Keep the messages (no: only count them)."),)
    description = "Keep messages in memory, lost at exit (for tests); keep=no only counts them."

    def checkArguments(self, *args: str, **kwargs: str) -> dict[str, Any]:
        self._noArguments(args)
        return self.parseOptions(kwargs)

    def build(self, context: ProviderContext, **arguments: Any) -> IDeliveryBackend:
        from mailframe.backends.memory import MemoryBackend

        return MemoryBackend(keep=arguments["keep"])


maildirBackend = _Maildir()
mboxBackend = _Mbox()
memoryBackend = _Memory()

BACKEND_FACTORIES: tuple[PlugInFactory, ...] = (maildirBackend, mboxBackend, memoryBackend)
