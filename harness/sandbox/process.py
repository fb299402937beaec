"""SandboxProcess: the provider sandbox as a real `manage.py provider_sandbox` subprocess, for tests and benchmarks."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Any

import requests

from harness.processes import ManagedProcess

#: Per-request timeout of the control calls; the sandbox answers them from memory.
CONTROL_TIMEOUT_SECONDS = 10.0


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class SandboxProcess(ManagedProcess):
    """Starts, controls and stops one sandbox process, its output in `log_path`; usable as a context manager.

    The child inherits DJANGO_SETTINGS_MODULE unless `settings_module` is given.
    """

    #: Seconds to wait for /_sandbox/health before giving up on a start.
    start_timeout = 15.0
    #: Seconds a stopped sandbox gets to exit after SIGTERM; it holds nothing worth waiting for.
    stop_timeout = 10.0

    def __init__(
        self,
        *,
        log_path: Path,
        http_port: int | None = None,
        smtp_port: int | None = None,
        host: str = "127.0.0.1",
        settings_module: str | None = None,
    ) -> None:
        self.host = host
        self.http_port = http_port or free_port(host)
        self.smtp_port = smtp_port or free_port(host)
        self.settings_module = settings_module
        self.http_url = f"http://{host}:{self.http_port}"
        self._session = requests.Session()
        ports = ["--host", host, "--http-port", str(self.http_port), "--smtp-port", str(self.smtp_port)]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if settings_module:
            env["DJANGO_SETTINGS_MODULE"] = settings_module
        command = [sys.executable, "manage.py", "provider_sandbox", *ports]
        super().__init__("provider sandbox", command, log_path=log_path, env=env)

    def url(self, path: str) -> str:
        """Absolute URL of a sandbox path, e.g. url("/postmark/email")."""
        return self.http_url + path

    def ready(self) -> bool:
        return self._session.get(self.url("/_sandbox/health"), timeout=1).ok

    def stop(self, timeout: float | None = None) -> int | None:
        """Warm stop (see ManagedProcess.stop); the exit code."""
        self._session.close()
        return super().stop(timeout)

    # --- control API ----------------------------------------------------------

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._session.request(method, self.url(path), timeout=CONTROL_TIMEOUT_SECONDS, **kwargs)
        if not response.ok:
            raise AssertionError(f"{method} {path} answered {response.status_code}: {response.text}")
        return response.json()

    def ledger(self, **filters: Any) -> dict[str, Any]:
        """GET /_sandbox/ledger: {"count", "entries", "replays"} for the filters (provider, to, ...)."""
        return self._call("GET", "/_sandbox/ledger", params=filters)

    def entries(self, **filters: Any) -> list[dict[str, Any]]:
        return self.ledger(**filters)["entries"]

    def stats(self) -> dict[str, Any]:
        return self._call("GET", "/_sandbox/stats")["providers"]

    def clear(self) -> None:
        """Forget every accepted message, replay, idempotency key and counter."""
        self._call("DELETE", "/_sandbox/ledger")

    def set_fault(self, provider: str, **fault: Any) -> dict[str, Any]:
        """Merge faults into one provider's, e.g. set_fault("postmark", error_rate=0.5, status=503)."""
        return self._call("POST", "/_sandbox/faults", json={"provider": provider, **fault})["faults"]

    def faults(self) -> dict[str, Any]:
        return self._call("GET", "/_sandbox/faults")["faults"]

    def clear_faults(self, provider: str | None = None) -> None:
        self._call("DELETE", "/_sandbox/faults", params={"provider": provider} if provider else None)

    def set_callbacks(self, provider: str, **config: Any) -> dict[str, Any]:
        """Report each message `provider` accepts to config["url"] as the vendor would: delay_ms, fractions
        delivered / bounced / opened, the vendor's `secret` (Twilio auth token, Vonage signature secret) or `auth`
        (Postmark's basic auth "user:password"); url=None turns it off."""
        return self._call("POST", "/_sandbox/callbacks", json={"provider": provider, **config})

    def callbacks(self) -> dict[str, Any]:
        """{"config", "stats" ("<provider>:<HTTP status>" counts, "silent"), "in_flight"}."""
        return self._call("GET", "/_sandbox/callbacks")

    def clear_callbacks(self) -> None:
        self._call("DELETE", "/_sandbox/callbacks")

    def held(self, provider: str | None = None) -> list[dict[str, Any]]:
        """Calls a hold_to fault leaves unanswered right now: {"id", "provider", "to", "where", "peer_host",
        "peer_port", "held_at", "held_ts"}, oldest first; peer_port is the client's own (local) port."""
        return self._call("GET", "/_sandbox/held", params={"provider": provider} if provider else None)["held"]
