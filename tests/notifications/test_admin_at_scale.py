"""The notification admin at a year of traffic, on a small copy of it (seed_notifications): every page answers with
the right rows, no query counts the whole table or asks it for its distinct values, and each search is an index
lookup (its plan has no sequential scan of the notifications)."""

import re
import uuid
from urllib.parse import quote

import pytest
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext

from notifications.counting import campaign_notifications
from notifications.models import Campaign, Notification, Recipient

pytestmark = pytest.mark.django_db
LIST = "/admin/notifications/notification/"
TABLE = '"notifications_notification"'
ROWS = 30_000


@pytest.fixture(scope="module")
def seeded(django_db_setup, django_db_blocker):
    """30,000 notifications to 2,000 recipients, committed for the module's tests and removed after them."""
    with django_db_blocker.unblock():
        call_command("seed_notifications", str(ROWS), "--recipients", "2000", "--batch", "10000")
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE notifications_notification")
            cursor.execute("ANALYZE notifications_recipient")
    yield
    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute("TRUNCATE notifications_notification, notifications_campaign, notifications_recipient CASCADE")


def newest(rows) -> list[str]:
    return [str(pk) for pk in rows.order_by("-created_at", "-pk").values_list("pk", flat=True)[:100]]


def assert_newest_first(ids: list[str], rows) -> None:
    """`ids` are the newest hundred of `rows`, newest first (rows written together, e.g. a campaign segment, share
    their created_at: among them any order)."""
    times = dict(rows.filter(pk__in=ids).values_list("pk", "created_at"))
    assert len(times) == len(ids) == min(100, rows.count())
    shown_times = [times[uuid.UUID(pk)] for pk in ids]
    assert shown_times == sorted(shown_times, reverse=True)
    assert shown_times[-1] >= rows.order_by("-created_at").values_list("created_at", flat=True)[len(ids) - 1]


def shown(page) -> list[str]:
    """The ids of the rows a change list shows, in order (their action checkboxes)."""
    return re.findall(r'name="_selected_action" value="([^"]+)"', page.content.decode())


def get(client, query: str = ""):
    with CaptureQueriesContext(connection) as queries:
        page = client.get(LIST + query)
    assert page.status_code == 200, page.content[:2000]
    return page, [q["sql"] for q in queries.captured_queries]


def assert_no_whole_table_query(sqls: list[str]) -> None:
    for sql in sqls:
        if TABLE not in sql:
            continue
        assert "DISTINCT" not in sql.upper(), sql
        if "COUNT(" in sql.upper():
            # Only a count over a LIMITed subquery: it stops at the cap.
            assert re.search(r"LIMIT \d+\) subquery", sql), sql


def rows_query(sqls: list[str]) -> str:
    """The query that read the page's rows (a LIMIT only when there are more than a page of them)."""
    (sql,) = [s for s in sqls if s.startswith(f"SELECT {TABLE}.") and "ORDER BY" in s]
    return sql


def plan(sql: str) -> str:
    """The plan of `sql`, without the whole reads of partitions too small for an index to pay (a week just begun,
    the week ahead: the seeded rows wait in the default partition)."""
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN {sql}")
        lines = [row[0] for row in cursor.fetchall()]
        kept = []
        for line in lines:
            scan = re.search(r"Seq Scan on (notifications_notification_\w+)", line)
            if scan:
                cursor.execute("SELECT count(*) < 1000 FROM (SELECT 1 FROM %s LIMIT 1000) few" % scan.group(1))  # noqa: UP031
                if cursor.fetchone()[0]:
                    continue
            kept.append(line)
        return "\n".join(kept)


def test_the_list_shows_the_newest_hundred_without_counting_the_table(seeded, admin_client):
    page, sqls = get(admin_client)

    assert_newest_first(shown(page), Notification.objects.all())
    assert_no_whole_table_query(sqls)
    assert not any(re.search(r'SELECT COUNT\(\*\) AS "__count" FROM "notifications_notification"', s) for s in sqls)


