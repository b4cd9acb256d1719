"""Real-time risk decisions: "is this visitor the account's owner?" at a sensitive action.

A site's back end asks during the visit (``server.decisions_api``). The answer comes from the
page sessions of that visit *so far*: the samples buffered in Redis are read, rendered and
scored on demand by the live mouse scorer, and the score is compared to the site's policy
(:mod:`scoring.policy`). The steps, each its own function:

- :func:`resolve_visit` - which page sessions make up the visit (Redis metadata + DB rows);
- :func:`gather` - their events as they are in Redis at this moment;
- :func:`score_pages` - the production :class:`~scoring.mouse.inference.MouseScorer` (through
  :func:`mouse_model_chooser`) in a worker thread, a bounded number at a time;
- :func:`aggregate` - one visit score from the per-page scores (window-weighted mean);
- :func:`decide` - pure: evidence + policy → ``allow`` / ``review`` / ``deny`` with reasons;
- :func:`record` - the ``Decision`` audit row, a review case for ``review`` and ``deny``, and
  the alert flow (:func:`scoring.alerting.on_flag`) for a scored ``deny``.

Nothing here invents a score: too little movement, no model, an overloaded server, or a site
that chose an explicit answer for accounts without a model give the policy's default with a
reason and ``score=None``. :func:`evaluate` runs the steps for one request.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from renderer.errors import InvalidInput, InvalidSession, NotFound
from scoring import keys, model_store, window_store
from scoring.alerting import device_label, on_flag
from scoring.cases import as_utc, open_case, record_event
from scoring.policy import ActionPolicy, Policy, parse_policy
from scoring.schema import Account, Decision, PageSession, Site, utcnow
from scoring.session_store import Caps, SessionData, read_fields, unpack_events

log = logging.getLogger(__name__)

VISIT_WINDOW = dt.timedelta(minutes=30)
"""Page sessions of the same account and device started this recently belong to one visit."""
MAX_VISIT_PAGES = 20
MAX_LIVE_SCAN = 5000
SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")

# Reasons, as they appear in answers and in the audit rows.
INSUFFICIENT_DATA = "insufficient_data"
NOT_ENROLLED = "not_enrolled"
NO_MODEL = "no_model"
GROUP_MODEL = "group_model"
ACCOUNT_MODEL = "account_model"
NO_ACCOUNT = "no_account"
OVERLOADED = "overloaded"
SCORE_AT_OR_ABOVE_DENY = "score_at_or_above_deny_threshold"
SCORE_AT_OR_ABOVE_REVIEW = "score_at_or_above_review_threshold"
SCORE_BELOW_REVIEW = "score_below_review_threshold"


@dataclass(frozen=True)
class DecisionRequest:
    """What a site asks: one page session, or an account (the site's own id for it)."""

    action: str
    session_id: str | None = None
    account: str | None = None


def parse_request(body: Any) -> DecisionRequest:
    """Validate the JSON body of a decision request; InvalidInput with a precise code."""
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a JSON object", "bad_body")
    unknown = sorted(set(body) - {"session_id", "account_id", "action"})
    if unknown:
        raise InvalidInput(f"unknown field(s): {', '.join(unknown)}", "unknown_field")
    action = body.get("action")
    if not isinstance(action, str) or not re.fullmatch(r"[a-z][a-z0-9_]{0,31}", action):
        raise InvalidInput("action must be a name like login, checkout", "bad_action")
    sid = body.get("session_id")
    account = body.get("account_id")
    if sid is None and account is None:
        raise InvalidInput("give session_id or account_id", "missing_subject")
    if sid is not None and (not isinstance(sid, str) or not SESSION_ID.match(sid)):
        raise InvalidInput("session_id is not a page session id", "bad_session_id")
    if isinstance(account, int) and not isinstance(account, bool):
        account = str(account)
    if account is not None and (not isinstance(account, str) or not 0 < len(account) <= 200):
        raise InvalidInput("account_id must be a string of 1 to 200 characters", "bad_account")
    return DecisionRequest(action=action, session_id=sid, account=account)


# --- the pure decision ------------------------------------------------------------------------


@dataclass(frozen=True)
class Evidence:
    """What the scorer made of the visit so far.

    ``model`` is ``account`` (the account's own model), ``group`` (the group model), ``none``
    (no trained model at all), ``not_enrolled`` (the account has no model and the site's
    policy answers such accounts without the group model), ``unscored`` (too few samples
    to consult any model) or ``overloaded`` (every scoring slot busy and the queue full).
    """

    samples: int
    windows: int
    score: float | None
    model: str
    model_version: str | None = None
    has_account: bool = True


@dataclass(frozen=True)
class Verdict:
    decision: str
    score: float | None
    threshold: float | None
    reasons: list[str]


def _context_reasons(ev: Evidence) -> list[str]:
    if not ev.has_account:
        return [NO_ACCOUNT, GROUP_MODEL]
    if ev.model == "group":
        return [NOT_ENROLLED, GROUP_MODEL]
    return [ACCOUNT_MODEL]


def threshold_verdict(score: float, thresholds: ActionPolicy) -> Verdict:
    if score >= thresholds.deny_at:
        return Verdict("deny", score, thresholds.deny_at, [SCORE_AT_OR_ABOVE_DENY])
    if score >= thresholds.review_at:
        return Verdict("review", score, thresholds.review_at, [SCORE_AT_OR_ABOVE_REVIEW])
    return Verdict("allow", score, thresholds.review_at, [SCORE_BELOW_REVIEW])


def decide(policy: Policy, action: str, ev: Evidence) -> Verdict:
    """The answer for ``action`` given the evidence; never a score the model did not give."""
    insufficient = Verdict(policy.insufficient_data, None, None, [INSUFFICIENT_DATA])
    if ev.samples < policy.min_samples:
        return insufficient
    if ev.model == "overloaded":
        return Verdict(policy.insufficient_data, None, None, [OVERLOADED])
    if ev.model == "not_enrolled":
        return Verdict(policy.not_enrolled, None, None, [NOT_ENROLLED])
    if ev.model == "none":
        extra = [NOT_ENROLLED] if ev.has_account else []
        return Verdict(policy.no_model, None, None, [NO_MODEL, *extra])
    if ev.windows < max(1, policy.min_windows) or ev.score is None:
        return insufficient
    verdict = threshold_verdict(ev.score, policy.for_action(action))
    return Verdict(
        verdict.decision,
        verdict.score,
        verdict.threshold,
        [*verdict.reasons, *_context_reasons(ev)],
    )


def aggregate(pages: Sequence[tuple[float | None, int]]) -> tuple[float | None, int]:
    """One visit score from (page score, page windows): the mean over all windows."""
    scored = [(s, n) for s, n in pages if s is not None and n > 0]
    windows = sum(n for _, n in scored)
    if windows == 0:
        return None, 0
    return float(sum(s * n for s, n in scored) / windows), windows


# --- the visit --------------------------------------------------------------------------------


@dataclass
class Visit:
    """The page sessions of one visit (newest first) and the account they belong to."""

    session_ids: list[str]
    account: Account | None
    subject_session: str | None
    meta: dict[str, dict[str, str]] = field(default_factory=dict)
    external_account: str | None = None


def _text(v: Any) -> str:
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)


