"""Job tasks on Celery's in-process test worker (the fixtures pytest-celery loads), over a real Redis broker."""

import time
import uuid

import pytest
from django.conf import settings

from harness.waiting import wait_until
from jobs.redis import redis_client
from jobs.task import JobTask
from jobs.tasks import probe

#: A Redis database of its own, so the subprocess worker pools never take these messages.
BROKER = settings.REDIS_URL.rsplit("/", 1)[0] + "/13"


@pytest.fixture(scope="session")
def celery_config() -> dict:
    return {
        "broker_url": BROKER,
        "broker_transport_options": settings.CELERY_BROKER_TRANSPORT_OPTIONS,
        # The fixture's ping check reads a result; the tasks under test keep none.
        "result_backend": "cache+memory://",
        "accept_content": ["json"],
        "task_serializer": "json",
        "task_queues": settings.CELERY_TASK_QUEUES,
        "task_default_queue": settings.CELERY_TASK_DEFAULT_QUEUE,
    }


@pytest.fixture(scope="session")
def celery_session_app(celery_session_app):
    """The fixture's app, with the job runtime's probe task registered on it too."""
    celery_session_app.task(base=JobTask, name=probe.name)(probe.run)
    return celery_session_app


def wait_for_count(key: str, expected: int, timeout: float = 10.0) -> int:
    """The probe counter once it reaches `expected`, or as it is when `timeout` is up."""
    wait_until(lambda: int(redis_client().get(key) or 0) >= expected, timeout=timeout, interval=0.05)
    return int(redis_client().get(key) or 0)


def test_probe_task_runs_on_a_worker_over_redis(celery_session_app, celery_session_worker):
    key = f"test:probe:{uuid.uuid4()}"
    celery_session_app.tasks[probe.name].apply_async(args=[key], queue=settings.CELERY_TASK_DEFAULT_QUEUE)
    assert wait_for_count(key, 1) == 1


def test_a_pickled_message_is_refused_and_json_ones_still_flow(celery_session_app, celery_session_worker):
    key = f"test:probe:{uuid.uuid4()}"
    task = celery_session_app.tasks[probe.name]
    task.apply_async(args=[key], queue=settings.CELERY_TASK_DEFAULT_QUEUE, serializer="pickle")
    task.apply_async(args=[key], queue=settings.CELERY_TASK_DEFAULT_QUEUE)
    assert wait_for_count(key, 1) == 1
    time.sleep(0.5)
    assert int(redis_client().get(key) or 0) == 1, "the pickled message must not run"
