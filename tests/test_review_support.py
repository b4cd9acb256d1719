"""Builders shared by the review, alert, auth and accounts-API tests (no tests in here).

Each test calls them to build exactly what it needs: settings on a chosen database, a site with
an account, scored page sessions with real archived mouse trails, open cases, analysts.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import email
import email.policy
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import numpy as np
from aiosmtpd.controller import Controller
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from starlette.testclient import TestClient

from scoring import session_store
from scoring.cases import open_case
from scoring.database import make_engine, make_sessionmaker
from scoring.mouse.synth import draw_habits, generate_events
from scoring.schema import Account, ModelVersion, PageSession, ReviewCase, Score, utcnow
from server.auth import add_analyst
from server.settings import Settings, load_settings
from server.sites import create_site

PASSWORD = "correct horse battery"
CHROME_UA = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/126.0 Safari/537.36"
)


def make_settings(tmp_path: Path, database_url: str, redis_url: str, **over: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "redis_url": redis_url,
        "data_dir": tmp_path / "var",
        "model_dir": tmp_path / "var" / "models",
        "secret_key": "review-test-secret",
        "public_base_url": "http://testserver",
    }
    values.update(over)
    return load_settings({}, **values)


def sessions_for(settings: Settings) -> sessionmaker[Session]:
    return make_sessionmaker(make_engine(settings.database_url))


@dataclass
class SiteWorld:
    site_id: int
    site_key: str
    secret: str
    account_id: int


def add_site(
    sessions: sessionmaker[Session],
    name: str = "Shop",
    *,
    owner_email: str | None = "owner@example.org",
    external_id: str = "user-42",
    auto_alert_threshold: float | None = None,
    webhook_url: str | None = None,
) -> SiteWorld:
    with sessions() as session, session.begin():
        new = create_site(session, name, ["https://shop.example"])
        new.site.auto_alert_threshold = auto_alert_threshold
        new.site.webhook_url = webhook_url
        account = Account(site_id=new.site.id, external_id=external_id, owner_email=owner_email)
        session.add(account)
        session.flush()
        return SiteWorld(new.site.id, new.site.key, new.secret, account.id)


def trail(seed: int, n: int = 600) -> tuple[np.ndarray, tuple[int, int]]:
    """A realistic synthetic mouse session (person drawn from ``seed``)."""
    rng = np.random.default_rng(seed)
    events, viewport = generate_events(draw_habits(rng), n, rng)
    return events, (int(viewport[0]), int(viewport[1]))


def add_page_session(
    session: Session,
    world: SiteWorld,
    sid: str,
    *,
    seed: int = 1,
    label: str | None = None,
    page_path: str = "/checkout",
    user_agent: str = CHROME_UA,
    client_ip: str = "81.2.69.160",
    started_at: dt.datetime | None = None,
) -> PageSession:
    events, viewport = trail(seed)
    started = started_at or utcnow() - dt.timedelta(minutes=30)
    page = PageSession(
        id=sid,
        site_id=world.site_id,
        account_id=world.account_id,
        page_path=page_path,
        viewport_w=viewport[0],
        viewport_h=viewport[1],
        pointer_type="mouse",
        user_agent=user_agent,
        client_ip=client_ip,
        status="scored",
        n_samples=len(events),
        samples=session_store.archive(events),
        label=label,
        started_at=started,
        ended_at=started + dt.timedelta(minutes=3),
    )
    session.add(page)
    session.flush()
    return page


def add_scored_case(
    session: Session,
    world: SiteWorld,
    sid: str,
    *,
    score: float,
    threshold: float = 0.5,
    seed: int = 7,
    **page_kwargs: Any,
) -> ReviewCase:
    add_page_session(session, world, sid, seed=seed, **page_kwargs)
    row = Score(
        job_id=f"job-{sid}",
        session_id=sid,
        model_version_id=model_version(session),
        score=score,
        threshold=threshold,
        flagged=score > threshold,
    )
    session.add(row)
    session.flush()
    return open_case(
        session,
        pipeline="mouse",
        subject_id=sid,
        risk=score,
        site_id=world.site_id,
        score_id=row.id,
        threshold=threshold,
        reason="score above threshold",
    )


def model_version(session: Session) -> int:
    """The active mouse model's row (created on first use)."""
    found = session.scalars(select(ModelVersion).where(ModelVersion.pipeline == "mouse")).first()
    if found is None:
        found = ModelVersion(
            pipeline="mouse", version="mouse-20261128-a1", path="mouse/a1.pt", active=True
        )
        session.add(found)
        session.flush()
    return found.id


def add_genuine_history(session: Session, world: SiteWorld, count: int = 3) -> None:
    """Past sessions of the owner, scored as not flagged (the reference images)."""
    for i in range(count):
        sid = f"past-{world.account_id}-{i}"
        add_page_session(
            session,
            world,
            sid,
            seed=100 + i,
            started_at=utcnow() - dt.timedelta(days=i + 1),
            page_path=f"/account/{i}",
        )
        session.add(Score(job_id=f"job-{sid}", session_id=sid, score=0.1, threshold=0.5))
    session.flush()


def add_people(sessions: sessionmaker[Session]) -> None:
    with sessions() as session, session.begin():
        add_analyst(session, "ana@example.org", PASSWORD, "analyst")
        add_analyst(session, "root@example.org", PASSWORD, "admin")


CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_from(html: str) -> str:
    match = CSRF_RE.search(html)
    assert match, "page has no CSRF token"
    return match.group(1)


def log_in(client: TestClient, email: str = "ana@example.org", password: str = PASSWORD) -> None:
    page = client.get("/login")
    response = client.post(
        "/login",
        data={"email": email, "password": password, "csrf_token": csrf_from(page.text)},
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Inbox:
    """An aiosmtpd handler keeping every message it receives."""

    messages: list[EmailMessage] = field(default_factory=list)
    recipients: list[list[str]] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        self.messages.append(parsed)
        self.recipients.append(list(envelope.rcpt_tos))
        return "250 Message accepted for delivery"


@contextlib.contextmanager
def smtp_inbox() -> Iterator[tuple[Inbox, int]]:
    """A real SMTP server (aiosmtpd) on a free loopback port."""
    handler = Inbox()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield handler, port
    finally:
        controller.stop()


def body_text(message: EmailMessage, kind: str = "plain") -> str:
    part = message.get_body(preferencelist=(kind,))
    assert part is not None, f"no {kind} part"
    return str(part.get_content())
