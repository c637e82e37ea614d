"""
L{redactSettings}: the settings in force as C{/api/v1/settings} shows
them, every secret taken out.  The application hands the values over
(this module does not know the schema): their names, and which of them
are file paths.

The rules: a file path is kept (its content is the secret, not its name);
a password in a URL or a secret-looking query parameter is masked
(L{mailframe.plugins.redact}); a setting or table key whose name says
password, secret, token or key (but a file path) is C{"****"}; an AUTH
checker description keeps its kind and, for a file-based one, its path
(C{memory:USER:PASSWORD} becomes C{memory:****}).

Owns: the redaction.  Must not: import mailframe.app.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from typing import Any

from mailframe.plugins import redact

__all__ = ["MASK", "redactSettings", "redactValue"]

MASK = "****"
_SECRET_NAME = re.compile(r"pass(word)?|secret|token|(^|[-_])key$|api[-_]?key|credential", re.I)
_AUTH_SETTINGS = frozenset({"auth", "web-auth"})
_FILE_CHECKERS = frozenset({"file", "mailframe", "unix", "sshkeys", "htpasswd"})


def _isSecretName(name: str) -> bool:
    lowered = name.lower()
    if lowered.endswith(("-file", "_file", "file")):
        return False
    return bool(_SECRET_NAME.search(lowered))


def _checker(description: str) -> str:
    kind, colon, _ = description.partition(":")
    if not colon or kind.lower() in _FILE_CHECKERS:
        return description
    return f"{kind}:{MASK}"


def redactValue(name: str, value: Any, path: bool = False) -> Any:
    """C{value} of the setting (or table key) C{name}, as JSON, its secrets masked."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if name in _AUTH_SETTINGS:
        items = [value] if isinstance(value, str) else list(value)
        return [_checker(str(v)) for v in items]
    if isinstance(value, Mapping):
        return {str(k): redactValue(str(k), v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        ordered = sorted(value, key=str) if isinstance(value, (set, frozenset)) else list(value)
        return [redactValue(name, v, path) for v in ordered]
    if isinstance(value, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return str(value)
    if not isinstance(value, str):
        value = str(value)
    if path:
        return redact(value)
    if _isSecretName(name):
        return MASK
    return redact(value)


def redactSettings(
    settings: Iterable[tuple[str, Any]], paths: Iterable[str] = ()
) -> list[dict[str, Any]]:
    """C{[{"name", "value"}]} of C{(name, value)} pairs; C{paths}: the names of file paths."""
    isPath = frozenset(paths)
    return [
        {"name": name, "value": redactValue(name, value, name in isPath)}
        for name, value in settings
    ]
