"""Training the card classifier with the shared loops of :mod:`scoring.training`."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sqlalchemy.orm import Session
from torch import nn

from renderer.errors import InvalidInput
from scoring import model_store
from scoring.pump import synth
from scoring.pump.cards import Card
from scoring.pump.model import build, default_preprocessing, render_images, to_tensor
from scoring.schema import ModelVersion
from scoring.training import Batch, evaluate, train_one_epoch

PIPELINE = "pump"


@dataclass(frozen=True)
class TrainConfig:
    arch: str = "resnet18"
    pretrained: str = "none"
    size: int = 48
    n_train: int = 10000
    kind: str = "mixed"
    imbalance: bool = False
    epochs: int = 6  # 7 was no better on held-out cards and ran past 20 min on the shared CPU
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    label_smoothing: float = 0.05
    seed: int = 0
    threads: int = 1
    modes: tuple[str, ...] = field(default=synth.MODES)


FULL = TrainConfig()
"""The default model of ``trailguard pump train`` (time measured in docs/pump.md)."""
TINY = replace(FULL, n_train=880, epochs=4, batch_size=32, lr=3e-3)
"""The CI setting: seconds, not minutes."""


@dataclass
class TrainResult:
    model: nn.Module
    classes: list[str]
    preprocessing: dict[str, Any]
    config: dict[str, Any]
    history: list[dict[str, float]]
    seconds: float


def to_uint8(images: np.ndarray) -> np.ndarray:
    return np.rint(images * 255).astype(np.uint8)


def batches(
    images: np.ndarray,
    labels: np.ndarray,
    preprocessing: dict[str, Any],
    batch_size: int,
    rng: np.random.Generator | None = None,
) -> Iterator[Batch]:
    """(images, targets) batches from uint8 images; shuffled when ``rng`` is given."""
    order = rng.permutation(len(images)) if rng is not None else np.arange(len(images))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        x = to_tensor(images[idx].astype(np.float32) / 255, preprocessing)
        yield x, torch.from_numpy(labels[idx].astype(np.int64))


def labelled(cards: Sequence[Card], classes: Sequence[str]) -> np.ndarray:
    index = {c: i for i, c in enumerate(classes)}
    missing = sorted({c.label or "" for c in cards} - set(index))
    if missing:
        raise InvalidInput(f"cards with unknown or missing labels: {missing}", "bad_labels")
    return np.array([index[c.label or ""] for c in cards], dtype=np.int64)


def train(
    config: TrainConfig,
    cards: Sequence[Card] | None = None,
    *,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Train on ``cards`` (labelled), or on freshly generated synthetic cards when None."""
    started = time.monotonic()
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    if cards is None:
        cards = synth.synth_set(
            config.n_train,
            seed=config.seed,
            kind=config.kind,
            modes=config.modes,
            imbalance=config.imbalance,
        )
    classes = sorted({c.label or "" for c in cards}) if cards and cards[0].label else []
    if not classes or "" in classes:
        raise InvalidInput("training cards need a mode label each", "bad_labels")
    classes = [m for m in synth.ALL_MODES if m in classes] + [
        m for m in classes if m not in synth.ALL_MODES
    ]
    prep = default_preprocessing(config.size)
    images = to_uint8(render_images(cards, prep))
    labels = labelled(cards, classes)
    log(f"rendered {len(cards)} cards in {time.monotonic() - started:.0f} s")
    model = build(config.arch, len(classes), config.pretrained)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps = config.epochs * -(-len(images) // config.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    rng = np.random.default_rng(config.seed)
    history: list[dict[str, float]] = []
    for epoch in range(config.epochs):
        loss = train_one_epoch(
            model,
            _stepping(batches(images, labels, prep, config.batch_size, rng), sched),
            opt,
            loss_fn,
            desc=f"epoch {epoch + 1}/{config.epochs}",
            progress=progress,
        )
        history.append({"epoch": epoch + 1, "loss": loss})
        log(f"epoch {epoch + 1}/{config.epochs}: loss {loss:.4f}")
    cfg = {**asdict(config), "modes": list(config.modes), "classes": classes}
    return TrainResult(model, classes, prep, cfg, history, time.monotonic() - started)


def _stepping(
    items: Iterator[Batch], sched: torch.optim.lr_scheduler.LRScheduler
) -> Iterator[Batch]:
    # the scheduler steps after each optimiser step, i.e. when the next batch is asked for
    first = True
    for item in items:
        if not first:
            sched.step()
        first = False
        yield item
    sched.step()


def predict_proba(
    model: nn.Module,
    images: np.ndarray,
    preprocessing: dict[str, Any],
    *,
    batch_size: int = 256,
    progress: bool = False,
) -> np.ndarray:
    """Class probabilities (N, C) for rendered uint8 images."""
    labels = np.zeros(len(images), dtype=np.int64)
    _, outputs, _ = evaluate(
        model,
        batches(images, labels, preprocessing, batch_size),
        nn.CrossEntropyLoss(),
        progress=progress,
    )
    return torch.softmax(outputs, dim=1).numpy() if len(outputs) else np.zeros((0, 0))


def save(
    session: Session,
    model_dir: Path,
    result: TrainResult,
    metrics: dict[str, Any] | None = None,
    *,
    activate: bool = True,
) -> ModelVersion:
    """Checkpoint + ``model_versions`` row; with ``activate`` it becomes the pump model."""
    version = model_store.new_version()
    path = model_dir / PIPELINE / f"pump-{version}.pt"
    all_metrics = {"train_seconds": result.seconds, "history": result.history, **(metrics or {})}
    model_store.save_checkpoint(
        path,
        model_store.Checkpoint(
            config=result.config,
            preprocessing=result.preprocessing,
            state_dict=result.model.state_dict(),
            metrics=all_metrics,
        ),
    )
    return model_store.register(
        session,
        pipeline=PIPELINE,
        path=path,
        version=version,
        metrics=all_metrics,
        config=result.config,
        activate=activate,
    )
