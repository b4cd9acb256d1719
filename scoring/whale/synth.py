"""Synthetic underwater recordings for the whale detector, following the domain note.

Positives hold humpback song (units of 0.4–3 s with up/down/flat/arched/U contours starting at
100–1,200 Hz, 1–6 harmonics at −6 dB each, a quarter pulsed, raised-cosine onsets, phrases of
2–5 units repeated 2–4 times) or, for the right-whale task, J-shaped up-calls at 2 kHz.
Every clip, positive or negative, gets the same noise recipe: coloured Gaussian noise
(PSD ∝ f^−β, β 1–2), flow noise below 20 Hz, shipping (broadband 10–500 Hz plus 1–10 tonal
lines at 30–400 Hz), broadband clicks, 20 Hz fin-whale pulses and a DC offset. Because the
decoys appear in both classes with the same probability, and the whole clip gets a random
gain over 40 dB, neither decoys nor level say anything about the label; only the call does.

SNR is measured in the call band: the power of the call inside [0.8·f_min, 1.25·f_max] of its
fundamental, averaged over the samples where the call sounds, against the noise power in the
same band averaged over the clip. It is drawn from the bands [5, 10], [0, 5], [−5, 0] and
[−10, −5] dB in the ratio 2:3:3:2.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from scipy import fft as sfft

SNR_BANDS: tuple[tuple[float, float], ...] = ((5.0, 10.0), (0.0, 5.0), (-5.0, 0.0), (-10.0, -5.0))
SNR_WEIGHTS = np.array([2, 3, 3, 2], dtype=np.float64) / 10
SPECIES = ("humpback", "right")
MIN_CALL_S = 0.4
"""A positive window holds at least this much sounding call."""


@dataclass(frozen=True)
class Clip:
    audio: np.ndarray
    label: int
    snr_db: float
    """NaN for negatives."""
    snr_band: int
    """Index into SNR_BANDS, −1 for negatives."""


@dataclass(frozen=True)
class Call:
    wave: np.ndarray
    active: np.ndarray
    """Boolean mask of the samples where the call sounds."""
    band: tuple[float, float]


def band_power(
    x: np.ndarray, sr: int, lo: float, hi: float, mask: np.ndarray | None = None
) -> float:
    """Mean power of ``x`` inside [lo, hi] Hz, over the samples of ``mask`` (default all)."""
    size = sfft.next_fast_len(len(x), real=True)
    spec = sfft.rfft(x, size)
    freqs = np.fft.rfftfreq(size, 1 / sr)
    spec[(freqs < lo) | (freqs > hi)] = 0
    filtered = sfft.irfft(spec, size)[: len(x)]
    sel = filtered if mask is None else filtered[mask]
    return float(np.mean(sel**2)) if len(sel) else 0.0


def _shaped_noise(
    rng: np.random.Generator, n: int, sr: int, gain_of_f: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    size = sfft.next_fast_len(n, real=True)
    freqs = np.fft.rfftfreq(size, 1 / sr)
    spec = (rng.standard_normal(len(freqs)) + 1j * rng.standard_normal(len(freqs))) * gain_of_f(
        freqs
    )
    x = sfft.irfft(spec, size)[:n]
    return x / (np.std(x) + 1e-12)


def coloured_noise(rng: np.random.Generator, n: int, sr: int, beta: float) -> np.ndarray:
    return _shaped_noise(rng, n, sr, lambda f: np.maximum(f, 1.0) ** (-beta / 2))


def band_noise(rng: np.random.Generator, n: int, sr: int, lo: float, hi: float) -> np.ndarray:
    return _shaped_noise(rng, n, sr, lambda f: ((f >= lo) & (f <= hi)).astype(np.float64))


def _db(x: float) -> float:
    return float(10 ** (x / 20))


def _tone(freq: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
    return np.sin(2 * np.pi * np.cumsum(freq) / sr + rng.uniform(0, 2 * np.pi))


def ship(rng: np.random.Generator, n: int, sr: int, level: float) -> np.ndarray:
    """Broadband 10–500 Hz engine noise plus 1–10 tonal lines at 30–400 Hz with slow drift."""
    out = band_noise(rng, n, sr, 10, min(500, sr / 2 - 1)) * level * _db(rng.uniform(-5, 10))
    t = np.arange(n) / sr
    for _ in range(rng.integers(1, 11)):
        f0 = rng.uniform(30, 400)
        drift = f0 * (1 + rng.uniform(-0.02, 0.02) * t / max(t[-1], 1e-9))
        amp = (
            level
            * _db(rng.uniform(-10, 10))
            * (1 + 0.3 * np.sin(2 * np.pi * rng.uniform(0.05, 0.5) * t))
        )
        out += amp * _tone(drift, sr, rng)
    return out


def clicks(rng: np.random.Generator, n: int, sr: int, level: float) -> np.ndarray:
    """Broadband impulses (snapping shrimp, echosounders) at 0.5–20 per second."""
    out = np.zeros(n)
    count = rng.poisson(rng.uniform(0.5, 20) * n / sr)
    for pos in rng.integers(0, n, size=count):
        length = max(2, int(rng.uniform(0.0005, 0.003) * sr))
        burst = rng.standard_normal(length) * np.exp(-np.arange(length) / (length / 4))
        end = min(n, pos + length)
        out[pos:end] += level * _db(rng.uniform(5, 30)) * burst[: end - pos]
    return out


def fin_pulses(rng: np.random.Generator, n: int, sr: int, level: float) -> np.ndarray:
    """20 Hz fin-whale pulses: about 1 s down-sweeps from ~23 to ~17 Hz, one or two per clip."""
    out = np.zeros(n)
    for _ in range(rng.integers(1, 3)):
        length = int(rng.uniform(0.7, 1.2) * sr)
        start = int(rng.integers(-length // 2, n))
        u = np.linspace(0, 1, length)
        freq = rng.uniform(21, 25) - rng.uniform(3, 6) * u
        pulse = np.sin(np.pi * u) ** 2 * _tone(freq, sr, rng) * level * _db(rng.uniform(5, 25))
        lo, hi = max(0, start), min(n, start + length)
        if hi > lo:
            out[lo:hi] += pulse[lo - start : hi - start]
    return out


def background(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """The noise and decoys every clip gets, independent of its label."""
    x = coloured_noise(rng, n, sr, rng.uniform(1.0, 2.0))
    level = float(np.std(x))
    if rng.random() < 0.5:  # flow noise below 20 Hz
        x += band_noise(rng, n, sr, 1, 20) * level * _db(rng.uniform(0, 20))
    if rng.random() < 0.4:
        x += ship(rng, n, sr, level * 0.3)
    if rng.random() < 0.4:
        x += clicks(rng, n, sr, level)
    if rng.random() < 0.35:
        x += fin_pulses(rng, n, sr, level)
    return x


def _ramp(n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    env = np.ones(n)
    edge = min(n // 2, int(rng.uniform(0.02, 0.05) * sr))
    if edge > 0:
        ramp = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, edge))
        env[:edge] = ramp
        env[-edge:] = ramp[::-1]
    return env


def _contour(rng: np.random.Generator, length: int) -> np.ndarray:
    u = np.linspace(0, 1, length)
    f0 = float(np.exp(rng.uniform(np.log(100), np.log(1200))))
    exc = rng.uniform(0.2, 1.5)
    shape = rng.choice(["up", "down", "flat", "arched", "u"])
    octaves = {
        "up": exc * u,
        "down": -exc * u,
        "flat": 0.03 * np.sin(2 * np.pi * rng.uniform(0.5, 2) * u),
        "arched": exc * np.sin(np.pi * u),
        "u": -exc * np.sin(np.pi * u),
    }[str(shape)]
    return np.clip(f0 * 2.0**octaves, 60, 4000)


def humpback_unit(rng: np.random.Generator, sr: int) -> tuple[np.ndarray, float, float]:
    """One unit: waveform, lowest and highest fundamental frequency."""
    length = int(rng.uniform(0.4, 3.0) * sr)
    freq = _contour(rng, length)
    phase = 2 * np.pi * np.cumsum(freq) / sr
    wave = np.zeros(length)
    for h in range(1, int(rng.integers(1, 7)) + 1):
        if h * freq.max() < sr / 2 * 0.98:
            wave += _db(-6 * (h - 1)) * np.sin(h * phase + rng.uniform(0, 2 * np.pi))
    if rng.random() < 0.25:  # pulsed unit
        rate = rng.uniform(5, 60)
        wave *= 0.5 * (1 + np.sin(2 * np.pi * rate * np.arange(length) / sr))
    return wave * _ramp(length, sr, rng), float(freq.min()), float(freq.max())


def humpback_song(rng: np.random.Generator, n: int, sr: int, check_from: int = 0) -> Call:
    """``n`` samples of song cropped from a phrase sequence; ``check_from`` on holds a call."""
    units = [humpback_unit(rng, sr) for _ in range(rng.integers(2, 6))]
    gaps = [int(rng.uniform(0.2, 2.0) * sr) for _ in units]
    phrase_len = sum(len(u[0]) + g for u, g in zip(units, gaps, strict=True))
    repeats = int(rng.integers(2, 5))
    total = phrase_len * repeats + 2 * n
    song, active = np.zeros(total), np.zeros(total, dtype=bool)
    pos = n
    for _ in range(repeats):
        for (wave, _lo, _hi), gap in zip(units, gaps, strict=True):
            song[pos : pos + len(wave)] += wave
            active[pos : pos + len(wave)] = True
            pos += len(wave) + gap
    need = int(MIN_CALL_S * sr)
    for _ in range(100):
        start = int(rng.integers(0, total - n))
        if active[start + check_from : start + n].sum() >= need:
            break
    crop, mask = song[start : start + n], active[start : start + n]
    return Call(crop, mask, _band_of(units, crop, mask, sr))


def _band_of(
    units: list[tuple[np.ndarray, float, float]], crop: np.ndarray, mask: np.ndarray, sr: int
) -> tuple[float, float]:
    # The crop may show only some units; the band of all units bounds it safely from outside.
    lo = min(u[1] for u in units)
    hi = max(u[2] for u in units)
    return 0.8 * lo, min(1.25 * hi, sr / 2 - 1)


def right_upcall(rng: np.random.Generator, n: int, sr: int, check_from: int = 0) -> Call:
    """A J-shaped up-call: 50–100 Hz rising to 150–250 Hz in 0.5–1.5 s."""
    length = min(n - check_from - 1, int(rng.uniform(0.5, 1.5) * sr))
    u = np.linspace(0, 1, length)
    f_lo, f_hi = rng.uniform(50, 100), rng.uniform(150, 250)
    freq = f_lo + (f_hi - f_lo) * u**2  # J: flat start, steep end
    phase = 2 * np.pi * np.cumsum(freq) / sr
    wave = np.sin(phase) + _db(-rng.uniform(6, 15)) * np.sin(2 * phase)
    wave *= _ramp(length, sr, rng)
    start = int(rng.integers(check_from, n - length))
    out, mask = np.zeros(n), np.zeros(n, dtype=bool)
    out[start : start + length], mask[start : start + length] = wave, True
    return Call(out, mask, (0.8 * f_lo, 1.25 * f_hi))


def draw_snr(rng: np.random.Generator) -> tuple[float, int]:
    band = int(rng.choice(len(SNR_BANDS), p=SNR_WEIGHTS))
    lo, hi = SNR_BANDS[band]
    return float(rng.uniform(lo, hi)), band


def mix(call: Call, noise: np.ndarray, sr: int, snr_db: float) -> np.ndarray:
    """Scale ``call`` to ``snr_db`` against ``noise`` in the call band and add them."""
    lo, hi = call.band
    p_call = band_power(call.wave, sr, lo, hi, call.active)
    p_noise = band_power(noise, sr, lo, hi)
    scale = np.sqrt(p_noise / max(p_call, 1e-20) * 10 ** (snr_db / 10))
    return noise + scale * call.wave


def make_clip(
    rng: np.random.Generator,
    n: int,
    sr: int,
    positive: bool,
    species: str = "humpback",
    check_from: int = 0,
) -> Clip:
    """One clip; a positive's call sounds for at least MIN_CALL_S after ``check_from``."""
    noise = background(rng, n, sr)
    if positive:
        make = humpback_song if species == "humpback" else right_upcall
        call = make(rng, n, sr, check_from)
        snr, band = draw_snr(rng)
        audio = mix(call, noise, sr, snr)
    else:
        snr, band, audio = float("nan"), -1, noise
    audio = audio / (np.std(audio) + 1e-12) * _db(rng.uniform(-45, -5))
    audio = audio + rng.uniform(-0.05, 0.05)  # DC offset the front end must remove
    peak = np.abs(audio).max()
    if peak > 0.99:
        audio = audio * (0.99 / peak)
    return Clip(audio.astype(np.float32), int(positive), snr, band)


