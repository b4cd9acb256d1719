"""The sessions JSON API and `trailguard sessions export`, on real Redis and both databases."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
from starlette.testclient import TestClient

from scoring import keys
from scoring import session_store as store
from scoring.database import make_engine, make_sessionmaker
from scoring.schema import PageSession
from server import collect, wire
from server.app import create_app
from server.cli import main
from server.settings import load_settings
from server.sites import NewSite, create_site

ORIGIN = "https://shop.example"


def _sites(database_url: str) -> tuple[NewSite, NewSite]:
    engine = make_engine(database_url)
    try:
        with make_sessionmaker(engine)() as s:
            a = create_site(s, "A", [ORIGIN])
            b = create_site(s, "B", [ORIGIN])
            s.commit()
            return a, b
    finally:
        engine.dispose()


def _auth(site: NewSite) -> dict[str, str]:
    return {"authorization": f"Bearer {site.site.key}.{site.secret}"}


def _path(seq: int) -> list[tuple[int, int, int]]:
    return [(seq * 2400 + i * 80, 100 + i, 200 - i) for i in range(30)]


def _collect(client: TestClient, key: str, frames: int, end: bool, account: str = "") -> str:
    sid = secrets.token_hex(16)
    hello = wire.Hello(sid, key, "/p", (1440, 900), 1.0, "mouse", account, 0)
    with client.websocket_connect("/collect", headers={"origin": ORIGIN}) as ws:
        ws.send_bytes(wire.encode_hello(hello))
        for seq in range(frames):
            last = end and seq == frames - 1
            ws.send_bytes(wire.encode_moves(seq, _path(seq), end="pagehide" if last else None))
            ws.receive_bytes()
    if end:  # the server ends the session just after acknowledging the last frame
        r = redis.Redis.from_url(client.app.state.services.settings.redis_url)
        deadline = time.monotonic() + 10
        while r.hget(keys.session_meta(sid), "state") != b"ended":
            assert time.monotonic() < deadline, "the session did not end"
            time.sleep(0.02)
        r.close()
    return sid


@pytest.fixture
def setup(
    tmp_path: Path, migrated_database_url: str, redis_url: str
) -> Iterator[tuple[TestClient, NewSite, NewSite, str]]:
    a, b = _sites(migrated_database_url)
    settings = load_settings({}, database_url=migrated_database_url, redis_url=redis_url)
    app = create_app(settings)
    app.state.collector_config = collect.CollectorConfig(sweep_every_s=3600)
    with TestClient(app) as client:
        yield client, a, b, migrated_database_url


def test_listing_needs_the_site_secret(setup: tuple) -> None:
    client, a, _b, _db = setup
    assert client.get("/api/sessions").status_code == 401
    bad = {"authorization": f"Bearer {a.site.key}.not-the-secret"}
    response = client.get("/api/sessions", headers=bad)
    assert response.status_code == 401 and response.json()["error"] == "access_denied"


def test_lists_live_and_ended_sessions_of_the_calling_site_only(setup: tuple) -> None:
    client, a, b, _db = setup
    ended = _collect(client, a.site.key, 2, end=True, account="u1")
    live = _collect(client, a.site.key, 1, end=False)
    other = _collect(client, b.site.key, 1, end=True)
    listed = client.get("/api/sessions", headers=_auth(a)).json()["sessions"]
    by_id = {s["session_id"]: s for s in listed}
    assert set(by_id) == {ended, live}
    assert by_id[ended]["state"] == "ended" and by_id[ended]["user_id"] == "u1"
    assert by_id[ended]["n_samples"] == 60
    assert by_id[live]["state"] == "live" and by_id[live]["n_samples"] == 30
    only_live = client.get("/api/sessions?state=live", headers=_auth(a)).json()["sessions"]
    assert [s["session_id"] for s in only_live] == [live]
    theirs = client.get("/api/sessions", headers=_auth(b)).json()["sessions"]
    assert [s["session_id"] for s in theirs] == [other]
    assert client.get("/api/sessions?state=nope", headers=_auth(a)).status_code == 400


def test_one_session_in_the_session_file_format(setup: tuple) -> None:
    client, a, b, _db = setup
    sid = _collect(client, a.site.key, 2, end=True, account="u1")
    body = client.get(f"/api/sessions/{sid}", headers=_auth(a)).json()
    assert set(body) == {"session_id", "user_id", "viewport", "events", "label"}
    assert (body["session_id"], body["user_id"], body["viewport"]) == (sid, "u1", [1440, 900])
    want = [[t / 10, x, y, 0] for seq in (0, 1) for t, x, y in _path(seq)]
    assert body["events"] == want and body["label"] is None
    assert client.get(f"/api/sessions/{sid}", headers=_auth(b)).status_code == 404
    assert client.get("/api/sessions/" + "0" * 32, headers=_auth(a)).status_code == 404


def _archive_and_forget(db: str, r: redis.Redis, sid: str, label: str) -> None:
    """What the mouse pipeline does once scored: archive the samples, drop the Redis copy."""
    engine = make_engine(db)
    with make_sessionmaker(engine)() as s:
        row = s.get(PageSession, sid)
        assert row is not None
        events = np.array([[t / 10, x, y, 0] for seq in (0, 1) for t, x, y in _path(seq)])
        row.samples = store.archive(events)
        row.label = label
        s.commit()
    engine.dispose()
    r.delete(keys.session_samples(sid), keys.session_meta(sid), keys.session_seqs(sid))


def test_archived_sessions_are_served_and_exported(
    setup: tuple,
    redis_client: redis.Redis,
    redis_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client, a, _b, db = setup
    archived = _collect(client, a.site.key, 2, end=True, account="u1")
    unlabelled = _collect(client, a.site.key, 2, end=True, account="u2")
    live = _collect(client, a.site.key, 1, end=False)
    _archive_and_forget(db, redis_client, archived, "genuine")
    body = client.get(f"/api/sessions/{archived}", headers=_auth(a)).json()
    assert body["label"] == "genuine" and body["user_id"] == "u1" and len(body["events"]) == 60

    monkeypatch.setenv("TRAILGUARD_DATABASE_URL", db)
    monkeypatch.setenv("TRAILGUARD_REDIS_URL", redis_url)
    out = tmp_path / "all.jsonl"
    assert main(["sessions", "export", "--out", str(out)]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert {line["session_id"] for line in lines} == {archived, unlabelled, live}
    assert next(x for x in lines if x["session_id"] == archived)["events"] == body["events"]
    labelled = tmp_path / "labelled.jsonl"
    assert main(["sessions", "export", "--labelled", "--out", str(labelled)]) == 0
    (only,) = [json.loads(line) for line in labelled.read_text().splitlines()]
    assert (only["session_id"], only["label"], only["viewport"]) == (
        archived,
        "genuine",
        [1440, 900],
    )


def test_archive_round_trips_exactly_and_is_compact() -> None:
    rng = np.random.default_rng(0)
    n = 5000
    t = np.cumsum(rng.integers(50, 120, n)) / 10
    xy = np.cumsum(rng.integers(-4, 5, (n, 2)), axis=0) + 500
    codes = np.where(rng.random(n) < 0.01, 1, 0)
    events = np.column_stack([t, xy, codes]).astype(np.float64)
    raw = store.archive(events)
    assert np.array_equal(store.unarchive(raw), events)
    assert len(raw) < n * 5
    with pytest.raises(ValueError):
        store.unarchive(b"nope")
    assert store.unarchive(store.archive(np.empty((0, 4)))).shape == (0, 4)
