"""Create the demo admin user (if missing) and print a fresh API token for it: what `make run` shows."""

import os

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from notifications.models import ApiToken


class Command(BaseCommand):
    help = (
        "Create the demo superuser (DEMO_ADMIN_USER / DEMO_ADMIN_PASSWORD, default admin/admin) and print an API token."
    )

    def handle(self, *args, **options) -> None:
        username = os.environ.get("DEMO_ADMIN_USER", "admin")
        password = os.environ.get("DEMO_ADMIN_PASSWORD", "admin")
        User = get_user_model()
        user = User.objects.filter(username=username).first()
        if user is None:
            user = User.objects.create_superuser(
                username=username, email=f"{username}@notify.example", password=password
            )
            self.stdout.write(f"Created superuser {username!r} with password {password!r}.")
        else:
            self.stdout.write(f"Superuser {username!r} exists (password unchanged).")
        _, key = ApiToken.issue(user, may_send_security=True)
        self.stdout.write(f"API token for {username}: {key}")
