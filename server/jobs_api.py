"""``GET /api/v1/jobs/{job_id}``: the status and stored result of any pipeline's job.

Authentication: a site's back end with ``Authorization: Bearer <site_key>.<site_secret>``
(:func:`server.siteauth.authenticate_site`), or a logged-in admin (the review UI's session).

Answer 200::

    {"job_id": "mouse:…", "pipeline": "mouse", "status": "queued" | "done" | "failed",
     "result": {…the stored row…} | null, "error": "…" | null, "attempts": 2 | null}

- ``done``: the pipeline's result row (``scores``, ``pump_diagnoses``, ``clip_analyses`` with
  its detections), looked up by its unique ``job_id``.
- ``failed``: the job was dead-lettered; ``error`` is the first line of the recorded error
  (admins get all of it, with the traceback's tail).
- ``queued``: still in its jobs stream, waiting or being retried (``attempts`` so far).

A job belongs to the site of its subject: a mouse job's page session, a pump job's card, a
whale job's audio clip. Another site gets 404, as for an unknown job; so does any site for a
job whose subject cannot be found (only an admin sees those). Errors are JSON
``{"error": code, "message": …}``: 401 no or wrong credentials, 404 unknown job, 503 a store
is down.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError
from sqlalchemy import inspect, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from renderer.errors import AccessDenied
from scoring import keys
from scoring.schema import (
    AudioClip,
    Base,
    ClipAnalysis,
    Detection,
    JobFailure,
    PageSession,
    PumpCard,
    PumpDiagnosis,
    Score,
    Site,
)
from server.app import services
from server.siteauth import authenticate_site

log = logging.getLogger(__name__)

RESULT_TABLES: dict[str, type[Score] | type[PumpDiagnosis] | type[ClipAnalysis]] = {
    "mouse": Score,
    "pump": PumpDiagnosis,
    "whale": ClipAnalysis,
}
SUBJECT_FIELDS = ("session_id", "card_pk", "clip_id")
"""The payload field naming each pipeline's subject (mouse, pump, whale)."""
SCAN_PAGE = 500
MAX_SCAN = 20_000
"""Stream entries examined to find a queued job; past that a backlog answers 404."""


@dataclass
class JobView:
    job_id: str
    pipeline: str
    status: str
    result: dict[str, Any] | None = None
    error: str | None = None
    attempts: int | None = None
    subject: tuple[str, str] | None = None
    """What the job was about, ``(field, value)`` as in its payload (``session_id``,
    ``card_pk`` or ``clip_id``): its site decides which site may see the job."""

    def body(self, full_error: bool) -> dict[str, Any]:
        error = self.error if full_error or self.error is None else self.error.splitlines()[0]
        return {
            "job_id": self.job_id,
            "pipeline": self.pipeline,
            "status": self.status,
            "result": self.result,
            "error": error,
            "attempts": self.attempts,
        }


def _json_value(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, bytes):
        return None  # archived samples and the like are not part of a result
    return value


def row_dict(row: Base) -> dict[str, Any]:
    return {
        attr.key: _json_value(getattr(row, attr.key)) for attr in inspect(row).mapper.column_attrs
    }


def candidate_pipelines(job_id: str) -> list[str]:
    """Job ids made by :func:`scoring.jobs.new_job_id` start with their pipeline's name."""
    prefix = job_id.split(":", 1)[0]
    return [prefix] if prefix in keys.PIPELINES else list(keys.PIPELINES)


def stored_job(session: Session, job_id: str) -> JobView | None:
    """A done or dead-lettered job from the database, or ``None``."""
    for pipeline in candidate_pipelines(job_id):
        table = RESULT_TABLES[pipeline]
        row = session.scalar(select(table).where(table.job_id == job_id))
        if row is None:
            continue
        result = row_dict(row)
        if isinstance(row, ClipAnalysis):
            detections = session.scalars(select(Detection).where(Detection.analysis_id == row.id))
            result["detections"] = [row_dict(d) for d in detections]
        return JobView(job_id, pipeline, "done", result=result, subject=_subject(result))
    failure = session.scalar(select(JobFailure).where(JobFailure.job_id == job_id))
    if failure is None:
        return None
    return JobView(
        job_id,
        failure.pipeline,
        "failed",
        error=failure.error,
        attempts=failure.attempts,
        subject=_subject(failure.payload or {}),
    )


