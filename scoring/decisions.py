"""Real-time risk decisions: "is this visitor the account's owner?" at a sensitive action.

A site's back end asks during the visit (``server.decisions_api``). The answer comes from the
page sessions of that visit *so far*: the samples buffered in Redis are read, rendered and
scored on demand by the live mouse scorer, and the score is compared to the site's policy
(:mod:`scoring.policy`). The steps, each its own function:

- :func:`resolve_visit` - which page sessions make up the visit (Redis metadata + DB rows);
- :func:`gather` - their events as they are in Redis at this moment;
- :func:`aggregate` - one visit score from the per-page scores (window-weighted mean);
- :func:`decide` - pure: evidence + policy → ``allow`` / ``review`` / ``deny`` with reasons;
- :func:`record` - the ``Decision`` audit row, a review case for ``review`` and ``deny``, and
  the alert flow (:func:`scoring.alerting.on_flag`) for a scored ``deny``.

Nothing here invents a score: too little movement, no model, or a site that chose an explicit
answer for accounts without a model give the policy's default with a reason and ``score=None``.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from sqlalchemy import select
from sqlalchemy.orm import Session

from renderer.errors import InvalidInput, NotFound
from scoring import keys
from scoring.alerting import device_label, on_flag
from scoring.cases import open_case, record_event
from scoring.policy import ActionPolicy, Policy
from scoring.schema import Account, Decision, PageSession, Site, utcnow

VISIT_WINDOW = dt.timedelta(minutes=30)
"""Page sessions of the same account and device started this recently belong to one visit."""
MAX_VISIT_PAGES = 20
SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")

# Reasons, as they appear in answers and in the audit rows.
INSUFFICIENT_DATA = "insufficient_data"
NOT_ENROLLED = "not_enrolled"
NO_MODEL = "no_model"
GROUP_MODEL = "group_model"
ACCOUNT_MODEL = "account_model"
NO_ACCOUNT = "no_account"
SCORE_AT_OR_ABOVE_DENY = "score_at_or_above_deny_threshold"
SCORE_AT_OR_ABOVE_REVIEW = "score_at_or_above_review_threshold"
SCORE_BELOW_REVIEW = "score_below_review_threshold"


@dataclass(frozen=True)
class DecisionRequest:
    """What a site asks: one page session, or an account (the site's own id for it)."""

    action: str
    session_id: str | None = None
    account: str | None = None


def parse_request(body: Any) -> DecisionRequest:
    """Validate the JSON body of a decision request; InvalidInput with a precise code."""
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a JSON object", "bad_body")
    unknown = sorted(set(body) - {"session_id", "account_id", "action"})
    if unknown:
        raise InvalidInput(f"unknown field(s): {', '.join(unknown)}", "unknown_field")
    action = body.get("action")
    if not isinstance(action, str) or not re.fullmatch(r"[a-z][a-z0-9_]{0,31}", action):
        raise InvalidInput("action must be a name like login, checkout", "bad_action")
    sid = body.get("session_id")
    account = body.get("account_id")
    if sid is None and account is None:
        raise InvalidInput("give session_id or account_id", "missing_subject")
    if sid is not None and (not isinstance(sid, str) or not SESSION_ID.match(sid)):
        raise InvalidInput("session_id is not a page session id", "bad_session_id")
    if isinstance(account, int) and not isinstance(account, bool):
        account = str(account)
    if account is not None and (not isinstance(account, str) or not 0 < len(account) <= 200):
        raise InvalidInput("account_id must be a string of 1 to 200 characters", "bad_account")
    return DecisionRequest(action=action, session_id=sid, account=account)


# --- the pure decision ------------------------------------------------------------------------


@dataclass(frozen=True)
class Evidence:
    """What the scorer made of the visit so far.

    ``model`` is ``account`` (the account's own model), ``group`` (the group model), ``none``
    (no trained model at all) or ``not_enrolled`` (the account has no model and the site's
    policy answers such accounts without the group model).
    """

    samples: int
    windows: int
    score: float | None
    model: str
    model_version: str | None = None
    has_account: bool = True


@dataclass(frozen=True)
class Verdict:
    decision: str
    score: float | None
    threshold: float | None
    reasons: list[str]


def _context_reasons(ev: Evidence) -> list[str]:
    if not ev.has_account:
        return [NO_ACCOUNT, GROUP_MODEL]
    if ev.model == "group":
        return [NOT_ENROLLED, GROUP_MODEL]
    return [ACCOUNT_MODEL]


def threshold_verdict(score: float, thresholds: ActionPolicy) -> Verdict:
    if score >= thresholds.deny_at:
        return Verdict("deny", score, thresholds.deny_at, [SCORE_AT_OR_ABOVE_DENY])
    if score >= thresholds.review_at:
        return Verdict("review", score, thresholds.review_at, [SCORE_AT_OR_ABOVE_REVIEW])
    return Verdict("allow", score, thresholds.review_at, [SCORE_BELOW_REVIEW])


def decide(policy: Policy, action: str, ev: Evidence) -> Verdict:
    """The answer for ``action`` given the evidence; never a score the model did not give."""
    if ev.model == "not_enrolled":
        return Verdict(policy.not_enrolled, None, None, [NOT_ENROLLED])
    if ev.model == "none":
        extra = [NOT_ENROLLED] if ev.has_account else []
        return Verdict(policy.no_model, None, None, [NO_MODEL, *extra])
    enough = ev.samples >= policy.min_samples and ev.windows >= max(1, policy.min_windows)
    if not enough or ev.score is None:
        return Verdict(policy.insufficient_data, None, None, [INSUFFICIENT_DATA])
    verdict = threshold_verdict(ev.score, policy.for_action(action))
    return Verdict(
        verdict.decision,
        verdict.score,
        verdict.threshold,
        [*verdict.reasons, *_context_reasons(ev)],
    )


def aggregate(pages: Sequence[tuple[float | None, int]]) -> tuple[float | None, int]:
    """One visit score from (page score, page windows): the mean over all windows."""
    scored = [(s, n) for s, n in pages if s is not None and n > 0]
    windows = sum(n for _, n in scored)
    if windows == 0:
        return None, 0
    return float(sum(s * n for s, n in scored) / windows), windows


# --- the visit --------------------------------------------------------------------------------


@dataclass
class Visit:
    """The page sessions of one visit (newest first) and the account they belong to."""

    session_ids: list[str]
    account: Account | None
    subject_session: str | None
    meta: dict[str, dict[str, str]] = field(default_factory=dict)


def _decode(raw: dict[Any, Any]) -> dict[str, str]:
    return {
        (k.decode() if isinstance(k, bytes) else str(k)): (
            v.decode(errors="replace") if isinstance(v, bytes) else str(v)
        )
        for k, v in raw.items()
    }


async def session_meta(redis: aioredis.Redis, sid: str) -> dict[str, str]:
    raw = await redis.hgetall(keys.session_meta(sid))  # type: ignore[misc]
    return _decode(raw)


def find_account(session: Session, site: Site, external_id: str) -> Account | None:
    return session.scalars(
        select(Account).where(Account.site_id == site.id, Account.external_id == external_id)
    ).first()


def sibling_sessions(
    session: Session, site: Site, account: Account, like: dict[str, str] | None, now: dt.datetime
) -> list[str]:
    """Recent page sessions of ``account`` on the same device as ``like`` (or its latest one)."""
    rows = session.scalars(
        select(PageSession)
        .where(
            PageSession.site_id == site.id,
            PageSession.account_id == account.id,
            PageSession.started_at >= now - VISIT_WINDOW,
        )
        .order_by(PageSession.started_at.desc())
        .limit(MAX_VISIT_PAGES)
    ).all()
    if not rows:
        return []
    ua = like.get("user_agent", "") if like else rows[0].user_agent
    ip = like.get("client_ip", "") if like else rows[0].client_ip
    return [r.id for r in rows if r.user_agent == ua and r.client_ip == ip]


async def resolve_visit(
    redis: aioredis.Redis,
    db: Session,
    site: Site,
    req: DecisionRequest,
    now: dt.datetime | None = None,
) -> Visit:
    """The visit a request is about. NotFound for an unknown session or account, or one that
    belongs to another site (the same answer, so ids of other sites cannot be probed);
    InvalidInput ``account_mismatch`` when both are given and disagree."""
    now = now or utcnow()
    like: dict[str, str] | None = None
    external = req.account
    if req.session_id is not None:
        like = await session_meta(redis, req.session_id)
        if not like or like.get("site_id") != str(site.id):
            raise NotFound(f"no live page session {req.session_id!r} for this site")
        in_session = like.get("account") or None
        if external is not None and in_session != external:
            raise InvalidInput("the session belongs to another account", "account_mismatch")
        external = in_session
    account = find_account(db, site, external) if external is not None else None
    if account is None and req.session_id is None:
        raise NotFound("no account with this id for this site")
    ids = sibling_sessions(db, site, account, like, now) if account is not None else []
    if req.session_id is not None:
        ids = [req.session_id, *(i for i in ids if i != req.session_id)]
    metas = {} if like is None else {req.session_id or "": like}
    return Visit(
        session_ids=ids,
        account=account,
        subject_session=ids[0] if ids else None,
        meta=metas,
    )


# --- audit ------------------------------------------------------------------------------------


@dataclass
class Recorded:
    decision_id: int
    case_id: int | None


def _device(meta: dict[str, str]) -> str:
    return device_label(meta.get("user_agent", ""), meta.get("pointer_type", "mouse"))


def record(
    db: Session,
    *,
    site: Site,
    req: DecisionRequest,
    visit: Visit,
    verdict: Verdict,
    evidence: Evidence,
    details: dict[str, Any],
) -> Recorded:
    """Store the decision; ``review``/``deny`` open a case, a scored ``deny`` raises the alert
    flow. The caller commits (one transaction for all of it)."""
    account_id = visit.account.id if visit.account is not None else None
    row = Decision(
        site_id=site.id,
        session_id=visit.subject_session,
        account_id=account_id,
        action=req.action,
        decision=verdict.decision,
        score=verdict.score,
        threshold=verdict.threshold,
        model_version=evidence.model_version,
        reasons=list(verdict.reasons),
        samples_used=evidence.samples,
        details=details,
    )
    db.add(row)
    db.flush()
    case_id = None
    if verdict.decision != "allow" and visit.subject_session is not None:
        case = open_case(
            db,
            pipeline="mouse",
            subject_id=visit.subject_session,
            risk=verdict.score if verdict.score is not None else 0.0,
            site_id=site.id,
            threshold=verdict.threshold,
            reason=f"real-time decision {verdict.decision} at {req.action}",
        )
        record_event(
            db,
            case,
            actor="decision-api",
            kind="decision",
            reason=", ".join(verdict.reasons),
            data={"decision_id": row.id, "decision": verdict.decision, "action": req.action},
        )
        case_id = case.id
        if verdict.decision == "deny" and verdict.score is not None:
            meta = visit.meta.get(visit.subject_session) or {}
            on_flag(
                db,
                case,
                score=verdict.score,
                account_id=account_id,
                device=_device(meta),
                page=meta.get("page_path", ""),
            )
    row.details = {**details, "case_id": case_id}
    db.flush()
    return Recorded(decision_id=row.id, case_id=case_id)
