"""The chore jobs on the runtime: a durable job declared with `jobs.durable.job` (it calls a partner API, the
sandbox's receiver), and a plain task with its own replayer and a dead letter made the way a worker makes one."""

import uuid

import requests
from celery import shared_task
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import F

from jobs.deadletters import deadletter_record, register_replayer
from jobs.durable import current_job, job
from jobs.errors import PermanentError
from jobs.http import classify_http_status, classify_request_exception
from jobs.models import DeadLetter
from jobs.publishing import publish_after_commit
from jobs.retry import RetryPolicy
from jobs.task import JobTask
from tests.jobs.chores.models import Chore

DO = "chores.do"
#: The outside service a chore calls; its breaker shows in the admin before it ever trips.
PARTNER = "chores-partner"


def breaker_names() -> list[str]:
    return [PARTNER]


#: The sandbox's receiver that plays the partner (its faults are set under this name).
PARTNER_RECEIVER = "partner"


@job(
    "chores.call_partner",
    breaker=PARTNER,
    limit=PARTNER,
    retry=RetryPolicy(max_attempts=4, base_delay=0.2, max_delay=1.0, budget_seconds=60),
)
def chore_call_partner(*, chore_id: str, note: str = "") -> None:
    """Tell the partner the chore is done, then mark it done: the partner deduplicates on the job's key."""
    this = current_job()
    url = f"{settings.SANDBOX_HTTP_URL}/{PARTNER_RECEIVER}/hooks/chores/{chore_id}"
    try:
        response = requests.post(
            url, json={"chore": chore_id, "note": note}, headers={"Idempotency-Key": f"chore-{this.id}"}, timeout=3
        )
    except requests.RequestException as exc:
        raise classify_request_exception(exc, what="partner") from exc
    if response.status_code >= 300:
        raise classify_http_status(
            response.status_code, text=response.text, retry_after=response.headers.get("Retry-After"), what="partner"
        )
    Chore.objects.filter(pk=chore_id).update(status="done", attempts=F("attempts") + this.attempt)


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
