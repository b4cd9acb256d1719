"""End to end: a page session collected by the real snippet in Chromium is scored by a running
``trailguard worker`` (the mouse pipeline) and its result is read through the jobs API."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path

import pytest
import redis
from conftest import CHROMIUM_ARGS
from sqlalchemy import select
from test_collector_browser import PageServer, ServerThread, _glide, _html, _open_page, _polyline
from test_worker_faults import (  # noqa: F401 - workers is a fixture
    WorkerProcess,
    free_port,
    prefer_postgres,
    wait_for,
    workers,
)

from scoring import keys
from scoring.database import make_engine, make_sessionmaker
from scoring.schema import Score
from server.settings import load_settings
from server.sites import create_site

pytestmark = pytest.mark.browser


def test_collected_session_is_scored_by_a_worker_and_served_by_the_api(
    tmp_path: Path,
    chromium_path: str,
    redis_client: redis.Redis,
    redis_url: str,
    migrated_database_url: str,
    workers: list[WorkerProcess],  # noqa: F811
) -> None:
    from playwright.async_api import async_playwright

    prefer_postgres(migrated_database_url)
    sessions = make_sessionmaker(make_engine(migrated_database_url))
    workers.append(
        WorkerProcess(tmp_path, redis_url, migrated_database_url, "e2e", pipelines="mouse")
    )
    settings = load_settings(
        {},
        database_url=migrated_database_url,
        redis_url=redis_url,
        data_dir=tmp_path / "var",
        model_dir=tmp_path / "var" / "models",
        secret_key="e2e-secret",
    )
    port = free_port()
    with sessions() as s:
        new = create_site(s, "Shop", ["http://127.0.0.1"])
        pages = PageServer(_html(port, new.site.key))
        new.site.allowed_origins = [pages.origin]
        s.commit()
    server = ServerThread(settings, port)
    server.start()
    try:

        async def drive() -> str:
            async with async_playwright() as p:
                browser = await p.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
                page, sid = await _open_page(browser, f"{pages.origin}/checkout")
                await _glide(page, _polyline(2.0), gap_s=0.002)
                await page.mouse.click(300, 300)
                await page.close(run_before_unload=True)
                await browser.close()
                return str(sid)

        sid = asyncio.run(drive())

        def scored() -> Score | None:
            with sessions() as s:
                return s.scalar(select(Score).where(Score.session_id == sid))

        wait_for(lambda: scored() is not None, 90, "the worker to store the session's score")
        row = scored()
        assert row is not None
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/v1/jobs/{row.job_id}",
            headers={"Authorization": f"Bearer {new.site.key}.{new.secret}"},
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            body = json.loads(answer.read())
    finally:
        server.stop()
        pages.close()

    assert body["status"] == "done" and body["pipeline"] == "mouse"
    assert body["result"]["session_id"] == sid
    assert body["result"]["score"] == pytest.approx(row.score)
    assert body["result"]["untrained"] is True  # no mouse model is trained in this test
    assert body["result"]["details"]["n_windows"] >= 1
    assert redis_client.xlen(keys.jobs_stream("mouse")) == 0, "acknowledged and deleted"
    assert "pipelines mouse" in workers[0].output()
