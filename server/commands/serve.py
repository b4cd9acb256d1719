"""``trailguard serve`` (the web server alone) and ``trailguard run`` (the whole system)."""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import redis
import uvicorn

from renderer.errors import StoreUnavailable
from scoring import migrate
from scoring.database import make_engine, ping
from server.app import create_app
from server.embedded import EmbeddedRedis
from server.settings import Settings


def register(sub: argparse._SubParsersAction) -> None:
    serve_p = sub.add_parser("serve", help="run the web server only (Redis must be configured)")
    serve_p.set_defaults(func=serve)
    run_p = sub.add_parser(
        "run", help="migrate, then run server and workers (embedded Redis if none configured)"
    )
    run_p.add_argument("--no-worker", action="store_true", help="start the server alone")
    run_p.set_defaults(func=run)


@contextlib.contextmanager
def redis_url_for(settings: Settings) -> Iterator[str]:
    """The configured Redis URL, or an embedded Redis's for as long as the block runs."""
    if settings.redis_url:
        yield settings.redis_url
        return
    embedded = EmbeddedRedis(settings.data_dir / "redis")
    try:
        yield embedded.url
    finally:
        embedded.close()


def check_redis(url: str) -> None:
    client = redis.Redis.from_url(url, socket_connect_timeout=5)
    try:
        client.ping()
    except redis.RedisError as e:
        raise StoreUnavailable(f"Redis unreachable at {url}: {e}") from e
    finally:
        client.close()


WS_PROTOCOL = "websockets-sansio"


def uvicorn_config(
    app: Any, host: str, port: int, log_level: str, ws: str = WS_PROTOCOL, **extra: Any
) -> uvicorn.Config:
    """How TrailGuard runs uvicorn; ``bench/ingest.py`` serves both of its servers with it.

    The event loop and HTTP parser are uvicorn's "auto" choices, uvloop and httptools (the
    standard extra installs both). WebSockets use the Sans-I/O protocol of the websockets
    library: under the collector's load (thousands of sockets, a 100-byte frame and a 3-byte
    ack each every 250 ms) it measured ~40 % less server CPU per message than the legacy
    ``websockets`` protocol for a bare echo endpoint, and lower ack latency for ``/collect``
    (docs/collector.md, Speed). No per-message deflate: frames are already compact."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        loop="auto",
        http="auto",
        ws=ws,
        ws_per_message_deflate=False,
        **extra,
    )


def _serve(settings: Settings, redis_url: str) -> None:
    """Serve in this process, plus ``server_processes - 1`` more on the same socket."""
    if settings.server_processes <= 1:
        _serve_on(settings, redis_url, None)
        return
    sock = _listen(settings.host, settings.port)
    spawn = multiprocessing.get_context("spawn")  # a fresh interpreter: no inherited threads
    others = [
        spawn.Process(target=_serve_on, args=(settings, redis_url, sock), name=f"server-{i}")
        for i in range(1, settings.server_processes)
    ]
    for proc in others:
        proc.start()
    try:
        _serve_on(settings, redis_url, sock)
    finally:
        for proc in others:
            proc.terminate()  # SIGTERM: uvicorn finishes its requests and exits
        for proc in others:
            proc.join(30)


def _serve_on(settings: Settings, redis_url: str, sock: socket.socket | None) -> None:
    """One server process: its own app, event loop and interpreter lock; with ``sock``, the
    kernel hands it a share of the connections accepted on the shared socket."""
    app = create_app(settings, redis_url=redis_url)
    config = uvicorn_config(app, settings.host, settings.port, settings.log_level)
    # Server.run, not asyncio.run(server.serve()): only run() creates the loop through the
    # config's loop factory, so only run() gets uvloop.
    uvicorn.Server(config).run(sockets=[sock] if sock is not None else None)


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def serve(settings: Settings, args: argparse.Namespace) -> int:
    if not settings.redis_url:
        print(
            "trailguard serve: set TRAILGUARD_REDIS_URL, or use `trailguard run`", file=sys.stderr
        )
        return 2
    check_redis(settings.redis_url)
    engine = make_engine(settings.database_url)
    ping(engine)
    engine.dispose()
    signal.signal(signal.SIGTERM, _exit_on_sigterm)  # so that _serve stops its other processes
    _serve(settings, settings.redis_url)
    return 0


def _start_workers(settings: Settings, redis_url: str) -> list[subprocess.Popen[bytes]]:
    env = {**os.environ, "TRAILGUARD_REDIS_URL": redis_url}
    cmd = [sys.executable, "-m", "server.cli", "worker"]
    return [subprocess.Popen(cmd, env=env) for _ in range(settings.workers)]


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    # uvicorn re-raises the signal it caught once it has shut down; with the default handler
    # that would kill this process before the finally below stops the workers and the
    # embedded Redis, so turn it into an ordinary exit.
    raise SystemExit(128 + signum)


def run(settings: Settings, args: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    engine = make_engine(settings.database_url)
    ping(engine)
    engine.dispose()
    migrate.upgrade(settings.database_url)
    with redis_url_for(settings) as url:
        check_redis(url)
        workers = [] if args.no_worker else _start_workers(settings, url)
        try:
            _serve(settings, url)
        finally:
            for proc in workers:
                proc.terminate()
            for proc in workers:
                proc.wait(timeout=30)
    return 0
