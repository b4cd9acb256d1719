"""Builders shared by the decision tests and bench/decision.py (no tests in here).

:func:`train_tiny_models` trains real (tiny) mouse models with the mouse area's own training
code on synthetic people and activates them in the model store, so decisions are scored by
the production scorer exactly as in production, only with a smaller network.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from sqlalchemy.orm import Session, sessionmaker

from scoring.mouse import store
from scoring.mouse.data import Preprocessing
from scoring.mouse.model import ModelConfig
from scoring.mouse.synth import SynthConfig, draw_habits, generate_events, group_sets, owner_sets
from scoring.mouse.train import TrainConfig, train_group, train_owner
from server import wire

TINY = ModelConfig(width=0.0625, embed_dim=16)


def train_tiny_models(
    sessions: sessionmaker[Session],
    model_dir: Path,
    accounts: list[str],
    seed: int = 0,
    group_prep: Preprocessing | None = None,
) -> None:
    """An owner model with a head per name in ``accounts`` and a group model (preprocessing
    ``group_prep``, default the owner model's), both active.

    Account rows that exist when this runs get their per-account model_versions rows."""
    torch.set_num_threads(1)
    cfg = SynthConfig(
        accounts=len(accounts),
        enrol_sessions=2,
        enrol_events=1500,
        group_train_people=6,
        group_test_people=0,
        group_sessions=2,
        group_min_events=300,
        group_max_events=800,
        seed=seed,
    )
    enrol, _tests = owner_sets(cfg)
    names = {f"acct{i:03d}": name for i, name in enumerate(accounts)}
    for record in enrol:
        record.user_id = names[record.user_id]
    people, _ = group_sets(cfg)
    train = TrainConfig(epochs=1, batch_size=32, progress=False, seed=seed)
    owner = train_owner(enrol, TINY, Preprocessing(), train)
    group = train_group(people, TINY, group_prep or Preprocessing(), train)
    with sessions() as db:
        for model, version in ((owner, f"tiny-owner-{seed}"), (group, f"tiny-group-{seed}")):
            path = store.save(model_dir, model, version)
            store.register(db, path, model, version)
        db.commit()


def move_frames(path: np.ndarray, per_frame: int = 50) -> list[bytes]:
    """The moves of ``path`` as collector wire frames (what the snippet would send)."""
    moves = path[path[:, 3] == 0]
    samples = [(round(t * 10), round(x), round(y)) for t, x, y, _c in moves.tolist()]
    return [
        wire.encode_moves(seq, samples[i : i + per_frame])
        for seq, i in enumerate(range(0, len(samples), per_frame))
    ]


def human_path(n: int, seed: int, viewport: tuple[int, int] = (1280, 720)) -> np.ndarray:
    """``n`` events of one synthetic person's mouse use: (t_ms, x, y, code) inside ``viewport``."""
    rng = np.random.default_rng(seed)
    events, (w, h) = generate_events(draw_habits(rng), n, rng)
    out = np.asarray(events, dtype=np.float64).copy()
    out[:, 0] -= out[0, 0]
    out[:, 1] = np.clip(out[:, 1] * viewport[0] / max(w, 1), 0, viewport[0] - 1)
    out[:, 2] = np.clip(out[:, 2] * viewport[1] / max(h, 1), 0, viewport[1] - 1)
    return out
