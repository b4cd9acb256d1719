"""Saving, loading and registering mouse models through :mod:`scoring.model_store`.

An owner model is two files: the backbone checkpoint (config, preprocessing, weights,
metrics) and a heads file mapping each enrolled account's *head key* to its head and
calibrated threshold (``embed_dim + 2`` floats). A group model is one checkpoint.

Head keys are the ``user_id`` of the training session file. A site's external account ids
are only unique within the site, so a head is served to an account in one of two ways:

- the key is site-qualified, ``"<site_key>:<external_id>"`` (:func:`account_key`), and names
  exactly one account, whether or not its row exists yet;
- the key is bare (an external id, as ``trailguard sessions export`` writes it) and
  :func:`register` bound it to one account row: the one on ``site_key`` when given
  (``trailguard mouse train --site KEY``), else the only account with that external id; an
  id that several sites have is ambiguous and bound to none (logged).
"""

from __future__ import annotations

import logging
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
from scoring.schema import Account, ModelVersion, Site

PIPELINE = "mouse"
MouseModel = OwnerModel | GroupModel
log = logging.getLogger(__name__)


def account_key(site_key: str, external_id: str) -> str:
    """The site-qualified head key of an account."""
    return f"{site_key}:{external_id}"


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


def register(
    session: Session, path: Path, model: MouseModel, version: str, site_key: str | None = None
) -> ModelVersion:
    """A ``model_versions`` row for the model (active), plus one per enrolled account that
    exists in the database (see the module doc for which account a head key names), carrying
    its calibrated threshold and the head key it is judged by."""
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
        for acct, key in enrolled_accounts(session, list(model.heads), site_key):
            model_store.register(
                session,
                pipeline=PIPELINE,
                path=path,
                version=version,
                task="owner",
                account_id=acct.id,
                threshold=model.heads[key].threshold,
                config={
                    "head": key,
                    "external_id": acct.external_id,
                    "backbone_version_id": row.id,
                },
            )
    return row


def enrolled_accounts(
    session: Session, keys: list[str], site_key: str | None = None
) -> list[tuple[Account, str]]:
    """The existing account each head key names, as (account row, key)."""
    sites = {key: site_id for key, site_id in session.execute(select(Site.key, Site.id))}
    wanted: dict[tuple[int, str], str] = {}
    bare = []
    for key in keys:
        prefix, sep, external = key.partition(":")
        if sep and prefix in sites:
            wanted[(sites[prefix], external)] = key
        else:
            bare.append(key)
    accounts = session.scalars(
        select(Account).where(Account.external_id.in_([e for _, e in wanted] + bare))
    ).all()
    by_external: dict[str, list[Account]] = {}
    for acct in accounts:
        by_external.setdefault(acct.external_id, []).append(acct)
    for key in bare:
        if site_key is not None:
            candidates = [a for a in by_external.get(key, []) if a.site_id == sites.get(site_key)]
        else:
            candidates = by_external.get(key, [])
        if len(candidates) > 1:
            log.warning(
                "head %r: %d sites have this account id; pass the site", key, len(candidates)
            )
        elif candidates:
            wanted.setdefault((candidates[0].site_id, key), key)
    return [
        (a, wanted[(a.site_id, a.external_id)])
        for a in accounts
        if (a.site_id, a.external_id) in wanted
    ]


def head_key(
    session: Session, account: Account, heads: dict[str, Head], backbone_version_id: int | None
) -> str:
    """The key of the head that judges ``account`` under the active owner model: its
    site-qualified key when the heads file has it, else the bare key its registration bound
    to it; a key that is not in ``heads`` means the account is not enrolled."""
    key = account_key(account.site.key, account.external_id)
    if key in heads or backbone_version_id is None:
        return key
    row = model_store.active(session, PIPELINE, "owner", account.id)
    if row is not None and row.config.get("backbone_version_id") == backbone_version_id:
        bound = row.config.get("head", row.config.get("external_id"))
        if isinstance(bound, str) and bound in heads:
            return bound
    return key
