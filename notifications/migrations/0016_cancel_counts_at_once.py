# A cancelled campaign's unsent rows count as skipped from the cancel on (models.cancelled_unsent_sql); its batches
# wait as "cancelled" for the sweep that rewrites the rows.  That sweep writes no event per row: the status trigger
# (0011, 0013) writes none in a transaction that set notifications.status_events to off (models.status_events_off).

from django.db import migrations, models

BODY = """
    INSERT INTO notifications_notificationevent (notification_id, kind, at, provider, data, created_at)
    SELECT n.id,
           CASE n.status WHEN 'sent' THEN 'sent' WHEN 'dead' THEN 'failed' WHEN 'cancelled' THEN 'cancelled'
                ELSE 'skipped' END,
           statement_timestamp(), n.provider,
           CASE WHEN n.status = 'sent' THEN jsonb_build_object('provider_message_id', n.provider_message_id)
                ELSE jsonb_build_object('reason', left(n.last_error, 500)) END,
           statement_timestamp()
    FROM new_rows n JOIN old_rows o ON o.id = n.id
    WHERE n.status IN ('sent', 'dead', 'skipped', 'cancelled') AND o.status IS DISTINCT FROM n.status
    ORDER BY n.id;
    RETURN NULL;
END $$;
"""
STATUS_EVENTS = (
    """
CREATE OR REPLACE FUNCTION notifications_status_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('notifications.status_events', true) = 'off' THEN
        RETURN NULL;
    END IF;"""
    + BODY
)
STATUS_EVENTS_BEFORE = (
    """
CREATE OR REPLACE FUNCTION notifications_status_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN"""
    + BODY
)


class Migration(migrations.Migration):
    dependencies = [
        ("notifications", "0015_admin_at_scale"),
    ]

    operations = [
        migrations.AlterField(
            model_name="campaignbatch",
            name="status",
            field=models.CharField(
                choices=[
                    ("queued", "queued (its message is in the broker)"),
                    ("sending", "sending (a worker holds it)"),
                    ("deferred", "deferred (quiet hours or rate limit; the relay publishes it when due)"),
                    ("paused", "paused (published again on resume)"),
                    ("done", "Done"),
                    ("cancelled", "cancelled (its rows count as skipped; the sweep marks them)"),
                    ("dead", "dead (in the dead-letter table with its unsent rows)"),
                ],
                default="queued",
                max_length=16,
            ),
        ),
        migrations.RunSQL(STATUS_EVENTS, STATUS_EVENTS_BEFORE),
    ]