def clip_length(species: str, window_samples: int) -> tuple[int, int]:
    """(sample rate, samples) of one training clip for ``species``."""
    if species == "right":
        return 2_000, 4_000
    return 10_000, window_samples


def clips(
    n: int,
    seed: int,
    window_samples: int,
    species: str = "humpback",
    positive_fraction: float = 0.5,
) -> list[Clip]:
    """``n`` clips, about ``positive_fraction`` of them positive, reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    sr, length = clip_length(species, window_samples)
    return [
        make_clip(rng, length, sr, bool(rng.random() < positive_fraction), species)
        for _ in range(n)
    ]


def long_recording(
    rng: np.random.Generator, seconds: float, sr: int = 10_000, chunk_s: float = 60.0
) -> Iterator[tuple[np.ndarray, list[tuple[float, float]]]]:
    """Chunks of a long recording with occasional song bouts, and the bouts' (start, end) s.

    Yields ``(audio_chunk, spans)``; memory holds one chunk at a time.
    """
    done = 0.0
    while done < seconds:
        length = int(min(chunk_s, seconds - done) * sr)
        noise = background(rng, length, sr)
        spans: list[tuple[float, float]] = []
        if length > sr * 5 and rng.random() < 0.5:
            call = humpback_song(rng, length, sr)
            noise = mix(call, noise, sr, draw_snr(rng)[0])
            spans = _spans(call.active, sr, done)
        chunk = noise / (np.std(noise) + 1e-12) * 0.02 + 0.01
        yield chunk.astype(np.float32), spans
        done += length / sr


def _spans(active: np.ndarray, sr: int, offset: float) -> list[tuple[float, float]]:
    edges = np.flatnonzero(np.diff(np.concatenate([[0], active.astype(np.int8), [0]])))
    return [
        (offset + a / sr, offset + b / sr) for a, b in zip(edges[::2], edges[1::2], strict=True)
    ]
