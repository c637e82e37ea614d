"""
The web layer: capture mode's store (L{mailframe.web.capture}) and the
JSON REST API on twisted.web (L{mailframe.web.api}).

Owns: HTTP and the captured mail.  Must not: import mailframe.app.
"""
