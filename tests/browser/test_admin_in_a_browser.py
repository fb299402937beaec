"""An operator's day in a real browser (Debian's Chromium driven by Playwright): replay a dead letter from the admin,
watch the operations page refresh by itself, and find the three worker pools in Flower behind its password."""

import os
import re
import sys
from collections.abc import Iterator

import pytest
import requests
from django.conf import settings
from django.db import connections, transaction
from playwright.sync_api import Page, expect

from harness.processes import ManagedProcess, WorkerProcess
from harness.sandbox.process import free_port
from harness.waiting import wait_until
from jobs.models import DeadLetter, DeadLetterStatus
from notifications.models import Notification, NotificationStatus
from settings.topology import all_queue_names
from tests.browser.conftest import PATIENCE_MS
from tests.support.deadletters import make_dead_letter

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

FLOWER_USER, FLOWER_PASSWORD = "ops", "secret"
OPERATOR, OPERATOR_PASSWORD = "operator", "correct-horse-battery"


@pytest.fixture
def operator(django_user_model):
    return django_user_model.objects.create_superuser(OPERATOR, "operator@example.com", OPERATOR_PASSWORD)


def log_in(page: Page) -> None:
    page.goto("/admin/")
    page.fill("#id_username", OPERATOR)
    page.fill("#id_password", OPERATOR_PASSWORD)
    page.click("input[type=submit]")
    expect(page.locator("#site-name")).to_be_visible()
    expect(page.locator("#user-tools strong")).to_have_text(OPERATOR)


def a_dead_letter() -> tuple[Notification, DeadLetter]:
    # One transaction: the submit's own publish happens once the row is already dead, so no worker sends it;
    # only the replay below can.
    with transaction.atomic():
        return make_dead_letter(channel="sms", provider="twilio")


def test_an_operator_replays_a_dead_letter_and_it_is_sent_once(workers, ledger, operator, page):
    notification, letter = a_dead_letter()
    log_in(page)

    page.locator(".app-jobs").get_by_role("link", name="Dead letters").click()
    row = page.locator("#result_list tbody tr", has=page.locator(f"input.action-select[value='{letter.pk}']"))
    expect(row).to_contain_text(DeadLetterStatus.OPEN.label)
    expect(row).to_contain_text(f"notification {notification.pk}")
    row.locator("input.action-select").check()
    page.select_option("select[name=action]", "replay_selected")
    page.click("button[name=index]")
    expect(page.locator(".messagelist")).to_contain_text("Replayed 1 dead letter(s).")

    page.goto(f"/admin/notifications/notification/{notification.pk}/change/")
    status = page.locator(".field-status .readonly")

    def shows_sent() -> bool:
        if status.inner_text() == NotificationStatus.SENT.label:
            return True
        page.reload()  # the change page does not refresh by itself
        return False

    wait_until(shows_sent, timeout=PATIENCE_MS / 1000, interval=0.3)
    expect(status).to_have_text(NotificationStatus.SENT.label)

    notification.refresh_from_db()
    assert (notification.status, notification.attempts) == ("sent", 1)
    (entry,) = ledger.entries(idempotency_key=notification.idempotency_key)
    assert entry["to"] == notification.to and entry["message_id"] == notification.provider_message_id
    letter.refresh_from_db()
    assert (letter.status, letter.resolved_by) == ("replayed", operator)


def test_the_operations_page_refreshes_by_itself(workers, operator, page):
    log_in(page)
    page.get_by_role("link", name="Queues, breakers, send rates, dead letters and campaigns, live").click()
    expect(page).to_have_url(re.compile(r"/admin/operations/$"))

    queues = page.locator("#ops-queues tbody tr")
    expect(queues).to_have_count(len(all_queue_names()))
    for name in all_queue_names():
        expect(page.locator(f"#ops-queues tr[data-queue='{name}'] td").first).to_have_text(name)
    for entries in settings.NOTIFICATIONS_PROVIDERS.values():
        for provider in entries:
            expect(page.locator(f"#ops-providers tr[data-provider='{provider['name']}'] td").first).to_have_text(
                provider["name"]
            )
    assert len(page.locator("#ops-chart polyline").get_attribute("points").split()) == 300
    count = page.locator("#ops-deadletters-open")
    expect(count).to_have_text("0")
    page.evaluate("window.notReloaded = true")

    a_dead_letter()

    expect(count).to_have_text("1", timeout=PATIENCE_MS)
    assert page.evaluate("window.notReloaded === true"), "the page reloaded instead of updating itself"
    expect(page.locator("#ops-status")).to_have_text("")
    page.click("#ops-deadletters-link")
    expect(page.locator("#result_list tbody tr")).to_have_count(1)


@pytest.fixture(scope="module")
def flower(workers: dict[str, WorkerProcess], tmp_path_factory) -> Iterator[str]:
    """Flower as `make run` starts it, on the test broker, with the environment of the worker pools."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    database_name = connections["default"].settings_dict["NAME"]
    # FLOWER_* variables (the Makefile exports FLOWER_BASIC_AUTH) would change what is tested here.
    env = {name: value for name, value in os.environ.items() if not name.startswith("FLOWER_")}
    env.update(
        DJANGO_SETTINGS_MODULE="settings.test",
        DATABASE_URL=f"postgres://postgres@127.0.0.1:5432/{database_name}",
    )
    command = [
        sys.executable, "-m", "celery", "-A", "settings", "flower",
        "--address=127.0.0.1", f"--port={port}", f"--basic-auth={FLOWER_USER}:{FLOWER_PASSWORD}",
    ]  # fmt: skip
    with ManagedProcess(
        "flower",
        command,
        env=env,
        log_path=tmp_path_factory.mktemp("flower") / "flower.log",
        ready=lambda: requests.get(f"{url}/healthcheck", timeout=1).status_code == 200,
    ):
        yield url


def test_flower_shows_the_three_worker_pools_behind_its_password(workers, flower, browser):
    for path in ("/", "/api/workers"):
        assert requests.get(f"{flower}{path}", timeout=10).status_code == 401, path

    context = browser.new_context(http_credentials={"username": FLOWER_USER, "password": FLOWER_PASSWORD})
    try:
        page = context.new_page()
        page.goto(f"{flower}/workers")
        # A pool appears with its first heartbeat; the page redraws its table by itself every few seconds.
        for pool in workers.values():
            row = page.locator("#workers-table tbody tr", has_text=f"{pool.name}@")
            expect(row).to_contain_text("Online", timeout=PATIENCE_MS)
    finally:
        context.close()


def test_an_operator_reads_the_api_docs_rendered_from_our_own_scripts(page: Page, operator) -> None:
    """Swagger UI from the package's static files (no CDN), fed by /api/v1/openapi.json, behind the admin login."""
    failed = []
    page.on("requestfailed", lambda request: failed.append(request.url))
    page.goto("/api/v1/docs")
    expect(page.locator("#id_username")).to_be_visible()  # the admin's login first

    log_in(page)
    page.goto("/api/v1/docs")
    for summary in ("Submit a notification", "A notification's status", "Create a campaign"):
        expect(page.get_by_text(summary, exact=True)).to_be_visible()
    expect(page.get_by_text("NotificationIn", exact=True)).to_be_visible()
    assert not failed, f"requests that failed: {failed}"
