"""The mouse pipeline end to end through the real worker runner, Redis and the database."""

import asyncio
import uuid
from pathlib import Path

import numpy as np
import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry
from sqlalchemy import select

from scoring import jobs, session_store
from scoring.database import make_engine, make_sessionmaker
from scoring.metrics import WorkerMetrics
from scoring.mouse import store
from scoring.mouse.data import Preprocessing
from scoring.mouse.inference import MouseScorer
from scoring.mouse.model import ModelConfig, build
from scoring.mouse.synth import draw_habits, generate_events
from scoring.mouse.train import GroupModel, Head, OwnerModel
from scoring.pipelines.base import Context
from scoring.pipelines.mouse import MousePipeline
from scoring.schema import Account, Alert, JobFailure, PageSession, ReviewCase, Score, Site
from scoring.worker import PipelineRunner, WorkerConfig

TINY = ModelConfig(width=0.0625, size=32, embed_dim=8, n_out=1)
PREP = Preprocessing(size=32, window_events=300)


def setup_db(url: str, account: str = "alice") -> tuple:
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    with sessions() as s, s.begin():
        site = Site(
            key=f"tgk_{uuid.uuid4().hex[:12]}",
            name="shop",
            secret_hash="x",
            auto_alert_threshold=0.5,
            webhook_url="http://127.0.0.1:9/hook",
        )
        s.add(site)
        s.flush()
        acct = Account(site_id=site.id, external_id=account, owner_email="a@example.org")
        s.add(acct)
        s.flush()
        site_id, account_id = site.id, acct.id
    return engine, sessions, site_id, account_id


async def put_session(
    redis: aioredis.Redis, sessions, site_id: int, account_id: int, account: str, n: int = 900
) -> tuple[str, np.ndarray]:
    """A session as the collector leaves it: meta + sample frames in Redis, a PageSession row."""
    sid = uuid.uuid4().hex
    rng = np.random.default_rng(len(sid))
    events, (vw, vh) = generate_events(draw_habits(rng), n, rng)
    events[:, 0] -= events[0, 0]
    fields = {
        "account": account,
        "page_path": "/checkout",
        "viewport_w": vw,
        "viewport_h": vh,
        "user_agent": "Mozilla/5.0 (Windows NT 10.0) Chrome/120.0",
        "pointer_type": "mouse",
    }
    await session_store.open_session(
        redis, sid, site_id, fields, connection=False, now=1.0, ttl_s=600
    )
    packed = [(round(t * 10), int(x), int(y), int(c)) for t, x, y, c in events]
    caps = session_store.Caps()
    for seq, start in enumerate(range(0, len(packed), 100)):
        chunk = packed[start : start + 100]
        res = await session_store.append_frame(
            redis, sid, seq, chunk, chunk[0][0], chunk[-1][0], 1.0, caps
        )
        assert res == session_store.APPENDED
    with sessions() as s, s.begin():
        s.add(PageSession(id=sid, site_id=site_id, account_id=account_id, status="ended"))
    return sid, events


async def run_jobs(ctx: Context, sids: list[str]) -> list[str]:
    runner = PipelineRunner(
        MousePipeline(ctx),
        ctx,
        WorkerConfig(block_ms=10),
        WorkerMetrics.create(CollectorRegistry()),
    )
    await runner.ensure_group()
    job_ids = [await jobs.enqueue(ctx.redis, "mouse", {"session_id": sid}) for sid in sids]
    entries = await runner.next_entries()
    await runner.process_batch(entries)
    return job_ids


def context(sessions, redis, tmp_path: Path) -> Context:
    return Context(sessions=sessions, redis=redis, model_dir=tmp_path / "models", data_dir=tmp_path)


