"""One notification or one small campaign, submitted and delivered in the test's own process, the way a worker
would (the services and the delivery functions, on the real PostgreSQL, Redis and sandbox)."""

from jobs.redis import redis_client
from notifications.campaigns import campaign_create, campaign_fanout_segment, campaign_start
from notifications.delivery import notification_deliver
from notifications.models import Campaign, CampaignSegment, Notification, Recipient
from notifications.services import notification_send

NEWS = {"headline": "Autumn sale", "body": "Everything must go"}


def reset_breakers_and_limits() -> None:
    """Every breaker closed and unpaced, every rate limiter's schedule and penalty forgotten."""
    client = redis_client()
    for pattern in ("jobs:breaker:*", "jobs:ratelimit:*"):
        for key in client.scan_iter(pattern):
            client.delete(key)


#: A template with no secret in its context (a password reset's code is wiped once it is final).
ORDER_SHIPPED = {"template": "order_shipped", "context": {"name": "Ada", "order_number": "A-1"}}
PASSWORD_RESET = {"template": "password_reset", "context": {"code": "123456"}}


def submit(
    *, priority: str = "transactional", channel: str = "email", to: str = "ada@example.com", message=PASSWORD_RESET
) -> Notification:
    notification, _ = notification_send(priority=priority, channel=channel, to=to, **message)
    return notification


def deliver(notification: Notification) -> Notification:
    """One delivery attempt, then the row as it is now."""
    notification_deliver(notification_ids=[str(notification.pk)])
    notification.refresh_from_db()
    return notification


def delivered(notification: Notification, timeout: float = 20.0) -> Notification:
    """The row once it is final (sent, dead, skipped): delivered here, or by the suite's workers when they run and
    took it first (its submit published it)."""
    from harness.waiting import wait_until

    deliver(notification)
    return wait_until(
        lambda: Notification.objects.filter(pk=notification.pk, status__in=["sent", "dead", "skipped"]).first(),
        timeout=timeout,
        what=f"notification {notification.pk} final",
    )


def fanned_out_campaign(tag: str, count: int = 3, context: dict | None = None) -> Campaign:
    """A started e-mail campaign to `count` new consenting recipients, its notifications and batches written."""
    Recipient.objects.bulk_create(
        [Recipient(email=f"{tag}{i}@example.com", email_marketing_consent=True, tags=[tag]) for i in range(count)]
    )
    campaign = campaign_create(
        name=tag, template="newsletter", channel="email", context=context or NEWS, audience_tag=tag
    )
    campaign_start(campaign_id=campaign.pk)
    for segment in CampaignSegment.objects.filter(campaign=campaign):
        campaign_fanout_segment(segment_id=segment.pk)
    return Campaign.objects.get(pk=campaign.pk)
