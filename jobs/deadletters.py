"""Services of the dead-letter table: record a job that failed for good, replay it, discard it.

A domain registers how to replay the rows its dead letters name (`register_replayer`).  A dead
letter without such a row (recorded at the task level: the message's payload could not be
processed) or without a replayer is replayed by publishing its task again with its original
arguments.  A letter that cannot be replayed (its row deleted, its task gone from the code) says
why (`deadletter_replay_refusal`) and is reported, never raised at an operator.
"""

import logging
import traceback as tb
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from celery import current_app
from django.conf import settings
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.contenttypes.models import ContentType
from django.db import models, transaction
from django.utils import timezone

from jobs.metrics import DEAD_LETTERS
from jobs.models import DeadLetter, DeadLetterStatus
from jobs.publishing import publish, publish_after_commit

logger = logging.getLogger(__name__)

_replayers: dict[str, Callable[[DeadLetter], None]] = {}
_refusals: dict[str, Callable[[DeadLetter], str | None]] = {}


def register_replayer(
    job_name: str,
    replayer: Callable[[DeadLetter], None],
    *,
    refusal: Callable[[DeadLetter], str | None] | None = None,
) -> None:
    """`replayer(dead_letter)` puts the job back to work, inside the caller's transaction; `refusal(dead_letter)`
    says why one of its dead letters cannot be (None when it can)."""
    _replayers[job_name] = replayer
    if refusal is not None:
        _refusals[job_name] = refusal


def deadletter_record(
    *,
    job_name: str,
    arguments: dict[str, Any],
    error: BaseException | str,
    attempts: int,
    queue: str = "",
    subject: models.Model | None = None,
    dependency: str = "",
    first_failed_at=None,
) -> DeadLetter:
    """Store a final failure with its reason; one open row per subject (a repeat updates it)."""
    now = timezone.now()
    # Counted when the caller's transaction commits, so a rolled-back failure is not an alert.
    transaction.on_commit(lambda: DEAD_LETTERS.inc(queue or "none"), robust=True)
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
        "dependency": dependency,
        "error_class": error_class,
        "message": message,
        "traceback": trace,
        "attempts": attempts,
        "last_failed_at": now,
    }
    if subject is not None:
        values["subject_type"] = _content_type(subject)
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


class NotReplayable(Exception):
    """The dead letter cannot be put back to work; the message says why and what to do instead."""


def deadletter_replay_refusal(dead_letter: DeadLetter) -> str | None:
    """Why this dead letter cannot be replayed, or None if it can."""
    if dead_letter.subject_id and dead_letter.job_name in _replayers:
        model = dead_letter.subject_type.model_class() if dead_letter.subject_type_id else None
        if model is None or not model._default_manager.filter(pk=dead_letter.subject_id).exists():
            return f"the {dead_letter.subject_type or 'row'} {dead_letter.subject_id} it was about no longer exists"
        refusal = _refusals.get(dead_letter.job_name)
        return refusal(dead_letter) if refusal is not None else None
    if dead_letter.job_name not in current_app.tasks:
        return f"no task named {dead_letter.job_name!r} exists in this version of the code; discard it"
    if not isinstance(dead_letter.arguments.get("args", []), list):
        return "its recorded arguments are not a list; discard it"
    return None


def deadletter_replay(*, dead_letter: DeadLetter, user=None) -> bool:
    """Put an open dead letter's job back to work; False if it was not open, NotReplayable if it cannot be."""
    refusal = deadletter_replay_refusal(dead_letter)
    if refusal is not None:
        raise NotReplayable(refusal)
    with transaction.atomic():
        updated = DeadLetter.objects.filter(pk=dead_letter.pk, status=DeadLetterStatus.OPEN).update(
            status=DeadLetterStatus.REPLAYED, resolved_by=user, resolved_at=timezone.now()
        )
        if not updated:
            return False
        dead_letter.refresh_from_db()
        replayer = _replayers.get(dead_letter.job_name) if dead_letter.subject_id else None
        (replayer or _republish)(dead_letter)
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
    """The task again, with the arguments it failed with (a fix deployed since may let it through)."""
    publish_after_commit(
        dead_letter.job_name,
        args=dead_letter.arguments.get("args", []),
        kwargs=dead_letter.arguments.get("kwargs") or {},
        queue=dead_letter.queue or current_app.conf.task_default_queue,
    )


#: The task that replays a chunk of dead letters in the background (jobs/tasks.py), published by name.
DEADLETTERS_REPLAY = "jobs.deadletters_replay"

#: Rows read per query when a set is replayed or discarded, and ids per background task:
#: 500 replays take a few seconds, well inside the task time limit (CELERY_TASK_TIME_LIMIT).
BULK_CHUNK_SIZE = 500


