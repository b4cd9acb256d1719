"""The model store: checkpoint files under ``model_dir`` plus a ``model_versions`` row each.

A checkpoint is one ``torch.save`` file holding the weights *and* what is needed to use them
again: the architecture config and the preprocessing (image size, channels, normalisation,
spectrogram parameters …). Loading never needs the code that trained it to pass extra values.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from renderer.errors import InvalidInput
from scoring.schema import ModelVersion

FORMAT = "trailguard-checkpoint/1"


@dataclass(frozen=True)
class Checkpoint:
    config: dict[str, Any]
    preprocessing: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    metrics: dict[str, Any]


def save_checkpoint(path: Path, checkpoint: Checkpoint) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(
        {
            "format": FORMAT,
            "config": checkpoint.config,
            "preprocessing": checkpoint.preprocessing,
            "state_dict": checkpoint.state_dict,
            "metrics": checkpoint.metrics,
        },
        tmp,
    )
    tmp.replace(path)  # atomic: a reader never sees half a file
    return path


def load_checkpoint(path: Path, map_location: str = "cpu") -> Checkpoint:
    try:
        raw = torch.load(path, map_location=map_location, weights_only=True)
    except (OSError, RuntimeError, EOFError) as e:
        raise InvalidInput(f"cannot read checkpoint {path}: {e}", "bad_checkpoint") from e
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise InvalidInput(f"{path} is not a TrailGuard checkpoint", "bad_checkpoint")
    return Checkpoint(raw["config"], raw["preprocessing"], raw["state_dict"], raw["metrics"])


def new_version() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%f")


def register(
    session: Session,
    *,
    pipeline: str,
    path: Path,
    version: str,
    task: str = "default",
    account_id: int | None = None,
    threshold: float | None = None,
    metrics: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
    activate: bool = True,
) -> ModelVersion:
    """Record a model file; with ``activate`` it becomes the one in use for its slot."""
    if activate:
        session.execute(
            update(ModelVersion)
            .where(
                ModelVersion.pipeline == pipeline,
                ModelVersion.task == task,
                ModelVersion.account_id.is_(None)
                if account_id is None
                else ModelVersion.account_id == account_id,
            )
            .values(active=False)
        )
    row = ModelVersion(
        pipeline=pipeline,
        task=task,
        account_id=account_id,
        version=version,
        path=str(path),
        threshold=threshold,
        metrics=metrics or {},
        config=config or {},
        active=activate,
    )
    session.add(row)
    session.flush()
    return row


def active(
    session: Session, pipeline: str, task: str = "default", account_id: int | None = None
) -> ModelVersion | None:
    """The active model of a slot, or None when none was trained."""
    owner = (
        ModelVersion.account_id.is_(None)
        if account_id is None
        else ModelVersion.account_id == account_id
    )
    stmt = (
        select(ModelVersion)
        .where(ModelVersion.pipeline == pipeline, ModelVersion.task == task, owner)
        .where(ModelVersion.active.is_(True))
        .order_by(ModelVersion.id.desc())
        .limit(1)
    )
    return session.scalars(stmt).first()
