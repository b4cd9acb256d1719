"""Training the two mouse tasks.

*owner* (is this the account's owner?): one shared backbone is trained once as a
classifier over the enrolled accounts' windows; each account then gets a cheap head, a
logistic regression on the backbone's embedding (its genuine windows against other
accounts' windows), and a threshold calibrated on held-out genuine data to a target
false-alarm rate. Enrolling a new account costs a forward pass over its windows and a
logistic regression: milliseconds and ``embed_dim + 2`` numbers, no backbone training.

*group* (customer vs non-customer): the same network with one logit, trained with binary
cross-entropy; its threshold is calibrated the same way on held-out people.

A session's score is the mean of its windows' impostor (or non-customer) logits.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from torch import nn
from tqdm import tqdm

from renderer.errors import InvalidInput, InvalidSession
from renderer.mouse import Cleaned, sanitize
from scoring.mouse.calibration import (
    PieceLengths,
    cut_pieces,
    pooled_thresholds,
    session_shift,
)
from scoring.mouse.data import Preprocessing, scoring_images, split_by_time, training_images
from scoring.mouse.model import ModelConfig, MouseNet, build
from scoring.sessionfile import SessionRecord
from scoring.training import train_one_epoch


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 6
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 5e-4
    calib_fraction: float = 0.2
    target_far: float = 0.05
    calib_lengths: PieceLengths = field(default_factory=PieceLengths)
    pretrained: str = "none"
    oversample: float = 1.5
    fresh_windows: bool = False  # group: new random training windows every epoch
    max_negatives: int = 4000
    seed: int = 0
    progress: bool = True


def calibrate(genuine_scores: np.ndarray, target_far: float) -> float:
    """The threshold that flags about ``target_far`` of genuine sessions (score > threshold)."""
    if len(genuine_scores) == 0:
        return 0.0
    return float(np.quantile(genuine_scores, 1.0 - target_far, method="higher"))


def _batches(
    x: np.ndarray, y: np.ndarray, size: int, rng: np.random.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    order = rng.permutation(len(x))
    for i in range(0, len(order) - 1, size):  # a lone last example would break batch norm
        idx = order[i : i + size]
        if len(idx) < 2:
            continue
        yield (
            torch.from_numpy(x[idx]).contiguous(memory_format=torch.channels_last),
            torch.from_numpy(y[idx]),
        )


Redraw = Callable[[], tuple[np.ndarray, np.ndarray]]
"""New random training windows (images, targets), as many as the first draw."""


def fit(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    loss_fn: Any,
    cfg: TrainConfig,
    desc: str = "train",
    redraw: Redraw | None = None,
) -> list[float]:
    """AdamW with a one-cycle schedule; returns the loss of each epoch. With ``redraw``
    every epoch after the first trains on newly drawn windows of the same sessions."""
    rng = np.random.default_rng(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = max(1, cfg.epochs * max(1, len(x) // cfg.batch_size + 1))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps + 1)
    losses = []

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for batch in _batches(x, y, cfg.batch_size, rng):
            yield batch
            sched.step()  # runs after the shared loop's optimizer.step() on this batch

    epochs = tqdm(range(cfg.epochs), desc=desc, disable=not cfg.progress)
    for epoch in epochs:
        if redraw is not None and epoch > 0:
            del x, y  # the caller holds no reference: the last draw is freed before the next
            x, y = redraw()
        loss = train_one_epoch(
            model, batches(), opt, loss_fn, desc=f"epoch {epoch + 1}", progress=cfg.progress
        )
        losses.append(loss)
        epochs.set_postfix(loss=f"{loss:.3f}")
    recalibrate_batchnorm(model, x, cfg.batch_size)
    return losses


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, x: np.ndarray, batch_size: int) -> None:
    """Replace batch norm's running statistics by exact averages over the training images.

    With few batches (small data sets, per-task retraining) the exponential running averages
    are still close to their initial values when training stops, and in eval mode sparse
    trail images then normalise to nearly constant activations.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the pass below
    model.train()
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.eval()
    for i in range(0, len(x), batch_size):
        batch = torch.from_numpy(x[i : i + batch_size])
        if len(batch) > 1:
            model(batch.contiguous(memory_format=torch.channels_last))
    for m in norms:
        m.momentum = 0.1
    model.eval()


