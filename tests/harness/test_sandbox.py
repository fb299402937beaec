"""The provider sandbox, run as a real `manage.py provider_sandbox` process: vendor routes, ledger, faults, SMTP."""

import json
import re
import smtplib
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from email.message import EmailMessage
from http.client import HTTPConnection

import pytest
import requests
from anymail.exceptions import AnymailRecipientsRefused
from anymail.message import AnymailMessage
from django.core.mail import get_connection

from harness.sandbox.process import SandboxProcess
from harness.waiting import wait_until

POSTMARK_TOKEN = {"X-Postmark-Server-Token": "sandbox-token"}
TWILIO_SID = "ACsandbox"
TWILIO_URL = f"/twilio/2010-04-01/Accounts/{TWILIO_SID}/Messages.json"
FCM_URL = "/fcm/v1/projects/notify-sandbox/messages:send"
FCM_AUTH = {"Authorization": "Bearer sandbox-token"}


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """One sandbox process on free ports for this module (shadows the suite's shared one, which needs Redis)."""
    with SandboxProcess(log_path=tmp_path_factory.mktemp("sandbox") / "sandbox.log") as process:
        yield process


@pytest.fixture(autouse=True)
def fresh(sandbox):
    sandbox.clear()
    sandbox.clear_faults()
    sandbox.clear_callbacks()


@pytest.fixture
def http():
    with requests.Session() as session:
        yield session


def postmark_message(to: str = "ada@example.com", **extra) -> dict:
    return {
        "From": "Notify <no-reply@notify.example>",
        "To": to,
        "Subject": "Your code",
        "TextBody": "Your code is 123456",
        **extra,
    }


def send_postmark(http, sandbox, message: dict, *, provider: str = "postmark", headers=POSTMARK_TOKEN):
    return http.post(sandbox.url(f"/{provider}/email"), json=message, headers=headers)


def send_twilio(http, sandbox, *, to: str = "+14155550100", auth=(TWILIO_SID, "sandbox-token"), key=None):
    headers = {"I-Twilio-Idempotency-Token": key} if key else {}
    data = {"To": to, "From": "+15005550006", "Body": "Your code is 123456"}
    return http.post(sandbox.url(TWILIO_URL), data=data, auth=auth, headers=headers)


def send_fcm(http, sandbox, *, token: str = "device-token-1", key: str = "push-1", headers=FCM_AUTH):
    message = {
        "token": token,
        "notification": {"title": "Hello", "body": "Your code is 123456"},
        "data": {"idempotency_key": key},
    }
    return http.post(sandbox.url(FCM_URL), json={"message": message}, headers=headers)


def send_vonage(http, sandbox, **overrides):
    params = {
        "api_key": "key",
        "api_secret": "secret",
        "from": "Notify",
        "to": "14155550100",
        "text": "Your code is 123456",
        "client-ref": "sms-1",
        **overrides,
    }
    return http.post(sandbox.url("/vonage/sms/json"), data=params)


def smtp_message(to: str = "ada@example.com", key: str | None = "mail-1") -> EmailMessage:
    message = EmailMessage()
    message["From"] = "no-reply@notify.example"
    message["To"] = to
    message["Subject"] = "Your code"
    message["Message-ID"] = f"<{uuid.uuid4().hex}@notify>"
    if key:
        message["X-Idempotency-Key"] = key
    message.set_content("Your code is 123456")
    return message


# --- process --------------------------------------------------------------------


def test_health_answers_ok(sandbox, http):
    assert http.get(sandbox.url("/_sandbox/health")).json() == {"status": "ok"}


def test_process_prints_where_it_listens(sandbox):
    assert f"http://127.0.0.1:{sandbox.http_port}" in sandbox.output()
    assert f"127.0.0.1:{sandbox.smtp_port}" in sandbox.output()


def test_sigterm_stops_the_process_cleanly(tmp_path):
    process = SandboxProcess(log_path=tmp_path / "sandbox.log").start()
    assert process.stop() == 0


def test_unknown_route_is_a_json_404(sandbox, http):
    response = http.post(sandbox.url("/postmark/nope"))
    assert response.status_code == 404
    assert response.json()["status"] == 404


# --- Postmark -------------------------------------------------------------------


def test_postmark_email_is_accepted_and_recorded(sandbox, http):
    message = postmark_message(
        Metadata={"idempotency_key": "welcome-1"},
        Headers=[{"Name": "List-Unsubscribe", "Value": "<https://notify.example/u/1>"}],
    )
    response = send_postmark(http, sandbox, message)
    assert response.status_code == 200
    body = response.json()
    assert body["ErrorCode"] == 0 and body["Message"] == "OK" and body["To"] == "ada@example.com"
    uuid.UUID(body["MessageID"])
    (entry,) = sandbox.entries(provider="postmark")
    assert entry["vendor"] == "postmark"
    assert entry["message_id"] == body["MessageID"]
    assert entry["idempotency_key"] == "welcome-1"
    assert entry["to"] == "ada@example.com"
    assert entry["subject"] == "Your code"
    assert entry["body"] == "Your code is 123456"
    assert entry["headers"] == {"List-Unsubscribe": "<https://notify.example/u/1>"}
    assert entry["batch"] is False
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00", entry["accepted_at"])
    assert datetime.fromisoformat(entry["accepted_at"]).timestamp() == pytest.approx(entry["accepted_ts"])


