"""Incremental live scoring (scoring/mouse/live.py through MouseScorer.score_live) and the
directory of live pages the decision API finds a visit's pages in."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis.asyncio as aioredis
import torch
from hypothesis import given
from hypothesis import strategies as st

from renderer.mouse import sanitize
from scoring import decisions, keys
from scoring.database import make_engine, make_sessionmaker
from scoring.decisions import LiveDirectory, live_pages
from scoring.mouse import store
from scoring.mouse.data import Preprocessing
from scoring.mouse.inference import MouseScorer, fold_batch_norm
from scoring.mouse.live import live_bounds
from scoring.mouse.model import ModelConfig, build
from scoring.mouse.synth import draw_habits, generate_events
from scoring.mouse.train import GroupModel
from scoring.schema import Site

PREP = Preprocessing(size=32, window_events=300)


@given(n=st.integers(0, 5000), w=st.integers(2, 600), more=st.integers(0, 2000))
def test_live_windows_cover_the_session_and_only_the_last_ones_move(
    n: int, w: int, more: int
) -> None:
    bounds = live_bounds(n, w)
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
    full, tail = divmod(n, w)
    assert len(bounds) == max(1, full + (tail * 2 >= w))  # round(n / w), halves up
    if n >= w:
        assert all(w / 2 <= b - a < 1.5 * w for a, b in bounds)
    # the session grows: every window but the last stays as it was
    grown = live_bounds(n + more, w)
    assert grown[: len(bounds) - 1] == bounds[:-1]


def _events(n: int, seed: int = 1) -> tuple[np.ndarray, tuple[int, int]]:
    rng = np.random.default_rng(seed)
    events, viewport = generate_events(draw_habits(rng), n, rng)
    clean = sanitize(events, viewport)  # already clean: prefixes stay prefixes
    return clean.events, (int(clean.viewport[0]), int(clean.viewport[1]))


def _scorer(tmp_path: Path, sqlite_url: str) -> MouseScorer:
    sessions = make_sessionmaker(make_engine(sqlite_url))
    torch.manual_seed(0)
    net = build(ModelConfig(width=0.0625, size=32, embed_dim=8, n_out=1)).eval()
    group = GroupModel(net, PREP, threshold=0.1)
    with sessions() as s, s.begin():
        store.register(s, store.save(tmp_path, group, "g1"), group, "g1")
    return MouseScorer(sessions, tmp_path)


def test_a_growing_session_renders_only_its_new_windows(sqlite_url: str, tmp_path: Path) -> None:
    scorer = _scorer(tmp_path, sqlite_url)
    events, vp = _events(2100)
    first = scorer.score_live(events[:1000], vp)
    assert first.windows == 3 and first.rendered == 3  # nothing cached yet: cold
    again = scorer.score_live(events[:1000], vp)
    assert again == first._replace(rendered=0)  # asked again: all from the cache, same score
    grown = scorer.score_live(events, vp)
    assert grown.windows == 7 and grown.rendered == 5  # the old last window moved, 4 new
    step = np.array([[40.0, 1, 1, 0]])  # one more event 40 ms later
    later = scorer.score_live(np.vstack([events, events[-1:] + step]), vp)
    assert later.rendered == 1  # only the last window changed
    # the cache never changes a score: a scorer without one gives the same
    fresh = MouseScorer(scorer.sessions, tmp_path).score_live(events, vp)
    assert fresh.rendered == fresh.windows
    assert grown.risk == pytest.approx(fresh.risk, abs=1e-6)


def test_a_window_whose_events_changed_is_scored_again(sqlite_url: str, tmp_path: Path) -> None:
    scorer = _scorer(tmp_path, sqlite_url)
    events, vp = _events(1200)
    scorer.score_live(events, vp)
    moved = events.copy()
    moved[10, 1:3] += 25.0  # one position in the first window
    assert scorer.score_live(moved, vp).rendered == 1
    scorer.load()  # a (re)loaded model starts with an empty cache
    assert scorer.score_live(events, vp).rendered == 4


def test_on_whole_windows_the_live_score_is_the_batch_score(
    sqlite_url: str, tmp_path: Path
) -> None:
    # n a multiple of the window: both paths cut the same windows, so only rounding differs
    scorer = _scorer(tmp_path, sqlite_url)
    events, vp = _events(1200)
    live = scorer.score_live(events, vp)
    batch = scorer.assess(events, vp)
    assert live.windows == batch.n_windows == 4
    assert live.risk == pytest.approx(batch.risk, abs=1e-6)


def test_folding_batch_norm_keeps_the_networks_function() -> None:
    torch.manual_seed(3)
    net = build(ModelConfig(width=0.0625, size=32, embed_dim=8, n_out=1))
    for m in net.modules():  # statistics a trained network would have, not the identity
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    net.eval()
    x = torch.rand(5, 8, 32, 32)
    with torch.inference_mode():
        before = net(x)
        fold_batch_norm(net)
        after = net(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    assert torch.allclose(before, after, atol=1e-5)


# --- the directory of live pages ---------------------------------------------------------------


async def _live(redis: aioredis.Redis, sid: str, **fields: Any) -> None:
    await redis.hset(keys.session_meta(sid), mapping={k: str(v) for k, v in fields.items()})  # type: ignore[misc]
    await redis.zadd(keys.LIVE_SESSIONS, {sid: time.time()})


def test_the_directory_finds_what_a_direct_scan_finds(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    shop = Site(id=1, key=f"tgk_{uuid.uuid4().hex[:8]}", name="shop", secret_hash="x")
    device = {"user_agent": "UA", "client_ip": "10.0.0.1"}

    async def scenario() -> None:
        redis = aioredis.Redis.from_url(redis_url)
        await _live(redis, "alice-page-1", site_id=1, account="alice", **device)
        await _live(redis, "alice-other-site", site_id=2, account="alice", **device)
        await _live(redis, "bob-page-0001", site_id=1, account="bob", **device)
        await _live(redis, "anonymous-0001", site_id=1, **device)
        directory, since = LiveDirectory(), time.time() - 60
        direct = await live_pages(redis, shop, "alice", since)
        assert (
            [p.sid for p in await directory.pages(redis, shop, "alice", since)]
            == [p.sid for p in direct]
            == ["alice-page-1"]
        )
        # a page opened since the last refresh shows up once the directory is refreshed
        await _live(redis, "alice-page-2", site_id=1, account="alice", **device)
        monkeypatch.setattr(decisions, "DIRECTORY_REFRESH_S", 3600.0)
        assert len(await directory.pages(redis, shop, "alice", since)) == 1
        monkeypatch.setattr(decisions, "DIRECTORY_REFRESH_S", 0.0)
        found = await directory.pages(redis, shop, "alice", since)
        assert sorted(p.sid for p in found) == ["alice-page-1", "alice-page-2"]
        # an anonymous page identified later is found after the periodic re-read
        await redis.hset(keys.session_meta("anonymous-0001"), "account", "alice")
        assert len(await directory.pages(redis, shop, "alice", since)) == 2
        monkeypatch.setattr(decisions, "DIRECTORY_REREAD_S", 0.0)
        assert len(await directory.pages(redis, shop, "alice", since)) == 3
        # a page gone from the live set is gone from the directory
        await redis.zrem(keys.LIVE_SESSIONS, "alice-page-1")
        found = await directory.pages(redis, shop, "alice", since)
        assert "alice-page-1" not in {p.sid for p in found}
        await redis.aclose()

    asyncio.run(scenario())