def _decode(raw: dict[Any, Any]) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in raw.items()}


async def session_meta(redis: aioredis.Redis, sid: str) -> dict[str, str]:
    raw = await redis.hgetall(keys.session_meta(sid))
    return _decode(raw)


def find_account(session: Session, site: Site, external_id: str) -> Account | None:
    return session.scalars(
        select(Account).where(Account.site_id == site.id, Account.external_id == external_id)
    ).first()


@dataclass(frozen=True)
class Page:
    """A candidate page of a visit: where it came from does not matter, only who and when."""

    sid: str
    user_agent: str
    client_ip: str
    seen: float


async def live_pages(redis: aioredis.Redis, site: Site, external: str, since: float) -> list[Page]:
    """Live page sessions of ``external`` on ``site`` active since ``since`` (unix s).

    The collector keeps every live session in ``keys.LIVE_SESSIONS`` (score: last activity);
    there is no per-account index, so this reads the recent ones' site and account fields in
    one round trip (``MAX_LIVE_SCAN`` at most)."""
    raw: list[Any] = await redis.zrevrangebyscore(
        keys.LIVE_SESSIONS, "+inf", since, start=0, num=MAX_LIVE_SCAN, withscores=True
    )
    if not raw:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for sid, _seen in raw:
            pipe.hmget(keys.session_meta(_text(sid)), LIVE_FIELDS)
        metas = await pipe.execute()
    pages = []
    for (sid, seen), values in zip(raw, metas, strict=True):
        site_id, account, ua, ip = (_text(v) if v is not None else None for v in values)
        if site_id == str(site.id) and account == external:
            pages.append(Page(_text(sid), ua or "", ip or "", float(seen)))
    return pages


