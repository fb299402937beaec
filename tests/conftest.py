"""Fixtures shared by the suite: the real provider sandbox, real worker pools, API clients."""

import json
from urllib.parse import urlparse

import pytest
import redis
from django.conf import settings
from django.db import connections

from harness.processes import WorkerProcess
from settings.topology import PRIORITIES
from tests.support.workers import pool_process


@pytest.fixture(scope="session")
def broker() -> redis.Redis:
    """The test Redis database, emptied once before anything publishes to it.

    Never flushed again mid-session: kombu keeps its queue bindings there.
    """
    client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5)
    client.flushdb()
    return client


@pytest.fixture(scope="session", autouse=True)
def publish_threads(django_db_setup, django_db_blocker):
    """Before the test database is dropped: stop the background publish threads, and end
    sessions that threads of the suite (live-server request threads kept alive by a
    client) still hold, so the drop does not fail."""
    yield
    from jobs.publishing import shutdown

    shutdown()
    if not connections["default"].settings_dict["NAME"].startswith("test_"):
        return  # no test of this session used the database, so none was created and nobody holds it
    with django_db_blocker.unblock(), connections["default"].cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )


@pytest.fixture(scope="session")
def sandbox(broker, tmp_path_factory):
    from harness.sandbox.process import SandboxProcess

    http_port = urlparse(settings.SANDBOX_HTTP_URL).port
    log_path = tmp_path_factory.mktemp("sandbox") / "sandbox.log"
    with SandboxProcess(http_port=http_port, smtp_port=settings.SANDBOX_SMTP_PORT, log_path=log_path) as process:
        yield process


@pytest.fixture
def ledger(sandbox):
    """The sandbox with an empty ledger, no faults and no delivery reports, for one test."""
    sandbox.clear()
    sandbox.clear_faults()
    sandbox.clear_callbacks()
    yield sandbox
    sandbox.clear_faults()
    sandbox.clear_callbacks()


@pytest.fixture(scope="session")
def workers(django_db_setup, django_db_blocker, sandbox, broker, tmp_path_factory) -> dict[str, WorkerProcess]:
    """One real `celery worker` pool per priority, on the test database and test Redis."""
    database_name = connections["default"].settings_dict["NAME"]
    log_dir = tmp_path_factory.mktemp("workers")
    pools: dict[str, WorkerProcess] = {}
    try:
        for priority in PRIORITIES:
            pools[priority] = pool_process(priority, database_name=database_name, log_dir=log_dir).start()
        yield pools
    finally:
        for pool in pools.values():
            pool.stop()


@pytest.fixture
def closed_breakers():
    """Breakers closed and unpaced and rate limiters fresh, before and after the test."""
    from tests.support.sending import reset_breakers_and_limits

    reset_breakers_and_limits()
    yield
    reset_breakers_and_limits()


@pytest.fixture
def api_user(django_user_model):
    from django.contrib.auth.models import Permission

    from tests.support.api import SENDER_PERMISSIONS

    user = django_user_model.objects.create_user(username="api-client", password="x")
    user.user_permissions.add(*Permission.objects.filter(codename__in=SENDER_PERMISSIONS))
    return user


@pytest.fixture
def api_key(api_user) -> str:
    from notifications.models import ApiToken

    _, key = ApiToken.issue(api_user, may_send_security=True)
    return key


@pytest.fixture
def api(client, api_key):
    """Django's test client that sends the token and JSON."""

    class Api:
        def post(self, path: str, body, **headers):
            data = body if isinstance(body, (str, bytes)) else json.dumps(body)
            return client.post(
                path, data=data, content_type="application/json", HTTP_AUTHORIZATION=f"Token {api_key}", **headers
            )

        def get(self, path: str, **headers):
            return client.get(path, HTTP_AUTHORIZATION=f"Token {api_key}", **headers)

    return Api()
