"""ChaosStack: an isolated copy of the whole platform (own PostgreSQL, Redis, sandbox, web, pools, beat) that drills may kill.

Nothing here touches the machine's shared PostgreSQL or Redis: every service runs on a
free port of its own, and every process's output lands in one run folder.
"""

from __future__ import annotations

import atexit
import glob
import json
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import psycopg
import redis
import requests

from harness.processes import ManagedProcess, WorkerProcess
from harness.sandbox.process import SandboxProcess, free_port
from settings.topology import PRIORITIES, pool_queues

REPO = Path(__file__).resolve().parents[2]
PROCFILE = REPO / "platform" / "Procfile"
#: The stack runs the test settings: every timing is short, so a drill recovers in seconds.
SETTINGS_MODULE = "settings.test"
DATABASE_NAME = "notify"
API_USER = "chaos"
#: Seconds a service gets to come up (a worker pool on two busy cores takes a few).
START_TIMEOUT_SECONDS = 60.0
#: Seconds a pool gets to finish its running tasks on SIGTERM before it is killed; above
#: the task time limit, so a warm shutdown is never cut short by us.
WARM_SHUTDOWN_TIMEOUT_SECONDS = 30.0
#: Inherited variables that could point a child at a shared service instead of the stack's own.
SHARED_ADDRESS_VARIABLES = (
    "CELERY_BROKER_URL",
    "POSTMARK_API_URL",
    "TWILIO_API_URL",
    "VONAGE_API_URL",
    "FCM_API_URL",
    "SMTP_HOST",
    "SMTP_PORT",
    "SANDBOX_SMTP_HOST",
)
#: Settings the drills need to know, read from a child so they are the values the stack runs with.
SNAPSHOT_SETTINGS = (
    "JOBS_RETRY_POLICIES",
    "JOBS_CIRCUIT_BREAKER",
    "JOBS_CLAIM_LEASE_SECONDS",
    "BROKER_VISIBILITY_TIMEOUT",
    "CELERY_TASK_TIME_LIMIT",
    "RELAY_INTERVAL_SECONDS",
    "RELAY_PENDING_AFTER_SECONDS",
    "RELAY_QUEUED_AFTER_SECONDS",
    "PROVIDER_TIMEOUT_SECONDS",
    "NOTIFICATIONS_PROVIDERS",
    "ANYMAIL",
    "VONAGE_SIGNATURE_SECRET",
)


#: An e-mail address or E.164 number in clear (masked ones read a***@example.com and +141******99).
UNMASKED = re.compile(
    r"(?<![\w.%+*-])[A-Za-z0-9._%+-]{2,}@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,}|(?<![\w+])\+[1-9]\d{6,14}(?!\d)"
)
#: Logs of what is not the platform: the vendors' stand-in and the stack's own servers and notes.
NOT_PLATFORM_LOGS = {"sandbox.log", "postgres.log", "redis.log", "events.log", "manage.log"}


class StackError(RuntimeError):
    """A service of the stack did not start or stop as it should; the message names the run folder."""


def postgres_bin_dir() -> Path:
    """Where pg_ctl and initdb live: $PG_BIN, else PATH, else the newest /usr/lib/postgresql/*/bin."""
    if os.environ.get("PG_BIN"):
        return Path(os.environ["PG_BIN"])
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    if not candidates:
        raise StackError("PostgreSQL server binaries not found; install them or set PG_BIN to the folder of pg_ctl")
    return Path(candidates[-1]).parent


def procfile_command(process: str) -> list[str]:
    """The argv of one Procfile process, with `celery`/`gunicorn` run by this interpreter."""
    for line in PROCFILE.read_text().splitlines():
        name, sep, command = line.partition(":")
        if sep and name.strip() == process:
            argv = shlex.split(command)
            if argv[0] in ("celery", "gunicorn"):
                argv = [sys.executable, "-m", *argv]
            return argv
    raise StackError(f"{PROCFILE} has no process named {process!r}")


def replace_option(argv: list[str], option: str, value: str) -> list[str]:
    """argv with `option`'s value replaced (or the option appended)."""
    argv = list(argv)
    for index, arg in enumerate(argv):
        if arg == option:
            argv[index + 1] = value
            return argv
        if arg.startswith(option + "="):
            argv[index] = f"{option}={value}"
            return argv
    return [*argv, option, value]