DIRECTORY_REFRESH_S = 1.0
"""How stale :class:`LiveDirectory` may be: a page opened less than this long ago can be
missing from a visit found through it (the asked-for session itself never is)."""
DIRECTORY_REREAD_S = 30.0
"""How often the directory re-reads every live page's fields, not only new pages' (an account
identified after its page opened)."""


LIVE_FIELDS = ["site_id", "account", "user_agent", "client_ip"]


@dataclass
class LiveDirectory:
    """The live page sessions by (site, account), shared by the decisions of one process.

    :func:`live_pages` reads the site and account of every live session for every decision:
    fine for a handful, but parsing thousands of replies in Python per request would be the
    largest cost of a decision on a busy site. This reads the live set at most every
    :data:`DIRECTORY_REFRESH_S`, and the fields only of sessions it has not seen yet (all of
    them every :data:`DIRECTORY_REREAD_S`), so a decision costs a dictionary lookup."""

    fields: dict[str, list[str | None]] = field(default_factory=dict)
    """sid → its :data:`LIVE_FIELDS`."""
    seen: dict[str, float] = field(default_factory=dict)
    by_account: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    refreshed: float = -math.inf
    reread: float = -math.inf
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def pages(
        self, redis: aioredis.Redis, site: Site, external: str, since: float
    ) -> list[Page]:
        """Live pages of ``external`` on ``site`` active since ``since`` (unix s)."""
        await self.fresh(redis)
        out = []
        for sid in self.by_account.get((str(site.id), external), []):
            _site, _account, ua, ip = self.fields[sid]
            if self.seen[sid] >= since:
                out.append(Page(sid, ua or "", ip or "", self.seen[sid]))
        return out

    async def fresh(self, redis: aioredis.Redis) -> None:
        """Refresh unless refreshed less than :data:`DIRECTORY_REFRESH_S` ago."""
        if time.monotonic() - self.refreshed >= DIRECTORY_REFRESH_S:
            async with self.lock:  # one refresh at a time; the others wait for it
                if time.monotonic() - self.refreshed >= DIRECTORY_REFRESH_S:
                    await self.refresh(redis)

    async def refresh(self, redis: aioredis.Redis) -> None:
        started = time.monotonic()
        since = time.time() - VISIT_WINDOW.total_seconds()
        raw: list[Any] = await redis.zrevrangebyscore(
            keys.LIVE_SESSIONS, "+inf", since, start=0, num=MAX_LIVE_SCAN, withscores=True
        )
        seen = {_text(sid): float(at) for sid, at in raw}
        reread = started - self.reread >= DIRECTORY_REREAD_S
        todo = [sid for sid in seen if reread or sid not in self.fields]
        metas = await read_fields(redis, todo, LIVE_FIELDS)
        fields = {sid: self.fields[sid] for sid in seen if sid in self.fields}
        for sid, values in zip(todo, metas, strict=True):
            fields[sid] = [_text(v) if v is not None else None for v in values]
        by_account: dict[tuple[str, str], list[str]] = {}
        for sid, (site_id, account, _ua, _ip) in fields.items():
            if site_id is not None and account:
                by_account.setdefault((site_id, account), []).append(sid)
        self.fields, self.seen, self.by_account = fields, seen, by_account
        self.refreshed = started
        self.reread = started if reread else self.reread


