"""
L{emit}: a decision event (L{mailframe.events}) handed to a logger's
observers without twisted.logger's per-call checks (C{Logger.emit} checks
the level against every level, sorting them, on each call): the same event,
in a fraction of the time, for the lines logged once or more per message.

Must not: format anything (observers do), or hold state.
"""

from __future__ import annotations

from collections.abc import Callable
from time import time
from typing import Any

from twisted.logger import Logger, LogLevel

__all__ = ["counting", "emit"]

_INFO = LogLevel.info


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
    fields["log_logger"] = logger
    fields["log_level"] = _INFO
    fields["log_namespace"] = logger.namespace
    fields["log_source"] = logger.source
    fields["log_format"] = format
    fields["log_time"] = time()
    if logged:
        logger.observer(fields)
    else:
        for observer in counting:
            observer(fields)
