"""
L{emit}: a decision event (L{mailframe.events}) handed to a logger's
observers without twisted.logger's per-call checks (C{Logger.emit} checks
the level against every level, sorting them, on each call): the same event,
in a fraction of the time, for the lines logged once or more per message.

Must not: format anything (observers do), or hold state (but a cache of
what the events of each logger and format share).
"""

from __future__ import annotations

from collections.abc import Callable
from time import time
from typing import Any

from twisted.logger import Logger, LogLevel

__all__ = ["INFO", "counting", "emit"]

INFO = _INFO = LogLevel.info
_common: dict[tuple[Logger, str], dict[str, Any]] = {}


counting: list[Callable[[dict[str, Any]], None]] = []
"""
The observers that count decision events without logging them (the
metrics): they are given the events of a listener or queue whose lines are
off (C{--quiet}), which the server and queue then emit only for them.
"""


def emit(logger: Logger, format: str, fields: dict[str, Any], logged: bool = True) -> None:
    """
    Log C{fields} at info level with C{format} through C{logger}, as
    C{logger.info} would; when not C{logged}, only to the L{counting} observers.
    """
    key = (logger, format)
    common = _common.get(key)
    if common is None:  # what every event of this logger and format carries, made once
        if len(_common) >= 1024:
            _common.clear()
        common = _common[key] = {
            "log_logger": logger,
            "log_level": _INFO,
            "log_namespace": logger.namespace,
            "log_source": logger.source,
            "log_format": format,
        }
    fields.update(common)
    fields["log_time"] = time()
    if logged:
        logger.observer(fields)
    else:
        for observer in counting:
            observer(fields)
