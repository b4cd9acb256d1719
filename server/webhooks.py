"""Signed webhooks to a site's back end when one of its sessions is flagged.

The body is JSON; the header ``X-TrailGuard-Signature: t=<unix time>,v1=<hex>`` carries an
HMAC-SHA256 over ``"<t>." + body`` with the site's webhook secret. A receiver recomputes it,
compares in constant time and rejects a ``t`` older than a few minutes (replays). The secret is
derived from the server's secret key and the site key, so nothing extra is stored; the admin
site page shows it.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from renderer.errors import InvalidInput

SIGNATURE_HEADER = "X-TrailGuard-Signature"
TIMEOUT = 10.0


def webhook_secret(secret_key: str, site_key: str) -> str:
    return hmac.new(secret_key.encode(), f"webhook:{site_key}".encode(), hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int) -> str:
    mac = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify(secret: str, body: bytes, header: str, *, now: float, tolerance: float = 300) -> bool:
    """What a receiver does (used by tests and shown in the docs)."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        timestamp = int(fields["t"])
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, body, timestamp), header)


def check_url(url: str) -> str:
    """A webhook URL must be http(s) with a host."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(f"webhook URL {url!r} must be an http(s) URL", "bad_webhook_url")
    return url.strip()


def _post(url: str, body: bytes, headers: dict[str, str]) -> int:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            return int(response.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


async def send(url: str, secret: str, payload: dict[str, Any]) -> int:
    """POST ``payload`` signed and return the HTTP status (2xx means delivered).

    Network failures raise ``OSError`` (``urllib.error.URLError`` is one); the dispatcher
    records them and retries.
    """
    body = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "TrailGuard-Webhook/1",
        SIGNATURE_HEADER: sign(secret, body, int(time.time())),
    }
    return await asyncio.to_thread(_post, check_url(url), body, headers)
