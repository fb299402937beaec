"""The admin's operations page: staff only, and every figure read from the real Redis, broker and database."""

import json
import socket
import time
import uuid

import pytest
from django.conf import settings
from django.utils import timezone
from kombu import Queue

from jobs.breaker import CircuitBreaker
from jobs.publishing import publish
from jobs.redis import broker_client, redis_client
from jobs.tasks import probe
from notifications.events import provider_rate
from notifications.models import Campaign
from notifications.selectors import BROKER_DOWN, CHART_SECONDS, RATES_DOWN, operations_snapshot
from settings.celery_app import app
from settings.topology import all_queue_names
from tests.support.deadletters import make_dead_letter

pytestmark = pytest.mark.django_db
PAGE_URL = "/admin/operations/"
DATA_URL = "/admin/operations/data"


@pytest.fixture
def probe_queues():
    """A security and a transactional queue that no worker pool consumes (pools may be running in this
    session), declared to this process's Celery app only, so a message published there stays put."""
    names = [f"security.ops-{uuid.uuid4().hex[:8]}", f"transactional.ops-{uuid.uuid4().hex[:8]}"]
    for name in names:
        app.amqp.queues.add(Queue(name, routing_key=name))
    yield names
    for name in names:
        app.amqp.queues.pop(name, None)
    broker_client().delete(*names)


@pytest.fixture
def open_breaker():
    name = f"ops-{uuid.uuid4().hex[:8]}"
    breaker = CircuitBreaker(name)
    for _ in range(settings.JOBS_CIRCUIT_BREAKER["failure_threshold"]):
        breaker.record_failure("HTTP 503")
    yield name
    breaker.reset()


@pytest.fixture
def campaigns() -> dict[str, Campaign]:
    common = {"template": "newsletter", "channel": "email", "materialized_count": 1000}
    return {
        status: Campaign.objects.create(
            name=f"{status} sale",
            status=status,
            sent_count=400,
            dead_count=10,
            skipped_count=90,
            started_at=timezone.now(),
            **common,
        )  # fmt: skip
        for status in ("running", "paused", "completed", "draft")
    }


@pytest.fixture
def redis_down(settings):
    """Point the job runtime and the broker at a port nobody listens on, as if Redis had stopped."""
    with socket.socket() as probe_socket:
        probe_socket.bind(("127.0.0.1", 0))
        closed = f"redis://127.0.0.1:{probe_socket.getsockname()[1]}/0"
    settings.REDIS_URL = settings.CELERY_BROKER_URL = closed
    redis_client.cache_clear()
    broker_client.cache_clear()
    yield
    redis_client.cache_clear()
    broker_client.cache_clear()


def test_staff_sees_queues_breakers_dead_letters_and_campaigns(admin_client, open_breaker, campaigns):
    make_dead_letter()

    response = admin_client.get(PAGE_URL)

    assert response.status_code == 200
    page = response.content.decode()
    snapshot = json.loads(page.split('<script id="ops-initial" type="application/json">')[1].split("</script>")[0])
    assert [q["name"] for q in snapshot["queues"]["rows"]] == all_queue_names()
    assert {"postmark", "smtp", "twilio", "vonage", "fcm", open_breaker} <= {
        p["name"] for p in snapshot["providers"]["rows"]
    }
    assert snapshot["dead_letters"]["open"] == 1
    assert sorted(c["name"] for c in snapshot["campaigns"]) == ["paused sale", "running sale"]
    for table in ("ops-queues", "ops-providers", "ops-campaigns", "ops-chart"):
        assert f'id="{table}"' in page
    assert 'href="/admin/jobs/deadletter/?status__exact=open"' in page


def test_the_admin_index_links_to_the_operations_page(admin_client):
    response = admin_client.get("/admin/")
    page = response.content.decode()
    assert f'<a href="{PAGE_URL}">' in page
    assert "Job runtime" in page and "Dead letters" in page  # the stock index is still there


@pytest.mark.parametrize("url", [PAGE_URL, DATA_URL])
def test_anyone_but_staff_is_sent_to_the_login_page(client, django_user_model, url):
    assert client.get(url)["Location"] == f"/admin/login/?next={url}"
    client.force_login(django_user_model.objects.create_user(username="customer", password="x"))
    response = client.get(url)
    assert response.status_code == 302 and response["Location"] == f"/admin/login/?next={url}"


