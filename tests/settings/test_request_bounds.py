"""What a request may carry is bounded before any view runs: gunicorn (started exactly as the Procfile starts it)
answers 414 to an over-long request line and 431 to too many header fields or an over-long one; Django answers 400 to a
form with too many fields. Nothing is stored."""

import os
import socket
from collections.abc import Iterator

import pytest
import requests

from harness.chaos.stack import procfile_command, replace_option
from harness.processes import ManagedProcess
from harness.sandbox.process import free_port
from notifications.models import Notification

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module")
def web(tmp_path_factory) -> Iterator[str]:
    port = free_port()
    argv = replace_option(procfile_command("web"), "--bind", f"127.0.0.1:{port}")
    assert "--config" in argv, "the Procfile's web process reads the bounds from settings/gunicorn_conf.py"
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "settings.test"}
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path_factory.mktemp("web") / "web.log"
    process = ManagedProcess(
        "web",
        argv,
        env=env,
        log_path=log_path,
        ready=lambda: requests.get(f"{url}/healthz", timeout=5).status_code == 200,
    ).start(timeout=30)
    yield url
    process.stop()


def raw_status(url: str, request: bytes) -> int:
    """The status code gunicorn answers to `request`, sent byte for byte."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(request)
        head = connection.recv(4096).decode("latin-1")
    return int(head.split(" ", 2)[1])


def test_a_request_within_the_bounds_is_served(web):
    headers = "".join(f"X-Note-{i}: {'v' * 100}\r\n" for i in range(30))
    assert raw_status(web, f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}\r\n".encode()) == 200


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        pytest.param(f"GET /healthz?{'q' * 5000} HTTP/1.1\r\nHost: x\r\n\r\n", 414, id="request line over 4094 bytes"),
        pytest.param(
            "GET /healthz HTTP/1.1\r\nHost: x\r\n" + "".join(f"X-N{i}: v\r\n" for i in range(60)) + "\r\n",
            431,
            id="61 header fields",
        ),
        pytest.param(f"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {'v' * 9000}\r\n\r\n", 431, id="a header of 9 kB"),
    ],
)
def test_gunicorn_refuses_what_is_over_the_bounds_before_django_reads_it(web, request_bytes, status):
    assert raw_status(web, request_bytes.encode()) == status


def test_an_api_request_with_an_oversized_header_is_refused_and_stores_nothing(web):
    body = {"priority": "security", "channel": "email", "template": "password_reset", "to": "a@example.com"}
    response = requests.post(f"{web}/api/v1/notifications", json=body, headers={"Authorization": "Token " + "k" * 9000})

    assert response.status_code == 431
    assert not Notification.objects.exists()


def test_a_form_with_too_many_fields_is_400_before_the_view_runs(client, settings):
    fields = {f"f{i}": "x" for i in range(settings.DATA_UPLOAD_MAX_NUMBER_FIELDS + 1)}
    response = client.post("/password-reset/", {"email": "ada@example.com", **fields})

    assert response.status_code == 400
    assert not Notification.objects.exists()
    assert client.post("/password-reset/", {"email": "ada@example.com"}).status_code == 200