def ended_pages(session: Session, site: Site, account: Account | None, since: float) -> list[Page]:
    """Ended page sessions of ``account`` on ``site`` that started after ``since``."""
    if account is None:
        return []
    rows = session.execute(
        select(
            PageSession.id, PageSession.user_agent, PageSession.client_ip, PageSession.started_at
        )
        .where(
            PageSession.site_id == site.id,
            PageSession.account_id == account.id,
            PageSession.started_at >= dt.datetime.fromtimestamp(since, dt.UTC),
        )
        .order_by(PageSession.started_at.desc())
        .limit(MAX_VISIT_PAGES)
    ).all()
    return [Page(r[0], r[1], r[2], as_utc(r[3]).timestamp()) for r in rows]


def same_device(pages: list[Page], like: dict[str, str] | None) -> list[str]:
    """The pages of the device ``like`` describes (or of the most recent page), newest first."""
    if not pages:
        return []
    ordered = sorted(pages, key=lambda p: p.seen, reverse=True)
    ua = like.get("user_agent", "") if like else ordered[0].user_agent
    ip = like.get("client_ip", "") if like else ordered[0].client_ip
    out: list[str] = []
    for p in ordered:
        if p.user_agent == ua and p.client_ip == ip and p.sid not in out:
            out.append(p.sid)
    return out[:MAX_VISIT_PAGES]


def _account_pages(
    sessions: sessionmaker[Session], site: Site, external: str, since: float
) -> tuple[Account | None, list[Page]]:
    with sessions() as db:
        account = find_account(db, site, external)
        return account, ended_pages(db, site, account, since)


async def resolve_visit(
    redis: aioredis.Redis,
    sessions: sessionmaker[Session],
    site: Site,
    req: DecisionRequest,
    now: dt.datetime | None = None,
    directory: LiveDirectory | None = None,
    subject: SessionData | None = None,
) -> Visit:
    """The visit a request is about: the page sessions of the same account on the same device
    in the last :data:`VISIT_WINDOW`, live or ended, newest first (the asked-for one first).
    Live pages come from ``directory`` when given, else straight from Redis (:func:`live_pages`).
    ``subject``: the asked-for session's :func:`snapshot` when the caller already took it (its
    meta is then not read again).

    NotFound for an unknown session or account, or one of another site (the same answer, so
    ids of other sites cannot be probed); InvalidInput ``account_mismatch`` when both are given
    and the session is another account's. The database is read in a worker thread, and no
    connection is held across an ``await`` (a burst must not drain the pool)."""
    since = (now or utcnow()).timestamp() - VISIT_WINDOW.total_seconds()
    like: dict[str, str] | None = None
    external = req.account
    if req.session_id is not None:
        like = subject.meta if subject is not None else await session_meta(redis, req.session_id)
        if not like or like.get("site_id") != str(site.id):
            raise NotFound(f"no page session {req.session_id!r} for this site")
        in_session = like.get("account") or None
        if external is not None and in_session != external:
            raise InvalidInput("the session belongs to another account", "account_mismatch")
        external = in_session
    account: Account | None = None
    pages: list[Page] = []
    if external is not None:
        if directory is not None:
            pages = await directory.pages(redis, site, external, since)
        else:
            pages = await live_pages(redis, site, external, since)
        account, ended = await asyncio.to_thread(_account_pages, sessions, site, external, since)
        pages += ended
    if req.session_id is None and account is None and not pages:
        raise NotFound("no account with this id for this site")
    ids = same_device(pages, like)
    if req.session_id is not None:
        ids = [req.session_id, *(i for i in ids if i != req.session_id)]
    return Visit(
        session_ids=ids,
        account=account,
        subject_session=ids[0] if ids else None,
        meta={req.session_id: like} if req.session_id and like else {},
        external_account=external,
    )


