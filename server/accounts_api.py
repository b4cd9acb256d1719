"""Site integration API: a site's back end registers its accounts and their owners' emails.

Every call authenticates with ``Authorization: Bearer <site_key>.<site_secret>``
(:func:`server.siteauth.authenticate_site`) and only ever sees that site's accounts: an
external id is looked up *within* the authenticated site, so another site's account with the
same id is neither readable nor writable.

- ``PUT /api/v1/accounts/{external_id}`` with ``{"owner_email": "a@b.example" | null}``:
  create or update; 201 when created, 200 when updated.
- ``GET /api/v1/accounts/{external_id}``: 200 with the account, or 404.
- ``POST /api/v1/accounts`` with ``{"accounts": [{"external_id": …, "owner_email": …}, …]}``
  (at most :data:`MAX_BATCH`): create or update all in one transaction, or none when any is
  invalid (400 names the first bad one).

Errors are JSON ``{"error": <code>, "message": <text>}``: 401 ``unauthorised``, 400 with the
validation code, 404 ``not_found``.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from renderer.errors import AccessDenied, InvalidInput
from scoring.schema import Account, Site
from server.auth import normalise_email
from server.siteauth import authenticate_site

MAX_BATCH = 1000
MAX_BODY = 1_000_000
MAX_EXTERNAL_ID = 200


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status)


def check_external_id(raw: Any) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise InvalidInput("external_id must be a non-empty string", "bad_external_id")
    if len(raw) > MAX_EXTERNAL_ID or any(ord(c) < 32 for c in raw):
        raise InvalidInput(
            f"external_id must be at most {MAX_EXTERNAL_ID} printable characters",
            "bad_external_id",
        )
    return raw


def check_owner_email(raw: Any) -> str | None:
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise InvalidInput("owner_email must be a string or null", "bad_email")
    return normalise_email(raw)


def account_json(account: Account) -> dict[str, Any]:
    return {
        "external_id": account.external_id,
        "owner_email": account.owner_email,
        "created_at": account.created_at.isoformat() if account.created_at else None,
    }


def upsert_account(
    session: Session, site: Site, external_id: str, owner_email: str | None
) -> tuple[Account, bool]:
    """(account, created) for ``external_id`` of ``site``; the caller commits."""
    account = session.scalars(
        select(Account).where(Account.site_id == site.id, Account.external_id == external_id)
    ).first()
    if account is not None:
        account.owner_email = owner_email
        return account, False
    account = Account(site_id=site.id, external_id=external_id, owner_email=owner_email)
    session.add(account)
    session.flush()
    return account, True


async def _json_body(request: Request) -> Any:
    body = await request.body()
    if len(body) > MAX_BODY:
        raise InvalidInput(f"body larger than {MAX_BODY} bytes", "too_large")
    try:
        return json.loads(body)
    except ValueError as e:
        raise InvalidInput(f"body is not JSON: {e}", "bad_json") from e


async def put_account(request: Request) -> Response:
    from server.app import services

    try:
        with services(request).sessions() as session, session.begin():
            site = authenticate_site(request, session)
            external_id = check_external_id(request.path_params["external_id"])
            data = await _json_body(request)
            if not isinstance(data, dict):
                raise InvalidInput("body must be a JSON object", "bad_json")
            email = check_owner_email(data.get("owner_email"))
            account, created = upsert_account(session, site, external_id, email)
            result = account_json(account)
    except AccessDenied as e:
        return _error(401, "unauthorised", str(e))
    except InvalidInput as e:
        return _error(400, e.code, str(e))
    return JSONResponse(result, status_code=201 if created else 200)


async def get_account(request: Request) -> Response:
    from server.app import services

    external_id = str(request.path_params["external_id"])
    try:
        with services(request).sessions() as session:
            site = authenticate_site(request, session)
            account = session.scalars(
                select(Account).where(
                    Account.site_id == site.id, Account.external_id == external_id
                )
            ).first()
            result = account_json(account) if account is not None else None
    except AccessDenied as e:
        return _error(401, "unauthorised", str(e))
    if result is None:
        return _error(404, "not_found", "no such account for this site")
    return JSONResponse(result)


def _batch_items(data: Any) -> list[tuple[str, str | None]]:
    items = data.get("accounts") if isinstance(data, dict) else None
    if not isinstance(items, list) or not items:
        raise InvalidInput('body must be {"accounts": [...]} with at least one', "bad_json")
    if len(items) > MAX_BATCH:
        raise InvalidInput(f"at most {MAX_BATCH} accounts per call", "too_many")
    out = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise InvalidInput(f"accounts[{index}] must be an object", "bad_json")
        try:
            out.append(
                (
                    check_external_id(item.get("external_id")),
                    check_owner_email(item.get("owner_email")),
                )
            )
        except InvalidInput as e:
            raise InvalidInput(f"accounts[{index}]: {e}", e.code) from e
    return out


async def post_accounts(request: Request) -> Response:
    from server.app import services

    try:
        with services(request).sessions() as session, session.begin():
            site = authenticate_site(request, session)
            items = _batch_items(await _json_body(request))
            created = 0
            for external_id, email in items:
                created += upsert_account(session, site, external_id, email)[1]
    except AccessDenied as e:
        return _error(401, "unauthorised", str(e))
    except InvalidInput as e:
        return _error(400, e.code, str(e))
    return JSONResponse({"created": created, "updated": len(items) - created})


def routes() -> list[BaseRoute]:
    return [
        Route("/api/v1/accounts", post_accounts, methods=["POST"]),
        Route("/api/v1/accounts/{external_id:str}", put_account, methods=["PUT"]),
        Route("/api/v1/accounts/{external_id:str}", get_account, methods=["GET"]),
    ]
