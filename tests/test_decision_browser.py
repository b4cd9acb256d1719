"""End to end in headless Chromium: a shop page with the real snippet, mouse movement, and the
shop's back end asking ``POST /api/v1/decisions`` mid-visit, as docs/decisions.md shows.

The decision must use the samples so far: ``samples_used`` equals the samples in Redis when it
was asked, and grows as the visit goes on. Real server (uvicorn), Redis, database, Chromium
and (tiny) trained models; nothing is mocked.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
import uvicorn
from conftest import CHROMIUM_ARGS
from sqlalchemy import select
from test_decision_support import human_path, train_tiny_models

from scoring import keys
from scoring.database import make_engine, make_sessionmaker
from scoring.schema import Account, Decision
from server import collect
from server.app import create_app
from server.commands.serve import uvicorn_config
from server.settings import load_settings
from server.sites import create_site

pytestmark = pytest.mark.browser


class Shop:
    """The shop's own site on another loopback port: a page embedding the snippet, and a back
    end whose ``POST /pay`` asks TrailGuard for a decision with the site secret."""

    def __init__(self, trailguard: str) -> None:
        self.trailguard = trailguard
        self.key = self.secret = ""
        shop = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._send(200, "text/html; charset=utf-8", shop.page().encode())

            def do_POST(self) -> None:
                sent = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status, answer = shop.ask(sent["session_id"], "checkout")
                self._send(status, "application/json", answer)

            def _send(self, status: int, kind: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.origin = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def page(self) -> str:
        return f"""<!doctype html><html><head><title>shop</title>
<script>window.trailguard = window.trailguard || [];
trailguard.push(['identify', 'alice']);</script>
<script async src="{self.trailguard}/c.js" data-site="{self.key}"></script>
<script>
function pay() {{
  return new Promise(function (done) {{
    trailguard.push(['sessionId', function (sid) {{
      fetch('/pay', {{method: 'POST', headers: {{'Content-Type': 'application/json'}},
                     body: JSON.stringify({{session_id: sid}})}})
        .then(function (r) {{ return r.json(); }}).then(done);
    }}]);
  }});
}}
</script></head><body style="margin:0"><button id="pay">Pay</button></body></html>"""

    def ask(self, session_id: str, action: str) -> tuple[int, bytes]:
        """What a site's back end does (the call docs/decisions.md shows)."""
        request = urllib.request.Request(
            f"{self.trailguard}/api/v1/decisions",
            data=json.dumps({"session_id": session_id, "action": action}).encode(),
            headers={
                "Authorization": f"Bearer {self.key}.{self.secret}",
                "Content-Type": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class World:
    url: str
    db_url: str


@pytest.fixture
def world(tmp_path: Path, migrated_database_url: str, redis_url: str) -> Iterator[World]:
    settings = load_settings(
        {},
        database_url=migrated_database_url,
        redis_url=redis_url,
        data_dir=tmp_path / "var",
        model_dir=tmp_path / "models",
    )
    port = _free_port()
    shop = Shop(f"http://127.0.0.1:{port}")
    sessions = make_sessionmaker(make_engine(migrated_database_url))
    with sessions() as s:
        new = create_site(s, "Shop", [shop.origin])
        s.add(Account(site_id=new.site.id, external_id="alice"))  # known from earlier visits
        s.commit()
        shop.key, shop.secret = new.site.key, new.secret
    train_tiny_models(sessions, settings.model_dir, ["alice", "bob"])
    sessions.kw["bind"].dispose()
    app = create_app(settings)
    app.state.collector_config = collect.CollectorConfig(grace_s=600, idle_s=3600)
    # the uvicorn settings `trailguard serve` uses (WebSocket protocol, loop, parser)
    server = uvicorn.Server(uvicorn_config(app, "127.0.0.1", port, "warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        yield World(f"{shop.origin}/cart", migrated_database_url)
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        shop.close()


async def _glide(page: Any, path: np.ndarray, gap_s: float = 0.004) -> None:
    """The moves of ``path`` as input events every ``gap_s`` with their own timestamps (CDP),
    so Chromium coalesces them as it does a real high-rate mouse."""
    cdp = await page.context.new_cdp_session(page)
    t0, sent = time.time(), []
    for i, (x, y) in enumerate(path[path[:, 3] == 0][:, 1:3].tolist()):
        event = {"type": "mouseMoved", "x": x, "y": y, "timestamp": t0 + i * gap_s}
        sent.append(asyncio.create_task(cdp.send("Input.dispatchMouseEvent", event)))
        await asyncio.sleep(gap_s)
    await asyncio.gather(*sent)
    await cdp.detach()


def _in_redis(r: redis.Redis, sid: str) -> int:
    return int(r.hget(keys.session_meta(sid), "n_samples") or 0)  # type: ignore[arg-type]


async def _settled(r: redis.Redis, sid: str, quiet_s: float = 1.0, timeout: float = 20.0) -> int:
    """The sample count once the snippet has flushed everything (unchanged for ``quiet_s``)."""
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while time.monotonic() - since < quiet_s:
        assert time.monotonic() < deadline, "samples never settled"
        now = _in_redis(r, sid)
        if now != last:
            last, since = now, time.monotonic()
        await asyncio.sleep(0.05)
    return last


def test_a_decision_mid_visit_uses_the_samples_so_far(
    world: World, chromium_path: str, redis_client: redis.Redis
) -> None:
    from playwright.async_api import async_playwright

    async def visit() -> list[tuple[int, dict[str, Any], int]]:
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
            page = await browser.new_page(viewport={"width": 1280, "height": 720})
            await page.goto(world.url)
            await page.wait_for_function("window.trailguard && window.trailguard.sessionId")
            sid = await page.evaluate("window.trailguard.sessionId")
            seen = []
            for seed in (11, 12):  # two stretches of movement, a decision after each
                await _glide(page, human_path(900, seed=seed))
                before = await _settled(redis_client, sid)
                answer = await page.evaluate("pay()")
                seen.append((before, answer, _in_redis(redis_client, sid)))
            # and one asked while the mouse is still moving
            moving = asyncio.create_task(_glide(page, human_path(600, seed=13)))
            await asyncio.sleep(1.0)
            during = (_in_redis(redis_client, sid), await page.evaluate("pay()"))
            await moving
            seen.append((during[0], during[1], _in_redis(redis_client, sid)))
            await browser.close()
            return [(b, {**a, "sid": sid}, after) for b, a, after in seen]

    (b1, first, a1), (b2, second, a2), (b3, third, a3) = asyncio.run(visit())
    sid = first["sid"]
    assert b1 == first["samples_used"] == a1 > 300
    assert b2 == second["samples_used"] == a2 > first["samples_used"]
    assert b3 <= third["samples_used"] <= a3 and third["samples_used"] > second["samples_used"]
    for answer in (first, second, third):
        assert answer["sessions"] == [sid]
        assert answer["decision"] in ("allow", "review", "deny")
        assert 0.0 <= answer["score"] <= 1.0 and answer["model_version"] == "tiny-owner-0"
        assert answer["reasons"][-1] == "account_model"
    engine = make_engine(world.db_url)
    with make_sessionmaker(engine)() as s:
        rows = s.scalars(select(Decision).order_by(Decision.id)).all()
        assert [r.samples_used for r in rows] == [a["samples_used"] for a in (first, second, third)]
        assert all(r.details["sessions"] == {sid: r.samples_used} for r in rows)
    engine.dispose()
