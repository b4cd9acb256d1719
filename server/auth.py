"""Analyst accounts, login sessions and page protection.

For pages of any area::

    from server.auth import require_analyst, require_admin

    async def my_page(request: Request) -> Response:
        analyst = await require_analyst(request)   # anonymous → 303 to /login?next=…
        ...
        return render(request, "pump/list.html", {...})   # server.review.templating.render

``require_admin`` also answers 403 to a logged-in analyst without the admin role. Forms must be
read with ``await server.csrf.checked_form(request)`` and include
``<input type="hidden" name="csrf_token" value="{{ csrf_token }}">``.

Sessions are server-side: the cookie ``tg_session`` holds a random token signed with the secret
key (itsdangerous), and Redis (``keys.analyst_session``) maps it to the analyst for
:data:`SESSION_LIFETIME`. Logging out deletes the Redis entry, so a stolen cookie dies with it.
Passwords are hashed with argon2id (argon2-cffi). Failed logins are counted per client address
and per email in fixed windows (``keys.rate_limit``); past :data:`MAX_FAILURES` the login answers
429 with ``Retry-After``, even for the right password.
"""

from __future__ import annotations

import secrets
import time
from urllib.parse import quote

import redis.asyncio as aioredis
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from itsdangerous import BadSignature, Signer
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from renderer.errors import AccessDenied, InvalidInput, RateLimited
from scoring import keys
from scoring.schema import Analyst
from server import csrf

ROLES = ("analyst", "admin")
SESSION_COOKIE = "tg_session"
SESSION_LIFETIME = 12 * 3600
MAX_FAILURES = 5
FAILURE_WINDOW = 15 * 60

_hasher = PasswordHasher()
# Verifying against this when the email is unknown keeps response times alike either way.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


def hash_password(password: str) -> str:
    if len(password) < 8:
        raise InvalidInput("a password needs at least 8 characters", "weak_password")
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def normalise_email(email: str) -> str:
    email = email.strip().lower()
    if "@" not in email or len(email) > 320 or any(c.isspace() for c in email):
        raise InvalidInput(f"{email!r} is not an email address", "bad_email")
    return email


def add_analyst(session: Session, email: str, password: str, role: str = "analyst") -> Analyst:
    """Create an analyst (the caller commits); raises InvalidInput for a taken email."""
    if role not in ROLES:
        raise InvalidInput(f"role must be one of {', '.join(ROLES)}", "bad_role")
    email = normalise_email(email)
    taken = session.scalars(select(Analyst).where(func.lower(Analyst.email) == email)).first()
    if taken is not None:
        raise InvalidInput(f"an analyst with email {email} exists already", "duplicate")
    analyst = Analyst(email=email, password_hash=hash_password(password), role=role, active=True)
    session.add(analyst)
    session.flush()
    return analyst


def analyst_by_email(session: Session, email: str) -> Analyst | None:
    return session.scalars(
        select(Analyst).where(func.lower(Analyst.email) == email.strip().lower())
    ).first()


# --- rate limiting -------------------------------------------------------------------------


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


async def _failures(redis: aioredis.Redis, scopes: list[tuple[str, str]]) -> tuple[int, float]:
    """(largest failure count over ``scopes``, seconds until that window ends)."""
    worst, retry = 0, 0.0
    for scope, ident in scopes:
        key = keys.rate_limit(scope, ident)
        count = int(await redis.get(key) or 0)
        if count > worst:
            worst, retry = count, max(1.0, float(await redis.ttl(key)))
    return worst, retry


async def _count_failure(redis: aioredis.Redis, scopes: list[tuple[str, str]]) -> None:
    for scope, ident in scopes:
        key = keys.rate_limit(scope, ident)
        async with redis.pipeline(transaction=True) as pipe:
            # SET NX then INCR: the window starts at the first failure (EXPIRE NX needs Redis 7)
            pipe.set(key, 0, ex=FAILURE_WINDOW, nx=True)
            pipe.incr(key)
            await pipe.execute()


async def login(request: Request, email: str, password: str) -> Analyst:
    """The analyst with these credentials; AccessDenied or RateLimited otherwise."""
    from server.app import services

    svc = services(request)
    scopes = [("login-ip", client_address(request)), ("login-email", email.strip().lower()[:320])]
    count, retry = await _failures(svc.redis, scopes)
    if count >= MAX_FAILURES:
        raise RateLimited("too many failed logins; try again later", retry_after=retry)
    with svc.sessions() as session:
        analyst = analyst_by_email(session, email)
    stored = analyst.password_hash if analyst is not None else _DUMMY_HASH
    ok = await run_in_threadpool(verify_password, stored, password)
    if not ok or analyst is None or not analyst.active:
        await _count_failure(svc.redis, scopes)
        raise AccessDenied("wrong email or password")
    return analyst


