"""``/review/sessions/{sid}/trail.png``: a page session's mouse trail as analysts see it.

The events come from the archived samples (``PageSession.samples``) once the session was
scored, else from Redis while it is still live; ``renderer.mouse.render_trail`` draws them.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from renderer.errors import InvalidInput, NotFound
from renderer.mouse import render_trail
from scoring import session_store
from scoring.schema import PageSession
from server.auth import require_analyst

IMAGE_SIZE = (384, 384)


def trail_png(events: np.ndarray, viewport: tuple[int, int]) -> bytes:
    """PNG bytes of the trail; raises InvalidSession (an InvalidInput) when unrenderable."""
    image = render_trail(events, (float(viewport[0]), float(viewport[1])), size=IMAGE_SIZE)
    out = io.BytesIO()
    Image.fromarray(image, mode="RGB").save(out, format="PNG", optimize=False)
    return out.getvalue()


async def session_trail(request: Request) -> Response:
    from server.app import services

    await require_analyst(request)
    svc = services(request)
    sid = str(request.path_params["sid"])
    with svc.sessions() as session:
        page = session.get(PageSession, sid)
    if page is None:
        return PlainTextResponse(f"no page session {sid}", status_code=404)
    try:
        if page.samples:
            events = session_store.unarchive(page.samples)
            viewport = (page.viewport_w, page.viewport_h)
        else:
            live = await session_store.read_session(svc.redis, sid)
            events, viewport = live.events, live.viewport
        png = await run_in_threadpool(trail_png, events, viewport)
    except NotFound:
        return PlainTextResponse("the session's samples are gone", status_code=404)
    except InvalidInput as e:
        return PlainTextResponse(f"cannot draw this session ({e.code}): {e}", status_code=422)
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=300"})


def routes() -> list[BaseRoute]:
    return [Route("/review/sessions/{sid:str}/trail.png", session_trail, methods=["GET"])]
