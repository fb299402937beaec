"""Issue an API token for a user and print it (the only time the key is shown)."""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from notifications.models import ApiToken


class Command(BaseCommand):
    help = "Create an API token for USERNAME and print it. Use it as 'Authorization: Token <key>'."

    def add_arguments(self, parser) -> None:
        parser.add_argument("username")
        parser.add_argument("--create-user", action="store_true", help="Create the user if it does not exist.")
        parser.add_argument(
            "--may-send-security",
            action="store_true",
            help="Let this token send security-priority notifications (its user also needs the permission).",
        )

    def handle(self, *args, username: str, create_user: bool, may_send_security: bool, **options) -> None:
        User = get_user_model()
        user = User.objects.filter(username=username).first()
        if user is None:
            if not create_user:
                raise CommandError(
                    f"user {username!r} does not exist; create it first (python manage.py createsuperuser) "
                    "or pass --create-user"
                )
            user = User.objects.create_user(username=username)
        if not user.is_active:
            raise CommandError(f"user {username!r} is inactive; activate it in the admin first")
        _, key = ApiToken.issue(user, may_send_security=may_send_security)
        self.stdout.write(key)
