"""The site integration API for accounts: site-secret authentication and per-site isolation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from starlette.testclient import TestClient
from test_review_support import SiteWorld, add_site, make_settings, sessions_for

from scoring.schema import Account
from server.accounts_api import MAX_BATCH
from server.app import create_app
from server.settings import Settings


@pytest.fixture
def settings_db(tmp_path: Path, migrated_database_url: str, redis_url: str) -> Settings:
    return make_settings(tmp_path, migrated_database_url, redis_url)


@pytest.fixture
def client(settings_db: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings_db)) as c:
        yield c


def _auth(world: SiteWorld, secret: str | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {world.site_key}.{secret or world.secret}"}


def test_site_registers_and_updates_an_account(client: TestClient, settings_db: Settings) -> None:
    shop = add_site(sessions_for(settings_db))
    created = client.put(
        "/api/v1/accounts/alice", json={"owner_email": "Alice@Example.org"}, headers=_auth(shop)
    )
    assert created.status_code == 201
    assert created.json()["owner_email"] == "alice@example.org"
    updated = client.put(
        "/api/v1/accounts/alice", json={"owner_email": "a2@example.org"}, headers=_auth(shop)
    )
    assert updated.status_code == 200
    got = client.get("/api/v1/accounts/alice", headers=_auth(shop))
    assert got.json()["owner_email"] == "a2@example.org"


def test_batch_registration_is_all_or_nothing(client: TestClient, settings_db: Settings) -> None:
    shop = add_site(sessions_for(settings_db))
    good = [{"external_id": f"u{i}", "owner_email": f"u{i}@example.org"} for i in range(5)]
    bad = [*good, {"external_id": "u9", "owner_email": "not an email"}]
    refused = client.post("/api/v1/accounts", json={"accounts": bad}, headers=_auth(shop))
    assert refused.status_code == 400
    assert refused.json()["error"] == "bad_email" and "accounts[5]" in refused.json()["message"]
    assert client.get("/api/v1/accounts/u0", headers=_auth(shop)).status_code == 404
    ok = client.post("/api/v1/accounts", json={"accounts": good}, headers=_auth(shop))
    assert ok.json() == {"created": 5, "updated": 0}
    too_many = [{"external_id": f"x{i}"} for i in range(MAX_BATCH + 1)]
    big = client.post("/api/v1/accounts", json={"accounts": too_many}, headers=_auth(shop))
    assert big.status_code == 400 and big.json()["error"] == "too_many"


@pytest.mark.parametrize(
    "body, code",
    [
        (b"{not json", "bad_json"),
        (b"[1, 2]", "bad_json"),
        (b'{"owner_email": 5}', "bad_email"),
        (b'{"owner_email": "a@b.c\\r\\nBcc: x@y.z"}', "bad_email"),
    ],
)
def test_bad_bodies_get_precise_errors_and_change_nothing(
    client: TestClient, settings_db: Settings, body: bytes, code: str
) -> None:
    shop = add_site(sessions_for(settings_db))
    response = client.put("/api/v1/accounts/user-42", content=body, headers=_auth(shop))
    assert response.status_code == 400 and response.json()["error"] == code
    assert client.get("/api/v1/accounts/user-42", headers=_auth(shop)).json()["owner_email"] == (
        "owner@example.org"
    )


def test_wrong_or_missing_secret_is_refused(client: TestClient, settings_db: Settings) -> None:
    shop = add_site(sessions_for(settings_db))
    assert client.get("/api/v1/accounts/user-42").status_code == 401
    wrong = client.put(
        "/api/v1/accounts/user-42",
        json={"owner_email": "evil@example.org"},
        headers=_auth(shop, "not-the-secret"),
    )
    assert wrong.status_code == 401 and wrong.json()["error"] == "unauthorised"


def test_one_sites_secret_cannot_read_or_change_another_sites_accounts(
    client: TestClient, settings_db: Settings
) -> None:
    sessions = sessions_for(settings_db)
    shop = add_site(sessions, "Shop", external_id="shared-id", owner_email="shop@example.org")
    bank = add_site(sessions, "Bank", external_id="bank-only", owner_email="bank@example.org")
    # Reading the bank's account with the shop's secret: not found, nothing leaks.
    assert client.get("/api/v1/accounts/bank-only", headers=_auth(shop)).status_code == 404
    # The shop's key with the bank's secret is no credential at all.
    mixed = {"Authorization": f"Bearer {shop.site_key}.{bank.secret}"}
    assert client.get("/api/v1/accounts/shared-id", headers=mixed).status_code == 401
    # Writing the same external id as the shop creates the *bank's* own account.
    written = client.put(
        "/api/v1/accounts/shared-id", json={"owner_email": "evil@example.org"}, headers=_auth(bank)
    )
    assert written.status_code == 201
    client.post(
        "/api/v1/accounts",
        json={"accounts": [{"external_id": "shared-id", "owner_email": "evil2@example.org"}]},
        headers=_auth(bank),
    )
    with sessions() as session:
        rows = {
            (a.site_id, a.external_id): a.owner_email
            for a in session.scalars(select(Account).order_by(Account.id))
        }
    assert rows == {
        (shop.site_id, "shared-id"): "shop@example.org",
        (bank.site_id, "bank-only"): "bank@example.org",
        (bank.site_id, "shared-id"): "evil2@example.org",
    }