def _subject(fields: dict[str, Any]) -> tuple[str, str] | None:
    for name in SUBJECT_FIELDS:
        if fields.get(name) is not None:
            return name, str(fields[name])
    return None


async def queued_job(redis: aioredis.Redis, job_id: str) -> JobView | None:
    """A job still in its stream (waiting, in flight or awaiting a retry), or ``None``."""
    for pipeline in candidate_pipelines(job_id):
        stream = keys.jobs_stream(pipeline)
        attempts = await redis.hget(keys.job_attempts(pipeline), job_id)
        start, seen = "-", 0
        while seen < MAX_SCAN:
            entries: Any = await redis.xrange(stream, min=start, count=SCAN_PAGE)
            for _entry_id, fields in entries:
                if _text(fields.get(b"job_id", b"")) == job_id:
                    payload = {_text(k): _text(v) for k, v in fields.items()}
                    return JobView(
                        job_id,
                        pipeline,
                        "queued",
                        attempts=int(attempts) if attempts is not None else 0,
                        subject=_subject(payload),
                    )
            if len(entries) < SCAN_PAGE:
                break
            seen += len(entries)
            start = "(" + _text(entries[-1][0])
    return None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status)


def _authenticate(request: Request) -> Site | None:
    """The calling site, or ``None`` without an Authorization header (maybe an admin)."""
    if request.headers.get("authorization") is None:
        return None
    with services(request).sessions() as session:
        site = authenticate_site(request, session)
        session.expunge(site)
        return site


async def _is_admin(request: Request) -> bool:
    from server.auth import current_analyst

    analyst = await current_analyst(request)
    return analyst is not None and analyst.role == "admin"


def _site_in_db(session: Session, field: str, value: str) -> int | None:
    row: PageSession | PumpCard | AudioClip | None
    if field == "session_id":
        row = session.get(PageSession, value)
    elif not value.isdigit():
        return None
    elif field == "card_pk":
        row = session.get(PumpCard, int(value))
    else:
        row = session.get(AudioClip, int(value))
    return row.site_id if row is not None else None


async def _site_of(request: Request, subject: tuple[str, str]) -> int | None:
    svc = services(request)

    def from_db() -> int | None:
        with svc.sessions() as session:
            return _site_in_db(session, *subject)

    site_id = await run_in_threadpool(from_db)
    field, value = subject
    if site_id is None and field == "session_id":  # a live session: only Redis knows it yet
        raw = await svc.redis.hget(keys.session_meta(value), "site_id")
        site_id = int(raw) if raw and raw.isdigit() else None
    return site_id


async def _may_see(request: Request, view: JobView, site: Site) -> bool:
    if view.subject is None:
        return False
    return await _site_of(request, view.subject) == site.id


async def _find(request: Request, job_id: str) -> JobView | None:
    svc = services(request)

    def from_db() -> JobView | None:
        with svc.sessions() as session:
            return stored_job(session, job_id)

    return await run_in_threadpool(from_db) or await queued_job(svc.redis, job_id)


async def get_job(request: Request) -> JSONResponse:
    job_id = request.path_params["job_id"]
    try:
        site = await run_in_threadpool(_authenticate, request)
        admin = site is None and await _is_admin(request)
        if site is None and not admin:
            return _error(401, "unauthorized", "send the site key and secret, or log in as admin")
        view = await _find(request, job_id)
        if view is not None and site is not None and not await _may_see(request, view, site):
            view = None  # another site's job: as good as unknown
    except AccessDenied as e:
        return _error(401, "unauthorized", str(e))
    except (RedisError, SQLAlchemyError) as e:
        log.warning("jobs API: store unavailable: %s", e)
        return _error(503, "store_unavailable", "Redis or the database does not answer")
    if view is None:
        return _error(404, "unknown_job", f"no job {job_id!r}")
    return JSONResponse(view.body(full_error=admin))


def routes() -> list[BaseRoute]:
    return [Route("/api/v1/jobs/{job_id}", get_job, methods=["GET"])]
