"""
L{emit}: a decision event (L{mailframe.events}) handed to a logger's
observers without twisted.logger's per-call checks (C{Logger.emit} checks
the level against every level, sorting them, on each call): the same event,
in a fraction of the time, for the lines logged once or more per message.

Must not: format anything (observers do), or hold state.
"""

from __future__ import annotations

from time import time
from typing import Any

from twisted.logger import Logger, LogLevel

__all__ = ["emit"]

_INFO = LogLevel.info


def emit(logger: Logger, format: str, fields: dict[str, Any]) -> None:
    """Log C{fields} at info level with C{format} through C{logger}, as C{logger.info} would."""
    fields["log_logger"] = logger
    fields["log_level"] = _INFO
    fields["log_namespace"] = logger.namespace
    fields["log_source"] = logger.source
    fields["log_format"] = format
    fields["log_time"] = time()
    logger.observer(fields)