def test_postmark_idempotency_key_can_come_from_a_header(sandbox, http):
    message = postmark_message(Headers=[{"Name": "X-Idempotency-Key", "Value": "from-header"}])
    send_postmark(http, sandbox, message)
    send_postmark(http, sandbox, message)
    assert sandbox.ledger(idempotency_key="from-header")["count"] == 1


def test_postmark_body_is_truncated_in_the_ledger(sandbox, http):
    send_postmark(http, sandbox, postmark_message(TextBody="x" * 5000))
    assert len(sandbox.entries()[0]["body"]) == 2000


@pytest.mark.parametrize("headers", [{}, {"X-Postmark-Server-Token": ""}, {"X-Postmark-Server-Token": "invalid"}])
def test_postmark_refuses_a_missing_or_invalid_token(sandbox, http, headers):
    response = send_postmark(http, sandbox, postmark_message(), headers=headers)
    assert response.status_code == 401
    assert response.json()["ErrorCode"] == 10
    assert sandbox.ledger()["count"] == 0


@pytest.mark.parametrize("to", ["nobody@invalid.example", "not-an-address", "Ada <ada@>"])
def test_postmark_refuses_an_invalid_recipient(sandbox, http, to):
    response = send_postmark(http, sandbox, postmark_message(to=to))
    assert response.status_code == 422
    body = response.json()
    assert body["ErrorCode"] == 300
    assert body["Message"].startswith("Invalid 'To' address: '")
    assert sandbox.ledger()["count"] == 0


def test_postmark_malformed_body_is_400(sandbox, http):
    response = http.post(sandbox.url("/postmark/email"), data=b"{not json", headers=POSTMARK_TOKEN)
    assert response.status_code == 400
    assert response.json()["Message"]


def test_postmark_batch_answers_per_message(sandbox, http):
    batch = [
        postmark_message("ada@example.com", Metadata={"idempotency_key": "b-1"}),
        postmark_message("nobody@invalid.example", Metadata={"idempotency_key": "b-2"}),
        postmark_message("bob@example.com", Metadata={"idempotency_key": "b-3"}),
    ]
    response = http.post(sandbox.url("/postmark/email/batch"), json=batch, headers=POSTMARK_TOKEN)
    assert response.status_code == 200
    results = response.json()
    assert [r["ErrorCode"] for r in results] == [0, 300, 0]
    assert results[1]["Message"] == "Invalid 'To' address: 'nobody@invalid.example'."
    entries = sandbox.entries(provider="postmark")
    assert [e["to"] for e in entries] == ["ada@example.com", "bob@example.com"]
    assert [e["message_id"] for e in entries] == [results[0]["MessageID"], results[2]["MessageID"]]
    assert all(e["batch"] for e in entries)


def test_postmark_batch_over_500_messages_is_refused(sandbox, http):
    batch = [postmark_message(f"user{i}@example.com") for i in range(501)]
    response = http.post(sandbox.url("/postmark/email/batch"), json=batch, headers=POSTMARK_TOKEN)
    assert response.status_code == 422
    assert sandbox.ledger()["count"] == 0


def test_replay_is_answered_with_the_original_id_and_recorded_once(sandbox, http):
    message = postmark_message(Metadata={"idempotency_key": "once"})
    first = send_postmark(http, sandbox, message).json()
    second = send_postmark(http, sandbox, message).json()
    assert second["ErrorCode"] == 0
    assert second["MessageID"] == first["MessageID"]
    ledger = sandbox.ledger(provider="postmark")
    assert ledger["count"] == 1
    assert ledger["replays"] == 1


def test_idempotency_is_per_provider_name(sandbox, http):
    message = postmark_message(Metadata={"idempotency_key": "same-key"})
    send_postmark(http, sandbox, message, provider="postmark")
    send_postmark(http, sandbox, message, provider="postmark-eu")
    assert [e["provider"] for e in sandbox.entries(idempotency_key="same-key")] == ["postmark", "postmark-eu"]
    assert sandbox.ledger()["replays"] == 0


# --- Twilio ---------------------------------------------------------------------