def test_untrained_scores_store_untrained_and_archive_samples(
    migrated_database_url: str, redis_url: str, tmp_path: Path
) -> None:
    engine, sessions, site_id, account_id = setup_db(migrated_database_url)

    async def scenario() -> tuple[list[str], list[str]]:
        redis = aioredis.from_url(redis_url)
        try:
            sids = [
                (await put_session(redis, sessions, site_id, account_id, "alice"))[0]
                for _ in range(2)
            ]
            ctx = context(sessions, redis, tmp_path)
            job_ids = await run_jobs(ctx, sids)
            return sids, job_ids
        finally:
            await redis.aclose()

    sids, job_ids = asyncio.run(scenario())
    with sessions() as s:
        scores = s.scalars(select(Score)).all()
        assert sorted(r.job_id for r in scores) == sorted(job_ids)
        assert all(r.untrained and not r.flagged for r in scores)
        assert all(r.details["n_windows"] >= 2 for r in scores)
        page = s.get(PageSession, sids[0])
        archived = session_store.unarchive(page.samples)
        assert archived.shape == (900, 4)
        assert s.scalars(select(ReviewCase)).first() is None
    engine.dispose()


def _save_group(tmp_path: Path, threshold: float, sessions) -> None:
    net = build(TINY).eval()
    model = GroupModel(net, PREP, threshold, {"note": "threshold chosen to flag everything"})
    path = store.save(tmp_path / "models", model, "g1")
    with sessions() as s, s.begin():
        store.register(s, path, model, "g1")


def test_flagged_session_opens_one_case_and_queues_an_alert_and_replays_are_no_ops(
    migrated_database_url: str, redis_url: str, tmp_path: Path
) -> None:
    engine, sessions, site_id, account_id = setup_db(migrated_database_url)
    _save_group(tmp_path, -1e6, sessions)

    async def scenario() -> tuple[str, str]:
        redis = aioredis.from_url(redis_url)
        try:
            sid, _ = await put_session(redis, sessions, site_id, account_id, "bob")
            ctx = context(sessions, redis, tmp_path)
            (job_id,) = await run_jobs(ctx, [sid])
            # the same job delivered again (a worker died before XACK): nothing doubles
            pipeline = MousePipeline(ctx)
            job = type("J", (), {"id": job_id, "fields": {"session_id": sid}})()
            item = await pipeline.decode(job)  # type: ignore[arg-type]
            result = pipeline.process(item)
            with sessions() as s, s.begin():
                row = pipeline.persist(s, job, item, result)  # type: ignore[arg-type]
                pipeline.act(s, job, item, result, row)  # type: ignore[arg-type]
            return sid, job_id
        finally:
            await redis.aclose()

    sid, _job_id = asyncio.run(scenario())
    with sessions() as s:
        (score,) = s.scalars(select(Score)).all()
        assert score.flagged and not score.untrained and score.details["mode"] == "group"
        assert score.model_version_id is not None
        (case,) = s.scalars(select(ReviewCase)).all()
        assert case.subject_id == sid and case.score_id == score.id and case.site_id == site_id
        channels = sorted(a.channel for a in s.scalars(select(Alert)))
        assert channels == ["email", "webhook"], "one owner email and one webhook, not doubled"
    engine.dispose()


def test_enrolled_account_is_scored_by_its_own_head(
    migrated_database_url: str, redis_url: str, tmp_path: Path
) -> None:
    engine, sessions, site_id, account_id = setup_db(migrated_database_url)
    net = build(ModelConfig(width=0.0625, size=32, embed_dim=8, n_out=3)).eval()
    heads = {"alice": Head(np.ones(8, dtype=np.float32), 0.5, threshold=1e6)}
    owner = OwnerModel(net, PREP, heads)
    path = store.save(tmp_path / "models", owner, "o1")
    with sessions() as s, s.begin():
        store.register(s, path, owner, "o1")
    _save_group(tmp_path, 1e6, sessions)

    async def scenario() -> list[str]:
        redis = aioredis.from_url(redis_url)
        try:
            a, _ = await put_session(redis, sessions, site_id, account_id, "alice")
            b, _ = await put_session(redis, sessions, site_id, account_id, "carol")
            await run_jobs(context(sessions, redis, tmp_path), [a, b])
            return [a, b]
        finally:
            await redis.aclose()

    a, b = asyncio.run(scenario())
    with sessions() as s:
        modes = {r.session_id: r.details["mode"] for r in s.scalars(select(Score))}
        assert modes == {a: "owner", b: "group"}
        per_account = store.model_store.active(s, "mouse", "owner", account_id)
        assert per_account is not None and per_account.threshold == pytest.approx(1e6)
    engine.dispose()


