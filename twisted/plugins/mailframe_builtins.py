# The built-in mailframe plug-ins (maildir, mbox, memory, any, domains,
# addresses) as twisted.plugin dropins, for getPlugins(IPlugInFactory).
# twistd imports every dropin when it scans for service makers, so this
# imports only mailframe.plugins, which imports no provider module.
from mailframe.plugins import (
    addressesValidator,
    anyValidator,
    domainsValidator,
    maildirBackend,
    mboxBackend,
    memoryBackend,
)

__all__ = [
    "addressesValidator",
    "anyValidator",
    "domainsValidator",
    "maildirBackend",
    "mboxBackend",
    "memoryBackend",
]
