import pytest
from starlette.requests import Request

from renderer.errors import AccessDenied
from scoring.database import make_engine, make_sessionmaker
from server.siteauth import authenticate_site
from server.sites import create_site


def _request(authorization: str | None) -> Request:
    headers = [] if authorization is None else [(b"authorization", authorization.encode())]
    return Request({"type": "http", "method": "GET", "path": "/", "headers": headers})


def test_authenticate_site_accepts_key_and_secret_and_rejects_the_rest(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    try:
        with make_sessionmaker(engine)() as session:
            new = create_site(session, "Shop", ["https://shop.example"])
            session.commit()
            good = f"Bearer {new.site.key}.{new.secret}"
            assert authenticate_site(_request(good), session).id == new.site.id
            for bad in [
                None,
                "",
                f"Basic {new.site.key}.{new.secret}",
                f"Bearer {new.site.key}",
                f"Bearer {new.site.key}.wrong",
                f"Bearer tgk_unknown.{new.secret}",
                "Bearer .",
            ]:
                with pytest.raises(AccessDenied):
                    authenticate_site(_request(bad), session)
    finally:
        engine.dispose()
