"""Publishing reaches the project's broker from any thread (web servers publish from worker threads)."""

import threading
import time
import uuid

import pytest

from jobs.publishing import publish
from jobs.redis import redis_client
from jobs.tasks import probe
from settings.topology import DEFAULT_QUEUE


@pytest.mark.e2e
def test_a_publish_from_another_thread_reaches_the_workers(workers):
    key = f"test:probe:{uuid.uuid4()}"
    results: list[bool] = []
    thread = threading.Thread(target=lambda: results.append(publish(probe, args=[key], queue=DEFAULT_QUEUE)))
    thread.start()
    thread.join()
    assert results == [True]
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and redis_client().get(key) is None:
        time.sleep(0.05)
    assert int(redis_client().get(key) or 0) == 1
