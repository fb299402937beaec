"""Publishing reaches the project's broker from any thread (web servers publish from worker threads)."""

import socket
import threading
import uuid

import pytest

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
    published = threading.Event()
    try:
        # Outside a transaction the commit hook runs at once; the publish must not.
        publish_after_commit(
            "frozen.noop", args=[], queue="frozen", on_published=published.set, background=True, app=app
        )
        assert waiting_publishes() == 1, "the publish is still in flight when the caller gets control back"
    finally:
        silent.close()  # the waiting publish now fails fast
    wait_until(lambda: not waiting_publishes(), timeout=30, interval=0.05)
    assert waiting_publishes() == 0
    assert not published.is_set(), "nothing was published; the row would be left for the relay"


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
