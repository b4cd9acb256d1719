"""Pre-scoring: score a live page's windows while the visit goes on, so a decision scores only
the tail.

A first decision on a one-minute page renders and runs about ten windows (35–45 ms of CPU);
fifty of those a second need two cores. But a window, once complete, never changes
(:mod:`scoring.mouse.live`), so it can be scored any time before the decision. About once a
second :class:`Prescorer` looks at the live pages of the process's
:class:`~scoring.decisions.LiveDirectory`, takes those that gained a complete window since it
last looked (windows of the network that page's decision will use: the owner and group models
have windows of their own lengths), snapshots them and scores their complete windows into the loaded
scorer's window cache, the one the decision path reads: the decision path is unchanged, it
just finds cache hits.

It must never starve decisions:

- a budget of windows per second (``TRAILGUARD_PRESCORE_WINDOWS_PER_S``; 0 disables), at most
  :data:`PER_JOB` windows per job, so a job holds a scoring slot for a few milliseconds only;
- the network runs in the decisions' own thread pool under the same scoring slots, and only
  when a slot is free *and no decision waits for one*; otherwise the rest of the tick is
  skipped (pre-scoring is an optimisation: a skipped window is scored by the decision);
- it yields to the event loop between pages;
- a page whose pre-scoring fails is logged and left alone until it grows again; it never
  affects another page or a decision.

The cache is the process's: a decision served by another server process finds nothing there.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from scoring import window_store
from scoring.decisions import MODEL_RECHECK_S, DecisionContext, _text, snapshot
from scoring.mouse.live import live_bounds
from scoring.schema import Account
from scoring.session_store import read_fields

log = logging.getLogger(__name__)

WINDOW_EVENTS = 400
"""Window length assumed for a page whose scorer the model chooser was not asked about yet
(the owner model's default length)."""
PER_JOB = 4
"""Windows per job at most: how long a decision can find one scoring slot taken (~12 ms)."""
INTERVAL_S = 1.0


def complete_windows(n: int, window_events: int) -> int:
    """How many windows of a page of ``n`` samples can no longer change: all but the last of
    :func:`scoring.mouse.live.live_bounds`.

    A page is due when this grows, not when it has grown by a window's worth of samples since
    it was last done: a page done at 3,600 samples (8 complete windows) that ends at 3,866 has
    a ninth complete window, which the growth rule left for the decision to render."""
    return len(live_bounds(max(0, n), window_events)) - 1


@dataclass
class PrescoreStats:
    """What pre-scoring did so far (for the benchmark and the logs)."""

    ticks: int = 0
    ticks_skipped: int = 0
    """Ticks cut short because decisions were waiting for a scoring slot."""
    pages: int = 0
    windows: int = 0
    count_reads: int = 0
    """Sample counts read (pages active since last looked at)."""
    errors: int = 0
    backlog: int = 0
    """Pages due at the end of the last tick that it did not get to (budget or decisions)."""
    job_cpu_s: float = 0.0
    """CPU of the scoring jobs (render + network) in the scoring threads."""
    loop_s: float = 0.0
    """CPU on the event loop for the sample counts and bookkeeping (awaits excluded)."""
    snapshot_s: float = 0.0
    """Wall time of the pages' snapshots (Redis script + unpacking; an upper bound of their
    CPU on the loop)."""

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _account_id(sessions: sessionmaker[Session], site_id: str, external: str) -> int | None:
    with sessions() as db:
        found = db.scalar(
            select(Account.id).where(
                Account.site_id == int(site_id), Account.external_id == external
            )
        )
        return int(found) if found is not None else None


def _job(scorer: Any, data: Any, limit: int) -> tuple[int, int, float, dict[str, bytes]]:
    """(rendered, still to do, thread CPU, the new outputs for the page's shared store)."""
    t0 = time.thread_time()
    (rendered, left), stored = window_store.scored_with(
        scorer, data.windows, lambda: scorer.prescore_events(data.events, data.viewport, limit)
    )
    return int(rendered), int(left), time.thread_time() - t0, stored


@dataclass
class Prescorer:
    """The background pre-scorer of one server process (see the module docstring)."""

    ctx: DecisionContext
    windows_per_s: int
    window_events: int = WINDOW_EVENTS
    stats: PrescoreStats = field(default_factory=PrescoreStats)
    done: dict[str, int] = field(default_factory=dict)
    """sid → its sample count when its complete windows were last all scored."""
    checked: dict[str, float] = field(default_factory=dict)
    """sid → its last activity in the live directory when its count was last read and found
    with nothing to do: not read again until the collector touches the page again."""
    accounts: dict[tuple[str, str], tuple[float, int | None]] = field(default_factory=dict)
    scorers: dict[tuple[str, str], tuple[float, Any]] = field(default_factory=dict)
    """(site, account) → the scorer its pages get, or None: asked of the model chooser (in a
    thread) once per :data:`MODEL_RECHECK_S`, not once per page per tick — with thousands of
    live pages and no model to score them, the asking was the pre-scorer's whole cost."""

    async def run(self) -> None:
        """Tick every :data:`INTERVAL_S` until cancelled."""
        while True:
            started = time.monotonic()
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:  # the job boundary: log, keep running
                log.exception("pre-scoring tick failed")
            await asyncio.sleep(max(0.1, INTERVAL_S - (time.monotonic() - started)))

    def _busy(self) -> bool:
        return self.ctx.waiting > 0 or self.ctx.scoring_slots.locked()

    async def tick(self) -> int:
        """One round: pre-score the due pages within the budget; returns windows rendered."""
        if self.windows_per_s <= 0:
            return 0
        self.stats.ticks += 1
        if self.ctx.waiting > 0:
            self.stats.ticks_skipped += 1
            return 0
        due = await self.due_pages()
        budget, rendered = self.windows_per_s * INTERVAL_S, 0
        for i, (sid, count) in enumerate(due):
            if rendered >= budget or self._busy():
                if rendered < budget:
                    self.stats.ticks_skipped += 1
                self.stats.backlog = len(due) - i
                return rendered
            rendered += await self.page(sid, count, int(budget - rendered))
            await asyncio.sleep(0)  # let requests in between pages
        self.stats.backlog = 0
        return rendered

    async def due_pages(self) -> list[tuple[str, int]]:
        """(sid, sample count) of live pages grown by a window since last done, most first.

        Only pages active since their count was last read are asked about: the collector
        writes a page's samples before it touches the page's last activity (one connection,
        in order), so an unchanged activity means an unchanged count, and a page that sits
        still costs nothing here (one ``HGET`` per page per tick was ~0.3 ms of the loop each,
        a tenth of the server's CPU at 300 live pages)."""
        redis = self.ctx.redis
        await self.ctx.directory.fresh(redis)
        t0 = time.thread_time()
        seen = dict(self.ctx.directory.seen)
        for gone in set(self.done) - seen.keys():
            del self.done[gone]
        for gone in set(self.checked) - seen.keys():
            del self.checked[gone]
        now = time.monotonic()
        sids = [
            sid
            for sid, at in seen.items()
            if at > self.checked.get(sid, -math.inf) and not self._no_model(sid, now)
        ]
        t1 = time.thread_time()
        counts = [row[0] for row in await read_fields(redis, sids, ["n_samples"])]
        t0 += time.thread_time() - t1
        due, new = [], {}
        for sid, raw in zip(sids, counts, strict=True):
            n = int(_text(raw)) if raw is not None else 0
            window = self._window_events(sid)
            gained = complete_windows(n, window) - complete_windows(self.done.get(sid, 0), window)
            if gained > 0:
                due.append((sid, n))
                new[sid] = gained
            else:
                self.checked[sid] = seen[sid]
        due.sort(key=lambda d: new[d[0]], reverse=True)
        self.stats.count_reads += len(sids)
        self.stats.loop_s += time.thread_time() - t0
        return due

    def _no_model(self, sid: str, now: float) -> bool:
        """Whether the model chooser said, recently, that no model scores this page: then its
        count is not even read (thousands of streaming pages on a server with no model to
        score them made the count reads the pre-scorer's whole cost)."""
        key = self._page_key(sid)
        hit = self.scorers.get(key) if key is not None else None
        return hit is not None and hit[1] is None and now - hit[0] < MODEL_RECHECK_S

    def _window_events(self, sid: str) -> int:
        """The window length of the scorer this page last got (:meth:`_scorer_for`), or the
        default when it has none yet; read from the cache only: no model chooser on the loop."""
        key = self._page_key(sid)
        hit = self.scorers.get(key) if key is not None else None
        window = getattr(hit[1], "window_events", None) if hit is not None else None
        return int(window) if window else self.window_events

    async def page(self, sid: str, count: int, budget: int) -> int:
        """Pre-score one page; every failure stays inside this page."""
        try:
            return await self._page(sid, count, budget)
        except asyncio.CancelledError:
            raise
        except Exception:  # the job boundary: one page's trouble never reaches another's
            log.exception("pre-scoring page %s failed", sid)
            self.stats.errors += 1
            self.done[sid] = count  # not again until it grows by another window
            return 0

    async def _page(self, sid: str, count: int, budget: int) -> int:
        scorer = await self._scorer_for(sid)
        if scorer is None:  # no model would score it: nothing to prepare
            self.done[sid] = count
            return 0
        t0 = time.perf_counter()
        data = await snapshot(self.ctx.redis, sid)
        self.stats.snapshot_s += time.perf_counter() - t0
        if data is None:
            self.done.pop(sid, None)
            return 0
        rendered = 0
        while rendered < budget and not self._busy():  # a decision waiting goes first
            done, left = await self._job(sid, scorer, data, min(PER_JOB, budget - rendered))
            rendered += done
            if left == 0:
                self.done[sid] = count
                break
            await asyncio.sleep(0)  # between jobs too: a job holds a slot ~PER_JOB windows
        self.stats.pages += 1
        return rendered

    async def _job(self, sid: str, scorer: Any, data: Any, limit: int) -> tuple[int, int]:
        """Up to ``limit`` windows in a scoring thread, holding a scoring slot (free: the
        caller checked, and nothing awaits in between); their outputs are shared."""
        await self.ctx.scoring_slots.acquire()
        try:
            loop = asyncio.get_running_loop()
            rendered, left, cpu, stored = await loop.run_in_executor(
                self.ctx.scoring_pool, _job, scorer, data, limit
            )
        finally:
            self.ctx.scoring_slots.release()
        await window_store.save(self.ctx.redis, {sid: stored}, self.ctx.windows_ttl_s)
        self.stats.job_cpu_s += cpu
        self.stats.windows += rendered
        return rendered, left

    def _page_key(self, sid: str) -> tuple[str, str] | None:
        """(site, account or "") of a live page: what :attr:`scorers` is keyed by."""
        site_id, external, _ua, _ip = self.ctx.directory.fields.get(sid) or [None] * 4
        return (site_id, external or "") if site_id is not None else None

    async def _scorer_for(self, sid: str) -> Any:
        """The scorer a decision on this page would use, or None: the same model chooser."""
        key, now = self._page_key(sid), time.monotonic()
        if key is None:
            return None
        hit = self.scorers.get(key)
        if hit is not None and now - hit[0] < MODEL_RECHECK_S:
            return hit[1]
        site_id, external = key
        account_id = await self._account(site_id, external) if external else None
        choice = await asyncio.to_thread(self.ctx.choose_model, account_id)
        scorer = None
        if choice.kind in ("account", "group") and hasattr(choice.scorer, "prescore_events"):
            scorer = choice.scorer
        if len(self.scorers) > 100_000:
            self.scorers.clear()
        self.scorers[key] = (now, scorer)
        return scorer

    async def _account(self, site_id: str, external: str) -> int | None:
        now = time.monotonic()
        hit = self.accounts.get((site_id, external))
        if hit is not None and now - hit[0] < MODEL_RECHECK_S:
            return hit[1]
        if len(self.accounts) > 100_000:
            self.accounts.clear()
        found = await asyncio.to_thread(_account_id, self.ctx.sessions, site_id, external)
        self.accounts[(site_id, external)] = (now, found)
        return found
