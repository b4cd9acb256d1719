"""Train on one session file, score another: the ``trailguard mouse evaluate`` protocol."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
from tqdm import tqdm

from renderer.errors import InvalidInput, InvalidSession
from renderer.mouse import sanitize
from scoring.mouse.data import Preprocessing, scoring_images
from scoring.mouse.metrics import session_metrics, trivial_cue_auc
from scoring.mouse.model import ModelConfig
from scoring.mouse.train import GroupModel, OwnerModel, TrainConfig, train_group, train_owner
from scoring.sessionfile import POSITIVE, SessionRecord


@dataclass
class Evaluation:
    model: OwnerModel | GroupModel
    rows: list[tuple[str, str, float]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    labels: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)


def train_task(
    task: str,
    records: Sequence[SessionRecord],
    model_cfg: ModelConfig,
    prep: Preprocessing,
    cfg: TrainConfig,
) -> OwnerModel | GroupModel:
    if task == "owner":
        return train_owner(records, model_cfg, prep, cfg)
    if task == "group":
        return train_group(records, model_cfg, prep, cfg)
    raise InvalidInput(f"unknown task {task!r}: owner or group", "bad_task")


class Scored(NamedTuple):
    score: float
    threshold: float
    events: int  # after cleaning
    windows: int  # scored


def score_record(model: OwnerModel | GroupModel, record: SessionRecord) -> Scored:
    """One session's score and threshold; InvalidSession if unusable."""
    clean = sanitize(record.events, record.viewport)
    if len(clean.events) < 2:
        raise InvalidSession("too few events", "too_few_events")
    images = scoring_images(clean, model.prep)
    if isinstance(model, OwnerModel):
        if record.user_id not in model.heads:
            raise InvalidSession(f"account {record.user_id!r} is not enrolled", "not_enrolled")
        return Scored(
            model.session_score(record.user_id, images),
            model.heads[record.user_id].threshold,
            len(clean.events),
            len(images),
        )
    return Scored(model.session_score(images), model.threshold, len(clean.events), len(images))


def evaluate(
    task: str,
    train: Sequence[SessionRecord],
    test: Iterable[SessionRecord],
    model_cfg: ModelConfig,
    prep: Preprocessing,
    cfg: TrainConfig,
) -> Evaluation:
    """Train on ``train``; score every test session; literature-style metrics."""
    started = time.perf_counter()
    model = train_task(task, train, model_cfg, prep, cfg)
    trained = time.perf_counter()
    out = Evaluation(model)
    users, thresholds, rates, lengths, windows = [], [], [], [], []
    skipped: dict[str, int] = {}
    for record in tqdm(test, desc="score", disable=not cfg.progress):
        try:
            score, threshold, n, n_windows = score_record(model, record)
        except InvalidSession as e:
            skipped[e.code] = skipped.get(e.code, 0) + 1
            continue
        out.rows.append((record.session_id, record.user_id, score))
        if record.label in POSITIVE:
            ev = record.events
            span = float(np.nanmax(ev[:, 0]) - np.nanmin(ev[:, 0])) / 1000 + 1e-3
            out.labels.append(POSITIVE[record.label])
            out.scores.append(score)
            users.append(record.user_id)
            thresholds.append(threshold)
            rates.append(n / span)
            lengths.append(n)
            windows.append(n_windows)
    scored = time.perf_counter()
    metrics = (
        session_metrics(out.labels, out.scores, users, thresholds, windows) if out.labels else {}
    )
    y = np.asarray(out.labels)
    metrics["trivial_cues_auc"] = {
        "events_per_second": trivial_cue_auc(y, np.asarray(rates)) if len(y) else None,
        "session_length": trivial_cue_auc(y, np.asarray(lengths)) if len(y) else None,
    }
    metrics["task"] = task
    metrics["skipped"] = skipped
    metrics["train_seconds"] = trained - started
    metrics["score_seconds"] = scored - trained
    metrics["model"] = model_cfg.to_dict()
    metrics["preprocessing"] = prep.to_dict()
    metrics["training"] = model.metrics
    out.metrics = metrics
    return out
