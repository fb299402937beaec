"""The runtime's own tasks: a no-op probe (the benchmarks' baseline, a liveness canary) and replaying dead letters."""

from celery import shared_task
from django.contrib.auth import get_user_model

from jobs.deadletters import DEADLETTERS_REPLAY, deadletters_replay_many
from jobs.redis import redis_client
from jobs.task import JobTask

#: The probe's name, for publishing it by name.
PROBE = "jobs.probe"


@shared_task(base=JobTask, name=PROBE)
def probe(counter_key: str) -> None:
    """Increment a Redis counter: the cheapest real task, the benchmarks' baseline and a liveness canary."""
    redis_client().incr(counter_key)


@shared_task(base=JobTask, name=DEADLETTERS_REPLAY)
def deadletters_replay_task(ids: list[int], user_id: int | None) -> None:
    """Replay one batch of dead letters for an operator; a redelivered batch skips what is no longer open."""
    user = get_user_model().objects.filter(pk=user_id).first() if user_id is not None else None
    deadletters_replay_many(ids=ids, user=user)