# --- audit ------------------------------------------------------------------------------------


@dataclass
class Recorded:
    decision_id: int
    case_id: int | None


def _device(meta: dict[str, str]) -> str:
    return device_label(meta.get("user_agent", ""), meta.get("pointer_type", "mouse"))


def record(
    db: Session,
    *,
    site: Site,
    req: DecisionRequest,
    visit: Visit,
    verdict: Verdict,
    evidence: Evidence,
    details: dict[str, Any],
) -> Recorded:
    """Store the decision; ``review``/``deny`` open a case, a scored ``deny`` raises the alert
    flow. The caller commits (one transaction for all of it). The case comes first so that the
    decision row is written once, with its case id, not inserted and then updated."""
    account_id = visit.account.id if visit.account is not None else None
    case = None
    if verdict.decision != "allow" and visit.subject_session is not None:
        case = open_case(
            db,
            pipeline="mouse",
            subject_id=visit.subject_session,
            risk=verdict.score if verdict.score is not None else 0.0,
            site_id=site.id,
            threshold=verdict.threshold,
            reason=f"real-time decision {verdict.decision} at {req.action}",
        )
    case_id = case.id if case is not None else None
    row = Decision(
        site_id=site.id,
        session_id=visit.subject_session,
        account_id=account_id,
        action=req.action,
        decision=verdict.decision,
        score=verdict.score,
        threshold=verdict.threshold,
        model_version=evidence.model_version,
        reasons=list(verdict.reasons),
        samples_used=evidence.samples,
        details={**details, "case_id": case_id},
    )
    db.add(row)
    db.flush()
    if case is not None:
        record_event(
            db,
            case,
            actor="decision-api",
            kind="decision",
            reason=", ".join(verdict.reasons),
            data={"decision_id": row.id, "decision": verdict.decision, "action": req.action},
        )
        if verdict.decision == "deny" and verdict.score is not None:
            meta = visit.meta.get(visit.subject_session or "") or {}
            on_flag(
                db,
                case,
                score=verdict.score,
                account_id=account_id,
                device=_device(meta),
                page=meta.get("page_path", ""),
            )
    return Recorded(decision_id=row.id, case_id=case_id)


# --- scoring the visit so far -----------------------------------------------------------------


class LiveScorer(Protocol):
    """Scores one page session's events on demand: (risk in [0, 1], windows scored, windows
    rendered for this call - the rest were scored by an earlier decision and reused)."""

    def score_events(
        self, events: np.ndarray, viewport: tuple[int, int]
    ) -> tuple[float, int, int]: ...


@dataclass(frozen=True)
class ModelChoice:
    """The model that judges an account: its own (``account``), the ``group`` one, or ``none``."""

    kind: str
    version: str | None = None
    scorer: LiveScorer | None = None


ModelChooser = Callable[[int | None], ModelChoice]
"""account row id (or None) → the model to use; may load a checkpoint, so it runs in a thread."""


@dataclass
class DecisionContext:
    redis: aioredis.Redis
    sessions: sessionmaker[Session]
    choose_model: ModelChooser
    scoring_slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(2))
    """Concurrent scorings: more than the cores only makes every answer slower."""
    scoring_pool: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(2, thread_name_prefix="decision-scoring")
    )
    """Scoring threads of their own, so that slow scorings never hold up the short database
    steps of other requests (those use the loop's default executor)."""
    max_waiting: int = 8
    """Decisions allowed to queue for a scoring slot; past that the answer is the site's
    default with reason ``overloaded`` at once, instead of a late answer for everyone."""
    waiting: int = 0
    directory: LiveDirectory = field(default_factory=LiveDirectory)
    windows_ttl_s: int = Caps().ttl_s
    """How long a page's stored window outputs live: as long as its samples."""


