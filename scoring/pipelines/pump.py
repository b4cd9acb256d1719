"""The ``pump`` pipeline: a stored dynamometer card → its failure-mode diagnosis."""

from __future__ import annotations

import asyncio
from typing import Any

import torch
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from renderer.errors import InvalidCard, ModelNotFound
from scoring.pipelines.base import Job, Pipeline
from scoring.pump import classifier
from scoring.pump.cards import Card, validate
from scoring.schema import PumpCard, PumpDiagnosis


class PumpPipeline(Pipeline):
    """Job fields: ``card_pk``, the id of a :class:`PumpCard` row."""

    name = "pump"

    def load(self) -> None:
        with self.ctx.sessions() as session:
            try:
                self.clf = classifier.load_active(session, self.ctx.device)
            except ModelNotFound:
                self.clf = classifier.untrained()

    def _classifier(self) -> classifier.Classifier:
        if not hasattr(self, "clf"):
            self.load()
        return self.clf

    async def decode(self, job: Job) -> tuple[int, Card]:
        raw = job.fields.get("card_pk", "")
        try:
            pk = int(raw)
        except ValueError as e:
            raise InvalidCard(f"job {job.id}: card_pk {raw!r} is not an id", "bad_job") from e
        return await asyncio.to_thread(self._fetch, pk)

    def _fetch(self, pk: int) -> tuple[int, Card]:
        with self.ctx.sessions() as session:
            row = session.get(PumpCard, pk)
            if row is None:
                raise InvalidCard(f"pump card {pk} does not exist", "card_not_found")
            points = row.points or []
            return pk, validate(
                row.card_id,
                [p[0] for p in points],
                [p[1] for p in points],
                well_id=row.well_id,
                kind=row.kind,
            )

    def render(self, item: tuple[int, Card]) -> torch.Tensor:
        return self._classifier().images([item[1]])

    def score(self, batch: torch.Tensor) -> torch.Tensor:
        return self._classifier().probabilities(batch.to(self.ctx.device)).cpu()

    def summarise(self, item: tuple[int, Card], outputs: torch.Tensor) -> dict[str, Any]:
        clf = self._classifier()
        result = clf.describe(item[1].card_id, outputs.mean(dim=0).numpy())
        return {
            **result,
            "card_pk": item[0],
            "well_id": item[1].well_id,
            "model_version_id": clf.version_id,
            "untrained": clf.untrained,
        }

    def persist(
        self, session: Session, job: Job, item: tuple[int, Card], result: dict[str, Any]
    ) -> PumpDiagnosis:
        existing = session.scalars(
            select(PumpDiagnosis).where(PumpDiagnosis.job_id == job.id)
        ).first()
        if existing is not None:
            return existing
        row = PumpDiagnosis(
            job_id=job.id,
            card_pk=item[0],
            model_version_id=result["model_version_id"],
            mode=result["mode"],
            confidence=result["confidence"],
            probabilities=result["probabilities"],
            untrained=result["untrained"],
        )
        try:
            with session.begin_nested():
                session.add(row)
        except IntegrityError:
            # another worker wrote this job's row between our read and our insert
            return session.scalars(
                select(PumpDiagnosis).where(PumpDiagnosis.job_id == job.id)
            ).one()
        return row
