"""JSON API of the pump pipeline: submit cards (JSON or CSV upload), fetch diagnoses.

Authentication: the site secret, ``Authorization: Bearer <site_key>.<site_secret>``
(:func:`server.siteauth.authenticate_site`). Wells belong to the site that submitted their
cards: a ``well_id`` is looked up *within* the authenticated site, so another site's well or
card with the same id is neither readable nor writable, and answers 404 like one that does not
exist (no existence leak), as the accounts API does. A site submitting to a well id another
site uses gets a separate well of its own.

- ``POST /api/pump/cards`` JSON: one card ``{"card_id", "well_id"?, "kind"?, "position",
  "load"}`` (or ``"points"``), or ``{"well_id"?, "kind"?, "cards": [card, ...]}``.
- ``POST /api/pump/cards.csv?well_id=&card_id=&kind=``: a CSV in either layout of
  :mod:`scoring.pump.cards`, as the request body (``text/csv``) or a multipart ``file`` field.
- ``GET /api/pump/cards/{card_pk}``: the card and its latest diagnosis (``status`` pending/done).
- ``POST /api/pump/cards/{card_pk}/diagnose``: queue the card again.
- ``GET /api/pump/wells/{well_id}/diagnoses``: every card of a well with its latest diagnosis
  (404 when the site has no card in that well).

A request is all or nothing: every card is validated and checked for an existing
``(well_id, card_id)`` before any is stored. Stored cards are queued after the commit, so a
worker never sees a job whose card is not there yet.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from redis.exceptions import RedisError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from renderer.errors import InvalidCard, InvalidInput, NotFound
from scoring import jobs
from scoring.pump.cards import Card, from_json, parse_csv
from scoring.schema import PumpCard, PumpDiagnosis
from server import site_api
from server.app import services

MAX_BODY = 8 * 1024 * 1024
MAX_CARDS = 1000


async def _body(request: Request) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY:
        raise InvalidInput(f"body larger than {MAX_BODY} bytes", "too_large")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise InvalidInput(f"body larger than {MAX_BODY} bytes", "too_large")
    return body


def cards_from_payload(payload: Any) -> list[Card]:
    """The cards of a JSON request body (see the module docstring)."""
    if isinstance(payload, dict) and "cards" in payload:
        items = payload["cards"]
        if not isinstance(items, list) or not items:
            raise InvalidCard("cards must be a non-empty list", "bad_json")
        well = str(payload.get("well_id") or "")
        kind = str(payload.get("kind") or "surface")
        return [from_json(item, well_id=well, kind=kind) for item in items]
    return [from_json(payload)]


def _check_batch(cards: Sequence[Card]) -> None:
    if len(cards) > MAX_CARDS:
        raise InvalidCard(f"{len(cards)} cards, at most {MAX_CARDS} per request", "too_many_cards")
    seen: set[tuple[str, str]] = set()
    for card in cards:
        key = (card.well_id, card.card_id)
        if key in seen:
            raise InvalidCard(
                f"card {card.card_id} of well {card.well_id!r} appears twice", "duplicate_card"
            )
        seen.add(key)


class CardExists(InvalidInput):
    """A card with this (well_id, card_id) is already stored."""


def store_cards(
    session: Session, cards: Sequence[Card], source: str, site_id: int
) -> list[PumpCard]:
    """Insert the cards into wells of site ``site_id`` (all or nothing); :class:`CardExists`
    when one is already stored there."""
    _check_batch(cards)
    for card in cards:
        existing = session.scalars(
            select(PumpCard.id).where(
                PumpCard.site_id == site_id,
                PumpCard.well_id == card.well_id,
                PumpCard.card_id == card.card_id,
            )
        ).first()
        if existing is not None:
            raise CardExists(
                f"card {card.card_id} of well {card.well_id!r} already exists (id {existing})",
                "card_exists",
            )
    rows = [
        PumpCard(
            site_id=site_id,
            well_id=card.well_id,
            card_id=card.card_id,
            kind=card.kind,
            n_points=card.n_points,
            points=card.points(),
            source=source,
        )
        for card in cards
    ]
    session.add_all(rows)
    try:
        session.flush()
    except IntegrityError as e:
        raise CardExists(
            "a card with the same well_id and card_id already exists", "card_exists"
        ) from e
    return rows


async def _submit(request: Request, cards: list[Card], source: str) -> JSONResponse:
    svc, site = services(request), site_api.site_id(request)

    def insert() -> list[tuple[int, str, str]]:
        with svc.sessions() as session, session.begin():
            rows = store_cards(session, cards, source, site)
            return [(r.id, r.well_id, r.card_id) for r in rows]

    stored = await run_in_threadpool(insert)
    out: list[dict[str, Any]] = [
        {"card_pk": pk, "well_id": well, "card_id": card_id, "job_id": None}
        for pk, well, card_id in stored
    ]
    try:
        for item in out:
            item["job_id"] = await jobs.enqueue(
                svc.redis, "pump", {"card_pk": str(item["card_pk"])}
            )
    except RedisError as e:
        # the cards are safely stored; say which still need POST …/diagnose
        detail = f"cards stored but not all queued ({e.__class__.__name__}); queue them again"
        body = {"error": "queue_unavailable", "detail": detail, "cards": out}
        return JSONResponse(body, status_code=503)
    return JSONResponse({"cards": out}, status_code=202)


async def _guarded(request: Request, handler: Any) -> Response:
    return await site_api.guarded(request, handler, conflicts=(CardExists,))


async def _post_json(request: Request) -> Response:
    body = await _body(request)
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidCard(f"the body is not JSON: {e}", "bad_json") from e
    return await _submit(request, cards_from_payload(payload), "api")


async def _csv_text(request: Request) -> str:
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        async with request.form(max_files=1, max_fields=10) as form:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise InvalidCard("multipart upload needs a 'file' field", "no_file")
            raw = await upload.read(MAX_BODY + 1)
        if len(raw) > MAX_BODY:
            raise InvalidInput(f"file larger than {MAX_BODY} bytes", "too_large")
    else:
        raw = await _body(request)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidCard("the CSV is not UTF-8 text", "bad_encoding") from e


async def _post_csv(request: Request) -> Response:
    q = request.query_params
    cards = parse_csv(
        await _csv_text(request),
        card_id=q.get("card_id", "card"),
        well_id=q.get("well_id", ""),
        kind=q.get("kind", "surface"),
    )
    return await _submit(request, cards, "csv")


def diagnosis_json(row: PumpDiagnosis | None) -> dict[str, Any] | None:
    if row is None:
        return None
    return {
        "job_id": row.job_id,
        "mode": row.mode,
        "confidence": row.confidence,
        "probabilities": row.probabilities,
        "untrained": row.untrained,
        "model_version_id": row.model_version_id,
        "created_at": row.created_at.isoformat() if row.created_at else None,
    }


def latest_diagnosis(session: Session, card_pk: int) -> PumpDiagnosis | None:
    return session.scalars(
        select(PumpDiagnosis)
        .where(PumpDiagnosis.card_pk == card_pk)
        .order_by(PumpDiagnosis.id.desc())
        .limit(1)
    ).first()


def card_json(session: Session, card: PumpCard) -> dict[str, Any]:
    diag = latest_diagnosis(session, card.id)
    return {
        "card_pk": card.id,
        "well_id": card.well_id,
        "card_id": card.card_id,
        "kind": card.kind,
        "n_points": card.n_points,
        "status": "done" if diag is not None else "pending",
        "diagnosis": diagnosis_json(diag),
    }


def _card_pk(request: Request) -> int:
    raw = request.path_params["card_pk"]
    if not str(raw).isdigit():
        raise NotFound(f"no pump card {raw!r}")
    return int(raw)


def site_card(session: Session, site_id: int, pk: int) -> PumpCard:
    """Card ``pk`` if it belongs to the site; :class:`NotFound` otherwise, with the same words
    whether it is another site's or missing."""
    card = session.get(PumpCard, pk)
    if card is None or card.site_id != site_id:
        raise NotFound(f"no pump card {pk}")
    return card