def forward_all(
    model: MouseNet, images: np.ndarray, *, embed: bool, batch_size: int = 256
) -> np.ndarray:
    """Embeddings or outputs for many images, without gradients."""
    model.eval()
    fn = model.embed if embed else model.forward
    out = []
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            batch = torch.from_numpy(images[i : i + batch_size])
            out.append(fn(batch.contiguous(memory_format=torch.channels_last)).float().numpy())
    return np.concatenate(out) if out else np.empty((0, 0), dtype=np.float32)


@dataclass
class Head:
    """A per-account logistic regression on the embedding; scores are impostor logits."""

    weight: np.ndarray
    bias: float
    threshold: float = 0.0

    def window_scores(self, embeddings: np.ndarray) -> np.ndarray:
        return -(embeddings @ self.weight + self.bias)


def fit_head(genuine: np.ndarray, negatives: np.ndarray, c: float = 0.5) -> Head:
    x = np.concatenate([genuine, negatives])
    y = np.concatenate([np.ones(len(genuine)), np.zeros(len(negatives))])
    lr = LogisticRegression(C=c, class_weight="balanced", max_iter=500)
    lr.fit(x, y)
    return Head(lr.coef_[0].astype(np.float32), float(lr.intercept_[0]))


@dataclass
class OwnerModel:
    model: MouseNet
    prep: Preprocessing
    heads: dict[str, Head]
    metrics: dict[str, Any] = field(default_factory=dict)

    def session_score(self, user: str, images: np.ndarray) -> float:
        head = self.heads[user]
        emb = forward_all(self.model, images, embed=True)
        return float(head.window_scores(emb).mean())


@dataclass
class GroupModel:
    model: MouseNet
    prep: Preprocessing
    threshold: float = 0.0
    metrics: dict[str, Any] = field(default_factory=dict)

    def session_score(self, images: np.ndarray) -> float:
        return float(forward_all(self.model, images, embed=False)[:, 0].mean())


def clean_records(
    records: Sequence[SessionRecord],
) -> tuple[list[tuple[SessionRecord, Cleaned]], int]:
    """Sanitised sessions, skipping those that are unusable; returns how many were skipped."""
    out, skipped = [], 0
    for r in records:
        try:
            out.append((r, sanitize(r.events, r.viewport)))
        except InvalidSession:
            skipped += 1
    return out, skipped


def calibration_sessions(cleaned: list[tuple[SessionRecord, Cleaned]], fraction: float) -> set[int]:
    """Indices of the enrolment sessions held out whole for calibration: each account's latest
    ``fraction`` of its sessions (at least one) when it has three or more.

    A threshold must be set on sessions the model has never seen: held-out *windows of trained
    sessions* share that session's page, device and day-to-day habits with the training
    windows, score as genuine too easily, and the threshold then flags new genuine sessions
    far more often than the target rate (12.6 % instead of 5 % measured)."""
    by_user: dict[str, list[int]] = {}
    for i, (r, _) in enumerate(cleaned):
        by_user.setdefault(r.user_id, []).append(i)
    held: set[int] = set()
    for idx in by_user.values():
        if len(idx) >= 3:
            held.update(idx[-max(1, round(len(idx) * fraction)) :])
    return held


@dataclass
class CalibrationSession:
    """One held-out genuine session cut into pieces of scored lengths: the embeddings of
    every piece's windows and, for each window, the piece it belongs to."""

    embeddings: np.ndarray
    piece: np.ndarray

    def piece_scores(self, head: Head) -> np.ndarray:
        """Each piece's score as a page session of that length gets it: its windows' mean."""
        total = np.bincount(self.piece, weights=head.window_scores(self.embeddings))
        return total / np.bincount(self.piece)


def embed_pieces(model: MouseNet, pieces: list[Cleaned], prep: Preprocessing) -> CalibrationSession:
    images = [scoring_images(p, prep) for p in pieces]
    piece = np.repeat(np.arange(len(images)), [len(i) for i in images])
    return CalibrationSession(forward_all(model, np.concatenate(images), embed=True), piece)


