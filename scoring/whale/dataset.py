"""Labelled spectrogram images for training: from fresh synthetic clips or a folder of files.

A folder dataset is a directory with ``labels.csv`` (columns ``file,label`` and optionally
``snr_db,snr_band``) next to the audio files. The label applies to the *last* window of each
file (3.91 s with the default front end); what comes before warms up PCEN's smoother, as the
long past of a real recording does.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from renderer.audio import FrontEnd, SpectrogramConfig
from renderer.errors import InvalidInput
from scoring.whale import audio_io, synth

LEAD_S = 3.0
"""Audio before each training window, so PCEN is warm as it is in a long recording."""


@dataclass
class ImageSet:
    images: torch.Tensor
    """(N, 1, frames, mels) float16."""
    labels: torch.Tensor
    """(N,) float32 in {0, 1}."""
    snr_band: np.ndarray
    """(N,) index into synth.SNR_BANDS, −1 for negatives or unknown."""

    def __len__(self) -> int:
        return len(self.labels)


def last_window(audio: np.ndarray, cfg: SpectrogramConfig, front: FrontEnd) -> torch.Tensor:
    """The PCEN image of the final window of ``audio`` (left-padded with silence if short)."""
    need = cfg.window_samples
    if len(audio) < need:
        audio = np.concatenate([np.zeros(need - len(audio), dtype=np.float32), audio])
    tail = (len(audio) - cfg.n_fft) % cfg.hop_length
    frames = front.pcen_frames(torch.from_numpy(np.ascontiguousarray(audio[tail:])))
    return frames[-cfg.window_frames :].unsqueeze(0)


def synthetic(n: int, seed: int, cfg: SpectrogramConfig, species: str = "humpback") -> ImageSet:
    """``n`` fresh synthetic clips rendered to images (about half positive)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # per-clip tensors are small: extra threads only contend
    try:
        return _synthetic(n, seed, cfg, species)
    finally:
        torch.set_num_threads(threads)


def _synthetic(n: int, seed: int, cfg: SpectrogramConfig, species: str) -> ImageSet:
    front = FrontEnd(cfg)
    lead = int(LEAD_S * cfg.sample_rate)
    rng = np.random.default_rng(seed)
    images, labels, bands = [], [], []
    for _ in range(n):
        clip = synth.make_clip(
            rng, cfg.window_samples + lead, cfg.sample_rate, bool(rng.random() < 0.5), species, lead
        )
        audio = audio_io.DcBlocker(cfg.sample_rate)(clip.audio)
        images.append(last_window(audio, cfg, front).to(torch.float16))
        labels.append(clip.label)
        bands.append(clip.snr_band)
    return ImageSet(torch.stack(images), torch.tensor(labels, dtype=torch.float32), np.array(bands))


def read_labels(folder: Path) -> list[dict[str, str]]:
    path = folder / "labels.csv"
    if not path.exists():
        raise InvalidInput(f"{folder} has no labels.csv (columns file,label)", "no_labels")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "file" not in rows[0] or "label" not in rows[0]:
        raise InvalidInput(f"{path} needs a header with columns file,label", "bad_labels")
    return rows


def from_folder(folder: Path, cfg: SpectrogramConfig) -> ImageSet:
    """Images of every file listed in ``folder/labels.csv``."""
    front = FrontEnd(cfg)
    images, labels, bands = [], [], []
    for row in read_labels(folder):
        audio = audio_io.read_all(folder / row["file"], cfg.sample_rate)
        images.append(last_window(audio, cfg, front).to(torch.float16))
        labels.append(float(row["label"]))
        bands.append(int(row.get("snr_band") or -1))
    return ImageSet(torch.stack(images), torch.tensor(labels, dtype=torch.float32), np.array(bands))


def split(data: ImageSet, fractions: tuple[float, float], seed: int) -> tuple[ImageSet, ...]:
    """Random train / validation / test parts; ``fractions`` are validation and test shares."""
    order = np.random.default_rng(seed).permutation(len(data))
    n_val, n_test = (round(f * len(data)) for f in fractions)
    parts = (order[n_val + n_test :], order[:n_val], order[n_val : n_val + n_test])
    return tuple(ImageSet(data.images[idx], data.labels[idx], data.snr_band[idx]) for idx in parts)
