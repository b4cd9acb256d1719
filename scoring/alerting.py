"""Queueing alerts when a session is flagged or confirmed: rows only, never any sending.

Pipelines call :func:`on_flag` from the worker transaction that stores a flagged score; the
review UI calls :func:`queue_owner_alert` when an analyst confirms an impostor. Both only add
``Alert`` rows. Delivery (SMTP, outbox, webhooks) happens later, outside any worker transaction,
in :mod:`server.alerts`, so a slow mail server never holds a scoring transaction open.

Rate limit: at most one immediate email per account per device per :data:`ALERT_WINDOW`; later
ones in that window are queued with status ``batched`` and go out together in a digest.

Alert statuses: ``pending`` (to send now), ``batched`` (waits for the digest), ``retry`` (a
delivery attempt failed, will be tried again), ``sent``, ``failed`` (gave up),
``skipped`` (nothing to send to, e.g. the account has no owner email).
"""

from __future__ import annotations

import datetime as dt
import re
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from scoring.cases import record_event
from scoring.schema import Account, Alert, ReviewCase, Site, utcnow

ALERT_WINDOW = dt.timedelta(hours=24)
"""At most one immediate owner email per account and device in this window."""

EMAIL = "email"
WEBHOOK = "webhook"
LIVE_STATUSES = ("pending", "retry", "sent")
"""Alerts that count against the per-device window (a failed or skipped one does not)."""

_BROWSERS = (
    ("Edg/", "Edge"),
    ("OPR/", "Opera"),
    ("Firefox/", "Firefox"),
    ("Chrome/", "Chrome"),
    ("Chromium/", "Chromium"),
    ("Safari/", "Safari"),
)
_SYSTEMS = (
    ("Windows", "Windows"),
    ("Android", "Android"),
    ("iPhone", "iPhone"),
    ("iPad", "iPad"),
    ("Mac OS X", "macOS"),
    ("CrOS", "ChromeOS"),
    ("Linux", "Linux"),
)


def device_label(user_agent: str, pointer_type: str = "mouse") -> str:
    """A short human description of a device, e.g. ``Chrome on Windows (mouse)``.

    It is the per-device key of the alert rate limit, so it is coarse on purpose: a browser
    update must not count as a new device.
    """
    browser = next((name for token, name in _BROWSERS if token in user_agent), "")
    system = next((name for token, name in _SYSTEMS if token in user_agent), "")
    if not browser and not system:
        words = re.findall(r"[A-Za-z][\w.-]*", user_agent)
        browser = words[0][:40] if words else "unknown browser"
    label = f"{browser or 'browser'} on {system}" if system else browser
    return f"{label} ({pointer_type})" if pointer_type else label


def on_flag(
    session: Session,
    case: ReviewCase,
    *,
    score: float,
    account_id: int | None,
    device: str,
    page: str,
) -> None:
    """React to a flagged session inside the caller's transaction (the caller commits).

    Queues a webhook alert when the site has a ``webhook_url``, and an owner email when the
    score is above the site's ``auto_alert_threshold``.
    """
    site = session.get(Site, case.site_id) if case.site_id is not None else None
    if site is None:
        return
    already = session.scalars(
        select(Alert.id).where(Alert.case_id == case.id, Alert.channel == WEBHOOK)
    ).first()
    # One webhook per case: the decisions API and the mouse pipeline may both flag a session.
    if site.webhook_url and already is None:
        alert = Alert(
            account_id=account_id,
            case_id=case.id,
            channel=WEBHOOK,
            device=device[:200],
            status="pending",
        )
        session.add(alert)
        session.flush()
        record_event(
            session,
            case,
            actor="system",
            kind="webhook_queued",
            data={"alert_id": alert.id, "score": score, "page": page[:300]},
        )
    threshold = site.auto_alert_threshold
    if threshold is not None and account_id is not None and score > threshold:
        queue_owner_alert(
            session,
            case,
            account_id=account_id,
            device=device,
            reason=f"score {score:.3f} above the site's auto-alert threshold {threshold:.3f}",
        )


def queue_owner_alert(
    session: Session,
    case: ReviewCase,
    *,
    account_id: int,
    device: str,
    reason: str,
    actor: str = "system",
    now: dt.datetime | None = None,
) -> Alert | None:
    """Queue one email to the account owner about ``case``; at most one per case.

    Returns the alert (new or the existing one for this case), or ``None`` when the account
    does not exist. The caller commits.
    """
    existing = session.scalars(
        select(Alert).where(Alert.case_id == case.id, Alert.channel == EMAIL)
    ).first()
    if existing is not None:
        return existing
    account = session.get(Account, account_id)
    if account is None:
        return None
    now = now or utcnow()
    if not account.owner_email:
        status = "skipped"
    elif _recent_alert_exists(session, account_id, device, now):
        status = "batched"
    else:
        status = "pending"
    alert = Alert(
        account_id=account_id,
        case_id=case.id,
        channel=EMAIL,
        device=device[:200],
        status=status,
        error=None if account.owner_email else "account has no owner email",
        token_id=secrets.token_urlsafe(24),
        created_at=now,
    )
    session.add(alert)
    session.flush()
    record_event(
        session,
        case,
        actor=actor,
        kind="alert_queued",
        reason=reason,
        data={"alert_id": alert.id, "status": status, "device": device[:200]},
    )
    return alert


def _recent_alert_exists(session: Session, account_id: int, device: str, now: dt.datetime) -> bool:
    since = now - ALERT_WINDOW
    row = session.scalars(
        select(Alert.id).where(
            Alert.account_id == account_id,
            Alert.channel == EMAIL,
            Alert.device == device[:200],
            Alert.status.in_(LIVE_STATUSES),
            Alert.created_at > since,
        )
    ).first()
    return row is not None
