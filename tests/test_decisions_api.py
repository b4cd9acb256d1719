"""``POST /api/v1/decisions`` over HTTP, with pages collected through the real /collect socket,
against real Redis and a real database (SQLite, and PostgreSQL when configured)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from sqlalchemy import func, select
from starlette.testclient import TestClient
from test_decision_support import human_path, move_frames, train_tiny_models

from scoring import decisions, keys, session_store
from scoring.database import make_engine, make_sessionmaker
from scoring.mouse.inference import MouseScorer
from scoring.schema import Account, Alert, CaseEvent, Decision, ReviewCase, Site
from server import collect, wire
from server.app import create_app
from server.settings import load_settings
from server.sites import create_site

ORIGIN = "https://shop.example"
QUIET = collect.CollectorConfig(sweep_every_s=3600, grace_s=600, idle_s=3600)
URL = "/api/v1/decisions"


@dataclass
class Env:
    client: TestClient
    db_url: str
    sites: dict[str, tuple[str, str]]  # name → (key, secret)
    model_dir: Path

    def auth(self, site: str = "shop", secret: str | None = None) -> dict[str, str]:
        key, real = self.sites[site]
        return {"authorization": f"Bearer {key}.{secret or real}"}

    def decide(self, body: dict[str, Any], site: str = "shop", **kw: Any) -> Any:
        return self.client.post(URL, json=body, headers=kw.get("headers") or self.auth(site))

    def set_policy(self, site: str, policy: dict[str, Any]) -> None:
        engine = make_engine(self.db_url)
        with make_sessionmaker(engine)() as s:
            row = s.scalars(select(Site).where(Site.key == self.sites[site][0])).one()
            row.policy = policy
            s.commit()
        engine.dispose()

    def count(self, model: Any, *where: Any) -> int:
        engine = make_engine(self.db_url)
        with make_sessionmaker(engine)() as s:
            n = s.scalar(select(func.count()).select_from(model).where(*where)) or 0
        engine.dispose()
        return int(n)

    def details(self, decision_id: int) -> dict[str, Any]:
        engine = make_engine(self.db_url)
        with make_sessionmaker(engine)() as s:
            row = s.get(Decision, decision_id)
            assert row is not None
            out = dict(row.details)
        engine.dispose()
        return out

    def sessions(self) -> Any:
        return make_sessionmaker(make_engine(self.db_url))

    def add_account(self, site: str, external_id: str) -> None:
        """An account the site already had (its row exists, as after an earlier visit)."""
        engine = make_engine(self.db_url)
        with make_sessionmaker(engine)() as s:
            row = s.scalars(select(Site).where(Site.key == self.sites[site][0])).one()
            s.add(Account(site_id=row.id, external_id=external_id))
            s.commit()
        engine.dispose()

    def train(self, accounts: list[str]) -> None:
        sessions = self.sessions()
        train_tiny_models(sessions, self.model_dir, accounts)
        sessions.kw["bind"].dispose()

    def send(self, site: str, account: str, frames: list[bytes], sid: str | None = None) -> str:
        """Frames of one live page session sent through the real /collect socket."""
        sid = sid or secrets.token_hex(16)
        hello = wire.Hello(sid, self.sites[site][0], "/cart", (1280, 720), 1.0, "mouse", account, 1)
        with self.client.websocket_connect("/collect", headers={"origin": ORIGIN}) as ws:
            ws.send_bytes(wire.encode_hello(hello))
            for frame in frames:
                ws.send_bytes(frame)
                wire.decode_ack(ws.receive_bytes())
        return sid

    def collect(self, site: str, account: str = "", frames: int = 2, n: int = 20) -> str:
        """A live page session of ``site`` with ``frames × n`` move samples, via /collect."""
        sid = secrets.token_hex(16)
        hello = wire.Hello(sid, self.sites[site][0], "/cart", (1280, 720), 1.0, "mouse", account, 1)
        with self.client.websocket_connect("/collect", headers={"origin": ORIGIN}) as ws:
            ws.send_bytes(wire.encode_hello(hello))
            for seq in range(frames):
                path = [(seq * n * 80 + i * 80, 100 + i, 200 + seq) for i in range(n)]
                ws.send_bytes(wire.encode_moves(seq, path))
                assert wire.decode_ack(ws.receive_bytes()) == seq
        return sid


def _env(tmp_path: Path, db_url: str, redis_url: str, prescore: int = 0) -> Iterator[Env]:
    """``prescore``: TRAILGUARD_PRESCORE_WINDOWS_PER_S; off by default, so that what a
    decision renders does not depend on when the background pre-scorer last ran."""
    engine = make_engine(db_url)
    with make_sessionmaker(engine)() as s:
        shop = create_site(s, "Shop", [ORIGIN])
        other = create_site(s, "Other", [ORIGIN])
        s.commit()
        sites = {"shop": (shop.site.key, shop.secret), "other": (other.site.key, other.secret)}
    engine.dispose()
    settings = load_settings(
        {},
        database_url=db_url,
        redis_url=redis_url,
        data_dir=tmp_path / "var",
        model_dir=tmp_path / "models",
        prescore_windows_per_s=prescore,
    )
    app = create_app(settings)
    app.state.collector_config = QUIET
    with TestClient(app) as client:
        yield Env(client, db_url, sites, settings.model_dir)


@pytest.fixture
def env(tmp_path: Path, migrated_database_url: str, redis_url: str) -> Iterator[Env]:
    """SQLite and PostgreSQL: for what reads or writes the database."""
    yield from _env(tmp_path, migrated_database_url, redis_url)


@pytest.fixture
def quick(tmp_path: Path, sqlite_url: str, redis_url: str) -> Iterator[Env]:
    """SQLite only: for rules the database plays no part in."""
    yield from _env(tmp_path, sqlite_url, redis_url)


def test_too_little_movement_answers_the_sites_default_without_a_score(env: Env) -> None:
    sid = env.collect("shop", account="alice", frames=2, n=20)
    r = env.decide({"session_id": sid, "action": "checkout"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["decision"] == "allow" and body["reasons"] == ["insufficient_data"]
    assert (body["score"], body["threshold"], body["model_version"]) == (None, None, None)
    assert body["samples_used"] == 40 and body["sessions"] == [sid]
    # the site chose "review" for thin evidence: a case is opened for the page
    env.set_policy("shop", {"insufficient_data": "review"})
    body = env.decide({"account_id": "alice", "action": "login"}).json()
    assert (body["decision"], body["reasons"], body["samples_used"]) == (
        "review",
        ["insufficient_data"],
        40,
    )
    assert env.count(ReviewCase, ReviewCase.subject_id == sid) == 1
    assert env.count(CaseEvent, CaseEvent.kind == "decision") == 1
    assert env.count(Decision) == 2


def test_wrong_or_other_sites_secret_is_refused(env: Env) -> None:
    sid = env.collect("shop")
    body = {"session_id": sid, "action": "login"}
    shop_key, shop_secret = env.sites["shop"]
    other_key, other_secret = env.sites["other"]
    for headers in [
        {},
        {"authorization": f"Bearer {shop_key}.wrong-secret"},
        {"authorization": f"Bearer {shop_key}.{other_secret}"},
        {"authorization": f"Bearer {other_key}.{shop_secret}"},
        {"authorization": f"Basic {shop_key}.{shop_secret}"},
        {"authorization": f"Bearer {shop_key}"},
    ]:
        r = env.decide(body, headers=headers or {"x-none": "1"})
        assert r.status_code == 401, (headers, r.text)
        assert r.json()["error"] == "unauthorized" and r.headers["www-authenticate"] == "Bearer"
    assert env.count(Decision) == 0
    assert env.decide(body).status_code == 200


def test_unknown_and_other_sites_sessions_and_accounts_are_404(env: Env) -> None:
    theirs = env.collect("other", account="carol")
    env.collect("shop", account="alice")
    cases = [
        {"session_id": secrets.token_hex(16), "action": "login"},
        {"session_id": theirs, "action": "login"},
        {"account_id": "carol", "action": "login"},
        {"account_id": "nobody", "action": "login"},
    ]
    answers = [env.decide(body) for body in cases]
    assert [a.status_code for a in answers] == [404] * 4
    assert {a.json()["error"] for a in answers} == {"not_found"}
    assert env.count(Decision) == 0
    # the other site itself gets its answer
    assert env.decide({"account_id": "carol", "action": "login"}, site="other").status_code == 200


def test_a_session_of_another_account_is_refused(env: Env) -> None:
    sid = env.collect("shop", account="alice")
    r = env.decide({"session_id": sid, "account_id": "mallory", "action": "change_password"})
    assert r.status_code == 403 and r.json()["error"] == "account_mismatch"
    assert env.count(Decision) == 0


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"not json", "bad_json"),
        (b"[1]", "bad_body"),
        (b'{"action": "login"}', "missing_subject"),
        (b'{"session_id": "x", "action": "login"}', "bad_session_id"),
        (b'{"account_id": "a", "action": "DROP TABLE"}', "bad_action"),
        (b'{"account_id": "a", "action": "login", "extra": 1}', "unknown_field"),
        (b'{"account_id": "' + b"a" * 5000 + b'", "action": "login"}', "body_too_large"),
    ],
)
def test_malformed_bodies_get_a_precise_400(quick: Env, raw: bytes, code: str) -> None:
    r = quick.client.post(URL, content=raw, headers=quick.auth())
    assert r.status_code == 400 and r.json()["error"] == code
    assert quick.count(Decision) == 0


def test_a_burst_is_rate_limited_per_site(env: Env, redis_client: redis.Redis) -> None:
    env.set_policy("shop", {"rate_limit": {"per_second": 0.5, "burst": 5}})
    sid = env.collect("shop")
    statuses = [env.decide({"session_id": sid, "action": "login"}).status_code for _ in range(8)]
    assert statuses == [200] * 5 + [429] * 3
    r = env.decide({"session_id": sid, "action": "login"})
    assert r.status_code == 429 and r.json()["error"] == "rate_limited"
    assert 1 <= int(r.headers["retry-after"]) <= 2
    assert env.count(Decision) == 5
    # the other site is not slowed down by this one's burst
    theirs = env.collect("other")
    assert env.decide({"session_id": theirs, "action": "login"}, site="other").status_code == 200
    # wrong secrets do not drain the site's bucket (they are refused before it)
    assert redis_client.exists(keys.decision_rate(999_999)) == 0


def _in_redis(redis_client: redis.Redis, sid: str) -> int:
    return int(redis_client.hget(keys.session_meta(sid), "n_samples") or 0)  # type: ignore[arg-type]


def test_a_scored_decision_uses_the_samples_so_far_and_the_accounts_model(
    env: Env, redis_client: redis.Redis, redis_url: str
) -> None:
    env.add_account("shop", "alice")
    env.train(["alice", "bob"])
    frames = move_frames(human_path(2400, seed=7))
    half = len(frames) // 2
    sid = env.send("shop", "alice", frames[:half])
    first = env.decide({"session_id": sid, "action": "checkout"}).json()
    assert first["samples_used"] == _in_redis(redis_client, sid) > 300
    assert first["reasons"][-1] == "account_model" and first["model_version"] == "tiny-owner-0"
    assert 0.0 <= first["score"] <= 1.0 and first["threshold"] in (0.5, 0.8)
    assert (
        first["decision"]
        == {0: "allow", 1: "review", 2: "deny"}[(first["score"] >= 0.5) + (first["score"] >= 0.8)]
    )
    # the visit goes on: the next answer uses the samples that arrived since
    env.send("shop", "alice", frames[half:], sid)  # the page reconnects and goes on
    second = env.decide({"account_id": "alice", "action": "checkout"}).json()
    assert second["samples_used"] == _in_redis(redis_client, sid) > first["samples_used"]
    assert second["sessions"] == [sid]
    # incremental: the windows complete at the first decision were not rendered again
    first_d, second_d = env.details(first["decision_id"]), env.details(second["decision_id"])
    assert first_d["windows_rendered"] == first_d["windows"] >= 2
    assert 0 < second_d["windows_rendered"] <= second_d["windows"] - (first_d["windows"] - 1)
    assert set(second_d["timing_ms"]) == {"visit", "samples", "model", "scoring"}
    # the score is the production scorer's on exactly those samples
    scorer = MouseScorer(env.sessions(), env.model_dir)
    data = asyncio.run(_read(redis_url, sid))
    risk, _windows = scorer.score_events(data.events, data.viewport, "alice")
    assert second["score"] == pytest.approx(risk, abs=1e-6)
    rows = env.count(Decision, Decision.samples_used == second["samples_used"])
    assert rows == 1


async def _read(redis_url: str, sid: str) -> session_store.SessionData:
    r = aioredis.Redis.from_url(redis_url)
    try:
        return await session_store.read_session(r, sid)
    finally:
        await r.aclose()


def test_review_opens_a_case_and_deny_raises_the_alert_flow(env: Env) -> None:
    env.add_account("shop", "alice")
    env.train(["alice", "bob"])
    engine = make_engine(env.db_url)
    with make_sessionmaker(engine)() as s:
        site = s.scalars(select(Site).where(Site.key == env.sites["shop"][0])).one()
        site.webhook_url = "https://shop.example/trailguard-hook"
        # every score reviews at login and denies at checkout: the site's choice to make
        site.policy = {
            "actions": {
                "login": {"review_at": 0.0, "deny_at": 1.0},
                "checkout": {"review_at": 0.0, "deny_at": 0.0},
            }
        }
        s.commit()
    engine.dispose()
    sid = env.send("shop", "alice", move_frames(human_path(1200, seed=3)))
    review = env.decide({"session_id": sid, "action": "login"}).json()
    assert review["decision"] == "review" and review["score"] is not None
    assert env.count(ReviewCase, ReviewCase.subject_id == sid) == 1
    assert env.count(Alert) == 0
    deny = env.decide({"session_id": sid, "action": "checkout"}).json()
    assert deny["decision"] == "deny" and deny["threshold"] == 0.0
    assert env.count(ReviewCase, ReviewCase.subject_id == sid) == 1  # the same open case
    assert env.count(Alert, Alert.channel == "webhook") == 1
    assert env.count(CaseEvent, CaseEvent.kind == "decision") == 2


def test_accounts_without_a_model_get_the_group_model_or_not_enrolled(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(decisions, "MODEL_RECHECK_S", 0.0)
    env.add_account("shop", "dave")
    sid = env.send("shop", "dave", move_frames(human_path(900, seed=5)))
    body = {"session_id": sid, "action": "login"}
    nothing = env.decide(body).json()  # no model trained at all yet
    assert (nothing["decision"], nothing["score"]) == ("allow", None)
    assert nothing["reasons"] == ["no_model", "not_enrolled"]
    env.train(["alice", "bob"])  # dave is not among the enrolled accounts
    group = env.decide(body).json()
    assert group["reasons"][-2:] == ["not_enrolled", "group_model"]
    assert group["model_version"] == "tiny-group-0" and 0.0 <= group["score"] <= 1.0
    env.set_policy("shop", {"not_enrolled": "review"})
    explicit = env.decide(body).json()
    assert (explicit["decision"], explicit["reasons"], explicit["score"]) == (
        "review",
        ["not_enrolled"],
        None,
    )


def test_a_broken_stored_policy_is_the_sites_problem_not_a_bad_request(quick: Env) -> None:
    quick.set_policy("shop", {"insufficient_data": "maybe"})  # by hand, around the admin page
    sid = quick.collect("shop")
    r = quick.decide({"session_id": sid, "action": "login"})
    assert r.status_code == 500 and r.json()["error"] == "site_policy_invalid"
    assert "insufficient_data" in r.json()["message"]
    assert quick.count(Decision) == 0
