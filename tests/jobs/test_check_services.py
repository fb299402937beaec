"""check_services: one line per unreachable service, with the command that starts it."""

import pytest
from django.core.management import CommandError, call_command


def test_unreachable_redis_is_named_with_how_to_start_it(settings, capsys):
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"
    with pytest.raises(CommandError):
        call_command("check_services")
    err = capsys.readouterr().err
    assert "Redis is not reachable at redis://127.0.0.1:1/0" in err
    assert "redis-server" in err


@pytest.mark.django_db
def test_reachable_services_pass(capsys):
    call_command("check_services")
    assert "PostgreSQL and Redis are up." in capsys.readouterr().out
