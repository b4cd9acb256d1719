"""The ``whale`` pipeline on real databases: streaming, idempotent results, the worker loop."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest
import redis.asyncio as aioredis
import soundfile as sf
from prometheus_client import CollectorRegistry
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from renderer.audio import SpectrogramConfig
from renderer.errors import InvalidAudio
from scoring import jobs, model_store
from scoring.database import make_engine, make_sessionmaker
from scoring.metrics import WorkerMetrics
from scoring.pipelines.base import Context, Job
from scoring.pipelines.whale import WhalePipeline, overview_path
from scoring.schema import AudioClip, ClipAnalysis, Detection, JobFailure
from scoring.whale import detector, synth
from scoring.whale import train as trainer
from scoring.whale.model import build_detector
from scoring.worker import Worker, WorkerConfig
from server.sites import create_site


def write_recording(path: Path, seconds: float, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    with sf.SoundFile(str(path), "w", 16_000, 1, subtype="PCM_16") as f:
        for chunk, _ in synth.long_recording(rng, seconds, sr=16_000, chunk_s=20):
            f.write(chunk)
    return path


def add_site(sessions: sessionmaker[Session], name: str = "Harbour") -> int:
    with sessions() as session, session.begin():
        return create_site(session, name, []).site.id


def add_clip(sessions: sessionmaker[Session], path: Path, site_id: int | None = None) -> int:
    site = add_site(sessions) if site_id is None else site_id
    with sessions() as session, session.begin():
        info = sf.info(str(path))
        clip = AudioClip(
            site_id=site,
            name=path.name,
            path=str(path),
            sample_rate=info.samplerate,
            duration_s=info.duration,
        )
        session.add(clip)
        session.flush()
        return clip.id


def register_tiny_model(sessions: sessionmaker[Session], model_dir: Path) -> int:
    """A registered ResNet-18 checkpoint (random weights): enough to check the plumbing."""
    path = model_dir / "whale" / "tiny.pt"
    cfg = trainer.TrainConfig(arch="resnet18")
    trainer.save(path, build_detector("resnet18"), cfg, SpectrogramConfig(), {"threshold": 0.4})
    with sessions() as session, session.begin():
        row = model_store.register(
            session, pipeline="whale", path=path, version="tiny", threshold=0.0
        )
        return row.id


@pytest.fixture
def sessions(migrated_database_url: str) -> sessionmaker[Session]:
    return make_sessionmaker(make_engine(migrated_database_url))


def make_pipeline(sessions: sessionmaker[Session], tmp_path: Path) -> WhalePipeline:
    ctx = Context(
        sessions=sessions,
        redis=None,  # type: ignore[arg-type]  # the whale pipeline never touches Redis
        model_dir=tmp_path / "models",
        data_dir=tmp_path / "data",
    )
    return WhalePipeline(ctx)


def test_untrained_pipeline_streams_and_persists_once(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    site = add_site(sessions)
    clip_id = add_clip(sessions, write_recording(tmp_path / "rec.wav", 50), site)
    pipe = make_pipeline(sessions, tmp_path)
    pipe.detector = detector.untrained("resnet18")
    pipe.detector.threshold = 0.0  # every window detected: one span over the whole clip
    job = Job("whale:job-1", "whale", {"clip_id": str(clip_id)})
    item = asyncio.run(pipe.decode(job))
    assert item.site_id == site  # from the clip row, not from the job's fields
    result = pipe.process(item)
    assert result["untrained"] is True and result["model_version_id"] is None
    assert result["site_id"] == site
    assert len(result["windows"]) == 25  # 1.92 s hops; the 25th ends with the audio
    assert result["windows"][-1]["end_s"] == pytest.approx(50.0, abs=0.01)
    best = max(w["score"] for w in result["windows"])
    assert result["detections"] == [
        {"start_s": 0.0, "end_s": pytest.approx(50.0, abs=0.01), "confidence": best}
    ]
    assert overview_path(tmp_path / "data", clip_id).exists()
    for _ in range(2):  # a retried job writes nothing twice
        with sessions() as session, session.begin():
            pipe.persist(session, job, item, result)
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(ClipAnalysis)) == 1
        assert session.scalar(select(func.count()).select_from(Detection)) == 1
        row = session.scalars(select(ClipAnalysis)).one()
        assert row.untrained and row.job_id == job.id and len(row.windows) == 25


def test_all_at_once_path_matches_streaming(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    clip_id = add_clip(sessions, write_recording(tmp_path / "rec.flac", 30, seed=4))
    pipe = make_pipeline(sessions, tmp_path)
    pipe.detector = detector.untrained("resnet18")
    item = asyncio.run(pipe.decode(Job("j", "whale", {"clip_id": str(clip_id)})))
    streamed = pipe.process(item)
    at_once = pipe.summarise(item, pipe.score(pipe.render(item)))
    got = [w["score"] for w in at_once["windows"]]
    assert got == pytest.approx([w["score"] for w in streamed["windows"]], abs=1e-4)


def test_active_model_is_used(sessions: sessionmaker[Session], tmp_path: Path) -> None:
    version_id = register_tiny_model(sessions, tmp_path / "models")
    clip_id = add_clip(sessions, write_recording(tmp_path / "rec.wav", 10))
    pipe = make_pipeline(sessions, tmp_path)
    pipe.load()
    result = pipe.process(asyncio.run(pipe.decode(Job("j", "whale", {"clip_id": str(clip_id)}))))
    assert result["untrained"] is False and result["model_version_id"] == version_id
    assert result["threshold"] == 0.0  # the registered threshold wins over the checkpoint's


def test_bad_jobs_fail_permanently(sessions: sessionmaker[Session], tmp_path: Path) -> None:
    pipe = make_pipeline(sessions, tmp_path)
    with pytest.raises(InvalidAudio) as e:
        asyncio.run(pipe.decode(Job("j", "whale", {"clip_id": "x"})))
    assert e.value.code == "bad_job"
    with pytest.raises(InvalidAudio) as e:
        asyncio.run(pipe.decode(Job("j", "whale", {"clip_id": "999"})))
    assert e.value.code == "clip_not_found"
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF but not really")
    site = add_site(sessions)
    with sessions() as session, session.begin():
        session.add(
            AudioClip(site_id=site, name="b", path=str(broken), sample_rate=10_000, duration_s=1.0)
        )
    with sessions() as session:
        bad_id = session.scalars(select(AudioClip.id)).one()
    with pytest.raises(InvalidAudio) as e:
        asyncio.run(pipe.decode(Job("j", "whale", {"clip_id": str(bad_id)})))
    assert e.value.code == "corrupt_audio"


def test_worker_runs_whale_jobs_from_redis(
    sessions: sessionmaker[Session], tmp_path: Path, redis_url: str
) -> None:
    register_tiny_model(sessions, tmp_path / "models")
    clip_ids = [
        add_clip(sessions, write_recording(tmp_path / f"r{i}.wav", 12, i)) for i in range(2)
    ]

    def analysed() -> int:
        with sessions() as session:
            return int(session.scalar(select(func.count()).select_from(ClipAnalysis)) or 0)

    async def main() -> None:
        client = aioredis.Redis.from_url(redis_url)
        ctx = Context(sessions, client, tmp_path / "models", tmp_path / "data")
        for clip_id in clip_ids:
            await jobs.enqueue(client, "whale", {"clip_id": str(clip_id)})
        stop = asyncio.Event()
        metrics = WorkerMetrics.create(CollectorRegistry())
        config = WorkerConfig(batch_size=4, block_ms=200)
        task = asyncio.create_task(Worker([WhalePipeline(ctx)], ctx, config, metrics).run(stop))
        deadline = time.monotonic() + 60
        while await asyncio.to_thread(analysed) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        stop.set()
        await asyncio.wait_for(task, 30)
        await client.aclose()

    asyncio.run(main())
    with sessions() as session:
        failures = session.scalars(select(JobFailure.error)).all()
        assert failures == []
        rows = session.scalars(select(ClipAnalysis)).all()
        assert sorted(r.clip_id for r in rows) == sorted(clip_ids)
        assert all(not r.untrained and len(r.windows) == 6 for r in rows)
        # threshold 0: every window detected, one merged span per clip
        assert session.scalar(select(func.count()).select_from(Detection)) == 2
