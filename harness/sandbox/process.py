"""SandboxProcess: the provider sandbox as a real `manage.py provider_sandbox` subprocess, for tests and benchmarks."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

REPO_ROOT = Path(__file__).resolve().parents[2]
#: Seconds to wait for /_sandbox/health before giving up on a start.
START_TIMEOUT_SECONDS = 15.0
#: Seconds a stopped sandbox gets to exit after SIGTERM before it is killed.
STOP_TIMEOUT_SECONDS = 10.0
#: Per-request timeout of the control calls; the sandbox answers them from memory.
CONTROL_TIMEOUT_SECONDS = 10.0


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class SandboxProcess:
    """Starts, controls and stops one sandbox process; usable as a context manager.

    The child inherits DJANGO_SETTINGS_MODULE unless `settings_module` is given.
    """

    def __init__(
        self,
        *,
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
        self.process: subprocess.Popen[bytes] | None = None
        self._output: Any = None
        self._session = requests.Session()

    def __enter__(self) -> SandboxProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def url(self, path: str) -> str:
        """Absolute URL of a sandbox path, e.g. url("/postmark/email")."""
        return self.http_url + path

    def start(self) -> SandboxProcess:
        """Launch the process and wait until it answers /_sandbox/health."""
        ports = ["--host", self.host, "--http-port", str(self.http_port), "--smtp-port", str(self.smtp_port)]
        command = [sys.executable, "manage.py", "provider_sandbox", *ports]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if self.settings_module:
            env["DJANGO_SETTINGS_MODULE"] = self.settings_module
        # A file, not a pipe: nobody reads the output while the tests run, and a full
        # pipe would block the server.
        self._output = tempfile.TemporaryFile()
        self.process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=self._output, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"provider sandbox exited with code {self.process.returncode} before answering "
                    f"/_sandbox/health; its output:\n{self.output()}"
                )
            try:
                if self._session.get(self.url("/_sandbox/health"), timeout=1).ok:
                    return self
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"provider sandbox did not answer {self.url('/_sandbox/health')} within "
                    f"{START_TIMEOUT_SECONDS:.0f} s; its output:\n{self.output()}"
                )
            time.sleep(0.05)

    def output(self) -> str:
        """Everything the process printed so far."""
        if self._output is None:
            return ""
        self._output.seek(0)
        return self._output.read().decode(errors="replace")

    def stop(self) -> int | None:
        """SIGTERM, wait, kill if it hangs; returns the exit code."""
        self._session.close()
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

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
