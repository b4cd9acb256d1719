"""Site-authenticated JSON API over collected page sessions.

- ``GET /api/sessions?state=live|ended|all&limit=N``: the site's sessions, newest first.
- ``GET /api/sessions/{sid}``: one session in the session file format
  ``{"session_id", "user_id", "viewport": [w, h], "events": [[t_ms, x, y, code], …], "label"}``.

Samples come from Redis while the session is buffered there, else from the archive in
``PageSession.samples`` (see :func:`scoring.session_store.archive`).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis.asyncio as aioredis
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from renderer.errors import AccessDenied, NotFound
from scoring import session_store as store
from scoring.schema import Account, PageSession
from server.app import services
from server.siteauth import authenticate_site

MAX_LIMIT = 1000


@dataclass
class StoredRow:
    """What the database knows of a session, detached from its ORM session."""

    site_id: int
    user_id: str
    label: str | None
    viewport: tuple[int, int]
    samples: bytes | None


def events_json(events: np.ndarray) -> list[list[float]]:
    return [[float(v) for v in row] for row in np.asarray(events).reshape(-1, 4).tolist()]


def stored_row(s: Session, sid: str) -> StoredRow | None:
    row = s.get(PageSession, sid)
    if row is None:
        return None
    account = s.get(Account, row.account_id) if row.account_id else None
    return StoredRow(
        site_id=row.site_id,
        user_id=account.external_id if account else "",
        label=row.label,
        viewport=(row.viewport_w, row.viewport_h),
        samples=row.samples,
    )


async def session_record(
    redis: aioredis.Redis,
    sessions: sessionmaker[Session],
    sid: str,
    site_id: int | None = None,
) -> dict[str, Any]:
    """One session in the session file format; :class:`NotFound` if absent or another site's."""
    row = await run_in_threadpool(_load_row, sessions, sid)
    try:
        data: store.SessionData | None = await store.read_session(redis, sid)
    except NotFound:
        data = None
    owner = row.site_id if row else (int(data.meta["site_id"]) if data else None)
    if owner is None or (site_id is not None and owner != site_id):
        raise NotFound(f"no page session {sid!r}")
    if data is not None and (len(data.events) or not (row and row.samples)):
        events, viewport, user = data.events, data.viewport, data.meta.get("account", "")
    elif row is not None and row.samples:
        events, viewport, user = store.unarchive(row.samples), row.viewport, row.user_id
    else:
        raise NotFound(f"the samples of page session {sid!r} are gone")
    return {
        "session_id": sid,
        "user_id": row.user_id if row and row.user_id else user,
        "viewport": [viewport[0], viewport[1]],
        "events": events_json(events),
        "label": row.label if row else None,
    }


def _load_row(sessions: sessionmaker[Session], sid: str) -> StoredRow | None:
    with sessions() as s:
        return stored_row(s, sid)


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value else None


def _ended(sessions: sessionmaker[Session], site_id: int, limit: int) -> list[dict[str, Any]]:
    with sessions() as s:
        query = (
            select(PageSession, Account.external_id)
            .outerjoin(Account, Account.id == PageSession.account_id)
            .where(PageSession.site_id == site_id)
            .order_by(PageSession.started_at.desc())
            .limit(limit)
        )
        return [
            {
                "session_id": row.id,
                "state": row.status,
                "user_id": external or "",
                "page_path": row.page_path,
                "viewport": [row.viewport_w, row.viewport_h],
                "n_samples": row.n_samples,
                "end_reason": row.end_reason,
                "label": row.label,
                "started_at": _iso(row.started_at),
                "ended_at": _iso(row.ended_at),
                "archived": row.samples is not None,
            }
            for row, external in s.execute(query)
        ]


async def _live(redis: aioredis.Redis, site_id: int, limit: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for sid in reversed(await store.live_session_ids(redis)):
        try:
            meta = await store.read_meta(redis, sid)
        except NotFound:
            continue
        if meta.get("site_id") != str(site_id) or meta.get("state") != "live":
            continue
        out.append(
            {
                "session_id": sid,
                "state": "live",
                "user_id": meta.get("account", ""),
                "page_path": meta.get("page_path", ""),
                "viewport": [int(meta.get("viewport_w", 0)), int(meta.get("viewport_h", 0))],
                "n_samples": int(meta.get("n_samples", 0)),
            }
        )
        if len(out) >= limit:
            break
    return out


def _authenticate(request: Request) -> int:
    with services(request).sessions() as s:
        return authenticate_site(request, s).id


async def _site_id(request: Request) -> int:
    return await run_in_threadpool(_authenticate, request)


def _denied(e: AccessDenied) -> JSONResponse:
    return JSONResponse(
        {"error": "access_denied", "detail": str(e)},
        status_code=401,
        headers={"WWW-Authenticate": 'Bearer realm="trailguard"'},
    )


async def list_sessions(request: Request) -> JSONResponse:
    try:
        site_id = await _site_id(request)
    except AccessDenied as e:
        return _denied(e)
    state = request.query_params.get("state", "all")
    raw_limit = request.query_params.get("limit", "100")
    if state not in ("live", "ended", "all") or not raw_limit.isdigit():
        return JSONResponse(
            {"error": "bad_query", "detail": "state is live|ended|all, limit a number"},
            status_code=400,
        )
    limit = max(1, min(MAX_LIMIT, int(raw_limit)))
    svc = services(request)
    found: list[dict[str, Any]] = []
    if state in ("live", "all"):
        found += await _live(svc.redis, site_id, limit)
    if state in ("ended", "all"):
        ended = await run_in_threadpool(_ended, svc.sessions, site_id, limit)
        found += [row for row in ended if state == "all" or row["state"] != "live"]
    return JSONResponse({"sessions": found[:limit]})


async def get_session(request: Request) -> JSONResponse:
    try:
        site_id = await _site_id(request)
    except AccessDenied as e:
        return _denied(e)
    svc = services(request)
    sid = request.path_params["sid"]
    try:
        record = await session_record(svc.redis, svc.sessions, sid, site_id)
    except NotFound as e:
        return JSONResponse({"error": "not_found", "detail": str(e)}, status_code=404)
    return JSONResponse(record)


def routes() -> list[BaseRoute]:
    return [
        Route("/api/sessions", list_sessions),
        Route("/api/sessions/{sid:str}", get_session),
    ]
