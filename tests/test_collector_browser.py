"""The real snippet in headless Chromium against a real server, Redis and database."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import redis
import uvicorn
from conftest import CHROMIUM_ARGS

from scoring import keys
from scoring.database import make_engine, make_sessionmaker
from scoring.schema import PageSession
from server import collect
from server.app import create_app
from server.commands.serve import uvicorn_config
from server.settings import Settings, load_settings
from server.sites import create_site

CONFIG = collect.CollectorConfig(grace_s=60, idle_s=600, sweep_every_s=0.2)

pytestmark = pytest.mark.browser


class ServerThread:
    """uvicorn serving a fresh app on a fixed loopback port, in a thread; stop and start again."""

    def __init__(self, settings: Settings, port: int) -> None:
        self.settings = settings
        self.port = port
        self.server: uvicorn.Server | None = None
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        app = create_app(self.settings)
        app.state.collector_config = CONFIG
        # the uvicorn settings `trailguard serve` uses (WebSocket protocol, loop, parser)
        config = uvicorn_config(app, "127.0.0.1", self.port, "warning", timeout_graceful_shutdown=1)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)

    def stop(self) -> None:
        assert self.server and self.thread
        self.server.should_exit = True
        self.thread.join(timeout=15)
        assert not self.thread.is_alive()


class PageServer:
    """The shop's own site on another loopback port: one page embedding the snippet."""

    def __init__(self, html: str) -> None:
        body = html.encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.origin = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _serving(
    tmp_path: Path, database_url: str, redis_url: str
) -> Iterator[tuple[ServerThread, str]]:
    """The TrailGuard server, and the URL of a shop page (another origin) embedding c.js."""
    settings = load_settings(
        {}, database_url=database_url, redis_url=redis_url, data_dir=tmp_path / "var"
    )
    port = _free_port()
    engine = make_engine(database_url)
    with make_sessionmaker(engine)() as s:
        site = create_site(s, "Shop", ["http://127.0.0.1"])  # the page's port is set below
        pages = PageServer(_html(port, site.site.key))
        site.site.allowed_origins = [pages.origin]
        s.commit()
    engine.dispose()
    server = ServerThread(settings, port)
    server.start()
    try:
        yield server, f"{pages.origin}/checkout?card=4111111111111111"
    finally:
        if server.thread and server.thread.is_alive():
            server.stop()
        pages.close()


@pytest.fixture
def served(
    tmp_path: Path, migrated_database_url: str, redis_url: str
) -> Iterator[tuple[ServerThread, str]]:
    with _serving(tmp_path, migrated_database_url, redis_url) as both:
        yield both


@pytest.fixture
def served_sqlite(
    tmp_path: Path, sqlite_url: str, redis_url: str
) -> Iterator[tuple[ServerThread, str]]:
    with _serving(tmp_path, sqlite_url, redis_url) as both:
        yield both


def _html(port: int, key: str) -> str:
    return f"""<!doctype html><html><head><title>shop</title>
<script>window.trailguard = window.trailguard || [];
trailguard.push(['identify', 'acct-7']);</script>
<script async src="http://127.0.0.1:{port}/c.js" data-site="{key}"></script>
</head><body style="margin:0;height:3000px"><p>Checkout</p></body></html>"""


async def _open_page(browser, url: str):  # type: ignore[no-untyped-def]
    page = await browser.new_page(viewport={"width": 1000, "height": 700})
    await page.goto(url)
    await page.wait_for_function("window.trailguard && window.trailguard.sessionId")
    sid = await page.evaluate("new Promise(done => window.trailguard.push(['sessionId', done]))")
    assert isinstance(sid, str) and len(sid) == 32
    return page, sid


async def _glide(page, points: list[tuple[float, float]], gap_s: float) -> None:  # type: ignore[no-untyped-def]
    """Input events every ``gap_s``, like a 500 Hz mouse, not one per animation frame as
    ``mouse.move`` does: CDP dispatches go out without waiting for each, carrying their own
    hardware-style timestamps, so Chromium coalesces them and ``getCoalescedEvents`` hands
    them all to the snippet even when this busy machine delivers them late."""
    cdp = await page.context.new_cdp_session(page)
    sent = []
    t0 = time.time()
    for i, (x, y) in enumerate(points):
        event = {"type": "mouseMoved", "x": x, "y": y, "timestamp": t0 + i * gap_s}
        sent.append(asyncio.create_task(cdp.send("Input.dispatchMouseEvent", event)))
        await asyncio.sleep(gap_s)
    await asyncio.gather(*sent)
    await cdp.detach()


def _wait_for(predicate, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _meta(r: redis.Redis, sid: str) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in r.hgetall(keys.session_meta(sid)).items()}  # type: ignore[union-attr]


def _events(redis_url: str, sid: str) -> np.ndarray:
    import asyncio

    import redis.asyncio as aioredis

    from scoring.session_store import read_session

    async def read() -> np.ndarray:
        client = aioredis.Redis.from_url(redis_url)
        try:
            return (await read_session(client, sid)).events
        finally:
            await client.aclose()

    return asyncio.run(read())


def _jobs_for(r: redis.Redis, sid: str) -> int:
    entries = r.xrange(keys.jobs_stream("mouse"))
    return sum(1 for _id, f in entries if f[b"session_id"] == sid.encode())  # type: ignore[union-attr]


