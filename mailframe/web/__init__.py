"""
The web layer: the web console's server side on twisted.web
(L{mailframe.web.console}: the page, its files and the JSON API under
C{/api/v1}), its login (L{mailframe.web.auth}), the data it shows
(L{mailframe.web.sessions}, L{mailframe.web.decisions},
L{mailframe.web.stats}, L{mailframe.web.queueapi},
L{mailframe.web.settingsview}), capture mode's store
(L{mailframe.web.capture}) and its message API (L{mailframe.web.api}),
and the sanitiser of a message's HTML (L{mailframe.web.sanitise}).

Owns: HTTP, the console's sessions and the captured mail.  Must not:
import mailframe.app (the application passes in what the console shows).
"""
