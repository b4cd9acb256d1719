"""Submitting jobs to a pipeline's stream (the worker in :mod:`scoring.worker` consumes them)."""

from __future__ import annotations

import uuid
from typing import Any

import redis.asyncio as aioredis

from scoring import keys

STREAM_MAXLEN = 1_000_000
"""Approximate cap on a jobs stream; far above any backlog a healthy system has."""


def new_job_id(pipeline: str) -> str:
    return f"{pipeline}:{uuid.uuid4().hex}"


def _stream(pipeline: str) -> str:
    if pipeline not in keys.PIPELINES:
        raise ValueError(f"unknown pipeline {pipeline!r}")
    return keys.jobs_stream(pipeline)


async def enqueue(
    redis: aioredis.Redis, pipeline: str, fields: dict[str, str], job_id: str | None = None
) -> str:
    """Append a job to ``pipeline``'s stream; returns its job id (the idempotency key)."""
    stream = _stream(pipeline)
    job_id = job_id or new_job_id(pipeline)
    entry: dict[Any, Any] = {"job_id": job_id, **fields}
    await redis.xadd(stream, entry, maxlen=STREAM_MAXLEN, approximate=True)
    return job_id


async def enqueue_many(
    redis: aioredis.Redis, pipeline: str, jobs: list[dict[str, str]]
) -> list[str]:
    """:func:`enqueue` each of ``jobs`` in one round trip (one stream, so one cluster slot);
    returns their job ids. Many pages end together, and an ``XADD`` each through the pool
    fanned out into a connection per job."""
    stream = _stream(pipeline)
    ids = [new_job_id(pipeline) for _ in jobs]
    async with redis.pipeline(transaction=False) as pipe:
        for job_id, fields in zip(ids, jobs, strict=True):
            entry: dict[Any, Any] = {"job_id": job_id, **fields}
            pipe.xadd(stream, entry, maxlen=STREAM_MAXLEN, approximate=True)
        await pipe.execute()
    return ids
