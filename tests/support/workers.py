"""The worker pools of the topology as real subprocesses on the test database."""

import os
import time
from pathlib import Path

from harness.processes import WorkerProcess
from settings.topology import pool_queues


def pool_process(priority: str, *, database_name: str, log_dir: Path, concurrency: int = 2) -> WorkerProcess:
    return WorkerProcess(
        f"{priority}-{time.monotonic_ns()}",
        queues=pool_queues(priority),
        log_path=log_dir / f"worker-{priority}.log",
        concurrency=concurrency,
        env={
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "settings.test",
            "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{database_name}",
        },
    )
