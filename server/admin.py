"""``/admin``: sites and their keys, site settings, accounts, and analysts. Admins only.

A new site's secret (and a rotated one) is shown once, on the page that answers the POST; only
its hash is stored. The webhook signing secret is derived (:func:`server.webhooks.webhook_secret`)
and shown on the site page.
"""

from __future__ import annotations

import secrets
from typing import Any

from sqlalchemy import func, select
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from renderer.errors import InvalidInput
from scoring.schema import Account, Analyst, Site
from server import csrf, webhooks
from server.accounts_api import check_external_id, check_owner_email, upsert_account
from server.auth import ROLES, add_analyst, require_admin
from server.review.templating import render
from server.sites import create_site, hash_secret, normalise_origin

ACCOUNTS_SHOWN = 200


def _origins(raw: str) -> list[str]:
    return [o for o in raw.replace(",", "\n").split() if o.strip()]


def _threshold(raw: str) -> float | None:
    raw = raw.strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError as e:
        raise InvalidInput("the auto-alert threshold must be a number", "bad_threshold") from e
    if not 0.0 <= value <= 1.0:
        raise InvalidInput("the auto-alert threshold must be between 0 and 1", "bad_threshold")
    return value


def _text(form: FormData, name: str) -> str:
    value = form.get(name)
    return value if isinstance(value, str) else ""


def _overview_context(request: Request, error: str | None = None) -> dict[str, Any]:
    from server.app import services

    with services(request).sessions() as session:
        counts = dict(
            session.execute(select(Account.site_id, func.count()).group_by(Account.site_id)).all()
        )
        sites = list(session.scalars(select(Site).order_by(Site.name)))
        analysts = list(session.scalars(select(Analyst).order_by(Analyst.email)))
    return {"sites": sites, "counts": counts, "analysts": analysts, "roles": ROLES, "error": error}


async def overview(request: Request) -> Response:
    await require_admin(request)
    return render(request, "admin/overview.html", _overview_context(request))


async def new_site(request: Request) -> Response:
    from server.app import services

    await require_admin(request)
    form = await csrf.checked_form(request)
    try:
        with services(request).sessions() as session, session.begin():
            created = create_site(session, _text(form, "name"), _origins(_text(form, "origins")))
            site, secret = created.site, created.secret
    except InvalidInput as e:
        return render(request, "admin/overview.html", _overview_context(request, str(e)), 400)
    return _site_page(request, site.id, new_secret=secret)


def _site_page(
    request: Request, site_id: int, *, new_secret: str | None = None, error: str | None = None
) -> Response:
    from server.app import services

    svc = services(request)
    with svc.sessions() as session:
        site = session.get(Site, site_id)
        if site is None:
            raise HTTPException(404, f"no site #{site_id}")
        accounts = list(
            session.scalars(
                select(Account)
                .where(Account.site_id == site_id)
                .order_by(Account.external_id)
                .limit(ACCOUNTS_SHOWN)
            )
        )
    ctx = {
        "site": site,
        "accounts": accounts,
        "new_secret": new_secret,
        "webhook_secret": webhooks.webhook_secret(svc.settings.resolved_secret_key(), site.key),
        "error": error,
    }
    return render(request, "admin/site.html", ctx, status_code=400 if error else 200)


async def site_page(request: Request) -> Response:
    await require_admin(request)
    return _site_page(request, int(request.path_params["site_id"]))


def _apply_settings(site: Site, form: FormData) -> None:
    name = _text(form, "name").strip()
    if not name:
        raise InvalidInput("a site needs a name", "bad_name")
    webhook = _text(form, "webhook_url").strip()
    site.name = name[:200]
    site.allowed_origins = sorted({normalise_origin(o) for o in _origins(_text(form, "origins"))})
    site.auto_alert_threshold = _threshold(_text(form, "auto_alert_threshold"))
    site.webhook_url = webhooks.check_url(webhook) if webhook else None


async def update_site(request: Request) -> Response:
    from server.app import services

    await require_admin(request)
    form = await csrf.checked_form(request)
    site_id = int(request.path_params["site_id"])
    try:
        with services(request).sessions() as session, session.begin():
            site = session.get(Site, site_id)
            if site is None:
                raise HTTPException(404, f"no site #{site_id}")
            _apply_settings(site, form)
    except InvalidInput as e:
        return _site_page(request, site_id, error=str(e))
    return RedirectResponse(f"/admin/sites/{site_id}", status_code=303)


async def rotate_secret(request: Request) -> Response:
    from server.app import services

    await require_admin(request)
    await csrf.checked_form(request)
    site_id = int(request.path_params["site_id"])
    secret = secrets.token_urlsafe(32)
    with services(request).sessions() as session, session.begin():
        site = session.get(Site, site_id)
        if site is None:
            raise HTTPException(404, f"no site #{site_id}")
        site.secret_hash = hash_secret(secret)
    return _site_page(request, site_id, new_secret=secret)


async def save_account(request: Request) -> Response:
    from server.app import services

    await require_admin(request)
    form = await csrf.checked_form(request)
    site_id = int(request.path_params["site_id"])
    try:
        external_id = check_external_id(_text(form, "external_id").strip())
        email = check_owner_email(_text(form, "owner_email").strip() or None)
        with services(request).sessions() as session, session.begin():
            site = session.get(Site, site_id)
            if site is None:
                raise HTTPException(404, f"no site #{site_id}")
            upsert_account(session, site, external_id, email)
    except InvalidInput as e:
        return _site_page(request, site_id, error=str(e))
    return RedirectResponse(f"/admin/sites/{site_id}", status_code=303)


async def new_analyst(request: Request) -> Response:
    from server.app import services

    await require_admin(request)
    form = await csrf.checked_form(request)
    try:
        with services(request).sessions() as session, session.begin():
            add_analyst(session, _text(form, "email"), _text(form, "password"), _text(form, "role"))
    except InvalidInput as e:
        return render(request, "admin/overview.html", _overview_context(request, str(e)), 400)
    return RedirectResponse("/admin", status_code=303)


async def update_analyst(request: Request) -> Response:
    from server.app import services

    admin = await require_admin(request)
    form = await csrf.checked_form(request)
    analyst_id = int(request.path_params["analyst_id"])
    role = _text(form, "role")
    active = _text(form, "active") == "on"
    if analyst_id == admin.id and (role != "admin" or not active):
        ctx = _overview_context(request, "you cannot demote or deactivate yourself")
        return render(request, "admin/overview.html", ctx, 400)
    if role not in ROLES:
        return render(request, "admin/overview.html", _overview_context(request, "bad role"), 400)
    with services(request).sessions() as session, session.begin():
        analyst = session.get(Analyst, analyst_id)
        if analyst is None:
            raise HTTPException(404, f"no analyst #{analyst_id}")
        analyst.role, analyst.active = role, active
    return RedirectResponse("/admin", status_code=303)


def routes() -> list[BaseRoute]:
    return [
        Route("/admin", overview, methods=["GET"]),
        Route("/admin/sites", new_site, methods=["POST"]),
        Route("/admin/sites/{site_id:int}", site_page, methods=["GET"]),
        Route("/admin/sites/{site_id:int}", update_site, methods=["POST"]),
        Route("/admin/sites/{site_id:int}/rotate", rotate_secret, methods=["POST"]),
        Route("/admin/sites/{site_id:int}/accounts", save_account, methods=["POST"]),
        Route("/admin/analysts", new_analyst, methods=["POST"]),
        Route("/admin/analysts/{analyst_id:int}", update_analyst, methods=["POST"]),
    ]
