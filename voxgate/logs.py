"""One line per event, as text for a terminal or JSON for a log pipeline.

Every process (supervisor, each worker) calls `setup()` once; code logs through
`EventLog.event(level, name, **fields)` so lines stay structured. Secrets registered with
`register_secret` are scrubbed from every line as a last line of defence; the first line of
defence is never passing them to a logger at all.
"""

from __future__ import annotations

import logging
import sys
import time
import traceback
from collections.abc import Callable
from types import TracebackType
from typing import Any

import orjson

LEVELS = ("debug", "info", "warning", "error")
_secrets: list[str] = []


def register_secret(value: str | None) -> None:
    """Remember a secret so that no log line can ever carry it."""
    if value and len(value) >= 4 and value not in _secrets:
        _secrets.append(value)


def _scrub(text: str) -> str:
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, "[redacted]")
    return text


def _format_value(value: Any) -> str:
    text = str(value)
    if not text or any(c in text for c in ' "=') :
        return orjson.dumps(text).decode()
    return text


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = getattr(record, "fields", {})
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        parts = [f"{stamp}.{int(record.msecs):03d}", record.levelname.lower(), record.name, record.getMessage()]
        parts.extend(f"{k}={_format_value(v)}" for k, v in fields.items() if v is not None)
        return _scrub(" ".join(parts))


def json_line(proc: str, level: str, event: str, created: float | None = None, **fields: Any) -> str:
    """One JSON log object; also used for lines printed outside `logging` (startup, errors),
    so that in JSON mode a collector can parse every line a process writes."""
    body: dict[str, Any] = {
        "ts": round(time.time() if created is None else created, 3),
        "level": level,
        "proc": proc,
        "event": event,
    }
    body.update(fields)
    return _scrub(orjson.dumps(body, default=str).decode())


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json_line(
            record.name, record.levelname.lower(), record.getMessage(), record.created, **getattr(record, "fields", {})
        )


def setup(proc: str, *, level: str = "info", fmt: str = "text") -> EventLog:
    """Configure the root handler for this process and return its event logger."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _TextFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper())
    if fmt == "json":
        # Python's own warnings must not break a pipeline that parses every line.
        logging.captureWarnings(True)
    sys.excepthook = _excepthook(proc, fmt)
    return EventLog(proc)


def _excepthook(proc: str, fmt: str) -> Callable[..., None]:
    """An unexpected crash: the traceback scrubbed of secrets, and one JSON object in JSON mode."""

    def hook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
        if issubclass(kind, KeyboardInterrupt):
            sys.__excepthook__(kind, value, tb)
            return
        text = "".join(traceback.format_exception(kind, value, tb))
        if fmt == "json":
            sys.stderr.write(json_line(proc, "error", "crashed", error=kind.__name__, traceback=text) + "\n")
        else:
            sys.stderr.write(_scrub(text))
        sys.stderr.flush()

    return hook


REPEAT_BURST = 5  # lines of one warning event per logger and window
REPEAT_WINDOW = 10.0  # seconds


class _RepeatLimit:
    """Per event name: `REPEAT_BURST` warning-or-worse lines per `REPEAT_WINDOW`; the rest
    are counted. A peer sending 400,000 bad frames must not write 400,000 lines."""

    __slots__ = ("windows", "suppressed")

    def __init__(self) -> None:
        self.windows: dict[str, tuple[float, int]] = {}  # name -> (window start, lines)
        self.suppressed: dict[str, int] = {}  # name -> lines not written since the last one

    def admit(self, name: str) -> int | None:
        """None to drop this line; else how many were dropped before it (0 usually)."""
        now = time.monotonic()
        start, lines = self.windows.get(name, (now, 0))
        if now - start >= REPEAT_WINDOW:
            start, lines = now, 0
        if lines >= REPEAT_BURST:
            self.suppressed[name] = self.suppressed.get(name, 0) + 1
            self.windows[name] = (start, lines)
            return None
        self.windows[name] = (start, lines + 1)
        return self.suppressed.pop(name, 0)


class EventLog:
    """A named logger whose lines are an event name plus key=value fields.

    A bound logger (one per session) rate-limits repeated warnings of one kind; what it
    dropped is reported by the next line of that kind (`suppressed=N`) and by `suppressed()`,
    which the session's closing line carries."""

    def __init__(self, name: str, *, limit: bool = False, **context: Any) -> None:
        self._logger = logging.getLogger(name)
        self._context = context
        self._repeats = _RepeatLimit() if limit else None

    def bind(self, **context: Any) -> EventLog:
        """A logger that adds these fields (session id, trace id...) to every line."""
        return EventLog(self._logger.name, limit=True, **{**self._context, **context})

    def suppressed(self) -> dict[str, int]:
        """Warning lines dropped and not yet reported, by event name."""
        return dict(self._repeats.suppressed) if self._repeats is not None else {}

    def enabled(self, level: str) -> bool:
        return self._logger.isEnabledFor(getattr(logging, level.upper()))

    def event(self, level: str, name: str, **fields: Any) -> None:
        lvl = getattr(logging, level.upper())
        if not self._logger.isEnabledFor(lvl):
            return
        if lvl >= logging.WARNING and self._repeats is not None:
            dropped = self._repeats.admit(name)
            if dropped is None:
                return
            if dropped:
                fields = {**fields, "suppressed": dropped}
        self._logger.log(lvl, name, extra={"fields": {**self._context, **fields}})

    def debug(self, name: str, **fields: Any) -> None:
        self.event("debug", name, **fields)

    def info(self, name: str, **fields: Any) -> None:
        self.event("info", name, **fields)

    def warning(self, name: str, **fields: Any) -> None:
        self.event("warning", name, **fields)

    def error(self, name: str, **fields: Any) -> None:
        self.event("error", name, **fields)
