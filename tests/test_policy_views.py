"""Admin editing of a site's decision policy, over the real app (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from starlette.testclient import TestClient
from test_review_support import add_people, add_site, csrf_from, log_in, make_settings, sessions_for

from scoring.policy import DEFAULT_POLICY
from scoring.schema import PolicyChange, Site
from server.app import create_app


def _world(tmp_path: Path, db_url: str, redis_url: str) -> Iterator[tuple]:
    settings = make_settings(tmp_path, db_url, redis_url)
    sessions = sessions_for(settings)
    add_people(sessions)
    site = add_site(sessions)
    with TestClient(create_app(settings)) as client:
        yield client, sessions, site.site_id
    sessions.kw["bind"].dispose()


@pytest.fixture
def world(tmp_path: Path, migrated_database_url: str, redis_url: str) -> Iterator[tuple]:
    """SQLite and PostgreSQL."""
    yield from _world(tmp_path, migrated_database_url, redis_url)


@pytest.fixture
def quick(tmp_path: Path, sqlite_url: str, redis_url: str) -> Iterator[tuple]:
    """SQLite only, for validation rules the database plays no part in."""
    yield from _world(tmp_path, sqlite_url, redis_url)


def _post(client: TestClient, site_id: int, policy: str, reason: str = "tighter at checkout"):  # type: ignore[no-untyped-def]
    page = client.get(f"/admin/sites/{site_id}/policy")
    data = {"csrf_token": csrf_from(page.text), "policy": policy, "reason": reason}
    return client.post(f"/admin/sites/{site_id}/policy", data=data, follow_redirects=False)


def test_only_admins_see_or_change_policies(world: tuple) -> None:
    client, sessions, site_id = world
    paths = [
        "/admin/policies",
        f"/admin/sites/{site_id}/policy",
        f"/api/v1/admin/sites/{site_id}/policy",
    ]
    for path in paths:
        assert client.get(path, follow_redirects=False).status_code == 303
    post = client.post(f"/admin/sites/{site_id}/policy", data={"policy": "{}", "reason": "x"})
    assert post.status_code == 401
    log_in(client)  # an analyst, not an admin
    for path in paths:
        assert client.get(path, follow_redirects=False).status_code == 403
    with sessions() as s:
        assert s.scalars(select(PolicyChange)).all() == []


def test_an_admin_change_is_stored_validated_and_audited(world: tuple) -> None:
    client, sessions, site_id = world
    log_in(client, "root@example.org")
    listing = client.get("/admin/policies")
    assert listing.status_code == 200 and "checkout 0.5 / 0.8" in listing.text
    page = client.get(f"/admin/sites/{site_id}/policy")
    assert page.status_code == 200 and "Never changed" in page.text

    new = {
        "actions": {"checkout": {"review_at": 0.3, "deny_at": 0.6}},
        "insufficient_data": "review",
    }
    r = _post(client, site_id, json.dumps(new))
    assert r.status_code == 303 and r.headers["location"].endswith("?saved=1")
    with sessions() as s:
        site = s.get(Site, site_id)
        assert site is not None
        assert site.policy["actions"]["checkout"] == {"review_at": 0.3, "deny_at": 0.6}
        assert site.policy["actions"]["login"] == DEFAULT_POLICY["actions"]["login"]
        assert site.policy["insufficient_data"] == "review"
        (change,) = s.scalars(select(PolicyChange)).all()
        assert (change.actor, change.reason) == ("root@example.org", "tighter at checkout")
        assert change.before["actions"]["checkout"] == {"review_at": 0.5, "deny_at": 0.8}
        assert change.after == site.policy

    shown = client.get(f"/api/v1/admin/sites/{site_id}/policy").json()
    assert shown["policy"]["insufficient_data"] == "review" and shown["error"] is None
    assert [h["actor"] for h in shown["history"]] == ["root@example.org"]
    assert "tighter at checkout" in client.get(f"/admin/sites/{site_id}/policy").text
    # a refused edit afterwards leaves the stored policy and the log as they were
    assert _post(client, site_id, '{"min_samples": -5}').status_code == 400
    with sessions() as s:
        site = s.get(Site, site_id)
        assert site is not None and site.policy["insufficient_data"] == "review"
        assert len(s.scalars(select(PolicyChange)).all()) == 1


@pytest.mark.parametrize(
    ("policy", "reason", "message"),
    [
        ("{not json", "why", "not JSON"),
        ("[1, 2]", "why", "bad_policy"),
        ('{"actions": {"login": {"review_at": 0.9, "deny_at": 0.2}}}', "why", "bad_policy_value"),
        ('{"min_sampels": 10}', "why", "unknown_policy_field"),
        ('{"insufficient_data": "deny"}', "   ", "missing_reason"),
    ],
)
def test_a_bad_edit_is_refused_with_its_reason_and_changes_nothing(
    quick: tuple, policy: str, reason: str, message: str
) -> None:
    client, sessions, site_id = quick
    log_in(client, "root@example.org")
    r = _post(client, site_id, policy, reason)
    assert r.status_code == 400 and message in r.text
    assert policy.replace('"', "&#34;") in r.text or policy in r.text  # the admin's text is kept
    with sessions() as s:
        site = s.get(Site, site_id)
        assert site is not None and site.policy == {}
        assert s.scalars(select(PolicyChange)).all() == []


def test_a_post_without_the_csrf_token_is_refused(world: tuple) -> None:
    client, sessions, site_id = world
    log_in(client, "root@example.org")
    r = client.post(
        f"/admin/sites/{site_id}/policy",
        data={"policy": "{}", "reason": "x"},
        follow_redirects=False,
    )
    assert r.status_code == 403
    with sessions() as s:
        assert s.scalars(select(PolicyChange)).all() == []


def test_unknown_site_is_404(quick: tuple) -> None:
    client, _sessions, _site_id = quick
    log_in(client, "root@example.org")
    assert client.get("/admin/sites/9999/policy").status_code == 404
    assert client.get("/api/v1/admin/sites/9999/policy").status_code == 404
