"""Review pages of the whale pipeline (analyst login required).

- ``/whale``: uploaded recordings, newest first, with their latest analysis and owning site;
  ``?site=`` (site id) filters. Analysts see every site's clips (the site API sees only its
  own).
- ``/whale/clips/{clip_id}``: the clip's spectrogram with the detected segments drawn under it
  and a table of segments with their confidence.
- ``/whale/clips/{clip_id}/spectrogram.png``: the PCEN overview the pipeline saved while it
  streamed the recording (one column per 0.24 s, low frequencies at the bottom).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from renderer.audio import overview_image
from scoring.pipelines.whale import overview_path
from scoring.schema import AudioClip, ClipAnalysis, Detection, Site
from server.app import services
from server.auth import require_analyst
from server.review.templating import render
from server.whale_api import detections_of, latest_analysis

PAGE_SIZE = 200
IMAGE_HEIGHT = 128


@dataclass
class ClipRow:
    clip: AudioClip
    analysis: ClipAnalysis | None
    site_name: str
    detections: list[Detection] = field(default_factory=list)


def _rows(request: Request, site: int | None) -> tuple[list[ClipRow], list[tuple[int, str]]]:
    with services(request).sessions() as session:
        # the filter offers the sites that own clips, not every site
        sites = [
            (int(site_id), name)
            for site_id, name in session.execute(
                select(Site.id, Site.name)
                .where(Site.id.in_(select(AudioClip.site_id)))
                .order_by(Site.name, Site.id)
            ).all()
        ]
        query = (
            select(AudioClip, Site.name)
            .join(Site, Site.id == AudioClip.site_id)
            .order_by(AudioClip.id.desc())
            .limit(PAGE_SIZE)
        )
        if site is not None:
            query = query.where(AudioClip.site_id == site)
        rows = []
        for clip, name in session.execute(query).all():
            analysis = latest_analysis(session, clip.id)
            found = detections_of(session, analysis.id) if analysis else []
            rows.append(ClipRow(clip, analysis, name, found))
        return rows, sites


def _site_param(request: Request) -> int | None:
    raw = request.query_params.get("site", "")
    return int(raw) if raw.isdigit() else None


async def whale_list(request: Request) -> Response:
    await require_analyst(request)
    site = _site_param(request)
    rows, sites = await run_in_threadpool(_rows, request, site)
    return render(request, "whale/list.html", {"rows": rows, "sites": sites, "site": site})


def _clip_id(request: Request) -> int:
    raw = str(request.path_params["clip_id"])
    if not raw.isdigit():
        raise HTTPException(404, "no such clip")
    return int(raw)


def _load(request: Request, clip_id: int) -> ClipRow:
    with services(request).sessions() as session:
        clip = session.get(AudioClip, clip_id)
        if clip is None:
            raise HTTPException(404, "no such clip")
        analysis = latest_analysis(session, clip_id)
        site = session.get(Site, clip.site_id)
        found = detections_of(session, analysis.id) if analysis else []
        return ClipRow(clip, analysis, site.name if site else "", found)


async def whale_clip(request: Request) -> Response:
    await require_analyst(request)
    row = await run_in_threadpool(_load, request, _clip_id(request))
    has_image = overview_path(services(request).settings.data_dir, row.clip.id).exists()
    duration = max(row.clip.duration_s, 1e-9)
    segments = [
        {
            "left": 100 * d.start_s / duration,
            "width": max(0.3, 100 * (d.end_s - d.start_s) / duration),
            "detection": d,
        }
        for d in row.detections
    ]
    context = {"row": row, "has_image": has_image, "segments": segments}
    return render(request, "whale/clip.html", context)


def png_bytes(columns: np.ndarray) -> bytes:
    image = Image.fromarray(overview_image(columns.astype(np.float32)))
    image = image.resize((max(1, image.width), IMAGE_HEIGHT), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


async def whale_spectrogram(request: Request) -> Response:
    await require_analyst(request)
    path = overview_path(services(request).settings.data_dir, _clip_id(request))
    if not path.exists():
        raise HTTPException(404, "no spectrogram yet: the clip has not been analysed")
    data = await run_in_threadpool(lambda: png_bytes(np.load(path)))
    return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=300"})


def routes() -> list[BaseRoute]:
    return [
        Route("/whale", whale_list, methods=["GET"]),
        Route("/whale/clips/{clip_id}/spectrogram.png", whale_spectrogram, methods=["GET"]),
        Route("/whale/clips/{clip_id}", whale_clip, methods=["GET"]),
    ]
