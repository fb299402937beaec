"""The one process manager of the harness: a child started with a log file until it is ready, and stopped warm.

The `celery worker` pools and the web tier (gunicorn) as the benchmarks and end-to-end tests start them are here too.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Self

import psutil

from harness.waiting import wait_until

REPO = Path(__file__).resolve().parent.parent
#: Seconds a process gets to be ready unless its caller says otherwise.
START_TIMEOUT_SECONDS = 30.0
#: Seconds a process gets to exit after SIGTERM unless its caller or class says otherwise.
STOP_TIMEOUT_SECONDS = 15.0
#: Seconds the group gets to go after its SIGKILL; the kernel needs far less.
KILL_WAIT_SECONDS = 10.0
#: Seconds py-spy gets to dump one process's stacks.
STACK_DUMP_TIMEOUT_SECONDS = 20.0
#: How much of the log an error message quotes.
LOG_TAIL_CHARACTERS = 4000


class ProcessError(RuntimeError):
    """A managed process exited, or was not ready in time; the message quotes the end of its log."""


class ManagedProcess:
    """A long-running child in its own session (so one signal can reach its whole tree), output appended to a log.

    start() returns once `ready` (or a subclass's ready()) answers true; stop() is a warm
    shutdown.  Usable as a context manager.  `env` is the child's whole environment (default:
    this process's).
    """

    #: Seconds stop() waits after SIGTERM when not told.
    stop_timeout = STOP_TIMEOUT_SECONDS
    #: Seconds start() waits for ready() when not told.
    start_timeout = START_TIMEOUT_SECONDS

    def __init__(
        self,
        name: str,
        command: list[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        ready: Callable[[], bool] | None = None,
    ) -> None:
        self.name = name
        self.command = command
        self.log_path = log_path
        self.env = dict(os.environ if env is None else env)
        self._ready = ready
        self.process: subprocess.Popen | None = None
        self._log_offset = 0

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def ready(self) -> bool:
        """True once the process serves; without a check, as soon as it runs."""
        return self._ready() if self._ready is not None else True

    def start(self, timeout: float | None = None) -> Self:
        """Launch it and wait until ready(); ProcessError (and the process stopped) if it exits or is late."""
        timeout = self.start_timeout if timeout is None else timeout
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== {time.strftime('%H:%M:%S')} start: {shlex.join(self.command)}\n".encode())
            log.flush()
            self._log_offset = log.tell()
            # A file, not a pipe: nobody reads the output as it comes, and a full pipe would block the child.
            self.process = subprocess.Popen(
                self.command, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        if not wait_until(self._ready_unless_exited, timeout=timeout, interval=0.1):
            self.stop()
            raise ProcessError(f"{self.name} not ready after {timeout:g}s; {self._log_tail()}")
        return self

    def _ready_unless_exited(self) -> bool:
        if self.process.poll() is not None:
            raise ProcessError(f"{self.name} exited {self.process.returncode} before it was ready; {self._log_tail()}")
        try:
            return self.ready()
        except Exception:  # a service still coming up answers with errors
            return False

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def output(self) -> str:
        """What the process wrote to its log since this start (the log keeps earlier starts too)."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self._log_offset)
                return log.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM to the process itself, as Kubernetes, Docker and systemd's KillMode=mixed send it (never to
        its whole group: a Celery pool child dies at once on SIGTERM, which is a cold kill, not a warm
        shutdown); after `timeout` the stacks of the tree go to the log and the group gets SIGKILL.  The
        exit code."""
        timeout = self.stop_timeout if timeout is None else timeout
        if self.process is None:
            return None
        if self.process.poll() is None:
            try:
                self.process.send_signal(signal.SIGTERM)
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._dump_stacks(f"still running {timeout:.0f}s after SIGTERM")
                _signal_group(self.process.pid, signal.SIGKILL)
                self.process.wait(KILL_WAIT_SECONDS)
        _signal_group(self.process.pid, signal.SIGKILL)  # whatever of the tree outlived its parent
        return self.process.returncode

    def _dump_stacks(self, why: str) -> None:
        """Every thread's stack of the process and its children (py-spy), appended to the log: why it hangs."""
        try:
            tree = [psutil.Process(self.process.pid), *psutil.Process(self.process.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== {time.strftime('%H:%M:%S')} {why}: stacks (py-spy dump)\n".encode())
            for proc in tree:
                log.flush()
                subprocess.run(
                    [str(Path(sys.executable).with_name("py-spy")), "dump", "--pid", str(proc.pid)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    timeout=STACK_DUMP_TIMEOUT_SECONDS,
                    check=False,
                )

    def _log_tail(self) -> str:
        return f"the end of {self.log_path}:\n{self.output()[-LOG_TAIL_CHARACTERS:]}"


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


class WorkerProcess(ManagedProcess):
    """One `celery -A settings worker` consuming `queues`."""

    #: Running tasks of the tests and benchmarks end in well under this on a warm shutdown.
    stop_timeout = 20.0

    def __init__(
        self,
        name: str,
        *,
        queues: list[str],
        log_path: Path,
        concurrency: int = 2,
        env: Mapping[str, str] | None = None,
    ) -> None:
        command = [
            sys.executable, "-m", "celery", "-A", "settings", "worker",
            "-Q", ",".join(queues),
            "-n", f"{name}@%h",
            "--pool", "prefork", "--concurrency", str(concurrency),
            "--prefetch-multiplier", "1", "--without-gossip", "--without-mingle",
            "--loglevel", "INFO",
        ]  # fmt: skip
        super().__init__(name, command, log_path=log_path, env=env)
        self.queues = queues
        self.concurrency = concurrency

    def ready(self) -> bool:
        return " ready." in self.output()


class WebProcess(ManagedProcess):
    """The web tier as production runs it (gunicorn on the WSGI app), for benchmarks that go through HTTP."""

    def __init__(
        self, *, port: int, log_path: Path, workers: int = 2, threads: int = 1, env: Mapping[str, str] | None = None
    ) -> None:
        command = [
            sys.executable, "-m", "gunicorn", "settings.wsgi:application", "--config", "settings/gunicorn_conf.py",
            "--bind", f"127.0.0.1:{port}", "--workers", str(workers), "--threads", str(threads),
            "--log-level", "warning",
        ]  # fmt: skip
        super().__init__("web server", command, log_path=log_path, env=env)
        self.port = port
        self.workers = workers

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ready(self) -> bool:
        try:
            # Bandit B310 (URL schemes): this is our own web process on http://127.0.0.1.
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=1) as response:  # nosec B310
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False
