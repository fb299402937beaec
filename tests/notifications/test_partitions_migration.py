"""Upgrading a database that holds notifications to the partitioned tables (migration 0017) loses nothing: every
row stays where its id finds it (the old table becomes the default partition), its events with it, and new rows go
to their week."""

import os
import subprocess  # nosec B404 - our own manage.py
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from django.conf import settings
from django.db import connection

from jobs.ids import uuid7
from notifications.partitions import week_leaf, week_start

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def scratch_database():
    """A database of its own, dropped afterwards (the migration is run on it by `manage.py migrate`)."""
    params = connection.settings_dict
    name = f"{params['NAME']}_upgrade"
    dsn = f"host={params['HOST']} port={params['PORT']} user={params['USER']} dbname=postgres"
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.execute(f'CREATE DATABASE "{name}"')
    url = f"postgres://{params['USER']}@{params['HOST']}:{params['PORT']}/{name}"
    yield url, f"host={params['HOST']} port={params['PORT']} user={params['USER']} dbname={name}"
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def migrate(url: str, *target: str) -> None:
    subprocess.run(  # nosec B603 - our own interpreter and manage.py, no shell
        [sys.executable, "manage.py", "migrate", *target, "--no-input", "-v", "0"],
        cwd=REPO,
        env={**os.environ, "DATABASE_URL": url, "DJANGO_SETTINGS_MODULE": settings.SETTINGS_MODULE},
        check=True,
        timeout=300,
    )


def test_an_upgrade_keeps_every_row_and_event_and_new_rows_go_to_their_week(scratch_database):
    url, dsn = scratch_database
    migrate(url, "notifications", "0016")
    old_ids = [uuid.uuid4() for _ in range(3)]
    with psycopg.connect(dsn, autocommit=True) as db:
        recipient = db.execute(
            "INSERT INTO notifications_recipient (email, locale, timezone, email_marketing_consent, "
            "sms_marketing_consent, push_marketing_consent, tags, created_at) "
            "VALUES ('old@example.com', 'en', 'UTC', false, false, false, '{}', now()) RETURNING id"
        ).fetchone()[0]
        for number, pk in enumerate(old_ids):
            db.execute(
                "INSERT INTO notifications_notification (id, idempotency_key, request_fingerprint, priority, channel, "
                'recipient_id, "to", template, context, status, attempts, provider, provider_message_id, last_error, '
                "outcome_unknown, created_at, updated_at) VALUES (%s, %s, '', 'transactional', 'email', %s, "
                "'old@example.com', 'order_shipped', '{}', 'queued', 0, '', '', '', false, now(), now())",
                [pk, f"old-{number}", recipient],
            )
        db.execute(
            "UPDATE notifications_notification SET status = 'sent', provider_message_id = 'pm-' || idempotency_key"
        )
        db.execute(
            "INSERT INTO notifications_notificationevent (notification_id, kind, provider, provider_message_id, "
            "dedupe_key) VALUES (%s, 'delivered', 'postmark', 'pm-old-0', 'report-1')",
            [old_ids[0]],
        )
        last_event = db.execute("SELECT max(id) FROM notifications_notificationevent").fetchone()[0]

    migrate(url)

    with psycopg.connect(dsn, autocommit=True) as db:
        for pk in old_ids:
            found = db.execute(
                "SELECT tableoid::regclass::text, status FROM notifications_notification WHERE id = %s", [pk]
            ).fetchall()
            assert found == [("notifications_notification_default", "sent")]
        events = db.execute(
            "SELECT kind FROM notifications_notificationevent WHERE notification_id = %s ORDER BY id", [old_ids[0]]
        ).fetchall()
        assert events == [("sent",), ("delivered",)], "the trigger's event and the report, both kept"
        # The same report again is still refused, and new events number on from the old ones.
        again = db.execute(
            "INSERT INTO notifications_notificationevent (notification_id, kind, provider, provider_message_id, "
            "dedupe_key) VALUES (%s, 'delivered', 'postmark', 'pm-old-0', 'report-1') "
            "ON CONFLICT (dedupe_key, notification_id) WHERE dedupe_key IS NOT NULL DO NOTHING RETURNING id",
            [old_ids[0]],
        ).fetchall()
        assert again == []
        db.execute("UPDATE notifications_notification SET status = 'dead' WHERE id = %s", [old_ids[1]])
        (event_id,) = db.execute(
            "SELECT id FROM notifications_notificationevent WHERE notification_id = %s AND kind = 'failed'",
            [old_ids[1]],
        ).fetchone()
        assert event_id > last_event, "the status trigger fires on the partitioned table, ids go on"
        fresh = uuid7()
        db.execute(
            "INSERT INTO notifications_notification (id, idempotency_key, request_fingerprint, priority, channel, "
            'recipient_id, "to", template, context, status, attempts, provider, provider_message_id, last_error, '
            "outcome_unknown, created_at, updated_at) SELECT %s, 'new', '', priority, channel, recipient_id, \"to\", "
            "template, context, 'queued', 0, '', '', '', false, now(), now() FROM notifications_notification "
            "WHERE id = %s",
            [fresh, old_ids[2]],
        )
        (leaf,) = db.execute(
            "SELECT tableoid::regclass::text FROM notifications_notification WHERE id = %s", [fresh]
        ).fetchone()
        assert leaf == f"notifications_notification_{week_leaf(week_start(datetime.now(UTC))).suffix}"
