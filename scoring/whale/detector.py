"""Running the detector over a recording: streamed windows, per-window scores, merged detections.

Memory stays bounded for any length: the decoder yields one chunk (60 s) at a time, the front
end keeps one window of frames between chunks, and windows are scored in fixed-size batches.
What grows with length is only the list of per-window scores (a few floats per 1.92 s).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sqlalchemy.orm import Session
from torch import nn

from renderer.audio import SpectrogramConfig, StreamingFrontEnd, pool_columns
from renderer.errors import InvalidInput, ModelNotFound
from scoring import model_store
from scoring.whale import audio_io
from scoring.whale.model import DEFAULT_ARCH, build_detector, to_device

PIPELINE = "whale"
TRAIN_HINT = "trailguard whale train"
BATCH = 32
OVERVIEW_POOL = 8
"""Spectrogram frames averaged into one column of the stored overview image."""


@dataclass
class Detector:
    model: nn.Module
    spec: SpectrogramConfig
    threshold: float
    version_id: int | None = None
    version: str = ""
    untrained: bool = False
    device: str = "cpu"


@dataclass
class Analysis:
    threshold: float
    windows: list[dict[str, Any]] = field(default_factory=list)
    detections: list[dict[str, float]] = field(default_factory=list)
    overview: list[np.ndarray] = field(default_factory=list)
    duration_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "windows": self.windows, "detections": self.detections}


def from_checkpoint(path: Path, device: str = "cpu") -> Detector:
    ckpt = model_store.load_checkpoint(path, device)
    spec = SpectrogramConfig.from_dict(ckpt.preprocessing.get("spectrogram", {}))
    model = build_detector(ckpt.config.get("arch", DEFAULT_ARCH), "none")
    model.load_state_dict(ckpt.state_dict)
    threshold = float(ckpt.metrics.get("threshold", 0.5))
    return Detector(to_device(model, device).eval(), spec, threshold, device=device)


def load_active(session: Session, device: str = "cpu") -> Detector:
    """The active trained detector, or :class:`ModelNotFound` naming the training command."""
    row = model_store.active(session, PIPELINE)
    if row is None:
        raise ModelNotFound("no trained whale model", hint=TRAIN_HINT)
    path = Path(row.path)
    if not path.exists():
        raise ModelNotFound(f"the active whale model file {path} is missing", hint=TRAIN_HINT)
    detector = from_checkpoint(path, device)
    detector.version_id, detector.version = row.id, row.version
    if row.threshold is not None:
        detector.threshold = float(row.threshold)
    return detector


def untrained(arch: str = DEFAULT_ARCH, device: str = "cpu") -> Detector:
    """A randomly initialised detector, for a pipeline that has no trained model yet."""
    torch.manual_seed(0)
    model = to_device(build_detector(arch, "none"), device).eval()
    return Detector(model, SpectrogramConfig(), 0.5, untrained=True, device=device)


@torch.inference_mode()
def score_images(detector: Detector, images: torch.Tensor) -> torch.Tensor:
    """Probabilities (K,) of images (K, 1, T, F), in batches of BATCH."""
    out = []
    for start in range(0, images.shape[0], BATCH):
        batch = images[start : start + BATCH].to(detector.device)
        batch = batch.contiguous(memory_format=torch.channels_last)
        out.append(torch.sigmoid(detector.model(batch).float()).squeeze(1).cpu())
    return torch.cat(out) if out else torch.zeros(0)


def _windows(
    detector: Detector, chunks: Iterable[np.ndarray]
) -> Iterator[tuple[torch.Tensor, list[int]]]:
    front = StreamingFrontEnd(detector.spec, detector.device)
    for chunk in chunks:
        yield front.push(chunk)
    yield front.finish()


def analyse(
    detector: Detector, chunks: Iterable[np.ndarray], keep_overview: bool = False
) -> Analysis:
    """Score every window of a stream of audio chunks at the detector's sample rate."""
    spec, result = detector.spec, Analysis(detector.threshold)
    samples = 0

    def counted() -> Iterator[np.ndarray]:
        nonlocal samples
        for chunk in chunks:
            samples += len(chunk)
            yield chunk

    for images, starts in _windows(detector, counted()):
        if not starts:
            continue
        probs = score_images(detector, images)
        for start, p in zip(starts, probs.tolist(), strict=True):
            t0 = spec.frame_start_s(start)
            result.windows.append(
                {
                    "start_s": round(t0, 3),
                    "end_s": round(t0 + spec.window_samples / spec.sample_rate, 3),
                    "score": round(float(p), 5),
                    "detected": bool(p >= detector.threshold),
                }
            )
        if keep_overview:
            result.overview.append(pool_columns(images, spec.hop_frames, OVERVIEW_POOL))
    result.duration_s = samples / spec.sample_rate
    result.detections = merge(result.windows, result.duration_s)
    return result


def merge(windows: list[dict[str, Any]], duration_s: float) -> list[dict[str, float]]:
    """Runs of detected windows become one span; its confidence is the run's highest score."""
    spans: list[dict[str, float]] = []
    for w in windows:
        if not w["detected"]:
            continue
        if spans and w["start_s"] <= spans[-1]["end_s"]:
            spans[-1]["end_s"] = max(spans[-1]["end_s"], w["end_s"])
            spans[-1]["confidence"] = max(spans[-1]["confidence"], w["score"])
        else:
            spans.append({"start_s": w["start_s"], "end_s": w["end_s"], "confidence": w["score"]})
    for s in spans:
        s["end_s"] = round(min(s["end_s"], max(duration_s, s["start_s"])), 3)
    return spans


def analyse_file(detector: Detector, path: Path, keep_overview: bool = False) -> Analysis:
    """Decode, stream and score one recording; raises InvalidAudio for unusable files."""
    if not path.is_file():
        raise InvalidInput(f"{path}: no such file", "no_file")
    chunks = audio_io.stream(path, detector.spec.sample_rate)
    return analyse(detector, chunks, keep_overview)
