"""The chore job on the runtime: its task (published by name), its replayer, and a dead letter made the way a
worker makes one."""

import uuid

from celery import shared_task
from django.core.exceptions import ValidationError
from django.db import transaction

from jobs.deadletters import deadletter_record, register_replayer
from jobs.errors import PermanentError
from jobs.models import DeadLetter
from jobs.publishing import publish_after_commit
from jobs.task import JobTask
from tests.jobs.chores.models import Chore

DO = "chores.do"
#: The outside service a chore calls; its breaker shows in the admin before it ever trips.
PARTNER = "chores-partner"


def breaker_names() -> list[str]:
    return [PARTNER]


@shared_task(base=JobTask, name=DO)
def chore_do_task(chore_id: str) -> None:
    try:
        uuid.UUID(str(chore_id))
    except ValueError:
        raise ValidationError(f"{chore_id!r} is not a chore id") from None
    Chore.objects.filter(pk=chore_id, status="queued").update(status="done")


def chore_replay(dead_letter: DeadLetter) -> None:
    """Back to queued with a fresh attempt count, published again after the caller's transaction commits."""
    with transaction.atomic():
        Chore.objects.filter(pk=dead_letter.subject_id, status="dead").update(status="queued", attempts=0)
        publish_after_commit(DO, args=[dead_letter.subject_id], queue=dead_letter.queue)


register_replayer(DO, chore_replay)


def make_dead_chore(
    *, queue: str = "transactional.sms", dependency: str = "twilio", owner: str = "+14155550199", attempts: int = 3
) -> tuple[Chore, DeadLetter]:
    """A chore that died: its row dead, its dead letter recorded with a real traceback."""
    chore = Chore.objects.create(owner=owner, status="dead", attempts=attempts)
    try:
        raise PermanentError(f"invalid recipient {owner}")
    except PermanentError as exc:
        letter = deadletter_record(
            job_name=DO,
            arguments={"args": [str(chore.pk)], "to": owner, "template": "order_shipped"},
            error=exc,
            attempts=attempts,
            queue=queue,
            subject=chore,
            dependency=dependency,
        )
    return chore, letter
