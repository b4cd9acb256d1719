"""Rendering HTML pages from ``server/templates`` (shared by every area that has pages).

Every page extends ``base.html``; :func:`render` gives templates ``request``, ``analyst`` (the
logged-in analyst, set by :func:`server.auth.require_analyst`, or ``None``) and ``csrf_token``,
and sets the CSRF cookie when needed. Autoescaping is on: values from outside (page paths, user
agents, emails) are always escaped unless a template says ``|safe``, which none does.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse

from server import csrf

TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "templates"


def _age(value: dt.datetime | None, now: dt.datetime | None = None) -> str:
    """``3 min``, ``5 h``, ``2 d``: how long ago ``value`` was."""
    if value is None:
        return "–"
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    seconds = max(0.0, ((now or dt.datetime.now(dt.UTC)) - value).total_seconds())
    if seconds < 3600:
        return f"{int(seconds // 60)} min"
    if seconds < 86400:
        return f"{int(seconds // 3600)} h"
    return f"{int(seconds // 86400)} d"


def _utc(value: dt.datetime | None) -> str:
    if value is None:
        return "–"
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE_DIR),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["age"] = _age
    env.filters["utc"] = _utc
    return env


ENV = _environment()


def render(
    request: Request,
    template: str,
    context: dict[str, Any] | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    """The page ``template`` (a path under ``server/templates``) rendered with ``context``."""
    values = {
        "request": request,
        "analyst": getattr(request.state, "analyst", None),
        "csrf_token": csrf.token(request),
        **(context or {}),
    }
    html = ENV.get_template(template).render(values)
    response = HTMLResponse(html, status_code=status_code)
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "same-origin"
    csrf.attach_cookie(request, response)
    return response
