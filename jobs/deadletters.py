"""Services of the dead-letter table: record a job that failed for good, replay it, discard it.

A domain registers how to replay its jobs (`register_replayer`); a job with no
replayer is replayed by publishing its task again with its original arguments.
"""

import logging
import traceback as tb
from collections.abc import Callable
from typing import Any

from django.contrib.contenttypes.models import ContentType
from django.db import models, transaction
from django.utils import timezone

from jobs.models import DeadLetter, DeadLetterStatus
from jobs.publishing import publish_after_commit

logger = logging.getLogger(__name__)

_replayers: dict[str, Callable[[DeadLetter], None]] = {}


def register_replayer(job_name: str, replayer: Callable[[DeadLetter], None]) -> None:
    """`replayer(dead_letter)` puts the job back to work, inside the caller's transaction."""
    _replayers[job_name] = replayer


def deadletter_record(
    *,
    job_name: str,
    arguments: dict[str, Any],
    error: BaseException | str,
    attempts: int,
    queue: str = "",
    subject: models.Model | None = None,
    provider: str = "",
    first_failed_at=None,
) -> DeadLetter:
    """Store a final failure with its reason; one open row per subject (a repeat updates it)."""
    now = timezone.now()
    if isinstance(error, BaseException):
        error_class = f"{type(error).__module__}.{type(error).__qualname__}"
        message = str(error) or error_class
        trace = "".join(tb.format_exception(error)) if error.__traceback__ else ""
    else:
        error_class, message, trace = "jobs.DeadLettered", error, ""
    values = {
        "job_name": job_name,
        "arguments": arguments,
        "queue": queue,
        "provider": provider,
        "error_class": error_class,
        "message": message,
        "traceback": trace,
        "attempts": attempts,
        "last_failed_at": now,
    }
    if subject is not None:
        values["subject_type"] = ContentType.objects.get_for_model(subject)
        values["subject_id"] = str(subject.pk)
        existing = DeadLetter.objects.filter(
            subject_type=values["subject_type"], subject_id=values["subject_id"], status=DeadLetterStatus.OPEN
        ).first()
        if existing is not None:
            DeadLetter.objects.filter(pk=existing.pk).update(**values)
            existing.refresh_from_db()
            return existing
    letter = DeadLetter.objects.create(first_failed_at=first_failed_at or now, **values)
    logger.warning("dead letter %s: %s %s: %s", letter.pk, job_name, error_class, message)
    return letter


def deadletter_replay(*, dead_letter: DeadLetter, user=None) -> bool:
    """Put an open dead letter's job back to work; False if it was not open."""
    with transaction.atomic():
        updated = DeadLetter.objects.filter(pk=dead_letter.pk, status=DeadLetterStatus.OPEN).update(
            status=DeadLetterStatus.REPLAYED, resolved_by=user, resolved_at=timezone.now()
        )
        if not updated:
            return False
        dead_letter.refresh_from_db()
        replayer = _replayers.get(dead_letter.job_name, _republish)
        replayer(dead_letter)
    logger.info("dead letter %s replayed by %s", dead_letter.pk, user or "system")
    return True


def deadletter_discard(*, dead_letter: DeadLetter, user=None, reason: str) -> bool:
    """Close an open dead letter without replaying it; the reason is required and kept."""
    if not reason.strip():
        raise ValueError("a reason is required to discard a dead letter")
    updated = DeadLetter.objects.filter(pk=dead_letter.pk, status=DeadLetterStatus.OPEN).update(
        status=DeadLetterStatus.DISCARDED, resolved_by=user, resolved_at=timezone.now(), resolution_note=reason.strip()
    )
    return bool(updated)


def _republish(dead_letter: DeadLetter) -> None:
    from settings.celery_app import app

    task = app.tasks[dead_letter.job_name]
    publish_after_commit(
        task, args=dead_letter.arguments.get("args", []), queue=dead_letter.queue or task.app.conf.task_default_queue
    )
