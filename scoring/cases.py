"""Review cases and their append-only audit log, shared by pipelines, the API and the review UI.

Pipelines open cases from a worker transaction; the review UI (server) changes their status.
Every change goes through :func:`record_event`, never through an UPDATE of ``case_events``.

Case statuses: ``open`` → (``escalated``) → ``impostor`` or ``genuine``. An analyst claims a case
by opening it; the claim lasts :data:`CLAIM_DURATION` and only the claimant may decide while it
holds. A decision on a mouse case sets the page session's ``label`` (``impostor``/``genuine``),
which ``trailguard sessions export --labelled`` exports for the next training run.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from renderer.errors import AccessDenied, InvalidInput
from scoring.schema import CaseEvent, PageSession, ReviewCase, utcnow

DEFAULT_DEADLINE = dt.timedelta(hours=24)
CLAIM_DURATION = dt.timedelta(minutes=60)
STATUSES = ("open", "escalated", "impostor", "genuine")
ACTIVE_STATUSES = ("open", "escalated")
DECISIONS = {"impostor": "impostor", "genuine": "genuine", "escalate": "escalated"}
"""Analyst decision → the case status it leads to."""
LABELS = ("impostor", "genuine")
OWNER_DECISIONS = ("not_me", "me")


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


def as_utc(value: dt.datetime) -> dt.datetime:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def claim_holder(case: ReviewCase, now: dt.datetime | None = None) -> int | None:
    """The analyst id whose claim on ``case`` still holds, or ``None``."""
    if case.assignee_id is None or case.claimed_until is None:
        return None
    return case.assignee_id if as_utc(case.claimed_until) > (now or utcnow()) else None


def claim(
    session: Session,
    case: ReviewCase,
    *,
    analyst_id: int,
    actor: str,
    now: dt.datetime | None = None,
) -> bool:
    """Claim ``case`` for the analyst (or renew their claim); ``False`` if another holds it."""
    now = now or utcnow()
    if case.status not in ACTIVE_STATUSES:
        return False
    holder = claim_holder(case, now)
    if holder is not None and holder != analyst_id:
        return False
    case.assignee_id = analyst_id
    case.claimed_until = now + CLAIM_DURATION
    case.updated_at = now
    if holder is None:
        record_event(
            session,
            case,
            actor=actor,
            kind="claimed",
            data={"until": case.claimed_until.isoformat()},
        )
    return True


def release(session: Session, case: ReviewCase, *, analyst_id: int, actor: str) -> None:
    """Give up the analyst's claim on ``case`` (no-op when they do not hold it)."""
    if claim_holder(case) == analyst_id:
        case.claimed_until = None
        case.updated_at = utcnow()
        record_event(session, case, actor=actor, kind="released")


def set_label(
    session: Session, case: ReviewCase, label: str | None, *, actor: str, reason: str
) -> None:
    """Label the case's page session (mouse cases only), recording the change."""
    if case.pipeline != "mouse":
        return
    page = session.get(PageSession, case.subject_id)
    if page is None or page.label == label:
        return
    old, page.label = page.label, label
    record_event(
        session, case, actor=actor, kind="labelled", reason=reason, data={"from": old, "to": label}
    )


def decide(
    session: Session,
    case: ReviewCase,
    *,
    decision: str,
    reason: str,
    analyst_id: int,
    actor: str,
    now: dt.datetime | None = None,
) -> None:
    """Apply an analyst's decision (``impostor``, ``genuine`` or ``escalate``) with a reason.

    The analyst must hold the claim, or the case must be unclaimed (then they claim it). A
    decided case may be decided again (a correction); every step lands in the audit log.
    """
    if decision not in DECISIONS:
        raise InvalidInput(f"decision must be one of {', '.join(DECISIONS)}", "bad_decision")
    reason = reason.strip()
    if not reason:
        raise InvalidInput("a decision needs a reason", "missing_reason")
    now = now or utcnow()
    holder = claim_holder(case, now)
    if holder is not None and holder != analyst_id:
        raise AccessDenied("another analyst holds the claim on this case")
    old = case.status
    case.status = DECISIONS[decision]
    case.assignee_id = analyst_id
    case.claimed_until = None
    case.updated_at = now
    record_event(
        session,
        case,
        actor=actor,
        kind=decision,
        reason=reason[:4000],
        data={"from": old, "to": case.status},
    )
    if decision in LABELS:
        set_label(session, case, decision, actor=actor, reason=reason[:4000])


def record_owner_decision(
    session: Session, case: ReviewCase, *, decision: str, actor: str, alert_id: int
) -> None:
    """The account owner's answer to an alert ("this wasn't me" / "this was me").

    It goes into the audit log; it labels the session only while no analyst has decided,
    because a mailbox can be compromised too and an analyst's decision wins.
    """
    if decision not in OWNER_DECISIONS:
        raise InvalidInput("owner decision must be not_me or me", "bad_decision")
    kind = "owner_not_me" if decision == "not_me" else "owner_me"
    text = "Owner says this wasn't them" if decision == "not_me" else "Owner says this was them"
    record_event(session, case, actor=actor, kind=kind, reason=text, data={"alert_id": alert_id})
    if decision == "not_me" and case.status == "genuine":
        # The owner contradicts an analyst's "genuine": a person has to look again.
        case.status, case.updated_at = "escalated", utcnow()
        record_event(
            session,
            case,
            actor="system",
            kind="escalate",
            reason="the owner says this wasn't them, but the case was marked genuine",
            data={"from": "genuine", "to": "escalated"},
        )
        return
    if case.status in ACTIVE_STATUSES and case.pipeline == "mouse":
        page = session.get(PageSession, case.subject_id)
        if page is not None and page.label is None:
            label = "impostor" if decision == "not_me" else "genuine"
            set_label(session, case, label, actor=actor, reason=text)


def events(session: Session, case: ReviewCase) -> list[CaseEvent]:
    """The case's audit log, oldest first."""
    return list(
        session.scalars(
            select(CaseEvent).where(CaseEvent.case_id == case.id).order_by(CaseEvent.id)
        )
    )
