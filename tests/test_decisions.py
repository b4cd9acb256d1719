import asyncio
import datetime as dt
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from renderer.errors import InvalidInput, NotFound
from scoring import keys
from scoring.database import make_engine, make_sessionmaker
from scoring.decisions import (
    DecisionContext,
    DecisionRequest,
    Evidence,
    ModelChoice,
    PageScore,
    Verdict,
    Visit,
    aggregate,
    decide,
    evaluate,
    parse_request,
    record,
    resolve_visit,
    score_pages,
)
from scoring.policy import parse_policy
from scoring.schema import (
    Account,
    Alert,
    CaseEvent,
    Decision,
    PageSession,
    ReviewCase,
    Site,
    utcnow,
)
from scoring.session_store import SessionData
from server.sites import create_site

POLICY = parse_policy({"min_samples": 100, "min_windows": 2})
RANK = {"allow": 0, "review": 1, "deny": 2}


def _ev(score: float | None, samples: int = 500, windows: int = 5, **kw: Any) -> Evidence:
    return Evidence(
        samples=samples,
        windows=windows,
        score=score,
        model=kw.pop("model", "account"),
        model_version="v1",
        **kw,
    )


def test_scores_are_compared_with_the_actions_thresholds() -> None:
    # checkout: review at 0.5, deny at 0.8
    assert decide(POLICY, "checkout", _ev(0.2)) == Verdict(
        "allow", 0.2, 0.5, ["score_below_review_threshold", "account_model"]
    )
    assert decide(POLICY, "checkout", _ev(0.5)).decision == "review"
    v = decide(POLICY, "checkout", _ev(0.8))
    assert (v.decision, v.threshold) == ("deny", 0.8)
    # the same score is only a review at login (deny at 0.85)
    assert decide(POLICY, "login", _ev(0.8)).decision == "review"


@pytest.mark.parametrize(
    ("samples", "windows", "score"), [(99, 5, 0.99), (500, 1, 0.99), (500, 5, None), (0, 0, None)]
)
def test_too_little_movement_gives_the_sites_default_and_no_score(
    samples: int, windows: int, score: float | None
) -> None:
    v = decide(POLICY, "checkout", _ev(score, samples, windows))
    assert v == Verdict("allow", None, None, ["insufficient_data"])
    strict = parse_policy({"min_samples": 100, "insufficient_data": "review"})
    assert decide(strict, "checkout", _ev(score, samples, 0)).decision == "review"


def test_accounts_without_a_model() -> None:
    group = decide(POLICY, "login", _ev(0.1, model="group"))
    assert group.reasons == ["score_below_review_threshold", "not_enrolled", "group_model"]
    assert group.score == 0.1
    explicit = parse_policy({"not_enrolled": "review"})
    assert decide(explicit, "login", _ev(None, model="not_enrolled")) == Verdict(
        "review", None, None, ["not_enrolled"]
    )
    # too little movement wins: no model is even consulted
    assert decide(explicit, "login", _ev(None, 50, model="not_enrolled")).reasons == [
        "insufficient_data"
    ]
    none = decide(POLICY, "login", _ev(None, model="none"))
    assert none == Verdict("allow", None, None, ["no_model", "not_enrolled"])
    anonymous = decide(POLICY, "login", _ev(0.9, model="group", has_account=False))
    assert anonymous.reasons == ["score_at_or_above_deny_threshold", "no_account", "group_model"]


@given(a=st.floats(0, 1), b=st.floats(0, 1), action=st.sampled_from(["login", "checkout", "x"]))
def test_a_higher_score_never_gets_a_milder_answer(a: float, b: float, action: str) -> None:
    low, high = sorted((a, b))
    assert (
        RANK[decide(POLICY, action, _ev(low)).decision]
        <= RANK[decide(POLICY, action, _ev(high)).decision]
    )


