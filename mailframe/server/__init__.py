"""
The SMTP server on Twisted: L{SMTPServerFactory} builds an
L{SMTPServerProtocol} per connection; the sans-IO core
(L{mailframe.protocol}) decides the protocol rules, this package does the
I/O and calls the plug points.

Modules: C{protocol} (the session's I/O and timers), C{commands} (what each
command does with the plug points), C{tls} (server TLS contexts, implicit
TLS), C{proxy} (the PROXY protocol header in front of a listener).

Must not: import mailframe.queue, mailframe.app or the reactor at import time.
"""

from mailframe.server.protocol import SMTPServerFactory, SMTPServerProtocol

__all__ = ["SMTPServerFactory", "SMTPServerProtocol"]