def _owner_windows(
    cleaned: list[tuple[SessionRecord, Cleaned]],
    users: list[str],
    prep: Preprocessing,
    cfg: TrainConfig,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, dict[str, list[list[Cleaned]]]]:
    """Training windows and labels, and per account the calibration pieces of each held-out
    session (whole sessions when it has enough, else the last part of each session).

    The pieces are cut with their own random stream so that the training windows, and so the
    backbone and the heads, do not depend on how calibration is done."""
    xs, ys = [], []
    calib: dict[str, list[list[Cleaned]]] = {u: [] for u in users}
    held = calibration_sessions(cleaned, cfg.calib_fraction)
    held_users = {cleaned[i][0].user_id for i in held}
    cut_rng = np.random.default_rng([cfg.seed, 1])
    for i, (r, clean) in enumerate(
        tqdm(cleaned, desc="render", disable=not cfg.progress, leave=False)
    ):
        none = Cleaned(clean.events[:0], clean.viewport)
        if i in held:
            fit_part, cal_part = none, clean
        elif r.user_id in held_users:
            fit_part, cal_part = clean, none
        else:
            fit_part, cal_part = split_by_time(clean, cfg.calib_fraction)
        if len(fit_part.events) >= 2:
            imgs = training_images(fit_part, prep, rng, cfg.oversample)
            xs.append(imgs)
            ys.append(np.full(len(imgs), users.index(r.user_id), dtype=np.int64))
        if len(cal_part.events) >= 2:
            calib[r.user_id].append(cut_pieces(cal_part, cfg.calib_lengths, cut_rng))
    if not xs:
        raise InvalidInput("no usable enrolment sessions", "no_training_data")
    return np.concatenate(xs), np.concatenate(ys), {u: v for u, v in calib.items() if v}


def _fit_heads(
    emb: np.ndarray, y: np.ndarray, users: list[str], cfg: TrainConfig, rng: np.random.Generator
) -> tuple[dict[str, Head], list[float]]:
    heads, seconds = {}, []
    for k, user in enumerate(users):
        started = time.perf_counter()
        others = emb[y != k]
        if len(others) > cfg.max_negatives:
            others = others[rng.choice(len(others), cfg.max_negatives, replace=False)]
        heads[user] = fit_head(emb[y == k], others)
        seconds.append(time.perf_counter() - started)
    return heads, seconds


def _validation_auc(
    heads: dict[str, Head], cal: dict[str, list[CalibrationSession]]
) -> list[float]:
    """Per account, own held-out windows against the other accounts' held-out windows."""
    aucs = []
    for user, sessions in cal.items():
        own = np.concatenate([heads[user].window_scores(c.embeddings) for c in sessions])
        foreign = [
            heads[user].window_scores(c.embeddings) for u in cal if u != user for c in cal[u]
        ]
        if foreign:
            neg = np.concatenate(foreign)
            labels = np.r_[np.zeros(len(own)), np.ones(len(neg))]
            aucs.append(float(roc_auc_score(labels, np.r_[own, neg])))
    return aucs


def calibrate_heads(
    model: MouseNet,
    heads: dict[str, Head],
    calib: dict[str, list[list[Cleaned]]],
    prep: Preprocessing,
    target_far: float,
) -> dict[str, Any]:
    """Set every head's threshold from its held-out pieces (``scoring.mouse.calibration``);
    returns what it cost and the per-account validation AUC."""
    started = time.perf_counter()
    cal = {u: [embed_pieces(model, pieces, prep) for pieces in v] for u, v in calib.items()}
    scores = {u: [c.piece_scores(heads[u]) for c in v] for u, v in cal.items()}
    for user, threshold in pooled_thresholds(scores, target_far).items():
        heads[user].threshold = threshold
    val_auc = _validation_auc(heads, cal)
    return {
        "validation_window_auc_mean": float(np.mean(val_auc)) if val_auc else None,
        "calibration_pieces": sum(len(s) for v in scores.values() for s in v),
        "calibration_windows": sum(len(c.piece) for v in cal.values() for c in v),
        "calibration_session_shift_sd": float(np.sqrt(session_shift(scores).variance)),
        "calibration_seconds": time.perf_counter() - started,
    }


