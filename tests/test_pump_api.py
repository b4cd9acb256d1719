"""The pump JSON API over the real app: site auth, JSON and CSV submission, jobs, diagnoses."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry
from sqlalchemy import func, select
from starlette.testclient import TestClient

from scoring import keys
from scoring.database import make_engine, make_sessionmaker
from scoring.metrics import WorkerMetrics
from scoring.pipelines.base import Context
from scoring.pipelines.pump import PumpPipeline
from scoring.pump import synth
from scoring.schema import PumpCard, PumpDiagnosis
from scoring.worker import Worker, WorkerConfig
from server.app import create_app
from server.settings import Settings, load_settings
from server.sites import create_site

FIELD = Path(__file__).resolve().parents[2] / "shared/data/pump_field_cards/demo-dataset.csv"


@pytest.fixture
def app_settings(tmp_path: Path, migrated_database_url: str, redis_url: str) -> Settings:
    return load_settings(
        {},
        database_url=migrated_database_url,
        redis_url=redis_url,
        data_dir=tmp_path / "var",
        model_dir=tmp_path / "var" / "models",
        secret_key="pump-test-secret",
    )


@pytest.fixture
def auth(app_settings: Settings) -> dict[str, str]:
    sessions = make_sessionmaker(make_engine(app_settings.database_url))
    with sessions() as session, session.begin():
        new = create_site(session, "Oilfield ops", [])
        token = f"{new.site.key}.{new.secret}"
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def client(app_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(app_settings)) as c:
        yield c


def _card_json(card_id: str, mode: str = "gas_interference", seed: int = 0) -> dict:
    card = synth.synth_card(np.random.default_rng(seed), mode, card_id=card_id)
    return {"card_id": card_id, "position": card.position.tolist(), "load": card.load.tolist()}


def _jobs(redis_url: str) -> list[dict[bytes, bytes]]:
    client = redis.Redis.from_url(redis_url)
    try:
        return [fields for _, fields in client.xrange(keys.jobs_stream("pump"))]
    finally:
        client.close()


def _diagnosed(settings: Settings) -> int:
    with make_sessionmaker(make_engine(settings.database_url))() as session:
        return int(session.scalar(select(func.count()).select_from(PumpDiagnosis)) or 0)


def _run_worker(settings: Settings, until: Callable[[], bool]) -> None:
    """The real worker loop with the pump pipeline, in process, until ``until()`` holds."""

    async def main() -> None:
        client = aioredis.Redis.from_url(settings.redis_url or "")
        sessions = make_sessionmaker(make_engine(settings.database_url))
        ctx = Context(sessions, client, settings.model_dir, settings.data_dir)
        metrics = WorkerMetrics.create(CollectorRegistry())
        stop = asyncio.Event()
        worker = Worker([PumpPipeline(ctx)], ctx, WorkerConfig(batch_size=4), metrics)
        task = asyncio.create_task(worker.run(stop))
        deadline = time.monotonic() + 120
        while not await asyncio.to_thread(until) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        stop.set()
        await asyncio.wait_for(task, 60)
        await client.aclose()

    asyncio.run(main())


def _count(settings: Settings) -> int:
    with make_sessionmaker(make_engine(settings.database_url))() as session:
        return int(session.scalar(select(func.count()).select_from(PumpCard)) or 0)


def test_submit_json_then_worker_diagnoses_and_fetch(
    client: TestClient, auth: dict[str, str], app_settings: Settings
) -> None:
    body = {"well_id": "W-12", "cards": [_card_json("a"), _card_json("b", "rod_part", 1)]}
    response = client.post("/api/pump/cards", json=body, headers=auth)
    assert response.status_code == 202, response.text
    stored = response.json()["cards"]
    assert [c["card_id"] for c in stored] == ["a", "b"]
    jobs = _jobs(app_settings.redis_url or "")
    assert [j[b"card_pk"].decode() for j in jobs] == [str(c["card_pk"]) for c in stored]
    assert [j[b"job_id"].decode() for j in jobs] == [c["job_id"] for c in stored]

    pending = client.get(f"/api/pump/cards/{stored[0]['card_pk']}", headers=auth).json()
    assert pending["status"] == "pending" and pending["diagnosis"] is None

    _run_worker(app_settings, lambda: _diagnosed(app_settings) == 2)
    done = client.get(f"/api/pump/cards/{stored[0]['card_pk']}", headers=auth).json()
    assert done["status"] == "done" and done["well_id"] == "W-12"
    assert done["diagnosis"]["untrained"] is True
    assert done["diagnosis"]["mode"] in synth.MODES
    well = client.get("/api/pump/wells/W-12/diagnoses", headers=auth).json()
    assert [c["status"] for c in well["cards"]] == ["done", "done"]
    assert well["cards"][1]["diagnosis"]["job_id"] == stored[1]["job_id"]

    again = client.post(f"/api/pump/cards/{stored[1]['card_pk']}/diagnose", headers=auth)
    assert again.status_code == 202
    # the worker deletes the jobs it has done: only the new one waits
    assert [j[b"job_id"].decode() for j in _jobs(app_settings.redis_url or "")] == [
        again.json()["job_id"]
    ]


def test_csv_upload_of_the_real_field_cards(
    client: TestClient, auth: dict[str, str], app_settings: Settings
) -> None:
    if not FIELD.exists():
        pytest.skip(f"field cards not at {FIELD}")
    response = client.post(
        "/api/pump/cards.csv?well_id=demo",
        content=FIELD.read_bytes(),
        headers={**auth, "Content-Type": "text/csv"},
    )
    assert response.status_code == 202, response.text
    assert len(response.json()["cards"]) == 7
    assert len(_jobs(app_settings.redis_url or "")) == 7


def test_multipart_two_column_upload(client: TestClient, auth: dict[str, str]) -> None:
    t = np.linspace(0, 2 * np.pi, 90, endpoint=False)
    text = "position,load\n" + "\n".join(
        f"{(1 - np.cos(a)) * 40:.3f},{5000 + 900 * np.sin(a):.1f}" for a in t
    )
    response = client.post(
        "/api/pump/cards.csv?well_id=W2&card_id=morning",
        files={"file": ("card.csv", text.encode(), "text/csv")},
        headers=auth,
    )
    assert response.status_code == 202, response.text
    assert response.json()["cards"][0]["card_id"] == "morning"


def test_bad_input_is_refused_and_loses_nothing(
    client: TestClient, auth: dict[str, str], app_settings: Settings
) -> None:
    good = _card_json("ok")
    nan = {**_card_json("nan"), "load": [float("nan"), *_card_json("nan")["load"][1:]]}
    cases = [
        (
            {"cards": [good, {"card_id": "short", "position": [1, 2], "load": [3, 4]}]},
            "too_few_points",
        ),
        ({"cards": [good, {**good, "load": [1.0] * len(good["load"])}]}, "zero_range"),
        ({"cards": [good, good]}, "duplicate_card"),
        ({"cards": []}, "bad_json"),
    ]
    for body, code in cases:
        response = client.post("/api/pump/cards", json=body, headers=auth)
        assert response.status_code == 400, (code, response.text)
        assert response.json()["error"] == code
    # NaN is not JSON: sent as text, Python's json accepts it, the validator does not
    response = client.post("/api/pump/cards", content=json.dumps({"cards": [nan]}), headers=auth)
    assert response.status_code == 400 and response.json()["error"] == "not_finite"
    response = client.post("/api/pump/cards", content=b"{not json", headers=auth)
    assert response.json()["error"] == "bad_json"
    bad_csv = client.post("/api/pump/cards.csv", content=b"position,load\n1,2\n", headers=auth)
    assert bad_csv.status_code == 400 and bad_csv.json()["error"] == "too_few_points"
    assert _count(app_settings) == 0 and _jobs(app_settings.redis_url or "") == []

    assert client.post("/api/pump/cards", json=good, headers=auth).status_code == 202
    dup = client.post("/api/pump/cards", json={"cards": [_card_json("new"), good]}, headers=auth)
    assert dup.status_code == 409 and dup.json()["error"] == "card_exists"
    assert _count(app_settings) == 1  # "new" was not stored either


def test_site_secret_is_required(client: TestClient, auth: dict[str, str]) -> None:
    key = auth["Authorization"].split(" ")[1].split(".")[0]
    for headers in ({}, {"Authorization": f"Bearer {key}.wrong"}, {"Authorization": "Basic x"}):
        response = client.post("/api/pump/cards", json=_card_json("a"), headers=headers)
        assert response.status_code == 401 and response.json()["error"] == "access_denied"
        assert client.get("/api/pump/cards/1", headers=headers).status_code == 401
    assert client.get("/api/pump/cards/424242", headers=auth).status_code == 404


def test_queue_outage_keeps_the_cards_and_says_so(
    app_settings: Settings, auth: dict[str, str]
) -> None:
    # nothing listens on port 1: every enqueue fails after the cards are committed
    with TestClient(create_app(app_settings, redis_url="redis://127.0.0.1:1/0")) as down:
        response = down.post("/api/pump/cards", json=_card_json("kept"), headers=auth)
    assert response.status_code == 503, response.text
    body = response.json()
    assert body["error"] == "queue_unavailable"
    assert body["cards"][0]["job_id"] is None and body["cards"][0]["card_id"] == "kept"
    assert _count(app_settings) == 1


def _other_site(settings: Settings) -> dict[str, str]:
    sessions = make_sessionmaker(make_engine(settings.database_url))
    with sessions() as session, session.begin():
        new = create_site(session, "Another operator", [])
        return {"Authorization": f"Bearer {new.site.key}.{new.secret}"}


def test_a_site_sees_and_touches_only_its_own_wells(
    client: TestClient, auth: dict[str, str], app_settings: Settings
) -> None:
    other = _other_site(app_settings)
    mine = client.post(
        "/api/pump/cards", json={"well_id": "W-7", "cards": [_card_json("a")]}, headers=auth
    )
    assert mine.status_code == 202, mine.text
    pk = mine.json()["cards"][0]["card_pk"]
    before = _jobs(app_settings.redis_url or "")

    # another site: the well and the card look exactly like ones that do not exist
    missing_card = client.get("/api/pump/cards/424242", headers=other)
    for response in (
        client.get("/api/pump/wells/W-7/diagnoses", headers=other),
        client.get(f"/api/pump/cards/{pk}", headers=other),
        client.post(f"/api/pump/cards/{pk}/diagnose", headers=other),
    ):
        assert response.status_code == 404 and response.json()["error"] == "not_found"
    assert missing_card.json()["detail"] == "no pump card 424242"
    assert client.get(f"/api/pump/cards/{pk}", headers=other).json()["detail"] == (
        f"no pump card {pk}"
    )
    assert _jobs(app_settings.redis_url or "") == before  # nothing queued for it

    # uploading to the same well id makes the other site a well of its own, even with the same
    # card id; the first site's well is untouched
    theirs = client.post(
        "/api/pump/cards.csv?well_id=W-7&card_id=a",
        content=_two_column_csv().encode(),
        headers={**other, "Content-Type": "text/csv"},
    )
    assert theirs.status_code == 202, theirs.text
    [their_pk] = [c["card_pk"] for c in theirs.json()["cards"]]
    assert their_pk != pk
    own = client.get("/api/pump/wells/W-7/diagnoses", headers=auth).json()
    assert [c["card_pk"] for c in own["cards"]] == [pk]
    listed = client.get("/api/pump/wells/W-7/diagnoses", headers=other).json()
    assert [c["card_pk"] for c in listed["cards"]] == [their_pk]
    assert client.get(f"/api/pump/cards/{their_pk}", headers=auth).status_code == 404
    # within one site the (well, card) pair stays unique
    again = client.post("/api/pump/cards", json={"well_id": "W-7", **_card_json("a")}, headers=auth)
    assert again.status_code == 409


def _two_column_csv() -> str:
    t = np.linspace(0, 2 * np.pi, 90, endpoint=False)
    return "position,load\n" + "\n".join(
        f"{(1 - np.cos(a)) * 40:.3f},{5000 + 900 * np.sin(a):.1f}" for a in t
    )
