"""Pre-scoring (scoring/prescore.py): live pages' complete windows are scored during the visit,
so a decision renders only the tail. Real Redis, real database, pages through /collect, the
app's own pre-scorer (its ticks called directly here, except in the lifespan test)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from starlette.testclient import TestClient
from test_decision_support import human_path, move_frames, train_tiny_models
from test_decisions_api import Env, _env

from renderer.mouse import sanitize
from scoring import decisions, keys, prescore, session_store, window_store
from scoring.mouse.data import Preprocessing
from scoring.mouse.inference import MouseScorer
from scoring.mouse.live import live_bounds
from scoring.prescore import Prescorer, complete_windows
from server.app import create_app
from server.settings import load_settings


@pytest.fixture
def env(tmp_path: Path, migrated_database_url: str, redis_url: str) -> Iterator[Env]:
    """SQLite and PostgreSQL; the background pre-scorer off (ticks are called by the test)."""
    yield from _env(tmp_path, migrated_database_url, redis_url)


@pytest.fixture
def quick(tmp_path: Path, sqlite_url: str, redis_url: str) -> Iterator[Env]:
    yield from _env(tmp_path, sqlite_url, redis_url)


def _prescorer(env: Env, windows_per_s: int) -> Prescorer:
    p: Prescorer = env.client.app.state.prescorer  # type: ignore[attr-defined]
    p.windows_per_s = windows_per_s
    return p


def _tick(env: Env, p: Prescorer) -> int:
    """One tick on the app's own event loop (its locks and pool belong to that loop)."""
    assert env.client.portal is not None
    return int(env.client.portal.call(p.tick))


def _scorer(env: Env) -> MouseScorer:
    return env.client.app.state.decisions.choose_model(None).scorer.scorer  # type: ignore[attr-defined, no-any-return]


def _page(env: Env, account: str, n: int, seed: int) -> str:
    return env.send("shop", account, move_frames(human_path(n, seed=seed)))


def test_a_decision_after_prescoring_renders_only_the_tail(env: Env, redis_url: str) -> None:
    env.add_account("shop", "alice")
    env.train(["alice", "bob"])
    sid = _page(env, "alice", 2400, seed=7)
    p = _prescorer(env, 1000)
    rendered = _tick(env, p)
    scorer = _scorer(env)
    assert rendered >= 2 and len(scorer.window_cache) == rendered
    assert _tick(env, p) == 0  # nothing grew: nothing due, nothing rendered again
    answer = env.decide({"session_id": sid, "action": "checkout"}).json()
    details = env.details(answer["decision_id"])
    # every complete window came from the cache: only the last (still open) one was rendered
    assert details["windows"] == rendered + 1 and details["windows_rendered"] == 1
    assert answer["reasons"][-1] == "account_model"
    # the cache never changes a score: a scorer without one gives the same
    data = asyncio.run(_read(redis_url, sid))
    fresh = MouseScorer(env.sessions(), env.model_dir)
    risk, _windows = fresh.score_events(data.events, data.viewport, "alice")
    assert answer["score"] == pytest.approx(risk, abs=1e-6)


def test_prescoring_scores_complete_windows_only(quick: Env) -> None:
    quick.train(["alice", "bob"])
    sid = _page(quick, "", 1400, seed=3)  # an anonymous page: the group model's
    p = _prescorer(quick, 1000)
    rendered = _tick(quick, p)
    answer = quick.decide({"session_id": sid, "action": "login"}).json()
    details = quick.details(answer["decision_id"])
    assert rendered == details["windows"] - 1 >= 1 and details["windows_rendered"] == 1
    assert p.stats.windows == rendered and p.stats.errors == 0 and p.stats.backlog == 0


def test_the_budget_is_respected_and_the_rest_comes_next_tick(quick: Env) -> None:
    quick.train(["alice", "bob"])
    for seed in (1, 2):
        _page(quick, "", 2400, seed=seed)
    p = _prescorer(quick, 3)
    assert _tick(quick, p) == 3 and p.stats.backlog >= 1  # 3 of about 10 complete windows
    total = 3
    for _ in range(10):
        step = _tick(quick, p)
        assert step <= 3
        total += step
    assert total == len(_scorer(quick).window_cache) >= 8 and p.stats.backlog == 0