@pytest.mark.parametrize(
    ("query", "condition"),
    [
        ("status__exact=sent", {"status": "sent"}),
        ("status__exact=dead", {"status": "dead"}),
        ("status__exact=skipped", {"status": "skipped"}),
        ("priority__exact=security", {"priority": "security"}),
        ("priority__exact=marketing", {"priority": "marketing"}),
        ("channel__exact=sms", {"channel": "sms"}),
        ("channel__exact=push", {"channel": "push"}),
        ("provider__exact=twilio", {"provider": "twilio"}),
        ("template__exact=password_reset", {"template": "password_reset"}),
    ],
)
def test_each_filter_shows_its_newest_rows_without_counting_the_table(seeded, admin_client, query, condition):
    page, sqls = get(admin_client, f"?{query}")

    assert shown(page)
    assert_newest_first(shown(page), Notification.objects.filter(**condition))
    assert_no_whole_table_query(sqls)


def test_the_status_filter_is_served_by_an_index(seeded, admin_client):
    for status in ("dead", "pending", "failed", "cancelled", "scheduled", "sent"):
        _, sqls = get(admin_client, f"?status__exact={status}")
        assert "Seq Scan on notifications_notification" not in plan(rows_query(sqls)), status


def a_single_send(**condition) -> Notification:
    return Notification.objects.filter(campaign__isnull=True, **condition).exclude(provider_message_id="").first()


def searches() -> dict[str, tuple[str, object]]:
    """Each kind of search: its term and the rows it must show."""
    email = Recipient.objects.filter(notifications__priority="marketing").values_list("email", flat=True).first()
    sms = a_single_send(channel="sms")
    single = a_single_send(channel="email")
    campaign = Campaign.objects.order_by("pk")[3]
    return {
        "e-mail address": (email, Notification.objects.filter(to=email)),
        "phone": (sms.to, Notification.objects.filter(to=sms.to)),
        "idempotency key": (single.idempotency_key, Notification.objects.filter(pk=single.pk)),
        "provider message id": (single.provider_message_id, Notification.objects.filter(pk=single.pk)),
        "id": (str(single.pk), Notification.objects.filter(pk=single.pk)),
        "campaign": (f"campaign:{campaign.pk}", campaign_notifications(campaign)),
    }


@pytest.mark.parametrize(
    "kind", ["e-mail address", "phone", "idempotency key", "provider message id", "id", "campaign"]
)
def test_each_search_finds_exactly_its_rows_through_an_index(seeded, admin_client, kind):
    term, rows = searches()[kind]

    page, sqls = get(admin_client, f"?q={quote(term)}")

    if kind == "campaign":
        # A campaign's rows in key order, the newest recipients first: the key range is their index.
        expected = [str(pk) for pk in rows.order_by("-pk").values_list("pk", flat=True)[:100]]
        assert expected and shown(page) == expected
    else:
        assert shown(page)
        assert_newest_first(shown(page), rows)
    assert_no_whole_table_query(sqls)
    explained = plan(rows_query(sqls))
    assert "Seq Scan on notifications_notification" not in explained, explained
    assert "Index" in explained, explained


def test_a_search_for_nobody_shows_nothing(seeded, admin_client):
    page, sqls = get(admin_client, "?q=" + quote("nobody@example.org"))
    assert shown(page) == []
    assert "0 results" in page.content.decode()


def test_the_recipient_page_lists_their_notifications_newest_first_and_links_the_paginated_list(seeded, admin_client):
    recipient = Recipient.objects.filter(notifications__priority="marketing").first()
    rows = Notification.objects.filter(recipient=recipient)

    page = admin_client.get(f"/admin/notifications/recipient/{recipient.pk}/change/")

    assert page.status_code == 200
    links = re.findall(r"/admin/notifications/notification/([0-9a-f-]{36})/change/", page.content.decode())
    assert links == newest(rows)[:20]
    listed, sqls = get(admin_client, f"?recipient__id__exact={recipient.pk}")
    assert_newest_first(shown(listed), rows)
    assert "notif_recipient_idx" in plan(rows_query(sqls))
