"""Sites that embed the collector: creation, look-up by public key, origin checks.

A site has a public ``key`` (put in the page as ``data-site``) and a ``secret`` that only its
back end knows; the two authenticate JSON API calls (:mod:`server.siteauth`). The secret is a
256-bit random token, so a plain SHA-256 of it is as good as a slow password hash and costs
nothing per request; only the hash is stored.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.orm import Session

from renderer.errors import InvalidInput, NotFound
from scoring.schema import Site

HASH_SCHEME = "sha256"
KEY_PREFIX = "tgk_"


@dataclass(frozen=True)
class NewSite:
    """A site just created, with the only copy of its secret in clear."""

    site: Site
    secret: str


def normalise_origin(raw: str) -> str:
    """``scheme://host[:port]`` in lower case, default ports dropped; rejects anything else."""
    parts = urlsplit(raw.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(f"origin {raw!r} is not an http(s) URL with a host", "bad_origin")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise InvalidInput(f"origin {raw!r} must not have a path or query", "bad_origin")
    try:
        port = parts.port
    except ValueError as e:
        raise InvalidInput(f"origin {raw!r} has a malformed port", "bad_origin") from e
    default = 443 if parts.scheme == "https" else 80
    host = parts.hostname.lower()
    return (
        f"{parts.scheme}://{host}" if port in (None, default) else f"{parts.scheme}://{host}:{port}"
    )


def hash_secret(secret: str) -> str:
    return f"{HASH_SCHEME}${hashlib.sha256(secret.encode()).hexdigest()}"


def secret_matches(site: Site, secret: str) -> bool:
    return hmac.compare_digest(site.secret_hash, hash_secret(secret))


def create_site(session: Session, name: str, origins: list[str]) -> NewSite:
    """Add a site with a fresh key and secret; the caller commits."""
    if not name.strip():
        raise InvalidInput("a site needs a name", "bad_name")
    allowed = sorted({normalise_origin(o) for o in origins})
    secret = secrets.token_urlsafe(32)
    site = Site(
        key=KEY_PREFIX + secrets.token_urlsafe(16),
        name=name.strip(),
        allowed_origins=allowed,
        secret_hash=hash_secret(secret),
    )
    session.add(site)
    session.flush()
    return NewSite(site=site, secret=secret)


def site_by_key(session: Session, key: str) -> Site:
    site = session.scalars(select(Site).where(Site.key == key)).first()
    if site is None:
        raise NotFound(f"no site with key {key!r}")
    return site


def origin_allowed(site: Site, origin: str | None) -> bool:
    """True when ``origin`` (an Origin header) is one of the site's allowed origins."""
    if not origin:
        return False
    try:
        return normalise_origin(origin) in (site.allowed_origins or [])
    except InvalidInput:
        return False
