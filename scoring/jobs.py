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


async def enqueue(
    redis: aioredis.Redis, pipeline: str, fields: dict[str, str], job_id: str | None = None
) -> str:
    """Append a job to ``pipeline``'s stream; returns its job id (the idempotency key)."""
    if pipeline not in keys.PIPELINES:
        raise ValueError(f"unknown pipeline {pipeline!r}")
    job_id = job_id or new_job_id(pipeline)
    entry: dict[Any, Any] = {"job_id": job_id, **fields}
    await redis.xadd(keys.jobs_stream(pipeline), entry, maxlen=STREAM_MAXLEN, approximate=True)
    return job_id