def test_visit_score_is_the_mean_over_windows() -> None:
    assert aggregate([(0.2, 1), (0.8, 3)]) == (pytest.approx(0.65), 4)
    assert aggregate([(None, 0), (0.4, 0)]) == (None, 0)
    assert aggregate([]) == (None, 0)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ([], "bad_body"),
        ({"action": "login"}, "missing_subject"),
        ({"session_id": "abcdefgh1234", "action": "Log in"}, "bad_action"),
        ({"session_id": "abc", "action": "login"}, "bad_session_id"),
        ({"session_id": "../../etc/passwd", "action": "login"}, "bad_session_id"),
        ({"account_id": "", "action": "login"}, "bad_account"),
        ({"account_id": ["a"], "action": "login"}, "bad_account"),
        ({"account_id": "a", "action": "login", "amount": 5}, "unknown_field"),
    ],
)
def test_malformed_requests_are_refused_precisely(body: Any, code: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_request(body)
    assert info.value.code == code


def test_a_numeric_account_id_is_the_sites_own_id_as_text() -> None:
    assert parse_request({"account_id": 42, "action": "login"}) == DecisionRequest(
        "login", None, "42"
    )


# --- with a database and Redis ---------------------------------------------------------------


@pytest.fixture
def db(migrated_database_url: str) -> Iterator[Session]:
    engine = make_engine(migrated_database_url)
    with make_sessionmaker(engine)() as session:
        yield session
    engine.dispose()


def _page(db: Session, sid: str, site_id: int, account: Account | None, **kw: Any) -> PageSession:
    row = PageSession(
        id=sid,
        site_id=site_id,
        account_id=account.id if account else None,
        user_agent=kw.get("ua", "Mozilla/5.0 (X11; Linux x86_64) Chrome/130.0"),
        client_ip=kw.get("ip", "10.0.0.1"),
        page_path=kw.get("path", "/cart"),
        started_at=kw.get("started", utcnow()),
    )
    db.add(row)
    db.flush()
    return row


async def _live(redis_url: str, sid: str, **fields: Any) -> None:
    """A live page session as the collector leaves it: meta hash + the live-sessions set."""
    redis = aioredis.Redis.from_url(redis_url)
    await redis.hset(keys.session_meta(sid), mapping={k: str(v) for k, v in fields.items()})  # type: ignore[misc]
    await redis.zadd(keys.LIVE_SESSIONS, {sid: time.time()})
    await redis.aclose()


def _resolve(redis_url: str, db: Session, site: Any, req: DecisionRequest) -> Visit:
    async def run() -> Visit:
        redis = aioredis.Redis.from_url(redis_url)
        try:
            return await resolve_visit(redis, sessionmaker(db.get_bind()), site, req)
        finally:
            await redis.aclose()

    return asyncio.run(run())


UA = "Mozilla/5.0 (X11; Linux x86_64) Chrome/130.0"


def test_a_visit_is_the_pages_of_the_same_account_and_device(db: Session, redis_url: str) -> None:
    shop = create_site(db, "Shop", ["https://shop.example"]).site
    other = create_site(db, "Other", ["https://other.example"]).site
    alice = Account(site_id=shop.id, external_id="alice")
    db.add(alice)
    db.flush()
    minutes = lambda m: utcnow() - dt.timedelta(minutes=m)  # noqa: E731
    _page(db, "page-old-0001", shop.id, alice, started=minutes(120))
    _page(db, "page-home-001", shop.id, alice, started=minutes(3))
    _page(
        db,
        "page-phone-01",
        shop.id,
        alice,
        ua="Mozilla/5.0 (iPhone) Safari/605",
        started=minutes(5),
    )
    db.commit()
    live = {"account": "alice", "user_agent": UA, "client_ip": "10.0.0.1"}
    asyncio.run(_live(redis_url, "page-cart-001", site_id=shop.id, **live))
    asyncio.run(_live(redis_url, "page-other-01", site_id=other.id, **live))
    asyncio.run(_live(redis_url, "page-bob-0001", site_id=shop.id, **{**live, "account": "bob"}))

    by_session = _resolve(redis_url, db, shop, DecisionRequest("checkout", "page-cart-001"))
    assert by_session.session_ids == ["page-cart-001", "page-home-001"]
    assert by_session.account is not None and by_session.account.id == alice.id
    by_account = _resolve(redis_url, db, shop, DecisionRequest("checkout", None, "alice"))
    assert by_account.session_ids == ["page-cart-001", "page-home-001"]
    # an account seen only in a live page so far (no row yet) is found too
    bob = _resolve(redis_url, db, shop, DecisionRequest("login", None, "bob"))
    assert (bob.session_ids, bob.account, bob.external_account) == (["page-bob-0001"], None, "bob")

    with pytest.raises(NotFound):
        _resolve(redis_url, db, shop, DecisionRequest("checkout", "page-unknown-1"))
    with pytest.raises(NotFound):  # another site's session reads as unknown
        _resolve(redis_url, db, other, DecisionRequest("checkout", "page-cart-001"))
    with pytest.raises(NotFound):  # another site's account reads as unknown
        _resolve(redis_url, db, other, DecisionRequest("checkout", None, "bob"))
    with pytest.raises(InvalidInput) as info:
        _resolve(redis_url, db, shop, DecisionRequest("checkout", "page-cart-001", "bob"))
    assert info.value.code == "account_mismatch"


def _record(db: Session, site: Any, visit: Visit, verdict: Verdict) -> Decision:
    recorded = record(
        db,
        site=site,
        req=DecisionRequest("checkout", visit.subject_session),
        visit=visit,
        verdict=verdict,
        evidence=_ev(verdict.score, samples=700),
        details={"sessions": {visit.subject_session: 700}},
    )
    db.commit()
    row = db.get(Decision, recorded.decision_id)
    assert row is not None and row.details["case_id"] == recorded.case_id
    return row


def test_every_decision_is_stored_review_opens_a_case_deny_alerts(db: Session) -> None:
    new = create_site(db, "Shop", ["https://shop.example"])
    site = new.site
    site.webhook_url = "https://shop.example/hook"
    site.auto_alert_threshold = 0.5
    alice = Account(site_id=site.id, external_id="alice", owner_email="alice@shop.example")
    db.add(alice)
    db.flush()
    for sid in ("page-allow-01", "page-review-1", "page-deny-001", "page-nodata-1"):
        _page(db, sid, site.id, alice)
    meta = {"user_agent": "Mozilla/5.0 (Windows NT 10.0) Chrome/130.0", "page_path": "/pay"}

    def visit(sid: str) -> Visit:
        return Visit([sid], alice, sid, {sid: meta})

    allow = _record(db, site, visit("page-allow-01"), Verdict("allow", 0.1, 0.5, ["r"]))
    assert allow.details["case_id"] is None and allow.samples_used == 700
    assert (allow.score, allow.threshold, allow.model_version) == (0.1, 0.5, "v1")

    review = _record(db, site, visit("page-review-1"), Verdict("review", 0.6, 0.5, ["r"]))
    case = db.get(ReviewCase, review.details["case_id"])
    assert case is not None and (case.subject_id, case.risk, case.site_id) == (
        "page-review-1",
        0.6,
        site.id,
    )
    kinds = db.scalars(select(CaseEvent.kind).where(CaseEvent.case_id == case.id)).all()
    assert kinds == ["opened", "decision"]
    assert db.scalars(select(Alert).where(Alert.case_id == case.id)).all() == []

    deny = _record(db, site, visit("page-deny-001"), Verdict("deny", 0.9, 0.8, ["r"]))
    alerts = db.scalars(select(Alert).where(Alert.case_id == deny.details["case_id"])).all()
    assert sorted(a.channel for a in alerts) == ["email", "webhook"]
    assert {a.device for a in alerts} == {"Chrome on Windows (mouse)"}

    # a deny the policy chose for lack of data opens a case but raises no alert on no score
    nodata = _record(
        db, site, visit("page-nodata-1"), Verdict("deny", None, None, ["insufficient_data"])
    )
    assert nodata.details["case_id"] is not None
    assert db.scalars(select(Alert).where(Alert.case_id == nodata.details["case_id"])).all() == []
    assert db.scalars(select(Decision.decision).order_by(Decision.id)).all() == [
        "allow",
        "review",
        "deny",
        "deny",
    ]


def test_an_overloaded_scorer_answers_the_default_at_once() -> None:
    assert decide(POLICY, "login", _ev(None, model="overloaded")) == Verdict(
        "allow", None, None, ["overloaded"]
    )


class _GatedScorer:
    """A scorer that holds its thread until released: occupies scoring slots on demand."""

    def __init__(self) -> None:
        self.gate = threading.Event()

    def score_events(self, events: np.ndarray, viewport: tuple[int, int]) -> tuple[float, int, int]:
        self.gate.wait(10)
        return 0.25, len(events) // 400, len(events) // 400


def test_scoring_sheds_load_past_the_queue_bound(redis_url: str) -> None:
    async def scenario() -> list[Any]:
        redis = aioredis.Redis.from_url(redis_url)
        ctx = DecisionContext(
            redis,
            None,  # type: ignore[arg-type]
            lambda _a: ModelChoice("none"),
            scoring_slots=asyncio.Semaphore(1),
            max_waiting=1,
        )
        scorer = _GatedScorer()
        page = {"p": SessionData({}, (800, 600), np.zeros((800, 4)))}
        first = asyncio.create_task(score_pages(ctx, scorer, page))  # takes the slot
        await asyncio.sleep(0.05)
        second = asyncio.create_task(score_pages(ctx, scorer, page))  # waits (queue of 1)
        await asyncio.sleep(0.05)
        third = await score_pages(ctx, scorer, page)  # queue full: shed at once
        scorer.gate.set()
        out = [await first, await second, third, ctx.waiting, ctx.scoring_slots.locked()]
        await redis.aclose()
        return out

    first, second, third, waiting, locked = asyncio.run(scenario())
    assert first == second == {"p": PageScore(0.25, 2, 2)}
    assert third is None and waiting == 0 and not locked


def test_a_site_deleted_while_deciding_answers_not_found(db: Session, redis_url: str) -> None:
    # the audit row is written without reading the site again: its foreign key is the check
    gone = Site(id=987_654, key="tgk_gone", name="gone", secret_hash="x", policy={})
    asyncio.run(_live(redis_url, "page-ghost-01", site_id=gone.id, account=""))

    async def scenario() -> None:
        redis = aioredis.Redis.from_url(redis_url)
        ctx = DecisionContext(redis, sessionmaker(db.get_bind()), lambda _a: ModelChoice("none"))
        try:
            with pytest.raises(NotFound):
                await evaluate(ctx, gone, DecisionRequest("login", "page-ghost-01"))
        finally:
            await redis.aclose()

    asyncio.run(scenario())
    assert db.scalar(select(func.count()).select_from(Decision)) == 0
