"""The analyst review UI: case queue, case pages, and the page rendering shared by HTML areas."""

from __future__ import annotations

from pathlib import Path

from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"


def routes() -> list[BaseRoute]:
    # Imported here so that ``server.review.templating`` loads without the page modules.
    from server.review import case_page, images, queue

    return [
        Route("/review", queue.queue_page, methods=["GET"]),
        Route("/review/next", queue.next_case, methods=["GET"]),
        *case_page.routes(),
        *images.routes(),
        Mount("/static", app=StaticFiles(directory=STATIC_DIR), name="static"),
    ]
