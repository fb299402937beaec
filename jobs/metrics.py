"""Prometheus metrics shared by every process: workers count into Redis, the web process serves /metrics.

Workers are many processes on many machines, so counters and histograms live in Redis
hashes (one HINCRBY pipeline per event or batch) and are read back at scrape time,
together with gauges read live from Redis (queue depth and age, breakers) and PostgreSQL
(open dead letters).  The runtime knows jobs, queues, breakers, limiters and dead letters; a
domain declares its own SharedCounter/SharedHistogram with its own labels (every one declared is
collected) and adds scrape-time gauges with `register_gauges`.  Every name is in the deployment's namespace
(`metric_name`: JOBS_METRICS_NAMESPACE, "notify" here).  The runtime's own:

    notify_queue_depth{queue}                         messages waiting
    notify_queue_oldest_age_seconds{queue}            age of the next message to be taken
    notify_queue_reserved                             messages taken by workers, not yet acknowledged
    notify_dead_letters_total{queue}                  dead letters recorded
    notify_dead_letters_open                          dead letters not yet replayed or discarded
    notify_breaker_state{breaker}                     0 closed, 1 half-open, 2 open
    notify_ratelimit_waits_total{limiter}             sends that had to wait for a token
    notify_ratelimit_wait_seconds_total{limiter}
    notify_job_runs_total{job,outcome}                attempts of durable jobs (jobs/durable.py): succeeded,
                                                      retried, deferred (not called: breaker, limit), dead
    notify_job_seconds{job}                           how long an attempt took
If Redis is unreachable an event is dropped (logged at debug): metrics never fail a send.
"""

import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import redis
from django.conf import settings
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from jobs.redis import broker_client, queue_head, redis_client

logger = logging.getLogger(__name__)

PREFIX = "jobs:metrics"


def metric_name(name: str) -> str:
    """`name` in the deployment's namespace: metric_name("queue_depth") is notify_queue_depth here."""
    return f"{settings.JOBS_METRICS_NAMESPACE}_{name}"


#: Every shared metric declared in this process, by name: all are collected at scrape time.
_shared: dict[str, "SharedCounter | SharedHistogram"] = {}


def shared_metrics() -> tuple["SharedCounter | SharedHistogram", ...]:
    """The counters and histograms declared so far (the runtime's and the domain's)."""
    return tuple(_shared.values())


@dataclass(frozen=True)
class SharedCounter:
    name: str
    documentation: str
    labels: tuple[str, ...]

    def __post_init__(self) -> None:
        _shared[self.name] = self

    def inc(self, *values: str, amount: float = 1, pipe: redis.client.Pipeline | None = None) -> None:
        _run(pipe, lambda p: p.hincrbyfloat(f"{PREFIX}:{self.name}", json.dumps(values), amount))

    def collect(self, client: redis.Redis) -> Metric:
        family = CounterMetricFamily(self.name.removesuffix("_total"), self.documentation, labels=self.labels)
        for field, value in sorted(client.hgetall(f"{PREFIX}:{self.name}").items()):
            family.add_metric(json.loads(field), float(value))
        return family


@dataclass(frozen=True)
class SharedHistogram:
    name: str
    documentation: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...]

    def __post_init__(self) -> None:
        _shared[self.name] = self

    def observe_many(
        self, values_by_labels: dict[tuple[str, ...], Sequence[float]], *, pipe: redis.client.Pipeline | None = None
    ) -> None:
        """Record observations, grouped by label values, in one round trip (or in `pipe`)."""
        key = f"{PREFIX}:{self.name}"

        def record(pipe: redis.client.Pipeline) -> None:
            for labels, observations in values_by_labels.items():
                if not observations:
                    continue
                counts: dict[str, int] = {}
                for value in observations:
                    bucket = next((b for b in self.buckets if value <= b), "+Inf")
                    counts[str(bucket)] = counts.get(str(bucket), 0) + 1
                prefix = json.dumps(labels)
                for bucket, count in counts.items():
                    pipe.hincrby(key, f"{prefix}|{bucket}", count)
                pipe.hincrby(key, f"{prefix}|count", len(observations))
                pipe.hincrbyfloat(key, f"{prefix}|sum", sum(observations))

        _run(pipe, record)

    def observe(self, *labels: str, value: float) -> None:
        self.observe_many({tuple(labels): [value]})

    def collect(self, client: redis.Redis) -> Metric:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labels)
        series: dict[str, dict[str, float]] = {}
        for field, value in client.hgetall(f"{PREFIX}:{self.name}").items():
            labels, _, part = field.decode().rpartition("|")
            series.setdefault(labels, {})[part] = float(value)
        for labels, parts in sorted(series.items()):
            cumulative, buckets = 0.0, []
            for bound in (*self.buckets, "+Inf"):
                cumulative += parts.get(str(bound), 0.0)
                buckets.append((str(bound) if bound == "+Inf" else repr(float(bound)), cumulative))
            family.add_metric(json.loads(labels), buckets, parts.get("sum", 0.0))
        return family