@dataclass
class Answer:
    decision: str
    score: float | None
    threshold: float | None
    model_version: str | None
    reasons: list[str]
    samples_used: int
    decision_id: int
    case_id: int | None
    session_ids: list[str]

    def as_json(self, action: str) -> dict[str, Any]:
        return {
            "decision": self.decision,
            "score": self.score,
            "threshold": self.threshold,
            "model_version": self.model_version,
            "reasons": self.reasons,
            "samples_used": self.samples_used,
            "action": action,
            "decision_id": self.decision_id,
            "sessions": self.session_ids,
        }


_SNAPSHOT_LUA = """
local meta = redis.call('HGETALL', KEYS[1])
if #meta == 0 then return false end
local parts = {}
for _, entry in ipairs(redis.call('XRANGE', KEYS[2], '-', '+')) do
  local f = entry[2]
  for j = 1, #f, 2 do
    if f[j] == 'e' then parts[#parts + 1] = f[j + 1] end
  end
end
return {meta, table.concat(parts), redis.call('HGETALL', KEYS[3])}
"""
_SNAPSHOT_SHA = hashlib.sha1(_SNAPSHOT_LUA.encode()).hexdigest()


async def _snapshot_raw(redis: aioredis.Redis, sid: str) -> Any:
    keys_ = (keys.session_meta(sid), keys.session_samples(sid), keys.session_windows(sid))
    try:
        return await redis.evalsha(_SNAPSHOT_SHA, 3, *keys_)
    except NoScriptError:  # first use on this server, or it restarted
        return await redis.eval(_SNAPSHOT_LUA, 3, *keys_)


async def snapshot(redis: aioredis.Redis, sid: str) -> SessionData | None:
    """Meta and every buffered event of a page session as of one instant (one script, atomic
    like MULTI/EXEC), so the samples scored are exactly those in Redis at that moment; None
    when it is gone. The frames' packed events are joined inside Redis: one bulk reply to
    parse instead of one reply per frame, which cost more than the scoring itself. The page's
    stored window outputs come with them (:mod:`scoring.window_store`)."""
    raw = await _snapshot_raw(redis, sid)
    if not raw:
        return None
    flat, packed, stored = raw
    meta = {_text(k): _text(v) for k, v in zip(flat[::2], flat[1::2], strict=True)}
    events = unpack_events(packed)
    viewport = (int(meta.get("viewport_w") or 0), int(meta.get("viewport_h") or 0))
    windows = dict(zip(stored[::2], stored[1::2], strict=True))
    return SessionData(meta=meta, viewport=viewport, events=events, windows=windows)


async def gather(
    redis: aioredis.Redis, visit: Visit, taken: dict[str, SessionData] | None = None
) -> dict[str, SessionData]:
    """The visit's page sessions still buffered in Redis, by id, in the visit's order
    (``taken``: snapshots already read)."""
    pages: dict[str, SessionData] = {}
    for sid in visit.session_ids:
        data = (taken or {}).get(sid) or await snapshot(redis, sid)
        if data is not None:
            pages[sid] = data
            visit.meta[sid] = data.meta
    return pages


@dataclass(frozen=True)
class PageScore:
    score: float | None
    windows: int
    rendered: int = 0
    stored: dict[str, bytes] = field(default_factory=dict)
    """Window outputs computed here, for the page's shared store (:mod:`scoring.window_store`)."""


def _score_page(scorer: LiveScorer, data: SessionData) -> PageScore:
    page, stored = window_store.scored_with(
        scorer, data.windows, lambda: _score_events(scorer, data)
    )
    return dataclasses.replace(page, stored=stored)


def _score_events(scorer: LiveScorer, data: SessionData) -> PageScore:
    try:
        score, windows, rendered = scorer.score_events(data.events, data.viewport)
    except InvalidSession:  # nothing usable in this page (e.g. clicks only): no evidence
        return PageScore(None, 0)
    return PageScore(float(score), int(windows), int(rendered))