# --- sessions ------------------------------------------------------------------------------


def _signer(request: Request) -> Signer:
    from server.app import services

    return Signer(services(request).settings.resolved_secret_key(), salt="tg-session")


async def start_session(request: Request, response: Response, analyst: Analyst) -> None:
    from server.app import services

    token = secrets.token_urlsafe(32)
    key = keys.analyst_session(token)
    redis = services(request).redis
    await redis.hset(key, mapping={"analyst_id": analyst.id, "created": int(time.time())})
    await redis.expire(key, SESSION_LIFETIME)
    response.set_cookie(
        SESSION_COOKIE,
        _signer(request).sign(token).decode(),
        max_age=SESSION_LIFETIME,
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
        path="/",
    )


def _session_token(request: Request) -> str | None:
    raw = request.cookies.get(SESSION_COOKIE)
    if not raw:
        return None
    try:
        return _signer(request).unsign(raw).decode()
    except BadSignature:
        return None


async def end_session(request: Request, response: Response) -> None:
    from server.app import services

    token = _session_token(request)
    if token:
        await services(request).redis.delete(keys.analyst_session(token))
    response.delete_cookie(SESSION_COOKIE, path="/")


async def current_analyst(request: Request) -> Analyst | None:
    """The logged-in, active analyst of this request, or ``None``."""
    from server.app import services

    if hasattr(request.state, "analyst"):
        cached: Analyst | None = request.state.analyst
        return cached
    svc = services(request)
    token = _session_token(request)
    analyst_id = await svc.redis.hget(keys.analyst_session(token), "analyst_id") if token else None
    analyst = None
    if analyst_id is not None:
        with svc.sessions() as session:
            analyst = session.get(Analyst, int(analyst_id))
        if analyst is not None and not analyst.active:
            analyst = None
    request.state.analyst = analyst
    return analyst


def _login_redirect(request: Request) -> HTTPException:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return HTTPException(
        303, "login required", headers={"Location": "/login?next=" + quote(target)}
    )


async def require_analyst(request: Request, role: str = "analyst") -> Analyst:
    """The logged-in analyst; anonymous GETs are redirected to the login page (303), other
    anonymous requests get 401, and a logged-in analyst without ``role`` gets 403."""
    analyst = await current_analyst(request)
    if analyst is None:
        if request.method in ("GET", "HEAD"):
            raise _login_redirect(request)
        raise HTTPException(401, "login required")
    if role == "admin" and analyst.role != "admin":
        raise HTTPException(403, "only an admin may do this")
    return analyst


async def require_admin(request: Request) -> Analyst:
    return await require_analyst(request, role="admin")


# --- pages ---------------------------------------------------------------------------------


def _safe_next(raw: str | None) -> str:
    """Only same-site paths: ``//evil.example`` or ``https://…`` would be an open redirect."""
    if not raw or not raw.startswith("/") or raw.startswith("//") or "\\" in raw:
        return "/review"
    return raw


async def login_page(request: Request) -> Response:
    from server.review.templating import render

    if request.method == "GET":
        next_url = _safe_next(request.query_params.get("next"))
        return render(request, "login.html", {"next": next_url, "error": None, "email": ""})
    form = await csrf.checked_form(request)
    email = str(form.get("email") or "")
    next_url = _safe_next(str(form.get("next") or ""))
    try:
        analyst = await login(request, email, str(form.get("password") or ""))
    except RateLimited as e:
        limited = render(
            request,
            "login.html",
            {"next": next_url, "error": str(e), "email": email},
            status_code=429,
        )
        limited.headers["Retry-After"] = str(int(e.retry_after))
        return limited
    except AccessDenied as e:
        ctx = {"next": next_url, "error": str(e), "email": email}
        return render(request, "login.html", ctx, status_code=401)
    response = RedirectResponse(next_url, status_code=303)
    await start_session(request, response, analyst)
    return response


async def logout(request: Request) -> Response:
    await csrf.checked_form(request)
    response = RedirectResponse("/login", status_code=303)
    await end_session(request, response)
    return response


def routes() -> list[BaseRoute]:
    return [
        Route("/login", login_page, methods=["GET", "POST"]),
        Route("/logout", logout, methods=["POST"]),
    ]
