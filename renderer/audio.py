"""Audio to PCEN mel spectrogram windows, computed with torch so it runs on the model's device.

The defaults are the published humpback front end (Allen et al. 2021): 10 kHz audio, STFT
frame 1,024 samples with hop 300 (periodic Hann window, no centre padding), the *magnitude*
mapped to 64 HTK mel bins over 0–5 kHz (unnormalised triangles) and then squared, PCEN, and
128-frame context windows (39,124 samples, 3.91 s) giving a [128 × 64] single-channel image.

PCEN convention (the same formula as ``librosa.pcen``, with the smoothing given per frame)::

    M[t] = (1 − s)·M[t−1] + s·E[t],   M[0] = E[0]
    PCEN = (E / (floor + M)^α + δ)^(1/root) − δ^(1/root)

with s = 0.025 per frame (≈ 1.2 s at hop 300), α = 0.98, δ = 2, root = 2, floor = 1e-6. We do
*not* use librosa's defaults (0.4 s time constant, input scaled to ±2³¹); the input is float
audio in [−1, 1]. ``librosa.pcen(E.T, b=s, gain=α, bias=δ, power=1/root, eps=floor)`` matches.

:class:`StreamingFrontEnd` computes the same frames for hours of audio fed in chunks: it keeps
only the STFT overlap, the PCEN smoother state and the frames of one window between chunks.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch

from renderer.errors import InvalidAudio

PCEN_BLOCK = 128
"""Frames smoothed at once by one triangular matrix product (see :func:`pcen`)."""


@dataclass(frozen=True)
class SpectrogramConfig:
    """Every parameter of the front end; a pipeline chooses its own (band, rate, windows)."""

    sample_rate: int = 10_000
    n_fft: int = 1024
    hop_length: int = 300
    n_mels: int = 64
    fmin: float = 0.0
    fmax: float = 5_000.0
    mel_htk: bool = True
    mel_slaney_norm: bool = False
    mel_power: float = 2.0
    """Exponent applied to the mel-mapped magnitude (2: "magnitude → mel, squared")."""
    pcen_alpha: float = 0.98
    pcen_delta: float = 2.0
    pcen_root: float = 2.0
    pcen_smooth: float = 0.025
    pcen_floor: float = 1e-6
    window_s: float = 3.9124
    window_hop_s: float = 1.92

    def __post_init__(self) -> None:
        problems = []
        if self.sample_rate <= 0 or self.n_fft <= 0 or self.hop_length <= 0 or self.n_mels <= 0:
            problems.append("sample_rate, n_fft, hop_length and n_mels must be positive")
        if not 0 <= self.fmin < self.fmax <= self.sample_rate / 2:
            problems.append(f"need 0 ≤ fmin < fmax ≤ Nyquist ({self.sample_rate / 2} Hz)")
        if not 0 < self.pcen_smooth <= 1:
            problems.append("pcen_smooth must be in (0, 1]")
        if round(self.window_s * self.sample_rate) < self.n_fft:
            problems.append("window_s is shorter than one FFT frame")
        elif self.window_hop_s <= 0 or self.hop_frames > self.window_frames:
            problems.append("window_hop_s must be in (0, window_s]: longer hops leave gaps")
        if problems:
            raise InvalidAudio("bad spectrogram config: " + "; ".join(problems), "bad_config")

    @property
    def window_frames(self) -> int:
        return 1 + (round(self.window_s * self.sample_rate) - self.n_fft) // self.hop_length

    @property
    def window_samples(self) -> int:
        return (self.window_frames - 1) * self.hop_length + self.n_fft

    @property
    def hop_frames(self) -> int:
        return max(1, round(self.window_hop_s * self.sample_rate / self.hop_length))

    def frame_start_s(self, frame: int) -> float:
        return frame * self.hop_length / self.sample_rate

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> SpectrogramConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})


def _hz_to_mel(f: np.ndarray, htk: bool) -> np.ndarray:
    if htk:
        return 2595.0 * np.log10(1.0 + f / 700.0)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    logstep = np.log(6.4) / 27.0
    mels = f / f_sp
    log_part = min_log_hz / f_sp + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep
    return np.where(f >= min_log_hz, log_part, mels)


def _mel_to_hz(m: np.ndarray, htk: bool) -> np.ndarray:
    if htk:
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


def mel_filterbank(cfg: SpectrogramConfig) -> np.ndarray:
    """Triangular mel weights (n_mels, n_fft // 2 + 1), the construction librosa uses."""
    fft_freqs = np.linspace(0.0, cfg.sample_rate / 2, cfg.n_fft // 2 + 1)
    lo, hi = _hz_to_mel(np.array([cfg.fmin, cfg.fmax], dtype=np.float64), cfg.mel_htk)
    mel_f = _mel_to_hz(np.linspace(lo, hi, cfg.n_mels + 2), cfg.mel_htk)
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    if cfg.mel_slaney_norm:
        weights *= (2.0 / (mel_f[2 : cfg.n_mels + 2] - mel_f[: cfg.n_mels]))[:, None]
    return weights.astype(np.float32)


class FrontEnd:
    """Mel and PCEN for one config, with the filterbank and window cached on a device."""

    def __init__(self, cfg: SpectrogramConfig, device: str | torch.device = "cpu") -> None:
        self.cfg = cfg
        self.device = torch.device(device)
        self.window = torch.hann_window(cfg.n_fft, periodic=True, device=self.device)
        self.mel = torch.from_numpy(mel_filterbank(cfg)).to(self.device)
        s = cfg.pcen_smooth
        idx = torch.arange(PCEN_BLOCK, device=self.device, dtype=torch.float64)
        lag = idx[:, None] - idx[None, :]
        # Lower-triangular IIR response: M[j] = Σ_k s(1−s)^(j−k) E[k] inside a block.
        self.pcen_matrix = torch.where(lag >= 0, s * (1 - s) ** lag.clamp(min=0), 0.0)
        self.pcen_carry = (1 - s) ** (idx + 1)

    def mel_frames(self, audio: torch.Tensor) -> torch.Tensor:
        """(frames, n_mels) energies of float audio (samples,), frames without centre padding."""
        cfg = self.cfg
        if audio.shape[-1] < cfg.n_fft:
            return torch.zeros((0, cfg.n_mels), device=self.device)
        spec = torch.stft(
            audio.to(self.device, torch.float32),
            n_fft=cfg.n_fft,
            hop_length=cfg.hop_length,
            window=self.window,
            center=False,
            return_complex=True,
        ).abs()
        mel = self.mel @ spec  # (n_mels, frames)
        return (mel**cfg.mel_power).T.contiguous()

    def pcen(
        self, energy: torch.Tensor, state: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """PCEN of (frames, n_mels) energies; ``state`` is the smoother's last frame, returned.

        The IIR smoother runs as blocks of triangular matrix products (float64, exact up to
        rounding) with the carry passed from block to block, instead of a Python loop per frame.
        """
        cfg = self.cfg
        n = energy.shape[0]
        e64 = energy.to(torch.float64)
        if n == 0:
            empty = torch.zeros((0, cfg.n_mels), device=self.device)
            return empty, state if state is not None else torch.zeros(cfg.n_mels)
        prev = e64[0] if state is None else state.to(self.device, torch.float64)
        smooth = self._smooth(e64, prev)
        gain = (cfg.pcen_floor + smooth) ** (-cfg.pcen_alpha)
        root = 1.0 / cfg.pcen_root
        result = (e64 * gain + cfg.pcen_delta) ** root - cfg.pcen_delta**root
        return result.to(torch.float32), smooth[-1]

    def _smooth(self, e64: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
        n, n_mels = e64.shape
        size = PCEN_BLOCK
        n_blocks = -(-n // size)
        padded = torch.zeros((n_blocks * size, n_mels), dtype=torch.float64, device=self.device)
        padded[:n] = e64
        # Every block's response to its own frames at once, then the carries block to block.
        local = self.pcen_matrix @ padded.view(n_blocks, size, n_mels)
        decay = self.pcen_carry[-1]
        carries = torch.empty((n_blocks, n_mels), dtype=torch.float64, device=self.device)
        for b in range(n_blocks):
            carries[b] = prev
            prev = local[b, -1] + decay * prev
        smooth = local + self.pcen_carry[None, :, None] * carries[:, None, :]
        return smooth.view(n_blocks * size, n_mels)[:n]

    def pcen_frames(self, audio: torch.Tensor) -> torch.Tensor:
        """PCEN mel frames (frames, n_mels) of a whole clip held in memory."""
        return self.pcen(self.mel_frames(audio))[0]


def window_starts(n_frames: int, cfg: SpectrogramConfig) -> list[int]:
    """First frame of each window: every hop, plus one flush with the end if it is uncovered."""
    size, hop = cfg.window_frames, cfg.hop_frames
    if n_frames < size:
        return []
    starts = list(range(0, n_frames - size + 1, hop))
    if starts[-1] + size < n_frames:
        starts.append(n_frames - size)
    return starts


def windows(frames: torch.Tensor, cfg: SpectrogramConfig) -> tuple[torch.Tensor, list[int]]:
    """Cut (frames, n_mels) into images (K, 1, window_frames, n_mels) and their start frames."""
    starts = window_starts(frames.shape[0], cfg)
    if not starts:
        return torch.zeros((0, 1, cfg.window_frames, cfg.n_mels), device=frames.device), []
    images = torch.stack([frames[s : s + cfg.window_frames] for s in starts])
    return images.unsqueeze(1), starts


def clip_image(
    audio: np.ndarray, cfg: SpectrogramConfig, front: FrontEnd | None = None
) -> torch.Tensor:
    """One [1, window_frames, n_mels] image of a clip, padded with silence or cropped to fit."""
    front = front or FrontEnd(cfg)
    need = cfg.window_samples
    clip = np.zeros(need, dtype=np.float32)
    clip[: min(need, len(audio))] = audio[:need]
    frames = front.pcen_frames(torch.from_numpy(clip))
    return frames[: cfg.window_frames].unsqueeze(0)


class StreamingFrontEnd:
    """PCEN windows of audio fed in chunks, with memory bounded by one chunk plus one window.

    ``push`` returns the windows that became complete; ``finish`` pads a clip shorter than
    one window with silence and adds a last window flush with the end of the audio.
    """

    def __init__(self, cfg: SpectrogramConfig, device: str | torch.device = "cpu") -> None:
        self.cfg = cfg
        self.front = FrontEnd(cfg, device)
        self.tail = np.zeros(0, dtype=np.float32)
        self.state: torch.Tensor | None = None
        self.frames = torch.zeros((0, cfg.n_mels), device=self.front.device)
        self.frames_offset = 0
        """Absolute index of ``self.frames[0]``."""
        self.next_start = 0
        self.samples_seen = 0

    @property
    def total_frames(self) -> int:
        return self.frames_offset + self.frames.shape[0]

    def _add_audio(self, chunk: np.ndarray) -> None:
        cfg = self.cfg
        audio = np.concatenate([self.tail, chunk.astype(np.float32, copy=False)])
        n_frames = 0 if len(audio) < cfg.n_fft else 1 + (len(audio) - cfg.n_fft) // cfg.hop_length
        used = n_frames * cfg.hop_length
        self.tail = audio[used:].copy()
        if n_frames == 0:
            return
        energy = self.front.mel_frames(torch.from_numpy(audio[: used - cfg.hop_length + cfg.n_fft]))
        pcen, self.state = self.front.pcen(energy, self.state)
        self.frames = torch.cat([self.frames, pcen])

    def _emit(self, starts: list[int]) -> tuple[torch.Tensor, list[int]]:
        size = self.cfg.window_frames
        rel = [s - self.frames_offset for s in starts]
        images = [self.frames[r : r + size] for r in rel]
        if not images:
            empty = torch.zeros((0, 1, size, self.cfg.n_mels), device=self.front.device)
            return empty, []
        return torch.stack(images).unsqueeze(1), starts

    def _trim(self) -> None:
        # Keep only the frames a future window can still use (and the last full window).
        keep_from = min(self.next_start, max(0, self.total_frames - self.cfg.window_frames))
        drop = keep_from - self.frames_offset
        if drop > 0:
            self.frames = self.frames[drop:]
            self.frames_offset = keep_from

    def push(self, chunk: np.ndarray) -> tuple[torch.Tensor, list[int]]:
        self.samples_seen += len(chunk)
        self._add_audio(chunk)
        starts = []
        while self.next_start + self.cfg.window_frames <= self.total_frames:
            starts.append(self.next_start)
            self.next_start += self.cfg.hop_frames
        out = self._emit(starts)
        self._trim()
        return out

    def finish(self) -> tuple[torch.Tensor, list[int]]:
        cfg = self.cfg
        pending: list[torch.Tensor] = []
        starts: list[int] = []
        if self.samples_seen < cfg.window_samples:
            pad = cfg.window_samples - self.samples_seen
            images, s = self.push(np.zeros(pad, dtype=np.float32))
            pending.append(images)
            starts += s
        last_emitted = self.next_start - cfg.hop_frames
        final = self.total_frames - cfg.window_frames
        if final >= 0 and last_emitted + cfg.window_frames < self.total_frames:
            images, s = self._emit([final])
            pending.append(images)
            starts += s
        if not pending:
            return self._emit([])
        return torch.cat(pending), starts


def pool_columns(images: torch.Tensor, hop_frames: int, pool: int) -> np.ndarray:
    """(n_mels, columns) overview of windows: each window's first hop, averaged ``pool`` frames.

    Consecutive windows overlap; their first ``hop_frames`` frames tile the recording once.
    """
    first = images[:, 0, :hop_frames, :].float().reshape(-1, images.shape[-1])
    usable = (first.shape[0] // pool) * pool
    if usable == 0:
        return np.zeros((images.shape[-1], 0), dtype=np.float32)
    cols = first[:usable].reshape(-1, pool, images.shape[-1]).mean(dim=1)
    return cols.T.cpu().numpy().astype(np.float32)


def overview_image(columns: np.ndarray) -> np.ndarray:
    """A greyscale uint8 image (n_mels, width) of PCEN columns, low frequencies at the bottom."""
    if columns.size == 0:
        return np.zeros((columns.shape[0] if columns.ndim == 2 else 1, 1), dtype=np.uint8)
    lo, hi = np.percentile(columns, [1, 99.5])
    scaled = np.clip((columns - lo) / max(hi - lo, 1e-9), 0, 1)
    return (255 * scaled[::-1]).astype(np.uint8)
