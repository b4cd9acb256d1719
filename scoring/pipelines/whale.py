"""The ``whale`` pipeline: an uploaded recording → per-window scores and merged detections.

Recordings can be hours long, so :meth:`WhalePipeline.process` streams them chunk by chunk
instead of rendering every window at once; ``render``/``score`` serve short items and tests.
The result is a :class:`ClipAnalysis` row (keyed by the job id, so a retried job writes
nothing twice) with one :class:`Detection` row per merged span, plus an overview spectrogram
saved as ``data_dir/whale/overview/<clip id>.npy`` for the review pages. The item and the
result carry the clip's owning site (``site_id``), read from the clip row rather than trusted
from the job's fields, so whatever acts on a result knows whose recording it was.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from renderer.audio import StreamingFrontEnd
from renderer.errors import InvalidAudio, ModelNotFound
from scoring.pipelines.base import Job, Pipeline
from scoring.schema import AudioClip, ClipAnalysis, Detection
from scoring.whale import audio_io, detector


@dataclass(frozen=True)
class ClipItem:
    clip_id: int
    site_id: int
    path: Path


def overview_path(data_dir: Path, clip_id: int) -> Path:
    return data_dir / "whale" / "overview" / f"{clip_id}.npy"


class WhalePipeline(Pipeline):
    """Job fields: ``clip_id``, the id of an :class:`AudioClip` row."""

    name = "whale"

    def load(self) -> None:
        with self.ctx.sessions() as session:
            try:
                self.detector = detector.load_active(session, self.ctx.device)
            except ModelNotFound:
                self.detector = detector.untrained(device=self.ctx.device)

    def _detector(self) -> detector.Detector:
        if not hasattr(self, "detector"):
            self.load()
        return self.detector

    async def decode(self, job: Job) -> ClipItem:
        raw = job.fields.get("clip_id", "")
        try:
            clip_id = int(raw)
        except ValueError as e:
            raise InvalidAudio(f"job {job.id}: clip_id {raw!r} is not an id", "bad_job") from e
        return await asyncio.to_thread(self._fetch, clip_id)

    def _fetch(self, clip_id: int) -> ClipItem:
        with self.ctx.sessions() as session:
            row = session.get(AudioClip, clip_id)
            if row is None:
                raise InvalidAudio(f"audio clip {clip_id} does not exist", "clip_not_found")
            path, site_id = Path(row.path), row.site_id
        audio_io.probe(path)  # a corrupt or vanished file is a permanent failure, found early
        return ClipItem(clip_id, site_id, path)

    def render(self, item: ClipItem) -> torch.Tensor:
        """Every window of a (short) clip at once; long clips go through :meth:`process`."""
        det = self._detector()
        front = StreamingFrontEnd(det.spec, det.device)
        parts = [front.push(chunk)[0] for chunk in audio_io.stream(item.path, det.spec.sample_rate)]
        parts.append(front.finish()[0])
        return torch.cat(parts)

    def score(self, batch: torch.Tensor) -> torch.Tensor:
        return detector.score_images(self._detector(), batch).unsqueeze(1)

    def summarise(self, item: ClipItem, outputs: torch.Tensor) -> dict[str, Any]:
        """Result of all-at-once scoring; windows are numbered as :meth:`process` numbers them."""
        det = self._detector()
        spec = det.spec
        starts = [i * spec.hop_frames for i in range(outputs.shape[0])]
        windows = [
            {
                "start_s": round(spec.frame_start_s(s), 3),
                "end_s": round(spec.frame_start_s(s) + spec.window_samples / spec.sample_rate, 3),
                "score": round(float(p), 5),
                "detected": bool(p >= det.threshold),
            }
            for s, p in zip(starts, outputs[:, 0].tolist(), strict=True)
        ]
        duration = windows[-1]["end_s"] if windows else 0.0
        return self._result(item, windows, detector.merge(windows, duration))

    def process(self, item: ClipItem) -> dict[str, Any]:
        det = self._detector()
        analysis = detector.analyse_file(det, item.path, keep_overview=True)
        self._save_overview(item.clip_id, analysis.overview)
        return self._result(item, analysis.windows, analysis.detections)

    def _save_overview(self, clip_id: int, columns: list[np.ndarray]) -> None:
        if not columns:
            return
        path = overview_path(self.ctx.data_dir, clip_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, np.concatenate(columns, axis=1).astype(np.float16))
        tmp.replace(path)

    def _result(
        self, item: ClipItem, windows: list[dict[str, Any]], detections: list[dict[str, float]]
    ) -> dict[str, Any]:
        det = self._detector()
        return {
            "clip_id": item.clip_id,
            "site_id": item.site_id,
            "threshold": det.threshold,
            "windows": windows,
            "detections": detections,
            "model_version_id": det.version_id,
            "untrained": det.untrained,
        }

    def persist(
        self, session: Session, job: Job, item: ClipItem, result: dict[str, Any]
    ) -> ClipAnalysis:
        existing = self._existing(session, job.id)
        if existing is not None:
            return existing
        row = ClipAnalysis(
            job_id=job.id,
            clip_id=item.clip_id,
            model_version_id=result["model_version_id"],
            threshold=result["threshold"],
            windows=result["windows"],
            untrained=result["untrained"],
        )
        try:
            with session.begin_nested():
                session.add(row)
                session.flush()
                session.add_all(
                    Detection(
                        analysis_id=row.id,
                        start_s=d["start_s"],
                        end_s=d["end_s"],
                        confidence=d["confidence"],
                    )
                    for d in result["detections"]
                )
                session.flush()
        except IntegrityError:
            # another worker wrote this job's row between our read and our insert
            found = self._existing(session, job.id)
            if found is None:
                raise
            return found
        return row

    @staticmethod
    def _existing(session: Session, job_id: str) -> ClipAnalysis | None:
        stmt = select(ClipAnalysis).where(ClipAnalysis.job_id == job_id)
        return session.scalars(stmt).first()
