"""Authenticating a site's back end on the JSON APIs: ``Authorization: Bearer <key>.<secret>``."""

from __future__ import annotations

from sqlalchemy.orm import Session
from starlette.requests import HTTPConnection

from renderer.errors import AccessDenied, NotFound
from scoring.schema import Site
from server.sites import secret_matches, site_by_key


def parse_bearer(header: str | None) -> tuple[str, str]:
    """(site key, secret) from an Authorization header, or :class:`AccessDenied`."""
    if not header:
        raise AccessDenied("missing Authorization header")
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AccessDenied("expected 'Authorization: Bearer <site_key>.<site_secret>'")
    key, dot, secret = token.strip().partition(".")
    if not dot or not key or not secret:
        raise AccessDenied("bearer token must be <site_key>.<site_secret>")
    return key, secret


def authenticate_site(request: HTTPConnection, session: Session) -> Site:
    """The site whose key and secret the request carries; raises :class:`AccessDenied`."""
    key, secret = parse_bearer(request.headers.get("authorization"))
    try:
        site = site_by_key(session, key)
    except NotFound as e:
        raise AccessDenied("unknown site key or wrong secret") from e
    if not secret_matches(site, secret):
        raise AccessDenied("unknown site key or wrong secret")
    return site