def test_only_pages_touched_since_last_looked_at_are_read_again(quick: Env) -> None:
    # with hundreds of live pages, reading every page's count every tick was a tenth of the
    # server's CPU; a page that has not moved is left alone until the collector touches it
    quick.train(["alice", "bob"])
    frames = move_frames(human_path(2400, seed=5))
    half = len(frames) // 2
    sid = quick.send("shop", "", frames[:half])
    still = _page(quick, "", 1400, seed=6)
    p = _prescorer(quick, 1000)
    first = _tick(quick, p)
    assert first >= 1 and p.stats.count_reads == 2
    reads = p.stats.count_reads
    assert _tick(quick, p) == 0 and p.stats.count_reads - reads == 2  # done: checked once more
    reads = p.stats.count_reads
    assert _tick(quick, p) == 0 and p.stats.count_reads == reads  # then not read at all
    quick.send("shop", "", frames[half:], sid=sid)  # the same page resumes and grows
    p.ctx.directory.refreshed = -1e9  # its next tick reads the live set again
    more = _tick(quick, p)
    assert more >= 1 and p.stats.count_reads == reads + 1  # only the page that moved
    assert still in p.checked and sid in p.done


def test_pages_no_model_would_score_are_not_read(quick: Env) -> None:
    # no model trained: after the chooser said so once, thousands of streaming pages cost the
    # pre-scorer no count reads (those reads had held the collector's event loop)
    frames = move_frames(human_path(2400, seed=8))
    half = len(frames) // 2
    sid = quick.send("shop", "", frames[:half])
    p = _prescorer(quick, 1000)
    assert _tick(quick, p) == 0 and p.stats.count_reads == 1  # read, and the chooser asked
    quick.send("shop", "", frames[half:], sid=sid)  # the page grows
    p.ctx.directory.refreshed = -1e9
    assert _tick(quick, p) == 0 and p.stats.count_reads == 1  # not read again
    p.scorers.clear()  # the chooser's answer is old (MODEL_RECHECK_S): asked again
    assert _tick(quick, p) == 0 and p.stats.count_reads == 2


def test_zero_disables_prescoring(quick: Env) -> None:
    assert load_settings({"TRAILGUARD_PRESCORE_WINDOWS_PER_S": "0"}).prescore_windows_per_s == 0
    assert load_settings({}).prescore_windows_per_s > 0
    quick.train(["alice", "bob"])
    sid = _page(quick, "", 1400, seed=3)
    p = _prescorer(quick, 0)
    assert _tick(quick, p) == 0 and p.stats.ticks == 0
    details = quick.details(
        quick.decide({"session_id": sid, "action": "login"}).json()["decision_id"]
    )
    assert details["windows_rendered"] == details["windows"] >= 2  # nothing was pre-scored


def test_a_tick_waits_while_decisions_wait_for_a_scoring_slot(quick: Env) -> None:
    quick.train(["alice", "bob"])
    _page(quick, "", 1400, seed=3)
    p = _prescorer(quick, 1000)
    p.ctx.waiting = 1
    assert _tick(quick, p) == 0 and p.stats.ticks_skipped == 1
    p.ctx.waiting = 0
    assert _tick(quick, p) >= 1


