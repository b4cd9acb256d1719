"""The ``mouse`` pipeline: an ended page session → a Score row, and a review case if flagged.

Job fields: ``session_id``. Steps: read the session from Redis
(:func:`scoring.session_store.read_session`), sanitise it, find which network judges it (its
account's head or the group model: :meth:`MouseScorer.mode_for`) and render that network's
windows, score them in one forward pass with the other jobs of the batch (a batch may mix
modes: every item's summary reads only its own network's column), aggregate the windows to a
session score,
store a :class:`~scoring.schema.Score` keyed by the job id (a replay is a no-op), archive the
samples into ``PageSession.samples``, and when flagged open a review case and queue alerts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from renderer.errors import InvalidSession
from renderer.mouse import Cleaned, sanitize
from scoring import alerting, session_store
from scoring.cases import open_case
from scoring.mouse.inference import MouseScorer
from scoring.pipelines.base import Job, Pipeline
from scoring.schema import PageSession, ReviewCase, Score

UNTRAINED_THRESHOLD = 1e9
"""Stored as the threshold of an untrained score (never flagged); finite for every database."""


@dataclass
class MouseItem:
    session_id: str
    meta: dict[str, str]
    raw_events: np.ndarray
    clean: Cleaned
    head_key: str | None = None
    """The account's site-qualified head key, set by render."""


class MousePipeline(Pipeline):
    name = "mouse"

    def load(self) -> None:
        self.scorer = MouseScorer(self.ctx.sessions, self.ctx.model_dir, self.ctx.device)

    def _scorer(self) -> MouseScorer:
        if not hasattr(self, "scorer"):
            self.load()
        return self.scorer

    async def decode(self, job: Job) -> MouseItem:
        sid = job.fields.get("session_id", "")
        if not sid:
            raise InvalidSession(f"job {job.id} has no session_id", "bad_job")
        data = await session_store.read_session(self.ctx.redis, sid)
        clean = sanitize(data.events, data.viewport)
        return MouseItem(sid, dict(data.meta), data.events, clean)

    def render(self, item: MouseItem) -> torch.Tensor:
        scorer = self._scorer()
        # heads are site-qualified: the same external id on two sites is two accounts. Looked
        # up here, in the worker thread, because the mode sets which windows to render
        account = item.meta.get("account") or None
        item.head_key = scorer.site_head_key(int(item.meta.get("site_id") or 0), account)
        return scorer.images(item.clean, scorer.mode_for(item.head_key))

    def score(self, batch: torch.Tensor) -> torch.Tensor:
        return self._scorer().forward(batch)

    def summarise(self, item: MouseItem, outputs: torch.Tensor) -> dict[str, Any]:
        account = item.meta.get("account") or None
        a = self._scorer().summarise(item.head_key, outputs)
        result = asdict(a)
        result["threshold"] = a.threshold if np.isfinite(a.threshold) else None
        result["untrained"] = a.mode == "untrained"
        result["session_id"] = item.session_id
        result["account"] = account
        result["dropped_rows"] = item.clean.dropped
        return result

    def persist(self, session: Session, job: Job, item: MouseItem, result: dict[str, Any]) -> Score:
        existing = session.scalars(select(Score).where(Score.job_id == job.id)).first()
        if existing is not None:
            return existing
        threshold = result["threshold"]
        row = Score(
            job_id=job.id,
            session_id=item.session_id,
            model_version_id=result["model_version_id"],
            score=result["score"],
            threshold=threshold if threshold is not None else UNTRAINED_THRESHOLD,
            flagged=result["flagged"],
            untrained=result["untrained"],
            details={
                k: result[k] for k in ("mode", "risk", "n_windows", "version", "dropped_rows")
            },
        )
        try:
            with session.begin_nested():
                session.add(row)
        except IntegrityError:
            # another worker stored this job between our read and our insert
            return session.scalars(select(Score).where(Score.job_id == job.id)).one()
        page = session.get(PageSession, item.session_id)
        if page is not None and page.samples is None:
            page.samples = session_store.archive(item.raw_events)
            page.n_samples = len(item.raw_events)
        return row

    def act(
        self, session: Session, job: Job, item: MouseItem, result: dict[str, Any], row: Any
    ) -> None:
        if not result["flagged"]:
            return
        acted = session.scalars(select(ReviewCase.id).where(ReviewCase.score_id == row.id)).first()
        if acted is not None:  # a replayed job: its case and alerts already exist
            return
        page = session.get(PageSession, item.session_id)
        site_id = page.site_id if page is not None else _int(item.meta.get("site_id"))
        case = open_case(
            session,
            pipeline="mouse",
            subject_id=item.session_id,
            risk=float(result["risk"]),
            site_id=site_id,
            score_id=row.id,
            threshold=result["threshold"],
            reason=f"mouse {result['mode']} score {result['score']:.3f} above threshold",
        )
        alerting.on_flag(
            session,
            case,
            score=float(result["risk"]),
            account_id=page.account_id if page is not None else None,
            device=alerting.device_label(
                item.meta.get("user_agent", ""), item.meta.get("pointer_type", "mouse")
            ),
            page=item.meta.get("page_path", ""),
        )


def _int(raw: str | None) -> int | None:
    try:
        return int(raw) if raw else None
    except ValueError:
        return None
