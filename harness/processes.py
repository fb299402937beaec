"""Start and stop real `celery worker` and web (gunicorn) processes, as the benchmarks and end-to-end tests need them."""

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Self

REPO = Path(__file__).resolve().parent.parent


class ManagedProcess:
    """A subprocess of the project, its output in `log_path`: started until `ready()`, stopped warm (SIGTERM)."""

    #: What it is, for error messages.
    what = "process"

    def __init__(self, *, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.log_path = log_path
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        raise NotImplementedError

    def start(self, timeout: float = 30.0) -> Self:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "w")  # noqa: SIM115 (kept open for the process's life)
        self.process = subprocess.Popen(
            self.command(), cwd=REPO, env=self.env, stdout=self._log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.what} exited {self.process.returncode}:\n{self.output()[-4000:]}")
            if self.ready():
                return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"{self.what} not ready after {timeout}s:\n{self.output()[-4000:]}")

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


class WorkerProcess(ManagedProcess):
    """One `celery -A settings worker` consuming `queues`."""

    def __init__(
        self,
        name: str,
        *,
        queues: list[str],
        log_path: Path,
        concurrency: int = 2,
        env: dict[str, str] | None = None,
    ) -> None:
        super().__init__(log_path=log_path, env=env)
        self.name = name
        self.what = f"worker {name}"
        self.queues = queues
        self.concurrency = concurrency

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "celery", "-A", "settings", "worker",
            "-Q", ",".join(self.queues),
            "-n", f"{self.name}@%h",
            "--pool", "prefork", "--concurrency", str(self.concurrency),
            "--prefetch-multiplier", "1", "--without-gossip", "--without-mingle",
            "--loglevel", "INFO",
        ]  # fmt: skip

    def ready(self) -> bool:
        return " ready." in self.output()


class WebProcess(ManagedProcess):
    """The web tier as production runs it (gunicorn on the WSGI app), for benchmarks that go through HTTP."""

    what = "web server"

    def __init__(self, *, port: int, log_path: Path, workers: int = 2, env: dict[str, str] | None = None) -> None:
        super().__init__(log_path=log_path, env=env)
        self.port = port
        self.workers = workers

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "gunicorn", "settings.wsgi:application", "--config", "settings/gunicorn_conf.py",
            "--bind", f"127.0.0.1:{self.port}", "--workers", str(self.workers), "--log-level", "warning",
        ]  # fmt: skip

    def ready(self) -> bool:
        try:
            # Bandit B310 (URL schemes): this is our own web process on http://127.0.0.1.
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=1) as response:  # nosec B310
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False
