"""Start and stop real `celery worker` and web (gunicorn) processes, as the benchmarks and end-to-end tests need them."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


class WorkerProcess:
    """One `celery -A settings worker` consuming `queues`, its output in `log_path`."""

    def __init__(
        self,
        name: str,
        *,
        queues: list[str],
        log_path: Path,
        concurrency: int = 2,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.queues = queues
        self.log_path = log_path
        self.concurrency = concurrency
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen | None = None

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "celery", "-A", "settings", "worker",
            "-Q", ",".join(self.queues),
            "-n", f"{self.name}@%h",
            "--pool", "prefork", "--concurrency", str(self.concurrency),
            "--prefetch-multiplier", "1", "--without-gossip", "--without-mingle",
            "--loglevel", "INFO",
        ]  # fmt: skip

    def start(self, timeout: float = 30.0) -> "WorkerProcess":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "w")  # noqa: SIM115 (kept open for the process's life)
        self.process = subprocess.Popen(
            self.command(), cwd=REPO, env=self.env, stdout=self._log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker {self.name} exited {self.process.returncode}:\n{self.output()[-4000:]}")
            if " ready." in self.output():
                return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"worker {self.name} not ready after {timeout}s:\n{self.output()[-4000:]}")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 20.0) -> None:
        """Warm shutdown (SIGTERM: finish what is running), SIGKILL after `timeout`."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if getattr(self, "_log", None):
            self._log.close()


class WebProcess:
    """The web tier as production runs it (gunicorn on the WSGI app), for benchmarks that go through HTTP."""

    def __init__(self, *, port: int, log_path: Path, workers: int = 2, env: dict[str, str] | None = None) -> None:
        self.port = port
        self.log_path = log_path
        self.workers = workers
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> "WebProcess":
        import urllib.error
        import urllib.request

        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "w")  # noqa: SIM115 (kept open for the process's life)
        command = [
            sys.executable, "-m", "gunicorn", "settings.wsgi:application",
            "--bind", f"127.0.0.1:{self.port}", "--workers", str(self.workers), "--log-level", "warning",
        ]  # fmt: skip
        self.process = subprocess.Popen(command, cwd=REPO, env=self.env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"web server exited {self.process.returncode}:\n{self.output()[-4000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=1) as response:
                    if response.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"web server not answering /healthz after {timeout}s:\n{self.output()[-4000:]}")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 20.0) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if getattr(self, "_log", None):
            self._log.close()
