"""The worker loop: jobs from Redis Streams through a :class:`~scoring.pipelines.base.Pipeline`.

One :class:`PipelineRunner` per pipeline reads its jobs stream as a member of the pipeline's
consumer group, so any number of workers on any number of machines share the work::

    XREADGROUP COUNT batch BLOCK …   a batch of jobs (first this consumer's own pending ones)
    XAUTOCLAIM idle > claim_idle     jobs of a dead worker, and failed jobs due for a retry
    decode → render → score (one forward pass per chunk of batch-size images) → summarise
    per job: persist + act in one DB transaction, commit
    XACK + XDEL + HDEL attempts      in one MULTI, only after the commit

Delivery is at least once; the result row's unique ``job_id`` makes a second run a no-op
(an IntegrityError on that key counts as "already done" and the job is still acknowledged).

Failures:

- ``InvalidInput`` (bad data) is permanent: a ``JobFailure`` row and the dead-letter stream
  at once.
- Any other error counts an attempt (``keys.job_attempts``). The job stays pending and is
  retried by whichever worker claims it after ``claim_idle_ms``; after ``max_attempts`` it is
  dead-lettered with its last error.
- Attempts are counted when processing *starts*, so a job that kills its worker every time
  (OOM, segfault) is also dead-lettered eventually.
- The database or Redis being unreachable is an outage, not the job's fault: the attempt is
  given back, nothing is acknowledged, the worker waits for the store to answer and then
  re-reads its own pending jobs.

All keys of a pipeline share one hash tag (``{jobs:<name>}``) so the MULTI blocks are legal
on Redis Cluster.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError

from renderer.errors import InvalidInput, StoreUnavailable
from scoring import keys
from scoring.metrics import WorkerMetrics
from scoring.pipelines.base import Context, Job, Pipeline
from scoring.schema import JobFailure

log = logging.getLogger(__name__)

DEAD_LETTER_MAXLEN = 100_000
STALE_CONSUMER_MS = 24 * 3600 * 1000
"""Consumers idle this long with nothing pending are removed from the group at start-up."""
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError)


def default_consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True)
class WorkerConfig:
    batch_size: int = 16
    """Jobs read per XREADGROUP, and images per forward pass."""
    max_attempts: int = 5
    claim_idle_ms: int = 300_000
    """Idle time before another worker takes a job over: longer than the slowest job."""
    block_ms: int = 1000
    """How long a read waits for new jobs; also bounds how late a SIGTERM is noticed."""
    consumer: str = field(default_factory=default_consumer_name)
    outage_retry_s: float = 1.0
    outage_retry_max_s: float = 10.0

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.max_attempts < 1 or self.claim_idle_ms < 1:
            raise ValueError("batch_size, max_attempts and claim_idle_ms must be positive")


class StoreOutage(Exception):
    """Internal signal: Redis or the database stopped answering in the middle of a batch."""


@dataclass
class Outcome:
    """What happened to one job of a batch."""

    job: Job
    item: Any = None
    result: dict[str, Any] | None = None
    error: str | None = None
    permanent: bool = False
    outage: bool = False


def describe_error(e: BaseException) -> str:
    """The error as recorded for a failed job: type, code, message and the traceback's tail."""
    code = f"[{e.code}] " if isinstance(e, InvalidInput) else ""
    tail = "".join(traceback.format_exception(e)[-12:])
    return f"{type(e).__name__}: {code}{e}\n{tail}"


