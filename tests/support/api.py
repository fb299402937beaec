"""API clients as the tests need them: a user who may send notifications, with a token."""

from django.contrib.auth.models import Permission

from notifications.models import ApiToken

#: What an API client that sends notifications holds: the add permission and one per priority.
SENDER_PERMISSIONS = ("add_notification", "send_security", "send_transactional", "send_marketing")


def make_sender(user_model, username: str, *, permissions=SENDER_PERMISSIONS, may_send_security: bool = True):
    """A user holding `permissions`, and a key of a new token of theirs: (user, key)."""
    user = user_model.objects.create_user(username=username, password="x")
    user.user_permissions.add(*Permission.objects.filter(codename__in=permissions))
    _, key = ApiToken.issue(user, may_send_security=may_send_security)
    return user, key
