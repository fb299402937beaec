"""Publishing reaches the project's broker from any thread (web servers publish from worker threads)."""

import socket
import threading
import uuid

import pytest
from django.conf import settings

from harness.waiting import wait_until
from jobs.publishing import publish
from jobs.redis import redis_client
from jobs.tasks import probe
from settings.topology import DEFAULT_QUEUE


@pytest.mark.e2e
def test_a_publish_from_another_thread_reaches_the_workers(workers):
    key = f"test:probe:{uuid.uuid4()}"
    results: list[bool] = []
    thread = threading.Thread(target=lambda: results.append(publish(probe.name, args=[key], queue=DEFAULT_QUEUE)))
    thread.start()
    thread.join()
    assert results == [True]
    wait_until(lambda: redis_client().get(key) is not None, timeout=15, interval=0.05)
    assert int(redis_client().get(key) or 0) == 1


@pytest.mark.django_db(transaction=True)
def test_a_frozen_broker_does_not_hold_the_caller(settings):
    """A broker that accepts connections and never answers (a SIGSTOPped Redis) must not block a request."""
    from celery import Celery

    from jobs.publishing import publish_after_commit, waiting_publishes

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    app = Celery("frozen", broker=f"redis://127.0.0.1:{silent.getsockname()[1]}/0", set_as_current=False)
    app.conf.broker_transport_options = settings.CELERY_BROKER_TRANSPORT_OPTIONS
    failed = threading.Event()
    try:
        # Outside a transaction the commit hook runs at once; the publish must not.
        publish_after_commit("frozen.noop", args=[], queue="frozen", on_failed=failed.set, background=True, app=app)
        assert waiting_publishes() == 1, "the publish is still in flight when the caller gets control back"
    finally:
        silent.close()  # the waiting publish now fails fast
    wait_until(lambda: not waiting_publishes(), timeout=30, interval=0.05)
    assert waiting_publishes() == 0
    assert failed.is_set(), "the caller hears that nothing was published, so its row can say so"


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_an_invalid_payload_is_dead_lettered_without_retry(workers):
    from jobs.models import DeadLetter
    from tests.jobs.chores.tasks import DO

    assert publish(DO, args=["not-a-uuid"], queue="transactional.email")
    wait_until(lambda: DeadLetter.objects.filter(job_name=DO).exists(), timeout=15)
    letter = DeadLetter.objects.get(job_name=DO)
    assert letter.arguments == {"args": ["not-a-uuid"], "kwargs": {}}
    assert letter.queue == "transactional.email"
    assert "not-a-uuid" in letter.message and letter.error_class.endswith("ValidationError")


@pytest.mark.django_db(transaction=True)
def test_publishes_waiting_for_a_thread_leave_as_one_message_per_task_and_queue(broker):
    """A burst of coalescable publishes costs the broker one message (per COALESCE_MAX), in submit order."""
    import base64
    import json

    from celery import Celery

    from jobs import publishing

    queue = f"coalesce-{uuid.uuid4().hex[:8]}"  # its own queue, which no worker consumes
    app = Celery("coalesce", broker=settings.CELERY_BROKER_URL, set_as_current=False)
    app.conf.task_create_missing_queues = True
    busy = threading.Event()
    # Every publishing thread busy: what is submitted now waits, as it does under load.
    blockers = [publishing._pool().submit(busy.wait) for _ in range(publishing.BACKGROUND_THREADS)]
    try:
        for i in range(30):
            publishing.publish_after_commit(
                "coalesce.test", args=[f"id-{i}"], queue=queue, background=True, coalesce=True, app=app
            )
        publishing.publish_after_commit("coalesce.test", args=["alone"], queue=queue, background=True, app=app)
        assert broker.llen(queue) == 0
    finally:
        busy.set()
    for blocker in blockers:
        blocker.result(timeout=5)
    wait_until(lambda: publishing.waiting_publishes() == 0, timeout=15, interval=0.02)
    try:
        bodies = [json.loads(message) for message in broker.lrange(queue, 0, -1)]
        args = sorted(json.loads(base64.b64decode(body["body"]))[0] for body in bodies)
        assert args == sorted([[f"id-{i}" for i in range(30)], ["alone"]])
    finally:
        broker.delete(queue)
