"""Admin pages for each site's decision policy (``/admin/policies``), every change audited.

- ``GET  /admin/policies``: the sites and a summary of their policies;
- ``GET  /admin/sites/{site_id}/policy``: the effective policy as JSON in a form, the
  documented defaults and the audit log of past changes;
- ``POST /admin/sites/{site_id}/policy``: store an edited policy (CSRF-checked form with
  ``policy`` JSON and a required ``reason``); a malformed one is refused with the precise error
  and nothing changes;
- ``GET  /api/v1/admin/sites/{site_id}/policy``: the effective policy and history as JSON.

Only admins (``server.auth.require_admin``) reach any of them.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from renderer.errors import InvalidInput
from scoring.policy import (
    DEFAULT_POLICY,
    change_policy,
    parse_policy,
    policy_history,
    policy_to_json,
)
from scoring.schema import PolicyChange, Site
from server import csrf
from server.app import services
from server.auth import require_admin
from server.review.templating import render


def _site_id(request: Request) -> int:
    raw = str(request.path_params["site_id"])
    return int(raw) if raw.isdigit() else -1


def _effective(site: Site) -> tuple[dict[str, Any], str | None]:
    """The policy to show, and an error when what is stored no longer validates."""
    try:
        return policy_to_json(parse_policy(site.policy)), None
    except InvalidInput as e:
        return dict(site.policy or {}), f"the stored policy is invalid ({e.code}): {e}"


def _change_json(change: PolicyChange) -> dict[str, Any]:
    return {
        "id": change.id,
        "actor": change.actor,
        "reason": change.reason,
        "at": change.at.isoformat(),
        "before": change.before,
        "after": change.after,
    }


async def policy_list(request: Request) -> Response:
    await require_admin(request)
    with services(request).sessions() as db:
        sites = list(db.scalars(select(Site).order_by(Site.name)))
        rows = [(site, *_effective(site)) for site in sites]
    return render(request, "policy/list.html", {"rows": rows})


def _page(request: Request, site: Site, history: list[PolicyChange], **extra: Any) -> Response:
    policy, stored_error = _effective(site)
    context = {
        "site": site,
        "policy_text": extra.pop("policy_text", json.dumps(policy, indent=2, sort_keys=True)),
        "defaults_text": json.dumps(DEFAULT_POLICY, indent=2, sort_keys=True),
        "history": history,
        "error": extra.pop("error", stored_error),
        "reason": extra.pop("reason", ""),
        "saved": request.query_params.get("saved") == "1",
    }
    return render(request, "policy/edit.html", context, status_code=extra.pop("status_code", 200))


async def policy_page(request: Request) -> Response:
    analyst = await require_admin(request)
    svc = services(request)
    with svc.sessions() as db:
        site = db.get(Site, _site_id(request))
        if site is None:
            return render(request, "policy/missing.html", {}, status_code=404)
        if request.method == "GET":
            return _page(request, site, policy_history(db, site))
        form = await csrf.checked_form(request)
        text, reason = str(form.get("policy") or ""), str(form.get("reason") or "")
        try:
            raw = json.loads(text)
            if not isinstance(raw, dict):
                raise InvalidInput("the policy must be a JSON object", "bad_policy")
            change_policy(db, site, raw, actor=analyst.email, reason=reason)
        except json.JSONDecodeError as e:
            db.rollback()
            error = f"the policy is not JSON: {e}"
            return _page(
                request,
                site,
                policy_history(db, site),
                error=error,
                policy_text=text,
                reason=reason,
                status_code=400,
            )
        except InvalidInput as e:
            db.rollback()
            error = f"{e} ({e.code})"
            return _page(
                request,
                site,
                policy_history(db, site),
                error=error,
                policy_text=text,
                reason=reason,
                status_code=400,
            )
        db.commit()
    return RedirectResponse(f"/admin/sites/{site.id}/policy?saved=1", status_code=303)


async def policy_json(request: Request) -> Response:
    await require_admin(request)
    with services(request).sessions() as db:
        site = db.get(Site, _site_id(request))
        if site is None:
            return JSONResponse({"error": "not_found", "message": "no such site"}, 404)
        policy, error = _effective(site)
        history = [_change_json(c) for c in policy_history(db, site)]
    return JSONResponse({"site_id": site.id, "policy": policy, "error": error, "history": history})


def routes() -> list[BaseRoute]:
    return [
        Route("/admin/policies", policy_list, methods=["GET"]),
        Route("/admin/sites/{site_id}/policy", policy_page, methods=["GET", "POST"]),
        Route("/api/v1/admin/sites/{site_id}/policy", policy_json, methods=["GET"]),
    ]
