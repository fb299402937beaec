"""Log lines: personal data masked in every one (MaskPersonalData, on every handler), and one JSON object per
line for production (LOG_FORMAT=json): what log pipelines index without parsing.

State changes of jobs are logged with `extra={"event": {...}}`; the event's fields become
top-level keys of the JSON line (id, priority, channel, provider, attempt, outcome, ...).
"""

import json
import logging
from datetime import UTC, datetime

from jobs.masking import mask_text


class MaskPersonalData(logging.Filter):
    """Masks e-mail addresses and phone numbers in a record's message and traceback, whoever logged it (our
    code, a provider library's error text, Celery, Django).  Structured event fields are masked where they are
    built, by the code that knows which of them holds an address (notifications/events.py)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_text(message)
        if masked != message:
            record.msg, record.args = masked, ()
        if record.exc_info and not record.exc_text:
            record.exc_text = mask_text(logging.Formatter().formatException(record.exc_info))
        return True


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
            line["exception"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(line, default=str)