def test_twilio_message_is_accepted_and_recorded(sandbox, http):
    response = send_twilio(http, sandbox, key="sms-1")
    assert response.status_code == 201
    body = response.json()
    assert re.fullmatch(r"SM[0-9a-f]{32}", body["sid"])
    assert body["status"] == "queued"
    assert (body["to"], body["from"], body["body"]) == ("+14155550100", "+15005550006", "Your code is 123456")
    assert body["date_created"]
    (entry,) = sandbox.entries(provider="twilio")
    assert entry["vendor"] == "twilio"
    assert (entry["message_id"], entry["to"], entry["idempotency_key"]) == (body["sid"], "+14155550100", "sms-1")
    assert entry["body"] == "Your code is 123456"


@pytest.mark.parametrize(
    "auth", [None, ("ACother", "sandbox-token"), (TWILIO_SID, "invalid")], ids=["missing", "wrong-sid", "invalid"]
)
def test_twilio_refuses_bad_credentials(sandbox, http, auth):
    response = send_twilio(http, sandbox, auth=auth)
    assert response.status_code == 401
    assert response.json() == {
        "code": 20003,
        "message": "Authenticate",
        "more_info": "https://www.twilio.com/docs/errors/20003",
        "status": 401,
    }


@pytest.mark.parametrize("to", ["+15005550001", "4155550100", "+0123"])
def test_twilio_refuses_an_invalid_number(sandbox, http, to):
    response = send_twilio(http, sandbox, to=to)
    assert response.status_code == 400
    assert response.json()["code"] == 21211
    assert sandbox.ledger()["count"] == 0


def test_twilio_replay_returns_the_original_sid(sandbox, http):
    first = send_twilio(http, sandbox, key="otp-7").json()
    second = send_twilio(http, sandbox, key="otp-7")
    assert second.status_code == 201
    assert second.json()["sid"] == first["sid"]
    assert sandbox.ledger(provider="twilio")["count"] == 1
    assert sandbox.ledger(provider="twilio")["replays"] == 1


# --- FCM ------------------------------------------------------------------------


