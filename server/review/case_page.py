"""``/review/cases/{id}``: the evidence of one case, its audit log, and the analyst's decision.

Opening the page claims the case for :data:`scoring.cases.CLAIM_DURATION`. A decision needs a
reason; confirming an impostor on a mouse case queues an email to the account owner (subject to
the per-device daily limit) and wakes the alert dispatcher once the transaction commits. After a
decision the analyst lands on the next open case.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import exists, or_, select
from sqlalchemy.orm import Session
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from renderer.errors import AccessDenied, InvalidInput
from scoring import cases
from scoring.alerting import device_label, queue_owner_alert
from scoring.schema import (
    Account,
    Alert,
    Analyst,
    ModelVersion,
    PageSession,
    ReviewCase,
    Score,
    Site,
)
from server import csrf
from server.alerts import wake_dispatcher
from server.auth import require_analyst
from server.review.location import NetworkFacts, network_facts
from server.review.templating import render

REFERENCE_COUNT = 4
DECISION_LABELS = {
    "impostor": "Confirm impostor",
    "genuine": "Mark genuine",
    "escalate": "Escalate",
}


@dataclass
class Evidence:
    """Everything the case page shows about a mouse case's session."""

    page: PageSession | None
    account: Account | None
    score: Score | None
    model: ModelVersion | None
    network: NetworkFacts | None
    device: str
    references: list[PageSession]


def _references(session: Session, page: PageSession) -> list[PageSession]:
    """The owner's latest genuine sessions: labelled genuine, or scored and not flagged."""
    if page.account_id is None:
        return []
    unflagged = exists().where(Score.session_id == PageSession.id, Score.flagged.is_(False))
    query = (
        select(PageSession)
        .where(
            PageSession.account_id == page.account_id,
            PageSession.id != page.id,
            or_(PageSession.label == "genuine", PageSession.label.is_(None) & unflagged),
            or_(PageSession.label.is_(None), PageSession.label != "impostor"),
        )
        .order_by(PageSession.started_at.desc())
        .limit(REFERENCE_COUNT)
    )
    return list(session.scalars(query))


def evidence(session: Session, case: ReviewCase) -> Evidence:
    page = session.get(PageSession, case.subject_id) if case.pipeline == "mouse" else None
    score = session.get(Score, case.score_id) if case.score_id else None
    model = (
        session.get(ModelVersion, score.model_version_id)
        if score is not None and score.model_version_id
        else None
    )
    account = session.get(Account, page.account_id) if page and page.account_id else None
    return Evidence(
        page=page,
        account=account,
        score=score,
        model=model,
        network=network_facts(page.client_ip) if page is not None else None,
        device=device_label(page.user_agent, page.pointer_type) if page is not None else "",
        references=_references(session, page) if page is not None else [],
    )


def _case_or_404(session: Session, case_id: int) -> ReviewCase:
    case = session.get(ReviewCase, case_id)
    if case is None:
        raise HTTPException(404, f"no case #{case_id}")
    return case


def _page_context(session: Session, case: ReviewCase, analyst: Analyst) -> dict[str, Any]:
    holder_id = cases.claim_holder(case)
    holder = session.get(Analyst, holder_id) if holder_id is not None else None
    site = session.get(Site, case.site_id) if case.site_id else None
    alerts = list(session.scalars(select(Alert).where(Alert.case_id == case.id)))
    return {
        "case": case,
        "site": site,
        "ev": evidence(session, case),
        "events": cases.events(session, case),
        "alerts": alerts,
        "holder": holder,
        "mine": holder_id == analyst.id,
        "decisions": DECISION_LABELS,
        "error": None,
    }


async def case_page(request: Request) -> Response:
    from server.app import services

    analyst = await require_analyst(request)
    case_id = int(request.path_params["case_id"])
    with services(request).sessions() as session, session.begin():
        case = _case_or_404(session, case_id)
        cases.claim(session, case, analyst_id=analyst.id, actor=analyst.email)
        ctx = _page_context(session, case, analyst)
    return render(request, "review/case.html", ctx)