WAYPOINTS = [(100, 100), (600, 160), (620, 520), (180, 460)]


def _distance_to_path(x: float, y: float) -> float:
    best = math.inf
    for (ax, ay), (bx, by) in itertools.pairwise(WAYPOINTS):
        dx, dy = bx - ax, by - ay
        u = max(0.0, min(1.0, ((x - ax) * dx + (y - ay) * dy) / (dx * dx + dy * dy)))
        best = min(best, math.hypot(ax + u * dx - x, ay + u * dy - y))
    return best


def _polyline(step_px: float) -> list[tuple[float, float]]:
    points: list[tuple[float, float]] = []
    for (ax, ay), (bx, by) in itertools.pairwise(WAYPOINTS):
        n = max(1, round(math.hypot(bx - ax, by - ay) / step_px))
        points += [(ax + (bx - ax) * i / n, ay + (by - ay) * i / n) for i in range(n)]
    return [*points, WAYPOINTS[-1]]


def test_real_browser_session_reaches_redis_with_path_clicks_and_one_job(
    served: tuple[ServerThread, str],
    chromium_path: str,
    redis_client: redis.Redis,
    redis_url: str,
    migrated_database_url: str,
) -> None:
    from playwright.async_api import async_playwright

    _server, url = served

    async def drive() -> str:
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
            page, sid = await _open_page(browser, url)
            await _glide(page, _polyline(1.5), gap_s=0.002)
            await page.mouse.click(300, 300)
            await page.mouse.click(320, 330, button="right")
            await page.close(run_before_unload=True)
            await browser.close()
            return str(sid)

    sid = asyncio.run(drive())
    _wait_for(lambda: _jobs_for(redis_client, sid) == 1)
    meta = _meta(redis_client, sid)
    assert meta["state"] == "ended" and meta["end_reason"] == "end"
    assert (meta["viewport_w"], meta["viewport_h"]) == ("1000", "700")
    assert meta["page_path"] == "/checkout"  # no query string
    assert meta["account"] == "acct-7"
    ev = _events(redis_url, sid)
    moves = ev[ev[:, 3] == 0]
    end = np.flatnonzero(np.hypot(*(moves[:, 1:3] - WAYPOINTS[-1]).T) <= 1)[0]
    moves = moves[: end + 1]  # the path; the click's own jump to (300, 300) comes after it
    assert len(moves) > 100
    rate = (len(moves) - 1) / ((moves[-1, 0] - moves[0, 0]) / 1000)
    assert 100 <= rate <= 200, f"{rate:.0f} samples/s"
    assert max(_distance_to_path(x, y) for x, y in moves[:, 1:3]) <= 1.5
    assert tuple(moves[0, 1:3]) == pytest.approx(WAYPOINTS[0], abs=2)
    assert tuple(moves[-1, 1:3]) == pytest.approx(WAYPOINTS[-1], abs=2)
    clicks = [tuple(row) for row in ev[ev[:, 3] > 0][:, 1:4].tolist()]
    assert clicks == [(300, 300, 1), (300, 300, 2), (320, 330, 3), (320, 330, 4)]
    time.sleep(3 * CONFIG.sweep_every_s)  # the sweeper runs meanwhile: still one job
    assert _jobs_for(redis_client, sid) == 1
    engine = make_engine(migrated_database_url)
    with make_sessionmaker(engine)() as s:
        row = s.get(PageSession, sid)
        assert row is not None and row.n_samples == int(meta["n_samples"])
    engine.dispose()


async def _walk(page, points: list[tuple[int, int]]) -> None:  # type: ignore[no-untyped-def]
    for x, y in points:
        await page.mouse.move(x, y)
        await asyncio.sleep(0.01)  # with the ~16 ms a move takes: every move is a sample


def test_server_restart_mid_session_loses_and_doubles_nothing(
    served_sqlite: tuple[ServerThread, str],
    chromium_path: str,
    redis_client: redis.Redis,
    redis_url: str,
) -> None:
    from playwright.async_api import async_playwright

    server, url = served_sqlite
    points = [(50 + 3 * i, 100 + (i * 7) % 200) for i in range(150)]

    def stored() -> int:
        return int(_meta(redis_client, sid).get("n_samples", 0))

    async def drive() -> str:
        nonlocal sid
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
            page, sid = await _open_page(browser, url)
            await _walk(page, points[:50])
            _wait_for(lambda: stored() > 0)
            server.stop()  # closes the socket; frames pile up unacknowledged in the page
            await _walk(page, points[50:100])
            server.start()
            deadline = time.monotonic() + 30
            while stored() < 100:  # reconnected and resent what piled up
                assert time.monotonic() < deadline, "no reconnect"
                await asyncio.sleep(0.1)
            await _walk(page, points[100:])
            await page.close(run_before_unload=True)
            await browser.close()
            return str(sid)

    sid = ""
    sid = asyncio.run(drive())
    _wait_for(lambda: _jobs_for(redis_client, sid) == 1)
    ev = _events(redis_url, sid)
    moves = [(int(x), int(y)) for x, y in ev[ev[:, 3] == 0][:, 1:3].tolist()]
    assert moves == points
    assert len(np.unique(ev[:, 0])) == len(ev)
