"""Analyst log-in, sessions, CSRF, rate limiting and role checks, over the real app."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from sqlalchemy import func, select
from starlette.routing import Mount, Route
from starlette.testclient import TestClient
from test_review_support import (
    PASSWORD,
    csrf_from,
    log_in,
    make_settings,
    sessions_for,
)

from scoring.schema import Analyst, Site
from server import cli
from server.app import create_app
from server.auth import MAX_FAILURES, hash_password, verify_password
from server.settings import Settings


def _protected_paths(client: TestClient) -> list[tuple[str, str]]:
    out = []
    for route in client.app.routes:  # type: ignore[attr-defined]
        if isinstance(route, Mount) or not isinstance(route, Route):
            continue
        # The pump and whale browse pages are review pages too (built on server.auth).
        if not route.path.startswith(("/review", "/admin", "/pump", "/whale")):
            continue
        path = re.sub(r"\{(\w+)(:\w+)?\}", "1", route.path)
        out.extend((method, path) for method in sorted(route.methods or ()) if method != "HEAD")
    return out


def test_every_review_and_admin_route_refuses_anonymous(client: TestClient) -> None:
    paths = _protected_paths(client)
    assert len(paths) >= 12, paths
    assert ("POST", "/review/cases/1/decide") in paths and ("GET", "/admin") in paths
    for method, path in paths:
        response = client.request(method, path, follow_redirects=False)
        if method == "GET":
            assert response.status_code == 303, (method, path)
            assert response.headers["location"].startswith("/login?next="), path
        else:
            assert response.status_code in (401, 403), (method, path, response.status_code)


def test_login_then_logout_kills_the_session(client: TestClient) -> None:
    log_in(client)
    queue = client.get("/review")
    assert queue.status_code == 200
    assert "ana@example.org" in queue.text
    stolen = dict(client.cookies)
    client.post("/logout", data={"csrf_token": csrf_from(queue.text)}, follow_redirects=False)
    assert client.get("/review", follow_redirects=False).status_code == 303
    # The old cookie is dead server-side too, not just deleted in this browser.
    client.cookies.update(stolen)
    assert client.get("/review", follow_redirects=False).status_code == 303


def test_wrong_password_and_unknown_email_look_alike(client: TestClient) -> None:
    token = csrf_from(client.get("/login").text)
    wrong = client.post(
        "/login", data={"email": "ana@example.org", "password": "nope-nope", "csrf_token": token}
    )
    unknown = client.post(
        "/login", data={"email": "who@example.org", "password": "nope-nope", "csrf_token": token}
    )
    assert wrong.status_code == unknown.status_code == 401
    assert "wrong email or password" in wrong.text and "wrong email or password" in unknown.text


def test_login_form_without_csrf_token_is_refused(client: TestClient) -> None:
    client.get("/login")
    response = client.post("/login", data={"email": "ana@example.org", "password": PASSWORD})
    assert response.status_code == 403
    assert "tg_session" not in client.cookies


def test_csrf_token_of_another_browser_is_refused(
    client: TestClient, app_settings: Settings
) -> None:
    with TestClient(create_app(app_settings)) as other:
        foreign = csrf_from(other.get("/login").text)
    client.get("/login")
    response = client.post(
        "/login", data={"email": "ana@example.org", "password": PASSWORD, "csrf_token": foreign}
    )
    assert response.status_code == 403


def test_cross_origin_post_is_refused_even_with_token(client: TestClient) -> None:
    token = csrf_from(client.get("/login").text)
    response = client.post(
        "/login",
        data={"email": "ana@example.org", "password": PASSWORD, "csrf_token": token},
        headers={"Origin": "https://evil.example"},
    )
    assert response.status_code == 403


def test_repeated_wrong_passwords_are_rate_limited(client: TestClient) -> None:
    token = csrf_from(client.get("/login").text)
    form = {"email": "ana@example.org", "password": "wrong-password", "csrf_token": token}
    codes = [client.post("/login", data=form).status_code for _ in range(MAX_FAILURES)]
    assert codes == [401] * MAX_FAILURES
    blocked = client.post("/login", data={**form, "password": PASSWORD})
    assert blocked.status_code == 429
    assert int(blocked.headers["retry-after"]) > 0
    assert "tg_session" not in client.cookies


def test_analyst_cannot_do_admin_actions(client: TestClient, app_settings: Settings) -> None:
    log_in(client)
    assert client.get("/admin").status_code == 403
    token = csrf_from(client.get("/review").text)
    created = client.post("/admin/sites", data={"name": "Evil", "origins": "", "csrf_token": token})
    promoted = client.post(
        "/admin/analysts",
        data={"email": "x@example.org", "password": PASSWORD, "role": "admin", "csrf_token": token},
    )
    assert created.status_code == promoted.status_code == 403
    with sessions_for(app_settings)() as session:
        assert session.scalar(select(func.count()).select_from(Site)) == 0
        assert session.scalar(select(func.count()).select_from(Analyst)) == 2


def test_admin_can_create_a_site_and_sees_its_secret_once(client: TestClient) -> None:
    log_in(client, "root@example.org")
    token = csrf_from(client.get("/admin").text)
    page = client.post(
        "/admin/sites",
        data={"name": "Shop", "origins": "https://shop.example", "csrf_token": token},
    )
    assert page.status_code == 200
    assert 'id="site-secret"' in page.text
    site_url = re.search(r'action="(/admin/sites/\d+)"', page.text)
    assert site_url
    assert 'id="site-secret"' not in client.get(site_url.group(1)).text


def test_next_parameter_cannot_redirect_off_site(client: TestClient) -> None:
    token = csrf_from(client.get("/login").text)
    response = client.post(
        "/login",
        data={
            "email": "ana@example.org",
            "password": PASSWORD,
            "csrf_token": token,
            "next": "//evil.example/phish",
        },
        follow_redirects=False,
    )
    assert response.status_code == 303
    assert response.headers["location"] == "/review"


def test_passwords_are_argon2_hashed() -> None:
    stored = hash_password("a long enough password")
    assert stored.startswith("$argon2id$")
    assert verify_password(stored, "a long enough password")
    assert not verify_password(stored, "a long enough passwore")


def test_cli_adds_an_admin_from_stdin(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRAILGUARD_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("TRAILGUARD_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.setattr("sys.stdin", io.StringIO("s3cret-passw0rd\n"))
    assert cli.main(["analyst", "add", "Boss@Example.org", "--admin", "--password-stdin"]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert cli.main(["analyst", "add", "x@example.org", "--password-stdin"]) == 2
    monkeypatch.setattr("sys.stdin", io.StringIO("s3cret-passw0rd\n"))
    assert cli.main(["analyst", "add", "boss@example.org", "--password-stdin"]) == 2
    settings = make_settings(tmp_path, sqlite_url, "redis://unused")
    with sessions_for(settings)() as session:
        boss = session.scalars(select(Analyst)).one()
    assert (boss.email, boss.role) == ("boss@example.org", "admin")
    assert verify_password(boss.password_hash, "s3cret-passw0rd")


def test_admin_sets_alert_settings_and_rotates_the_secret(
    client: TestClient, app_settings: Settings
) -> None:
    log_in(client, "root@example.org")
    token = csrf_from(client.get("/admin").text)
    created = client.post(
        "/admin/sites",
        data={"name": "Shop", "origins": "https://shop.example", "csrf_token": token},
    )
    key = re.search(r'id="site-key">([^<]+)<', created.text)
    old = re.search(r'id="site-secret">([^<]+)<', created.text)
    assert key and old
    bearer = {"Authorization": f"Bearer {key.group(1)}.{old.group(1)}"}
    assert client.put("/api/v1/accounts/u1", json={}, headers=bearer).status_code == 201
    bad = client.post(
        "/admin/sites/1",
        data={"name": "Shop", "auto_alert_threshold": "1.5", "csrf_token": token},
    )
    assert bad.status_code == 400 and "between 0 and 1" in bad.text
    saved = client.post(
        "/admin/sites/1",
        data={
            "name": "Shop",
            "origins": "https://shop.example",
            "auto_alert_threshold": "0.85",
            "webhook_url": "https://shop.example/hooks/trailguard",
            "csrf_token": token,
        },
        follow_redirects=False,
    )
    assert saved.status_code == 303
    with sessions_for(app_settings)() as session:
        site = session.get(Site, 1)
        assert site is not None and site.auto_alert_threshold == 0.85
        assert site.webhook_url == "https://shop.example/hooks/trailguard"
    rotated = client.post("/admin/sites/1/rotate", data={"csrf_token": token})
    new = re.search(r'id="site-secret">([^<]+)<', rotated.text)
    assert new and new.group(1) != old.group(1)
    assert client.get("/api/v1/accounts/u1", headers=bearer).status_code == 401
    fresh = {"Authorization": f"Bearer {key.group(1)}.{new.group(1)}"}
    assert client.get("/api/v1/accounts/u1", headers=fresh).status_code == 200


def test_admin_cannot_lock_themselves_out(client: TestClient) -> None:
    log_in(client, "root@example.org")
    token = csrf_from(client.get("/admin").text)
    response = client.post(
        "/admin/analysts/2", data={"role": "analyst", "active": "on", "csrf_token": token}
    )
    assert response.status_code == 400
    assert client.get("/admin").status_code == 200
