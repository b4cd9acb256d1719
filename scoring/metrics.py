"""Prometheus metrics of the scoring workers, and the queue figures read from Redis.

Worker processes count jobs and time render/score steps (:class:`WorkerMetrics`). Under
``trailguard run`` they write them in prometheus-client's multiprocess mode into a directory
that the server's ``/metrics`` aggregates (:func:`enable_multiprocess`); a worker on another
machine serves its own port instead. Queue depth and dead letters are global state in Redis,
so the server reads them at scrape time (:func:`queue_stats`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, Counter, Histogram, values
from redis.exceptions import ResponseError

from scoring import keys

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


def enable_multiprocess(directory: Path) -> None:
    """Make metrics created from now on write to ``directory`` (one file set per process).

    prometheus-client takes the directory only from its environment variable, and picks the
    value class at import; a worker process calls this once, before it builds its metrics.
    """
    directory.mkdir(parents=True, exist_ok=True)
    os.environ[MULTIPROC_ENV] = str(directory)
    values.ValueClass = values.MultiProcessValue()


@dataclass
class WorkerMetrics:
    """Counters and histograms one worker process updates."""

    jobs: Counter
    failures: Counter
    dead_letters: Counter
    render_seconds: Histogram
    score_seconds: Histogram
    job_latency_seconds: Histogram

    @classmethod
    def create(cls, registry: CollectorRegistry | None) -> WorkerMetrics:
        """Metrics registered in ``registry`` (``None``: unregistered, for multiprocess mode)."""
        return cls(
            jobs=Counter(
                "trailguard_jobs",
                "Jobs finished, by outcome (done, duplicate, dead_letter).",
                ["pipeline", "outcome"],
                registry=registry,
            ),
            failures=Counter(
                "trailguard_job_failures",
                "Failed job attempts, by kind (error, invalid, abandoned, outage).",
                ["pipeline", "kind"],
                registry=registry,
            ),
            dead_letters=Counter(
                "trailguard_dead_letters",
                "Jobs moved to the dead-letter stream.",
                ["pipeline"],
                registry=registry,
            ),
            render_seconds=Histogram(
                "trailguard_render_seconds",
                "Time to render one job's input to images.",
                ["pipeline"],
                buckets=LATENCY_BUCKETS,
                registry=registry,
            ),
            score_seconds=Histogram(
                "trailguard_score_seconds",
                "Time of one forward pass (a chunk of at most batch-size images).",
                ["pipeline"],
                buckets=LATENCY_BUCKETS,
                registry=registry,
            ),
            job_latency_seconds=Histogram(
                "trailguard_job_latency_seconds",
                "From the job entering its stream to its result being committed.",
                ["pipeline"],
                buckets=LATENCY_BUCKETS,
                registry=registry,
            ),
        )


@dataclass(frozen=True)
class QueueStats:
    """One pipeline's stream as seen by Redis at one moment."""

    pipeline: str
    depth: int
    """Entries in the jobs stream: the worker deletes each one once acknowledged."""
    pending: int
    """Delivered to a worker and not yet acknowledged (in flight or awaiting a retry)."""
    consumers: int
    dead_letters: int


async def queue_stats(redis: aioredis.Redis, pipeline: str) -> QueueStats:
    stream = keys.jobs_stream(pipeline)
    depth = int(await redis.xlen(stream))
    dead = int(await redis.xlen(keys.dead_letter_stream(pipeline)))
    pending = consumers = 0
    try:
        groups = await redis.xinfo_groups(stream)
    except ResponseError:  # no stream yet: nothing was ever queued
        groups = []
    for group in groups:
        name = group.get("name")
        name = name.decode() if isinstance(name, bytes) else name
        if name == keys.consumer_group(pipeline):
            pending = int(group.get("pending", 0))
            consumers = int(group.get("consumers", 0))
    return QueueStats(pipeline, depth, pending, consumers, dead)
