from starlette.testclient import TestClient

from server.app import create_app
from server.settings import Settings


def test_healthz_reports_both_stores_up(settings: Settings) -> None:
    with TestClient(create_app(settings)) as client:
        body = client.get("/healthz").json()
    assert body["ok"] is True
    assert body["database"] == {"ok": True, "backend": "sqlite"}
    assert body["redis"] == {"ok": True}


def test_healthz_reports_unreachable_redis(settings: Settings) -> None:
    app = create_app(settings, redis_url="redis://127.0.0.1:1/0")
    with TestClient(app) as client:
        response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["redis"]["ok"] is False
    assert response.json()["database"]["ok"] is True


def test_allowed_origins_get_cors_headers_and_others_do_not(settings: Settings) -> None:
    from dataclasses import replace

    app = create_app(replace(settings, allowed_origins=("https://admin.example",)))
    with TestClient(app) as client:
        allowed = client.get("/healthz", headers={"Origin": "https://admin.example"})
        other = client.get("/healthz", headers={"Origin": "https://evil.example"})
        preflight = client.options(
            "/healthz",
            headers={
                "Origin": "https://admin.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "Authorization",
            },
        )
    assert allowed.headers["access-control-allow-origin"] == "https://admin.example"
    assert "access-control-allow-origin" not in other.headers
    assert preflight.status_code == 200
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
