"""The worker loop in-process, against the real Redis and database fixtures."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import redis
import redis.asyncio as aioredis
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from sqlalchemy.orm import Session, sessionmaker
from test_worker_pipeline import (
    NAME,
    ProbePipeline,
    enqueue,
    failures,
    result_counts,
    seed_sessions,
)

from scoring import keys
from scoring.database import make_engine, make_sessionmaker
from scoring.metrics import WorkerMetrics
from scoring.pipelines.base import Context, Job
from scoring.worker import PipelineRunner, Worker, WorkerConfig


def run_worker(
    redis_url: str,
    sessions: sessionmaker[Session],
    config: WorkerConfig,
    until: Callable[[], bool],
    timeout: float = 30.0,
) -> WorkerMetrics:
    """Run one in-process worker on the probe pipeline until ``until()`` holds, then stop it."""
    metrics = WorkerMetrics.create(CollectorRegistry())

    async def main() -> None:
        client = aioredis.Redis.from_url(redis_url)
        ctx = Context(sessions=sessions, redis=client, model_dir=Path("."), data_dir=Path("."))
        stop = asyncio.Event()
        task = asyncio.create_task(Worker([ProbePipeline(ctx)], ctx, config, metrics).run(stop))
        deadline = time.monotonic() + timeout
        while not await asyncio.to_thread(until) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(task, 15)
        await client.aclose()

    asyncio.run(main())
    return metrics


def _sessions(url: str) -> sessionmaker[Session]:
    return make_sessionmaker(make_engine(url))


def _queue_empty(client: redis.Redis) -> bool:
    return client.xlen(keys.jobs_stream(NAME)) == 0


def test_batches_are_scored_in_chunked_forward_passes_and_acked(
    redis_client: redis.Redis, redis_url: str, migrated_database_url: str
) -> None:
    sessions = _sessions(migrated_database_url)
    rng = np.random.default_rng(1)
    sids = seed_sessions(sessions, 20)
    jobs = [enqueue(redis_client, sid, rng) for sid in sids]
    ProbePipeline.forward_sizes.clear()
    config = WorkerConfig(batch_size=8, consumer="w1")
    metrics = run_worker(redis_url, sessions, config, lambda: len(result_counts(sessions)) == 20)

    assert result_counts(sessions) == {job: 1 for job in jobs}
    assert _queue_empty(redis_client)
    assert redis_client.xpending(keys.jobs_stream(NAME), keys.consumer_group(NAME))["pending"] == 0
    assert redis_client.hlen(keys.job_attempts(NAME)) == 0
    # 20 jobs read 8 at a time: at least one pass held a full chunk of 8 images, none more.
    assert max(ProbePipeline.forward_sizes) == 8
    assert sum(ProbePipeline.forward_sizes) == 20
    assert metrics.jobs.labels(NAME, "done")._value.get() == 20


def test_batched_scores_equal_scores_of_each_job_alone(
    redis_client: redis.Redis, redis_url: str, sqlite_url: str
) -> None:
    sessions = _sessions(sqlite_url)
    rng = np.random.default_rng(2)
    sids = seed_sessions(sessions, 6)
    points = {}
    for sid in sids:
        job = enqueue(redis_client, sid, rng)
        points[job] = redis_client.xrange(keys.jobs_stream(NAME))[-1][1][b"points"].decode()
    run_worker(
        redis_url, sessions, WorkerConfig(batch_size=6), lambda: len(result_counts(sessions)) == 6
    )

    alone = ProbePipeline(
        Context(sessions=sessions, redis=None, model_dir=Path("."), data_dir=Path("."))
    )  # type: ignore[arg-type]
    with sessions() as s:
        from scoring.schema import Score

        stored = {row.job_id: row.score for row in s.query(Score)}
    for job_id, pts in points.items():
        item = asyncio.run(alone.decode(Job(job_id, NAME, {"session_id": "x", "points": pts})))
        assert abs(alone.process(item)["score"] - stored[job_id]) < 1e-5
    assert len(set(np.round(list(stored.values()), 6))) > 1


def test_a_job_delivered_twice_yields_one_result_and_both_are_acked(
    redis_client: redis.Redis, redis_url: str, migrated_database_url: str
) -> None:
    sessions = _sessions(migrated_database_url)
    rng = np.random.default_rng(3)
    (sid,) = seed_sessions(sessions, 1)
    job = enqueue(redis_client, sid, rng)
    fields = redis_client.xrange(keys.jobs_stream(NAME))[0][1]
    redis_client.xadd(keys.jobs_stream(NAME), fields)  # the same job id again
    metrics = run_worker(
        redis_url, sessions, WorkerConfig(batch_size=1), lambda: _queue_empty(redis_client)
    )
    assert result_counts(sessions) == {job: 1}
    assert metrics.jobs.labels(NAME, "done")._value.get() == 1
    assert metrics.jobs.labels(NAME, "duplicate")._value.get() == 1
    assert failures(sessions) == {}


def test_invalid_input_is_dead_lettered_at_once_with_its_error(
    redis_client: redis.Redis, redis_url: str, migrated_database_url: str
) -> None:
    sessions = _sessions(migrated_database_url)
    rng = np.random.default_rng(4)
    sids = seed_sessions(sessions, 4)
    bad = enqueue(redis_client, sids[0], rng, mode="invalid")
    good = [enqueue(redis_client, sid, rng) for sid in sids[1:]]
    run_worker(redis_url, sessions, WorkerConfig(batch_size=4), lambda: _queue_empty(redis_client))

    assert result_counts(sessions) == {job: 1 for job in good}
    failure = failures(sessions)[bad]
    assert failure.attempts == 1
    assert "InvalidSession" in failure.error and "probe_invalid" in failure.error
    assert failure.payload["session_id"] == sids[0]
    dead = redis_client.xrange(keys.dead_letter_stream(NAME))
    assert [entry[b"job_id"].decode() for _, entry in dead] == [bad]


def test_poison_job_dead_letters_after_n_attempts_while_jobs_behind_it_are_scored(
    redis_client: redis.Redis, redis_url: str, migrated_database_url: str
) -> None:
    sessions = _sessions(migrated_database_url)
    rng = np.random.default_rng(5)
    sids = seed_sessions(sessions, 9)
    poison = enqueue(redis_client, sids[0], rng, mode="poison")
    good = [enqueue(redis_client, sid, rng) for sid in sids[1:]]
    config = WorkerConfig(batch_size=2, max_attempts=3, claim_idle_ms=150, block_ms=200)
    run_worker(redis_url, sessions, config, lambda: poison in failures(sessions))

    assert result_counts(sessions) == {job: 1 for job in good}
    failure = failures(sessions)[poison]
    assert failure.attempts == 3
    assert "RuntimeError: probe poison job" in failure.error
    assert _queue_empty(redis_client)
    dead = redis_client.xrange(keys.dead_letter_stream(NAME))
    assert len(dead) == 1 and dead[0][1][b"attempts"] == b"3"
    assert b"probe poison job" in dead[0][1][b"error"]


def test_a_foreign_key_violation_is_a_failure_not_already_done(
    redis_client: redis.Redis, redis_url: str, migrated_database_url: str
) -> None:
    sessions = _sessions(migrated_database_url)
    rng = np.random.default_rng(6)
    job = enqueue(redis_client, "no-such-session", rng)
    config = WorkerConfig(batch_size=1, max_attempts=1)
    metrics = run_worker(redis_url, sessions, config, lambda: job in failures(sessions))
    assert result_counts(sessions) == {}
    assert "IntegrityError" in failures(sessions)[job].error
    assert metrics.jobs.labels(NAME, "duplicate")._value.get() == 0
    assert metrics.jobs.labels(NAME, "dead_letter")._value.get() == 1


@settings(max_examples=25, deadline=None)
@given(
    windows=st.lists(st.integers(1, 5), min_size=1, max_size=6),
    batch_size=st.integers(1, 7),
    seed=st.integers(0, 2**16),
)
def test_chunked_batch_scoring_equals_scoring_each_image_alone(
    windows: list[int], batch_size: int, seed: int
) -> None:
    ctx = Context(sessions=None, redis=None, model_dir=Path("."), data_dir=Path("."))  # type: ignore[arg-type]
    pipeline = ProbePipeline(ctx)
    runner = PipelineRunner(
        pipeline,
        ctx,
        WorkerConfig(batch_size=batch_size),
        WorkerMetrics.create(CollectorRegistry()),
    )
    gen = torch.Generator().manual_seed(seed)
    per_item = [torch.rand((k, 1, 32, 32), generator=gen) for k in windows]
    ProbePipeline.forward_sizes.clear()
    outputs = runner._score_images(per_item)
    assert max(ProbePipeline.forward_sizes) <= batch_size
    assert sum(ProbePipeline.forward_sizes) == sum(windows)
    for images, out in zip(per_item, outputs, strict=True):
        alone = torch.cat([pipeline.score(image[None]) for image in images])
        torch.testing.assert_close(out, alone, atol=1e-5, rtol=1e-5)


def test_every_key_one_pipeline_touches_in_a_transaction_is_in_one_cluster_slot() -> None:
    from redis.crc import key_slot

    for name in (*keys.PIPELINES, NAME):
        names = [keys.jobs_stream(name), keys.job_attempts(name), keys.dead_letter_stream(name)]
        assert len({key_slot(n.encode()) for n in names}) == 1, names


class StreamingProbe(ProbePipeline):
    """A pipeline that scores each item alone through its own ``process`` (as whale streams)."""

    processed: ClassVar[list[str]] = []

    def process(self, item: dict[str, Any]) -> dict[str, Any]:
        type(self).processed.append(item["session_id"])
        images = self.render(item)
        return self.summarise(item, torch.cat([self.score(im[None]) for im in images]))


def test_a_pipeline_overriding_process_is_run_item_by_item_and_stored(
    redis_client: redis.Redis, redis_url: str, sqlite_url: str
) -> None:
    sessions = _sessions(sqlite_url)
    sids = seed_sessions(sessions, 3)
    jobs = [enqueue(redis_client, sid, np.random.default_rng(7)) for sid in sids]
    StreamingProbe.processed.clear()
    metrics = WorkerMetrics.create(CollectorRegistry())

    async def main() -> None:
        client = aioredis.Redis.from_url(redis_url)
        ctx = Context(sessions=sessions, redis=client, model_dir=Path("."), data_dir=Path("."))
        runner = PipelineRunner(StreamingProbe(ctx), ctx, WorkerConfig(batch_size=3), metrics)
        await runner.ensure_group()
        await runner.process_batch(await runner.next_entries())
        await client.aclose()

    asyncio.run(main())
    assert result_counts(sessions) == {job: 1 for job in jobs}
    assert sorted(StreamingProbe.processed) == sorted(sids)
    assert _queue_empty(redis_client)
