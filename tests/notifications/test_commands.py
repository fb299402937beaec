"""Management commands: tokens that authenticate, and errors that say what to fix."""

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from notifications.models import ApiToken

pytestmark = pytest.mark.django_db


def test_create_api_token_prints_a_key_that_authenticates(django_user_model, client):
    django_user_model.objects.create_user(username="ops")
    out = StringIO()
    call_command("create_api_token", "ops", stdout=out)
    key = out.getvalue().strip()
    assert ApiToken.objects.for_key(key).user.username == "ops"
    response = client.get(
        "/api/v1/notifications/00000000-0000-0000-0000-000000000000", HTTP_AUTHORIZATION=f"Token {key}"
    )
    assert response.status_code == 404  # authenticated, just no such notification


def test_create_api_token_for_unknown_user_says_how_to_fix_it():
    with pytest.raises(CommandError, match="createsuperuser.*--create-user"):
        call_command("create_api_token", "ghost")
    assert ApiToken.objects.count() == 0


def test_create_api_token_can_create_the_user(django_user_model):
    call_command("create_api_token", "robot", "--create-user", stdout=StringIO())
    assert django_user_model.objects.filter(username="robot").exists()


def test_setup_demo_is_repeatable(django_user_model):
    call_command("setup_demo", stdout=StringIO())
    call_command("setup_demo", stdout=StringIO())
    assert django_user_model.objects.filter(username="admin", is_superuser=True).count() == 1
    assert ApiToken.objects.count() == 2
