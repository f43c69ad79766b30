"""JSON-lines logging: one JSON object a line, for log shippers and ``jq``.

Every line has ``ts`` (UTC, milliseconds), ``level``, ``logger`` and ``message``, then any
field passed with ``extra=`` (``followup_id``, ``app``, ``partition``...), and ``exc``
with the traceback when there is one. ``logging_config(level)`` is a ``dictConfig``
dictionary; the worker hands it to ``faust.Worker(logging_config=...)``, which applies it
in place of mode's coloured console handler.
"""
from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any

import orjson

__all__ = ["JsonFormatter", "RepeatLimit", "logging_config"]

REPEAT_WINDOW_S = 10.0

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """A log record as one line of JSON."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": _utc(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRIBUTES and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = record.stack_info
        # default=str: an extra field that JSON cannot hold (a TopicPartition, say) is still logged.
        return orjson.dumps(line, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


class RepeatLimit(logging.Filter):
    """At most one line per ``window`` seconds for each warning or error of the same logger
    and message template; the line that ends a quiet spell says how many it stood for
    (``repeated``). A broker outage makes aiokafka log the same failure thousands of times
    a second from every worker: its start is logged at once, its course once per window."""

    def __init__(self, window: float = REPEAT_WINDOW_S) -> None:
        super().__init__()
        self.window = window
        self._seen: dict[tuple[str, int, object], list] = {}  # key -> [last passed at, suppressed since]

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, record.levelno, record.msg)
        seen = self._seen.get(key)
        if seen is None or record.created - seen[0] >= self.window:
            if seen is not None and seen[1]:
                record.repeated = seen[1]
            self._seen[key] = [record.created, 0]
            if len(self._seen) > 10_000:  # templates are few; never let odd ones grow it
                self._seen.clear()
            return True
        seen[1] += 1
        return False


def _utc(created: float) -> str:
    moment = datetime.fromtimestamp(created, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def logging_config(level: str | int = "info", stream: str = "ext://sys.stderr") -> dict:
    """A ``logging.config.dictConfig`` dictionary: every logger, JSON lines on ``stream``."""
    level_name = logging.getLevelName(level) if isinstance(level, int) else str(level).upper()
    return {
        "version": 1,
        # Loggers created at import time (faust, aiokafka, relance.*) must keep logging.
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "filters": {"repeats": {"()": RepeatLimit}},
        "handlers": {
            "json": {"class": "logging.StreamHandler", "formatter": "json", "stream": stream,
                     "filters": ["repeats"]},
        },
        "root": {"level": level_name, "handlers": ["json"]},
    }