def test_the_json_has_every_part_of_the_page(admin_client, campaigns):
    response = admin_client.get(DATA_URL)

    assert response.status_code == 200 and response["Content-Type"] == "application/json"
    assert "no-cache" in response["Cache-Control"]
    data = response.json()
    assert set(data) == {"generated_at", "queues", "providers", "sends_per_second", "dead_letters", "campaigns"}
    assert set(data["queues"]["rows"][0]) == {"name", "depth", "oldest_age_seconds", "late"}
    assert set(data["providers"]["rows"][0]) == {"name", "state", "failures", "open_since", "rate_per_second"}
    assert data["queues"]["error"] is None and data["providers"]["error"] is None
    assert len(data["sends_per_second"]["counts"]) == CHART_SECONDS
    assert data["dead_letters"] == {"open": 0, "url": "/admin/jobs/deadletter/?status__exact=open"}
    (running,) = [c for c in data["campaigns"] if c["status"] == "running"]
    assert {k: running[k] for k in ("sent", "failed", "skipped", "remaining", "percent_done")} == {
        "sent": 400,
        "failed": 10,
        "skipped": 90,
        "remaining": 500,
        "percent_done": 50.0,
    }
    assert running["url"] == f"/admin/notifications/campaign/{campaigns['running'].pk}/change/"
    assert {"rate_per_second", "eta_seconds"} <= set(running)


def test_a_published_message_shows_as_depth_one_with_its_age(probe_queues):
    security, transactional = probe_queues
    assert publish(probe.name, args=["operations-test"], queue=security)

    rows = {q["name"]: q for q in operations_snapshot(queues=probe_queues)["queues"]["rows"]}

    assert rows[security]["depth"] == 1
    assert 0 <= rows[security]["oldest_age_seconds"] < 60
    assert not rows[security]["late"]
    assert rows[transactional] == {"name": transactional, "depth": 0, "oldest_age_seconds": None, "late": False}


def test_a_security_queue_is_late_after_ten_seconds_and_other_queues_never(probe_queues):
    for queue in probe_queues:
        assert publish(probe.name, args=["operations-test"], queue=queue)

    eleven_seconds_later = operations_snapshot(queues=probe_queues, now=time.time() + 11)
    late = {q["name"]: q["late"] for q in eleven_seconds_later["queues"]["rows"]}

    assert late == {probe_queues[0]: True, probe_queues[1]: False}


def test_an_open_breaker_and_a_providers_send_rate_are_shown(open_breaker):
    provider_rate(open_breaker).add(20, at=time.time() - 1)

    snapshot = operations_snapshot()

    (row,) = [p for p in snapshot["providers"]["rows"] if p["name"] == open_breaker]
    assert (row["state"], row["failures"]) == ("open", settings.JOBS_CIRCUIT_BREAKER["failure_threshold"])
    assert row["open_since"] is not None
    assert row["rate_per_second"] == 2.0  # 20 sends over the last 10 s
    assert sum(snapshot["sends_per_second"]["counts"]) >= 20


def test_only_open_dead_letters_are_counted(admin_client):
    make_dead_letter()
    _, replayed = make_dead_letter(channel="email", provider="postmark")
    admin_client.post(
        "/admin/jobs/deadletter/", {"action": "replay_selected", "_selected_action": [replayed.pk], "index": "0"}
    )
    assert operations_snapshot()["dead_letters"]["open"] == 1


def test_redis_down_leaves_the_page_up_and_says_what_is_unavailable(admin_client, campaigns, redis_down):
    make_dead_letter()

    page = admin_client.get(PAGE_URL)
    data = admin_client.get(DATA_URL).json()

    assert page.status_code == 200
    assert data["queues"] == {"error": BROKER_DOWN, "rows": []}
    assert data["providers"] == {"error": RATES_DOWN, "rows": []}
    assert data["sends_per_second"]["error"] == RATES_DOWN
    assert data["dead_letters"]["open"] == 1  # PostgreSQL still answers
    (running,) = [c for c in data["campaigns"] if c["status"] == "running"]
    assert (running["sent"], running["rate_per_second"], running["eta_seconds"]) == (400, None, None)
