"""``POST /api/v1/decisions``: a site's back end asks, mid-visit, whether to let an action through.

Request (site-secret authenticated, ``Authorization: Bearer <site_key>.<site_secret>``)::

    {"session_id": "<page session id from the snippet>" | "account_id": "<site's own id>",
     "action": "login" | "checkout" | "change_password" | …}

Answer 200::

    {"decision": "allow" | "review" | "deny", "score": 0.42 | null, "threshold": 0.5 | null,
     "model_version": "…" | null, "reasons": [...], "samples_used": 5120, "action": "checkout",
     "decision_id": 17, "sessions": ["…"]}

Errors are JSON ``{"error": code, "message": …}``: 400 malformed body, 401 wrong or missing
site secret, 403 the session belongs to another account, 404 unknown (or another site's)
session or account, 429 burst limit (``Retry-After``), 500 ``site_policy_invalid`` when the
stored policy was edited by hand into something invalid, 503 Redis or database down.
The logic lives in :mod:`scoring.decisions`; this module is the HTTP layer only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from renderer.errors import (
    AccessDenied,
    ConfigError,
    InvalidInput,
    NotFound,
    RateLimited,
    StoreUnavailable,
)
from scoring.decisions import DecisionContext, evaluate, mouse_model_chooser, parse_request
from scoring.policy import Policy, admit, parse_policy
from scoring.prescore import Prescorer
from scoring.schema import Site
from server.app import Services, services
from server.siteauth import authenticate_site

log = logging.getLogger(__name__)

MAX_BODY = 4096
FORBIDDEN_CODES = frozenset({"account_mismatch"})


def _error(status: int, code: str, message: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status, headers=headers)


def decision_context(request: Request) -> DecisionContext:
    """One context per application, built on first use (it holds the loaded models)."""
    ctx: DecisionContext | None = getattr(request.app.state, "decisions", None)
    if ctx is None:
        ctx = build_context(services(request))
        request.app.state.decisions = ctx
    return ctx


PRESCORE_SHUTDOWN_S = 10.0


@contextlib.asynccontextmanager
async def prescoring(app: Starlette) -> AsyncIterator[None]:
    """Lifespan hook: the decisions' context, built at start-up, and its background
    :class:`~scoring.prescore.Prescorer` (``TRAILGUARD_PRESCORE_WINDOWS_PER_S``; 0: none)."""
    svc: Services = app.state.services
    ctx = getattr(app.state, "decisions", None) or build_context(svc)
    app.state.decisions = ctx
    await _load_scoring(ctx)
    prescorer = Prescorer(ctx, svc.settings.prescore_windows_per_s)
    app.state.prescorer = prescorer
    if prescorer.windows_per_s <= 0:
        yield
        return
    task = asyncio.create_task(prescorer.run())
    try:
        yield
    finally:
        task.cancel()
        # a job already in a scoring thread finishes on its own; shutdown does not wait forever
        await asyncio.wait({task}, timeout=PRESCORE_SHUTDOWN_S)


async def _load_scoring(ctx: DecisionContext) -> None:
    """Load the model chooser (torch, the active models or the untrained fallback) before
    serving. Loaded on first use instead, by the first decision or pre-scoring tick in a thread
    while the event loop served, the import and the network's construction held the
    interpreter lock long enough to put every collector socket ~0.5 s behind (2,000 pages:
    p99 ack 661-948 ms against 23-47 ms). A model activated later is picked up as before
    (at once while none is active, else within the chooser's recheck)."""
    try:
        await asyncio.to_thread(ctx.choose_model, None)
    except Exception:  # logged; a decision meets the same trouble and reports it
        log.exception("loading the mouse models at start-up failed")


def build_context(svc: Services) -> DecisionContext:
    chooser = mouse_model_chooser(svc.sessions, svc.settings.model_dir, svc.settings.device)
    return DecisionContext(redis=svc.redis, sessions=svc.sessions, choose_model=chooser)


async def _body(request: Request) -> Any:
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise InvalidInput(f"the body is larger than {MAX_BODY} bytes", "body_too_large")
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidInput(f"the body is not JSON: {e}", "bad_json") from e


def _authenticate(request: Request) -> Site:
    with services(request).sessions() as db:
        return authenticate_site(request, db)


async def _site_and_limit(request: Request) -> tuple[Site, Policy]:
    svc = services(request)
    site = await asyncio.to_thread(_authenticate, request)  # never block the loop on the pool
    try:
        policy = parse_policy(site.policy)
    except InvalidInput as e:  # stored by hand around the admin page: the site's fault
        raise ConfigError(f"policy of site {site.id}", f"{e} ({e.code})") from e
    wait = await admit(svc.redis, site.id, policy.rate_limit, int(time.time() * 1000))
    if wait > 0:
        raise RateLimited("too many decision requests for this site", retry_after=wait)
    return site, policy


async def create_decision(request: Request) -> JSONResponse:
    try:
        site, policy = await _site_and_limit(request)
        req = parse_request(await _body(request))
        answer = await evaluate(decision_context(request), site, req, policy=policy)
    except AccessDenied as e:
        return _error(401, "unauthorized", str(e), **{"WWW-Authenticate": "Bearer"})
    except ConfigError as e:
        log.error("decision refused: %s", e)
        return _error(500, "site_policy_invalid", f"{e}; an admin must fix it")
    except RateLimited as e:
        retry = str(max(1, int(e.retry_after + 0.999)))
        return _error(429, "rate_limited", str(e), **{"Retry-After": retry})
    except NotFound as e:
        return _error(404, "not_found", str(e))
    except InvalidInput as e:
        return _error(403 if e.code in FORBIDDEN_CODES else 400, e.code, str(e))
    except ClientDisconnect:  # the caller gave up (its own timeout): nobody to answer
        return _error(400, "client_disconnected", "the client went away")
    except (StoreUnavailable, RedisError, SQLAlchemyError) as e:
        log.exception("decision request failed: store unavailable")
        return _error(503, "store_unavailable", f"{e.__class__.__name__}: try again")
    except Exception:  # the request boundary: log it, answer a clean 500
        log.exception("decision request failed")
        return _error(500, "internal_error", "the decision could not be made")
    return JSONResponse(answer.as_json(req.action))


def routes() -> list[BaseRoute]:
    return [Route("/api/v1/decisions", create_decision, methods=["POST"])]
