"""The whole review-to-owner flow in headless Chromium, against real services.

An analyst logs in, opens the top case of the queue, sees the session image, and confirms an
impostor; a real SMTP server (aiosmtpd on loopback) receives exactly one alert email; following
its "this wasn't me" link and pressing the button records the owner's answer on the case.
The test also takes the screenshots of the queue and the case page in docs/img/.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from conftest import CHROMIUM_ARGS
from sqlalchemy import select
from test_review_support import (
    PASSWORD,
    Inbox,
    add_genuine_history,
    add_people,
    add_scored_case,
    add_site,
    free_port,
    make_settings,
    sessions_for,
    smtp_inbox,
)

from scoring.schema import Alert, CaseEvent, PageSession, ReviewCase
from server.app import create_app
from server.settings import Settings

pytestmark = pytest.mark.browser

IMG_DIR = Path(__file__).resolve().parent.parent / "docs" / "img"


@pytest.fixture
def inbox() -> Iterator[tuple[Inbox, int]]:
    with smtp_inbox() as found:
        yield found


def _serve(settings: Settings) -> tuple[uvicorn.Server, threading.Thread]:
    port = int(settings.public_base_url.rsplit(":", 1)[1])
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, log_level="warning", lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    return server, thread


@pytest.fixture
def live(
    tmp_path: Path, migrated_database_url: str, redis_url: str, inbox: tuple[Inbox, int]
) -> Iterator[tuple[str, Settings]]:
    base = f"http://127.0.0.1:{free_port()}"
    settings = make_settings(
        tmp_path,
        migrated_database_url,
        redis_url,
        smtp_url=f"smtp://127.0.0.1:{inbox[1]}",
        public_base_url=base,
    )
    sessions = sessions_for(settings)
    add_people(sessions)
    world = add_site(sessions, "Northwind Shop", owner_email="owner@example.org")
    other = add_site(sessions, "Contoso Bank", external_id="c-1001", owner_email="c@example.org")
    with sessions() as session, session.begin():
        add_genuine_history(session, world, 3)
        add_scored_case(session, world, "s-top", score=0.93, seed=7, page_path="/checkout/pay")
        add_scored_case(session, other, "s-mid", score=0.81, seed=8, page_path="/transfer")
        add_scored_case(session, world, "s-low", score=0.64, seed=9, page_path="/account/email")
    server, thread = _serve(settings)
    try:
        yield base, settings
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def _wait_for(predicate: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.1)


def _text_part(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert part is not None
    return str(part.get_content())


def test_analyst_confirms_impostor_and_owner_answers_by_email(
    live: tuple[str, Settings], inbox: tuple[Inbox, int], chromium_path: str
) -> None:
    from playwright.sync_api import sync_playwright

    base, settings = live
    handler, _port = inbox
    IMG_DIR.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        page.goto(f"{base}/review")
        assert "/login" in page.url
        page.fill("input[name=email]", "ana@example.org")
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(f"{base}/review")
        rows = page.locator("#cases tbody tr")
        assert rows.count() == 3
        assert "#1" in rows.nth(0).inner_text() and "0.930" in rows.nth(0).inner_text()
        page.screenshot(path=str(IMG_DIR / "review-queue.png"), full_page=True)

        rows.nth(0).locator("a").click()
        page.wait_for_url(re.compile(r".*/review/cases/1$"))
        image = page.locator("#session-image")
        image.wait_for()
        page.wait_for_function(
            "document.getElementById('session-image').complete"
            " && document.getElementById('session-image').naturalWidth > 0"
        )
        assert page.locator("img.ref").count() == 3
        assert "claimed by you" in page.inner_text("main")
        page.fill("#reason", "Trail is nothing like the owner's; new device and country.")
        page.screenshot(path=str(IMG_DIR / "review-case.png"), full_page=True)
        page.click("#decide-impostor")
        page.wait_for_url(re.compile(r".*/review/cases/2$"))  # the next riskiest open case

        _wait_for(lambda: len(handler.messages) >= 1)
        time.sleep(1.0)  # a second, duplicate email would have arrived by now
        assert len(handler.messages) == 1
        message = handler.messages[0]
        assert message["To"] == "owner@example.org"
        assert message.get_body(preferencelist=("html",)) is not None
        text = _text_part(message)
        assert "/checkout/pay" in text and "may be wrong" in text
        link = re.search(r"This wasn't me: (\S+)", text)
        assert link, text

        owner = browser.new_page()
        owner.goto(link.group(1))
        assert "Was this you?" in owner.inner_text("main")
        owner.click("#confirm-decision")
        owner.wait_for_selector("#outcome")
        assert "This wasn't me" in owner.inner_text("#outcome")

        page.goto(f"{base}/review/cases/1")
        assert "owner_not_me" in page.inner_text("#audit-log")
        browser.close()

    with sessions_for(settings)() as session:
        case = session.get(ReviewCase, 1)
        assert case is not None and case.status == "impostor"
        kinds = [e.kind for e in session.scalars(select(CaseEvent).where(CaseEvent.case_id == 1))]
        assert kinds[:2] == ["opened", "claimed"]
        assert {"impostor", "labelled", "alert_queued", "owner_not_me"} <= set(kinds)
        alert = session.scalars(select(Alert)).one()
        assert (alert.status, alert.owner_decision) == ("sent", "not_me")
        assert alert.token_used_at is not None
        page_session = session.get(PageSession, "s-top")
        assert page_session is not None and page_session.label == "impostor"
