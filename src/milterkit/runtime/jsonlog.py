"""``--log-format json``: one JSON object per log line.

A formatter, not a handler, so it works with whichever handler carries the
records (console, file, syslog, or a pipe to the supervisor): journald,
Loki or Elasticsearch read the line as one object. Fields that code attached
as ``extra={"milterkit": {...}}`` (the per-message record of
:class:`~milterkit.runtime.observe.LogObserver`) become top-level keys next
to ``time``, ``level``, ``pid``, ``logger`` and ``message``. ``json.dumps``
escapes control characters, so a peer-supplied value cannot break the line.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from typing import Any

from milterkit.runtime.errors import RuntimeConfigError

__all__ = ["LOG_FORMATS", "JsonFormatter", "apply_log_format"]

LOG_FORMATS = ("text", "json")
_RESERVED = frozenset({"time", "level", "pid", "logger", "message"})


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON (ASCII, so surrogate escapes survive)."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "pid": record.process,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "milterkit", None)
        if isinstance(fields, dict):
            for key, value in fields.items():
                data[f"field_{key}" if key in _RESERVED else key] = value
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


def apply_log_format(log_format: str, logger_name: str = "milterkit") -> None:
    """Give every handler of the logger the formatter of ``log_format``.

    ``text`` keeps the handlers' own formatters; ``json`` replaces them.
    """
    if log_format not in LOG_FORMATS:
        raise RuntimeConfigError(
            f"invalid log format {log_format!r}: expected {' or '.join(LOG_FORMATS)}"
        )
    if log_format == "text":
        return
    for handler in logging.getLogger(logger_name).handlers:
        handler.setFormatter(JsonFormatter())