class PostgresCluster:
    """A throw-away PostgreSQL cluster (initdb into the run folder), run as the `postgres` user when we are root."""

    def __init__(self, root: Path, port: int) -> None:
        self.bin = postgres_bin_dir()
        self.port = port
        self.data_dir = root / "pgdata"
        self.socket_dir = root / "pgsock"
        self.log_path = root / "postgres.log"

    def _as_owner(self, *argv: str) -> list[str]:
        # PostgreSQL refuses to run as root.
        return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else list(argv)

    def _run(self, *argv: str, timeout: float = 120) -> None:
        result = subprocess.run(self._as_owner(*argv), capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise StackError(f"{shlex.join(argv)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")

    def init(self) -> None:
        for folder in (self.data_dir, self.socket_dir):
            folder.mkdir(mode=0o700)
        self.log_path.touch()
        if os.geteuid() == 0:
            for path in (self.data_dir, self.socket_dir, self.log_path):
                shutil.chown(path, "postgres", "postgres")
        # --no-sync only skips flushing initdb's own files; the server runs with fsync on.
        self._run(
            str(self.bin / "initdb"),
            "-D",
            str(self.data_dir),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 -c fsync=on"
        self._run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data_dir),
            "-l",
            str(self.log_path),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w", "-t", "60", "stop")

    def running(self) -> bool:
        status = subprocess.run(
            self._as_owner(str(self.bin / "pg_ctl"), "-D", str(self.data_dir), "status"), capture_output=True
        )
        return status.returncode == 0

    def url(self, database: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"


class ChaosStack:
    """Every process of the platform, isolated, with methods to kill, stop and restart each of them.

    Usable as a context manager.  `run_dir` keeps every log; the PostgreSQL data folder is
    deleted on stop unless `keep_data`.
    """

    def __init__(self, *, run_dir: Path | None = None, concurrency: int = 2, keep_data: bool = False) -> None:
        self.run_dir = Path(run_dir or tempfile.mkdtemp(prefix="notify-chaos-"))
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # The postgres user must reach its data folder and log inside.
        self.run_dir.chmod(0o755)
        self.concurrency = concurrency
        self.keep_data = keep_data
        self.postgres = PostgresCluster(self.run_dir, free_port())
        self.redis_port = free_port()
        self.web_port = free_port()
        self.sandbox = SandboxProcess(settings_module=SETTINGS_MODULE, log_path=self.run_dir / "sandbox.log")
        self.database_url = self.postgres.url(DATABASE_NAME)
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        self.api_url = f"http://127.0.0.1:{self.web_port}"
        self.api_key = ""
        self.settings: dict[str, Any] = {}
        self.pools: dict[str, WorkerProcess] = {}
        #: Pools a drill adds beside the three (a second host, say); stopped by heal().
        self.extra_pools: list[WorkerProcess] = []
        self._generation: dict[str, int] = {}
        self._redis: ManagedProcess | None = None
        self.web: ManagedProcess | None = None
        self.beat: ManagedProcess | None = None
        self._db: psycopg.Connection | None = None
        self._started = False
        self._stopped = False

    # --- environment --------------------------------------------------------------

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in SHARED_ADDRESS_VARIABLES}
        env.update(
            DJANGO_SETTINGS_MODULE=SETTINGS_MODULE,
            DATABASE_URL=self.database_url,
            REDIS_URL=self.redis_url,
            SANDBOX_HTTP_URL=self.sandbox.http_url,
            SANDBOX_SMTP_PORT=str(self.sandbox.smtp_port),
            PYTHONUNBUFFERED="1",
            PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        )
        return env

    def manage(self, *args: str, timeout: float = 180) -> str:
        """Run `manage.py <args>` against the stack; its stdout (output also kept in manage.log)."""
        result = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=REPO,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        with open(self.run_dir / "manage.log", "a") as log:
            log.write(f"\n===== manage.py {' '.join(args)} -> {result.returncode}\n{result.stdout}{result.stderr}")
        if result.returncode != 0:
            raise StackError(f"manage.py {' '.join(args)} exited {result.returncode}:\n{result.stderr[-3000:]}")
        return result.stdout

    # --- whole stack ----------------------------------------------------------------

    def __enter__(self) -> ChaosStack:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> ChaosStack:
        """PostgreSQL, Redis and sandbox, then migrations and a token, then web, the three pools and beat."""
        self._started = True
        atexit.register(self.stop)
        try:
            self.postgres.init()
            self.postgres.start()
            with psycopg.connect(self.postgres.url("postgres"), autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{DATABASE_NAME}"')
            self.start_redis()
            self.sandbox.start()
            self.manage("migrate", "--no-input", "-v", "0")
            self.api_key = self.manage("create_api_token", API_USER, "--create-user", "--may-send-security").strip()
            # The drills run campaigns too: the API user may do everything an operator may.
            self.execute("UPDATE auth_user SET is_superuser = true, is_staff = true WHERE username = %s", (API_USER,))
            self.settings = json.loads(self.manage("shell", "-c", _SNAPSHOT_CODE).strip().splitlines()[-1])
            self.start_web()
            self._start_pools_in_parallel(PRIORITIES)
            self.start_beat()
        except Exception as exc:
            self.stop()
            raise StackError(f"the chaos stack did not start: {exc}\nlogs of every process: {self.run_dir}") from exc
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every process (each in turn, even if one fails) and drop the data folder unless kept."""
        if not self._started or self._stopped:
            return
        self._stopped = True
        steps = [
            self.stop_beat,
            self.stop_extra_pools,
            *[lambda p=p: self.stop_pool(p, kill=True) for p in list(self.pools)],
        ]
        steps += [self._stop_web, self.sandbox.stop, self.stop_redis, self._stop_postgres]
        for step in steps:
            try:
                step()
            except Exception as exc:  # stop the rest anyway; the log says what failed
                self._note(f"stop: {exc}")
        if self._db is not None:
            self._db.close()
        if not self.keep_data:
            shutil.rmtree(self.postgres.data_dir, ignore_errors=True)

    def heal(self) -> None:
        """Bring back whatever a failed drill left down: Redis, PostgreSQL, pools, web, beat; clear faults.

        Pools a drill added are stopped: the next drill starts with the three of the Procfile.
        """
        self.stop_extra_pools()
        if not self.redis_alive():
            self.start_redis()
        if not self.postgres.running():
            self.start_postgres()
        for priority in PRIORITIES:
            pool = self.pools.get(priority)
            if pool is None or pool.process is None or pool.process.poll() is not None:
                self.start_pool(priority)
        if self.web is None or not self.web.alive():
            self.start_web()
        if self.beat is None or not self.beat.alive():
            self.start_beat()
        self.sandbox.clear_faults()

    def pids(self) -> dict[str, int | None]:
        """Main process id of each long-running process: equal before and after means not restarted."""
        pids = {f"pool:{p}": (w.process.pid if w.process else None) for p, w in self.pools.items()}
        pids["web"] = self.web.pid if self.web else None
        pids["beat"] = self.beat.pid if self.beat else None
        return pids

    def alive(self) -> dict[str, bool]:
        state = {f"pool:{p}": bool(w.process and w.process.poll() is None) for p, w in self.pools.items()}
        state["web"] = bool(self.web and self.web.alive())
        state["beat"] = bool(self.beat and self.beat.alive())
        return state

    def unmasked_personal_data(self) -> list[str]:
        """Log lines of the platform's processes (not the sandbox, which plays the vendors) that carry an e-mail
        address or a phone number in clear; each as "file: line"."""
        found = []
        for path in sorted(self.run_dir.glob("*.log")):
            if path.name in NOT_PLATFORM_LOGS:
                continue
            for line in path.read_text(errors="replace").splitlines():
                if UNMASKED.search(line):
                    found.append(f"{path.name}: {line[:300]}")
        return found

    def failure_report(self, lines: int = 30) -> str:
        """Where the logs are, and the last lines of each."""
        parts = [f"chaos stack logs: {self.run_dir}"]
        for path in sorted(self.run_dir.glob("*.log")):
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {path.name} (last {len(tail)} lines)\n" + "\n".join(tail))
        return "\n".join(parts)

    # --- PostgreSQL -----------------------------------------------------------------

    def stop_postgres(self) -> None:
        self._close_db()
        self.postgres.stop("fast")
        self._note("postgres stopped")

    def start_postgres(self) -> None:
        self.postgres.start()
        self._note("postgres started")

    def _stop_postgres(self) -> None:
        if self.postgres.running():
            self.postgres.stop("fast")

    def query(self, sql: str, params: Any = None) -> list[tuple]:
        """Rows of one read on the stack's database (never the test database); reconnects once."""
        for attempt in (1, 2):
            try:
                if self._db is None or self._db.closed:
                    self._db = psycopg.connect(self.database_url, autocommit=True, connect_timeout=5)
                return self._db.execute(sql, params).fetchall()
            except psycopg.OperationalError:
                self._close_db()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def execute(self, sql: str, params: Any = None) -> int:
        """One write on the stack's database; the number of rows it touched."""
        # A stale connection (PostgreSQL was restarted by a drill) is replaced first; the write itself is
        # never repeated, since it may have landed.
        self.query("SELECT 1")
        return self._db.execute(sql, params).rowcount

    def _close_db(self) -> None:
        if self._db is not None:
            try:
                self._db.close()
            finally:
                self._db = None

    # --- Redis ----------------------------------------------------------------------

    def start_redis(self) -> None:
        command = ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", ""]
        command += ["--appendonly", "no", "--daemonize", "no", "--dir", str(self.run_dir)]
        self._redis = ManagedProcess(
            "redis",
            command,
            env=self.env,
            log_path=self.run_dir / "redis.log",
            ready=lambda: self.redis_client().ping(),
        ).start(START_TIMEOUT_SECONDS)
        self._note("redis started")

    def stop_redis(self) -> None:
        """Shut Redis down; without persistence every queue, unacked message and breaker state is gone."""
        if self._redis is not None:
            self._redis.stop()
            self._note("redis stopped")

    def restart_redis(self, down_seconds: float = 1.0) -> None:
        self.stop_redis()
        time.sleep(down_seconds)
        self.start_redis()

    def redis_alive(self) -> bool:
        return self._redis is not None and self._redis.alive()

    def redis_client(self) -> redis.Redis:
        return redis.Redis(port=self.redis_port, socket_timeout=2, socket_connect_timeout=2)

    # --- web and beat ---------------------------------------------------------------

    def start_web(self) -> None:
        command = replace_option(procfile_command("web"), "--bind", f"127.0.0.1:{self.web_port}")

        def answers() -> bool:
            return requests.get(f"{self.api_url}/api/v1/notifications/0", timeout=2).status_code < 500

        self.web = ManagedProcess("web", command, env=self.env, log_path=self.run_dir / "web.log", ready=answers)
        self.web.start(START_TIMEOUT_SECONDS)

    def _stop_web(self) -> None:
        if self.web is not None:
            self.web.stop()

    def start_beat(self) -> None:
        command = replace_option(procfile_command("beat"), "--schedule", str(self.run_dir / "celerybeat-schedule"))
        self.beat = ManagedProcess(
            "beat",
            command,
            env=self.env,
            log_path=self.run_dir / "beat.log",
            ready=lambda: "beat: Starting" in self.beat.output(),
        )
        self.beat.start(START_TIMEOUT_SECONDS)

    def stop_beat(self) -> None:
        if self.beat is not None:
            self.beat.stop()

    # --- worker pools ---------------------------------------------------------------

    def start_pool(self, priority: str) -> WorkerProcess:
        generation = self._generation.get(priority, 0) + 1
        self._generation[priority] = generation
        pool = WorkerProcess(
            f"{priority}-{generation}",
            queues=pool_queues(priority),
            log_path=self.run_dir / f"worker-{priority}-{generation}.log",
            concurrency=self.concurrency,
            env=self.env,
        )
        pool.start(timeout=START_TIMEOUT_SECONDS)
        self.pools[priority] = pool
        self._note(f"pool {priority} started (pid {pool.process.pid})")
        return pool

    def start_extra_pool(self, name: str, priority: str, *, env: dict[str, str]) -> WorkerProcess:
        """One more pool on `priority`'s queues with `env` added (another host, its clock off, say)."""
        pool = WorkerProcess(
            name,
            queues=pool_queues(priority),
            log_path=self.run_dir / f"worker-{name}.log",
            concurrency=self.concurrency,
            env={**self.env, **env},
        )
        pool.start(timeout=START_TIMEOUT_SECONDS)
        self.extra_pools.append(pool)
        self._note(f"extra pool {name} on {priority}'s queues started (pid {pool.process.pid}) with {env}")
        return pool

    def stop_extra_pools(self) -> None:
        while self.extra_pools:
            pool = self.extra_pools.pop()
            pool.stop(WARM_SHUTDOWN_TIMEOUT_SECONDS)
            self._note(f"extra pool {pool.name} stopped")

    def _start_pools_in_parallel(self, priorities) -> None:
        errors: list[BaseException] = []

        def start(priority: str) -> None:
            try:
                self.start_pool(priority)
            except BaseException as exc:  # re-raised below, in this thread
                errors.append(exc)

        threads = [threading.Thread(target=start, args=(p,)) for p in priorities]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]

    def kill_pool(self, priority: str, *, child_only: bool = False, rng: random.Random | None = None) -> list[int]:
        """SIGKILL a pool: its main process and every child (a lost machine), or one random child (an OOM kill).

        Returns the killed process ids.  A killed main process is not restarted here.
        """
        pool = self.pools[priority]
        main = psutil.Process(pool.process.pid)
        children = main.children(recursive=True)
        if child_only:
            if not children:
                raise StackError(f"pool {priority} has no child process to kill")
            victims = [(rng or random).choice(children)]
        else:
            victims = [main, *children]
        for victim in victims:
            try:
                victim.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        if not child_only:
            pool.process.wait(10)
            pool.stop()  # the main process is gone; this kills whatever of its group is left
        self._note(f"pool {priority}: SIGKILL {'child' if child_only else 'pool'} {[v.pid for v in victims]}")
        return [v.pid for v in victims]

    def term_pool(self, priority: str, timeout: float = WARM_SHUTDOWN_TIMEOUT_SECONDS) -> tuple[int | None, float]:
        """SIGTERM (warm shutdown: finish running tasks) and wait; (exit code, seconds it took)."""
        pool = self.pools[priority]
        started = time.monotonic()
        pool.stop(timeout)
        self._note(f"pool {priority}: SIGTERM, exited {pool.process.returncode}")
        return pool.process.returncode, time.monotonic() - started

    def restart_pool(self, priority: str) -> WorkerProcess:
        """Warm shutdown, then a fresh pool on the same queues (a deploy)."""
        self.term_pool(priority)
        return self.start_pool(priority)

    def stop_pool(self, priority: str, *, kill: bool = False) -> None:
        pool = self.pools.get(priority)
        if pool is None or pool.process is None:
            return
        if kill and pool.process.poll() is None:
            # Also the children: a stop at the end of a run must leave no orphan behind.
            self.kill_pool(priority)
        else:
            pool.stop()

    def kill_connection_owner(self, local_port: int, remote_port: int) -> tuple[str, int] | None:
        """SIGKILL the pool child process holding the TCP connection from `local_port` to `remote_port` (a worker
        in the middle of a provider call); (its pool, its pid), or None if no pool child holds that connection."""
        pools = [*self.pools.items(), *((pool.name, pool) for pool in self.extra_pools)]
        for name, pool in pools:
            if not pool.alive():
                continue
            try:
                children = psutil.Process(pool.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                continue
            for child in children:
                try:
                    connections = child.net_connections(kind="tcp")
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                if any(c.laddr.port == local_port and c.raddr and c.raddr.port == remote_port for c in connections):
                    try:
                        child.send_signal(signal.SIGKILL)
                    except psutil.NoSuchProcess:
                        return None
                    self._note(f"pool {name}: SIGKILL child {child.pid}, holding the call from port {local_port}")
                    return name, child.pid
        return None

    def child_pids(self, priority: str) -> list[int]:
        pool = self.pools[priority]
        try:
            return [c.pid for c in psutil.Process(pool.process.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    # --- notes ----------------------------------------------------------------------

    def _note(self, text: str) -> None:
        with open(self.run_dir / "events.log", "a") as log:
            log.write(f"{time.strftime('%H:%M:%S')} {text}\n")


_SNAPSHOT_CODE = (
    "import json; from django.conf import settings; "
    f"print(json.dumps({{name: getattr(settings, name) for name in {SNAPSHOT_SETTINGS!r}}}, default=str))"
)