@dataclass
class BulkOutcome:
    """What a replay or discard of a set of dead letters did, by id."""

    done: list[int] = field(default_factory=list)
    not_open: list[int] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)
    #: id -> "ErrorClass: message" of a replay that raised; that row stays open.
    failed: dict[int, str] = field(default_factory=dict)
    #: id -> why it cannot be replayed (discard it instead); that row stays open.
    not_replayable: dict[int, str] = field(default_factory=dict)

    def summary(self, verb: str) -> str:
        parts = [f"{verb} {len(self.done)} dead letter(s)"]
        if self.not_open:
            parts.append(f"{len(self.not_open)} skipped (not open)")
        if self.missing:
            parts.append(f"{len(self.missing)} not found")
        if self.not_replayable:
            reasons = "; ".join(f"{pk}: {why}" for pk, why in list(self.not_replayable.items())[:5])
            parts.append(f"{len(self.not_replayable)} not replayable ({reasons})")
        if self.failed:
            parts.append(f"{len(self.failed)} failed ({', '.join(str(pk) for pk in self.failed)})")
        return "; ".join(parts) + "."


def deadletters_replay_many(*, ids: Iterable[int], user=None) -> BulkOutcome:
    """Replay each open dead letter of `ids`; with a user, each replay is also an admin log entry.

    One failing replay (its subject deleted, say) is reported and does not stop the rest.
    """
    outcome = BulkOutcome()
    for letter in _open_letters(ids, outcome):
        try:
            replayed = deadletter_replay(dead_letter=letter, user=user)
        except NotReplayable as exc:
            outcome.not_replayable[letter.pk] = str(exc)
            continue
        except Exception as exc:  # the row stays open (its transaction rolled back); go on with the others
            logger.exception("dead letter %s: replay failed", letter.pk)
            outcome.failed[letter.pk] = f"{type(exc).__name__}: {exc}"
            continue
        if replayed:
            outcome.done.append(letter.pk)
            _log_action(letter, user, "Replayed")
        else:
            outcome.not_open.append(letter.pk)
    return outcome


def deadletters_discard_many(*, ids: Iterable[int], reason: str, user=None) -> BulkOutcome:
    """Discard each open dead letter of `ids` with the same required reason; logged like a replay."""
    if not reason.strip():
        raise ValueError("a reason is required to discard a dead letter")
    outcome = BulkOutcome()
    for letter in _open_letters(ids, outcome):
        if deadletter_discard(dead_letter=letter, user=user, reason=reason):
            outcome.done.append(letter.pk)
            logger.info("dead letter %s discarded by %s: %s", letter.pk, user or "system", reason.strip())
            _log_action(letter, user, f"Discarded: {reason.strip()}")
        else:
            outcome.not_open.append(letter.pk)
    return outcome


def deadletters_replay_in_background(*, ids: Sequence[int], user=None) -> tuple[int, int]:
    """Publish the replay of `ids` as tasks of BULK_CHUNK_SIZE ids on the default queue.

    Returns (batches published, batches the broker refused); a refused batch leaves its rows open.
    """
    published = refused = 0
    for chunk in _chunks(list(ids)):
        if publish(
            DEADLETTERS_REPLAY, args=[chunk, user.pk if user else None], queue=settings.CELERY_TASK_DEFAULT_QUEUE
        ):
            published += 1
        else:
            refused += 1
    return published, refused


def _chunks(ids: list[int]) -> Iterator[list[int]]:
    for start in range(0, len(ids), BULK_CHUNK_SIZE):
        yield ids[start : start + BULK_CHUNK_SIZE]


def _open_letters(ids: Iterable[int], outcome: BulkOutcome) -> Iterator[DeadLetter]:
    """The open dead letters among `ids`, read a chunk at a time; the others are noted in `outcome`."""
    for chunk in _chunks(list(dict.fromkeys(ids))):
        rows = DeadLetter.objects.in_bulk(chunk)
        for pk in chunk:
            letter = rows.get(pk)
            if letter is None:
                outcome.missing.append(pk)
            elif letter.status != DeadLetterStatus.OPEN:
                outcome.not_open.append(pk)
            else:
                yield letter


def _log_action(letter: DeadLetter, user, message: str) -> None:
    """An entry in the row's admin history; without a user, the service's log line is the record."""
    if user is None:
        return
    LogEntry.objects.create(
        user_id=user.pk,
        content_type=_content_type(letter),
        object_id=str(letter.pk),
        object_repr=str(letter)[:200],
        action_flag=CHANGE,
        change_message=message,
    )


def _content_type(row: models.Model) -> ContentType:
    """The row's content type, read, not taken from the per-process cache: a long-lived worker must not hold
    on to an id the table no longer has (a restored or re-created database)."""
    return ContentType.objects.get(app_label=row._meta.app_label, model=row._meta.model_name)