def queue_impostor_alert(session: Session, case: ReviewCase, actor: str) -> Alert | None:
    if case.pipeline != "mouse":
        return None
    page = session.get(PageSession, case.subject_id)
    if page is None or page.account_id is None:
        return None
    return queue_owner_alert(
        session,
        case,
        account_id=page.account_id,
        device=device_label(page.user_agent, page.pointer_type),
        reason="analyst confirmed an impostor",
        actor=actor,
    )


async def decide(request: Request) -> Response:
    from server.app import services

    analyst = await require_analyst(request)
    form = await csrf.checked_form(request)
    case_id = int(request.path_params["case_id"])
    decision = str(form.get("decision") or "")
    reason = str(form.get("reason") or "")
    with services(request).sessions() as session, session.begin():
        case = _case_or_404(session, case_id)
        try:
            cases.decide(
                session,
                case,
                decision=decision,
                reason=reason,
                analyst_id=analyst.id,
                actor=analyst.email,
            )
        except (InvalidInput, AccessDenied) as e:
            # decide() validates before it changes anything, so there is nothing to undo
            ctx = _page_context(session, case, analyst)
            ctx["error"] = str(e)
            return render(request, "review/case.html", ctx, status_code=400)
        queued = (
            queue_impostor_alert(session, case, analyst.email) if decision == "impostor" else None
        )
    if queued is not None:
        wake_dispatcher(request)
    return RedirectResponse("/review/next", status_code=303)


async def release(request: Request) -> Response:
    from server.app import services

    analyst = await require_analyst(request)
    await csrf.checked_form(request)
    case_id = int(request.path_params["case_id"])
    with services(request).sessions() as session, session.begin():
        case = _case_or_404(session, case_id)
        cases.release(session, case, analyst_id=analyst.id, actor=analyst.email)
    return RedirectResponse("/review", status_code=303)


MAX_BULK = 200


async def bulk_decide(request: Request) -> Response:
    """One decision with one reason for many cases (obvious ones, ticked in the queue).

    Each case goes through the same :func:`scoring.cases.decide` as on its page, with its own
    audit entries; cases another analyst holds are skipped and counted.
    """
    from server.app import services

    analyst = await require_analyst(request)
    form = await csrf.checked_form(request)
    decision = str(form.get("decision") or "")
    reason = str(form.get("reason") or "")
    ids = sorted({int(v) for v in form.getlist("case") if isinstance(v, str) and v.isdigit()})
    if not ids or len(ids) > MAX_BULK:
        raise HTTPException(400, f"tick between 1 and {MAX_BULK} cases")
    done = skipped = 0
    queued = False
    with services(request).sessions() as session, session.begin():
        for case in session.scalars(select(ReviewCase).where(ReviewCase.id.in_(ids))):
            try:
                cases.decide(
                    session,
                    case,
                    decision=decision,
                    reason=reason,
                    analyst_id=analyst.id,
                    actor=analyst.email,
                )
            except AccessDenied:
                skipped += 1
                continue
            except InvalidInput as e:
                raise HTTPException(400, str(e)) from e
            done += 1
            if decision == "impostor":
                queued = queue_impostor_alert(session, case, analyst.email) is not None or queued
    if queued:
        wake_dispatcher(request)
    return RedirectResponse(f"/review?done={done}&skipped={skipped}", status_code=303)


def routes() -> list[BaseRoute]:
    return [
        Route("/review/bulk", bulk_decide, methods=["POST"]),
        Route("/review/cases/{case_id:int}", case_page, methods=["GET"]),
        Route("/review/cases/{case_id:int}/decide", decide, methods=["POST"]),
        Route("/review/cases/{case_id:int}/release", release, methods=["POST"]),
    ]
