"""
The log of C{twistd mailframe}: C{--log-format text} (the default: twistd's
lines) or C{json} (one JSON object per line per event), written through a
buffer that is flushed on a short timer, at once for a warning or worse,
and when the process stops, so that the decision lines
(L{mailframe.events}) cost little.

Under twistd the observer replaces twistd's own (L{installFor}: it is the
application's C{ILogObserver}); twistd's C{--logfile} (a file, rotated as
twistd rotates its own, or C{-} for standard output) is where it writes.
C{--syslog} and C{--logger} are twistd's and win: mailframe then installs
nothing.

The JSON object of an event: C{time} (ISO 8601, UTC), C{level}
(C{info}, C{warn} ...), C{namespace}, C{text} (the line the text log
shows), and, for a decision event, every field of it (C{mfEvent},
C{sessionID} ...: see L{mailframe.events}); a failure adds C{failure}
(the traceback).  Other fields are left out, so that the names stay stable.

Owns: rendering events (text and JSON) and the buffered writer.  Must
not: import the server or the reactor at import time.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import string
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import IO, Any

from twisted.logger import ILogObserver, LogEvent, LogLevel, formatEvent
from zope.interface import implementer

from mailframe import events

__all__ = [
    "FORMATS",
    "BufferedLogObserver",
    "eventAsJSON",
    "eventAsText",
    "installFor",
    "observerFor",
    "render",
]

FORMATS = ("text", "json")
"""The values of the C{log-format} setting."""

FLUSH_INTERVAL = 0.5
"""Seconds a line may wait in the buffer (a warning or worse never waits)."""

_AT_ONCE = frozenset({"warn", "error", "critical"})
_INFO = LogLevel.info
_WAITS = frozenset({"mailframe.server", "mailframe.queue"})
"""The namespaces of the decision lines (not C{mailframe}'s own: written at once)."""
_getIdent = threading.get_ident
_CHUNK = 4096  # PIPE_BUF: a write this size is never interleaved with another process's
_KEY = events.KEY
_formatter = string.Formatter()
_compiled: dict[str, Callable[[LogEvent], str] | None] = {}


def _compile(fmt: str) -> Callable[[LogEvent], str] | None:
    """
    A function rendering C{fmt} from an event as one f-string, or None if
    the format needs twisted's own formatting (attributes, calls).  Field
    names are identifiers, optionally with one C{[key]}; specs are literal.
    """
    try:
        pieces = list(_formatter.parse(fmt))
    except ValueError:
        return None
    code = []
    for literal, name, spec, conversion in pieces:
        code.append(literal.replace("{", "{{").replace("}", "}}"))
        if name is None:
            continue
        base, bracket, rest = name.partition("[")
        if not base.isidentifier() or (bracket and not rest.endswith("]")):
            return None
        if (spec and "{" in spec) or conversion not in (None, "r", "s", "a"):
            return None
        ref = f"e[{base!r}]" + (f"[{rest[:-1]!r}]" if bracket else "")
        code.append("{" + ref + (f"!{conversion}" if conversion else "")
                    + (f":{spec}" if spec else "") + "}")  # fmt: skip
    source = "lambda e: f" + repr("".join(code))
    try:
        return eval(source, {"__builtins__": {}})  # our own f-string, from a parsed format
    except SyntaxError:
        return None


def render(event: LogEvent) -> str:
    """
    The text of an event, as C{twisted.logger.formatEvent} renders it, in a
    fraction of its time for the simple formats mailframe uses (each format
    is compiled once into an f-string); anything else is left to
    C{formatEvent}.
    """
    fmt = event.get("log_format")
    if fmt is None:
        return formatEvent(event)
    try:
        renderer = _compiled[fmt]
    except KeyError:
        renderer = _compiled[fmt] = _compile(fmt) if len(_compiled) < 4096 else None
    if renderer is None:
        return formatEvent(event)
    try:
        return renderer(event)
    except Exception:
        return formatEvent(event)


class _Clock:
    """The text of a timestamp, made once a second (twistd's format)."""

    def __init__(self) -> None:
        self._second = -1
        self._text = ""

    def text(self, when: float) -> str:
        second = int(when)
        if second != self._second:
            self._second = second
            self._text = (
                datetime.fromtimestamp(second).astimezone().strftime("%Y-%m-%dT%H:%M:%S%z")
            )
        return self._text


_systems: dict[tuple[object, object], str] = {}


def eventAsText(event: LogEvent, clock: _Clock | None = None) -> str:
    """
    An event as twistd's text log shows it (C{formatEventAsClassicLogText}):
    C{TIME [NAMESPACE#LEVEL] TEXT}, a failure's traceback after it.
    """
    return _text(clock or _Clock(), event)


def _text(clock: _Clock, event: LogEvent) -> str:
    """L{eventAsText}, the clock first (the text observer binds it with a partial)."""
    get = event.get
    when = get("log_time") or time.time()
    # the clock's and render's common cases inline: this runs for every line
    stamp = clock._text if int(when) == clock._second else clock.text(when)
    system = get("log_system")
    if system is None:
        key = (get("log_namespace", "-"), get("log_level"))
        system = _systems.get(key)
        if system is None:
            level = key[1]
            system = _systems[key] = f"{key[0]}#{level.name if level else '-'}"
    renderer = _compiled.get(get("log_format"))  # type: ignore[arg-type]
    text = None
    if renderer is not None:
        try:
            text = renderer(event)
        except Exception:  # a missing field: render() falls back to twisted's formatting
            text = None
    if text is None:
        text = render(event)  # compiles the format, or falls back to twisted's
    failure = get("log_failure")
    if failure is not None:
        with contextlib.suppress(Exception):
            text = f"{text}\n{failure.getTraceback()}"
    if "\n" in text:
        text = text.rstrip("\n").replace("\n", "\n\t")
    return f"{stamp} [{system}] {text}\n"


def _jsonDefault(value: object) -> object:
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return str(value)


_encode = json.JSONEncoder(default=_jsonDefault, ensure_ascii=False).encode
_STABLE = ("time", "level", "namespace", "text")


class _UTCClock:
    """ISO 8601 UTC timestamps with microseconds, the part up to the second made once a second."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def text(self, when: float) -> str:
        second = int(when)
        if second != self._second:
            self._second = second
            self._prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return f"{self._prefix}.{int((when - second) * 1e6):06d}+00:00"


_utc = _UTCClock()


def eventAsJSON(event: LogEvent) -> str:
    """
    An event as one line of JSON: C{time level namespace text}, and a
    decision event's fields (L{mailframe.events}); C{failure} for a
    traceback.
    """
    level = event.get("log_level")
    out: dict[str, Any] = {
        "time": _utc.text(event.get("log_time") or time.time()),
        "level": level.name if level is not None else None,
        "namespace": event.get("log_namespace"),
        "text": render(event),
    }
    if _KEY in event:
        for key, value in event.items():
            if key[:4] != "log_" and key not in _STABLE:
                out[key] = value
    failure = event.get("log_failure")
    if failure is not None:
        try:
            out["failure"] = failure.getTraceback()
        except Exception:
            out["failure"] = str(getattr(failure, "value", failure))
    return _encode(out) + "\n"


@implementer(ILogObserver)
class BufferedLogObserver:
    """
    Writes each event, rendered by C{render} (text or JSON), to C{out}
    through a buffer: flushed C{interval} seconds after its first line
    (on C{clock}, the reactor), at once for a warning or worse and for
    mailframe's start-up, reload and stop lines (namespace C{mailframe}), before it
    would hold more than 4096 octets (each write is whole lines, and no
    bigger than PIPE_BUF unless one line is: the processes of C{--workers}
    share standard output), and when the process ends.  Events logged from other
    threads, or while the reactor is not running, are written at once.
    """

    def __init__(
        self,
        out: IO[str],
        render: Callable[[LogEvent], str],
        clock: Any = None,
        interval: float = FLUSH_INTERVAL,
    ) -> None:
        self.out = out
        self.render = render
        self.clock = clock
        self.interval = interval
        self._buffer: list[str] = []
        self._size = 0
        self._timer: Any = None
        self._lock = threading.Lock()  # around writes: other threads write directly
        self._thread = threading.get_ident()
        atexit.register(self.flush)

    def __call__(self, event: LogEvent) -> None:
        try:
            line = self.render(event)
        except Exception:  # never lose the event for want of a field
            line = formatEvent(event) + "\n"
        if _getIdent() != self._thread:  # the buffer is the reactor thread's
            self._write(line)
            return
        size = len(line)
        if self._size + size > _CHUNK and self._buffer:
            # whole lines, at most PIPE_BUF octets a write (workers share the output)
            self.flush()
        self._buffer.append(line)
        self._size += size
        level = event.get("log_level")
        if level is _INFO and self._timer is not None and event.get("log_namespace") in _WAITS:
            return  # the common case: an info line while the timer runs (it flushes)
        if (
            self.clock is None
            or not getattr(self.clock, "running", True)  # before or after the reactor runs
            or (level is not None and level.name in _AT_ONCE)
            or event.get("log_namespace") == "mailframe"  # start-up, reload and stop lines
        ):
            self.flush()
        elif self._timer is None:
            self._timer = self.clock.callLater(self.interval, self._due)

    def _due(self) -> None:
        self._timer = None
        self.flush()

    def flush(self) -> None:
        """Write what the buffer holds."""
        if not self._buffer:
            return
        data = "".join(self._buffer)
        self._buffer = []
        self._size = 0
        self._write(data)

    def _write(self, data: str) -> None:
        with self._lock:
            try:
                self.out.write(data)
                self.out.flush()
            except (OSError, ValueError):
                pass  # a closed or full output: nothing better to do

    def stop(self) -> None:
        """Flush, and cancel the timer."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self.flush()


def observerFor(
    logFormat: str, out: IO[str], clock: Any = None, interval: float = FLUSH_INTERVAL
) -> BufferedLogObserver:
    """The buffered observer writing C{logFormat} (C{text} or C{json}) lines to C{out}."""
    if logFormat == "json":
        return BufferedLogObserver(out, eventAsJSON, clock, interval)
    # a partial binding the clock positionally: one Python call fewer per line
    return BufferedLogObserver(out, functools.partial(_text, _Clock()), clock, interval)


def _twistdOutput(twistd: Any) -> IO[str] | None:
    """
    Where twistd would write its log (its C{--logfile}, standard output
    with C{-n}, else C{twistd.log}), or None if twistd is told to log
    elsewhere (C{--syslog}, C{--logger}).
    """
    if twistd.get("syslog") or twistd.get("logger"):
        return None
    name = twistd.get("logfile")
    nodaemon = twistd.get("nodaemon")
    if name == "-" and not nodaemon:
        return None  # twistd refuses it ("Daemons cannot log to stdout")
    if name == "-" or (nodaemon and not name):
        return sys.stdout
    from twisted.python import logfile

    log = logfile.LogFile.fromFullPath(name or "twistd.log")
    try:
        import signal

        from twisted.internet import reactor

        def rotate(signum: int, frame: object) -> None:
            reactor.callFromThread(log.rotate)  # type: ignore[attr-defined]

        signal.signal(signal.SIGUSR1, rotate)  # as twistd does for its own
    except (ImportError, ValueError, AttributeError):
        pass
    return log


def installFor(application: Any, logFormat: str, twistd: Any, clock: Any) -> Any:
    """
    Make a L{BufferedLogObserver} of C{logFormat} the log observer twistd
    starts with for C{application} (its C{ILogObserver} component; twistd
    looks for it after C{makeService}); C{twistd}: twistd's options.  The
    observer, or None when twistd's own options decide (C{--syslog},
    C{--logger}) or the application is not a twistd one.
    """
    getComponent = getattr(application, "getComponent", None)
    if getComponent is None or getComponent(ILogObserver, None) is not None:
        return None
    out = _twistdOutput(twistd)
    if out is None:
        return None
    observer = observerFor(logFormat, out, clock)
    clock.addSystemEventTrigger("after", "shutdown", observer.stop)
    application.setComponent(ILogObserver, observer)
    return observer