def test_a_failing_page_does_not_stop_the_others(
    quick: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    quick.train(["alice", "bob"])
    bad = _page(quick, "", 1400, seed=3)
    good = _page(quick, "", 1400, seed=4)
    real = prescore.snapshot

    async def broken(redis: Any, sid: str) -> Any:
        if sid == bad:
            raise RuntimeError("a page that cannot be read")
        return await real(redis, sid)

    monkeypatch.setattr(prescore, "snapshot", broken)
    p = _prescorer(quick, 1000)
    assert _tick(quick, p) >= 1 and p.stats.errors == 1 and p.stats.pages == 1
    assert good in p.done and bad in p.done  # the bad one waits until it grows again
    assert _tick(quick, p) == 0 and p.stats.errors == 1
    # and a decision on the bad page still works: pre-scoring never touches a decision
    assert quick.decide({"session_id": bad, "action": "login"}).status_code == 200


def test_the_background_task_runs_from_the_apps_lifespan(
    tmp_path: Path, sqlite_url: str, redis_url: str
) -> None:
    for env in _env(tmp_path, sqlite_url, redis_url, prescore=100):
        env.train(["alice", "bob"])
        _page(env, "", 1400, seed=3)
        p: Prescorer = env.client.app.state.prescorer  # type: ignore[attr-defined]
        deadline = time.monotonic() + 15
        while p.stats.windows == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert p.stats.windows >= 1 and p.stats.ticks >= 1


def test_each_page_is_prescored_and_decided_on_its_own_networks_windows(
    quick: Env, redis_url: str
) -> None:
    # the group model's windows are twice the owner model's: an account's page and an
    # anonymous page each get the windows of the network that will decide on them
    quick.add_account("shop", "alice")
    sessions = quick.sessions()
    train_tiny_models(
        sessions, quick.model_dir, ["alice", "bob"], group_prep=Preprocessing(window_events=800)
    )
    sessions.kw["bind"].dispose()
    pages = {"alice": _page(quick, "alice", 2400, seed=7), "": _page(quick, "", 2400, seed=8)}
    windows = {"alice": 400, "": 800}
    p = _prescorer(quick, 1000)
    rendered = _tick(quick, p)
    live = {}
    for who, sid in pages.items():
        data = asyncio.run(_read(redis_url, sid))
        n = len(sanitize(data.events, data.viewport).events)
        live[who] = len(live_bounds(n, windows[who]))
        assert p._window_events(sid) == windows[who]  # when the page is due from now on
    assert live["alice"] >= 5 and live[""] >= 2
    assert rendered == live["alice"] - 1 + live[""] - 1  # complete windows of their own length
    for who, sid in pages.items():
        answer = quick.decide({"session_id": sid, "action": "checkout"}).json()
        details = quick.details(answer["decision_id"])
        assert details["windows"] == live[who] and details["windows_rendered"] == 1
        assert answer["reasons"][-1] == ("account_model" if who else "group_model")
    assert p._window_events("a page it has not seen") == prescore.WINDOW_EVENTS


def test_windows_scored_in_one_server_process_serve_decisions_in_another(
    quick: Env, tmp_path: Path, redis_url: str
) -> None:
    # several server processes share no memory: pre-scored windows must reach a decision
    # that lands on another process through Redis, or it renders every window again
    quick.train(["alice", "bob"])
    sid = _page(quick, "", 2400, seed=9)
    rendered = _tick(quick, _prescorer(quick, 1000))
    stored = redis.Redis.from_url(redis_url).hgetall(keys.session_windows(sid))
    assert rendered >= 1 and len(stored) == rendered
    settings = load_settings(
        {},
        database_url=quick.db_url,
        redis_url=redis_url,
        data_dir=tmp_path / "other",
        model_dir=quick.model_dir,
        prescore_windows_per_s=0,
    )
    with TestClient(create_app(settings)) as other_client:
        other = Env(other_client, quick.db_url, quick.sites, quick.model_dir)
        answer = other.decide({"session_id": sid, "action": "login"}).json()
        details = other.details(answer["decision_id"])
    assert details["windows"] == rendered + 1 and details["windows_rendered"] == 1
    # the same answer as the process that pre-scored it, which renders its tail itself
    again = quick.decide({"session_id": sid, "action": "login"}).json()
    assert again["score"] == pytest.approx(answer["score"], abs=1e-6)
    # the stored outputs are the loaded models' own: a field names them, then the network
    tag = window_store.models_tag(decisions._loaded_ids(_scorer(quick)))
    assert all(f.startswith(tag.encode() + b":") for f in stored)


async def _read(redis_url: str, sid: str) -> session_store.SessionData:
    r = aioredis.Redis.from_url(redis_url)
    try:
        return await session_store.read_session(r, sid)
    finally:
        await r.aclose()


def test_complete_windows_are_all_but_the_last_live_window() -> None:
    # the due rule counts windows that can no longer change, so a page that ends within one
    # window's worth of samples of its last pre-scoring still gets its last complete window
    for n in range(1, 2000, 7):
        assert complete_windows(n, 400) == len(live_bounds(n, 400)) - 1
    assert complete_windows(3600, 400) == 8 and complete_windows(3866, 400) == 9
