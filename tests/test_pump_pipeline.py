"""The pump pipeline on a real database and Redis: decode → render → score → persist."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import redis.asyncio as aioredis
from sqlalchemy import func, select

from renderer.errors import InvalidCard
from scoring.database import make_engine, make_sessionmaker
from scoring.pipelines.base import Context, Job
from scoring.pipelines.pump import PumpPipeline
from scoring.pump import synth
from scoring.schema import PumpCard, PumpDiagnosis
from server.sites import create_site


def _context(database_url: str, redis_url: str, tmp_path: Path) -> Context:
    sessions = make_sessionmaker(make_engine(database_url))
    return Context(
        sessions=sessions,
        redis=aioredis.Redis.from_url(redis_url),
        model_dir=tmp_path / "models",
        data_dir=tmp_path,
    )


def _site(ctx: Context) -> int:
    with ctx.sessions() as session, session.begin():
        return create_site(session, "Oilfield", []).site.id


def _add_card(ctx: Context, mode: str = "fluid_pound", card_id: str = "c1") -> int:
    card = synth.synth_card(np.random.default_rng(7), mode, card_id=card_id)
    site = _site(ctx)
    with ctx.sessions() as session, session.begin():
        row = PumpCard(
            site_id=site,
            well_id="well-9",
            card_id=card.card_id,
            kind=card.kind,
            n_points=card.n_points,
            points=card.points(),
            source="test",
        )
        session.add(row)
        session.flush()
        return row.id


def _run(pipeline: PumpPipeline, job: Job) -> dict:
    item = asyncio.run(pipeline.decode(job))
    images = pipeline.render(item)
    assert images.shape == (1, 3, 48, 48)
    result = pipeline.summarise(item, pipeline.score(images))
    with pipeline.ctx.sessions() as session, session.begin():
        pipeline.persist(session, job, item, result)
    return result


def test_untrained_diagnosis_is_stored_once(
    migrated_database_url: str, redis_url: str, tmp_path: Path
) -> None:
    ctx = _context(migrated_database_url, redis_url, tmp_path)
    pk = _add_card(ctx)
    pipeline = PumpPipeline(ctx)
    pipeline.load()
    job = Job(id="pump:job-1", pipeline="pump", fields={"card_pk": str(pk)})
    result = _run(pipeline, job)
    assert result["untrained"] is True and result["model_version_id"] is None
    assert result["mode"] in synth.MODES
    assert sum(result["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    _run(pipeline, job)  # a redelivered job writes nothing new
    with ctx.sessions() as session:
        rows = session.scalars(select(PumpDiagnosis)).all()
        assert len(rows) == 1
        assert (rows[0].card_pk, rows[0].job_id, rows[0].untrained) == (pk, "pump:job-1", True)
        assert rows[0].mode == result["mode"]
    asyncio.run(ctx.redis.aclose())


def test_missing_or_broken_cards_are_permanent_failures(
    migrated_database_url: str, redis_url: str, tmp_path: Path
) -> None:
    ctx = _context(migrated_database_url, redis_url, tmp_path)
    pipeline = PumpPipeline(ctx)
    with pytest.raises(InvalidCard) as info:
        asyncio.run(pipeline.decode(Job(id="j", pipeline="pump", fields={"card_pk": "999"})))
    assert info.value.code == "card_not_found"
    with pytest.raises(InvalidCard) as info:
        asyncio.run(pipeline.decode(Job(id="j", pipeline="pump", fields={"card_pk": "x"})))
    assert info.value.code == "bad_job"
    site = _site(ctx)
    with ctx.sessions() as session, session.begin():
        row = PumpCard(
            site_id=site, card_id="flat", n_points=40, points=[[i, 5.0] for i in range(40)]
        )
        session.add(row)
        session.flush()
        pk = row.id
    with pytest.raises(InvalidCard) as info:
        asyncio.run(pipeline.decode(Job(id="j", pipeline="pump", fields={"card_pk": str(pk)})))
    assert info.value.code == "zero_range"
    with ctx.sessions() as session:
        assert session.scalar(select(func.count()).select_from(PumpDiagnosis)) == 0
    asyncio.run(ctx.redis.aclose())
