"""Review pages of the pump pipeline (analyst login required).

- ``/pump``: wells with their cards, each with its latest diagnosis; ``?site=`` (site id) and
  ``?well=`` filter. Analysts see every site's wells (the site API sees only its own); a well
  id is a site's own name, so the table shows the owning site next to it.
- ``/pump/cards/{card_pk}``: one card's image, predicted mode, confidence, probabilities.
- ``/pump/cards/{card_pk}.png``: the card image (the renderer's output, enlarged).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image
from sqlalchemy import func, select
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from renderer.errors import InvalidCard
from renderer.pump import render_card, to_png_array
from scoring.schema import PumpCard, PumpDiagnosis, Site
from server.app import services
from server.auth import require_analyst
from server.pump_api import latest_diagnosis
from server.review.templating import render

PAGE_SIZE = 200
IMAGE_SIZE = 160


@dataclass(frozen=True)
class CardRow:
    card: PumpCard
    diagnosis: PumpDiagnosis | None
    site_name: str


@dataclass(frozen=True)
class WellRow:
    site_id: int
    site_name: str
    well_id: str
    n_cards: int


def png_bytes(points: list[Any], size: int = IMAGE_SIZE) -> bytes:
    """A stored card's points as a PNG (dark line and light fill on white)."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    image = render_card(pts[:, 0], pts[:, 1], size=size, line_width=2.0, fill=True)
    buf = io.BytesIO()
    Image.fromarray(to_png_array(image)).save(buf, format="PNG")
    return buf.getvalue()


def _rows(request: Request, site: int | None, well: str) -> tuple[list[CardRow], list[WellRow]]:
    svc = services(request)
    with svc.sessions() as session:
        wells = [
            WellRow(site_id, name, w, int(n))
            for site_id, name, w, n in session.execute(
                select(PumpCard.site_id, Site.name, PumpCard.well_id, func.count())
                .join(Site, Site.id == PumpCard.site_id)
                .group_by(PumpCard.site_id, Site.name, PumpCard.well_id)
                .order_by(Site.name, PumpCard.site_id, PumpCard.well_id)
            ).all()
        ]
        query = (
            select(PumpCard, Site.name)
            .join(Site, Site.id == PumpCard.site_id)
            .order_by(Site.name, PumpCard.well_id, PumpCard.card_id)
            .limit(PAGE_SIZE)
        )
        if site is not None:
            query = query.where(PumpCard.site_id == site)
        if well:
            query = query.where(PumpCard.well_id == well)
        rows = [
            CardRow(card, latest_diagnosis(session, card.id), name)
            for card, name in session.execute(query).all()
        ]
        return rows, wells


def _site_param(request: Request) -> int | None:
    raw = request.query_params.get("site", "")
    return int(raw) if raw.isdigit() else None


async def pump_list(request: Request) -> Response:
    await require_analyst(request)
    site, well = _site_param(request), request.query_params.get("well", "")[:200]
    rows, wells = await run_in_threadpool(_rows, request, site, well)
    return render(
        request, "pump/list.html", {"rows": rows, "wells": wells, "site": site, "well": well}
    )


def _card_pk(request: Request) -> int:
    raw = str(request.path_params["card_pk"])
    if not raw.isdigit():
        raise HTTPException(404, "no such card")
    return int(raw)


def _load_card(request: Request, pk: int) -> CardRow:
    with services(request).sessions() as session:
        card = session.get(PumpCard, pk)
        if card is None:
            raise HTTPException(404, "no such card")
        site = session.get(Site, card.site_id)
        return CardRow(card, latest_diagnosis(session, pk), site.name if site else "")


async def pump_card(request: Request) -> Response:
    await require_analyst(request)
    row = await run_in_threadpool(_load_card, request, _card_pk(request))
    probs = sorted(
        (row.diagnosis.probabilities or {}).items() if row.diagnosis else [],
        key=lambda kv: -float(kv[1]),
    )
    return render(request, "pump/card.html", {"row": row, "probabilities": probs})


async def pump_card_png(request: Request) -> Response:
    await require_analyst(request)
    row = await run_in_threadpool(_load_card, request, _card_pk(request))
    try:
        data = await run_in_threadpool(png_bytes, row.card.points)
    except InvalidCard as e:
        raise HTTPException(422, f"card cannot be drawn: {e}") from e
    return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=300"})


def routes() -> list[BaseRoute]:
    return [
        Route("/pump", pump_list, methods=["GET"]),
        Route("/pump/cards/{card_pk}.png", pump_card_png, methods=["GET"]),
        Route("/pump/cards/{card_pk}", pump_card, methods=["GET"]),
    ]