def test_owner_and_group_sessions_in_one_batch_get_their_own_networks_windows(
    migrated_database_url: str, redis_url: str, tmp_path: Path
) -> None:
    # the group model's windows are twice as long as the owner model's (as in production,
    # where they are page-visit scale): each session is rendered for the network that judges it
    engine, sessions, site_id, account_id = setup_db(migrated_database_url)
    net = build(ModelConfig(width=0.0625, size=32, embed_dim=8, n_out=3)).eval()
    owner = OwnerModel(net, PREP, {"alice": Head(np.ones(8, dtype=np.float32), 0.5, 1e6)})
    group = GroupModel(build(TINY).eval(), Preprocessing(size=32, window_events=600), 1e6)
    with sessions() as s, s.begin():
        for model, version in ((owner, "o1"), (group, "g1")):
            store.register(s, store.save(tmp_path / "models", model, version), model, version)

    async def scenario() -> tuple[list[str], list[session_store.SessionData]]:
        redis = aioredis.from_url(redis_url)
        try:
            a, _ = await put_session(redis, sessions, site_id, account_id, "alice", n=1800)
            b, _ = await put_session(redis, sessions, site_id, account_id, "carol", n=1800)
            stored = [await session_store.read_session(redis, sid) for sid in (a, b)]
            await run_jobs(context(sessions, redis, tmp_path), [a, b])
            return [a, b], stored
        finally:
            await redis.aclose()

    (a, b), stored = asyncio.run(scenario())
    # the same sessions scored one at a time, outside the worker
    scorer = MouseScorer(sessions, tmp_path / "models")
    keys = [scorer.site_head_key(site_id, who) for who in ("alice", "carol")]
    alone = [scorer.assess(d.events, d.viewport, k) for d, k in zip(stored, keys, strict=True)]
    with sessions() as s:
        rows = {r.session_id: r for r in s.scalars(select(Score))}
    assert {sid: rows[sid].details["mode"] for sid in (a, b)} == {a: "owner", b: "group"}
    assert [rows[sid].details["n_windows"] for sid in (a, b)] == [6, 3]  # 1,800 / 300, / 600
    for sid, single in zip((a, b), alone, strict=True):
        assert rows[sid].details["n_windows"] == single.n_windows
        assert rows[sid].score == pytest.approx(single.score, abs=1e-5)
    engine.dispose()


def test_unusable_sessions_fail_permanently_and_touch_nothing_else(
    migrated_database_url: str, redis_url: str, tmp_path: Path
) -> None:
    engine, sessions, site_id, account_id = setup_db(migrated_database_url)

    async def scenario() -> tuple[str, str]:
        redis = aioredis.from_url(redis_url)
        try:
            good, _ = await put_session(redis, sessions, site_id, account_id, "alice")
            bad = uuid.uuid4().hex
            await session_store.open_session(
                redis,
                bad,
                site_id,
                {"viewport_w": 0, "viewport_h": 0},
                connection=False,
                now=1.0,
                ttl_s=60,
            )
            await run_jobs(context(sessions, redis, tmp_path), [good, bad])
            return good, bad
        finally:
            await redis.aclose()

    good, _bad = asyncio.run(scenario())
    with sessions() as s:
        assert [r.session_id for r in s.scalars(select(Score))] == [good]
        (failure,) = s.scalars(select(JobFailure)).all()
        assert "empty_session" in failure.error or "no usable" in failure.error
    engine.dispose()
