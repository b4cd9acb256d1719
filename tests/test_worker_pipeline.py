"""A dedicated test pipeline (``probe``) for the worker tests, and what they share.

It is a real pipeline, independent of the mouse, pump and whale models: it rasterises a point
trail from the job into a 1×32×32 image (two windows when the trail is long), scores it with a
small fixed-seed CNN and stores a ``Score`` row for a page session, opening a review case when
flagged. Job fields steer it: ``points`` (JSON list of [x, y] in 0..1), ``work_ms`` (sleep in
render, to make batches slow), ``mode`` = ``poison`` (render always raises) or ``invalid``
(decode raises InvalidSession). Fault tests start workers with ``--pipelines
tests.test_worker_pipeline:ProbePipeline``.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from typing import Any, ClassVar

import numpy as np
import redis
import torch
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from renderer.errors import InvalidSession
from scoring import keys
from scoring.cases import open_case
from scoring.pipelines.base import Context, Job, Pipeline
from scoring.schema import JobFailure, PageSession, Score, Site

NAME = "probe"
SPEC = "tests.test_worker_pipeline:ProbePipeline"
SIDE = 32


class ProbePipeline(Pipeline):
    name: ClassVar[str] = NAME
    forward_sizes: ClassVar[list[int]] = []
    """Images per forward pass, for the batching tests (in-process workers only)."""

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        torch.manual_seed(0)
        self.model = torch.nn.Sequential(
            torch.nn.Conv2d(1, 4, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(),
            torch.nn.Linear(4, 1),
        ).eval()

    async def decode(self, job: Job) -> dict[str, Any]:
        if job.fields.get("mode") == "invalid":
            raise InvalidSession("probe job marked invalid", "probe_invalid")
        try:
            points = np.asarray(json.loads(job.fields.get("points", "[]")), dtype=np.float64)
        except (ValueError, TypeError) as e:
            raise InvalidSession(f"points are not a JSON list of pairs: {e}", "bad_points") from e
        if points.ndim != 2 or points.shape[1] != 2 or len(points) < 2:
            raise InvalidSession("need at least two [x, y] points", "too_few_points")
        if not np.isfinite(points).all():
            raise InvalidSession("points must be finite", "nonfinite_points")
        return {
            "session_id": job.fields["session_id"],
            "points": np.clip(points, 0.0, 1.0),
            "work_ms": float(job.fields.get("work_ms", 0)),
            "poison": job.fields.get("mode") == "poison",
        }

    def render(self, item: dict[str, Any]) -> torch.Tensor:
        if item["poison"]:
            raise RuntimeError("probe poison job: render always fails")
        time.sleep(item["work_ms"] / 1000)
        pts = item["points"]
        windows = [pts] if len(pts) <= 64 else [pts[: len(pts) // 2], pts[len(pts) // 2 :]]
        images = np.zeros((len(windows), 1, SIDE, SIDE), dtype=np.float32)
        for k, window in enumerate(windows):
            cells = np.minimum((window * SIDE).astype(int), SIDE - 1)
            images[k, 0, cells[:, 1], cells[:, 0]] = 1.0
        return torch.from_numpy(images)

    def score(self, batch: torch.Tensor) -> torch.Tensor:
        type(self).forward_sizes.append(int(batch.shape[0]))
        with torch.no_grad():
            return torch.sigmoid(self.model(batch))

    def summarise(self, item: dict[str, Any], outputs: torch.Tensor) -> dict[str, Any]:
        score = float(outputs.max())
        return {"score": score, "windows": int(outputs.shape[0]), "flagged": score > 0.5}

    def persist(self, session: Session, job: Job, item: Any, result: dict[str, Any]) -> Score:
        row = Score(
            job_id=job.id,
            session_id=item["session_id"],
            score=result["score"],
            threshold=0.5,
            flagged=result["flagged"],
            untrained=True,
            details={"pipeline": NAME, "windows": result["windows"]},
        )
        session.add(row)
        session.flush()
        return row

    def act(self, session: Session, job: Job, item: Any, result: dict[str, Any], row: Any) -> None:
        if result["flagged"]:
            open_case(
                session,
                pipeline="mouse",
                subject_id=item["session_id"],
                risk=result["score"],
                score_id=row.id,
                threshold=0.5,
            )


def trail(rng: np.random.Generator, n: int = 40) -> str:
    """A smooth random pointer trail in the unit square, as the job's ``points`` field."""
    t = np.linspace(0, 1, n)
    a, b = rng.uniform(0.1, 0.9, 2), rng.uniform(0.1, 0.9, 2)
    bend = rng.normal(0, 0.1, 2)
    xy = a + np.outer(t, b - a) + np.outer(np.sin(math.pi * t), bend)
    return json.dumps(np.clip(xy, 0, 1).round(4).tolist())


def seed_sessions(sessions: sessionmaker[Session], n: int) -> list[str]:
    """A site and ``n`` ended page sessions to attach scores to."""
    with sessions() as s, s.begin():
        site = Site(key=f"tgk_{uuid.uuid4().hex[:12]}", name="probe", secret_hash="x")
        s.add(site)
        s.flush()
        sids = [uuid.uuid4().hex for _ in range(n)]
        s.add_all(PageSession(id=sid, site_id=site.id, status="ended") for sid in sids)
    return sids


def enqueue(client: redis.Redis, sid: str, rng: np.random.Generator, **fields: Any) -> str:
    job_id = f"{NAME}:{uuid.uuid4().hex}"
    entry = {"job_id": job_id, "session_id": sid, "points": trail(rng), **fields}
    client.xadd(keys.jobs_stream(NAME), {k: str(v) for k, v in entry.items()})
    return job_id


def result_counts(sessions: sessionmaker[Session]) -> dict[str, int]:
    """job_id → number of Score rows (the unique key makes anything above 1 impossible)."""
    with sessions() as s:
        rows = s.execute(select(Score.job_id, func.count()).group_by(Score.job_id)).all()
    return {job_id: n for job_id, n in rows}


def failures(sessions: sessionmaker[Session]) -> dict[str, JobFailure]:
    with sessions() as s:
        return {f.job_id: f for f in s.scalars(select(JobFailure))}
