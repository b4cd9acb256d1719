"""JSON API of the whale pipeline: upload recordings, fetch their detections.

Authentication: the site secret, ``Authorization: Bearer <site_key>.<site_secret>``
(:func:`server.siteauth.authenticate_site`). A clip belongs to the site that uploaded it:
clips are listed and read only within the authenticated site, and another site's clip answers
404 with the same words as one that does not exist (no existence leak), as the pump API does.

- ``POST /api/whale/clips?name=``: a WAV, FLAC or OGG recording as the raw request body or a
  multipart ``file`` field. It is written under ``data_dir/whale/uploads`` while it arrives (so
  an hours-long file never sits in memory), checked, recorded as an ``AudioClip`` and queued
  for the ``whale`` pipeline. 202 ``{"clip_id", "job_id", "sample_rate", "duration_s"}``; a
  corrupt, empty or unsupported file is 400 with ``error`` = the reason code and nothing kept.
- ``GET /api/whale/clips``: the site's clips, newest first (at most :data:`LIST_LIMIT`), each
  with its ``status`` and number of detections.
- ``GET /api/whale/clips/{clip_id}``: the clip and its latest analysis: ``status``
  pending/done, ``threshold``, ``untrained``, ``detections`` and per-window ``windows``.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from renderer.errors import InvalidAudio, InvalidInput, NotFound
from scoring import jobs
from scoring.schema import AudioClip, ClipAnalysis, Detection
from scoring.whale import audio_io
from server import site_api
from server.app import services

MAX_UPLOAD = 2 * 1024**3
"""Largest accepted recording (2 GiB: about 30 h of 16-bit mono audio at 10 kHz)."""
COPY_CHUNK = 1024 * 1024
LIST_LIMIT = 200
"""Most clips one ``GET /api/whale/clips`` answers with (the newest)."""


def upload_dir(data_dir: Path) -> Path:
    return data_dir / "whale" / "uploads"


def _too_large() -> InvalidInput:
    return InvalidInput(f"recording larger than {MAX_UPLOAD} bytes", "too_large")


async def _save_body(request: Request, path: Path) -> None:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_UPLOAD:
        raise _too_large()
    size = 0
    with path.open("wb") as f:
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_UPLOAD:
                raise _too_large()
            f.write(chunk)


async def _save_multipart(request: Request, path: Path) -> str:
    async with request.form(max_files=1, max_fields=10, max_part_size=COPY_CHUNK) as form:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise InvalidAudio("multipart upload needs a 'file' field", "no_file")
        size = 0
        with path.open("wb") as f:
            while chunk := await upload.read(COPY_CHUNK):
                size += len(chunk)
                if size > MAX_UPLOAD:
                    raise _too_large()
                f.write(chunk)
        return upload.filename or ""


def _record(session: Session, site_id: int, name: str, path: Path) -> AudioClip:
    info = audio_io.probe(path)
    clip = AudioClip(
        site_id=site_id,
        name=name[:500],
        path=str(path),
        sample_rate=info.sample_rate,
        duration_s=info.duration_s,
    )
    session.add(clip)
    session.flush()
    return clip


async def _upload(request: Request) -> Response:
    svc, site = services(request), site_api.site_id(request)
    folder = upload_dir(svc.settings.data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{uuid.uuid4().hex}.audio"
    try:
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            filename = await _save_multipart(request, path)
        else:
            filename = ""
        if not path.exists():
            await _save_body(request, path)
        name = request.query_params.get("name") or filename or path.name

        def insert() -> tuple[int, int, float]:
            with svc.sessions() as session, session.begin():
                clip = _record(session, site, name, path)
                return clip.id, clip.sample_rate, clip.duration_s

        clip_id, rate, duration = await run_in_threadpool(insert)
    except BaseException:
        path.unlink(missing_ok=True)  # a rejected upload leaves nothing behind
        raise
    job_id = await jobs.enqueue(svc.redis, "whale", {"clip_id": str(clip_id)})
    body = {"clip_id": clip_id, "job_id": job_id, "sample_rate": rate, "duration_s": duration}
    return JSONResponse(body, status_code=202)


def latest_analysis(session: Session, clip_id: int) -> ClipAnalysis | None:
    stmt = (
        select(ClipAnalysis)
        .where(ClipAnalysis.clip_id == clip_id)
        .order_by(ClipAnalysis.id.desc())
        .limit(1)
    )
    return session.scalars(stmt).first()


def detections_of(session: Session, analysis_id: int) -> list[Detection]:
    stmt = select(Detection).where(Detection.analysis_id == analysis_id).order_by(Detection.start_s)
    return list(session.scalars(stmt))


def site_clip(session: Session, site_id: int, clip_id: int) -> AudioClip:
    """Clip ``clip_id`` if it belongs to the site; :class:`NotFound` otherwise, with the same
    words whether it is another site's or missing."""
    clip = session.get(AudioClip, clip_id)
    if clip is None or clip.site_id != site_id:
        raise NotFound(f"audio clip {clip_id} does not exist")
    return clip


