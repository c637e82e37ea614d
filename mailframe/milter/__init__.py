"""
Milters: content filters that speak Sendmail's mail filter protocol
(OpenDKIM, clamav-milter, rspamd's proxy, ...), plugged into every stage of
a session.

  - L{mailframe.milter.codec}: the packets, sans-IO (standard library only);
  - L{mailframe.milter.client}: one connection per SMTP session, on Twisted;
  - L{mailframe.milter.filter}: L{Milter}, the plug-in that asks a milter at
    each stage and applies what it asks for;
  - L{mailframe.milter.edits}: applying header, body and envelope changes.

This package's own module imports nothing, so that the codec imports
without twisted.
"""
