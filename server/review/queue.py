"""``/review``: the case queue, with filters, and ``/review/next`` (the top case nobody holds)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, or_, select
from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from scoring.cases import ACTIVE_STATUSES, STATUSES, claim_holder
from scoring.schema import Analyst, ModelVersion, ReviewCase, Score, Site, utcnow
from server.auth import require_analyst
from server.review.templating import render

PAGE_SIZE = 100
PIPELINES = ("mouse", "pump", "whale")
SORTS = ("risk", "deadline", "age")


@dataclass(frozen=True)
class Filters:
    site: int | None = None
    pipeline: str = ""
    status: str = "active"
    """``active`` (open or escalated), ``all``, or one status."""
    assignee: str = ""
    """``""`` anyone, ``me``, ``none`` (unassigned), or an analyst id."""
    sort: str = "risk"

    @classmethod
    def from_query(cls, query: Any) -> Filters:
        site = query.get("site", "")
        status = query.get("status", "active")
        return cls(
            site=int(site) if site.isdigit() else None,
            pipeline=query.get("pipeline", "") if query.get("pipeline") in PIPELINES else "",
            status=status if status in (*STATUSES, "active", "all") else "active",
            assignee=query.get("assignee", "")[:20],
            sort=query.get("sort", "risk") if query.get("sort") in SORTS else "risk",
        )


@dataclass(frozen=True)
class Row:
    case: ReviewCase
    site_name: str
    model_version: str
    score: float | None
    assignee: str
    claimed: bool


def _filtered(query: Select, filters: Filters, analyst_id: int) -> Select:
    if filters.site is not None:
        query = query.where(ReviewCase.site_id == filters.site)
    if filters.pipeline:
        query = query.where(ReviewCase.pipeline == filters.pipeline)
    if filters.status == "active":
        query = query.where(ReviewCase.status.in_(ACTIVE_STATUSES))
    elif filters.status != "all":
        query = query.where(ReviewCase.status == filters.status)
    if filters.assignee == "me":
        query = query.where(ReviewCase.assignee_id == analyst_id)
    elif filters.assignee == "none":
        query = query.where(ReviewCase.assignee_id.is_(None))
    elif filters.assignee.isdigit():
        query = query.where(ReviewCase.assignee_id == int(filters.assignee))
    return query


def _ordered(query: Select, sort: str) -> Select:
    if sort == "deadline":
        return query.order_by(ReviewCase.deadline.asc(), ReviewCase.risk.desc(), ReviewCase.id)
    if sort == "age":
        return query.order_by(ReviewCase.created_at.asc(), ReviewCase.id)
    return query.order_by(ReviewCase.risk.desc(), ReviewCase.deadline.asc(), ReviewCase.id)


def list_cases(session: Session, filters: Filters, analyst_id: int, offset: int = 0) -> list[Row]:
    query = (
        select(
            ReviewCase, Site.name, ModelVersion.version, Score.score, Score.untrained, Analyst.email
        )
        .outerjoin(Site, Site.id == ReviewCase.site_id)
        .outerjoin(Score, Score.id == ReviewCase.score_id)
        .outerjoin(ModelVersion, ModelVersion.id == Score.model_version_id)
        .outerjoin(Analyst, Analyst.id == ReviewCase.assignee_id)
    )
    query = _ordered(_filtered(query, filters, analyst_id), filters.sort)
    now = utcnow()
    result: Any = session.execute(query.offset(offset).limit(PAGE_SIZE))
    return [
        Row(
            case=case,
            site_name=site_name or "–",
            model_version=version or ("untrained" if untrained else "–"),
            score=score,
            assignee=email or "",
            claimed=claim_holder(case, now) is not None,
        )
        for case, site_name, version, score, untrained, email in result
    ]


def next_case_id(session: Session, analyst_id: int, now: dt.datetime | None = None) -> int | None:
    """The riskiest open case that nobody else holds a claim on."""
    now = now or utcnow()
    query = (
        select(ReviewCase.id)
        .where(
            ReviewCase.status == "open",
            or_(
                ReviewCase.assignee_id.is_(None),
                ReviewCase.assignee_id == analyst_id,
                ReviewCase.claimed_until.is_(None),
                ReviewCase.claimed_until < now,
            ),
        )
        .order_by(ReviewCase.risk.desc(), ReviewCase.deadline.asc(), ReviewCase.id)
        .limit(1)
    )
    return session.scalars(query).first()


async def queue_page(request: Request) -> Response:
    from server.app import services

    analyst = await require_analyst(request)
    filters = Filters.from_query(request.query_params)
    page = request.query_params.get("page", "1")
    offset = (max(1, int(page)) - 1) * PAGE_SIZE if page.isdigit() else 0
    with services(request).sessions() as session:
        rows = list_cases(session, filters, analyst.id, offset)
        sites = session.execute(select(Site.id, Site.name).order_by(Site.name)).all()
        analysts = session.execute(select(Analyst.id, Analyst.email).order_by(Analyst.email)).all()
    ctx = {
        "rows": rows,
        "filters": filters,
        "sites": sites,
        "analysts": analysts,
        "statuses": STATUSES,
        "pipelines": PIPELINES,
        "sorts": SORTS,
        "page": offset // PAGE_SIZE + 1,
        "page_size": PAGE_SIZE,
    }
    return render(request, "review/queue.html", ctx)


async def next_case(request: Request) -> Response:
    from server.app import services

    analyst = await require_analyst(request)
    with services(request).sessions() as session:
        case_id = next_case_id(session, analyst.id)
    target = f"/review/cases/{case_id}" if case_id is not None else "/review?empty=1"
    return RedirectResponse(target, status_code=303)