async def score_pages(
    ctx: DecisionContext, scorer: LiveScorer, pages: dict[str, SessionData]
) -> dict[str, PageScore] | None:
    """Per-page scores, scored in a worker thread; None when too many decisions already
    wait for a scoring slot (the caller answers ``overloaded``)."""
    if ctx.scoring_slots.locked() and ctx.waiting >= ctx.max_waiting:
        return None
    ctx.waiting += 1
    try:
        await ctx.scoring_slots.acquire()
    finally:
        ctx.waiting -= 1
    try:
        loop = asyncio.get_running_loop()
        scored = {
            sid: await loop.run_in_executor(ctx.scoring_pool, _score_page, scorer, data)
            for sid, data in pages.items()
        }
    finally:
        ctx.scoring_slots.release()
    await _share(ctx, {sid: page.stored for sid, page in scored.items()})
    return scored


async def _share(ctx: DecisionContext, stored: dict[str, dict[str, bytes]]) -> None:
    """Store new window outputs for the other processes; a failure only costs them a render."""
    try:
        await window_store.save(ctx.redis, stored, ctx.windows_ttl_s)
    except RedisError as e:
        log.warning("window outputs not shared: %s", e)


@dataclass
class Laps:
    """Where a decision's time went, step by step (stored with it: the audit row says
    whether a slow answer waited for the visit, the samples, the model or the scoring)."""

    started: float = field(default_factory=time.perf_counter)
    last: float = 0.0
    ms: dict[str, float] = field(default_factory=dict)

    def lap(self, step: str) -> None:
        """Time since the last lap, added to ``step``'s (a step may come back)."""
        now = time.perf_counter()
        took = (now - (self.last or self.started)) * 1000
        self.ms[step] = round(self.ms.get(step, 0.0) + took, 1)
        self.last = now

    def total_ms(self) -> float:
        return round((time.perf_counter() - self.started) * 1000, 1)


def _model_for(policy: Policy, choice: ModelChoice, has_account: bool) -> str:
    if choice.kind == "group" and has_account and policy.not_enrolled != "group":
        return "not_enrolled"
    return choice.kind


async def evaluate(
    ctx: DecisionContext,
    site: Site,
    req: DecisionRequest,
    now: dt.datetime | None = None,
    policy: Policy | None = None,
) -> Answer:
    """Decide ``req`` for ``site`` from the visit's samples so far, and record the decision
    (``policy``: the site's, when the caller parsed it already)."""
    laps = Laps()
    policy = policy or parse_policy(site.policy)
    # the asked-for page first: its meta says which visit it is, its events are scored
    subject = await snapshot(ctx.redis, req.session_id) if req.session_id else None
    if req.session_id is not None and subject is None:
        raise NotFound(f"no page session {req.session_id!r} for this site")
    laps.lap("samples")
    visit = await resolve_visit(ctx.redis, ctx.sessions, site, req, now, ctx.directory, subject)
    laps.lap("visit")
    taken = {req.session_id: subject} if req.session_id and subject else {}
    pages = await gather(ctx.redis, visit, taken)
    laps.lap("samples")
    samples = sum(len(p.events) for p in pages.values())
    account_id = visit.account.id if visit.account is not None else None
    has_account = visit.external_account is not None
    choice, model = ModelChoice("unscored"), "unscored"  # too little movement: no model needed
    per_page: dict[str, PageScore] = {}
    if samples >= policy.min_samples:
        choice = await asyncio.to_thread(ctx.choose_model, account_id)
        laps.lap("model")
        model = _model_for(policy, choice, has_account)
        if model in ("account", "group") and choice.scorer is not None:
            scored = await score_pages(ctx, choice.scorer, pages)
            laps.lap("scoring")
            model = model if scored is not None else "overloaded"
            per_page = scored or {}
    score, windows = aggregate([(p.score, p.windows) for p in per_page.values()])
    evidence = Evidence(samples, windows, score, model, choice.version, has_account)
    verdict = decide(policy, req.action, evidence)
    details = {
        "sessions": {sid: len(p.events) for sid, p in pages.items()},
        "page_scores": {sid: p.score for sid, p in per_page.items()},
        "windows": windows,
        "windows_rendered": sum(p.rendered for p in per_page.values()),
        "model": model,
        "thresholds": dataclasses.asdict(policy.for_action(req.action)),
        "scoring_ms": laps.total_ms(),
        "timing_ms": laps.ms,
    }

    def store() -> Recorded:
        with ctx.sessions() as db:
            try:
                recorded = record(
                    db,
                    site=site,
                    req=req,
                    visit=visit,
                    verdict=verdict,
                    evidence=evidence,
                    details=details,
                )
                db.commit()
            except IntegrityError as e:  # a foreign key: not read again first, it costs a query
                raise NotFound("the site or account was deleted while deciding") from e
            return recorded

    recorded = await asyncio.to_thread(store)
    return Answer(
        decision=verdict.decision,
        score=verdict.score,
        threshold=verdict.threshold,
        model_version=choice.version if verdict.score is not None else None,
        reasons=verdict.reasons,
        samples_used=samples,
        decision_id=recorded.decision_id,
        case_id=recorded.case_id,
        session_ids=list(pages),
    )


