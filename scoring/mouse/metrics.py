"""Evaluation metrics of the mouse tasks, as the mouse-dynamics literature reports them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve


def eer(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """Equal error rate and the threshold where false alarms equal misses."""
    fpr, tpr, thr = roc_curve(labels, scores)
    fnr = 1 - tpr
    i = int(np.nanargmin(np.abs(fnr - fpr)))
    return float((fpr[i] + fnr[i]) / 2), float(thr[i])


def _auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    return float(roc_auc_score(labels, scores)) if len(set(labels.tolist())) == 2 else None


def _mean_sd(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "sd": None}
    return {"mean": float(np.mean(values)), "sd": float(np.std(values))}


def _per_account(
    labels: np.ndarray, scores: np.ndarray, users: np.ndarray
) -> tuple[list[float], list[float]]:
    aucs, eers = [], []
    for user in sorted(set(users.tolist())):
        m = users == user
        if len(set(labels[m].tolist())) == 2:
            aucs.append(float(roc_auc_score(labels[m], scores[m])))
            eers.append(eer(labels[m], scores[m])[0])
    return aucs, eers


def precision_recall(labels: np.ndarray, flagged: np.ndarray) -> dict[str, float | None]:
    tp = int((flagged & (labels == 1)).sum())
    fp = int((flagged & (labels == 0)).sum())
    fn = int((~flagged & (labels == 1)).sum())
    return {
        "precision": tp / (tp + fp) if tp + fp else None,
        "recall": tp / (tp + fn) if tp + fn else None,
        "false_alarm_rate": fp / max(1, int((labels == 0).sum())),
    }


WINDOW_BANDS = ((1, 1), (2, 3), (4, 32))
"""Session lengths in scoring windows for the false-alarm rate by length: a session's score
is the mean of its windows', so one-window sessions scatter most."""


def false_alarm_by_windows(
    labels: np.ndarray, flagged: np.ndarray, windows: np.ndarray
) -> dict[str, dict[str, float | int | None]]:
    """False-alarm rate of genuine sessions of 1, 2-3 and 4 or more windows."""
    out: dict[str, dict[str, float | int | None]] = {}
    for lo, hi in WINDOW_BANDS:
        genuine = (labels == 0) & (windows >= lo) & (windows <= hi)
        name = str(lo) if lo == hi else f"{lo}-{hi}" if hi < 32 else f"{lo}+"
        n = int(genuine.sum())
        out[name] = {
            "genuine": n,
            "false_alarm_rate": float(flagged[genuine].mean()) if n else None,
        }
    return out


def trivial_cue_auc(labels: np.ndarray, cue: np.ndarray) -> float | None:
    """AUC of a one-number cue in its better direction (0.5 = chance, 1 = separates)."""
    auc = _auc(labels, cue)
    return None if auc is None else max(auc, 1 - auc)


def session_metrics(
    labels: Sequence[int],
    scores: Sequence[float],
    users: Sequence[str],
    thresholds: Sequence[float],
    windows: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Pooled AUC, per-account AUC/EER, accuracy at the EER threshold, P/R when calibrated
    (and, given each session's number of scoring windows, the false-alarm rate by length)."""
    y, s, u = np.asarray(labels), np.asarray(scores, dtype=float), np.asarray(users)
    thr = np.asarray(thresholds, dtype=float)
    by_length = {} if windows is None else false_alarm_by_windows(y, s > thr, np.asarray(windows))
    pooled_eer, eer_thr = eer(y, s) if len(set(y.tolist())) == 2 else (None, 0.0)
    aucs, eers = _per_account(y, s, u)
    return {
        "sessions": len(y),
        "positives": int(y.sum()),
        "pooled_auc": _auc(y, s),
        "pooled_eer": pooled_eer,
        "per_account_auc": _mean_sd(aucs),
        "per_account_eer": _mean_sd(eers),
        "accounts_evaluated": len(aucs),
        "accuracy_at_eer_threshold": float(((s > eer_thr) == (y == 1)).mean()) if len(y) else None,
        "at_calibrated_thresholds": {
            **precision_recall(y, s > thr),
            "accuracy": float(((s > thr) == (y == 1)).mean()) if len(y) else None,
            "false_alarm_by_windows": by_length,
        },
    }


def roc_png(path: Path, labels: Sequence[int], scores: Sequence[float], title: str) -> Path:
    """The pooled ROC curve as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fpr, tpr, _ = roc_curve(np.asarray(labels), np.asarray(scores))
    fig = Figure(figsize=(4, 4), dpi=100)
    ax = fig.add_subplot()
    ax.plot(fpr, tpr, lw=2, label=f"AUC {roc_auc_score(labels, scores):.3f}")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1)
    ax.set(xlabel="false alarm rate", ylabel="detection rate", title=title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    return path
