"""Owner alerts: when they are queued, the daily per-device limit and digest, delivery over a
real SMTP server (aiosmtpd) with retries, the outbox, signed webhooks, and the signed, expiring,
single-use answer links."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from itsdangerous import TimestampSigner
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from starlette.testclient import TestClient
from test_review_support import (
    SiteWorld,
    add_people,
    add_scored_case,
    add_site,
    body_text,
    csrf_from,
    free_port,
    make_settings,
    sessions_for,
    smtp_inbox,
)

from scoring import cases
from scoring.alerting import on_flag, queue_owner_alert
from scoring.database import make_engine
from scoring.schema import Alert, CaseEvent, ReviewCase, utcnow
from server import alerts, cli, webhooks
from server.app import create_app
from server.settings import Settings

DEVICE = "Chrome on Windows (mouse)"


@pytest.fixture
def base_settings(tmp_path: Path, migrated_database_url: str, redis_url: str) -> Settings:
    return make_settings(tmp_path, migrated_database_url, redis_url)


def _flag(
    sessions: sessionmaker[Session], world: SiteWorld, sid: str, score: float, device: str = DEVICE
) -> int:
    with sessions() as session, session.begin():
        case = add_scored_case(session, world, sid, score=score)
        on_flag(session, case, score=score, account_id=world.account_id, device=device, page="/p")
        return case.id


def _alerts(sessions: sessionmaker[Session]) -> list[Alert]:
    with sessions() as session:
        return list(session.scalars(select(Alert).order_by(Alert.id)))


def test_on_flag_applies_the_sites_auto_alert_threshold(base_settings: Settings) -> None:
    sessions = sessions_for(base_settings)
    world = add_site(sessions, auto_alert_threshold=0.8, webhook_url="http://127.0.0.1:9/hook")
    _flag(sessions, world, "below", 0.7)
    _flag(sessions, world, "above", 0.9)
    quiet = add_site(sessions, "Quiet", external_id="q")
    _flag(sessions, quiet, "quiet", 0.99)
    rows = [(a.channel, a.status, a.case_id) for a in _alerts(sessions)]
    assert rows == [("webhook", "pending", 1), ("webhook", "pending", 2), ("email", "pending", 2)]


def test_one_email_per_account_and_device_a_day_rest_batched(base_settings: Settings) -> None:
    sessions = sessions_for(base_settings)
    world = add_site(sessions, auto_alert_threshold=0.5)
    for i in range(3):
        _flag(sessions, world, f"s{i}", 0.9)
    _flag(sessions, world, "phone", 0.9, device="Safari on iPhone (touch)")
    statuses = [(a.device, a.status) for a in _alerts(sessions)]
    assert statuses == [
        (DEVICE, "pending"),
        (DEVICE, "batched"),
        (DEVICE, "batched"),
        ("Safari on iPhone (touch)", "pending"),
    ]
    later = utcnow() + dt.timedelta(hours=25)
    with sessions() as session, session.begin():
        case = add_scored_case(session, world, "next-day", score=0.9)
        alert = queue_owner_alert(
            session, case, account_id=world.account_id, device=DEVICE, reason="x", now=later
        )
        assert alert is not None and alert.status == "pending"


def test_dispatch_sends_multipart_mail_over_smtp_and_escapes_html(
    base_settings: Settings, tmp_path: Path
) -> None:
    with smtp_inbox() as (inbox, port):
        settings = make_settings(
            tmp_path,
            base_settings.database_url,
            str(base_settings.redis_url),
            smtp_url=f"smtp://127.0.0.1:{port}",
        )
        sessions = sessions_for(settings)
        world = add_site(sessions, "<b>Shop</b>", auto_alert_threshold=0.5)
        with sessions() as session, session.begin():
            case = add_scored_case(
                session, world, "xss", score=0.9, page_path="/p?<script>alert(1)</script>"
            )
            on_flag(session, case, score=0.9, account_id=world.account_id, device=DEVICE, page="")
        report = asyncio.run(alerts.dispatch(settings, sessions))
        again = asyncio.run(alerts.dispatch(settings, sessions))
    assert (report.emails, again.emails) == (1, 0)
    assert len(inbox.messages) == 1 and inbox.recipients == [["owner@example.org"]]
    message = inbox.messages[0]
    html = body_text(message, "html")
    text = body_text(message)
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;" in html
    assert "<b>Shop</b>" not in html
    assert "/p?<script>alert(1)</script>" in text  # plain text is not HTML: shown as is
    assert "United Kingdom (GB)" in text and "may be wrong" in text
    assert "Chrome on Windows" in text
    [alert] = _alerts(sessions)
    assert (alert.status, alert.attempts, alert.error) == ("sent", 1, None)
    assert alert.sent_at is not None


def test_without_smtp_messages_go_to_the_outbox(base_settings: Settings) -> None:
    sessions = sessions_for(base_settings)
    world = add_site(sessions, auto_alert_threshold=0.5)
    _flag(sessions, world, "s", 0.9)
    asyncio.run(alerts.dispatch(base_settings, sessions))
    files = list(base_settings.outbox_dir.glob("*.eml"))
    assert len(files) == 1
    assert b"owner@example.org" in files[0].read_bytes()
    assert _alerts(sessions)[0].status == "sent"


def test_smtp_failures_are_recorded_and_retried_then_given_up(
    base_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()  # nothing listens here until the SMTP server starts below
    settings = make_settings(
        tmp_path,
        base_settings.database_url,
        str(base_settings.redis_url),
        smtp_url=f"smtp://127.0.0.1:{port}",
    )
    sessions = sessions_for(settings)
    world = add_site(sessions, auto_alert_threshold=0.5)
    _flag(sessions, world, "s", 0.9)
    asyncio.run(alerts.dispatch(settings, sessions))
    [alert] = _alerts(sessions)
    assert (alert.status, alert.attempts) == ("retry", 1)
    assert alert.error and "Connect" in alert.error
    with smtp_inbox() as (inbox, _port):
        live = make_settings(
            tmp_path,
            settings.database_url,
            str(settings.redis_url),
            smtp_url=f"smtp://127.0.0.1:{_port}",
        )
        asyncio.run(alerts.dispatch(live, sessions))
    [alert] = _alerts(sessions)
    assert (alert.status, alert.attempts, len(inbox.messages)) == ("sent", 2, 1)

    _flag(sessions, add_site(sessions, "B", external_id="b", auto_alert_threshold=0.1), "t", 0.9)
    for _ in range(alerts.MAX_ATTEMPTS):
        asyncio.run(alerts.dispatch(settings, sessions))
    gave_up = _alerts(sessions)[-1]
    assert (gave_up.status, gave_up.attempts) == ("failed", alerts.MAX_ATTEMPTS)


def test_batched_alerts_go_out_as_one_digest_after_the_window(
    base_settings: Settings, tmp_path: Path
) -> None:
    with smtp_inbox() as (inbox, port):
        settings = make_settings(
            tmp_path,
            base_settings.database_url,
            str(base_settings.redis_url),
            smtp_url=f"smtp://127.0.0.1:{port}",
        )
        sessions = sessions_for(settings)
        world = add_site(sessions, auto_alert_threshold=0.5)
        for i in range(3):
            _flag(sessions, world, f"s{i}", 0.9)
        first = asyncio.run(alerts.dispatch(settings, sessions))
        later = utcnow() + dt.timedelta(hours=24, minutes=1)
        second = asyncio.run(alerts.dispatch(settings, sessions, now=later))
    assert (first.emails, first.digests, second.digests) == (1, 0, 1)
    assert len(inbox.messages) == 2
    digest = body_text(inbox.messages[1])
    assert "2 more session(s)" in digest
    assert len(re.findall(r"This wasn't me: (\S+)", digest)) == 2
    assert [a.status for a in _alerts(sessions)] == ["sent", "sent", "sent"]


class _Receiver:
    def __init__(self, status: int = 200) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def receiver() -> Iterator[_Receiver]:
    found = _Receiver()
    yield found
    found.httpd.shutdown()


def test_webhook_is_signed_and_verifiable(base_settings: Settings, receiver: _Receiver) -> None:
    sessions = sessions_for(base_settings)
    world = add_site(sessions, webhook_url=receiver.url)
    _flag(sessions, world, "hooked", 0.9)
    report = asyncio.run(alerts.dispatch(base_settings, sessions))
    assert report.webhooks == 1 and len(receiver.requests) == 1
    headers, body = receiver.requests[0]
    secret = webhooks.webhook_secret(base_settings.resolved_secret_key(), world.site_key)
    signature = headers[webhooks.SIGNATURE_HEADER.lower()]
    assert webhooks.verify(secret, body, signature, now=time.time())
    assert not webhooks.verify(secret, body.replace(b"0.9", b"0.1"), signature, now=time.time())
    assert not webhooks.verify("other-secret", body, signature, now=time.time())
    assert not webhooks.verify(secret, body, signature, now=time.time() + 3600)
    payload = json.loads(body)
    assert payload["event"] == "session.flagged"
    assert (payload["session_id"], payload["account"]) == ("hooked", "user-42")
    assert _alerts(sessions)[0].status == "sent"


def test_failing_webhook_is_recorded_for_retry(base_settings: Settings) -> None:
    failing = _Receiver(status=500)
    try:
        sessions = sessions_for(base_settings)
        world = add_site(sessions, webhook_url=failing.url)
        _flag(sessions, world, "hooked", 0.9)
        asyncio.run(alerts.dispatch(base_settings, sessions))
    finally:
        failing.httpd.shutdown()
    [alert] = _alerts(sessions)
    assert (alert.status, alert.attempts, alert.error) == (
        "retry",
        1,
        "HTTP 500 from the webhook URL",
    )


# --- answer links --------------------------------------------------------------------------


def _queued_email(sessions: sessionmaker[Session]) -> tuple[Alert, int]:
    world = add_site(sessions, auto_alert_threshold=0.5)
    case_id = _flag(sessions, world, "s", 0.9)
    return _alerts(sessions)[0], case_id


def _owner_events(sessions: sessionmaker[Session], case_id: int) -> list[str]:
    with sessions() as session:
        query = select(CaseEvent.kind).where(CaseEvent.case_id == case_id)
        return [k for k in session.scalars(query) if k.startswith("owner")]


def _token(path: str) -> str:
    found = re.search(r"t=([^&]+)", path)
    assert found
    return found.group(1)


def _answer(client: TestClient, path: str, decision: str) -> Any:
    """Open the link's page, then press the button (POST with the page's CSRF cookie)."""
    client.get(path)
    token = csrf_from(client.get("/login").text)
    data = {"t": _token(path), "d": decision, "csrf_token": token}
    return client.post("/alerts/respond", data=data)


def test_link_opens_a_page_and_only_the_post_decides_once(base_settings: Settings) -> None:
    sessions = sessions_for(base_settings)
    alert, case_id = _queued_email(sessions)
    not_me, me = alerts.owner_links(base_settings, alert)
    path = not_me.removeprefix("http://testserver")
    with TestClient(create_app(base_settings)) as client:
        for _ in range(3):  # mail scanners prefetch: GETs change nothing
            assert client.get(path).status_code == 200
        assert _owner_events(sessions, case_id) == []
        first = _answer(client, path, "not_me")
        assert first.status_code == 200 and "This wasn&#39;t me" in first.text
        no_csrf = client.post("/alerts/respond", data={"t": _token(path), "d": "me"})
        assert no_csrf.status_code == 403
        reused = _answer(client, path, "me")
        assert reused.status_code == 410 and "already used" in reused.text
        assert client.get(me.removeprefix("http://testserver")).status_code == 410
    assert _owner_events(sessions, case_id) == ["owner_not_me"]
    with sessions() as session:
        stored = session.get(Alert, alert.id)
        case = session.get(ReviewCase, case_id)
        assert stored is not None and stored.owner_decision == "not_me"
        assert case is not None and case.status == "open"  # the analyst still decides


def test_tampered_link_is_refused(base_settings: Settings) -> None:
    sessions = sessions_for(base_settings)
    alert, case_id = _queued_email(sessions)
    path = alerts.owner_links(base_settings, alert)[0].removeprefix("http://testserver")
    token = _token(path)
    forged = alerts._serializer(
        make_settings(Path("/nonexistent"), "sqlite://", "redis://x", secret_key="guess")
    ).dumps({"a": alert.id, "t": alert.token_id})
    with TestClient(create_app(base_settings)) as client:
        flipped = token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB")
        assert client.get(f"/alerts/respond?t={flipped}&d=not_me").status_code == 400
        assert client.get(f"/alerts/respond?t={forged}&d=not_me").status_code == 400
        assert _answer(client, f"/alerts/respond?t={forged}", "not_me").status_code == 400
    assert _owner_events(sessions, case_id) == []


def test_expired_link_is_refused(base_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    sessions = sessions_for(base_settings)
    alert, case_id = _queued_email(sessions)
    eight_days_ago = int(time.time() - dt.timedelta(days=8).total_seconds())
    monkeypatch.setattr(TimestampSigner, "get_timestamp", lambda self: eight_days_ago)
    path = alerts.owner_links(base_settings, alert)[0].removeprefix("http://testserver")
    monkeypatch.undo()
    with TestClient(create_app(base_settings)) as client:
        page = client.get(path)
        assert page.status_code == 410 and "expired" in page.text
        assert _answer(client, path, "not_me").status_code == 410
    assert _owner_events(sessions, case_id) == []


def test_alerts_dispatch_command_sends_what_is_queued(
    base_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sessions = sessions_for(base_settings)
    world = add_site(sessions, auto_alert_threshold=0.5)
    _flag(sessions, world, "s", 0.9)
    monkeypatch.setenv("TRAILGUARD_DATABASE_URL", base_settings.database_url)
    monkeypatch.setenv("TRAILGUARD_REDIS_URL", str(base_settings.redis_url))
    monkeypatch.setenv("TRAILGUARD_DATA_DIR", str(base_settings.data_dir))
    assert cli.main(["alerts", "dispatch"]) == 0
    assert len(list(base_settings.outbox_dir.glob("*.eml"))) == 1
    assert _alerts(sessions)[0].status == "sent"


@hypothesis_settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(token=st.text(max_size=200))
def test_no_arbitrary_token_is_accepted(base_settings: Settings, token: str) -> None:
    engine = make_engine(base_settings.database_url)
    try:
        with Session(engine) as session:
            state, alert = alerts.check_link(session, base_settings, token)
    finally:
        engine.dispose()
    assert (state, alert) == ("invalid", None)


@given(
    body=st.binary(max_size=300),
    secret=st.text(min_size=1, max_size=40),
    skew=st.integers(min_value=-299, max_value=299),
)
def test_webhook_signatures_verify_only_with_the_same_secret_and_body(
    body: bytes, secret: str, skew: int
) -> None:
    now = 1_800_000_000
    header = webhooks.sign(secret, body, now)
    assert webhooks.verify(secret, body, header, now=now + skew)
    assert not webhooks.verify(secret + "x", body, header, now=now)
    assert not webhooks.verify(secret, body + b"x", header, now=now)


def test_flagging_the_same_case_twice_alerts_once(base_settings: Settings) -> None:
    sessions = sessions_for(base_settings)
    world = add_site(sessions, auto_alert_threshold=0.5, webhook_url="http://127.0.0.1:9/hook")
    case_id = _flag(sessions, world, "twice", 0.9)
    with sessions() as session, session.begin():
        case = session.get(ReviewCase, case_id)
        assert case is not None
        on_flag(session, case, score=0.95, account_id=world.account_id, device=DEVICE, page="/p")
    assert sorted(a.channel for a in _alerts(sessions)) == ["email", "webhook"]


def test_owner_contradicting_a_genuine_decision_escalates_the_case(
    base_settings: Settings,
) -> None:
    sessions = sessions_for(base_settings)
    add_people(sessions)
    alert, case_id = _queued_email(sessions)
    with sessions() as session, session.begin():
        case = session.get(ReviewCase, case_id)
        assert case is not None
        cases.decide(
            session, case, decision="genuine", reason="looked fine", analyst_id=1, actor="ana"
        )
    path = alerts.owner_links(base_settings, alert)[0].removeprefix("http://testserver")
    with TestClient(create_app(base_settings)) as client:
        assert _answer(client, path, "not_me").status_code == 200
    with sessions() as session:
        case = session.get(ReviewCase, case_id)
        assert case is not None and case.status == "escalated"
    assert _owner_events(sessions, case_id) == ["owner_not_me"]
