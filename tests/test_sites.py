import pytest
from sqlalchemy import select

from renderer.errors import InvalidInput, NotFound
from scoring.database import make_engine, make_sessionmaker
from scoring.schema import Site
from server.sites import create_site, normalise_origin, origin_allowed, site_by_key


def test_create_site_stores_only_the_hash_and_finds_it_by_key(migrated_database_url: str) -> None:
    engine = make_engine(migrated_database_url)
    try:
        with make_sessionmaker(engine)() as session:
            new = create_site(session, "Shop", ["https://Shop.example:443/", "http://a.test:8080"])
            session.commit()
            stored = session.scalars(select(Site)).one()
            assert new.secret not in stored.secret_hash
            assert stored.allowed_origins == ["http://a.test:8080", "https://shop.example"]
            assert site_by_key(session, new.site.key).id == stored.id
            with pytest.raises(NotFound):
                site_by_key(session, "tgk_nope")
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("https://shop.example", True),
        ("https://SHOP.example:443", True),
        ("http://shop.example", False),
        ("https://shop.example:8443", False),
        ("https://evil.example", False),
        ("null", False),
        (None, False),
    ],
)
def test_origin_allowed(origin: str | None, allowed: bool) -> None:
    site = Site(key="k", name="n", allowed_origins=["https://shop.example"], secret_hash="x")
    assert origin_allowed(site, origin) is allowed


@pytest.mark.parametrize("bad", ["ftp://x.test", "https://x.test/path", "x.test", "https://"])
def test_normalise_origin_rejects_non_origins(bad: str) -> None:
    with pytest.raises(InvalidInput) as err:
        normalise_origin(bad)
    assert err.value.code == "bad_origin"