async def _get_card(request: Request) -> Response:
    svc, pk, site = services(request), _card_pk(request), site_api.site_id(request)

    def load() -> dict[str, Any]:
        with svc.sessions() as session:
            return card_json(session, site_card(session, site, pk))

    return JSONResponse(await run_in_threadpool(load))


async def _rediagnose(request: Request) -> Response:
    svc, pk, site = services(request), _card_pk(request), site_api.site_id(request)

    def check() -> None:
        with svc.sessions() as session:
            site_card(session, site, pk)

    await run_in_threadpool(check)
    job_id = await jobs.enqueue(svc.redis, "pump", {"card_pk": str(pk)})
    return JSONResponse({"card_pk": pk, "job_id": job_id}, status_code=202)


async def _well(request: Request) -> Response:
    svc, well, site = services(request), request.path_params["well_id"], site_api.site_id(request)

    def load() -> list[dict[str, Any]]:
        with svc.sessions() as session:
            cards = session.scalars(
                select(PumpCard)
                .where(PumpCard.site_id == site, PumpCard.well_id == well)
                .order_by(PumpCard.id)
            ).all()
            if not cards:
                raise NotFound(f"no pump well {well!r}")
            return [card_json(session, c) for c in cards]

    return JSONResponse({"well_id": well, "cards": await run_in_threadpool(load)})


async def post_cards(request: Request) -> Response:
    return await _guarded(request, _post_json)


async def post_cards_csv(request: Request) -> Response:
    return await _guarded(request, _post_csv)


async def get_card(request: Request) -> Response:
    return await _guarded(request, _get_card)


async def rediagnose(request: Request) -> Response:
    return await _guarded(request, _rediagnose)


async def well_diagnoses(request: Request) -> Response:
    return await _guarded(request, _well)


def routes() -> list[BaseRoute]:
    return [
        Route("/api/pump/cards", post_cards, methods=["POST"]),
        Route("/api/pump/cards.csv", post_cards_csv, methods=["POST"]),
        Route("/api/pump/cards/{card_pk}", get_card, methods=["GET"]),
        Route("/api/pump/cards/{card_pk}/diagnose", rediagnose, methods=["POST"]),
        Route("/api/pump/wells/{well_id}/diagnoses", well_diagnoses, methods=["GET"]),
    ]