def train_owner(
    records: Sequence[SessionRecord],
    model_cfg: ModelConfig,
    prep: Preprocessing,
    cfg: TrainConfig,
) -> OwnerModel:
    """Backbone over the enrolled accounts, then a head and a threshold per account."""
    cleaned, skipped = clean_records([r for r in records if r.label in (None, "genuine")])
    users = sorted({r.user_id for r, _ in cleaned})
    if len(users) < 2:
        raise InvalidInput(
            "owner training needs genuine sessions of at least 2 accounts", "no_training_data"
        )
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    x, y, calib = _owner_windows(cleaned, users, prep, cfg, rng)
    model = build(ModelConfig(**{**model_cfg.to_dict(), "n_out": len(users)}), cfg.pretrained)
    started = time.perf_counter()
    losses = fit(model, x, y, nn.CrossEntropyLoss(label_smoothing=0.1), cfg, "owner backbone")
    backbone_s = time.perf_counter() - started
    heads, head_s = _fit_heads(forward_all(model, x, embed=True), y, users, cfg, rng)
    calibration = calibrate_heads(model, heads, calib, prep, cfg.target_far)
    metrics = {
        "task": "owner",
        "accounts": len(users),
        "train_windows": len(x),
        "skipped_sessions": skipped,
        "losses": losses,
        "target_far": cfg.target_far,
        "calibration_lengths": asdict(cfg.calib_lengths),
        **calibration,
        "backbone_train_seconds": backbone_s,
        "head_fit_seconds_mean": float(np.mean(head_s)),
        "backbone_parameters": sum(p.numel() for p in model.parameters()),
        "head_parameters": model.cfg.embed_dim + 2,
    }
    return OwnerModel(model, prep, heads, metrics)


def _group_split(
    cleaned: list[tuple[SessionRecord, Cleaned]],
    prep: Preprocessing,
    calib_users: set[str],
) -> tuple[list[tuple[Cleaned, float]], list[tuple[float, np.ndarray]]]:
    """Training sessions with their targets, and the calibration people's scoring images."""
    train, calib = [], []
    for r, clean in cleaned:
        target = 1.0 if r.label == "noncustomer" else 0.0
        if r.user_id in calib_users:
            calib.append((target, scoring_images(clean, prep)))
        else:
            train.append((clean, target))
    if not train:
        raise InvalidInput("no usable group sessions", "no_training_data")
    return train, calib


def _group_windows(
    train: list[tuple[Cleaned, float]],
    prep: Preprocessing,
    cfg: TrainConfig,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """One draw of random training windows of every training session, with their targets."""
    xs, ys = [], []
    for clean, target in tqdm(train, desc="render", disable=not cfg.progress, leave=False):
        imgs = training_images(clean, prep, rng, cfg.oversample)
        xs.append(imgs)
        ys.append(np.full((len(imgs), 1), target, dtype=np.float32))
    return np.concatenate(xs), np.concatenate(ys)


def train_group(
    records: Sequence[SessionRecord],
    model_cfg: ModelConfig,
    prep: Preprocessing,
    cfg: TrainConfig,
) -> GroupModel:
    """Customer (0) vs non-customer (1); people held out for calibration are never trained on."""
    labelled = [r for r in records if r.label in ("customer", "noncustomer")]
    if {r.label for r in labelled} != {"customer", "noncustomer"}:
        raise InvalidInput(
            "group training needs customer and noncustomer sessions", "no_training_data"
        )
    cleaned, skipped = clean_records(labelled)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    people = sorted({r.user_id for r, _ in cleaned})
    n_cal = round(len(people) * cfg.calib_fraction) if len(people) >= 5 else 0
    calib_users = set(rng.choice(people, n_cal, replace=False).tolist()) if n_cal else set()
    train, calib = _group_split(cleaned, prep, calib_users)
    first = [_group_windows(train, prep, cfg, rng)]
    n_windows = len(first[0][0])
    model = build(ModelConfig(**{**model_cfg.to_dict(), "n_out": 1}), cfg.pretrained)

    def redraw() -> tuple[np.ndarray, np.ndarray]:
        return _group_windows(train, prep, cfg, rng)

    # popped, not named: a redraw can then free the previous draw (2 GB at full size)
    losses = fit(
        model,
        *first.pop(),
        nn.BCEWithLogitsLoss(),
        cfg,
        "group",
        redraw if cfg.fresh_windows else None,
    )
    out = GroupModel(model, prep, 0.0)
    scores = np.array([out.session_score(imgs) for _, imgs in calib])
    targets = np.array([t for t, _ in calib])
    if len(calib) and (targets == 0).any():
        out.threshold = calibrate(scores[targets == 0], cfg.target_far)
    val_auc = float(roc_auc_score(targets, scores)) if len(set(targets.tolist())) == 2 else None
    out.metrics = {
        "task": "group",
        "train_windows": n_windows,
        "fresh_windows": cfg.fresh_windows,
        "skipped_sessions": skipped,
        "losses": losses,
        "validation_session_auc": val_auc,
        "target_far": cfg.target_far,
    }
    return out