def _chain(e: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    cur: BaseException | None = e
    while cur is not None and cur not in seen:
        seen.append(cur)
        cur = cur.__cause__ or cur.__context__
    return seen


def looks_like_outage(e: BaseException) -> bool:
    """Whether ``e`` (or what it was raised from) is a store that does not answer."""
    for err in _chain(e):
        if isinstance(err, StoreUnavailable | OperationalError | InterfaceError):
            return True
        if isinstance(err, DBAPIError) and err.connection_invalidated:
            return True
        if isinstance(err, RedisConnectionError | RedisTimeoutError):
            return True
    return False


def is_duplicate_job(e: IntegrityError) -> bool:
    """An IntegrityError on a result table's unique ``job_id`` (the job was done before)."""
    diag = getattr(e.orig, "diag", None)
    constraint = getattr(diag, "constraint_name", None)
    if constraint:
        return str(constraint).endswith("_job_id")
    message = str(e.orig)
    return "UNIQUE constraint failed" in message and ".job_id" in message


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def entry_time_s(stream_id: str) -> float:
    """When a stream entry was added (its id's millisecond part), as unix seconds."""
    return int(stream_id.split("-", 1)[0]) / 1000.0


class PipelineRunner:
    """Reads one pipeline's stream as one consumer and drives batches through the pipeline."""

    def __init__(
        self, pipeline: Pipeline, ctx: Context, config: WorkerConfig, metrics: WorkerMetrics
    ) -> None:
        self.pipeline = pipeline
        self.ctx = ctx
        self.config = config
        self.metrics = metrics
        name = pipeline.name
        self.stream = keys.jobs_stream(name)
        self.group = keys.consumer_group(name)
        self.attempts_key = keys.job_attempts(name)
        self.dead_stream = keys.dead_letter_stream(name)
        self._own_cursor: str | None = "0"
        self._claim_cursor = "0-0"
        self._next_claim = 0.0
        self._settling: asyncio.Task[None] | None = None
        self.batches = 0

    # --- the loop ---------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.ensure_group()
                await self._loop(stop)
            except (StoreOutage, *REDIS_DOWN) as e:
                log.warning("%s: store outage, waiting for it to answer: %s", self.pipeline.name, e)
                await self._wait_until_stores_answer(stop, self.config.outage_retry_s)
                self._own_cursor = "0"
            except ResponseError as e:
                if "NOGROUP" not in str(e):
                    await self._survive(stop, e)
                    continue
                log.warning(
                    "%s: consumer group vanished (Redis lost its data?)", self.pipeline.name
                )
            except Exception as e:  # batch boundary: keep the worker alive, the jobs stay pending
                await self._survive(stop, e)
        await self._leave_group()

    async def _survive(self, stop: asyncio.Event, e: Exception) -> None:
        log.exception("%s: unexpected error, the batch stays pending: %s", self.pipeline.name, e)
        await self._wait_until_stores_answer(stop, self.config.outage_retry_s)
        self._own_cursor = "0"

    async def _loop(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                entries = await self.next_entries()
                if entries:
                    await self.overlap_batch(entries)
        finally:
            await self.drain()

    async def ensure_group(self) -> None:
        try:
            await self.ctx.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise
        await self._forget_stale_consumers()

    async def _forget_stale_consumers(self) -> None:
        for consumer in await self.ctx.redis.xinfo_consumers(self.stream, self.group):
            name = _text(consumer["name"])
            if int(consumer["pending"]) == 0 and int(consumer["idle"]) > STALE_CONSUMER_MS:
                await self.ctx.redis.xgroup_delconsumer(self.stream, self.group, name)

    async def _leave_group(self) -> None:
        """On a clean exit, drop this consumer from the group unless it still owns jobs."""
        try:
            pending = await self.ctx.redis.xpending_range(
                self.stream, self.group, "-", "+", 1, consumername=self.config.consumer
            )
            if not pending:
                await self.ctx.redis.xgroup_delconsumer(
                    self.stream, self.group, self.config.consumer
                )
        except (*REDIS_DOWN, ResponseError) as e:
            log.info("%s: could not leave the group cleanly: %s", self.pipeline.name, e)

    async def _wait_until_stores_answer(self, stop: asyncio.Event, first_delay: float) -> None:
        delay = first_delay
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=delay)
                return
            except TimeoutError:
                pass
            if await self._stores_answer():
                return
            delay = min(delay * 2, self.config.outage_retry_max_s)

    async def _stores_answer(self) -> bool:
        try:
            await self.ctx.redis.ping()
        except REDIS_DOWN:
            return False
        return await asyncio.to_thread(self.database_answers)

    def database_answers(self) -> bool:
        try:
            with self.ctx.sessions() as session:
                session.execute(text("SELECT 1"))
            return True
        except DBAPIError:
            return False

    # --- reading ----------------------------------------------------------------------------

    async def next_entries(self) -> list[tuple[str, dict[str, str]]]:
        """Next batch: own pending jobs first (after a restart or outage), then claims, then new."""
        count = self.config.batch_size
        redis = self.ctx.redis
        if self._own_cursor is not None:
            resp = await redis.xreadgroup(
                self.group, self.config.consumer, {self.stream: self._own_cursor}, count=count
            )
            entries = _entries(resp)
            self._own_cursor = entries[-1][0] if entries else None
            if entries:
                return entries
        claimed = await self._claim()
        if claimed:
            return claimed
        resp = await redis.xreadgroup(
            self.group,
            self.config.consumer,
            {self.stream: ">"},
            count=count,
            block=self.config.block_ms,
        )
        return _entries(resp)

    async def _claim(self) -> list[tuple[str, dict[str, str]]]:
        """Jobs idle longer than ``claim_idle_ms`` in any consumer (dead worker, failed job)."""
        now = time.monotonic()
        if now < self._next_claim:
            return []
        resp = await self.ctx.redis.xautoclaim(
            self.stream,
            self.group,
            self.config.consumer,
            min_idle_time=self.config.claim_idle_ms,
            start_id=self._claim_cursor,
            count=self.config.batch_size,
        )
        self._claim_cursor = _text(resp[0])
        claimed = [(_text(sid), f) for sid, f in resp[1] if f is not None]
        deleted = [sid for sid, f in resp[1] if f is None]
        if deleted:  # trimmed away while pending (Redis 6.2 reports them like this)
            await self.ctx.redis.xack(self.stream, self.group, *deleted)
        if self._claim_cursor == "0-0" and len(claimed) < self.config.batch_size:
            # Scanned the whole pending list: look again in a fraction of the idle time.
            self._next_claim = now + min(self.config.claim_idle_ms / 4000, 5.0)
        return [(sid, _decode_fields(f)) for sid, f in claimed]

    # --- a batch ----------------------------------------------------------------------------

    async def process_batch(self, entries: list[tuple[str, dict[str, str]]]) -> None:
        """Process one batch to the end: its jobs are committed and acknowledged on return."""
        await self.overlap_batch(entries)
        await self.drain()

    async def overlap_batch(self, entries: list[tuple[str, dict[str, str]]]) -> None:
        """Decode and compute this batch while the previous one commits, then hand it over.

        At most one batch is being committed at a time, so a batch's jobs are acknowledged in
        order and :meth:`drain` (on stop, or before the next hand-over) bounds what is in flight.
        """
        jobs = await self._start_jobs(entries)
        outcomes = await self._decode(jobs)
        live = [o for o in outcomes if o.error is None and not o.outage]
        if live:
            await asyncio.to_thread(self._compute, live)
        try:
            await self.drain()
        except Exception:  # the previous batch met an outage: this one waits for a re-read
            await self._give_back_attempts([o.job for o in outcomes])
            raise
        self._settling = asyncio.create_task(self._settle(outcomes))

    async def drain(self) -> None:
        """Wait for the batch being committed; its StoreOutage (if any) is raised here."""
        task, self._settling = self._settling, None
        if task is not None:
            await task

    async def _settle(self, outcomes: list[Outcome]) -> None:
        """Commit + acknowledge the done jobs, dead-letter or keep the failed ones."""
        await self._finish([o for o in outcomes if o.result is not None])
        await self._fail([o for o in outcomes if o.error is not None and not o.outage])
        outages = [o for o in outcomes if o.outage]
        self.batches += 1
        if outages:
            await self._give_back_attempts([o.job for o in outages])
            raise StoreOutage((outages[0].error or "store unreachable").splitlines()[0])

    async def _start_jobs(self, entries: list[tuple[str, dict[str, str]]]) -> list[Job]:
        jobs = [
            Job(id=f.get("job_id") or sid, pipeline=self.pipeline.name, fields=f, stream_id=sid)
            for sid, f in entries
        ]
        pipe = self.ctx.redis.pipeline(transaction=False)
        for job in jobs:
            pipe.hincrby(self.attempts_key, job.id, 1)
        for job, attempts in zip(jobs, await pipe.execute(), strict=True):
            job.attempts = int(attempts)
        return jobs

    async def _decode(self, jobs: list[Job]) -> list[Outcome]:
        outcomes = [Outcome(job) for job in jobs]
        todo: list[Outcome] = []
        for o in outcomes:
            if "job_id" not in o.job.fields:
                o.error, o.permanent = "job entry has no job_id field", True
            elif o.job.attempts > self.config.max_attempts:
                o.error = (
                    f"abandoned {o.job.attempts - 1} times without finishing "
                    "(its worker was killed or crashed while processing it)"
                )
                self.metrics.failures.labels(self.pipeline.name, "abandoned").inc()
            else:
                todo.append(o)
        items = await asyncio.gather(
            *(self.pipeline.decode(o.job) for o in todo), return_exceptions=True
        )
        for o, item in zip(todo, items, strict=True):
            if isinstance(item, BaseException):
                self._set_error(o, item)
            else:
                o.item = item
        return outcomes

    def _set_error(self, o: Outcome, e: BaseException) -> None:
        if isinstance(e, InvalidInput):
            o.error, o.permanent = describe_error(e), True
            kind = "invalid"
        elif looks_like_outage(e) and not self._outage_is_over(e):
            o.error, o.outage = describe_error(e), True
            kind = "outage"
        else:
            o.error = describe_error(e)
            kind = "error"
        self.metrics.failures.labels(self.pipeline.name, kind).inc()
        log.warning("%s job %s failed (%s): %s", self.pipeline.name, o.job.id, kind, e)

    def _outage_is_over(self, e: BaseException) -> bool:
        """A store error with both stores answering again was the job's fault after all."""
        if any(isinstance(err, RedisConnectionError | RedisTimeoutError) for err in _chain(e)):
            return False
        return self.database_answers()

    # --- compute (in a thread: torch releases the GIL, the event loop keeps reading) -------

    def _compute(self, outcomes: list[Outcome]) -> None:
        if type(self.pipeline).process is not Pipeline.process:
            for o in outcomes:
                o.result = self._guard(o, lambda o=o: self.pipeline.process(o.item))
            return
        rendered: list[tuple[Outcome, torch.Tensor]] = []
        for o in outcomes:
            images = self._guard(o, lambda o=o: self._render(o.item))
            if images is not None:
                rendered.append((o, images))
        if not rendered:
            return
        try:
            outputs = self._score_images([images for _, images in rendered])
        except Exception:  # isolate the item that breaks the batched pass
            outputs = [
                self._guard(o, lambda im=im: self._score_images([im])[0]) for o, im in rendered
            ]
        for (o, _), out in zip(rendered, outputs, strict=True):
            if out is not None:
                o.result = self._guard(o, lambda o=o, out=out: self.pipeline.summarise(o.item, out))

    def _guard(self, o: Outcome, step: Any) -> Any:
        """Run one job's step; a failure marks that job only (job boundary: catch broadly)."""
        try:
            return step()
        except Exception as e:
            self._set_error(o, e)
            o.result = None
            return None

    def _render(self, item: Any) -> torch.Tensor:
        started = time.perf_counter()
        images = self.pipeline.render(item)
        self.metrics.render_seconds.labels(self.pipeline.name).observe(
            time.perf_counter() - started
        )
        if images.ndim != 4 or images.shape[0] < 1:
            raise ValueError(f"render returned shape {tuple(images.shape)}, expected (K,C,H,W)")
        return images

    def _score_images(self, per_item: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Outputs per item from forward passes over chunks of ``batch_size`` images."""
        images = torch.cat(list(per_item)) if len(per_item) > 1 else per_item[0]
        chunks = []
        size = self.config.batch_size
        with torch.inference_mode():
            for start in range(0, images.shape[0], size):
                started = time.perf_counter()
                chunks.append(self.pipeline.score(images[start : start + size]))
                self.metrics.score_seconds.labels(self.pipeline.name).observe(
                    time.perf_counter() - started
                )
        outputs = torch.cat(chunks)
        if outputs.shape[0] != images.shape[0]:
            raise ValueError(f"score returned {outputs.shape[0]} rows for {images.shape[0]}")
        return list(torch.split(outputs, [int(t.shape[0]) for t in per_item]))

    # --- committing and acknowledging ---------------------------------------------------------

    async def _finish(self, outcomes: list[Outcome]) -> None:
        if not outcomes:
            return
        committed = await asyncio.to_thread(self._persist_all, outcomes)
        if committed:
            await self._ack([o.job for o in committed])
            now = time.time()
            for o in committed:
                self.metrics.job_latency_seconds.labels(self.pipeline.name).observe(
                    max(0.0, now - entry_time_s(o.job.stream_id))
                )

    def _persist_all(self, outcomes: list[Outcome]) -> list[Outcome]:
        committed = []
        for i, o in enumerate(outcomes):
            if self._persist_one(o):
                committed.append(o)
            elif o.outage:  # the rest would only wait for the same dead connection
                for rest in outcomes[i + 1 :]:
                    rest.outage, rest.result = True, None
                break
        return committed

    def _persist_one(self, o: Outcome) -> bool:
        assert o.result is not None
        try:
            with self.ctx.sessions() as session, session.begin():
                row = self.pipeline.persist(session, o.job, o.item, o.result)
                self.pipeline.act(session, o.job, o.item, o.result, row)
        except IntegrityError as e:
            if not is_duplicate_job(e):
                self._set_error(o, e)
                return False
            self.metrics.jobs.labels(self.pipeline.name, "duplicate").inc()
            log.info("%s job %s was already done; acknowledging", self.pipeline.name, o.job.id)
            return True
        except Exception as e:  # job boundary: record and carry on with the others
            self._set_error(o, e)
            return False
        self.metrics.jobs.labels(self.pipeline.name, "done").inc()
        return True

    async def _ack(self, jobs: list[Job]) -> None:
        ids = [job.stream_id for job in jobs]
        pipe = self.ctx.redis.pipeline(transaction=True)
        pipe.xack(self.stream, self.group, *ids)
        pipe.xdel(self.stream, *ids)
        pipe.hdel(self.attempts_key, *[job.id for job in jobs])
        await pipe.execute()

    async def _give_back_attempts(self, jobs: list[Job]) -> None:
        try:
            pipe = self.ctx.redis.pipeline(transaction=False)
            for job in jobs:
                pipe.hincrby(self.attempts_key, job.id, -1)
            await pipe.execute()
        except REDIS_DOWN:
            log.warning(
                "%s: Redis down, attempts of %d jobs stay counted", self.pipeline.name, len(jobs)
            )

    async def _fail(self, outcomes: list[Outcome]) -> None:
        """Dead-letter permanent and exhausted failures; leave the rest pending for a retry."""
        dead = [o for o in outcomes if o.permanent or o.job.attempts >= self.config.max_attempts]
        for o in outcomes:
            if o not in dead:
                log.info(
                    "%s job %s: attempt %d/%d failed, will retry after %d ms",
                    self.pipeline.name,
                    o.job.id,
                    o.job.attempts,
                    self.config.max_attempts,
                    self.config.claim_idle_ms,
                )
        for o in dead:
            await self._dead_letter(o)

    async def _dead_letter(self, o: Outcome) -> None:
        error = o.error or "unknown error"
        try:
            await asyncio.to_thread(self._record_failure, o.job, error)
        except Exception as e:
            if not looks_like_outage(e):
                raise
            o.outage = True  # cannot record it now: the job stays pending until the store is back
            return
        job = o.job
        entry: dict[Any, Any] = {**job.fields, "job_id": job.id, "error": error[:4000]}
        entry.update(attempts=str(job.attempts), stream_id=job.stream_id)
        pipe = self.ctx.redis.pipeline(transaction=True)
        pipe.xadd(self.dead_stream, entry, maxlen=DEAD_LETTER_MAXLEN, approximate=True)
        pipe.xack(self.stream, self.group, job.stream_id)
        pipe.xdel(self.stream, job.stream_id)
        pipe.hdel(self.attempts_key, job.id)
        await pipe.execute()
        self.metrics.dead_letters.labels(self.pipeline.name).inc()
        self.metrics.jobs.labels(self.pipeline.name, "dead_letter").inc()
        log.error("%s job %s dead-lettered: %s", self.pipeline.name, job.id, error.splitlines()[0])

    def _record_failure(self, job: Job, error: str) -> None:
        try:
            with self.ctx.sessions() as session, session.begin():
                session.add(
                    JobFailure(
                        pipeline=job.pipeline,
                        job_id=job.id[:64],
                        attempts=job.attempts,
                        error=error,
                        payload=dict(job.fields),
                    )
                )
        except IntegrityError as e:
            if not is_duplicate_job(e):
                raise
            # Recorded by an earlier run that died before it could acknowledge.


def _decode_fields(fields: dict[Any, Any]) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in fields.items()}


def _entries(resp: Any) -> list[tuple[str, dict[str, str]]]:
    if not resp:
        return []
    if isinstance(resp, dict):  # RESP3 clients answer a mapping
        messages = next(iter(resp.values()))[0] if resp else []
    else:
        messages = resp[0][1]
    return [(_text(sid), _decode_fields(f)) for sid, f in messages if f is not None]


class Worker:
    """Runs one :class:`PipelineRunner` per pipeline in one event loop until ``stop`` is set."""

    def __init__(
        self,
        pipelines: Sequence[Pipeline],
        ctx: Context,
        config: WorkerConfig,
        metrics: WorkerMetrics,
    ) -> None:
        self.runners = [PipelineRunner(p, ctx, config, metrics) for p in pipelines]

    async def run(self, stop: asyncio.Event, load: bool = True) -> None:
        """Process batches until ``stop`` is set; the batch in flight is finished first.

        ``load=False`` when the caller has already loaded the pipelines' models."""
        for runner in self.runners:
            if load:
                runner.pipeline.load()
        await asyncio.gather(*(runner.run(stop) for runner in self.runners))
