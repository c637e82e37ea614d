"""
The SMTP server on Twisted: L{SMTPServerFactory} builds an
L{SMTPServerProtocol} per connection; the sans-IO core
(L{mailframe.protocol}) decides the protocol rules, this package does the
I/O and calls the plug points.

Modules: C{factory} (the factory), C{context} (what every session of a
server shares: settings, checked plug-ins, totals), C{protocol} (a
session's I/O and timers), C{commands} (what each command does with the
plug points), C{chains} (the one contract of plug-in chains), C{control}
(what an extension may do to its session), C{tls} (server TLS contexts,
implicit TLS), C{proxy} (the PROXY protocol header in front of a listener).

Must not: import mailframe.client, mailframe.queue, mailframe.app, or the
reactor at import time.
"""

from mailframe.server.factory import SMTPServerFactory
from mailframe.server.protocol import SMTPServerProtocol

__all__ = ["SMTPServerFactory", "SMTPServerProtocol"]
