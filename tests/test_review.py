"""The review queue and case pages over the real app: ordering, filters, claims, decisions with
reasons, the audit log, labels for training, escaping of hostile metadata, trail images."""

from __future__ import annotations

import datetime as dt
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select
from starlette.testclient import TestClient
from test_review_support import (
    add_genuine_history,
    add_scored_case,
    add_site,
    csrf_from,
    log_in,
    sessions_for,
)

from scoring import cases
from scoring.schema import CaseEvent, PageSession, ReviewCase, utcnow
from server import cli
from server.app import create_app
from server.settings import Settings


@pytest.fixture
def client(app_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(app_settings)) as c:
        log_in(c)
        yield c


def _seed_three(settings: Settings) -> None:
    sessions = sessions_for(settings)
    shop = add_site(sessions, "Shop")
    bank = add_site(sessions, "Bank", external_id="b-1")
    with sessions() as session, session.begin():
        add_scored_case(session, shop, "a", score=0.70)
        add_scored_case(session, bank, "b", score=0.95)
        late = add_scored_case(session, shop, "c", score=0.80)
        late.deadline = utcnow() - dt.timedelta(hours=1)  # overdue: first by deadline


def _case_ids(html: str) -> list[int]:
    return [int(n) for n in re.findall(r'href="/review/cases/(\d+)"', html)]


def test_queue_orders_by_risk_or_deadline_and_filters(
    client: TestClient, app_settings: Settings
) -> None:
    _seed_three(app_settings)
    page = client.get("/review")
    assert _case_ids(page.text) == [2, 3, 1]
    assert "0.950" in page.text and "0.500" in page.text and "mouse-20261128-a1" in page.text
    assert _case_ids(client.get("/review?sort=deadline").text)[0] == 3
    assert _case_ids(client.get("/review?site=1").text) == [3, 1]
    assert _case_ids(client.get("/review?pipeline=pump").text) == []
    assert _case_ids(client.get("/review?status=genuine").text) == []
    client.get("/review/cases/1")  # claims case 1
    assert _case_ids(client.get("/review?assignee=me").text) == [1]
    assert _case_ids(client.get("/review?assignee=none").text) == [2, 3]


def _decide(client: TestClient, case_id: int, decision: str, reason: str) -> int:
    token = csrf_from(client.get(f"/review/cases/{case_id}").text)
    response = client.post(
        f"/review/cases/{case_id}/decide",
        data={"decision": decision, "reason": reason, "csrf_token": token},
        follow_redirects=False,
    )
    return response.status_code


def test_decisions_need_a_reason_and_become_labels_in_the_audit_log(
    client: TestClient, app_settings: Settings
) -> None:
    _seed_three(app_settings)
    assert _decide(client, 1, "genuine", "   ") == 400
    assert _decide(client, 1, "delete", "because") == 400
    assert _decide(client, 1, "escalate", "needs a second look") == 303
    assert _decide(client, 1, "genuine", "owner called support, confirmed") == 303
    sessions = sessions_for(app_settings)
    with sessions() as session:
        case = session.get(ReviewCase, 1)
        page = session.get(PageSession, "a")
        log = [(e.kind, e.reason) for e in cases.events(session, case)]  # type: ignore[arg-type]
    assert case is not None and case.status == "genuine" and page is not None
    assert page.label == "genuine"
    assert [k for k, _ in log] == [
        "opened",
        "claimed",
        "escalate",
        "claimed",
        "genuine",
        "labelled",
    ]
    assert ("escalate", "needs a second look") in log
    shown = client.get("/review/cases/1").text
    assert "owner called support, confirmed" in shown and "needs a second look" in shown


def test_claims_keep_others_out_until_they_expire(app_settings: Settings) -> None:
    _seed_three(app_settings)
    # One app per browser: each TestClient runs its own event loop.
    with (
        TestClient(create_app(app_settings)) as ana,
        TestClient(create_app(app_settings)) as root,
    ):
        log_in(ana)
        log_in(root, "root@example.org")
        ana.get("/review/cases/2")
        seen = root.get("/review/cases/2").text
        assert "claimed by ana@example.org" in seen
        assert _decide(root, 2, "genuine", "looks fine to me") == 400
        assert root.get("/review/next", follow_redirects=False).headers["location"] == (
            "/review/cases/3"
        )
    sessions = sessions_for(app_settings)
    with sessions() as session, session.begin():
        case = session.get(ReviewCase, 2)
        assert case is not None
        after_expiry = utcnow() + cases.CLAIM_DURATION + dt.timedelta(seconds=1)
        assert cases.claim_holder(case, after_expiry) is None
        assert cases.claim(session, case, analyst_id=2, actor="root", now=after_expiry)
        assert case.assignee_id == 2


