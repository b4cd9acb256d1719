"""CSRF protection for every HTML form: a signed double-submit token.

The browser holds a random value in the ``tg_csrf`` cookie (HttpOnly, SameSite=Lax); every form
carries the value signed with the server's secret key in a hidden ``csrf_token`` field. A POST is
accepted only when the field's signature is valid *and* it signs the cookie's value, so another
site can neither read the token nor forge one, even if it manages to plant a cookie. A request
whose ``Origin`` header names another host is refused as well.

Use :func:`token` when rendering a form (``render`` in :mod:`server.review.templating` does it
and sets the cookie), and ``await checked_form(request)`` instead of ``await request.form()``.
"""

from __future__ import annotations

import hmac
import secrets
from urllib.parse import urlsplit

from itsdangerous import BadSignature, Signer
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

COOKIE = "tg_csrf"
FIELD = "csrf_token"
SALT = "tg-csrf"


def _signer(request: Request) -> Signer:
    from server.app import services

    return Signer(services(request).settings.resolved_secret_key(), salt=SALT)


def _cookie_value(request: Request) -> str:
    """The request's CSRF cookie value, minting one (set later by :func:`attach_cookie`)."""
    existing = getattr(request.state, "csrf_cookie", None)
    if existing:
        return str(existing)
    value = request.cookies.get(COOKIE) or ""
    if len(value) < 32:
        value = secrets.token_urlsafe(32)
        request.state.csrf_new = True
    request.state.csrf_cookie = value
    return value


def token(request: Request) -> str:
    """The token to put in this request's forms."""
    return _signer(request).sign(_cookie_value(request)).decode()


def attach_cookie(request: Request, response: Response) -> None:
    """Set the CSRF cookie on ``response`` when this request minted a new one."""
    if getattr(request.state, "csrf_new", False):
        response.set_cookie(
            COOKIE,
            request.state.csrf_cookie,
            httponly=True,
            samesite="lax",
            secure=request.url.scheme == "https",
            path="/",
        )


def _origin_ok(request: Request) -> bool:
    origin = request.headers.get("origin")
    if not origin or origin == "null":
        # Browsers send no Origin on some POSTs and "null" under Referrer-Policy: no-referrer
        # (the owner's alert page); the token check still applies.
        return True
    parts = urlsplit(origin)
    return parts.netloc.lower() == (request.headers.get("host") or "").lower()


async def checked_form(request: Request) -> FormData:
    """The request's form after the CSRF check; raises HTTP 403 when it fails."""
    form = await request.form()
    sent = form.get(FIELD)
    cookie = request.cookies.get(COOKIE)
    if not isinstance(sent, str) or not cookie or not _origin_ok(request):
        raise HTTPException(403, "CSRF check failed: reload the page and try again")
    try:
        signed_value = _signer(request).unsign(sent).decode()
    except BadSignature as e:
        raise HTTPException(403, "CSRF check failed: reload the page and try again") from e
    if not hmac.compare_digest(signed_value, cookie):
        raise HTTPException(403, "CSRF check failed: reload the page and try again")
    return form