MODEL_RECHECK_S = 30.0
"""How often the chooser looks for a newly activated mouse model (a cheap query), and how long
it reuses an account's choice of model."""
MAX_CHOICES = 100_000


def _active_ids(sessions: sessionmaker[Session]) -> tuple[int | None, int | None]:
    with sessions() as db:
        rows = [model_store.active(db, "mouse", task) for task in ("owner", "group")]
    return rows[0].id if rows[0] else None, rows[1].id if rows[1] else None


def _loaded_ids(scorer: Any) -> tuple[int | None, int | None]:
    return (
        scorer.owner_row[0] if scorer.owner_row else None,
        scorer.group_row[0] if scorer.group_row else None,
    )


def mouse_model_chooser(
    sessions: sessionmaker[Session], model_dir: Path, device: str = "cpu"
) -> ModelChooser:
    """The mouse area's live scorer (:class:`scoring.mouse.inference.MouseScorer`) as a
    :data:`ModelChooser`: loaded on first use, reloaded when another model is activated."""
    state: dict[str, Any] = {"scorer": None, "checked": 0.0}
    lock = threading.Lock()

    def scorer() -> Any:
        with lock:
            now = time.monotonic()
            current = state["scorer"]
            # while no model is active the check is made on every call (one query): a first
            # model is used as soon as it is activated, however early the scorer was loaded
            fresh = now - state["checked"] < MODEL_RECHECK_S
            if current is not None and fresh and _loaded_ids(current) != (None, None):
                return current
            state["checked"] = now
            if current is None or _active_ids(sessions) != _loaded_ids(current):
                # torch: imported on first use (the server's lifespan makes that start-up)
                from scoring.mouse.inference import MouseScorer

                loaded = MouseScorer(sessions, model_dir, device)
                # outputs shared with the other server processes through Redis
                loaded.window_cache = window_store.SharedWindowCache(
                    window_store.models_tag(_loaded_ids(loaded))
                )
                state["scorer"] = loaded
            return state["scorer"]

    # account → its choice, per loaded scorer: which head judges an account is read from the
    # database (two or three queries), and it changes only with a newly activated model
    chosen: dict[int | None, tuple[float, ModelChoice]] = {}
    chosen_by: list[Any] = [None]  # the scorer those choices were made with

    def choose(account_id: int | None) -> ModelChoice:
        current, now = scorer(), time.monotonic()
        if chosen_by[0] is not current or len(chosen) >= MAX_CHOICES:
            chosen.clear()
            chosen_by[0] = current
        hit = chosen.get(account_id)
        if hit is not None and now - hit[0] < MODEL_RECHECK_S:
            return hit[1]
        bound = current.for_account(account_id)
        choice = ModelChoice("none")
        if bound.kind in ("account", "group"):
            choice = ModelChoice(bound.kind, bound.version, bound)
        chosen[account_id] = (now, choice)
        return choice

    return choose
