"""Sessions to model inputs: windowing for scoring, random windows for training."""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from renderer.errors import InvalidSession
from renderer.mouse import MODEL_CHANNELS, Cleaned, draw_channels, sanitize, window_bounds
from scoring.mouse.live import pick_evenly


@dataclass(frozen=True)
class Preprocessing:
    """How a session becomes images; stored next to the weights in every checkpoint.

    Training windows of 0 events (the default) mean "scaled to the scoring window":
    ``window_events / 4`` to ``1.75 · window_events`` (100–700 for 400-event windows), so a
    model trained for longer windows still sees every density it will score."""

    size: int = 64
    window_events: int = 400
    train_min_events: int = 0
    train_max_events: int = 0
    max_windows: int = 32
    channels: tuple[str, ...] = MODEL_CHANNELS
    window_views: int = 1
    """Scoring windows per window length: 1 = consecutive windows; *v* adds, between two
    consecutive ones, the *v* − 1 windows shifted by 1/*v* of a window (stride *W*/*v*), so
    the session is scored from more placements of the same windows (:func:`view_bounds`)."""

    def __post_init__(self) -> None:
        if self.window_views < 1:
            raise InvalidSession("window_views must be at least 1", "bad_window")
        # frozen: the derived lengths are set once here and stored resolved in checkpoints
        if self.train_min_events <= 0:
            object.__setattr__(self, "train_min_events", max(2, self.window_events // 4))
        if self.train_max_events <= 0:
            object.__setattr__(self, "train_max_events", self.window_events * 7 // 4)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["channels"] = list(self.channels)
        return d

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Preprocessing:
        known = {k: raw[k] for k in cls.__dataclass_fields__ if k in raw}
        if "channels" in known:
            known["channels"] = tuple(known["channels"])
        if known.get("channels", MODEL_CHANNELS) != MODEL_CHANNELS:
            raise InvalidSession("checkpoint expects other model channels", "bad_checkpoint")
        return cls(**known)


def view_bounds(n_events: int, window_events: int, views: int = 1) -> list[tuple[int, int]]:
    """Scoring windows of a session of ``n_events``, in order of start: the consecutive
    windows of :func:`renderer.mouse.window_bounds` and, with ``views`` > 1, between each two
    consecutive ones the ``views - 1`` windows interpolated between their bounds (both ends
    moved by the same fraction), so every window keeps the consecutive windows' length."""
    base = window_bounds(n_events, window_events)
    out = []
    for (a0, b0), (a1, b1) in itertools.pairwise(base):
        for j in range(views):
            f = j / views
            out.append((round(a0 + f * (a1 - a0)), round(b0 + f * (b1 - b0))))
    out.append(base[-1])
    return out


def scoring_images(clean: Cleaned, prep: Preprocessing) -> np.ndarray:
    """(K, C, H, W) float32: the session's scoring windows (:func:`view_bounds`), at most
    ``max_windows`` evenly spaced."""
    bounds = view_bounds(len(clean.events), prep.window_events, prep.window_views)
    bounds = pick_evenly(bounds, prep.max_windows)
    side = (prep.size, prep.size)
    return np.stack(
        [draw_channels(Cleaned(clean.events[a:b], clean.viewport), side) for a, b in bounds]
    )


def session_images(
    events: np.ndarray, viewport: tuple[float, float], prep: Preprocessing
) -> np.ndarray:
    return scoring_images(sanitize(events, viewport), prep)


def training_images(
    clean: Cleaned, prep: Preprocessing, rng: np.random.Generator, oversample: float = 1.5
) -> np.ndarray:
    """Random windows of random length (``train_min_events``–``train_max_events``) covering
    the session about ``oversample`` times, so the model sees the densities it will score."""
    n = len(clean.events)
    lo = min(prep.train_min_events, n)
    count = max(1, round(oversample * n / prep.window_events))
    sizes = rng.integers(lo, max(lo, min(prep.train_max_events, n)) + 1, size=count)
    starts = rng.integers(0, n - sizes + 1)
    return np.stack(
        [
            draw_channels(Cleaned(clean.events[s : s + k], clean.viewport), (prep.size, prep.size))
            for s, k in zip(starts, sizes, strict=True)
        ]
    )


def split_by_time(clean: Cleaned, fraction: float) -> tuple[Cleaned, Cleaned]:
    """The first ``1 - fraction`` of a session and the rest (for calibration)."""
    cut = round(len(clean.events) * (1 - fraction))
    return (
        Cleaned(clean.events[:cut], clean.viewport),
        Cleaned(clean.events[cut:], clean.viewport),
    )