def test_html_in_session_metadata_is_escaped(client: TestClient, app_settings: Settings) -> None:
    sessions = sessions_for(app_settings)
    world = add_site(sessions, "<img src=x onerror=alert(3)>")
    with sessions() as session, session.begin():
        add_scored_case(
            session,
            world,
            "evil",
            score=0.9,
            page_path='/p"><script>alert(1)</script>',
            user_agent="Mozilla/5.0 <svg onload=alert(2)>",
        )
    queue = client.get("/review").text
    page = client.get("/review/cases/1").text
    for html in (queue, page):
        assert "<script>" not in html and "<svg" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;svg onload=alert(2)&gt;" in page
    assert "&lt;img src=x onerror=alert(3)&gt;" in queue


def test_case_page_shows_the_trail_beside_genuine_references(
    client: TestClient, app_settings: Settings
) -> None:
    sessions = sessions_for(app_settings)
    world = add_site(sessions)
    with sessions() as session, session.begin():
        add_genuine_history(session, world, 2)
        add_scored_case(session, world, "now", score=0.9)
    page = client.get("/review/cases/1").text
    refs = re.findall(r'src="(/review/sessions/[^"]+/trail.png)"', page)
    assert refs[0] == "/review/sessions/now/trail.png" and len(refs) == 3
    assert "United Kingdom (GB)" in page and "may be wrong" in page
    png = client.get(refs[0])
    assert png.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(png.content))
    assert image.size == (384, 384)
    colours = np.unique(np.asarray(image).reshape(-1, 3), axis=0)
    assert len(colours) > 10  # a drawn trail, not a blank canvas
    assert client.get("/review/sessions/missing/trail.png").status_code == 404


def test_decisions_are_exported_as_training_labels(
    client: TestClient, app_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _seed_three(app_settings)
    assert _decide(client, 2, "impostor", "confirmed with the bank") == 303
    assert _decide(client, 3, "genuine", "known device") == 303
    out = tmp_path / "labelled.jsonl"
    monkeypatch.setenv("TRAILGUARD_DATABASE_URL", app_settings.database_url)
    monkeypatch.setenv("TRAILGUARD_REDIS_URL", str(app_settings.redis_url))
    assert cli.main(["sessions", "export", "--labelled", "--out", str(out)]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted((r["session_id"], r["label"]) for r in records) == [
        ("b", "impostor"),
        ("c", "genuine"),
    ]
    assert all(len(r["events"]) == 600 for r in records)
    with sessions_for(app_settings)() as session:
        kinds = list(session.scalars(select(CaseEvent.kind).where(CaseEvent.case_id == 2)))
    assert "labelled" in kinds and "alert_queued" in kinds


def test_bulk_decision_applies_to_ticked_cases_but_not_to_claimed_ones(
    app_settings: Settings,
) -> None:
    _seed_three(app_settings)
    with (
        TestClient(create_app(app_settings)) as ana,
        TestClient(create_app(app_settings)) as root,
    ):
        log_in(ana)
        log_in(root, "root@example.org")
        root.get("/review/cases/2")  # root holds case 2
        token = csrf_from(ana.get("/review").text)
        no_reason = ana.post(
            "/review/bulk",
            data={"case": ["1", "2", "3"], "decision": "genuine", "csrf_token": token},
        )
        assert no_reason.status_code == 400
        done = ana.post(
            "/review/bulk",
            data={
                "case": ["1", "2", "3"],
                "decision": "genuine",
                "reason": "known office network, routine logins",
                "csrf_token": token,
            },
            follow_redirects=False,
        )
        assert done.headers["location"] == "/review?done=2&skipped=1"
    with sessions_for(app_settings)() as session:
        statuses = {i: st for i, st in session.execute(select(ReviewCase.id, ReviewCase.status))}
        labels = {i: lb for i, lb in session.execute(select(PageSession.id, PageSession.label))}
    assert statuses == {1: "genuine", 2: "open", 3: "genuine"}
    assert labels == {"a": "genuine", "b": None, "c": "genuine"}
