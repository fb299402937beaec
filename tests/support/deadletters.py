"""Dead letters made the way a worker makes them: a notification through the service, then dead-lettered."""

from jobs.errors import PermanentError
from jobs.models import DeadLetter
from notifications.models import Notification
from notifications.sending import record_dead
from notifications.services import notification_send

ADDRESSES = {"email": "ada@example.com", "sms": "+14155550199", "push": "fGzA1b2c3d4e5f6g7h8:APA91bHxToken"}


def make_dead_letter(
    *, channel: str = "sms", priority: str = "transactional", provider: str = "twilio", attempts: int | None = None
) -> tuple[Notification, DeadLetter]:
    notification, _ = notification_send(
        priority=priority,
        channel=channel,
        template="order_shipped",
        to=ADDRESSES[channel],
        context={"name": "Ada", "order_number": "A-1"},
    )
    if attempts is not None:
        Notification.objects.filter(pk=notification.pk).update(attempts=attempts)
        notification.refresh_from_db()
    try:  # raised, so the dead letter carries a real traceback
        raise PermanentError(f"invalid recipient {notification.to}")
    except PermanentError as exc:
        record_dead(notification, exc, provider=provider, claimed=False)
    notification.refresh_from_db()
    return notification, DeadLetter.objects.get(subject_id=str(notification.pk))
