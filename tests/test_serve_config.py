"""The uvicorn settings `trailguard serve` runs with (and bench/ingest.py measures)."""

from __future__ import annotations

import gc
import signal
import urllib.request
from pathlib import Path

import psutil
import uvloop
from starlette.applications import Starlette
from starlette.testclient import TestClient
from test_worker_command import start_run
from test_worker_faults import free_port, wait_for
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from server.app import YOUNG_GC_THRESHOLD, create_app
from server.commands.serve import uvicorn_config
from server.settings import Settings


def test_serve_runs_uvloop_httptools_and_sansio_websockets() -> None:
    config = uvicorn_config(Starlette(), "127.0.0.1", 0, "warning")
    config.load()
    assert config.http_protocol_class is HttpToolsProtocol
    assert config.ws_protocol_class is WebSocketsSansIOProtocol
    assert config.ws_per_message_deflate is False
    factory = config.get_loop_factory()
    assert factory is not None  # asyncio.run(server.serve()) would ignore it: _serve uses run()
    loop = factory()
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()


def test_several_server_processes_share_the_port_and_stop_together(tmp_path: Path) -> None:
    # one Python process is one interpreter lock: decisions under load need one per core
    port = free_port()
    proc, log = start_run(tmp_path, port, "--no-worker", TRAILGUARD_SERVER_PROCESSES="2")
    servers: list[psutil.Process] = []
    try:
        wait_for(lambda: _listening(proc.pid, port) >= 2, 90, "two processes on the port")
        servers = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        for _ in range(20):  # new connections each: the kernel spreads them
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as r:
                assert r.status == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    _gone, alive = psutil.wait_procs(servers, timeout=30)
    for p in alive:
        p.kill()
    assert alive == [], log.read_text()[-2000:]


def _listening(pid: int, port: int) -> int:
    """Processes of ``pid``'s tree holding a listening socket on ``port``."""
    try:
        tree = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    count = 0
    for p in tree:
        try:
            conns = p.net_connections(kind="tcp")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        count += any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in conns)
    return count


def test_the_app_tunes_the_garbage_collector_while_it_runs(settings: Settings) -> None:
    # full collections pause every open socket: start-up objects are frozen out of them and
    # young collections are rarer, for the app's life only
    before, frozen = gc.get_threshold(), gc.get_freeze_count()
    with TestClient(create_app(settings)) as client:
        assert client.get("/healthz").status_code == 200
        assert gc.get_threshold()[0] == YOUNG_GC_THRESHOLD
        assert gc.get_freeze_count() > frozen
    assert gc.get_threshold() == before
