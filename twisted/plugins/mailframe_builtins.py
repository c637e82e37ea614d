# The built-in mailframe plug-ins (maildir, mbox, memory, pipe, any, domains,
# addresses, aliases, virtual, subaddress, and the security checks) as twisted.plugin dropins, for
# getPlugins(IPlugInFactory).  twistd imports every dropin when it scans for
# service makers, so this imports only the factories, which import no
# provider module.
from mailframe.backends.factories import maildirBackend, mboxBackend, memoryBackend, pipeBackend
from mailframe.validators.factories import (
    addressesValidator,
    aliasesRewriter,
    anyValidator,
    domainsValidator,
    subaddressRewriter,
    virtualRewriter,
)
from mailframe.policy.factories import POLICY_FACTORIES

(
    limitsFilter,
    dnsblFilter,
    heloFilter,
    spfFilter,
    dkimVerifyFilter,
    dmarcFilter,
    authResultsFilter,
    dkimSignFilter,
    rspamdFilter,
) = POLICY_FACTORIES

__all__ = [
    "addressesValidator",
    "aliasesRewriter",
    "anyValidator",
    "authResultsFilter",
    "dkimSignFilter",
    "dkimVerifyFilter",
    "dmarcFilter",
    "dnsblFilter",
    "domainsValidator",
    "heloFilter",
    "limitsFilter",
    "maildirBackend",
    "mboxBackend",
    "memoryBackend",
    "pipeBackend",
    "rspamdFilter",
    "spfFilter",
    "subaddressRewriter",
    "virtualRewriter",
]