def clip_json(session: Session, clip: AudioClip) -> dict[str, Any]:
    clip_id = clip.id
    out: dict[str, Any] = {
        "clip_id": clip.id,
        "name": clip.name,
        "sample_rate": clip.sample_rate,
        "duration_s": clip.duration_s,
        "status": "pending",
    }
    analysis = latest_analysis(session, clip_id)
    if analysis is not None:
        out.update(
            status="done",
            job_id=analysis.job_id,
            model_version_id=analysis.model_version_id,
            untrained=analysis.untrained,
            threshold=analysis.threshold,
            detections=[
                {"start_s": d.start_s, "end_s": d.end_s, "confidence": d.confidence}
                for d in detections_of(session, analysis.id)
            ],
            windows=analysis.windows,
        )
    return out


async def _get_clip(request: Request) -> Response:
    raw = str(request.path_params["clip_id"])
    if not raw.isdigit():
        raise NotFound(f"audio clip {raw!r} does not exist")
    svc, site = services(request), site_api.site_id(request)

    def load() -> dict[str, Any]:
        with svc.sessions() as session:
            return clip_json(session, site_clip(session, site, int(raw)))

    return JSONResponse(await run_in_threadpool(load))


def _summary(session: Session, clip: AudioClip) -> dict[str, Any]:
    analysis = latest_analysis(session, clip.id)
    return {
        "clip_id": clip.id,
        "name": clip.name,
        "sample_rate": clip.sample_rate,
        "duration_s": clip.duration_s,
        "created_at": clip.created_at.isoformat(),
        "status": "pending" if analysis is None else "done",
        "n_detections": None if analysis is None else len(detections_of(session, analysis.id)),
    }


async def _list_clips(request: Request) -> Response:
    svc, site = services(request), site_api.site_id(request)

    def load() -> list[dict[str, Any]]:
        with svc.sessions() as session:
            clips = session.scalars(
                select(AudioClip)
                .where(AudioClip.site_id == site)
                .order_by(AudioClip.id.desc())
                .limit(LIST_LIMIT)
            )
            return [_summary(session, clip) for clip in clips]

    return JSONResponse({"clips": await run_in_threadpool(load)})


async def _guarded(request: Request, handler: Any) -> Response:
    return await site_api.guarded(request, handler)


async def upload_clip(request: Request) -> Response:
    return await _guarded(request, _upload)


async def get_clip(request: Request) -> Response:
    return await _guarded(request, _get_clip)


async def list_clips(request: Request) -> Response:
    return await _guarded(request, _list_clips)


def routes() -> list[BaseRoute]:
    return [
        Route("/api/whale/clips", upload_clip, methods=["POST"]),
        Route("/api/whale/clips", list_clips, methods=["GET"]),
        Route("/api/whale/clips/{clip_id}", get_clip, methods=["GET"]),
    ]
