"""Training and evaluating the whale detector with the shared loops of :mod:`scoring.training`."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn import metrics as skm
from torch import nn

from renderer.audio import SpectrogramConfig
from scoring import training
from scoring.model_store import Checkpoint, save_checkpoint
from scoring.whale import synth
from scoring.whale.dataset import ImageSet
from scoring.whale.model import DEFAULT_ARCH, build_detector, to_device


@dataclass(frozen=True)
class TrainConfig:
    arch: str = DEFAULT_ARCH
    pretrained: str = "none"
    epochs: int = 6
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-4
    time_budget_s: float = 14 * 60
    """Training stops after the epoch that crosses this budget."""
    seed: int = 0
    device: str = "cpu"
    progress: bool = True


@dataclass
class TrainResult:
    model: nn.Module
    history: list[dict[str, float]] = field(default_factory=list)
    threshold: float = 0.5


def _batches(data: ImageSet, size: int, shuffle: bool, seed: int) -> Iterator[training.Batch]:
    order = np.random.default_rng(seed).permutation(len(data)) if shuffle else np.arange(len(data))
    for start in range(0, len(data), size):
        idx = torch.from_numpy(order[start : start + size])
        images = data.images[idx].float().contiguous(memory_format=torch.channels_last)
        yield images, data.labels[idx].unsqueeze(1)


def bce(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return nn.functional.binary_cross_entropy_with_logits(outputs, targets)


def scores(model: nn.Module, data: ImageSet, cfg: TrainConfig) -> np.ndarray:
    """Probabilities for every image of ``data``."""
    images = (b[0] for b in _batches(data, cfg.batch_size * 2, False, 0))
    logits = training.predict(model, images, device=cfg.device, progress=cfg.progress)
    return torch.sigmoid(logits).squeeze(1).numpy()


def train(train_set: ImageSet, val_set: ImageSet, cfg: TrainConfig) -> TrainResult:
    """Train with AdamW and a one-cycle schedule; keep the epoch with the best validation AP."""
    torch.manual_seed(cfg.seed)
    model = to_device(build_detector(cfg.arch, cfg.pretrained), cfg.device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * -(-len(train_set) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps)
    result, best_ap, best_state = TrainResult(model), -1.0, None
    started = time.monotonic()

    def step_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        sched.step() if opt.state else None  # schedule moves once per optimiser step
        return bce(out, y)

    for epoch in range(cfg.epochs):
        batches = _batches(train_set, cfg.batch_size, True, cfg.seed + epoch)
        loss = training.train_one_epoch(
            model,
            batches,
            opt,
            step_loss,
            device=cfg.device,
            desc=f"epoch {epoch + 1}",
            progress=cfg.progress,
        )
        val = scores(model, val_set, cfg)
        ap = float(skm.average_precision_score(val_set.labels.numpy(), val))
        result.history.append({"epoch": epoch + 1, "loss": loss, "val_ap": ap})
        if ap > best_ap:
            best_ap, best_state = ap, {k: v.detach().clone() for k, v in model.state_dict().items()}
            result.threshold = best_threshold(val_set.labels.numpy(), val)
        if time.monotonic() - started > cfg.time_budget_s:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    return result


def best_threshold(labels: np.ndarray, probs: np.ndarray) -> float:
    """The threshold with the best F1 on validation data."""
    precision, recall, thresholds = skm.precision_recall_curve(labels, probs)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    if len(thresholds) == 0:
        return 0.5
    return float(thresholds[int(np.argmax(f1[:-1]))])


def _at_threshold(labels: np.ndarray, probs: np.ndarray, threshold: float) -> dict[str, float]:
    pred = probs >= threshold
    tp = int(np.sum(pred & (labels == 1)))
    return {
        "precision": tp / max(int(pred.sum()), 1),
        "recall": tp / max(int(np.sum(labels == 1)), 1),
    }


def evaluate(
    labels: np.ndarray, probs: np.ndarray, snr_band: np.ndarray, threshold: float
) -> dict[str, Any]:
    """ROC AUC, AP, precision and recall at ``threshold``, overall and per SNR band.

    A band's figures compare its positives against *all* negatives (negatives have no SNR).
    """
    out: dict[str, Any] = {
        "n": len(labels),
        "threshold": threshold,
        "roc_auc": float(skm.roc_auc_score(labels, probs)),
        "average_precision": float(skm.average_precision_score(labels, probs)),
        **_at_threshold(labels, probs, threshold),
        "by_snr": {},
    }
    negatives = labels == 0
    for band, (lo, hi) in enumerate(synth.SNR_BANDS):
        sel = negatives | (snr_band == band)
        if not np.any(snr_band == band):
            continue
        out["by_snr"][f"{lo:+.0f}..{hi:+.0f} dB"] = {
            "n_positive": int(np.sum(snr_band == band)),
            "roc_auc": float(skm.roc_auc_score(labels[sel], probs[sel])),
            "average_precision": float(skm.average_precision_score(labels[sel], probs[sel])),
            **_at_threshold(labels[sel], probs[sel], threshold),
        }
    return out


def pr_curve_png(labels: np.ndarray, probs: np.ndarray, threshold: float, path: Path) -> Path:
    """Save the precision-recall curve with the operating point marked."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    precision, recall, _ = skm.precision_recall_curve(labels, probs)
    point = _at_threshold(labels, probs, threshold)
    fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
    ax.plot(recall, precision, label="detector")
    ax.scatter(
        [point["recall"]],
        [point["precision"]],
        color="red",
        zorder=3,
        label=f"threshold {threshold:.3f}",
    )
    ax.set(
        xlabel="recall",
        ylabel="precision",
        xlim=(0, 1.01),
        ylim=(0, 1.01),
        title="Whale detector: precision-recall",
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


def save(
    path: Path, model: nn.Module, cfg: TrainConfig, spec: SpectrogramConfig, metrics: dict[str, Any]
) -> Path:
    """A self-describing checkpoint: architecture, front-end parameters and weights."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    config = {"arch": cfg.arch, "pretrained": cfg.pretrained, "task": "humpback"}
    return save_checkpoint(
        path, Checkpoint(config, {"spectrogram": spec.to_dict()}, state, metrics)
    )
