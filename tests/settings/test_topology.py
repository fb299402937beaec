"""The queue topology, the broker settings that keep it safe, and the layout rule for platform/."""

from pathlib import Path

import pytest
from django.conf import settings
from django.core.checks import run_checks

from settings import topology
from settings.celery_app import app

REPO = Path(__file__).resolve().parents[2]


def test_nine_notification_queues_named_priority_dot_channel():
    names = [q.name for q in settings.CELERY_TASK_QUEUES]
    expected = {f"{p}.{c}" for p in ("security", "transactional", "marketing") for c in ("email", "sms", "push")}
    assert expected <= set(names)
    assert set(names) - expected == {
        topology.DEFAULT_QUEUE,
        topology.FANOUT_QUEUE,
        topology.JOBS_QUEUE,
        topology.WEBHOOKS_QUEUE,
    }


def test_each_pool_consumes_only_its_priority():
    assert topology.pool_queues("security") == ["security.email", "security.sms", "security.push"]
    # The marketing pool also delivers status webhooks: never the security or transactional pools' work.
    marketing = topology.pool_queues("marketing")
    assert all(q.startswith("marketing.") for q in marketing if q != topology.WEBHOOKS_QUEUE)
    assert topology.WEBHOOKS_QUEUE in marketing


def test_unknown_priority_or_channel_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="security, transactional, marketing"):
        topology.queue_name("urgent", "email")


def test_celery_uses_json_only_and_states_its_timeouts():
    conf = app.conf
    assert conf.accept_content == ["json"] and conf.task_serializer == "json"
    options = conf.broker_transport_options
    for key in ("visibility_timeout", "socket_timeout", "socket_connect_timeout", "health_check_interval"):
        assert options[key] is not None, key
    assert conf.task_time_limit < options["visibility_timeout"]
    assert conf.worker_prefetch_multiplier == 1


def test_procfile_security_pool_has_prefetch_one_and_its_queues():
    procfile = (REPO / "platform" / "Procfile").read_text()
    security = next(line for line in procfile.splitlines() if line.startswith("security:"))
    assert "--prefetch-multiplier 1" in security
    assert "-Q security.email,security.sms,security.push" in security


@pytest.mark.parametrize("priority", topology.PRIORITIES)
def test_every_pool_in_the_procfile_and_compose_consumes_exactly_its_topology_queues(priority):
    import re

    expected = set(topology.pool_queues(priority))
    procfile = (REPO / "platform" / "Procfile").read_text()
    line = next(line for line in procfile.splitlines() if line.startswith(f"{priority}:"))
    assert set(re.search(r"-Q (\S+)", line).group(1).split(",")) == expected
    compose = (REPO / "docker-compose.yml").read_text()
    block = compose.split(f"  {priority}-worker:")[1].split("\n  ")[0:3]
    queues = re.search(r'"-Q", "([^"]+)"', "".join(block)).group(1)
    assert set(queues.split(",")) == expected


def test_platform_folder_holds_no_python():
    """A `platform` package would shadow the standard library module and break Django."""
    found = [p for p in (REPO / "platform").rglob("*") if p.suffix == ".py" or p.name == "__init__.py"]
    assert found == []


def test_system_checks_pass_with_the_shipped_settings():
    assert run_checks() == []


def test_system_check_refuses_a_misspelt_provider(settings):
    settings.NOTIFICATIONS_PROVIDERS = {
        **settings.NOTIFICATIONS_PROVIDERS,
        "sms": [{"name": "twilio", "backend": "notifications.providers.twillio.Provider"}],
    }
    errors = run_checks()
    assert [e.id for e in errors] == ["notifications.E006"]
    assert "twillio" in errors[0].msg


def test_system_check_refuses_a_time_limit_above_the_visibility_timeout(settings):
    settings.CELERY_TASK_TIME_LIMIT = 3600
    assert "jobs.E002" in [e.id for e in run_checks()]
