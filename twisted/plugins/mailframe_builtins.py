# The built-in mailframe plug-ins (maildir, mbox, memory, pipe, lmtp, webhook,
# amqp, redis-stream, any, domains,
# addresses, aliases, virtual, subaddress, and the security checks) as twisted.plugin dropins, for
# getPlugins(IPlugInFactory).  twistd imports every dropin when it scans for
# service makers, so this imports only the factories, which import no
# provider module.
from mailframe.backends.factories import (
    amqpBackend,
    lmtpBackend,
    maildirBackend,
    mboxBackend,
    memoryBackend,
    pipeBackend,
    redisStreamBackend,
    webhookBackend,
)
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
    "amqpBackend",
    "anyValidator",
    "authResultsFilter",
    "dkimSignFilter",
    "dkimVerifyFilter",
    "dmarcFilter",
    "dnsblFilter",
    "domainsValidator",
    "heloFilter",
    "limitsFilter",
    "lmtpBackend",
    "maildirBackend",
    "mboxBackend",
    "memoryBackend",
    "pipeBackend",
    "redisStreamBackend",
    "rspamdFilter",
    "spfFilter",
    "subaddressRewriter",
    "virtualRewriter",
    "webhookBackend",
]