def test_fcm_message_is_accepted_and_recorded(sandbox, http):
    response = send_fcm(http, sandbox)
    assert response.status_code == 200
    name = response.json()["name"]
    assert name.startswith("projects/notify-sandbox/messages/")
    (entry,) = sandbox.entries(provider="fcm")
    assert entry["vendor"] == "fcm"
    assert entry["message_id"] == name.rsplit("/", 1)[1]
    assert (entry["to"], entry["idempotency_key"]) == ("device-token-1", "push-1")
    assert (entry["subject"], entry["body"]) == ("Hello", "Your code is 123456")


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer invalid"}, {"Authorization": "Basic eDp5"}])
def test_fcm_refuses_a_missing_or_invalid_token(sandbox, http, headers):
    response = send_fcm(http, sandbox, headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["status"] == "UNAUTHENTICATED"


def test_fcm_unregistered_device_is_404(sandbox, http):
    response = send_fcm(http, sandbox, token="invalid-device")
    assert response.status_code == 404
    error = response.json()["error"]
    assert (error["code"], error["status"], error["message"]) == (404, "NOT_FOUND", "Requested entity was not found.")
    assert error["details"] == [
        {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "UNREGISTERED"}
    ]
    assert sandbox.ledger()["count"] == 0


def test_fcm_message_without_token_is_invalid_argument(sandbox, http):
    response = http.post(sandbox.url(FCM_URL), json={"message": {"notification": {"title": "x"}}}, headers=FCM_AUTH)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["status"] == "INVALID_ARGUMENT"
    assert error["details"][0]["errorCode"] == "INVALID_ARGUMENT"


def test_fcm_replay_returns_the_original_name(sandbox, http):
    first = send_fcm(http, sandbox, key="push-9").json()
    second = send_fcm(http, sandbox, key="push-9").json()
    assert second == first
    assert sandbox.ledger(provider="fcm")["count"] == 1


# --- Vonage ---------------------------------------------------------------------


def test_vonage_message_is_accepted_and_recorded(sandbox, http):
    response = send_vonage(http, sandbox)
    assert response.status_code == 200
    body = response.json()
    assert body["message-count"] == "1"
    (message,) = body["messages"]
    assert message["status"] == "0"
    assert (message["to"], message["client-ref"]) == ("14155550100", "sms-1")
    (entry,) = sandbox.entries(provider="vonage")
    assert entry["vendor"] == "vonage"
    assert (entry["message_id"], entry["to"], entry["idempotency_key"]) == (
        message["message-id"],
        "+14155550100",
        "sms-1",
    )


def test_vonage_accepts_json_too(sandbox, http):
    params = {"api_key": "k", "api_secret": "s", "from": "Notify", "to": "14155550100", "text": "hi"}
    response = http.post(sandbox.url("/vonage/sms/json"), json=params)
    assert response.json()["messages"][0]["status"] == "0"


@pytest.mark.parametrize("overrides", [{"api_secret": "invalid"}, {"api_key": ""}])
def test_vonage_bad_credentials_are_status_4(sandbox, http, overrides):
    response = send_vonage(http, sandbox, **overrides)
    assert response.status_code == 200
    message = response.json()["messages"][0]
    assert message["status"] == "4" and message["error-text"]


@pytest.mark.parametrize("to", ["15005550001", "+14155550100", "call-me"])
def test_vonage_unroutable_number_is_status_6(sandbox, http, to):
    message = send_vonage(http, sandbox, to=to).json()["messages"][0]
    assert (message["status"], message["error-text"]) == ("6", "Unroutable message")
    assert sandbox.ledger()["count"] == 0


def test_vonage_replay_returns_the_original_message_id(sandbox, http):
    first = send_vonage(http, sandbox, **{"client-ref": "r-1"}).json()["messages"][0]
    second = send_vonage(http, sandbox, **{"client-ref": "r-1"}).json()["messages"][0]
    assert second["message-id"] == first["message-id"]
    assert sandbox.ledger(provider="vonage") | {"entries": None} == {"count": 1, "entries": None, "replays": 1}


# --- faults ---------------------------------------------------------------------


def test_outage_answers_503_before_checking_auth(sandbox, http):
    sandbox.set_fault("postmark", outage=True)
    response = send_postmark(http, sandbox, postmark_message(), headers={"X-Postmark-Server-Token": "invalid"})
    assert response.status_code == 503
    assert send_twilio(http, sandbox).status_code == 201, "a fault applies to its provider only"
    assert sandbox.entries(provider="postmark") == []


def test_outage_can_be_turned_off(sandbox, http):
    sandbox.set_fault("postmark", outage=True)
    sandbox.set_fault("postmark", outage=False)
    assert sandbox.faults() == {}
    assert send_postmark(http, sandbox, postmark_message()).status_code == 200


def test_error_rate_one_fails_every_call_with_the_status(sandbox, http):
    sandbox.set_fault("twilio", error_rate=1.0, status=502)
    assert [send_twilio(http, sandbox).status_code for _ in range(5)] == [502] * 5
    sandbox.set_fault("fcm", error_rate=1)
    assert send_fcm(http, sandbox).status_code == 500
    assert sandbox.ledger()["count"] == 0


def test_fault_comes_before_idempotency_replay(sandbox, http):
    message = postmark_message(Metadata={"idempotency_key": "k"})
    send_postmark(http, sandbox, message)
    sandbox.set_fault("postmark", error_rate=1.0, status=503)
    assert send_postmark(http, sandbox, message).status_code == 503
    assert sandbox.ledger()["replays"] == 0


def test_latency_delays_the_answer(sandbox, http):
    sandbox.set_fault("fcm", latency_ms=300)
    started = time.monotonic()
    response = send_fcm(http, sandbox)
    assert time.monotonic() - started >= 0.3
    assert response.status_code == 200


def test_retry_after_answers_429_with_the_header(sandbox, http):
    sandbox.set_fault("postmark", retry_after=5)
    response = send_postmark(http, sandbox, postmark_message())
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "5"
    assert send_twilio(http, sandbox).status_code == 201


def test_vonage_reports_throttling_in_band(sandbox, http):
    sandbox.set_fault("vonage", retry_after=3)
    response = send_vonage(http, sandbox)
    assert response.status_code == 200
    assert response.headers["Retry-After"] == "3"
    assert response.json()["messages"][0] == {"status": "1", "error-text": "Throttled"}


def test_rate_cap_zero_refuses_everything_with_retry_after_1(sandbox, http):
    sandbox.set_fault("twilio", rate_cap=0)
    response = send_twilio(http, sandbox)
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "1"


def test_rate_cap_refuses_a_batch_that_does_not_fit_as_a_whole(sandbox, http):
    sandbox.set_fault("postmark", rate_cap=2)
    batch = [postmark_message(f"user{i}@example.com") for i in range(3)]
    response = http.post(sandbox.url("/postmark/email/batch"), json=batch, headers=POSTMARK_TOKEN)
    assert response.status_code == 429
    assert sandbox.ledger()["count"] == 0
    fitting = http.post(sandbox.url("/postmark/email/batch"), json=batch[:2], headers=POSTMARK_TOKEN)
    assert fitting.status_code == 200


def test_rate_cap_bounds_accepted_messages_per_second(sandbox, http):
    sandbox.set_fault("twilio", rate_cap=3)
    statuses = [send_twilio(http, sandbox).status_code for _ in range(10)]
    assert set(statuses) <= {201, 429}
    stats = sandbox.stats()["twilio"]
    assert stats["accepted"] == statuses.count(201)
    assert stats["rejected"] == statuses.count(429)
    assert max(stats["per_second"].values()) <= 3


def test_faults_on_one_provider_merge(sandbox, http):
    sandbox.set_fault("postmark", latency_ms=50)
    sandbox.set_fault("postmark", error_rate=0.5, status=503)
    sandbox.set_fault("twilio", outage=True)
    assert sandbox.faults() == {
        "postmark": {"latency_ms": 50, "error_rate": 0.5, "status": 503},
        "twilio": {"outage": True},
    }
    sandbox.clear_faults("twilio")
    assert list(sandbox.faults()) == ["postmark"]


@pytest.mark.parametrize(
    "fault, field",
    [
        ({"provider": "postmark", "outage": True, "surprise": 1}, "surprise"),
        ({"provider": "postmark", "outage": "yes"}, "outage"),
        ({"provider": "postmark", "error_rate": 1.5}, "error_rate"),
        ({"provider": "postmark", "error_rate": -0.1}, "error_rate"),
        ({"provider": "postmark", "error_rate": 0.5, "status": 200}, "status"),
        ({"provider": "postmark", "latency_ms": -1}, "latency_ms"),
        ({"provider": "postmark", "latency_ms": "100"}, "latency_ms"),
        ({"provider": "postmark", "retry_after": -5}, "retry_after"),
        ({"provider": "postmark", "retry_after": 1.5}, "retry_after"),
        ({"provider": "postmark", "rate_cap": True}, "rate_cap"),
        ({"provider": "postmark", "hold_to": 5}, "hold_to"),
        ({"provider": "postmark", "hold_to": " ada@example.com"}, "hold_to"),
        ({"outage": True}, "provider"),
        ({"provider": "postmark"}, "provider"),
    ],
)
def test_invalid_fault_is_400_and_changes_nothing(sandbox, http, fault, field):
    sandbox.set_fault("postmark", latency_ms=10)
    response = http.post(sandbox.url("/_sandbox/faults"), json=fault)
    assert response.status_code == 400
    assert response.json()["error"].startswith(f"{field}: ")
    assert sandbox.faults() == {"postmark": {"latency_ms": 10}}


def call_in_flight(sandbox, request: requests.Request) -> HTTPConnection:
    """Send `request` on a connection of its own and leave its answer unread; the connection."""
    prepared = request.prepare()
    connection = HTTPConnection(sandbox.host, sandbox.http_port, timeout=10)
    connection.request(prepared.method, prepared.path_url, body=prepared.body, headers=dict(prepared.headers))
    return connection


def held_call(sandbox, provider: str) -> dict:
    (call,) = wait_until(lambda: sandbox.held(provider), timeout=5, what=f"a held call to {provider}")
    return call


@pytest.mark.parametrize(
    "provider, held, request_to, accepted",
    [
        (
            "postmark",
            "held@example.com",
            lambda sandbox, to: requests.Request(
                "POST", sandbox.url("/postmark/email"), json=postmark_message(to), headers=POSTMARK_TOKEN
            ),
            200,
        ),
        (
            "twilio",
            "+14155550111",
            lambda sandbox, to: requests.Request(
                "POST",
                sandbox.url(TWILIO_URL),
                data={"To": to, "From": "+15005550006", "Body": "Your code is 123456"},
                auth=(TWILIO_SID, "sandbox-token"),
            ),
            201,
        ),
        (
            "fcm",
            "device-token-held",
            lambda sandbox, to: requests.Request(
                "POST", sandbox.url(FCM_URL), json={"message": {"token": to, "data": {}}}, headers=FCM_AUTH
            ),
            200,
        ),
        (
            "vonage",
            "+14155550111",  # as the ledger records it; Vonage itself is sent the digits only
            lambda sandbox, to: requests.Request(
                "POST",
                sandbox.url("/vonage/sms/json"),
                data={"api_key": "key", "api_secret": "secret", "from": "Notify", "to": to[1:], "text": "Hi"},
            ),
            200,
        ),
    ],
)
def test_hold_to_leaves_that_recipients_calls_unanswered_until_lifted(
    sandbox, http, provider, held, request_to, accepted
):
    sandbox.set_fault(provider, hold_to=held)
    connection = call_in_flight(sandbox, request_to(sandbox, held))

    call = held_call(sandbox, provider)
    assert (call["provider"], call["to"], call["peer_host"]) == (provider, held, "127.0.0.1")
    assert call["peer_port"] == connection.sock.getsockname()[1], "the client's own port names its connection"
    assert send_postmark(http, sandbox, postmark_message("other@example.com")).status_code == 200
    assert sandbox.entries(to=held) == []

    sandbox.clear_faults(provider)
    assert connection.getresponse().status == accepted, "answered as usual once the hold is lifted"
    assert len(sandbox.entries(to=held)) == 1
    assert sandbox.held() == []


def test_a_held_call_whose_client_hangs_up_is_never_accepted(sandbox):
    sandbox.set_fault("postmark", hold_to="held@example.com")
    connection = call_in_flight(
        sandbox,
        requests.Request(
            "POST", sandbox.url("/postmark/email"), json=postmark_message("held@example.com"), headers=POSTMARK_TOKEN
        ),
    )
    assert held_call(sandbox, "postmark")["where"] == "POST /postmark/email"

    connection.sock.shutdown(socket.SHUT_RDWR)  # what the kernel does for a client that was SIGKILLed
    connection.close()
    wait_until(lambda: sandbox.held() == [], timeout=5, what="the hold to end with its client")
    sandbox.clear_faults()
    assert sandbox.ledger()["count"] == 0


def test_held_calls_refuse_an_unknown_filter(sandbox, http):
    response = http.get(sandbox.url("/_sandbox/held"), params={"to": "ada@example.com"})
    assert response.status_code == 400
    assert response.json()["error"].startswith("to: ")


# --- ledger, stats --------------------------------------------------------------


def test_ledger_filters(sandbox, http):
    for i in range(3):
        send_postmark(http, sandbox, postmark_message(f"user{i}@example.com", Metadata={"idempotency_key": f"k{i}"}))
    send_twilio(http, sandbox, key="k0")
    assert sandbox.ledger()["count"] == 4
    assert [e["to"] for e in sandbox.entries(provider="postmark")] == [f"user{i}@example.com" for i in range(3)]
    assert [e["provider"] for e in sandbox.entries(idempotency_key="k0")] == ["postmark", "twilio"]
    assert [e["idempotency_key"] for e in sandbox.entries(to="user1@example.com")] == ["k1"]
    first_seq = sandbox.entries()[0]["seq"]
    assert [e["seq"] for e in sandbox.entries(since_seq=first_seq + 1)] == [first_seq + 2, first_seq + 3]
    limited = sandbox.ledger(limit=2)
    assert (limited["count"], len(limited["entries"])) == (4, 2)


def test_ledger_refuses_unknown_filters(sandbox, http):
    response = http.get(sandbox.url("/_sandbox/ledger"), params={"provder": "postmark"})
    assert response.status_code == 400
    assert response.json()["error"].startswith("provder: ")


def test_clearing_the_ledger_forgets_messages_replays_and_keys(sandbox, http):
    message = postmark_message(Metadata={"idempotency_key": "again"})
    send_postmark(http, sandbox, message)
    send_postmark(http, sandbox, message)
    assert http.delete(sandbox.url("/_sandbox/ledger")).status_code == 200
    assert sandbox.ledger() == {"count": 0, "entries": [], "replays": 0}
    assert sandbox.stats() == {}
    send_postmark(http, sandbox, message)
    assert sandbox.ledger() | {"entries": None} == {"count": 1, "entries": None, "replays": 0}


def test_stats_count_accepted_replays_and_rejected_per_second(sandbox, http):
    send_twilio(http, sandbox, key="s-1")
    send_twilio(http, sandbox, key="s-1")
    send_twilio(http, sandbox, to="+15005550001")
    stats = sandbox.stats()["twilio"]
    assert (stats["accepted"], stats["replays"], stats["rejected"]) == (1, 1, 1)
    (second,) = stats["per_second"]
    assert abs(int(second) - time.time()) < 5
    assert stats["per_second"][second] == 1


# --- SMTP -----------------------------------------------------------------------


def smtp_client(sandbox) -> smtplib.SMTP:
    return smtplib.SMTP(sandbox.host, sandbox.smtp_port, timeout=10)


def test_smtp_records_one_entry_per_recipient(sandbox):
    message = smtp_message("ada@example.com, bob@example.com")
    message["List-Unsubscribe"] = "<mailto:unsubscribe@notify.example>"
    with smtp_client(sandbox) as client:
        assert client.send_message(message) == {}
    entries = sandbox.entries(provider="smtp")
    assert [e["to"] for e in entries] == ["ada@example.com", "bob@example.com"]
    for entry in entries:
        assert entry["vendor"] == "smtp"
        assert entry["idempotency_key"] == "mail-1"
        assert entry["message_id"] == message["Message-ID"]
        assert entry["subject"] == "Your code"
        assert entry["body"].strip() == "Your code is 123456"
        assert entry["headers"]["List-Unsubscribe"] == "<mailto:unsubscribe@notify.example>"


def test_smtp_decodes_encoded_subjects_and_bodies(sandbox):
    message = smtp_message()
    del message["Subject"]
    message["Subject"] = "Grüße aus Köln"
    message.set_content("Hällo wörld", cte="base64")
    with smtp_client(sandbox) as client:
        client.send_message(message)
    (entry,) = sandbox.entries(provider="smtp")
    assert entry["subject"] == "Grüße aus Köln"
    assert entry["body"].strip() == "Hällo wörld"


def test_smtp_refuses_an_invalid_recipient_at_rcpt(sandbox):
    with smtp_client(sandbox) as client:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as caught:
            client.send_message(smtp_message("nobody@invalid.example"))
    assert caught.value.recipients["nobody@invalid.example"] == (550, b"5.1.1 Mailbox unavailable")
    assert sandbox.ledger()["count"] == 0


def test_smtp_dedupes_on_the_idempotency_header(sandbox):
    with smtp_client(sandbox) as client:
        client.send_message(smtp_message(key="same"))
        client.send_message(smtp_message(key="same"))
        client.send_message(smtp_message(key=None))
    assert sandbox.ledger(idempotency_key="same") | {"entries": None} == {"count": 1, "entries": None, "replays": 1}
    assert sandbox.ledger(provider="smtp")["count"] == 2


def test_smtp_auth_is_optional_and_refuses_password_invalid(sandbox):
    with smtp_client(sandbox) as client:
        client.login("notify", "anything")
        client.send_message(smtp_message())
    with smtp_client(sandbox) as client:
        with pytest.raises(smtplib.SMTPAuthenticationError) as caught:
            client.login("notify", "invalid")
    assert caught.value.smtp_code == 535
    assert sandbox.ledger()["count"] == 1


def test_smtp_outage_refuses_mail_from_with_421(sandbox):
    sandbox.set_fault("smtp", outage=True)
    with pytest.raises(smtplib.SMTPSenderRefused) as caught:
        with smtp_client(sandbox) as client:
            client.send_message(smtp_message())
    assert (caught.value.smtp_code, caught.value.smtp_error) == (421, b"4.3.2 Service not available")


def test_smtp_retry_after_refuses_mail_from_with_451(sandbox):
    sandbox.set_fault("smtp", retry_after=5)
    with smtp_client(sandbox) as client:
        with pytest.raises(smtplib.SMTPSenderRefused) as caught:
            client.send_message(smtp_message())
    assert (caught.value.smtp_code, caught.value.smtp_error) == (451, b"4.7.1 Rate limited, retry in 5 s")


@pytest.mark.parametrize(
    "status, reply",
    [
        (500, (451, b"4.3.0 Temporary failure")),
        (400, (550, b"5.0.0 Rejected")),
        (429, (451, b"4.7.1 Rate limited, retry in 1 s")),
    ],
)
def test_smtp_error_rate_refuses_data(sandbox, status, reply):
    sandbox.set_fault("smtp", error_rate=1.0, status=status)
    with smtp_client(sandbox) as client:
        with pytest.raises(smtplib.SMTPDataError) as caught:
            client.send_message(smtp_message())
    assert (caught.value.smtp_code, caught.value.smtp_error) == reply
    assert sandbox.ledger()["count"] == 0


def test_smtp_rate_cap_refuses_data(sandbox):
    sandbox.set_fault("smtp", rate_cap=0)
    with smtp_client(sandbox) as client:
        with pytest.raises(smtplib.SMTPDataError) as caught:
            client.send_message(smtp_message())
    assert (caught.value.smtp_code, caught.value.smtp_error) == (451, b"4.7.1 Rate limited, retry in 1 s")


def test_smtp_latency_delays_the_data_reply(sandbox):
    sandbox.set_fault("smtp", latency_ms=300)
    with smtp_client(sandbox) as client:
        started = time.monotonic()
        client.send_message(smtp_message())
        assert time.monotonic() - started >= 0.3
    assert sandbox.ledger()["count"] == 1


def test_smtp_hold_to_leaves_the_data_of_that_recipients_message_unanswered(sandbox):
    sandbox.set_fault("smtp", hold_to="held@example.com")
    with smtp_client(sandbox) as client, ThreadPoolExecutor(1) as background:
        sending = background.submit(client.send_message, smtp_message("held@example.com"))
        call = held_call(sandbox, "smtp")
        assert (call["to"], call["where"]) == ("held@example.com", "DATA")
        assert call["peer_port"] == client.sock.getsockname()[1]
        assert sandbox.ledger()["count"] == 0

        sandbox.clear_faults("smtp")
        assert sending.result(timeout=5) == {}
    assert len(sandbox.entries(provider="smtp", to="held@example.com")) == 1


def test_smtp_held_message_whose_client_hangs_up_is_never_accepted(sandbox):
    sandbox.set_fault("smtp", hold_to="held@example.com")
    client = smtp_client(sandbox)
    with ThreadPoolExecutor(1) as background:
        sending = background.submit(client.send_message, smtp_message("held@example.com"))
        held_call(sandbox, "smtp")
        client.sock.shutdown(socket.SHUT_RDWR)
        with pytest.raises(smtplib.SMTPServerDisconnected):
            sending.result(timeout=5)
    client.close()
    wait_until(lambda: sandbox.held() == [], timeout=5, what="the hold to end with its client")
    sandbox.clear_faults()
    assert sandbox.ledger()["count"] == 0


# --- anymail compatibility ------------------------------------------------------


def anymail_connection(sandbox, provider: str = "postmark"):
    return get_connection(
        "anymail.backends.postmark.EmailBackend",
        api_url=sandbox.url(f"/{provider}/"),
        server_token="sandbox-token",
    )


def test_anymail_postmark_backend_sends_through_the_sandbox(sandbox):
    message = AnymailMessage(
        subject="Reset your password",
        body="Follow the link",
        from_email="Notify <no-reply@notify.example>",
        to=["ada@example.com"],
        headers={"List-Unsubscribe": "<https://notify.example/u/ada>"},
        metadata={"idempotency_key": "reset-ada"},
        connection=anymail_connection(sandbox),
    )
    assert message.send() == 1
    (entry,) = sandbox.entries(provider="postmark")
    assert message.anymail_status.status == {"sent"}
    assert message.anymail_status.message_id == entry["message_id"]
    assert entry["idempotency_key"] == "reset-ada"
    assert entry["subject"] == "Reset your password"
    assert entry["headers"]["List-Unsubscribe"] == "<https://notify.example/u/ada>"


def test_anymail_batch_send_gets_one_message_id_per_recipient(sandbox):
    message = AnymailMessage(
        subject="Digest",
        body="News",
        from_email="no-reply@notify.example",
        to=["ada@example.com", "bob@example.com"],
        merge_metadata={
            "ada@example.com": {"idempotency_key": "d-ada"},
            "bob@example.com": {"idempotency_key": "d-bob"},
        },
        connection=anymail_connection(sandbox),
    )
    message.send()
    recipients = message.anymail_status.recipients
    for address, key in [("ada@example.com", "d-ada"), ("bob@example.com", "d-bob")]:
        (entry,) = sandbox.entries(idempotency_key=key)
        assert entry["batch"] is True
        assert recipients[address].status == "sent"
        assert recipients[address].message_id == entry["message_id"]


def test_anymail_sees_an_invalid_recipient_as_refused(sandbox):
    message = AnymailMessage(
        subject="x",
        body="x",
        from_email="no-reply@notify.example",
        to=["nobody@invalid.example"],
        connection=anymail_connection(sandbox),
    )
    with pytest.raises(AnymailRecipientsRefused):
        message.send()
    assert message.anymail_status.recipients["nobody@invalid.example"].status == "invalid"


# --- the receiver and the delivery reports ----------------------------------------------------------


def test_the_receiver_records_each_call_with_its_webhook_headers_and_takes_faults(sandbox, http):
    url = sandbox.url("/receiver/hooks/app")
    headers = {"webhook-id": "evt_1", "webhook-timestamp": "1", "webhook-signature": "v1,x"}
    assert http.post(url, data=b'{"a": 1}', headers=headers, timeout=5).status_code == 200
    assert http.post(url, data=b'{"a": 1}', headers=headers, timeout=5).status_code == 200, "nothing deduplicated"
    sandbox.set_fault("receiver", outage=True)
    assert http.post(url, data=b"{}", headers=headers, timeout=5).status_code == 503

    entries = sandbox.entries(provider="receiver")
    assert [e["idempotency_key"] for e in entries] == ["evt_1", "evt_1"]
    assert entries[0]["to"] == "app" and entries[0]["body"] == '{"a": 1}'
    assert entries[0]["headers"]["webhook-signature"] == "v1,x"


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"url": "ftp://x"}, "url"),
        ({"url": "http://x", "delivered": 1.5}, "delivered"),
        ({"url": "http://x", "delivered": 0.8, "bounced": 0.5}, "delivered"),
        ({"url": "http://x", "delay_ms": -1}, "delay_ms"),
        ({"url": "http://x", "colour": "red"}, "colour"),
    ],
)
def test_a_bad_report_setting_is_refused_with_its_field(sandbox, http, config, field):
    response = http.post(sandbox.url("/_sandbox/callbacks"), json={"provider": "postmark", **config}, timeout=5)

    assert response.status_code == 400 and response.json()["error"].startswith(f"{field}:")
    assert sandbox.callbacks()["config"] == {}


def test_accepted_messages_are_reported_to_the_configured_url(sandbox, http):
    sandbox.set_callbacks(
        "postmark", url=sandbox.url("/collector/hooks/postmark"), auth="u:p", delay_ms=0, delivered=1.0, opened=1.0
    )
    send_postmark(http, sandbox, postmark_message("reported@example.com"))

    reports = wait_until(
        lambda: sandbox.entries(provider="collector") if len(sandbox.entries(provider="collector")) == 2 else None,
        timeout=10,
    )

    bodies = [json.loads(r["body"]) for r in reports]
    assert [b["RecordType"] for b in bodies] == ["Delivery", "Open"]
    assert bodies[0]["Recipient"] == "reported@example.com"
    assert sandbox.callbacks()["stats"] == {"postmark:200": 2}