def run_in_pipeline(record: Callable[[redis.client.Pipeline], object]) -> None:
    """Record several metric events in one round trip (`record` adds them to the pipeline it is given)."""
    _run(None, record)


def _run(pipe: redis.client.Pipeline | None, record: Callable[[redis.client.Pipeline], object]) -> None:
    try:
        if pipe is not None:
            record(pipe)
            return
        own = redis_client().pipeline(transaction=False)
        record(own)
        own.execute()
    except redis.RedisError as exc:
        logger.debug("metrics not recorded: %s", exc)


DEAD_LETTERS = SharedCounter(metric_name("dead_letters_total"), "Dead letters recorded.", ("queue",))
RATELIMIT_WAITS = SharedCounter(
    metric_name("ratelimit_waits_total"), "Sends that had to wait for a token.", ("limiter",)
)
RATELIMIT_WAIT_SECONDS = SharedCounter(
    metric_name("ratelimit_wait_seconds_total"), "Seconds spent or scheduled waiting for tokens.", ("limiter",)
)
JOB_RUNS = SharedCounter(
    metric_name("job_runs_total"), "Attempts of durable jobs, by job and outcome.", ("job", "outcome")
)
JOB_SECONDS = SharedHistogram(
    metric_name("job_seconds"),
    "Seconds one attempt of a durable job took.",
    ("job",),
    (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
# --- scrape-time gauges ------------------------------------------------------------

_gauge_sources: list[Callable[[], Iterable[Metric]]] = []


def register_gauges(source: Callable[[], Iterable[Metric]]) -> None:
    """Add a callable that yields metric families at every scrape (e.g. campaign progress)."""
    if source not in _gauge_sources:
        _gauge_sources.append(source)


class PlatformCollector:
    """Everything above, read at scrape time."""

    def __init__(self, queues: Callable[[], list[str]]) -> None:
        self.queues = queues

    def collect(self) -> Iterable[Metric]:
        from jobs.models import DeadLetter, DeadLetterStatus
        from jobs.selectors import breaker_states

        client, broker = redis_client(), broker_client()
        depth = GaugeMetricFamily(metric_name("queue_depth"), "Messages waiting in a queue.", labels=["queue"])
        age = GaugeMetricFamily(
            metric_name("queue_oldest_age_seconds"), "Age of the next message a queue will hand out.", labels=["queue"]
        )
        now = time.time()
        for queue in self.queues():
            head = queue_head(queue, client=broker)
            if head is None:
                raise redis.ConnectionError("the broker does not answer; no queue figures for this scrape")
            depth.add_metric([queue], float(head.depth))
            age.add_metric([queue], head.age(now) or 0.0)
        yield depth
        yield age
        yield GaugeMetricFamily(
            metric_name("queue_reserved"),
            "Messages workers have taken and not yet acknowledged.",
            value=float(broker.hlen("unacked")),
        )
        for metric in shared_metrics():
            yield metric.collect(client)
        states = GaugeMetricFamily(
            metric_name("breaker_state"), "Circuit breaker: 0 closed, 1 half-open, 2 open.", labels=["breaker"]
        )
        for state in breaker_states():
            states.add_metric([state.name], {"closed": 0.0, "half_open": 1.0, "open": 2.0}.get(state.state, 0.0))
        yield states
        yield GaugeMetricFamily(
            metric_name("dead_letters_open"),
            "Dead letters neither replayed nor discarded.",
            value=float(DeadLetter.objects.filter(status=DeadLetterStatus.OPEN).count()),
        )
        for source in _gauge_sources:
            yield from source()
