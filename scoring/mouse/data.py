"""Sessions to model inputs: windowing for scoring, random windows for training."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from renderer.errors import InvalidSession
from renderer.mouse import MODEL_CHANNELS, Cleaned, draw_channels, sanitize, session_windows


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

    def __post_init__(self) -> None:
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


def scoring_images(clean: Cleaned, prep: Preprocessing) -> np.ndarray:
    """(K, C, H, W) float32: the session's windows, at most ``max_windows`` evenly spaced."""
    wins = session_windows(clean, prep.window_events, prep.max_windows)
    return np.stack([draw_channels(w, (prep.size, prep.size)) for w in wins])


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
