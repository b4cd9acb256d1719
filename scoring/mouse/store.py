"""Saving, loading and registering mouse models through :mod:`scoring.model_store`.

An owner model is two files: the backbone checkpoint (config, preprocessing, weights,
metrics) and a heads file mapping each enrolled account's external id to its head and
calibrated threshold (``embed_dim + 2`` floats). A group model is one checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from sqlalchemy import select
from sqlalchemy.orm import Session

from renderer.errors import InvalidInput
from scoring import model_store
from scoring.mouse.data import Preprocessing
from scoring.mouse.model import ModelConfig, MouseNet
from scoring.mouse.train import GroupModel, Head, OwnerModel
from scoring.schema import Account, ModelVersion

PIPELINE = "mouse"
MouseModel = OwnerModel | GroupModel


def _checkpoint(model: MouseModel, heads_file: str | None) -> model_store.Checkpoint:
    config = {
        "task": "owner" if isinstance(model, OwnerModel) else "group",
        "model": model.model.cfg.to_dict(),
        "heads": heads_file,
        "threshold": model.threshold if isinstance(model, GroupModel) else None,
    }
    state = {k: v.detach().clone() for k, v in model.model.state_dict().items()}
    return model_store.Checkpoint(config, model.prep.to_dict(), state, model.metrics)


def save_heads(path: Path, heads: dict[str, Head]) -> Path:
    packed = {
        user: torch.from_numpy(np.r_[h.weight, h.bias, h.threshold].astype(np.float32))
        for user, h in heads.items()
    }
    tmp = path.with_suffix(".tmp")
    torch.save(packed, tmp)
    tmp.replace(path)
    return path


def load_heads(path: Path) -> dict[str, Head]:
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as e:
        raise InvalidInput(f"cannot read heads file {path}: {e}", "bad_checkpoint") from e
    heads = {}
    for user, vec in raw.items():
        v = vec.numpy()
        heads[user] = Head(v[:-2].copy(), float(v[-2]), float(v[-1]))
    return heads


def save(out_dir: Path, model: MouseModel, version: str) -> Path:
    """Write the model under ``out_dir``; returns the checkpoint path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    task = "owner" if isinstance(model, OwnerModel) else "group"
    heads_file = None
    if isinstance(model, OwnerModel):
        heads_file = f"mouse-owner-{version}-heads.pt"
        save_heads(out_dir / heads_file, model.heads)
    path = out_dir / f"mouse-{task}-{version}.pt"
    return model_store.save_checkpoint(path, _checkpoint(model, heads_file))


def load(path: Path) -> MouseModel:
    ckpt = model_store.load_checkpoint(path)
    cfg = ModelConfig.from_dict(ckpt.config["model"])
    net = MouseNet(cfg)
    net.load_state_dict(ckpt.state_dict)
    net.eval()
    prep = Preprocessing.from_dict(ckpt.preprocessing)
    if ckpt.config.get("task") == "owner":
        heads = load_heads(path.parent / ckpt.config["heads"])
        return OwnerModel(net, prep, heads, ckpt.metrics)
    return GroupModel(net, prep, float(ckpt.config.get("threshold") or 0.0), ckpt.metrics)


def register(session: Session, path: Path, model: MouseModel, version: str) -> ModelVersion:
    """A ``model_versions`` row for the model (active), plus one per enrolled account that
    exists in the database (matched by external id), carrying its calibrated threshold."""
    task = "owner" if isinstance(model, OwnerModel) else "group"
    threshold = model.threshold if isinstance(model, GroupModel) else None
    row = model_store.register(
        session,
        pipeline=PIPELINE,
        path=path,
        version=version,
        task=task,
        threshold=threshold,
        metrics=model.metrics,
        config={"model": model.model.cfg.to_dict(), "preprocessing": model.prep.to_dict()},
    )
    if isinstance(model, OwnerModel) and model.heads:
        accounts = session.scalars(
            select(Account).where(Account.external_id.in_(list(model.heads)))
        ).all()
        for acct in accounts:
            model_store.register(
                session,
                pipeline=PIPELINE,
                path=path,
                version=version,
                task="owner",
                account_id=acct.id,
                threshold=model.heads[acct.external_id].threshold,
                config={"external_id": acct.external_id, "backbone_version_id": row.id},
            )
    return row
