"""One JSON object per log line for production (LOG_FORMAT=json): what log pipelines index without parsing.

State changes of jobs are logged with `extra={"event": {...}}`; the event's fields become
top-level keys of the JSON line (id, priority, channel, provider, attempt, outcome, ...).
"""

import json
import logging
from datetime import UTC, datetime


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        event = getattr(record, "event", None)
        if isinstance(event, dict):
            line.update(event)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)
