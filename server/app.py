"""The Starlette application factory.

``create_app`` takes the settings object and builds everything from it: the database engine,
the Redis client, and the routes of each area (collector, review, API …). Areas keep their
routes in their own modules and are listed in ``ROUTE_MODULES``.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from scoring.database import make_engine, make_sessionmaker, ping
from server.settings import Settings

log = logging.getLogger(__name__)

# Each module exposes ``routes() -> list[BaseRoute]``; add a new area here.
ROUTE_MODULES: list[str] = [
    "server.collect",
    "server.sessions_api",
    "server.decisions_api",
    "server.policy_views",
    "server.auth",
    "server.review",
    "server.admin",
    "server.alerts",
    "server.accounts_api",
    "server.pump_api",
    "server.pump_views",
    "server.whale_api",
    "server.whale_views",
    "server.jobs_api",
    "server.metrics",
]

# Background tasks tied to the server's life: "module:function" where
# ``function(app: Starlette) -> AbstractAsyncContextManager[None]``; entered in order at start-up
# (after ``app.state.services`` is set), exited in reverse order at shutdown.
LIFESPAN_HOOKS: list[str] = [
    "server.collect:lifespan",
    "server.alerts:background_dispatch",
    "server.decisions_api:prescoring",
    "server.app:tune_gc",  # last: after every hook has built what it keeps
]


@dataclass
class Services:
    """What request handlers need, built once per application from the settings."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    redis: aioredis.Redis


YOUNG_GC_THRESHOLD = 20_000
"""Allocations (net of frees) between collections of the youngest generation; CPython's
default is 700."""


@contextlib.asynccontextmanager
async def tune_gc(app: Starlette) -> AsyncIterator[None]:
    """The cyclic garbage collector, tuned for a server holding thousands of sockets.

    A full collection walks every tracked object with the interpreter lock held, and so
    pauses the event loop and every open collector socket: over what start-up builds (torch,
    SQLAlchemy, models: ~500,000 objects) that took 250-400 ms, and over 2,000 connections'
    own objects up to ~290 ms.

    - ``gc.freeze()`` keeps the start-up objects out of every later collection. They are never
      cyclic garbage; garbage frozen with them (no collection runs first: it would cost every
      test app ~0.3 s) is collected after the app stops.
    - Young collections every :data:`YOUNG_GC_THRESHOLD` allocations instead of 700: each
      young or middle collection moves whatever is in flight at that moment into the old
      generation, and full collections come when that has grown by a quarter. At 2,000 pages
      with the pre-scorer on, full collections went from ~17 a run to one, and the benchmark's
      p99 from 36-227 ms to 21-31 ms (docs/collector.md). Young cycles are still collected,
      20,000 allocations later."""
    thresholds = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(YOUNG_GC_THRESHOLD, *thresholds[1:])
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


async def healthz(request: Request) -> JSONResponse:
    svc = services(request)
    checks: dict[str, Any] = {}
    try:
        ping(svc.engine)
        checks["database"] = {"ok": True, "backend": svc.engine.dialect.name}
    except Exception as e:  # health reports every failure instead of raising
        checks["database"] = {"ok": False, "error": str(e)}
    try:
        await svc.redis.ping()
        checks["redis"] = {"ok": True}
    except Exception as e:  # health reports every failure instead of raising
        checks["redis"] = {"ok": False, "error": f"{e.__class__.__name__}: {e}"}
    ok = all(c["ok"] for c in checks.values())
    return JSONResponse({"ok": ok, **checks}, status_code=200 if ok else 503)


def _area_routes() -> list[BaseRoute]:
    routes: list[BaseRoute] = []
    for name in ROUTE_MODULES:
        routes.extend(importlib.import_module(name).routes())
    return routes


def create_app(settings: Settings, redis_url: str | None = None) -> Starlette:
    """Build the app. ``redis_url`` overrides ``settings.redis_url`` (the embedded one)."""
    url = redis_url or settings.redis_url
    if url is None:
        raise ValueError("create_app needs a Redis URL: start EmbeddedRedis first")
    engine = make_engine(settings.database_url)
    svc = Services(
        settings=settings,
        engine=engine,
        sessions=make_sessionmaker(engine),
        # A blocking pool: with thousands of open collector sockets, more than 100 commands can
        # be in flight; they wait for a connection instead of failing (redis-py's default).
        redis=aioredis.Redis(
            connection_pool=aioredis.BlockingConnectionPool.from_url(
                url, max_connections=128, timeout=10
            )
        ),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            async with contextlib.AsyncExitStack() as stack:
                for hook in LIFESPAN_HOOKS:
                    module, _, func = hook.partition(":")
                    factory = getattr(importlib.import_module(module), func)
                    await stack.enter_async_context(factory(app))
                yield
        finally:
            await svc.redis.aclose()
            engine.dispose()

    app = Starlette(
        routes=[Route("/healthz", healthz), *_area_routes()],
        middleware=_cors(settings),
        lifespan=lifespan,
    )
    app.state.services = svc
    return app


def _cors(settings: Settings) -> list[Middleware]:
    """Browsers on ``TRAILGUARD_ALLOWED_ORIGINS`` may call the JSON API (e.g. an admin tool).

    The collector does its own per-site Origin check; site back ends call the API server to
    server, where CORS does not apply. No cookies cross origins: the API uses bearer secrets.
    """
    if not settings.allowed_origins:
        return []
    return [
        Middleware(
            CORSMiddleware,
            allow_origins=list(settings.allowed_origins),
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
            max_age=600,
        )
    ]
