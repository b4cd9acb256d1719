"""Delivering queued alerts, and the owner's "this wasn't me" / "this was me" pages.

Alerts are queued as rows by :mod:`scoring.alerting` (from worker transactions and the review
UI). :func:`dispatch` sends them outside any of those transactions: immediate owner emails,
digests of batched ones, and signed webhooks. It runs in the server's background task
(:func:`background_dispatch`, in ``server.app.LIFESPAN_HOOKS``) and in
``trailguard alerts dispatch``; a Redis lock keeps two processes from sending the same alert.

Each owner email carries links signed with itsdangerous (salt ``tg-alert-link``) that name the
alert and its random ``token_id``. A link only opens a page; the decision is a POST from that
page's button, because mail scanners fetch links. The POST marks the token used in the same
UPDATE that checks it is unused, so a link works exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlencode

import aiosmtplib
import redis.asyncio as aioredis
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer
from sqlalchemy import select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session, sessionmaker
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from scoring import keys
from scoring.alerting import ALERT_WINDOW, EMAIL, WEBHOOK
from scoring.cases import as_utc, record_owner_decision
from scoring.schema import Account, Alert, PageSession, ReviewCase, Score, Site, utcnow
from server import csrf, mail, webhooks
from server.review.location import network_facts
from server.review.templating import render
from server.settings import Settings

log = logging.getLogger(__name__)

LINK_SALT = "tg-alert-link"
LINK_LIFETIME = dt.timedelta(days=7)
MAX_ATTEMPTS = 5
DISPATCH_INTERVAL = 15.0
SHUTDOWN_GRACE = 5.0
DIGEST_LIMIT = 50
DECISION_TEXT = {"not_me": "This wasn't me", "me": "This was me"}


# --- links ---------------------------------------------------------------------------------


def _serializer(settings: Settings) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(settings.resolved_secret_key(), salt=LINK_SALT)


def link_token(settings: Settings, alert: Alert) -> str:
    return _serializer(settings).dumps({"a": alert.id, "t": alert.token_id})


def owner_links(settings: Settings, alert: Alert) -> tuple[str, str]:
    """(this-wasn't-me URL, this-was-me URL) for ``alert``."""
    base = settings.public_base_url.rstrip("/") + "/alerts/respond?"
    token = link_token(settings, alert)
    return (
        base + urlencode({"t": token, "d": "not_me"}),
        base + urlencode({"t": token, "d": "me"}),
    )


def check_link(
    session: Session, settings: Settings, token: str, now: dt.datetime | None = None
) -> tuple[str, Alert | None]:
    """(state, alert): state is ``ok``, ``invalid``, ``expired`` or ``used``."""
    serializer = _serializer(settings)
    try:
        data = serializer.loads(token, max_age=int(LINK_LIFETIME.total_seconds()))
    except SignatureExpired:
        return "expired", None
    except BadSignature:
        return "invalid", None
    if not isinstance(data, dict) or not isinstance(data.get("a"), int):
        return "invalid", None
    alert = session.get(Alert, data["a"])
    if alert is None or alert.token_id is None or alert.token_id != data.get("t"):
        return "invalid", None
    if alert.token_used_at is not None:
        return "used", alert
    return "ok", alert


# --- what the owner is told ----------------------------------------------------------------


def _reason(case: ReviewCase | None, score: Score | None) -> str:
    if case is not None and case.status == "impostor":
        return "Our fraud team reviewed a session on your account and believes it was not you."
    if score is not None:
        return (
            "The way this session used the mouse did not match how you usually use it "
            f"(risk {score.score:.2f} on a scale from 0 to 1)."
        )
    return "A session on your account did not match how you usually use it."


def alert_item(session: Session, settings: Settings, alert: Alert) -> tuple[str | None, Any]:
    """(owner email or None, :class:`server.mail.AlertItem`) for an owner alert."""
    case = session.get(ReviewCase, alert.case_id) if alert.case_id else None
    account = session.get(Account, alert.account_id) if alert.account_id else None
    page = (
        session.get(PageSession, case.subject_id)
        if case is not None and case.pipeline == "mouse"
        else None
    )
    score = session.get(Score, case.score_id) if case is not None and case.score_id else None
    site = session.get(Site, account.site_id) if account is not None else None
    facts = network_facts(page.client_ip if page is not None else "")
    not_me, me = owner_links(settings, alert)
    item = mail.AlertItem(
        site_name=site.name if site is not None else "TrailGuard",
        account=account.external_id if account is not None else "",
        when=(page.started_at if page is not None else alert.created_at) or utcnow(),
        page=page.page_path if page is not None else "",
        device=alert.device or "unknown device",
        location=facts.location,
        network=facts.network or "unknown",
        reason=_reason(case, score),
        not_me_url=not_me,
        me_url=me,
    )
    return (account.owner_email if account is not None else None), item


# --- dispatch ------------------------------------------------------------------------------


@dataclass
class DispatchReport:
    emails: int = 0
    digests: int = 0
    webhooks: int = 0
    retrying: int = 0
    failed: int = 0


def _ids(session: Session, channel: str, statuses: tuple[str, ...]) -> list[int]:
    query = (
        select(Alert.id)
        .where(Alert.channel == channel, Alert.status.in_(statuses))
        .order_by(Alert.id)
    )
    return list(session.scalars(query))


def _record(
    sessions: sessionmaker[Session],
    ids: list[int],
    error: str | None,
    report: DispatchReport,
    *,
    keep_status: str = "retry",
) -> None:
    """Count one attempt on each alert and record its outcome."""
    with sessions() as session, session.begin():
        for alert in session.scalars(select(Alert).where(Alert.id.in_(ids))):
            alert.attempts += 1
            alert.error = error[:2000] if error else None
            if error is None:
                alert.status, alert.sent_at = "sent", utcnow()
            elif alert.attempts >= MAX_ATTEMPTS:
                alert.status = "failed"
                report.failed += 1
            else:
                alert.status = keep_status
                report.retrying += 1


async def _send_email(
    settings: Settings, sessions: sessionmaker[Session], alert_id: int, report: DispatchReport
) -> None:
    with sessions() as session:
        alert = session.get(Alert, alert_id)
        if alert is None:
            return
        to, item = alert_item(session, settings, alert)
    if not to:
        with sessions() as session, session.begin():
            session.execute(
                update(Alert)
                .where(Alert.id == alert_id)
                .values(status="skipped", error="account has no owner email")
            )
        return
    try:
        await mail.deliver(settings, mail.alert_message(settings, to, item))
    except (aiosmtplib.SMTPException, OSError, ValueError) as e:
        # ValueError: the email library refuses a malformed address or header
        log.warning("alert %s: delivery failed: %s", alert_id, e)
        _record(sessions, [alert_id], f"{e.__class__.__name__}: {e}", report)
        return
    _record(sessions, [alert_id], None, report)
    report.emails += 1


def _due_digests(
    session: Session, now: dt.datetime, digest_after: dt.timedelta
) -> dict[int, list[int]]:
    """account id → batched alert ids, for accounts whose oldest batched alert is due."""
    rows = session.execute(
        select(Alert.account_id, Alert.id, Alert.created_at)
        .where(Alert.channel == EMAIL, Alert.status == "batched")
        .order_by(Alert.created_at, Alert.id)
    ).all()
    groups: dict[int, list[int]] = {}
    due: set[int] = set()
    for account_id, alert_id, created in rows:
        if account_id is None:
            continue
        groups.setdefault(account_id, []).append(alert_id)
        if as_utc(created) <= now - digest_after:
            due.add(account_id)
    return {a: ids[:DIGEST_LIMIT] for a, ids in groups.items() if a in due}


async def _send_digest(
    settings: Settings, sessions: sessionmaker[Session], ids: list[int], report: DispatchReport
) -> None:
    with sessions() as session:
        prepared = [
            alert_item(session, settings, alert)
            for alert in session.scalars(select(Alert).where(Alert.id.in_(ids)))
        ]
    to = next((email for email, _ in prepared if email), None)
    if not to:
        _record(sessions, ids, "account has no owner email", report, keep_status="batched")
        return
    try:
        await mail.deliver(settings, mail.digest_message(settings, to, [i for _, i in prepared]))
    except (aiosmtplib.SMTPException, OSError, ValueError) as e:
        log.warning("digest for alerts %s: delivery failed: %s", ids, e)
        _record(sessions, ids, f"{e.__class__.__name__}: {e}", report, keep_status="batched")
        return
    _record(sessions, ids, None, report)
    report.digests += 1


def webhook_payload(session: Session, alert: Alert) -> tuple[Site | None, dict[str, Any]]:
    case = session.get(ReviewCase, alert.case_id) if alert.case_id else None
    site = session.get(Site, case.site_id) if case is not None and case.site_id else None
    account = session.get(Account, alert.account_id) if alert.account_id else None
    page = session.get(PageSession, case.subject_id) if case is not None else None
    payload = {
        "event": "session.flagged",
        "alert_id": alert.id,
        "case_id": case.id if case is not None else None,
        "pipeline": case.pipeline if case is not None else None,
        "session_id": case.subject_id if case is not None else None,
        "account": account.external_id if account is not None else None,
        "risk": case.risk if case is not None else None,
        "threshold": case.threshold if case is not None else None,
        "page": page.page_path if page is not None else None,
        "device": alert.device,
        "flagged_at": as_utc(alert.created_at).isoformat() if alert.created_at else None,
    }
    return site, payload


async def _send_webhook(
    settings: Settings, sessions: sessionmaker[Session], alert_id: int, report: DispatchReport
) -> None:
    with sessions() as session:
        alert = session.get(Alert, alert_id)
        if alert is None:
            return
        site, payload = webhook_payload(session, alert)
    if site is None or not site.webhook_url:
        _record(sessions, [alert_id], "site has no webhook URL", report)
        return
    secret = webhooks.webhook_secret(settings.resolved_secret_key(), site.key)
    try:
        status = await webhooks.send(site.webhook_url, secret, payload)
    except OSError as e:
        _record(sessions, [alert_id], f"{e.__class__.__name__}: {e}", report)
        return
    if 200 <= status < 300:
        _record(sessions, [alert_id], None, report)
        report.webhooks += 1
    else:
        _record(sessions, [alert_id], f"HTTP {status} from the webhook URL", report)


async def dispatch(
    settings: Settings,
    sessions: sessionmaker[Session],
    *,
    now: dt.datetime | None = None,
    digest_after: dt.timedelta = ALERT_WINDOW,
) -> DispatchReport:
    """Send everything that is due once; each failure is recorded on its alert and retried
    on a later run, up to :data:`MAX_ATTEMPTS` attempts."""
    now = now or utcnow()
    report = DispatchReport()
    with sessions() as session:
        emails = _ids(session, EMAIL, ("pending", "retry"))
        digests = _due_digests(session, now, digest_after)
        hooks = _ids(session, WEBHOOK, ("pending", "retry"))
    for alert_id in emails:
        await _send_email(settings, sessions, alert_id, report)
    for ids in digests.values():
        await _send_digest(settings, sessions, ids, report)
    for alert_id in hooks:
        await _send_webhook(settings, sessions, alert_id, report)
    return report


async def dispatch_locked(
    settings: Settings, sessions: sessionmaker[Session], redis: aioredis.Redis
) -> DispatchReport | None:
    """:func:`dispatch` under the Redis lock; ``None`` when another process holds it."""
    lock = redis.lock(keys.ALERT_DISPATCH_LOCK, timeout=600, blocking=False)
    if not await lock.acquire():
        return None
    try:
        return await dispatch(settings, sessions)
    finally:
        with contextlib.suppress(Exception):
            await lock.release()


async def _loop(app: Starlette, wake: asyncio.Event) -> None:
    from server.app import Services

    svc: Services = app.state.services
    while True:
        wake.clear()
        try:
            await dispatch_locked(svc.settings, svc.sessions, svc.redis)
        except Exception:  # the loop is a job boundary: log, keep running
            log.exception("alert dispatch failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), timeout=DISPATCH_INTERVAL)


@contextlib.asynccontextmanager
async def background_dispatch(app: Starlette) -> AsyncIterator[None]:
    """Lifespan hook: send alerts every :data:`DISPATCH_INTERVAL` s, or at once when woken."""
    wake = asyncio.Event()
    app.state.alert_wake = wake
    task = asyncio.create_task(_loop(app, wake))
    try:
        yield
    finally:
        task.cancel()
        # A cancellation that lands inside a Redis or SMTP call can leave the task waiting on
        # a connection that will not answer; shutdown must not wait for it forever.
        done, _ = await asyncio.wait({task}, timeout=SHUTDOWN_GRACE)
        if not done:
            log.warning("alert dispatcher did not stop within %.0f s; leaving it", SHUTDOWN_GRACE)


def wake_dispatcher(request: Request) -> None:
    """Ask the background dispatcher to run now (after a commit that queued alerts)."""
    wake = getattr(request.app.state, "alert_wake", None)
    if wake is not None:
        wake.set()


# --- the owner's pages ---------------------------------------------------------------------

_STATE_PAGES = {
    "invalid": (400, "This link is not valid", "Check that you copied the whole link."),
    "expired": (410, "This link has expired", "Links in our alerts work for 7 days."),
    "used": (410, "This link was already used", "Your answer was recorded the first time."),
}


def _link_error(request: Request, state: str) -> Response:
    status, title, detail = _STATE_PAGES[state]
    return _owner_page(request, {"state": state, "title": title, "detail": detail}, status)


def _owner_page(request: Request, ctx: dict[str, Any], status: int = 200) -> Response:
    base = {"token": "", "decision": "", "item": None, "title": "", "detail": ""}
    response = render(request, "alerts/respond.html", {**base, **ctx}, status_code=status)
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Robots-Tag"] = "noindex"
    return response


async def respond_page(request: Request) -> Response:
    from server.app import services

    svc = services(request)
    token = request.query_params.get("t", "")
    decision = request.query_params.get("d", "not_me")
    if decision not in DECISION_TEXT:
        decision = "not_me"
    with svc.sessions() as session:
        state, alert = check_link(session, svc.settings, token)
        if state != "ok" or alert is None:
            return _link_error(request, state)
        _to, item = alert_item(session, svc.settings, alert)
    ctx = {"state": "ask", "token": token, "decision": decision, "item": item}
    return _owner_page(request, ctx)


async def respond_submit(request: Request) -> Response:
    from server.app import services

    svc = services(request)
    form = await csrf.checked_form(request)
    token = str(form.get("t") or "")
    decision = str(form.get("d") or "")
    if decision not in DECISION_TEXT:
        return _link_error(request, "invalid")
    with svc.sessions() as session, session.begin():
        state, alert = check_link(session, svc.settings, token)
        if state != "ok" or alert is None:
            return _link_error(request, state)
        used = cast(
            "CursorResult[Any]",
            session.execute(
                update(Alert)
                .where(Alert.id == alert.id, Alert.token_used_at.is_(None))
                .values(token_used_at=utcnow(), owner_decision=decision)
            ),
        )
        if used.rowcount != 1:
            return _link_error(request, "used")
        case = session.get(ReviewCase, alert.case_id) if alert.case_id else None
        account = session.get(Account, alert.account_id) if alert.account_id else None
        if case is not None:
            owner = account.owner_email if account is not None else "unknown"
            record_owner_decision(
                session, case, decision=decision, actor=f"owner:{owner}", alert_id=alert.id
            )
    ctx = {"state": "done", "decision": decision, "title": DECISION_TEXT[decision]}
    return _owner_page(request, ctx)


def routes() -> list[BaseRoute]:
    return [
        Route("/alerts/respond", respond_page, methods=["GET"]),
        Route("/alerts/respond", respond_submit, methods=["POST"]),
    ]
