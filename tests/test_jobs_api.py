"""``GET /api/v1/jobs/{job_id}`` and ``GET /metrics`` over the real app, Redis and databases."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import redis
import redis.asyncio as aioredis
from sqlalchemy.orm import Session, sessionmaker
from starlette.testclient import TestClient
from test_worker import run_worker
from test_worker_pipeline import NAME, enqueue

from scoring import jobs, keys
from scoring.database import make_engine, make_sessionmaker
from scoring.schema import AudioClip, PageSession, PumpCard, PumpDiagnosis, Score, Site
from scoring.worker import WorkerConfig
from server.app import create_app
from server.auth import add_analyst
from server.settings import Settings, load_settings
from server.sites import create_site

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "jobs api admin password"


@dataclass
class World:
    settings: Settings
    sessions: sessionmaker[Session]
    auth: dict[str, str]
    other_auth: dict[str, str]
    sids: list[str]


def _site(sessions: sessionmaker[Session], name: str, n_sessions: int) -> tuple[dict, list[str]]:
    with sessions() as s, s.begin():
        new = create_site(s, name, [f"https://{name}.example"])
        sids = [uuid.uuid4().hex for _ in range(n_sessions)]
        s.add_all(PageSession(id=sid, site_id=new.site.id, status="ended") for sid in sids)
    return {"Authorization": f"Bearer {new.site.key}.{new.secret}"}, sids


@pytest.fixture
def world(tmp_path: Path, migrated_database_url: str, redis_url: str) -> World:
    settings = load_settings(
        {},
        database_url=migrated_database_url,
        redis_url=redis_url,
        data_dir=tmp_path / "var",
        model_dir=tmp_path / "var" / "models",
        secret_key="jobs-api-test-secret",
    )
    sessions = make_sessionmaker(make_engine(migrated_database_url))
    auth, sids = _site(sessions, "shop", 4)
    other_auth, _ = _site(sessions, "other", 1)
    with sessions() as s, s.begin():
        add_analyst(s, "root@example.org", PASSWORD, "admin")
    return World(settings, sessions, auth, other_auth, sids)


@pytest.fixture
def client(world: World) -> Iterator[TestClient]:
    with TestClient(create_app(world.settings)) as c:
        yield c


def _log_in_admin(client: TestClient) -> None:
    page = client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert token, page.text[:500]
    response = client.post(
        "/login",
        data={"email": "root@example.org", "password": PASSWORD, "csrf_token": token.group(1)},
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text


def test_done_job_shows_its_stored_result_to_its_site_only(
    world: World, client: TestClient, redis_client: redis.Redis, redis_url: str
) -> None:
    job = enqueue(redis_client, world.sids[0], np.random.default_rng(20))
    run_worker(redis_url, world.sessions, WorkerConfig(batch_size=4), lambda: _has_score(world))
    with world.sessions() as s:
        row = s.query(Score).filter_by(job_id=job).one()

    answer = client.get(f"/api/v1/jobs/{job}", headers=world.auth)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["status"] == "done" and body["pipeline"] == "mouse" and body["error"] is None
    assert body["result"]["job_id"] == job
    assert body["result"]["session_id"] == world.sids[0]
    assert body["result"]["score"] == pytest.approx(row.score)
    assert body["result"]["untrained"] is True

    assert client.get(f"/api/v1/jobs/{job}", headers=world.other_auth).status_code == 404
    assert client.get(f"/api/v1/jobs/{job}").status_code == 401
    wrong = {"Authorization": world.auth["Authorization"] + "x"}
    assert client.get(f"/api/v1/jobs/{job}", headers=wrong).json()["error"] == "unauthorized"


def _has_score(world: World) -> bool:
    with world.sessions() as s:
        return s.query(Score).count() > 0


def test_queued_job_is_reported_queued_and_unknown_jobs_404(
    world: World, client: TestClient, redis_url: str
) -> None:
    async def submit() -> str:
        r = aioredis.Redis.from_url(redis_url)
        try:
            await jobs.enqueue(r, "mouse", {"session_id": world.sids[0]})
            job_id = await jobs.enqueue(r, "mouse", {"session_id": world.sids[1]})
            await jobs.enqueue(r, "mouse", {"session_id": world.sids[2]})
            return job_id
        finally:
            await r.aclose()

    job = asyncio.run(submit())
    body = client.get(f"/api/v1/jobs/{job}", headers=world.auth).json()
    assert body == {
        "job_id": job,
        "pipeline": "mouse",
        "status": "queued",
        "result": None,
        "error": None,
        "attempts": 0,
    }
    assert client.get(f"/api/v1/jobs/{job}", headers=world.other_auth).status_code == 404
    unknown = client.get("/api/v1/jobs/mouse:0123456789abcdef", headers=world.auth)
    assert unknown.status_code == 404 and unknown.json()["error"] == "unknown_job"


def _pump_card_and_clip(world: World) -> tuple[int, int]:
    """A pump card and an audio clip of the first site ("shop")."""
    with world.sessions() as s, s.begin():
        site_id = s.query(Site.id).filter_by(name="shop").scalar()
        card = PumpCard(site_id=site_id, card_id="c1", n_points=3, points=[[0, 0], [1, 1]])
        clip = AudioClip(
            site_id=site_id, name="a.wav", path="a.wav", sample_rate=2000, duration_s=1
        )
        s.add_all([card, clip])
        s.flush()
        return card.id, clip.id


def test_pump_and_whale_jobs_show_only_to_the_site_owning_the_card_or_clip(
    world: World, client: TestClient, redis_url: str
) -> None:
    card_pk, clip_id = _pump_card_and_clip(world)

    async def submit() -> list[str]:
        r = aioredis.Redis.from_url(redis_url)
        try:
            return [
                await jobs.enqueue(r, "pump", {"card_pk": str(card_pk)}),
                await jobs.enqueue(r, "whale", {"clip_id": str(clip_id)}),
                await jobs.enqueue(r, "whale", {"clip_id": "999999"}),  # no such clip
            ]
        finally:
            await r.aclose()

    pump_job, whale_job, orphan = asyncio.run(submit())
    for job in (pump_job, whale_job):
        assert client.get(f"/api/v1/jobs/{job}", headers=world.auth).json()["status"] == "queued"
        assert client.get(f"/api/v1/jobs/{job}", headers=world.other_auth).status_code == 404
    # a job whose subject is gone belongs to no site: only an admin may look at it
    assert client.get(f"/api/v1/jobs/{orphan}", headers=world.auth).status_code == 404

    with world.sessions() as s, s.begin():
        s.add(PumpDiagnosis(job_id="pump:done1", card_pk=card_pk, mode="normal", confidence=0.9))
    done = client.get("/api/v1/jobs/pump:done1", headers=world.auth).json()
    assert done["status"] == "done" and done["result"]["card_pk"] == card_pk
    assert client.get("/api/v1/jobs/pump:done1", headers=world.other_auth).status_code == 404


def test_failed_job_shows_its_error_briefly_to_sites_and_fully_to_admins(
    world: World, client: TestClient, redis_client: redis.Redis, redis_url: str
) -> None:
    job = enqueue(redis_client, world.sids[0], np.random.default_rng(21), mode="invalid")
    stream = keys.jobs_stream(NAME)
    run_worker(redis_url, world.sessions, WorkerConfig(), lambda: redis_client.xlen(stream) == 0)

    body = client.get(f"/api/v1/jobs/{job}", headers=world.auth).json()
    assert body["status"] == "failed" and body["attempts"] == 1
    assert body["error"] == "InvalidSession: [probe_invalid] probe job marked invalid"
    assert client.get(f"/api/v1/jobs/{job}", headers=world.other_auth).status_code == 404

    _log_in_admin(client)
    full = client.get(f"/api/v1/jobs/{job}").json()
    assert full["status"] == "failed" and "Traceback" in full["error"]


def test_metrics_show_queues_dead_letters_and_worker_processes(
    world: World, client: TestClient, redis_client: redis.Redis
) -> None:
    for _ in range(3):
        redis_client.xadd(keys.jobs_stream("pump"), {"job_id": f"pump:{uuid.uuid4().hex}"})
    redis_client.xadd(keys.dead_letter_stream("whale"), {"job_id": "whale:x", "error": "boom"})
    # A worker process writes its metrics where the server reads them (multiprocess mode).
    directory = world.settings.data_dir / "metrics"
    code = (
        "import sys; from pathlib import Path; from scoring import metrics as m; "
        "m.enable_multiprocess(Path(sys.argv[1])); w = m.WorkerMetrics.create(None); "
        "w.jobs.labels('pump', 'done').inc(5); w.score_seconds.labels('pump').observe(0.02)"
    )
    subprocess.run([sys.executable, "-c", code, str(directory)], cwd=ROOT, check=True)

    text = client.get("/metrics").text
    assert 'trailguard_queue_depth{pipeline="pump"} 3.0' in text
    assert 'trailguard_queue_depth{pipeline="mouse"} 0.0' in text
    assert 'trailguard_dead_letter_depth{pipeline="whale"} 1.0' in text
    assert "trailguard_redis_up 1.0" in text
    assert 'trailguard_jobs_total{outcome="done",pipeline="pump"} 5.0' in text
    assert 'trailguard_score_seconds_count{pipeline="pump"} 1.0' in text
