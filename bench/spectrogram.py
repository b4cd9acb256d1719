"""Spectrogram time for one hour of audio: our torch PCEN front end against librosa, same run.

Run: ``.venv/bin/python bench/spectrogram.py [--minutes 60] [--threads 1] [--windows 256]``

Both compute the same thing (magnitude STFT 1,024/300 → 64 HTK mel bins → squared → PCEN) on
the same synthetic hour at 10 kHz, fed in 60-second chunks as the pipeline streams a file.
Then the detector (ResNet-50, random weights: the cost is the same) scores PCEN windows in
batches of 32. The last line is ``seconds_per_audio_hour=… speedup_vs_librosa=… windows_per_s=…``.
"""

from __future__ import annotations

import argparse
import time

import librosa
import numpy as np
import torch

from renderer.audio import SpectrogramConfig, StreamingFrontEnd, mel_filterbank
from scoring.whale import detector

CHUNK_S = 60


def audio_chunks(minutes: float, sr: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    t = np.arange(CHUNK_S * sr) / sr
    base = (0.1 * np.sin(2 * np.pi * (400 + 50 * np.sin(0.5 * t)) * t)).astype(np.float32)
    return [
        base + (0.05 * rng.standard_normal(len(t))).astype(np.float32)
        for _ in range(int(minutes * 60 / CHUNK_S))
    ]


def ours(chunks: list[np.ndarray], cfg: SpectrogramConfig) -> tuple[float, int]:
    started = time.perf_counter()
    front = StreamingFrontEnd(cfg)
    windows = 0
    for chunk in chunks:
        windows += front.push(chunk)[0].shape[0]
    windows += front.finish()[0].shape[0]
    return time.perf_counter() - started, windows


def theirs(chunks: list[np.ndarray], cfg: SpectrogramConfig) -> float:
    """librosa on the same chunks, carrying PCEN's state across chunks as we do."""
    started = time.perf_counter()
    mel = mel_filterbank(cfg)
    zi = None
    for chunk in chunks:
        magnitude = np.abs(
            librosa.stft(chunk, n_fft=cfg.n_fft, hop_length=cfg.hop_length, center=False)
        )
        energy = (mel @ magnitude) ** 2
        if zi is None:
            zi = (1 - cfg.pcen_smooth) * energy[:, :1]
        _, zi = librosa.pcen(
            energy,
            b=cfg.pcen_smooth,
            gain=cfg.pcen_alpha,
            bias=cfg.pcen_delta,
            power=1 / cfg.pcen_root,
            eps=cfg.pcen_floor,
            zi=zi,
            return_zf=True,
        )
    return time.perf_counter() - started


def detector_rate(n_windows: int) -> float:
    det = detector.untrained("resnet50")
    images = torch.rand(n_windows, 1, 128, 64)
    detector.score_images(det, images[:32])  # warm-up
    started = time.perf_counter()
    detector.score_images(det, images)
    return n_windows / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--windows", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = SpectrogramConfig()
    chunks = audio_chunks(args.minutes, cfg.sample_rate)
    per_hour = 60.0 / args.minutes
    ours_s, n_windows = ours(chunks, cfg)
    librosa_s = theirs(chunks, cfg)
    rate = detector_rate(args.windows)
    print(
        f"audio: {args.minutes:g} min at {cfg.sample_rate} Hz, {n_windows} windows, "
        f"{args.threads} torch threads"
    )
    print(f"torch front end:   {ours_s * per_hour:8.2f} s per audio hour")
    print(f"librosa front end: {librosa_s * per_hour:8.2f} s per audio hour (baseline)")
    print(
        f"detector (ResNet-50, batch 32): {rate:.1f} windows/s "
        f"= {n_windows * per_hour / rate:.0f} s to score an hour"
    )
    print(
        f"seconds_per_audio_hour={ours_s * per_hour:.3f} "
        f"speedup_vs_librosa={librosa_s / ours_s:.2f} windows_per_s={rate:.1f}"
    )


if __name__ == "__main__":
    main()
