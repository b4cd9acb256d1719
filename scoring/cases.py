"""Review cases and their append-only audit log, shared by pipelines, the API and the review UI.

Pipelines open cases from a worker transaction; the review UI (server) changes their status.
Every change goes through :func:`record_event`, never through an UPDATE of ``case_events``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy.orm import Session

from scoring.schema import CaseEvent, ReviewCase, utcnow

DEFAULT_DEADLINE = dt.timedelta(hours=24)


def record_event(
    session: Session,
    case: ReviewCase,
    *,
    actor: str,
    kind: str,
    reason: str = "",
    data: dict[str, Any] | None = None,
) -> CaseEvent:
    event = CaseEvent(case_id=case.id, actor=actor, kind=kind, reason=reason, data=data or {})
    session.add(event)
    session.flush()
    return event


def open_case(
    session: Session,
    *,
    pipeline: str,
    subject_id: str,
    risk: float,
    site_id: int | None = None,
    score_id: int | None = None,
    threshold: float | None = None,
    reason: str = "",
    actor: str = "system",
) -> ReviewCase:
    """Open a review case (or return the open one for the same subject) and log it."""
    existing = (
        session.query(ReviewCase)
        .filter_by(pipeline=pipeline, subject_id=subject_id, status="open")
        .first()
    )
    if existing is not None:
        return existing
    now = utcnow()
    case = ReviewCase(
        pipeline=pipeline,
        subject_id=subject_id,
        risk=risk,
        site_id=site_id,
        score_id=score_id,
        threshold=threshold,
        status="open",
        deadline=now + DEFAULT_DEADLINE,
        created_at=now,
        updated_at=now,
    )
    session.add(case)
    session.flush()
    record_event(session, case, actor=actor, kind="opened", reason=reason, data={"risk": risk})
    return case
